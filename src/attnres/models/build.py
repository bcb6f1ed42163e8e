"""`build_model`: an architecture by name, with attention at the chosen placement."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..attention import (attention_class, check_attention_kwargs, closest, list_attention,
                         name_attention_modules)
from .insert import insert_attention, wrap_identity
from .placement import apply_plan, list_placements, list_presets, resolve_plan
from .resnet import ARCHS, ArchSpec, resnet_from_spec


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
                preset: str | None = None, num_classes: int | None = None,
                pretrained: str | None = None, attention_kwargs: Mapping[str, Any] | None = None,
                insertions: Sequence[Mapping[str, Any]] | None = None,
                identity_init: Sequence[str] | None = None, **kwargs: Any) -> nn.Module:
    """A ResNet-family network mapping `(B, 3, H, W)` images to `(B, num_classes)` logits.

    arch: one of `list_models()`.
    attention: one of `list_attention()` (built with `attention_kwargs`), or None for the
        plain network.
    placement, stages, blocks, preset: where attention goes (see `attnres.models.placement`);
        checked, then unused when attention is None (so one grid can include the baseline).
    num_classes: head size; None means the architecture's own (1000 for the ImageNet nets,
        10 for the CIFAR nets resnet20..resnet110).
    pretrained: weights loaded with `load_pretrained` (a torchvision weights name such as
        "IMAGENET1K_V2", or a file). With attention, the gates that get no weights from it
        start as an exact identity (`identity_init_missing=True`), so the pretrained network's
        function is kept; when the source's classifier has another number of classes, `fc`
        is left freshly initialised. `model.load_report` says what was loaded.
    identity_init: attention module names to wrap as identity at start (recorded in
        `build_args["identity_init"]` by such a load, so that checkpoints rebuild).
    insertions: `insert_attention` calls to replay, as recorded in
        `build_args["insertions"]` ({"attention", "at", "init", "kwargs"} each).
    kwargs: go to the `ResNet` (e.g. `zero_init_residual=True`).

    The arguments are kept on the model as `model.build_args` (a JSON-able dict without
    `pretrained`), so `build_model(**model.build_args)` rebuilds the same network.
    """
    spec = arch_spec(arch)
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes={num_classes!r}: must be a positive integer")
    plan = resolve_plan(spec.layers, placement, stages, blocks, preset)
    if attention is not None:
        attention_class(attention)  # unknown names fail before the network is built
        if isinstance(attention, str):  # and unknown or wrong-typed options
            check_attention_kwargs(attention, attention_kwargs)
    elif attention_kwargs:
        raise ValueError(f"attention_kwargs={dict(attention_kwargs)!r} given without attention;"
                         f" choose one of {', '.join(list_attention())}")

    model = resnet_from_spec(spec, num_classes=num_classes, **kwargs)
    model.attention_slots = (apply_plan(model, plan, attention, **dict(attention_kwargs or {}))
                             if attention is not None else [])
    model.build_args = {
        "arch": arch,
        "attention": attention,
        "placement": ("block" if preset is not None  # the preset sets it
                      else plan.placements[0] if len(plan.placements) == 1
                      else list(plan.placements)),
        "stages": list(stages) if stages is not None else None,
        "blocks": ({str(k): [bool(b) for b in v] for k, v in blocks.items()}
                   if blocks else None),
        "preset": preset,
        "num_classes": model.fc.out_features,
        "attention_kwargs": dict(attention_kwargs) if attention_kwargs else None,
        **kwargs,
    }
    if pretrained is not None:
        from .pretrained import load_pretrained  # imported when used

        model.load_report = load_pretrained(model, pretrained, head="fc",
                                            identity_init_missing=attention is not None)
    if identity_init:
        wrap_identity(model, list(identity_init))
    for call in insertions or []:  # appends itself to build_args["insertions"] again
        insert_attention(model, call["attention"], call["at"], call.get("init", "identity"),
                         **dict(call.get("kwargs") or {}))
    return name_attention_modules(model)


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
            rows.append([arch, str(model.fc.out_features), f"{plain:,}",
                         *(f"{plain + sum(gate_count(a, c) for c in widths):,}"
                           for a in attentions)])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)
