"""Insert attention into an existing (trained) network without disturbing what it learned.

`insert_attention(model, "cbam", at=["layer1:before", "layer4:after"])` puts a gate on the
input of `model.layer1` and on the output of `model.layer4`. The target module's class is
swapped for a generated subclass (cached per class, as `torch.nn.utils.parametrize`
does) whose forward is

    y = attn_after(original_forward(attn_before(x), ...))

with `attn_before` / `attn_after` new children (`nn.Identity()` when unused), so every
original state-dict key is unchanged and the model stays an ordinary module (deepcopy,
state dicts, torch.compile, torch.export). A `nn.Sequential` target is resolved to its
first child (`:before`) or last child (`:after`), which computes the same thing without
adding a child that the Sequential would run as one more layer.

With `init="identity"` each gate is wrapped as y = x + s * (attn(x) - x), s a learnable
scalar starting at 0: the edited model computes exactly what the original did, and
fine-tuning moves s away from 0.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..attention import attention_class, create_attention, name_attention_modules

INITS = ("identity", "default")
SIDES = ("before", "after")

_SWAPPED: dict[type, type] = {}  # original class -> generated subclass


class IdentityInit(nn.Module):
    """`y = x + scale * (attn(x) - x)` with `scale` a learnable scalar starting at 0, so the
    module starts as an exact identity. `(B, C, H, W) -> (B, C, H, W)`."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn
        self.scale = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * (self.attn(x) - x)


def wrap_identity(model: nn.Module, names: Sequence[str]) -> list[str]:
    """Wrap each named attention module of `model` in `IdentityInit` in place, so that it
    starts as an exact identity. Recorded in `model.build_args["identity_init"]` (the wrapper
    adds `.attn.` to the module's keys and a `.scale` parameter, so a checkpoint's model must
    be rebuilt with it). Names already wrapped are left alone; returns the names wrapped."""
    wrapped = []
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, child, None)
        if not isinstance(module, nn.Module):
            raise ValueError(f"identity_init: {name!r} is not a module of the model")
        if not isinstance(module, IdentityInit):
            setattr(parent, child, IdentityInit(module))
            wrapped.append(name)
    build_args = getattr(model, "build_args", None)
    if wrapped and isinstance(build_args, dict):
        build_args.setdefault("identity_init", []).extend(wrapped)
    name_attention_modules(model)
    return wrapped


def _with_attention(cls: type[nn.Module]) -> type[nn.Module]:
    """The subclass of `cls` that applies `attn_before` / `attn_after` around its forward."""
    if getattr(cls, "_attnres_inserted", False):
        return cls
    if cls not in _SWAPPED:
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            if args:
                args = (self.attn_before(args[0]), *args[1:])
            return self.attn_after(cls.forward(self, *args, **kwargs))

        _SWAPPED[cls] = type(f"{cls.__name__}WithAttention", (cls,),
                             {"forward": forward, "_attnres_inserted": True,
                              "__doc__": f"{cls.__name__} with attention before / after it."})
    return _SWAPPED[cls]


def _parse(spec: str, names: list[str]) -> tuple[str, str]:
    path, sep, side = str(spec).rpartition(":")
    if not sep or side not in SIDES:
        raise ValueError(f"at={spec!r}: write 'PATH:before' or 'PATH:after' with PATH from "
                         "model.named_modules(), e.g. 'layer1:before'")
    if path not in names or path == "":
        near = difflib.get_close_matches(path, names, n=3)
        hint = f"; closest: {', '.join(near)}" if near else ""
        raise ValueError(f"unknown module path {path!r}{hint}")
    return path, side


def _resolve(model: nn.Module, path: str, side: str) -> str:
    """The module that really gets the slot: Sequentials pass it to their first / last child."""
    module = model.get_submodule(path)
    while type(module) is nn.Sequential or (
            isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward):
        if len(module) == 0:
            raise ValueError(f"{path!r} is an empty nn.Sequential; nothing to attach to")
        index = 0 if side == "before" else len(module) - 1
        path, module = f"{path}.{index}", module[index]
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        raise ValueError(f"{path!r} is a {type(module).__name__} whose forward runs its own "
                         "children; attach to a module inside it or to its parent")
    return path


@torch.no_grad()
def _probe_shapes(model: nn.Module, targets: list[tuple[str, str]],
                  example_input: torch.Tensor | None) -> dict[tuple[str, str], torch.Tensor]:
    """Run the model once in eval mode and return the tensor seen at each (path, side).
    Forward hooks are used only to observe this probe and are removed after it; the
    training flags of all modules are restored, and eval mode leaves BN statistics alone."""
    param = next(iter(model.parameters()), None)
    if example_input is None:
        example_input = torch.randn(1, 3, 64, 64)
    if param is not None:
        example_input = example_input.to(device=param.device, dtype=param.dtype)
    seen: dict[tuple[str, str], Any] = {}

    def hook_for(path: str, side: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if (path, side) not in seen:  # a module called twice keeps its first call
                seen[(path, side)] = output if side == "after" else (args[0] if args else None)
        return hook

    modes = {m: m.training for m in model.modules()}
    handles = [model.get_submodule(p).register_forward_hook(hook_for(p, s)) for p, s in targets]
    try:
        model.eval()
        model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes.items():
            m.training = mode
    for path, side in targets:
        value = seen.get((path, side))
        what = "input" if side == "before" else "output"
        if (path, side) not in seen:
            raise ValueError(f"{path!r} was not called when the model ran on an input of shape "
                             f"{tuple(example_input.shape)}; pass example_input=")
        if not isinstance(value, torch.Tensor) or value.dim() != 4:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"the {what} of {path!r} is {shape}, not a 4-D (B, C, H, W) "
                             "tensor; attention needs feature maps")
    return seen


def insert_attention(model: nn.Module, attention: str,
                     at: str | Sequence[str] = ("layer1:before", "layer4:after"),
                     init: str = "identity", *, example_input: torch.Tensor | None = None,
                     **kwargs: Any) -> nn.Module:
    """Insert `create_attention(attention, C, **kwargs)` gates into `model` in place and
    return it.

    at: "PATH:before" (gate the module's input) or "PATH:after" (gate its output), PATH a
        name from `model.named_modules()`; one string or a list.
    init: "identity" (the gate starts as an exact identity, y = x + s * (attn(x) - x) with a
        learnable s = 0) or "default" (the plain gate).
    example_input: the probe input from which channels C are read (default a
        `(1, 3, 64, 64)` random image); the probe runs in eval mode under no_grad.

    Models built by `build_model` record the insertion in `model.build_args["insertions"]`
    so that the edited model can be rebuilt from a checkpoint.
    """
    attention_class(attention)  # unknown names fail first, listing the valid ones
    if init not in INITS:
        raise ValueError(f"init={init!r}; allowed: {', '.join(INITS)}")
    specs = [at] if isinstance(at, str) else list(at)
    if not specs:
        raise ValueError("at is empty; give at least one 'PATH:before' or 'PATH:after'")
    names = [name for name, _ in model.named_modules()]
    targets: list[tuple[str, str]] = []
    for spec in specs:
        path, side = _parse(spec, names)
        path = _resolve(model, path, side)
        module, slot = model.get_submodule(path), f"attn_{side}"
        inserted_before = getattr(type(module), "_attnres_inserted", False)
        if (path, side) in targets or (inserted_before and
                                       not isinstance(getattr(module, slot), nn.Identity)):
            raise ValueError(f"at={spec!r}: {path!r} already has attention {side} it")
        if not inserted_before and hasattr(module, slot):
            raise ValueError(f"at={spec!r}: {path!r} already has an attribute {slot!r}")
        targets.append((path, side))

    seen = _probe_shapes(model, targets, example_input)
    gates = []  # all built before any is attached: a bad keyword leaves the model as it was
    for path, side in targets:
        feature = seen[(path, side)]
        gate = create_attention(attention, feature.shape[1], **kwargs)
        if init == "identity":
            gate = IdentityInit(gate)
        gates.append(gate.to(device=feature.device, dtype=feature.dtype))
    for (path, side), gate in zip(targets, gates):
        module = model.get_submodule(path)
        if not getattr(type(module), "_attnres_inserted", False):
            module.__class__ = _with_attention(type(module))
            module.attn_before = nn.Identity()
            module.attn_after = nn.Identity()
        setattr(module, f"attn_{side}", gate)

    build_args = getattr(model, "build_args", None)
    if isinstance(build_args, dict):
        build_args.setdefault("insertions", []).append(
            {"attention": attention, "at": specs, "init": init, "kwargs": kwargs})
    return name_attention_modules(model)
