"""Pretrained weights for attnres models (and any module): `load_pretrained(model, source)`.

`source` is

* a torchvision weights name (`"IMAGENET1K_V2"`, `"DEFAULT"`, or the full
  `"ResNet50_Weights.IMAGENET1K_V2"`) for the model's architecture;
* a path to a `.pth` / `.pt` / `.pth.tar` / `.safetensors` file holding a state dict or a
  checkpoint dict holding one (see `attnres.models.sources`);
* a state dict itself.

State dicts in another layout are recognised by the `SourceFormat`s registered with
`register_format` and converted to attnres names: the CBAM and BAM authors' checkpoints
(`attnres.models.authors`). Every non-attention parameter and buffer of the model must be
found in the source with the same shape, or the call fails naming the keys, before anything
is copied. The first conv of a model with `in_chans != 3` gets RGB weights adapted as timm
does (`adapt_input_conv`).

Attention modules are found through the registry (`iter_attention`; an `IdentityInit`
wrapper counts as its gate) and the slots the model's `ModelInfo` records. Loading updates
the model's `ModelInfo`: `weights`, `load_report`, and for torchvision weights and the
authors' checkpoints the `preprocessing` they were trained with.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..attention import iter_attention
from .info import LoadReport, Preprocessing, _preview, get_model_info
from .insert import IdentityInit, wrap_identity
from .layout import describe_model, ensure_model_info, first_conv
from .sources import (CHECKPOINT_KEYS, WRAPPER_PREFIXES, adapt_input_conv, default_weights,
                      find_state_dict, read_state_dict, strip_wrapper_prefixes,
                      torchvision_state_dict, torchvision_weights, weights_preprocessing)

FILE_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt", ".safetensors")
StateDict = Mapping[str, torch.Tensor]


def _never(key: str) -> bool:
    return False


def _no_problems(state: StateDict, target: StateDict) -> list[str]:
    return []


@dataclass(frozen=True)
class SourceFormat:
    """A state-dict layout that `load_pretrained` recognises and converts.

    detect: whether a state dict is in this layout.
    convert: the state dict with attnres names and layouts.
    set_aside: source keys with no attnres counterpart (reported as `unexpected`).
    check: extra problems of loading `state` into a model with state dict `target`.
    hint: added to the error when attention modules would load only in part.
    preprocessing: the inputs the weights were trained with.
    """

    name: str
    detect: Callable[[StateDict], bool]
    convert: Callable[[StateDict], dict[str, torch.Tensor]] = dict
    set_aside: Callable[[str], bool] = _never
    check: Callable[[StateDict, StateDict], list[str]] = _no_problems
    hint: str = ""
    preprocessing: Preprocessing | None = None


_FORMATS: dict[str, SourceFormat] = {}
_PLAIN = SourceFormat("state-dict", detect=lambda state: True)


def register_format(fmt: SourceFormat) -> SourceFormat:
    """Add `fmt` to the layouts `load_pretrained` recognises (tried in registration order)."""
    _FORMATS[fmt.name] = fmt
    return fmt


def detect_format(state_dict: StateDict) -> str:
    """The name of the registered layout of `state_dict` ("cbam-authors", "bam-authors"),
    or "state-dict" (attnres / torchvision names)."""
    return next((f.name for f in _FORMATS.values() if f.detect(state_dict)), "state-dict")


def attention_module_names(model: nn.Module) -> list[str]:
    """Names of the outermost attention modules holding parameters or buffers: registered
    gate modules (`iter_attention`; an `IdentityInit` wrapper stands for its gate) and the
    attention slots recorded in the model's `ModelInfo`."""
    modules = dict(model.named_modules())
    candidates = set()
    for path, _, _ in iter_attention(model, kind="gate"):
        parent, _, last = path.rpartition(".")
        candidates.add(parent if last == "attn" and isinstance(modules.get(parent), IdentityInit)
                       else path)
    info = get_model_info(model)
    candidates.update(p for p in (info.attention_slots if info else ()) if p in modules)
    names: list[str] = []
    for name, module in modules.items():
        if name not in candidates or any(name.startswith(n + ".") for n in names):
            continue
        if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            names.append(name)
    return names


def _owner(key: str, prefixes: Sequence[str]) -> str | None:
    return next((p for p in prefixes if key.startswith(p + ".")), None)


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p if p.endswith(".") else p + ".") for p in patterns)


def _adapt_first_conv(model: nn.Module, state: dict[str, torch.Tensor],
                      target: StateDict) -> list[str]:
    """Adapt an RGB first-conv weight of `state` to the model's input channels in place."""
    name = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    key = f"{name}.weight" if name is not None else None
    if key not in state or key not in target:
        return []
    have, want = state[key].shape, target[key].shape
    if have == want or have[1] != 3 or (have[0], *have[2:]) != (want[0], *want[2:]):
        return []
    state[key] = adapt_input_conv(state[key], want[1])
    return [key]


def _problems(fmt: SourceFormat, state: StateDict, target: StateDict, skipped: list[str],
              attn_modules: list[str]) -> tuple[list[str], list[str], set[str]]:
    """(problems, missing attention keys, attention modules that get no weights)."""
    problems: list[str] = []
    missing = [k for k in target if k not in state and k not in skipped
               and not k.endswith("num_batches_tracked")]
    missing_backbone = [k for k in missing if _owner(k, attn_modules) is None]
    missing_attention = [k for k in missing if _owner(k, attn_modules) is not None]
    if missing_backbone:
        problems.append(f"{len(missing_backbone)} missing non-attention keys "
                        f"({_preview(missing_backbone)})")
    mismatched = [f"{k}: source {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in target if k in state and k not in skipped
                  and state[k].shape != target[k].shape]
    if mismatched:
        hint = (" (to train a new classifier pass skip=['fc'])"
                if any(m.startswith("fc.") for m in mismatched) else "")
        problems.append(f"{len(mismatched)} shape mismatches ({_preview(mismatched, 4)}){hint}")
    # An attention module given some of its weights but not all, or extra ones, is never
    # what was meant: the source's attention has other options (bias, norm, kernel size).
    fed = {_owner(k, attn_modules) for k in state} - {None}
    starved = {_owner(k, attn_modules) for k in missing_attention}
    overfed = {_owner(k, attn_modules) for k in state if k not in target} - {None}
    partial = sorted((fed & starved) | overfed)
    if partial:
        problems.append(f"attention modules whose weights differ in the source, built with "
                        f"other options? ({_preview(partial)}){fmt.hint}")
    return problems + fmt.check(state, target), missing_attention, starved


def load_pretrained(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor], *,
                    strict_attention: bool = False, identity_init_missing: bool = False,
                    map_location: Any = "cpu", skip: Sequence[str] = (),
                    head: str | None = None, progress: bool = True) -> LoadReport:
    """Load pretrained weights into `model` in place and say what was loaded.

    Args:
        model: an attnres model (its architecture picks torchvision weights) or any module
            whose non-attention names match the source.
        source: torchvision weights name, file path, state dict, or the CBAM authors'
            checkpoint (see the module doc).
        strict_attention: fail when attention keys of the model are missing from the source
            or source keys are unused.
        identity_init_missing: make attention modules that got no weights an exact identity
            at start (a learnable scale s = 0 in y = x + s * (attn(x) - x)).
        map_location: passed to `torch.load`.
        skip: keys or key prefixes of the model to leave as initialised, e.g. `["fc"]` to
            fine-tune ImageNet weights on another number of classes.
        head: the classifier's module name (e.g. "fc"), skipped only when the source's has
            another shape (another number of classes), so that it trains afresh.
        progress: show torchvision's download progress bar.

    Raises:
        ValueError: a non-attention key of the model is missing from the source or has another
            shape, an attention module would be loaded only in part, or the source is bad.
        FileNotFoundError: the file is missing, or torchvision weights cannot be downloaded.
    """
    state, description, fmt, weights = _resolve_source(model, source, map_location, progress)
    state = fmt.convert(state)
    set_aside = [k for k in state if fmt.set_aside(k)]
    state = {k: v for k, v in state.items() if k not in set_aside}

    target = model.state_dict()
    adapted = _adapt_first_conv(model, state, target)
    attn_modules = attention_module_names(model)
    head_skipped = head is not None and any(k in state and state[k].shape != v.shape
                                            for k, v in target.items() if _matches(k, [head]))
    skip = [*skip, head] if head_skipped else list(skip)
    skipped = [k for k in target if _matches(k, skip)]
    problems, missing_attention, starved = _problems(fmt, state, target, skipped, attn_modules)
    if problems:
        name = describe_model(model).architecture or type(model).__name__
        raise ValueError(f"cannot load {description} into {name}: " + "; ".join(problems))

    unexpected = set_aside + [k for k in state if k not in target]
    if strict_attention and (missing_attention or unexpected):
        raise ValueError(f"strict_attention: {description} lacks {len(missing_attention)} "
                         f"attention keys ({_preview(missing_attention)}) and has "
                         f"{len(unexpected)} unused keys ({_preview(unexpected)})")

    to_load = {k: v for k, v in state.items() if k in target and k not in skipped}
    result = model.load_state_dict(to_load, strict=False)
    # Our checks above and torch's must agree; a difference is a bug here, not bad input.
    assert not result.unexpected_keys, result.unexpected_keys

    identity: list[str] = []
    if identity_init_missing:
        identity = wrap_identity(model, [n for n in attn_modules if n in starved])
    report = LoadReport(source=description, format=fmt.name, loaded=len(to_load),
                        missing_attention=missing_attention, unexpected=unexpected,
                        skipped=skipped, identity_init=identity, adapted=adapted)
    # class names only when the source's classifier was loaded: every source tensor was
    _record(model, report, weights, fmt, head_loaded=len(to_load) == len(state))
    return report


def _record(model: nn.Module, report: LoadReport, weights: Any, fmt: SourceFormat,
            head_loaded: bool) -> None:
    """The load in the model's `ModelInfo`: weights, report, and known preprocessing."""
    info = ensure_model_info(model)
    conv = first_conv(model)
    in_chans = conv.in_channels if conv is not None else 3
    info.load_report = report
    if weights is not None and not isinstance(weights, str):  # a torchvision enum member
        info.weights = f"{type(weights).__name__}.{weights.name}"
        info.preprocessing = weights_preprocessing(weights, in_chans, head=head_loaded)
        return
    info.weights = weights
    if fmt.preprocessing is not None:
        rgb = in_chans == 3
        info.preprocessing = replace(fmt.preprocessing, mean=fmt.preprocessing.mean if rgb
                                     else None, std=fmt.preprocessing.std if rgb else None)


def _resolve_source(model: nn.Module, source: Any, map_location: Any, progress: bool
                    ) -> tuple[dict[str, torch.Tensor], str, SourceFormat, Any]:
    """(state dict, description, format, weights: a path, a torchvision enum member or
    "<state dict>") for any accepted `source`."""
    def layout(state: StateDict) -> SourceFormat:
        return _FORMATS.get(detect_format(state), _PLAIN)

    if isinstance(source, Mapping):
        state = strip_wrapper_prefixes(find_state_dict(source, "the given dict"))
        return state, "the given state dict", layout(state), "<state dict>"
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"pretrained source {source!r}: expected a torchvision weights name, "
                         f"a file path or a state dict")
    text = os.fspath(source)
    looks_like_file = (os.sep in text or "/" in text or text.lower().endswith(FILE_SUFFIXES)
                       or os.path.exists(text))
    if looks_like_file:
        state = read_state_dict(text, map_location)
        return state, repr(text), layout(state), text
    info = describe_model(model)
    weights = torchvision_weights(info.architecture if info.library == "attnres" else None, text)
    state = torchvision_state_dict(weights, map_location, progress)
    fmt = replace(_PLAIN, name="torchvision")
    return strip_wrapper_prefixes(state), f"torchvision {weights}", fmt, weights


__all__ = ["CHECKPOINT_KEYS", "FILE_SUFFIXES", "LoadReport", "SourceFormat", "WRAPPER_PREFIXES",
           "adapt_input_conv", "attention_module_names", "default_weights", "detect_format",
           "find_state_dict", "load_pretrained", "read_state_dict", "register_format",
           "strip_wrapper_prefixes", "torchvision_state_dict", "torchvision_weights",
           "weights_preprocessing"]
