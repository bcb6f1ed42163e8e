"""Where attention goes in a `ResNet`: placements, stage / block selection, presets.

Placements (one or a list, combinable):
    block       in each selected block, residual branch after the last norm, before the add
    block-post  in each selected block, after the add and ReLU
    stage       after the last block of each selected stage
    stem        after the stem, before the first stage
    head        after the last stage, before global pooling

`stages` picks stages by 1-based index (default all); `blocks` picks blocks inside a stage,
`{4: [False, False, True]}`. Presets set the three together:
    all          block placement, every block
    last-stage   every block of the last stage only (the seeds' "last block only")
    progressive  every block of stages 2..last (none in stage 1)
    selective    every block of stage 2 and of the last stage: stages 2 and 4 of an
                 ImageNet ResNet, stages 2 and 3 of a 3-stage CIFAR ResNet
    stem+head    stem and head placements
Channel counts come from the network (block output channels, stage widths).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..attention import closest, create_attention

PLACEMENTS = ("block", "block-post", "stage", "stem", "head")
PRESETS = ("all", "last-stage", "progressive", "selective", "stem+head")


def list_placements() -> list[str]:
    """Placement names accepted by `build_model(placement=...)`."""
    return list(PLACEMENTS)


def list_presets() -> list[str]:
    """Preset names accepted by `build_model(preset=...)`."""
    return list(PRESETS)


@dataclass(frozen=True)
class Plan:
    """A resolved placement: which slots get attention.

    `blocks[s]` is the per-block selection of stage `s` (1-based), present for every
    selected stage.
    """

    placements: tuple[str, ...]
    stages: tuple[int, ...]
    blocks: dict[int, tuple[bool, ...]]


def _placements(placement: str | Sequence[str]) -> tuple[str, ...]:
    names = [placement] if isinstance(placement, str) else list(placement)
    if not names:
        raise ValueError(f"placement={placement!r}: give at least one of {', '.join(PLACEMENTS)}")
    for name in names:
        if name not in PLACEMENTS:
            raise ValueError(f"unknown placement {name!r}{closest(str(name), list(PLACEMENTS))}; "
                             f"allowed: {', '.join(PLACEMENTS)}")
    return tuple(dict.fromkeys(names))  # keep order, drop repeats


def _preset(preset: str, num_stages: int) -> tuple[tuple[str, ...], list[int]]:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}{closest(str(preset), list(PRESETS))}; "
                         f"allowed: {', '.join(PRESETS)}")
    every = list(range(1, num_stages + 1))
    if preset == "all":
        return ("block",), every
    if preset == "last-stage":
        return ("block",), [num_stages]
    if preset == "progressive":
        return ("block",), every[1:]
    if preset == "selective":
        return ("block",), sorted({min(2, num_stages), num_stages})
    return ("stem", "head"), every


def resolve_plan(stage_depths: Sequence[int], placement: str | Sequence[str] = "block",
                 stages: Sequence[int] | None = None,
                 blocks: Mapping[int | str, Sequence[bool]] | None = None,
                 preset: str | None = None) -> Plan:
    """Check and resolve the placement arguments for a network whose stage `s` has
    `stage_depths[s - 1]` blocks. A preset replaces `placement` and `stages`, so giving
    it together with a non-default placement or with `stages` is an error."""
    num_stages = len(stage_depths)
    if preset is not None:
        if stages is not None or _placements(placement) != ("block",):
            raise ValueError(f"preset={preset!r} sets placement and stages itself; "
                             "leave placement and stages at their defaults")
        names, stage_list = _preset(preset, num_stages)
    else:
        names = _placements(placement)
        stage_list = list(range(1, num_stages + 1)) if stages is None else list(stages)
    for s in stage_list:
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= num_stages:
            raise ValueError(f"stage {s!r} out of range: this network has stages "
                             f"1..{num_stages}")
    stage_list = sorted(set(stage_list))

    chosen = {s: (True,) * stage_depths[s - 1] for s in stage_list}
    for key, mask in (blocks or {}).items():
        try:
            s = int(key)  # JSON turns the integer keys of `build_args` into strings
        except (TypeError, ValueError):
            raise ValueError(f"blocks key {key!r} is not a stage index") from None
        if s not in chosen:
            raise ValueError(f"blocks gives stage {s}, which is not selected; selected "
                             f"stages: {stage_list}")
        mask = tuple(bool(b) for b in mask)
        if len(mask) != stage_depths[s - 1]:
            raise ValueError(f"blocks[{s}] has {len(mask)} entries; stage {s} has "
                             f"{stage_depths[s - 1]} blocks")
        chosen[s] = mask
    return Plan(names, tuple(stage_list), chosen)


def placement_record(plan: Plan, stages: Sequence[int] | None,
                     blocks: Mapping[int | str, Sequence[bool]] | None,
                     preset: str | None) -> dict[str, Any]:
    """The placement arguments as `build_model` records them (JSON data): `placement` (one
    name or a list; "block" under a preset, which sets it), `stages`, `blocks`, `preset`."""
    return {"placement": ("block" if preset is not None  # the preset sets it
                          else plan.placements[0] if len(plan.placements) == 1
                          else list(plan.placements)),
            "stages": list(stages) if stages is not None else None,
            "blocks": ({str(k): [bool(b) for b in v] for k, v in blocks.items()}
                       if blocks else None),
            "preset": preset}


def apply_plan(model: nn.Module, plan: Plan, attention: str, **attention_kwargs: Any) -> list[str]:
    """Fill the attention slots of an attnres `ResNet` named by `plan` with new
    `create_attention(attention, channels, **attention_kwargs)` modules; returns the names
    of the filled slots (e.g. `layer4.2.attn`, `stage_attn.layer2`)."""
    filled: list[str] = []
    for name in plan.placements:
        if name == "stem":
            model.stem_attn = create_attention(attention, model.stem_channels, **attention_kwargs)
            filled.append("stem_attn")
        elif name == "head":
            model.head_attn = create_attention(attention, model.num_features, **attention_kwargs)
            filled.append("head_attn")
        elif name == "stage":
            for s in plan.stages:
                stage_name = model.stage_names[s - 1]
                channels = model.stage(s)[-1].out_channels
                model.stage_attn[stage_name] = create_attention(attention, channels,
                                                                **attention_kwargs)
                filled.append(f"stage_attn.{stage_name}")
        else:
            slot = "attn" if name == "block" else "attn_post"
            for s in plan.stages:
                stage_name = model.stage_names[s - 1]
                for i, (block, on) in enumerate(zip(model.stage(s), plan.blocks[s])):
                    if on:
                        setattr(block, slot, create_attention(attention, block.out_channels,
                                                              **attention_kwargs))
                        filled.append(f"{stage_name}.{i}.{slot}")
    return filled
