"""attnres: attention modules for convolutional networks, placed anywhere in ResNets.

The user-facing entry points, one import each; everything else lives in the subpackages
(`attnres.attention`, `attnres.models`, `attnres.data`, `attnres.checkpoint`,
`attnres.training`, `attnres.evaluation`, `attnres.analysis`, ...). Heavy optional
libraries (matplotlib, onnx, timm) are imported only by the functions that need them.
"""

from __future__ import annotations

from ._version import __version__

# the `attnres` command: a signal while torch imports ends it with one line (see interrupts)
from .interrupts import guard_cli_start

guard_cli_start()

from .attention import create_attention, list_attention
from .models import add_attention, build_model, insert_attention, list_models, load_pretrained
from .data import load_dataset
from .checkpoint import load_model
from .model_files import save_model
from .training import TrainConfig, train
from .training.bn_recompute import precise_bn
from .evaluation import evaluate
from .prediction import predict
from .attention.monitor import AttentionMonitor
from .analysis.explain import explain
from .analysis.bench import bench
from .export import export_model
from .ablation import ablate, report

__all__ = [
    "AttentionMonitor", "TrainConfig", "__version__", "ablate", "add_attention", "bench",
    "build_model", "create_attention", "evaluate", "explain", "export_model", "insert_attention",
    "list_attention", "list_models", "load_dataset", "load_model", "load_pretrained",
    "precise_bn", "predict", "report", "save_model", "train",
]
