"""Pretrained weights for attnres models: torchvision weights, files, the CBAM authors' checkpoints.

`load_pretrained(model, source)` takes

* a torchvision weights name (`"IMAGENET1K_V2"`, `"DEFAULT"`, or the full
  `"ResNet50_Weights.IMAGENET1K_V2"`) for the model's architecture, fetched through
  torchvision's weights API and so cached where torchvision caches
  (`torch.hub.get_dir()/checkpoints/<file name from the weights URL>`);
* a path to a `.pth` / `.pt` / `.pth.tar` (read with `torch.load(weights_only=True)`) or a
  `.safetensors` file holding a state dict, or a checkpoint dict holding one under
  `state_dict`, `model`, `model_state`, `net`, ... (DataParallel `module.` prefixes and
  `torch.compile` `_orig_mod.` prefixes are removed);
* a state dict itself;
* the checkpoints of the CBAM authors' official code (github.com/Jongchan/attention-module,
  e.g. `RESNET50_CBAM_new_name_wrap.pth`, 77.62 % top-1 on ImageNet), recognised by their
  key names and converted to attnres names.

The authors' ResNet + CBAM and the attnres model built by `cbam_authors_model(arch)` compute
the same function: CBAM sits in every block on the residual branch after the last BN and
before the add (attnres placement `block`), the shared MLP is Linear -> ReLU -> Linear with
biases, pooling is avg + max, the spatial gate is a 7x7 conv without bias followed by batch
norm, and the stem is torchvision's. Two layout differences are converted: their MLP is
`ChannelGate.mlp.1` / `mlp.3` (ours `channel_gate.fc1` / `fc2`), and their spatial pool stacks
[max, mean] where ours stacks [mean, max], so the conv's two input channels are swapped.
Their classifier pools with `AvgPool2d(7)`, which equals attnres' global average pool for
224 x 224 inputs (7 x 7 final maps), the size they trained and evaluated at; at other input
sizes their network is a different function. Their CIFAR variant (3x3 stem, four stages of
64..512 channels) has no attnres architecture and is refused with a message.

The authors' BAM checkpoints (`RESNET50_IMAGENET_BAM_best.pth.tar`) load their backbone only:
their BAM multiplies the channel and spatial branches and keeps batch norm inside the MLP and
biases in the spatial convs, whereas attnres' BAM follows the paper (branches summed, batch
norm after the MLP and the spatial convs), so no BAM weight has a counterpart. Their BAM
modules (`bam1..3`, after stages 1..3) come back as `unexpected` in the report; build the
model with `bam_authors_model(arch)` and pass `identity_init_missing=True` to fine-tune
fresh, identity-initialised BAM modules on the authors' backbone.

Every non-attention parameter and buffer of the model must be found in the source with the
same shape, or the call fails naming the keys, before anything is copied.
"""

from __future__ import annotations

import os
import pickle
import re
import urllib.error
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attention import ATTENTION, closest
from .insert import wrap_identity

# Keys under which training scripts nest the model's state dict in a checkpoint.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net",
                   "weights", "params")
# Prefixes that wrappers add to every key: DataParallel/DDP and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Child names of the attention slots in attnres models and of modules inserted later.
ATTENTION_SLOTS = ("attn", "attn_post", "attn_before", "attn_after", "stem_attn", "head_attn",
                   "stage_attn")
FILE_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt", ".safetensors")
# Depths that the authors' `ResidualNet` builds.
AUTHORS_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
# attnres CBAM options equal to the authors' CBAM.
AUTHORS_CBAM_KWARGS: dict[str, Any] = dict(reduction=16, pool_types=("avg", "max"),
                                            kernel_size=7, order="channel-first",
                                            mlp_bias=True, spatial_norm="batch")

_CBAM_KEY = re.compile(r"^(?P<block>.+)\.cbam\.(?P<gate>ChannelGate|SpatialGate)\.(?P<rest>.+)$")
_BAM_KEY = re.compile(r"^bam(?P<stage>[1-3])\.(channel_att|spatial_att)\.")
# The authors' names inside CBAM -> attnres names.
_CBAM_RENAMES = {
    ("ChannelGate", "mlp.1"): "channel_gate.fc1",
    ("ChannelGate", "mlp.3"): "channel_gate.fc2",
    ("SpatialGate", "spatial.conv"): "spatial_gate.conv",
    ("SpatialGate", "spatial.bn"): "spatial_gate.norm",
}


@dataclass
class LoadReport:
    """What `load_pretrained` did.

    Attributes:
        source: where the weights came from (file path, torchvision weights, ...).
        format: "state-dict", "torchvision", "cbam-authors" or "bam-authors".
        loaded: number of model state-dict entries copied from the source.
        missing_attention: model attention keys the source has no value for (they keep their
            initialisation, or their modules are made identity, see `identity_init`).
        unexpected: source keys the model has no place for (e.g. attention weights loaded
            into a plain model, or the authors' BAM weights).
        skipped: model keys left as initialised because they matched `skip`.
        identity_init: attention modules made identity at start (`identity_init_missing`).
    """

    source: str
    format: str
    loaded: int
    missing_attention: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    identity_init: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.source} ({self.format})"]
        for name in ("missing_attention", "unexpected", "skipped", "identity_init"):
            values = getattr(self, name)
            if values:
                parts.append(f"{name.replace('_', ' ')}: {len(values)} ({_preview(values)})")
        return "; ".join(parts)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def _preview(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... and {len(names) - limit} more" if len(names) > limit else "")


# --------------------------------------------------------------------------- reading sources

def read_state_dict(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """The state dict in a `.safetensors` / `.pth` / `.pt` / `.pth.tar` file.

    Torch files are read with `weights_only=True` (a pickle that would run code is refused);
    a checkpoint dict is searched for the state dict it holds, and wrapper prefixes
    (`module.`, `_orig_mod.`) are removed.
    """
    path = Path(path)
    if not path.is_file():
        hint = ""
        if "bam" in path.name.lower():  # CBAM / BAM: the names of the authors' checkpoints
            hint = (f"; the CBAM/BAM authors' checkpoints (e.g. RESNET50_CBAM_new_name_wrap"
                    f".pth) are linked from the README of "
                    f"https://github.com/Jongchan/attention-module: download one and put it "
                    f"at {str(path.absolute())!r}, or pass the path where it is")
        raise FileNotFoundError(f"weights file {str(path)!r} not found{hint}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        device = str(map_location) if map_location is not None else "cpu"
        try:
            return strip_wrapper_prefixes(load_file(str(path), device=device))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"cannot read {str(path)!r} as a safetensors file: "
                             f"{_first_line(e)}") from e
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise ValueError(f"cannot read {str(path)!r} as a torch file: {_first_line(e)}") from e
        # torch's message is long; its line naming the refused global is the useful one
        lines = [line.strip() for line in str(e).splitlines() if "global" in line.lower()]
        reason = (lines[0].split(" was not")[0] if lines
                  else "objects that weights_only=True does not allow")
        raise ValueError(f"refusing to load {str(path)!r}: it holds Python objects other than "
                         f"tensors and containers ({reason}); if you trust it, re-save just "
                         f"its state dict with torch.save") from e
    except (RuntimeError, EOFError, KeyError, ValueError) as e:
        raise ValueError(f"cannot read {str(path)!r} as a torch file (truncated, or not a "
                         f"checkpoint): {type(e).__name__}: {_first_line(e)}") from e
    return strip_wrapper_prefixes(find_state_dict(obj, str(path)))


def find_state_dict(obj: Any, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: `obj` itself when it maps names to tensors,
    else the first of `CHECKPOINT_KEYS` holding one (searched recursively)."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
        for key in CHECKPOINT_KEYS:
            if key in obj:
                try:
                    return find_state_dict(obj[key], f"{where}[{key!r}]")
                except ValueError:
                    continue
    keys = f" (keys: {_preview([str(k) for k in obj])})" if isinstance(obj, Mapping) else ""
    raise ValueError(f"no state dict found in {where}{keys}; expected a dict of tensors or a "
                     f"checkpoint holding one under {', '.join(CHECKPOINT_KEYS)}")


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove `module.` (DataParallel, DDP) and `_orig_mod.` (torch.compile) prefixes that
    every key carries."""
    state = dict(state_dict)
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def torchvision_weights(arch: str | None, name: str) -> Any:
    """The torchvision weights enum member `name` ("IMAGENET1K_V2", "DEFAULT", or
    "ResNet50_Weights.IMAGENET1K_V2") for the torchvision architecture `arch`."""
    from torchvision.models import get_model_weights, get_weight

    if "_Weights." in name:
        try:
            return get_weight(name)
        except (ValueError, KeyError, AttributeError) as e:
            raise ValueError(f"unknown torchvision weights {name!r}") from e
    if arch is None:
        raise ValueError(f"the model records no architecture (model.build_args['arch']); pass "
                         f"the full torchvision weights name, e.g. 'ResNet50_Weights.{name}', "
                         f"or a file path")
    try:
        enum = get_model_weights(arch)
    except ValueError as e:
        raise ValueError(f"torchvision has no weights for {arch!r}; pass a weights file "
                         f"instead") from e
    names = list(enum.__members__)
    if name not in names:
        raise ValueError(f"unknown weights {name!r} for {arch}{closest(name, names)}; "
                         f"allowed: {', '.join(names)}, or a file path")
    return enum[name]


def torchvision_state_dict(weights: Any, map_location: Any = "cpu",
                           progress: bool = True) -> dict[str, torch.Tensor]:
    """The state dict of torchvision `weights`, from torch.hub's cache or downloaded into it.

    Offline, raises FileNotFoundError naming the file and the folder to put it in.
    """
    filename = os.path.basename(weights.url)
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    try:
        return weights.get_state_dict(progress=progress, map_location=map_location,
                                      weights_only=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise FileNotFoundError(
            f"cannot download {weights} ({e}); offline, put {filename} (from {weights.url}) "
            f"into {cache_dir}") from e


# ----------------------------------------------------------------- the authors' checkpoints

def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """"cbam-authors", "bam-authors" (Jongchan/attention-module key names) or "state-dict"."""
    if any(_CBAM_KEY.match(k) for k in state_dict):
        return "cbam-authors"
    if any(_BAM_KEY.match(k) for k in state_dict):
        return "bam-authors"
    return "state-dict"


def convert_cbam_authors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' ResNet + CBAM state dict with attnres names and layouts.

    `layerS.I.cbam.ChannelGate.mlp.{1,3}` -> `layerS.I.attn.channel_gate.fc{1,2}`,
    `...SpatialGate.spatial.conv` -> `...attn.spatial_gate.conv` with its two input channels
    swapped ([max, mean] -> [mean, max]), `...SpatialGate.spatial.bn` ->
    `...attn.spatial_gate.norm`. Backbone keys are torchvision's already and stay.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _CBAM_KEY.match(key)
        if match is None:
            converted[key] = value
            continue
        module, _, param = match["rest"].rpartition(".")
        new_module = _CBAM_RENAMES.get((match["gate"], module))
        if new_module is None:
            raise ValueError(f"unrecognised key {key!r} in a CBAM authors' checkpoint; known "
                             f"modules: {', '.join(f'{g}.{m}' for g, m in _CBAM_RENAMES)}")
        if new_module == "spatial_gate.conv" and param == "weight":
            if value.ndim != 4 or value.shape[1] != 2:
                raise ValueError(f"{key!r} has shape {tuple(value.shape)}; expected (1, 2, k, k)")
            value = value[:, [1, 0]].clone()  # [max, mean] -> [mean, max]
        converted[f"{match['block']}.attn.{new_module}.{param}"] = value
    return converted


def cbam_authors_model(arch: str = "resnet50", num_classes: int = 1000,
                       pretrained: str | os.PathLike | None = None) -> nn.Module:
    """The attnres model equivalent to the CBAM authors' `ResidualNet("ImageNet", depth,
    num_classes, "CBAM")`: CBAM in every block (placement `block`) with `AUTHORS_CBAM_KWARGS`.

    `pretrained` (e.g. the path of `RESNET50_CBAM_new_name_wrap.pth`) is loaded with
    `load_pretrained`. Input `(B, 3, 224, 224)` reproduces their outputs, see the module doc.
    """
    from .build import build_model

    if arch not in AUTHORS_ARCHS:
        raise ValueError(f"the CBAM authors' code builds {', '.join(AUTHORS_ARCHS)}, not "
                         f"{arch!r}{closest(arch, list(AUTHORS_ARCHS))}")
    return build_model(arch, attention="cbam", placement="block", num_classes=num_classes,
                       pretrained=pretrained, attention_kwargs=dict(AUTHORS_CBAM_KWARGS))


def bam_authors_model(arch: str = "resnet50", num_classes: int = 1000) -> nn.Module:
    """The attnres model with BAM where the BAM authors put it, after stages 1, 2 and 3
    (`stage_attn.layer1..3`). attnres' BAM follows the paper, so only the authors' backbone
    loads into it (see the module doc)."""
    from .build import build_model

    if arch not in AUTHORS_ARCHS:
        raise ValueError(f"the BAM authors' code builds {', '.join(AUTHORS_ARCHS)}, not "
                         f"{arch!r}{closest(arch, list(AUTHORS_ARCHS))}")
    return build_model(arch, attention="bam", placement="stage", stages=[1, 2, 3],
                       num_classes=num_classes)


# ------------------------------------------------------------------------------- loading

def attention_module_names(model: nn.Module) -> list[str]:
    """Names of the outermost attention modules holding parameters or buffers: the filled
    attnres slots (`layerS.I.attn`, `stage_attn.layerS`, ...), modules inserted as
    `attn_before` / `attn_after`, and any module of a registered attention class."""
    gate_types = tuple(ATTENTION.values())
    slots = set(getattr(model, "attention_slots", ()))
    names: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(n + ".") for n in names):
            continue
        parts = name.split(".")
        is_slot = (name in slots or parts[-1] in ATTENTION_SLOTS
                   or (parts[0] == "stage_attn" and len(parts) == 2))
        if parts == ["stage_attn"] or not (is_slot or isinstance(module, gate_types)):
            continue  # stage_attn itself is a ModuleDict of slots
        if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            names.append(name)
    return names


def _owner(key: str, prefixes: Sequence[str]) -> str | None:
    return next((p for p in prefixes if key.startswith(p + ".")), None)


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p if p.endswith(".") else p + ".") for p in patterns)


def load_pretrained(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor], *,
                    strict_attention: bool = False, identity_init_missing: bool = False,
                    map_location: Any = "cpu", skip: Sequence[str] = (),
                    head: str | None = None, progress: bool = True) -> LoadReport:
    """Load pretrained weights into `model` in place and say what was loaded.

    Args:
        model: an attnres model (its `build_args["arch"]` picks torchvision weights) or any
            module whose non-attention names match the source.
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
    state, description, fmt = _resolve_source(model, source, map_location, progress)
    if fmt == "cbam-authors":
        state = convert_cbam_authors(state)
    # The authors' BAM has no counterpart in attnres' (paper) BAM: set aside, reported.
    set_aside = [k for k in state if fmt == "bam-authors" and _BAM_KEY.match(k)]
    state = {k: v for k, v in state.items() if k not in set_aside}

    target = model.state_dict()
    attn_modules = attention_module_names(model)
    if head is not None and any(k in state and state[k].shape != v.shape
                                for k, v in target.items() if _matches(k, [head])):
        skip = [*skip, head]
    skipped = [k for k in target if _matches(k, skip)]
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
        hint = "; build the model with cbam_authors_model()" if fmt == "cbam-authors" else ""
        problems.append(f"attention modules whose weights differ in the source, built with "
                        f"other options? ({_preview(partial)}){hint}")
    if fmt == "cbam-authors" and target.get("conv1.weight") is not None \
            and state.get("conv1.weight") is not None \
            and state["conv1.weight"].shape[-1] == 3 and target["conv1.weight"].shape[-1] == 7:
        problems.append("this is the authors' CIFAR ResNet (3x3 stem, stages of 64..512 "
                        "channels), which has no attnres architecture")
    if problems:
        name = getattr(model, "build_args", {}).get("arch", type(model).__name__)
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
    return LoadReport(source=description, format=fmt, loaded=len(to_load),
                      missing_attention=missing_attention, unexpected=unexpected,
                      skipped=skipped, identity_init=identity)


def _resolve_source(model: nn.Module, source: Any, map_location: Any,
                    progress: bool) -> tuple[dict[str, torch.Tensor], str, str]:
    """(state dict, description, format) for any accepted `source`."""
    if isinstance(source, Mapping):
        state = strip_wrapper_prefixes(find_state_dict(source, "the given dict"))
        return state, "the given state dict", detect_format(state)
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"pretrained source {source!r}: expected a torchvision weights name, "
                         f"a file path or a state dict")
    text = os.fspath(source)
    looks_like_file = (os.sep in text or "/" in text or text.lower().endswith(FILE_SUFFIXES)
                       or os.path.exists(text))
    if looks_like_file:
        state = read_state_dict(text, map_location)
        return state, repr(text), detect_format(state)
    arch = getattr(model, "build_args", {}).get("arch")
    weights = torchvision_weights(arch, text)
    state = torchvision_state_dict(weights, map_location, progress)
    return strip_wrapper_prefixes(state), f"torchvision {weights}", "torchvision"
