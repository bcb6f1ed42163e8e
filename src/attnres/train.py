"""Training: `TrainConfig`, `train()`, checkpoints, resume, DDP and `load_model`.

Read it top to bottom: the config, the checkpoint files, the recipe pieces (parameter
groups, learning-rate schedule), then the loop itself in `train()`.

A run folder `OUT/` holds `config.json`, `last.pt`, `best.pt`, `metrics.csv` (one row per
epoch), TensorBoard events and `summary.json`. Checkpoints are written atomically, hold
everything needed to continue bit-exactly on CPU (model, optimizer, scheduler, scaler,
RNG states, config) and are read back with `torch.load(weights_only=True)`.

Distributed: run under `torchrun --nproc_per_node=N -m attnres train ...`; `batch_size` is
the global batch, split evenly across the processes, so a recipe means the same thing on
any number of them. Only rank 0 writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pickle
import random
import resource
import signal
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

CHECKPOINT_FORMAT = 1


@dataclass
class TrainConfig:
    """Every option of a training run; the CLI fills it and each checkpoint stores it.

    Defaults are the recipe (CIFAR-style ResNet: SGD + nesterov, cosine with warm-up,
    label smoothing 0.1, weight decay 5e-4 on conv/linear weights only).
    """

    # model (see attnres.build_model)
    arch: str = "resnet20"
    attention: str | None = None             # None: the plain network
    placement: str | list[str] = "block"     # or several, e.g. ["stem", "head"]
    stages: list[int] | None = None          # None: every stage the placement allows
    blocks: dict[str, list[bool]] | None = None  # stage -> which blocks get attention
    preset: str | None = None                # a named placement preset
    attention_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None            # torchvision weights name or a file

    # data (see attnres.load_dataset)
    data: str = "digits"
    val_split: float | None = None           # fraction (or count) held out for validation
    split_seed: int = 0                      # fixed, so every seed sees the same val set
    image_size: int | None = None            # None: the data set's own size
    cache_dir: str | None = None

    # optimisation
    epochs: int = 30
    batch_size: int = 128                    # global batch, split across DDP processes
    lr: float = 0.1                          # peak learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4               # not applied to 0-D/1-D parameters (norm, bias, scale)
    label_smoothing: float = 0.1
    schedule: str = "cosine"                 # "cosine" or "step"
    warmup_epochs: float = 1.0               # linear warm-up from lr/warmup_steps, per step
    step_milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions
    step_gamma: float = 0.1
    attention_lr_mult: float = 1.0           # lr multiplier for attention parameters

    # run
    seed: int = 0
    device: str = "auto"                     # "auto", "cpu", "cuda" or "cuda:N"
    amp: bool = False                        # autocast (CUDA: bf16 or fp16 + GradScaler)
    amp_dtype: str = "bfloat16"              # "bfloat16" or "float16"
    channels_last: bool = True               # CUDA, and CPU under --amp
    compile: bool = False                    # torch.compile the model
    deterministic: bool = False              # CUDA: deterministic kernels (slower)
    out: str | None = None                   # None: runs/<arch>-<attention>-s<seed>
    resume: str | None = None                # a run folder or a checkpoint file
    monitor: bool = False                    # log attention statistics per epoch
    skip_nonfinite: int = 0                  # tolerate this many non-finite-loss steps
    tensorboard: bool = True
    quiet: bool = False


# Options that may change when a run is resumed; all others must match the saved run or be
# left at their defaults (then the saved values are used).
RESUME_OVERRIDABLE = {"epochs", "out", "resume", "device", "compile", "monitor",
                      "skip_nonfinite", "tensorboard", "quiet"}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: corrupt, truncated, unsafe or not ours."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite more often than `skip_nonfinite` allows."""


def validate_config(config: TrainConfig) -> None:
    """Raise ValueError naming the first bad option of `config`."""
    def positive_int(name: str) -> None:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: must be a positive integer")

    positive_int("epochs")
    positive_int("batch_size")
    if not (isinstance(config.lr, (int, float)) and config.lr > 0 and math.isfinite(config.lr)):
        raise ValueError(f"lr={config.lr!r}: must be a positive number")
    for name in ("momentum", "label_smoothing"):
        value = getattr(config, name)
        if not 0 <= value < 1:
            raise ValueError(f"{name}={value!r}: must be in [0, 1)")
    if config.nesterov and config.momentum == 0:
        raise ValueError("nesterov needs momentum > 0 (got momentum=0)")
    if config.weight_decay < 0:
        raise ValueError(f"weight_decay={config.weight_decay!r}: must be >= 0")
    if config.attention_lr_mult < 0:
        raise ValueError(f"attention_lr_mult={config.attention_lr_mult!r}: must be >= 0")
    if config.warmup_epochs < 0:
        raise ValueError(f"warmup_epochs={config.warmup_epochs!r}: must be >= 0")
    if config.schedule not in ("cosine", "step"):
        raise ValueError(f"schedule={config.schedule!r}: allowed: cosine, step")
    if any(not 0 < m < 1 for m in config.step_milestones):
        raise ValueError(f"step_milestones={config.step_milestones!r}: fractions in (0, 1)")
    if config.val_split is not None and not (0 < config.val_split < 1 or (
            isinstance(config.val_split, int) and config.val_split >= 1)):
        raise ValueError(f"val_split={config.val_split!r}: must be a fraction in (0, 1) or a "
                         f"whole number of images")
    if config.image_size is not None and (not isinstance(config.image_size, int)
                                          or config.image_size < 1):
        raise ValueError(f"image_size={config.image_size!r}: must be a positive integer")
    if config.amp_dtype not in ("bfloat16", "float16"):
        raise ValueError(f"amp_dtype={config.amp_dtype!r}: allowed: bfloat16, float16")
    if isinstance(config.skip_nonfinite, bool) or config.skip_nonfinite < 0:
        raise ValueError(f"skip_nonfinite={config.skip_nonfinite!r}: must be >= 0")
    if config.device != "auto" and not (config.device == "cpu"
                                        or config.device.startswith("cuda")):
        raise ValueError(f"device={config.device!r}: allowed: auto, cpu, cuda, cuda:N")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={config.device!r}: CUDA is not available here; use cpu")
    if not isinstance(config.attention_kwargs, dict):
        raise ValueError(f"attention_kwargs={config.attention_kwargs!r}: must be a dict")

    from attnres.attention import closest, list_attention
    from attnres.models import list_models, list_placements, list_presets

    def known(name: str, value: str | None, allowed: list[str]) -> None:
        if value is not None and value not in allowed:
            raise ValueError(f"unknown {name} {value!r}{closest(value, allowed)}; "
                             f"allowed: {', '.join(allowed)}")

    known("architecture", config.arch, list_models())
    known("attention", config.attention, list_attention())
    placements = [config.placement] if isinstance(config.placement, str) else config.placement
    for placement in placements:
        known("placement", placement, list_placements())
    known("preset", config.preset, list_presets())


# ---------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------

def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None],
                  check: Callable[[str], None] | None = None) -> None:
    """Write `path` through a temporary file in the same folder, fsync, then rename.

    A kill at any moment leaves either the old file or the new one, never a mix; `check`
    may reject the written file before it replaces the old one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _check_zip(tmp: str) -> None:
    # torch.save writes a zip archive; a readable central directory means it is complete
    try:
        with zipfile.ZipFile(tmp) as archive:
            if not archive.namelist():
                raise CheckpointError(f"{tmp}: written checkpoint is empty")
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{tmp}: written checkpoint is not readable ({e})") from e


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """`torch.save(obj, path)` atomically (temp file in the same folder + fsync + rename)."""
    _atomic_write(path, lambda f: torch.save(obj, f), check=_check_zip)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with `torch.load(weights_only=True)`.

    Raises FileNotFoundError when missing, and CheckpointError (a ValueError) when the file
    is truncated or corrupt, or holds objects other than tensors and plain data (a pickle
    that would run code is refused, never executed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            raise CheckpointError(
                f"{path}: refused to load: it holds Python objects other than tensors and "
                f"plain data, which could run code (torch.load weights_only=True)") from e
        raise CheckpointError(f"{path}: corrupt or not a checkpoint ({e})") from e
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({reason})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds {type(obj).__name__})")
    return obj


def _checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file from a file or a run folder (best.pt, else last.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"run folder {str(path)!r} holds no best.pt or last.pt")
    return path


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained model from a checkpoint (or a run folder: its best.pt) alone.

    The architecture, attention and placement come from the checkpoint's `build_args`; the
    model is returned in eval mode with `model.preprocessing = {"mean", "std",
    "image_size", "classes"}` describing the inputs it expects, `(B, 3, S, S)` normalised.
    """
    from attnres.models import build_model

    file = _checkpoint_file(path)
    ckpt = load_checkpoint(file, map_location=map_location)
    if "model" not in ckpt or "build_args" not in ckpt:
        raise CheckpointError(f"{file}: not an attnres training checkpoint (no model/build_args"
                              f"); load plain state dicts with attnres.load_pretrained")
    build_args = dict(ckpt["build_args"])
    build_args["pretrained"] = None  # the checkpoint holds the weights; never download
    model = build_model(build_args.pop("arch"), **build_args)
    model.load_state_dict(ckpt["model"])
    model.to(map_location)
    model.eval()
    model.preprocessing = dict(ckpt.get("preprocessing", {}))
    return model


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    _atomic_write(path, lambda f: f.write(text.encode()))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))


# ---------------------------------------------------------------------------------------
# RNG states (plain tensors and numbers, so weights_only loading accepts them)
# ---------------------------------------------------------------------------------------

def _rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [version, list(internal), gauss_next],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------
# Recipe pieces
# ---------------------------------------------------------------------------------------

def _attention_classes() -> tuple[type[nn.Module], ...]:
    from attnres import attention

    return (attention.CBAM, attention.ChannelGate, attention.SpatialGate, attention.BAM,
            attention.BamGate, attention.SqueezeExcite, attention.EfficientChannelAttention,
            attention.EcaGate)


def attention_parameter_names(model: nn.Module) -> set[str]:
    """Names of parameters inside attention modules.

    Those are the parameters under a module whose own name contains "attn" (`attn`,
    `attn_post`, `stage_attn`, `stem_attn`, `head_attn`) or that is one of the gate classes
    of `attnres.attention`. Convolutions replaced by SK or split attention count as backbone.
    """
    classes = _attention_classes()
    names: set[str] = set()
    for module_name, module in model.named_modules():
        is_attention = isinstance(module, classes) or "attn" in module_name.rsplit(".", 1)[-1]
        if is_attention and module_name:
            names |= {f"{module_name}.{p}" for p, _ in module.named_parameters()}
    return names


def param_groups(model: nn.Module, *, lr: float, weight_decay: float,
                 attention_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """SGD parameter groups: decay vs no decay, backbone vs attention.

    0-D and 1-D parameters (norm weights and biases, conv/linear biases, identity-init
    scales) get no weight decay; attention parameters get `lr * attention_lr_mult`.
    Empty groups are left out; each group carries a `name` for logging.
    """
    attention_names = attention_parameter_names(model)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (name in attention_names, param.ndim <= 1)
            groups.setdefault(key, []).append(param)
    result = []
    for (is_attention, no_decay), params in sorted(groups.items()):
        result.append({
            "params": params,
            "lr": lr * (attention_lr_mult if is_attention else 1.0),
            "weight_decay": 0.0 if no_decay else weight_decay,
            "name": ("attention" if is_attention else "backbone")
                    + ("/no_decay" if no_decay else "/decay"),
        })
    return result


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str,
              milestones: list[float], gamma: float) -> float:
    """Learning-rate multiplier before optimizer step `step` (0-based), per step.

    Linear warm-up to 1 over `warmup_steps`, then cosine decay to 0 at `total_steps`, or
    a multiplication by `gamma` at each milestone (fractions of `total_steps`).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return gamma ** sum(step >= round(m * total_steps) for m in milestones)


# ---------------------------------------------------------------------------------------
# Distributed, memory, signals
# ---------------------------------------------------------------------------------------

@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_name: str) -> _Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Dist()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto"
                                                  and torch.cuda.is_available())
    started = False
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        started = True
    return _Dist(rank, world_size, local_rank, started)


def _pick_device(config: TrainConfig, ddp: _Dist) -> torch.device:
    name = config.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and ddp.enabled:
        name = f"cuda:{ddp.local_rank}"
    return torch.device(name)


class _MemoryMeter:
    """Peak memory of the training loop, in MiB.

    CUDA: `torch.cuda.max_memory_allocated` (tensors only, after a reset at the start).
    CPU: how far the process's resident set rose above its size at the start: the peak
    (VmHWM, reset through /proc/self/clear_refs on Linux; otherwise ru_maxrss, which cannot
    be reset and so may include earlier peaks) minus the resident size at the start. An
    estimate: the allocator may reuse memory the process already held.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start_rss_kb = 0
        self.can_reset = False

    @staticmethod
    def _status_kb(key: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.can_reset = True
        except OSError:
            self.can_reset = False
        rss = self._status_kb("VmRSS")
        self.start_rss_kb = rss if rss is not None else self._maxrss_kb()

    @staticmethod
    def _maxrss_kb() -> int:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak  # macOS reports bytes

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        peak = self._status_kb("VmHWM") if self.can_reset else None
        peak = peak if peak is not None else self._maxrss_kb()
        return max(0, peak - self.start_rss_kb) / 1024


class _StopRequest:
    """SIGINT or SIGTERM sets a flag that the loop checks between steps (a second one aborts
    at once). SIGTERM counts too: torchrun passes Ctrl-C on to its workers as SIGTERM, and
    batch schedulers send it before they kill a job."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        try:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _advance(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """One scheduler step; the schedule counts steps, skipped updates included."""
    with warnings.catch_warnings():  # torch warns when a skipped first update precedes it
        warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*optimizer.step")
        scheduler.step()


def _average_buffers(model: nn.Module, ddp: _Dist) -> None:
    """Average floating-point buffers (batch-norm running statistics) over the ranks.

    DDP copies rank 0's buffers at each forward, but the last forward of an epoch leaves
    each rank with its own; averaging (timm's "reduce") makes validation, the checkpoint and
    every rank agree, with statistics drawn from all shards.
    """
    if not ddp.enabled:
        return
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.detach().reshape(-1).double() for b in buffers])
    dist.all_reduce(flat)
    flat /= ddp.world_size
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


def _all_reduce(values: list[float], ddp: _Dist, device: torch.device) -> list[float]:
    if not ddp.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------

def _to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


@torch.no_grad()
def _validate(model: nn.Module, loader: Any, device: torch.device, ddp: _Dist,
              autocast: Any, channels_last: bool) -> dict[str, float]:
    """Mean loss (without label smoothing), top-1 and top-5 (%) over the whole val split."""
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    for images, labels in loader:
        images, labels = _to_device(images, labels, device, channels_last)
        with autocast():
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += labels.numel()
    loss_sum, correct1, correct5, count = _all_reduce([loss_sum, correct1, correct5, count],
                                                      ddp, device)
    count = max(count, 1.0)
    return {"val_loss": loss_sum / count, "val_top1": 100.0 * correct1 / count,
            "val_top5": 100.0 * correct5 / count}


# ---------------------------------------------------------------------------------------
# The training run
# ---------------------------------------------------------------------------------------

def _resolve_resume(config: TrainConfig) -> tuple[TrainConfig, dict | None]:
    """The config to run with and the checkpoint to continue from (None for a new run)."""
    if config.resume is None:
        return config, None
    resume = Path(config.resume)
    file = resume / "last.pt" if resume.is_dir() else resume
    if not file.is_file():
        raise FileNotFoundError(f"resume={config.resume!r}: no checkpoint at {str(file)!r}")
    ckpt = load_checkpoint(file)
    saved = TrainConfig(**ckpt["config"])
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        given, before = getattr(config, f.name), getattr(saved, f.name)
        if f.name in RESUME_OVERRIDABLE or given == before:
            continue
        if given != getattr(defaults, f.name):
            raise ValueError(f"cannot change {f.name} when resuming (run has {before!r}, "
                             f"given {given!r}); start a new run with another --out instead")
    # options left at their defaults keep the run's values (`--resume RUN` alone continues)
    overrides = {name: getattr(config, name) for name in RESUME_OVERRIDABLE
                 if getattr(config, name) != getattr(defaults, name)}
    overrides["out"] = config.out if config.out is not None else str(file.parent)
    return dataclasses.replace(saved, **overrides), ckpt


def _default_out(config: TrainConfig) -> str:
    return f"runs/{config.arch}-{config.attention or 'none'}-s{config.seed}"


def train(config: TrainConfig) -> dict[str, Any]:
    """Train a model as `config` says; return the summary (also written to summary.json).

    Raises ValueError for bad options, NonFiniteLossError when the loss stops being finite
    (the last good checkpoint is kept), and KeyboardInterrupt after saving `last.pt` on
    SIGINT or SIGTERM.
    """
    config, ckpt = _resolve_resume(config)
    validate_config(config)
    if config.out is None:
        config = dataclasses.replace(config, out=_default_out(config))
    out = Path(config.out)
    if ckpt is None and (out / "last.pt").exists():
        raise ValueError(f"out={config.out!r} already holds a run (last.pt); pass "
                         f"--resume {config.out} to continue it, or choose another --out")
    ddp = _setup_distributed(config.device)
    try:
        return _train(config, ckpt, ddp, out)
    finally:
        if ddp.started_here and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, ckpt: dict | None, ddp: _Dist, out: Path) -> dict[str, Any]:
    from attnres.analysis.profile import count_params
    from attnres.data import load_dataset, make_loaders
    from attnres.models import build_model

    device = _pick_device(config, ddp)
    use_cuda = device.type == "cuda"
    if config.batch_size % ddp.world_size:
        raise ValueError(f"batch_size={config.batch_size} does not split evenly over "
                         f"{ddp.world_size} processes; use a multiple of {ddp.world_size}")
    if use_cuda:
        torch.backends.cudnn.benchmark = not config.deterministic
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
    _seed_everything(config.seed)

    def log(message: str) -> None:
        if ddp.is_main and not config.quiet:
            _print_line(message)

    data = load_dataset(config.data, val_split=config.val_split, seed=config.split_seed,
                        image_size=config.image_size, cache_dir=config.cache_dir)
    raw_model = build_model(config.arch, attention=config.attention,
                            placement=config.placement, stages=config.stages,
                            blocks=config.blocks, preset=config.preset,
                            num_classes=data.num_classes, pretrained=config.pretrained,
                            attention_kwargs=dict(config.attention_kwargs) or None)
    # channels_last pays on CUDA and for CPU bf16 (oneDNN's bf16 convolutions are NHWC)
    channels_last = config.channels_last and (use_cuda or config.amp)
    raw_model.to(device, memory_format=torch.channels_last if channels_last
                 else torch.preserve_format)
    preprocessing = {"mean": list(data.mean), "std": list(data.std),
                     "image_size": data.image_size, "classes": list(data.classes)}
    n_params = count_params(raw_model)

    optimizer = torch.optim.SGD(
        param_groups(raw_model, lr=config.lr, weight_decay=config.weight_decay,
                     attention_lr_mult=config.attention_lr_mult),
        lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    # on CUDA, batches are cut and augmented on the GPU when the images fit comfortably
    on_device = use_cuda and data.train.images.numel() + data.val.images.numel() < 2**31
    train_loader, val_loader = make_loaders(data, config.batch_size // ddp.world_size,
                                            seed=config.seed, rank=ddp.rank,
                                            world_size=ddp.world_size,
                                            device=device if on_device else None)
    # every rank must take the same number of steps, or DDP's collectives hang
    steps_per_epoch = len(train_loader)
    if ddp.enabled:
        n = torch.tensor([steps_per_epoch], device=device)
        dist.all_reduce(n, op=dist.ReduceOp.MIN)
        steps_per_epoch = int(n.item())
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size={config.batch_size} is larger than the training split "
                         f"({len(data.train.labels)} images); use a smaller batch")
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)

    def schedule(step: int) -> float:
        return lr_factor(step, total_steps=total_steps, warmup_steps=warmup_steps,
                         schedule=config.schedule, milestones=config.step_milestones,
                         gamma=config.step_gamma)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    amp_dtype = torch.bfloat16 if config.amp_dtype == "bfloat16" else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and use_cuda
                                  and amp_dtype == torch.float16)

    def autocast() -> Any:
        if not config.amp:
            return nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype if use_cuda else torch.bfloat16)

    start_epoch, start_batch, partial = 0, 0, [0.0, 0.0, 0.0, 0.0]
    metrics: list[dict[str, Any]] = []
    nonfinite_steps = 0
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        start_epoch, start_batch = int(ckpt["epoch"]), int(ckpt.get("batch", 0))
        metrics = list(ckpt["metrics"])
        nonfinite_steps = int(ckpt.get("nonfinite_steps", 0))
        if start_batch and ddp.is_main:  # the interrupted epoch's sums, counted once
            partial = list(ckpt["partial"])
        if ckpt.get("world_size", 1) != ddp.world_size:
            log(f"warning: the run used {ckpt.get('world_size', 1)} processes, now "
                f"{ddp.world_size}: it continues, but not bit-exactly")
        log(f"resuming {out} at epoch {start_epoch + 1}"
            + (f", step {start_batch + 1}" if start_batch else ""))

    # validation runs on `net`, never through DDP: ranks may hold different numbers of
    # validation batches, and DDP's forward is a collective (it broadcasts BN buffers)
    net: nn.Module = torch.compile(raw_model) if config.compile else raw_model
    model = (nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if use_cuda
                                                 else None) if ddp.enabled else net)

    writer = None
    if ddp.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "config.json", asdict(config))
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out), purge_step=start_epoch + 1 if ckpt else None)

    monitor_cls = find_saturation = None
    if config.monitor:
        from attnres.analysis.monitor import AttentionMonitor as monitor_cls
        from attnres.analysis.monitor import find_saturation
    warned_modules: set[str] = set()

    def checkpoint(epoch: int, batch: int, partial_sums: list[float]) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "model": raw_model.state_dict(),
                "build_args": dict(raw_model.build_args),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch, "batch": batch,
                "partial": partial_sums, "rng": _rng_state(), "config": asdict(config),
                "preprocessing": preprocessing, "metrics": metrics,
                "nonfinite_steps": nonfinite_steps, "world_size": ddp.world_size}

    best = max((row["val_top1"] for row in metrics), default=-1.0)
    memory = _MemoryMeter(device)
    memory.start()
    with _StopRequest() as stop:
        for epoch in range(start_epoch, config.epochs):
            skip = start_batch if epoch == start_epoch else 0  # batches done before a stop
            train_loader.set_epoch(epoch, start_batch=skip)
            model.train()
            loss_sum, correct, seen, step_time = partial
            monitor = monitor_cls(raw_model) if monitor_cls is not None else None
            epoch_start = time.perf_counter()
            epoch_lr = config.lr * schedule(epoch * steps_per_epoch)  # at its first step
            bar = _progress_bar(steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/"
                           f"{config.epochs}", disable=config.quiet or not ddp.is_main)
            with monitor if monitor is not None else nullcontext():
                for step, (images, labels) in enumerate(train_loader, start=skip):
                    if step >= steps_per_epoch:
                        break
                    t0 = time.perf_counter()
                    images, labels = _to_device(images, labels, device, channels_last)
                    with autocast():
                        logits = model(images)
                    loss = F.cross_entropy(logits.float(), labels,
                                           label_smoothing=config.label_smoothing)
                    loss_value = loss.item()
                    flags = _all_reduce([float(not math.isfinite(loss_value)),
                                         float(stop.requested)], ddp, device)
                    if flags[0]:
                        nonfinite_steps += 1
                        where = (f"non-finite loss ({loss_value}) at epoch {epoch + 1}, "
                                 f"step {step + 1} (global step "
                                 f"{epoch * steps_per_epoch + step + 1})")
                        if nonfinite_steps > config.skip_nonfinite:
                            bar.close()
                            last = out / "last.pt"
                            kept = (f"; last good checkpoint: {last}" if last.exists()
                                    else "; no checkpoint was saved before it")
                            raise NonFiniteLossError(
                                f"{where}{kept}; lower --lr, or pass --skip-nonfinite N to "
                                f"skip up to N such steps")
                        log(f"warning: {where}: update skipped ({nonfinite_steps}/"
                            f"{config.skip_nonfinite} allowed)")
                        optimizer.zero_grad(set_to_none=True)
                        _advance(scheduler)
                    else:
                        scaler.scale(loss).backward()
                        scaler.step(optimizer)
                        scaler.update()
                        optimizer.zero_grad(set_to_none=True)
                        _advance(scheduler)
                        loss_sum += loss_value * labels.numel()
                        correct += (logits.argmax(1) == labels).sum().item()
                        seen += labels.numel()
                    step_time += time.perf_counter() - t0
                    bar.update(1)
                    if step % 10 == 0 and seen:
                        bar.set_postfix(loss=f"{loss_sum / seen:.3f}",
                                        acc=f"{100 * correct / seen:.1f}",
                                        img_s=f"{seen * ddp.world_size / step_time:.0f}")
                    if flags[1] and step + 1 < steps_per_epoch:
                        bar.close()
                        sums = _all_reduce([loss_sum, correct, seen, step_time], ddp, device)
                        sums[3] /= ddp.world_size
                        if ddp.is_main:
                            save_checkpoint(checkpoint(epoch, step + 1, sums), out / "last.pt")
                            _write_summary(out, config, metrics, n_params, memory,
                                           ddp, finished=False)
                        log(f"interrupted: saved {out / 'last.pt'} (epoch {epoch + 1}, step "
                            f"{step + 1}); continue with --resume {out}")
                        raise KeyboardInterrupt
            bar.close()
            partial = [0.0, 0.0, 0.0, 0.0]
            loss_sum, correct, seen = _all_reduce([loss_sum, correct, seen], ddp, device)
            step_time = _all_reduce([step_time], ddp, device)[0] / ddp.world_size
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "lr": epoch_lr,
                "train_loss": loss_sum / max(seen, 1),
                "train_top1": 100.0 * correct / max(seen, 1),
            }
            _average_buffers(raw_model, ddp)
            row.update(_validate(net, val_loader, device, ddp, autocast, channels_last))
            row["train_images"] = int(seen)
            row["train_step_time_s"] = step_time
            row["epoch_time_s"] = time.perf_counter() - epoch_start
            row["train_images_per_s"] = seen / step_time if step_time > 0 else 0.0
            if monitor is not None:
                summary = monitor.summary()
                for module_name, stats in summary.items():
                    for stat, value in stats.items():
                        if isinstance(value, (int, float)) and not isinstance(value, bool):
                            row[f"{module_name}/{stat}"] = float(value)
                for message in find_saturation(summary):
                    key = ":".join(message.split(":")[:2])  # "<module>: <what>", no numbers
                    if key not in warned_modules:
                        warned_modules.add(key)
                        log(f"warning: {message}")
            metrics.append(row)
            improved = row["val_top1"] > best
            best = max(best, row["val_top1"])
            if ddp.is_main:
                state = checkpoint(epoch + 1, 0, [0.0, 0.0, 0.0, 0.0])
                save_checkpoint(state, out / "last.pt")
                if improved:
                    save_checkpoint(state, out / "best.pt")
                _write_csv(out / "metrics.csv", metrics)
                if writer is not None:
                    for key, value in row.items():
                        if key != "epoch":
                            writer.add_scalar(key, value, epoch + 1)
                    writer.flush()
                _write_summary(out, config, metrics, n_params, memory, ddp,
                               finished=epoch + 1 == config.epochs)
            log(f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f} "
                f"top-1 {row['train_top1']:.2f} | val loss {row['val_loss']:.4f} top-1 "
                f"{row['val_top1']:.2f} top-5 {row['val_top5']:.2f} | "
                f"{row['train_images_per_s']:.0f} img/s, {row['epoch_time_s']:.1f} s")
            if _all_reduce([float(stop.requested)], ddp, device)[0]:  # every rank stops
                log(f"interrupted: saved {out / 'last.pt'} (end of epoch {epoch + 1}); "
                    f"continue with --resume {out}")
                raise KeyboardInterrupt
    if writer is not None:
        writer.close()
    summary = _summary(config, metrics, n_params, memory, ddp,
                       finished=len(metrics) >= config.epochs)
    log(f"done: best val top-1 {summary['best_val_top1']:.2f}, last "
        f"{summary['last_val_top1']:.2f}; wrote {out}")
    return summary


def _summary(config: TrainConfig, metrics: list[dict[str, Any]], n_params: int,
             memory: _MemoryMeter, ddp: _Dist, *, finished: bool) -> dict[str, Any]:
    best_row = max(metrics, key=lambda r: r["val_top1"], default=None)
    last_row = metrics[-1] if metrics else None
    train_time = sum(r["epoch_time_s"] for r in metrics)
    step_time = sum(r["train_step_time_s"] for r in metrics)
    images = sum(r["train_images"] for r in metrics)
    return {
        "best_val_top1": best_row["val_top1"] if best_row else None,
        "best_val_top5": best_row["val_top5"] if best_row else None,  # of the best-top-1 epoch
        "best_epoch": best_row["epoch"] if best_row else None,
        "last_val_top1": last_row["val_top1"] if last_row else None,
        "last_val_top5": last_row["val_top5"] if last_row else None,
        "params": n_params,
        "train_time_s": train_time,
        "train_images_per_s": images / step_time if step_time > 0 else None,
        "peak_train_mem_mb": memory.peak_mb(),
        "peak_train_mem_method": ("torch.cuda.max_memory_allocated"
                                  if memory.device.type == "cuda" else
                                  "peak resident set size rise above the start (VmHWM)"),
        "epochs": len(metrics),
        "finished": finished,
        "world_size": ddp.world_size,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__},
        "config": asdict(config),
    }


def _write_summary(out: Path, config: TrainConfig, metrics: list[dict[str, Any]],
                   n_params: int, memory: _MemoryMeter, ddp: _Dist, *, finished: bool) -> None:
    _write_json(out / "summary.json", _summary(config, metrics, n_params, memory, ddp,
                                               finished=finished))


def _progress_bar(total: int, *, initial: int, desc: str, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                disable=disable or not sys.stderr.isatty())


def _print_line(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


__all__ = ["CheckpointError", "NonFiniteLossError", "TrainConfig", "attention_parameter_names",
           "load_checkpoint", "load_model", "lr_factor", "param_groups", "save_checkpoint",
           "train", "validate_config"]
