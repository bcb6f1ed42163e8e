"""The rule of every `TrainConfig` field, in one table: `RULES`.

`validate_config` checks a config against it (each field alone, then the few rules that
join fields: nesterov needs momentum, attention options need an attention, the placement
must fit the architecture), before any data is loaded or model built. The CLI's `train`
options are checked against it by the tests, and `--help` shows each field's default
(`default_text`). A field added to `TrainConfig` needs its rule here (a test says so).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..precision import amp_request
from ..utils import MAX_IMAGE_SIZE, closest, resolve_device
from .run_folder import check_folder_path

MAX_SEED = 2**63 - 1  # torch.manual_seed takes 64-bit seeds
FLOAT32_MAX = 3.4028234663852886e38  # the optimizer's factors become float32 scalars


def _models() -> list[str]:
    from ..models import list_models

    return list_models()


def _attention() -> list[str]:
    from ..attention import list_attention

    return list_attention()


def _placements() -> list[str]:
    from ..models import list_placements

    return list_placements()


def _presets() -> list[str]:
    from ..models import list_presets

    return list_presets()


def _recipes() -> list[str]:
    from .recipe import RECIPES

    return sorted(RECIPES)


@dataclass(frozen=True)
class Rule:
    """What one field may hold.

    kind: "int", "number" (int or float, always finite), "bool", "text", "choice" (one of
        `choices()`), or "custom" (only `check`).
    low, high: inclusive bounds, exclusive where `low_open` / `high_open`.
    optional: None is allowed (and then nothing else is checked).
    what: for "choice", the noun of the message ("unknown architecture 'x' ...").
    check: a further check `check(name, value)` raising ValueError.
    default_help: how `--help` words a default the value alone does not explain.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    choices: Callable[[], Sequence[str]] | None = None
    what: str | None = None
    check: Callable[[str, Any], None] | None = None
    default_help: str | None = None

    def describe(self) -> str:
        """What the rule allows, e.g. "a positive integer", "a number in [0, 1)"."""
        noun = {"int": "an integer", "number": "a finite number"}.get(self.kind, self.kind)
        if self.kind == "int" and self.low == 1 and self.high is None:
            return "a positive integer"
        if self.low is not None and self.high is not None:
            return (f"{noun} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {self.high:g}"
        return noun

    def validate(self, name: str, value: Any) -> None:
        """ValueError naming `name`, `value` and what is allowed."""
        if value is None and self.optional:
            return
        if self.kind in ("int", "number"):
            self._check_number(name, value)
        elif self.kind == "bool" and not isinstance(value, bool):
            raise ValueError(f"{name}={value!r}: must be true or false")
        elif self.kind == "text" and not (isinstance(value, str) and value):
            raise ValueError(f"{name}={value!r}: must be non-empty text")
        elif self.kind == "choice":
            allowed = list(self.choices())
            if not isinstance(value, str) or value not in allowed:
                near = closest(value, allowed) if isinstance(value, str) else ""
                head = (f"unknown {self.what} {value!r}" if self.what
                        else f"{name}={value!r}: not allowed")
                raise ValueError(f"{head}{near}; allowed: {', '.join(allowed)}")
        if self.check is not None:
            self.check(name, value)

    def _check_number(self, name: str, value: Any) -> None:
        types = (int,) if self.kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, types) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"{name}={value!r}: must be {self.describe()}")
        too_low = self.low is not None and (value <= self.low if self.low_open
                                            else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open
                                              else value > self.high)
        if too_low or too_high:
            raise ValueError(f"{name}={value!r}: must be {self.describe()}")


# ------------------------------------------------------------------ the custom checks

def _folder(name: str, value: Any) -> None:
    check_folder_path(value, name)


def _placement(name: str, value: Any) -> None:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names:
        raise ValueError(f"{name}={value!r}: a placement name or a non-empty list of them")
    for item in names:
        Rule("choice", choices=_placements, what="placement").validate(name, item)


def _int_list(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        raise ValueError(f"{name}={value!r}: a non-empty list of stage numbers (1, 2, ...)")


def _blocks(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not all(
            isinstance(mask, (list, tuple)) and all(isinstance(b, bool) for b in mask)
            for mask in value.values()):
        raise ValueError(f"{name}={value!r}: a mapping of stage -> list of true/false per "
                         f"block, e.g. {{'3': [False, True, True]}}")


def _kwargs(name: str, value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{name}={value!r}: must be a dict of option names to values")


def _data(name: str, value: Any) -> None:
    from ..data import NAMED_DATASETS

    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ValueError(f"{name}={value!r}: a data set name ({', '.join(NAMED_DATASETS)}) "
                         f"or a path")
    spec = str(value)
    if spec.lower() not in NAMED_DATASETS and not os.path.exists(os.path.expanduser(spec)):
        raise FileNotFoundError(f"data {spec!r} is neither a known name "
                                f"({', '.join(NAMED_DATASETS)}) nor an existing path"
                                f"{closest(spec.lower(), list(NAMED_DATASETS))}")


def _val_split(name: str, value: Any) -> None:
    ok_fraction = (isinstance(value, float) and math.isfinite(value) and 0 < value < 1)
    ok_count = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if value is not None and not (ok_fraction or ok_count):
        raise ValueError(f"{name}={value!r}: must be a fraction in (0, 1) or a whole number "
                         f"of images")


def _milestones(name: str, value: Any) -> None:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(m, (int, float)) and not isinstance(m, bool) and 0 < m < 1
            for m in value):
        raise ValueError(f"{name}={value!r}: fractions in (0, 1)")


def _device(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name}={value!r}: auto, cpu, cuda or cuda:N")
    resolve_device(value)  # raises naming the device when it is not usable here


def _amp(name: str, value: Any) -> None:
    amp_request(value)  # raises naming the value and the allowed precisions


_UNIT = dict(low=0, high=1, high_open=True)  # [0, 1)

# "flip": the logits of each image averaged with those of its mirror image (the horizontal
# flip that training augments with); airbench (Jordan 2024) scores CIFAR-10 this way.
TTA_MODES = ("none", "flip")

RULES: dict[str, Rule] = {
    # model
    "arch": Rule("choice", choices=_models, what="architecture"),
    "attention": Rule("choice", choices=_attention, what="attention", optional=True,
                      default_help="none, the plain network"),
    "placement": Rule("custom", check=_placement),
    "stages": Rule("custom", check=_int_list, default_help="every stage the placement allows"),
    "blocks": Rule("custom", check=_blocks, default_help="every block of those stages"),
    "preset": Rule("choice", choices=_presets, what="preset", optional=True),
    "attention_kwargs": Rule("custom", check=_kwargs,
                             default_help="the module's own, the paper's"),
    "pretrained": Rule("text", optional=True, default_help="none, random initialisation"),
    # data
    "data": Rule("custom", check=_data),
    "val_split": Rule("custom", check=_val_split,
                      default_help="the data set's own validation images, else 0.2 for "
                                   "digits and 0.1 for folders"),
    "split_seed": Rule("int", low=0, high=MAX_SEED),
    "image_size": Rule("int", low=8, high=MAX_IMAGE_SIZE, optional=True,
                       default_help="the data set's own size"),
    "cache_dir": Rule("custom", optional=True, check=_folder,
                      default_help="$ATTNRES_CACHE, else ~/.cache/attnres"),
    # optimisation
    "epochs": Rule("number", low=0, low_open=True),  # fractions: part of an epoch's steps
    "subset": Rule("int", low=1, optional=True, default_help="every training image"),
    "max_steps": Rule("int", low=1, optional=True, default_help="no limit"),
    "max_time": Rule("number", low=0, low_open=True, optional=True, default_help="no limit"),
    "batch_size": Rule("int", low=1),
    "lr": Rule("number", low=0, low_open=True),
    "momentum": Rule("number", **_UNIT),
    "nesterov": Rule("bool"),
    "weight_decay": Rule("number", low=0, high=FLOAT32_MAX),
    "label_smoothing": Rule("number", **_UNIT),
    "schedule": Rule("choice", choices=lambda: ("cosine", "step")),
    "warmup_epochs": Rule("number", low=0, high=1e9),  # epochs x steps must stay finite
    "step_milestones": Rule("custom", check=_milestones),
    "step_gamma": Rule("number", low=0, low_open=True),
    "attention_lr_mult": Rule("number", low=0),
    "tta": Rule("choice", choices=lambda: TTA_MODES, what="test-time augmentation"),
    # run
    "seed": Rule("int", low=0, high=MAX_SEED),
    "device": Rule("custom", check=_device),
    "amp": Rule("custom", check=_amp,
                default_help="auto: bf16 on CUDA (fp16 where the GPU has no bf16) and on a "
                             "CPU with native bf16, else fp32"),
    "channels_last": Rule("bool"),
    "compile": Rule("bool"),
    "deterministic": Rule("bool"),
    "out": Rule("custom", optional=True, check=_folder, default_help="runs/ARCH-ATTN-sSEED"),
    "resume": Rule("text", optional=True, default_help="none, a new run"),
    "monitor": Rule("bool"),
    "skip_nonfinite": Rule("int", low=0),
    "tensorboard": Rule("bool"),
    "quiet": Rule("bool"),
    "recipe": Rule("choice", choices=_recipes, what="recipe", optional=True),
    "overwrite": Rule("bool"),
    "source": Rule("text", optional=True, default_help="none: the architecture --arch names"),
    "add_attention": Rule("choice", choices=_attention, what="attention", optional=True,
                          default_help="none"),
    "ema": Rule("number", low=0, high=1, high_open=True,
                default_help="0, no EMA; e.g. 0.999"),
    "precise_bn": Rule("int", low=0, default_help="0, off"),
    "loader": Rule("choice", choices=lambda: ("auto", "memory", "stream")),
    "workers": Rule("int", low=0),
    "mean": Rule("custom", optional=True, check=lambda n, v: None,
                 default_help="from the pretrained weights or the data"),
    "std": Rule("custom", optional=True, check=lambda n, v: None,
                default_help="from the pretrained weights or the data"),
}


def check_config(config: Any) -> None:
    """ValueError (FileNotFoundError for data that is not there) naming the first bad
    option of `config`: every field by its rule, then the rules that join fields."""
    for name, rule in RULES.items():
        rule.validate(name, getattr(config, name))
    if config.nesterov and config.momentum == 0:
        raise ValueError("nesterov needs momentum > 0 (got momentum=0)")
    growth = max(1.0, config.step_gamma) ** len(config.step_milestones) \
        if config.schedule == "step" else 1.0
    peak = config.lr * max(1.0, config.attention_lr_mult) * growth
    if not peak <= FLOAT32_MAX:
        raise ValueError(f"lr={config.lr!r}: the largest learning rate of the run "
                         f"(lr x attention_lr_mult x step_gamma at the last milestone = "
                         f"{peak:g}) is beyond float32 ({FLOAT32_MAX:.3g})")
    if config.resume is not None and config.overwrite:
        raise ValueError("resume and overwrite exclude each other: --resume continues the "
                         "run in the folder, --overwrite replaces it")
    from ..attention import check_attention_kwargs, list_attention
    from ..models.build import arch_spec
    from ..models.placement import resolve_plan

    if config.attention is None and config.attention_kwargs:
        raise ValueError(f"attention_kwargs={config.attention_kwargs!r} given without "
                         f"attention; choose one of {', '.join(list_attention())}")
    if config.attention is not None:
        check_attention_kwargs(config.attention, config.attention_kwargs)
    resolve_plan(arch_spec(config.arch).layers, config.placement, config.stages,
                 config.blocks, config.preset)


def default_text(name: str, default: Any) -> str:
    """How `--help` shows the default of field `name`."""
    rule = RULES.get(name)
    if rule is not None and rule.default_help is not None:
        return rule.default_help
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, (list, tuple)):
        return " ".join(str(v) for v in default)
    return "none" if default is None else str(default)


__all__ = ["FLOAT32_MAX", "MAX_SEED", "RULES", "Rule", "TTA_MODES", "check_config", "default_text"]
