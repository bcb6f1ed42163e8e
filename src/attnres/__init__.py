"""attnres: attention modules for convolutional networks, placed anywhere in ResNets.

The public API is imported lazily, so `import attnres` (and the CLI's start) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "create_attention": "attnres.attention",
    "list_attention": "attnres.attention",
    "build_model": "attnres.models",
    "list_models": "attnres.models",
    "list_placements": "attnres.models",
    "list_presets": "attnres.models",
    "insert_attention": "attnres.models",
    "load_pretrained": "attnres.models",
    "TrainConfig": "attnres.train",
    "train": "attnres.train",
    "load_model": "attnres.train",
    "evaluate": "attnres.evaluate",
    "load_dataset": "attnres.data",
    "ablate": "attnres.ablate",
    "AttentionMonitor": "attnres.analysis.monitor",
    "explain": "attnres.analysis.explain",
    "export_model": "attnres.export",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'attnres' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
