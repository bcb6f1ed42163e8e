"""The network a run trains: built from `config.arch`, or taken from a source.

`TrainConfig.source` names a network you already have: "torchvision:NAME" (e.g.
"torchvision:resnet50", weights from `pretrained`: a torchvision weights name), "timm:NAME"
(`pretrained`: a weights file), or the path of a model saved by `attnres.save_model`, a
checkpoint or a run folder. `attnres.train(config, model=...)` takes an `nn.Module` instead.
Its classifier is resized to the data's classes, `config.add_attention` is added with the
run's placement / stages / blocks / preset / attention_kwargs, and every checkpoint records
the result's `ModelInfo`, so that `load_model`, `--resume`, eval, explain and export
rebuild it like any run.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..models import add_attention, build_model, rebuild_model
from ..models.layout import ensure_model_info
from ..models.sources import missing_weights_hint
from .config import TrainConfig

SOURCE_KINDS = ("torchvision:NAME", "timm:NAME", "a saved model, checkpoint or run folder")


def _set_num_classes(model: nn.Module, num_classes: int) -> None:
    """Resize the classifier head to `num_classes` outputs (new, randomly initialised)."""
    info = ensure_model_info(model)
    if info.num_classes == num_classes:
        return
    if hasattr(model, "reset_classifier"):  # timm
        model.reset_classifier(num_classes)
    elif isinstance(getattr(model, "fc", None), nn.Linear):  # torchvision / attnres ResNets
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        raise ValueError(f"cannot resize the classifier of {type(model).__name__} to "
                         f"{num_classes} classes (no reset_classifier or fc layer)")
    info.num_classes = num_classes


def _from_source(config: TrainConfig) -> nn.Module:
    kind, sep, name = str(config.source).partition(":")
    if sep and kind == "torchvision":
        import torchvision

        try:
            model = torchvision.models.get_model(name, weights=config.pretrained)
        except ValueError as e:
            raise ValueError(f"source={config.source!r}: {e}") from None
        ensure_model_info(model).weights = config.pretrained
        return model
    if sep and kind == "timm":
        import timm

        overlay = {"file": config.pretrained} if config.pretrained else None
        try:
            model = timm.create_model(name, pretrained=bool(config.pretrained),
                                      pretrained_cfg_overlay=overlay)
        except RuntimeError as e:
            raise ValueError(f"source={config.source!r}: {e}") from None
        ensure_model_info(model).weights = config.pretrained
        return model
    from ..checkpoint import load_model

    try:
        return load_model(config.source)
    except FileNotFoundError as e:
        raise ValueError(f"source={config.source!r}: {e}; allowed: "
                         f"{', '.join(SOURCE_KINDS)}{missing_weights_hint(config.source)}"
                         ) from None


def make_model(config: TrainConfig, num_classes: int, model: nn.Module | None = None,
               ckpt: dict[str, Any] | None = None) -> nn.Module:
    """The run's network for `num_classes` classes: the one a resumed checkpoint records,
    `model` (trained in place), `config.source`, or `build_model(config.arch, ...)`; then
    `config.add_attention` added (not on resume: the record holds it already)."""
    if ckpt is not None and ckpt.get("model_info"):
        return rebuild_model(ckpt["model_info"])
    if model is None and config.source is None:
        if config.add_attention is not None:
            raise ValueError("add_attention needs a source network (source= or model=); "
                             "for config.arch use attention=")
        return build_model(config.arch, attention=config.attention, placement=config.placement,
                           stages=config.stages, blocks=config.blocks, preset=config.preset,
                           num_classes=num_classes, pretrained=config.pretrained,
                           attention_kwargs=dict(config.attention_kwargs) or None)
    if config.attention is not None:
        raise ValueError(f"attention={config.attention!r} builds config.arch; to train "
                         f"{config.source or 'the given model'}, use add_attention="
                         f"{config.attention!r}")
    model = model if model is not None else _from_source(config)
    info = ensure_model_info(model)
    if info.library not in ("attnres", "timm") or not info.architecture:
        raise ValueError(f"cannot train {type(model).__name__}: attnres cannot record how to "
                         f"rebuild it (train attnres models, torchvision ResNets or timm "
                         f"models)")
    _set_num_classes(model, num_classes)
    if config.add_attention is not None:
        add_attention(model, config.add_attention, placement=config.placement,
                      stages=config.stages, blocks=config.blocks, preset=config.preset,
                      **config.attention_kwargs)
    model.train()
    return model


def model_record(model: nn.Module, preprocessing: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint stores to rebuild `model`: `model_info` (its `ModelInfo` with the
    run's preprocessing) and, for networks `build_model` makes, the legacy `build_args`."""
    info = copy.deepcopy(ensure_model_info(model))
    info.preprocessing = type(info.preprocessing).from_dict(preprocessing)
    record: dict[str, Any] = {"model_info": info.to_dict()}
    if info.library == "attnres":
        record["build_args"] = info.build_args()
    return record


def normalisation_arch(config: TrainConfig) -> str | None:
    """The architecture that names `config.pretrained`'s torchvision weights."""
    kind, sep, name = str(config.source).partition(":")
    if config.source is None:
        return config.arch
    return name if sep and kind == "torchvision" else None


__all__ = ["SOURCE_KINDS", "make_model", "model_record", "normalisation_arch"]
