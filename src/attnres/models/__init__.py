"""ResNet-family models with attention at any placement, and insertion into trained ones."""

from __future__ import annotations

from .build import build_model, list_models, model_table
from .insert import insert_attention
from .placement import PLACEMENTS, PRESETS, list_placements, list_presets
from .resnet import ARCHS, ResNet

try:  # pretrained.py is written by another part of the project; keep models importable
    from .pretrained import load_pretrained
except ImportError:  # pragma: no cover
    pass

__all__ = ["ARCHS", "PLACEMENTS", "PRESETS", "ResNet", "build_model", "insert_attention",
           "list_models", "list_placements", "list_presets", "load_pretrained", "model_table"]
