"""Insert attention into an existing (trained) network without disturbing what it learned.

`insert_attention(model, "cbam", at=["layer1:before", "layer4:after"])` puts a gate on the
input of `model.layer1` and on the output of `model.layer4`. The target module's class is
swapped for a generated subclass (cached per class, as `torch.nn.utils.parametrize`
does; it pickles as "the subclass of <original class>", so `torch.save(model)` works)
whose forward is

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

from ..attention import attention_class, attention_spec, create_attention, name_attention_modules
from .info import ModelInfo
from .layout import ensure_model_info, first_conv

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


def wrap_identity(model: nn.Module, names: Sequence[str], *, record: bool = True) -> list[str]:
    """Wrap each named attention module of `model` in `IdentityInit` in place, so that it
    starts as an exact identity. Recorded in the model's `ModelInfo.identity_init` (the
    wrapper adds `.attn.` to the module's keys and a `.scale` parameter, so a checkpoint's
    model must be rebuilt with it) unless `record=False` (a replayed call records itself).
    Names already wrapped are left alone; returns the names wrapped."""
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
    info = vars(model).get("model_info")
    if wrapped and record and isinstance(info, ModelInfo):
        info.identity_init.extend(wrapped)
    name_attention_modules(model)
    return wrapped


def _rebuild_inserted(base: type[nn.Module]) -> nn.Module:
    """Unpickling: an empty instance of the generated subclass of `base`."""
    cls = _with_attention(base)
    return cls.__new__(cls)


def _reduce_inserted(self: nn.Module, protocol: int) -> tuple:
    # the generated class cannot be found by name; its base can, and makes it again
    return _rebuild_inserted, (type(self).__bases__[0],), self.__dict__.copy()


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
                              "__reduce_ex__": _reduce_inserted, "__module__": __name__,
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
        name = list(module._modules)[0 if side == "before" else -1]  # named children too
        path, module = f"{path}.{name}", module._modules[name]
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        raise ValueError(f"{path!r} is a {type(module).__name__} whose forward runs its own "
                         "children; attach to a module inside it or to its parent")
    return path


@torch.no_grad()
def probe_shapes(model: nn.Module, targets: list[tuple[str, str]],
                 example_input: torch.Tensor | None) -> dict[tuple[str, str], torch.Tensor]:
    """Run the model once in eval mode and return the tensor seen at each (path, side).
    Forward hooks are used only to observe this probe and are removed after it; the
    training flags of all modules are restored, and eval mode leaves BN statistics alone."""
    param = next(iter(model.parameters()), None)
    if example_input is None:
        conv = first_conv(model)
        example_input = torch.randn(1, conv.in_channels if conv is not None else 3, 64, 64)
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


def check_gate_name(attention: str | type[nn.Module], init: str) -> None:
    """Unknown attention names, conv-kind modules and bad `init` fail before any change."""
    attention_class(attention)  # unknown names fail first, listing the valid ones
    if isinstance(attention, str) and attention_spec(attention).kind != "gate":
        create_attention(attention, 1)  # raises, saying what a conv-kind module is
    if init not in INITS:
        raise ValueError(f"init={init!r}; allowed: {', '.join(INITS)}")


def find_targets(model: nn.Module, specs: Sequence[str],
                 taken: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """The `(path, side)` slots named by "PATH:before" / "PATH:after" specs, resolved and
    checked to be free (also of `taken`)."""
    names = [name for name, _ in model.named_modules()]
    targets: list[tuple[str, str]] = []
    for spec in specs:
        path, side = _parse(spec, names)
        path = _resolve(model, path, side)
        module, slot = model.get_submodule(path), f"attn_{side}"
        inserted_before = getattr(type(module), "_attnres_inserted", False)
        if (path, side) in targets or (path, side) in taken or (
                inserted_before and not isinstance(getattr(module, slot), nn.Identity)):
            raise ValueError(f"at={spec!r}: {path!r} already has attention {side} it")
        if not inserted_before and hasattr(module, slot):
            raise ValueError(f"at={spec!r}: {path!r} already has an attribute {slot!r}")
        targets.append((path, side))
    return targets


def make_gates(attention: str | type[nn.Module], features: Sequence[torch.Tensor], init: str,
               kwargs: dict[str, Any]) -> list[nn.Module]:
    """One gate per feature map `(B, C, H, W)`, on its device and dtype (all built before
    any is attached: a bad keyword leaves the model as it was)."""
    gates = []
    for feature in features:
        gate = create_attention(attention, feature.shape[1], **kwargs)
        if init == "identity":
            gate = IdentityInit(gate)
        gates.append(gate.to(device=feature.device, dtype=feature.dtype))
    return gates


def attach(model: nn.Module, path: str, side: str, gate: nn.Module) -> str:
    """Put `gate` into slot `attn_<side>` of the module at `path`; returns the gate's path."""
    module = model.get_submodule(path)
    if not getattr(type(module), "_attnres_inserted", False):
        module.__class__ = _with_attention(type(module))
        module.attn_before = nn.Identity()
        module.attn_after = nn.Identity()
    setattr(module, f"attn_{side}", gate)
    return f"{path}.attn_{side}"


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
        `(1, C_in, 64, 64)` random image); the probe runs in eval mode under no_grad.

    The call is recorded in the model's `ModelInfo.insertions` (and so in
    `model.build_args["insertions"]`) so that the edited model can be rebuilt from a
    checkpoint.
    """
    check_gate_name(attention, init)
    specs = [at] if isinstance(at, str) else list(at)
    if not specs:
        raise ValueError("at is empty; give at least one 'PATH:before' or 'PATH:after'")
    targets = find_targets(model, specs)
    seen = probe_shapes(model, targets, example_input)
    gates = make_gates(attention, [seen[t] for t in targets], init, kwargs)
    paths = [attach(model, path, side, gate) for (path, side), gate in zip(targets, gates)]

    info = ensure_model_info(model)
    info.insertions.append({"attention": attention, "at": specs, "init": init, "kwargs": kwargs})
    info.attention_slots.extend(paths)
    return name_attention_modules(model)
