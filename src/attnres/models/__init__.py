"""ResNet-family models with attention at any placement, and insertion into trained ones.

Import order (no cycles): info -> resnet -> layout -> insert -> sources -> pretrained -> add
-> build -> authors. Importing `authors` registers the authors' checkpoint layouts with
`load_pretrained`.
"""

from __future__ import annotations

from .add import add_attention
from .authors import (AUTHORS_ARCHS, AUTHORS_CBAM_KWARGS, AUTHORS_PREPROCESSING,
                      bam_authors_model, cbam_authors_model, convert_cbam_authors)
from .build import build_model, list_models, model_table, rebuild_model
from .info import LoadReport, ModelInfo, Preprocessing, get_model_info
from .insert import IdentityInit, insert_attention, wrap_identity
from .placement import PLACEMENTS, PRESETS, list_placements, list_presets
from .pretrained import detect_format, load_pretrained, register_format
from .resnet import ARCHS, ResNet, default_preprocessing

__all__ = ["ARCHS", "AUTHORS_ARCHS", "AUTHORS_CBAM_KWARGS", "AUTHORS_PREPROCESSING",
           "IdentityInit", "LoadReport", "ModelInfo", "PLACEMENTS", "PRESETS", "Preprocessing",
           "ResNet", "add_attention", "bam_authors_model", "build_model", "cbam_authors_model",
           "convert_cbam_authors", "default_preprocessing", "detect_format", "get_model_info",
           "insert_attention", "list_models", "list_placements", "list_presets",
           "load_pretrained", "model_table", "rebuild_model", "register_format",
           "wrap_identity"]
