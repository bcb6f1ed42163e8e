"""`add_attention`: attention at a named placement in a network attnres did not build.

    add_attention(torchvision.models.resnet50(weights=...), "cbam", placement="block")
    add_attention(timm.create_model("convnext_tiny", pretrained=True), "eca", stages=[3, 4])

The placements, stage / block selection and presets are `build_model`'s
(`attnres.models.placement`); where the network's parts are is found by
`attnres.models.layout`:

* a torchvision ResNet / ResNeXt / wide ResNet becomes an attnres `ResNet` in place (same
  parameters and function, `adopt_torchvision`), and its slots are filled exactly as
  `build_model` fills them: the result has `build_model(arch, attention=...)`'s modules,
  parameter names and outputs;
* other networks get gates through `insert_attention`'s mechanics: `block` on the residual
  branch just before the add (timm ResNet blocks: their own `se` slot, which timm's forward
  calls after the last norm; a block that has an SE module already gets the gate after it;
  blocks with a `drop_path`: on its input), `block-post` on the block's output (timm ResNet:
  after its last activation), `stage` on the stage's output, `stem` on the output of `stem`
  / `maxpool`, `head` on the input of the global pool.

`init="identity"` (the default) starts every gate as an exact identity, so a pretrained
network computes what it did; the call is recorded in the model's `ModelInfo`, so that
`rebuild_model` replays it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet as tv

from ..attention import create_attention, name_attention_modules
from .info import ModelInfo
from .insert import (attach, check_gate_name, find_targets, make_gates, probe_shapes,
                     wrap_identity)
from .layout import Layout, ensure_model_info, find_layout
from .placement import Plan, apply_plan, placement_record, resolve_plan
from .resnet import ResNet, adopt_torchvision


def add_attention(model: nn.Module, attention: str, *, placement: str | Sequence[str] = "block",
                  stages: Sequence[int] | None = None,
                  blocks: Mapping[int | str, Sequence[bool]] | None = None,
                  preset: str | None = None, init: str = "identity",
                  example_input: torch.Tensor | None = None, **kwargs: Any) -> nn.Module:
    """Put `create_attention(attention, C, **kwargs)` gates into `model` in place at
    `placement` (one of `list_placements()` or a list) of the selected `stages` (1-based) and
    `blocks` (`{stage: [bool, ...]}`), or at a `preset`'s; returns `model`.

    init: "identity" (each gate starts as an exact identity, y = x + s * (attn(x) - x), s = 0)
        or "default" (the plain gate).
    example_input: probe input from which channels are read (networks other than
        torchvision's ResNets; default a `(1, C_in, 64, 64)` random image).

    Raises ValueError, leaving the model as it was, for unknown names, a network whose
    stages and residual blocks are not recognised (use `insert_attention(at=...)`), or slots
    that hold attention already.
    """
    check_gate_name(attention, init)
    layout = find_layout(model)
    plan = resolve_plan([len(b) for b in layout.blocks], placement, stages, blocks, preset)
    record = {"attention": attention, **placement_record(plan, stages, blocks, preset)}
    if type(model) is tv.ResNet or isinstance(model, ResNet):
        _add_to_resnet(model, plan, attention, init, kwargs, record)
    else:
        _add_by_insertion(model, layout, plan, attention, init, kwargs, record, example_input)
    return name_attention_modules(model)


def _slots(model: ResNet) -> dict[tuple[nn.Module, str], nn.Module]:
    """(parent, name) -> module of every attention slot of an attnres `ResNet`."""
    slots = {(model, "stem_attn"): model.stem_attn, (model, "head_attn"): model.head_attn}
    slots.update({(model.stage_attn, n): m for n, m in model.stage_attn.items()})
    for name in model.stage_names:
        for block in getattr(model, name):
            slots.update({(block, "attn"): block.attn, (block, "attn_post"): block.attn_post})
    return slots


def _add_to_resnet(model: nn.Module, plan: Plan, attention: str, init: str,
                   kwargs: dict[str, Any], record: dict[str, Any]) -> None:
    """Fill an attnres (or adopted torchvision) ResNet's slots as `build_model` does."""
    # every gate width once, before anything changes: bad keywords leave the model as it was
    widths = {model.bn1.num_features} | {
        (b.bn3 if hasattr(b, "bn3") else b.bn2).num_features
        for name in getattr(model, "stage_names", [f"layer{i}" for i in range(1, 5)])
        for b in getattr(model, name)}
    for width in sorted(widths):
        create_attention(attention, width, **kwargs)
    model = adopt_torchvision(model)
    info = ensure_model_info(model)
    before = _slots(model)
    try:
        filled = apply_plan(model, plan, attention, **kwargs)
        modules = dict(model.named_modules())
        held = [p for p in filled
                if type(before[_parent_and_name(model, p, modules)]) is not nn.Identity]
        if held:
            raise ValueError(f"add_attention: {held[0]} holds attention already; choose other "
                             f"placements or stages")
    except Exception:
        for (parent, name), module in before.items():  # leave the model as it was
            setattr(parent, name, module)
        raise
    # The first attention of a model built without one is recorded as build_model's
    # arguments, so `build_model(**model.build_args)` rebuilds it; later ones as insertions.
    first = info.library == "attnres" and info.attention is None and not info.insertions
    if first:
        info.attention, info.attention_kwargs = attention, dict(kwargs)
        for key in ("placement", "stages", "blocks", "preset"):
            setattr(info, key, record[key])
    else:
        info.insertions.append({"op": "add", **record, "init": init, "kwargs": dict(kwargs)})
    info.attention_slots.extend(filled)
    if init == "identity":
        wrap_identity(model, filled, record=first)


def _parent_and_name(model: nn.Module, path: str,
                     modules: dict[str, nn.Module]) -> tuple[nn.Module, str]:
    parent, _, name = path.rpartition(".")
    return modules[parent] if parent else model, name


def _block_site(model: nn.Module, path: str, kind: str, placement: str
                ) -> tuple[str, str, str | None]:
    """(anchor path, side, block whose `se` slot takes the gate or None) for one block."""
    block = model.get_submodule(path)
    last_bn = "bn3" if hasattr(block, "bn3") else "bn2"
    if placement == "block-post":
        if kind == "timm-resnet":  # after the add and the activation that follows it
            return f"{path}.{'act3' if hasattr(block, 'act3') else 'act2'}", "after", None
        return path, "after", None
    if kind == "timm-resnet":
        if block.se is None:  # timm's own attention slot, called after the last norm
            return f"{path}.{last_bn}", "after", path
        return f"{path}.se", "after", None
    if kind == "drop-path":  # its input is the residual branch just before the add
        if getattr(block, "has_skip", True) is False:  # timm's blocks without a shortcut
            return path, "after", None
        return f"{path}.drop_path", "before", None
    return f"{path}.{last_bn}", "after", None  # torchvision blocks: bn -> add


def _sites(model: nn.Module, layout: Layout, plan: Plan) -> list[tuple[str, str, str | None]]:
    sites = []
    for name in plan.placements:
        if name in ("stem", "head"):
            where = layout.stem if name == "stem" else layout.head
            if where is None:
                looked = "module before the first stage" if name == "stem" else "global pool"
                raise ValueError(f"add_attention: placement {name!r}: found no {looked} in "
                                 f"{type(model).__name__}; use insert_attention(at=...)")
            sites.append((where, "after" if name == "stem" else "before", None))
        elif name == "stage":
            sites.extend((layout.stages[s - 1], "after", None) for s in plan.stages)
        else:
            for s in plan.stages:
                for (path, kind), on in zip(layout.blocks[s - 1], plan.blocks[s]):
                    if on:
                        sites.append(_block_site(model, path, kind, name))
    return sites


def _add_by_insertion(model: nn.Module, layout: Layout, plan: Plan, attention: str,
                      init: str, kwargs: dict[str, Any], record: dict[str, Any],
                      example_input: torch.Tensor | None) -> None:
    sites = _sites(model, layout, plan)
    targets = find_targets(model, [f"{p}:{side}" for p, side, slot in sites if slot is None])
    se_sites = [(p, slot) for p, _, slot in sites if slot is not None]
    probes = targets + [(p, "after") for p, _ in se_sites]
    seen = probe_shapes(model, probes, example_input)
    gates = make_gates(attention, [seen[t] for t in probes], init, kwargs)
    info: ModelInfo = ensure_model_info(model)
    paths = [attach(model, path, side, gate) for (path, side), gate in zip(targets, gates)]
    for (_, block), gate in zip(se_sites, gates[len(targets):]):
        model.get_submodule(block).se = gate
        paths.append(f"{block}.se")
    info.insertions.append({"op": "add", **record, "init": init, "kwargs": dict(kwargs)})
    info.attention_slots.extend(paths)
