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
    "LoadReport": "attnres.models",
    "cbam_authors_model": "attnres.models",
    "bam_authors_model": "attnres.models",
    "wrap_identity": "attnres.models",
    "TrainConfig": "attnres.train",
    "train": "attnres.train",
    "load_model": "attnres.train",
    "load_checkpoint": "attnres.train",
    "save_checkpoint": "attnres.train",
    "evaluate_checkpoint": "attnres.evaluate",
    "evaluate": "attnres.evaluate",
    "load_dataset": "attnres.data",
    "make_loaders": "attnres.data",
    "demo": "attnres.ablation",
    "ablate": "attnres.ablation",
    "report": "attnres.ablation",
    "AttentionMonitor": "attnres.analysis.monitor",
    "find_saturation": "attnres.analysis.monitor",
    "explain": "attnres.analysis.explain",
    "bench": "attnres.analysis.bench",
    "profile_model": "attnres.analysis.profile",
    "count_flops": "attnres.analysis.profile",
    "export_model": "attnres.export",
    "fuse": "attnres.export",
    "quantize_int8": "attnres.export",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'attnres' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
