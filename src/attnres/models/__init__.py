"""ResNet-family models with attention at any placement, and insertion into trained ones."""

from __future__ import annotations

from .build import build_model, list_models, model_table
from .insert import IdentityInit, insert_attention, wrap_identity
from .placement import PLACEMENTS, PRESETS, list_placements, list_presets
from .pretrained import LoadReport, bam_authors_model, cbam_authors_model, load_pretrained
from .resnet import ARCHS, ResNet

__all__ = ["ARCHS", "PLACEMENTS", "PRESETS", "IdentityInit", "LoadReport", "ResNet",
           "bam_authors_model", "build_model", "cbam_authors_model", "insert_attention",
           "list_models", "list_placements", "list_presets", "load_pretrained", "model_table",
           "wrap_identity"]
