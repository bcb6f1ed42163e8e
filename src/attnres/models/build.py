"""`build_model`: an architecture by name, with attention at the chosen placement."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..attention import (attention_class, check_attention_kwargs, closest, list_attention,
                         name_attention_modules)
from .add import add_attention
from .info import ModelInfo
from .insert import insert_attention, wrap_identity
from .layout import ensure_model_info
from .placement import apply_plan, placement_record, resolve_plan
from .pretrained import load_pretrained
from .resnet import ARCHS, ArchSpec, default_preprocessing, resnet_from_spec
from .sources import default_weights


def list_models() -> list[str]:
    """Architecture names accepted by `build_model`."""
    return list(ARCHS)


def arch_spec(arch: str) -> ArchSpec:
    """The architecture table's row for `arch`; ValueError naming the closest valid name."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}{closest(str(arch), list_models())}; "
                         f"allowed: {', '.join(list_models())}")
    return ARCHS[arch]


def build_model(arch: str, *, attention: str | None = None,
                placement: str | Sequence[str] = "block", stages: Sequence[int] | None = None,
                blocks: Mapping[int | str, Sequence[bool]] | None = None,
                preset: str | None = None, num_classes: int | None = None, in_chans: int = 3,
                pretrained: str | os.PathLike | bool | None = None,
                attention_kwargs: Mapping[str, Any] | None = None,
                insertions: Sequence[Mapping[str, Any]] | None = None,
                identity_init: Sequence[str] | None = None, **kwargs: Any) -> nn.Module:
    """A ResNet-family network mapping `(B, in_chans, H, W)` images to `(B, num_classes)`
    logits.

    arch: one of `list_models()`.
    attention: one of `list_attention()` (built with `attention_kwargs`), or None for the
        plain network.
    placement, stages, blocks, preset: where attention goes (see `attnres.models.placement`);
        checked, then unused when attention is None (so one grid can include the baseline).
    num_classes: head size; None means the architecture's own (1000 for the ImageNet nets,
        10 for the CIFAR nets resnet20..resnet110); 0 means no classifier (the model returns
        `(B, num_features)` pooled features), as in `timm.create_model`.
    in_chans: input channels of the stem's first conv, as in `timm.create_model`.
    pretrained: weights loaded with `load_pretrained`: True means the architecture's
        default weights (torchvision's DEFAULT, as timm's `pretrained=True`), or a
        torchvision weights name such as "IMAGENET1K_V2", or a file. With attention, the
        gates that get no weights from it start as an exact identity
        (`identity_init_missing=True`), so the pretrained network's function is kept; when
        the source's classifier has another number of classes, `fc` is left freshly
        initialised; for `in_chans != 3` the first conv's RGB weights are adapted as timm
        adapts them (`attnres.models.sources.adapt_input_conv`).
    identity_init: attention module names to wrap as identity at start (recorded by such a
        load, so that checkpoints rebuild).
    insertions: `insert_attention` / `add_attention` calls to replay, as recorded in
        `ModelInfo.insertions`.
    kwargs: go to the `ResNet` (e.g. `zero_init_residual=True`).

    The model carries a `ModelInfo` (`get_model_info(model)`, `model.model_info`) with these
    arguments, the weights, the load report and the preprocessing (the architecture's or the
    weights' defaults: `default_preprocessing`); `model.build_args` is its legacy view (a
    JSON-able dict without `pretrained`), so `build_model(**model.build_args)` rebuilds the
    same network, as does `rebuild_model(model.model_info)`.
    """
    spec = arch_spec(arch)
    for name, value, low in (("num_classes", num_classes, 0), ("in_chans", in_chans, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < low):
            raise ValueError(f"{name}={value!r}: must be an integer >= {low}")
    plan = resolve_plan(spec.layers, placement, stages, blocks, preset)
    if attention is not None:
        attention_class(attention)  # unknown names fail before the network is built
        if isinstance(attention, str):  # and unknown or wrong-typed options
            check_attention_kwargs(attention, attention_kwargs)
    elif attention_kwargs:
        raise ValueError(f"attention_kwargs={dict(attention_kwargs)!r} given without attention;"
                         f" choose one of {', '.join(list_attention())}")
    weights = (default_weights(arch) if pretrained is True
               else None if pretrained is False else pretrained)

    model = resnet_from_spec(spec, num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.model_info = ModelInfo(
        architecture=arch, library="attnres", num_classes=model.num_classes, in_chans=in_chans,
        attention=attention, attention_kwargs=dict(attention_kwargs or {}),
        **placement_record(plan, stages, blocks, preset), build_kwargs=dict(kwargs),
        preprocessing=default_preprocessing(arch, in_chans))
    if attention is not None:
        model.attention_slots = apply_plan(model, plan, attention, **dict(attention_kwargs or {}))
    if weights is not None:
        load_pretrained(model, weights, head="fc", identity_init_missing=attention is not None)
    replay(model, identity_init or [], insertions or [])
    return name_attention_modules(model)


def replay(model: nn.Module, identity_init: Sequence[str],
           insertions: Sequence[Mapping[str, Any]]) -> nn.Module:
    """Redo recorded edits on a freshly built `model`: each `insert_attention` /
    `add_attention` call in order (each records itself again), and each identity wrapper as
    soon as its module exists (a wrapper may belong to a module that an insertion makes)."""
    pending = list(identity_init)

    def wrap_ready() -> None:
        modules = dict(model.named_modules())
        ready = [n for n in pending if n in modules and type(modules[n]) is not nn.Identity]
        wrap_identity(model, ready)
        pending[:] = [n for n in pending if n not in ready]

    wrap_ready()
    for call in insertions:
        call = dict(call)
        op, kwargs = call.get("op", "insert"), dict(call.get("kwargs") or {})
        if op == "add":
            add_attention(model, call["attention"], placement=call.get("placement", "block"),
                          stages=call.get("stages"), blocks=call.get("blocks"),
                          preset=call.get("preset"), init=call.get("init", "identity"),
                          **kwargs)
        elif op == "insert":
            insert_attention(model, call["attention"], call["at"], call.get("init", "identity"),
                             **kwargs)
        else:
            raise ValueError(f"insertion op {op!r}; allowed: insert, add")
        wrap_ready()
    if pending:
        raise ValueError(f"identity_init: {pending[0]!r} is not a module of the model")
    return model


def rebuild_model(info: ModelInfo | Mapping[str, Any]) -> nn.Module:
    """The network `info` describes (a `ModelInfo`, its `to_dict()`, or a legacy
    `build_args` dict), freshly initialised: the architecture by its library (`build_model`,
    or `timm.create_model(pretrained=False)`), then its insertions and identity wrappers
    replayed; its preprocessing, weights and load report are carried over. Load the
    checkpoint's state dict into it. Nothing is downloaded."""
    if not isinstance(info, ModelInfo):
        info = ModelInfo.from_dict(info)
    if info.library == "attnres":
        model = build_model(**info.build_args())
    elif info.library == "timm" and info.architecture:
        import timm  # optional dependency, needed only for timm models

        model = timm.create_model(info.architecture, pretrained=False,
                                  num_classes=info.num_classes, in_chans=info.in_chans,
                                  **info.build_kwargs)
        replay(model, info.identity_init, info.insertions)
    else:
        raise ValueError(f"rebuild_model: the info names no architecture that attnres can "
                         f"build (library={info.library!r}, architecture="
                         f"{info.architecture!r}); allowed libraries: attnres, timm")
    rebuilt = ensure_model_info(model)
    rebuilt.preprocessing = copy.deepcopy(info.preprocessing)
    rebuilt.weights, rebuilt.load_report = info.weights, copy.deepcopy(info.load_report)
    return model


def model_table(attentions: Sequence[str] = ("se", "eca", "cbam", "bam")) -> str:
    """A Markdown table of every architecture's parameter count, plain and with each
    attention in every block (placement "block", default options, default head size).

    Counted on the meta device (no weights allocated): the plain network is built, and the
    attention's parameters are added per block from one gate built for each width.
    """
    import torch

    from ..attention import create_attention

    gate_params: dict[tuple[str, int], int] = {}

    def gate_count(name: str, channels: int) -> int:
        if (name, channels) not in gate_params:
            gate = create_attention(name, channels)
            gate_params[(name, channels)] = sum(p.numel() for p in gate.parameters())
        return gate_params[(name, channels)]

    header = ["architecture", "classes", "params", *(f"+{a}" for a in attentions)]
    rows = [header, ["---"] + ["---:"] * (len(header) - 1)]
    with torch.device("meta"):
        for arch in list_models():
            model = build_model(arch)
            widths = [block.out_channels for name in model.stage_names
                      for block in getattr(model, name)]
            plain = sum(p.numel() for p in model.parameters())
            rows.append([arch, str(model.num_classes), f"{plain:,}",
                         *(f"{plain + sum(gate_count(a, c) for c in widths):,}"
                           for a in attentions)])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)
