"""attnres: attention modules for convolutional networks, placed anywhere in ResNets.

The user-facing entry points, one import each; everything else lives in the subpackages
(`attnres.attention`, `attnres.models`, `attnres.data`, `attnres.checkpoint`,
`attnres.training`, `attnres.evaluation`, `attnres.analysis`, ...). Heavy optional
libraries (matplotlib, onnx, timm) are imported only by the functions that need them.
"""

from __future__ import annotations

from ._version import __version__
from .attention import create_attention, list_attention
from .models import build_model, insert_attention, list_models, load_pretrained
from .data import load_dataset
from .checkpoint import load_model
from .training import TrainConfig, train
from .evaluation import evaluate
from .analysis.monitor import AttentionMonitor
from .analysis.explain import explain
from .analysis.bench import bench
from .export import export_model
from .ablation import ablate, report

__all__ = [
    "AttentionMonitor", "TrainConfig", "__version__", "ablate", "bench", "build_model",
    "create_attention", "evaluate", "explain", "export_model", "insert_attention",
    "list_attention", "list_models", "load_dataset", "load_model", "load_pretrained", "report",
    "train",
]
