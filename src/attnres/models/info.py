"""`ModelInfo`: everything attnres knows about a model, as one typed, JSON-able object.

In the spirit of timm's `pretrained_cfg` and torchvision's weights `meta`, a model made or
edited by attnres carries `model.model_info` (read it with `get_model_info(model)`): the
architecture and its build arguments, the attention and its placement, the
`insert_attention` / `add_attention` calls, the modules wrapped as identity, the weights it
started from and what loading them did, and the preprocessing its inputs need.
`build_model` sets it, `insert_attention`, `add_attention`, `wrap_identity` and
`load_pretrained` update it, `to_dict()` / `from_dict()` store it in checkpoints and exports,
and `attnres.models.rebuild_model(info)` builds the same network again.

The attributes of attnres <= 0.2 (`model.build_args`, `model.preprocessing`,
`model.attention_slots`, `model.load_report`) stay readable and assignable on attnres'
`ResNet`: they are views of this object (`InfoAttributes`), not copies.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

INFO_VERSION = 1
# ImageNet statistics (torchvision's and timm's IMAGENET_DEFAULT_MEAN / STD).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LIBRARIES = ("attnres", "timm")  # who can rebuild `architecture`
# The keys `build_model` writes into the legacy `build_args` dict.
_BUILD_KEYS = ("arch", "attention", "placement", "stages", "blocks", "preset", "num_classes",
               "attention_kwargs", "in_chans", "identity_init", "insertions", "pretrained")


def _preview(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... and {len(names) - limit} more" if len(names) > limit else "")


def _plain(value: Any, where: str) -> Any:
    """`value` with tuples as lists, checked to be JSON data (ValueError naming `where`)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"model info is not JSON data: {where} = {value!r} "
                     f"({type(value).__name__}); use names and numbers")


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
        adapted: keys converted to the model's shape (the first conv for `in_chans != 3`).
    """

    source: str
    format: str
    loaded: int
    missing_attention: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    identity_init: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.source} ({self.format})"]
        for name in ("missing_attention", "unexpected", "skipped", "identity_init", "adapted"):
            values = getattr(self, name)
            if values:
                parts.append(f"{name.replace('_', ' ')}: {len(values)} ({_preview(values)})")
        return "; ".join(parts)


@dataclass
class Preprocessing:
    """What inputs the model expects: `(B, C, S, S)` images, resized (shorter side to
    `resize_size` with `interpolation`), centre-cropped to `image_size`, scaled to [0, 1] and
    normalised with `mean` / `std`. None means unknown (e.g. the mean of a CIFAR net is the
    data's, not the architecture's). `classes` names the logits.

    `source` says where the values come from: "architecture" (the data-independent defaults
    of a freshly built network: data the model is trained or evaluated on may differ),
    "weights" (what pretrained weights were trained with), or None (given: a training
    checkpoint's data, an assignment)."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    image_size: int | None = None
    resize_size: int | None = None
    interpolation: str | None = None     # "bilinear", "bicubic", "nearest", ...
    classes: tuple[str, ...] | None = None
    source: str | None = None            # "architecture", "weights", None
    extra: dict[str, Any] = field(default_factory=dict)  # other keys, kept as given

    def to_dict(self) -> dict[str, Any]:
        """The `model.preprocessing` / checkpoint form: the known values (lists, not
        tuples), then `extra`."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return {**out, **copy.deepcopy(self.extra)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Preprocessing:
        data = dict(data or {})
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: data.pop(k) for k in list(data) if k in known}
        for key in ("mean", "std", "classes"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        for key in ("image_size", "resize_size"):
            if values.get(key) is not None:
                values[key] = int(values[key])
        return cls(**values, extra=data)


@dataclass
class ModelInfo:
    """The one metadata object of an attnres model (see the module doc).

    architecture: the name `library` builds (`build_model`'s arch, or timm's model name);
        None when unknown (then `rebuild_model` refuses).
    library: "attnres" (`build_model`), "timm" (`timm.create_model`), or None.
    num_classes, in_chans: head size (0: no classifier) and input channels.
    attention, attention_kwargs, placement, stages, blocks, preset: the attention that
        `build_model` placed (see `attnres.models.placement`); attention None: none.
    build_kwargs: other arguments of the builder (e.g. `zero_init_residual`).
    insertions: later edits, replayed in order: `{"attention", "at", "init", "kwargs"}` for
        `insert_attention`, `{"op": "add", "attention", "placement", "stages", "blocks",
        "preset", "init", "kwargs"}` for `add_attention`.
    identity_init: attention modules wrapped as identity (`wrap_identity`).
    attention_slots: paths of the attention modules that attnres placed.
    preprocessing: see `Preprocessing`.
    weights: where the weights came from (a torchvision weights name such as
        "ResNet50_Weights.IMAGENET1K_V2", a file path), None for random initialisation.
    load_report: what loading them did.
    """

    architecture: str | None = None
    library: str | None = "attnres"
    num_classes: int | None = None
    in_chans: int = 3
    attention: str | None = None
    attention_kwargs: dict[str, Any] = field(default_factory=dict)
    placement: str | list[str] = "block"
    stages: list[int] | None = None
    blocks: dict[str, list[bool]] | None = None
    preset: str | None = None
    build_kwargs: dict[str, Any] = field(default_factory=dict)
    insertions: list[dict[str, Any]] = field(default_factory=list)
    identity_init: list[str] = field(default_factory=list)
    attention_slots: list[str] = field(default_factory=list)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    weights: str | None = None
    load_report: LoadReport | None = None

    @property
    def input_size(self) -> tuple[int, int, int] | None:
        """`(C, H, W)` of one input image (timm's `input_size`), None if the size is unknown."""
        size = self.preprocessing.image_size
        return None if size is None else (self.in_chans, size, size)

    # -- the legacy `build_args` dict: `build_model(**build_args)` rebuilds the network
    def build_args(self) -> dict[str, Any]:
        """`build_model`'s keyword arguments (without `pretrained`), as attnres <= 0.2 kept
        them in `model.build_args`; a new dict each call."""
        if self.library != "attnres":
            raise ValueError(f"build_args: the model was made by {self.library or 'unknown code'}"
                             f" ({self.architecture}), not build_model; use rebuild_model(info)")
        args: dict[str, Any] = {
            "arch": self.architecture, "attention": self.attention,
            "placement": copy.deepcopy(self.placement),
            "stages": list(self.stages) if self.stages is not None else None,
            "blocks": copy.deepcopy(self.blocks), "preset": self.preset,
            "num_classes": self.num_classes,
            "attention_kwargs": dict(self.attention_kwargs) or None,
            **copy.deepcopy(self.build_kwargs)}
        if self.in_chans != 3:
            args["in_chans"] = self.in_chans
        if self.identity_init:
            args["identity_init"] = list(self.identity_init)
        if self.insertions:
            args["insertions"] = copy.deepcopy(self.insertions)
        return args

    @classmethod
    def from_build_args(cls, args: Mapping[str, Any],
                        preprocessing: Mapping[str, Any] | None = None,
                        keep: ModelInfo | None = None) -> ModelInfo:
        """The info of a model built by `build_model(**args)`; old checkpoints store only
        these. `keep`'s preprocessing, weights and load report are carried over."""
        args = dict(args)
        extra = {k: v for k, v in args.items() if k not in _BUILD_KEYS}
        info = cls(architecture=args.get("arch"), library="attnres",
                   num_classes=args.get("num_classes"), in_chans=int(args.get("in_chans", 3)),
                   attention=args.get("attention"),
                   attention_kwargs=dict(args.get("attention_kwargs") or {}),
                   placement=args.get("placement", "block"), stages=args.get("stages"),
                   blocks=args.get("blocks"), preset=args.get("preset"), build_kwargs=extra,
                   insertions=list(args.get("insertions") or []),
                   identity_init=list(args.get("identity_init") or []))
        if keep is not None:
            info.preprocessing, info.weights = keep.preprocessing, keep.weights
            info.load_report, info.attention_slots = keep.load_report, keep.attention_slots
        if preprocessing is not None:
            info.preprocessing = Preprocessing.from_dict(preprocessing)
        return info

    # -- JSON form
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (`json.loads(json.dumps(d)) == d`); ValueError if a build or
        attention argument is not (e.g. a class passed as `norm_layer`)."""
        out: dict[str, Any] = {"version": INFO_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "preprocessing":
                value = value.to_dict()
            elif f.name == "load_report" and value is not None:
                value = asdict(value)
            out[f.name] = _plain(value, f.name)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelInfo:
        """The inverse of `to_dict`. A legacy `build_args` dict (it has "arch") is accepted
        too, so old checkpoints rebuild."""
        if "arch" in data and "architecture" not in data:
            return cls.from_build_args(data)
        version = data.get("version", INFO_VERSION)
        if not isinstance(version, int) or version > INFO_VERSION:
            raise ValueError(f"model info version {version!r}: this attnres reads versions "
                             f"up to {INFO_VERSION}; upgrade attnres")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names - {"version"})
        if unknown:
            raise ValueError(f"model info has unknown fields {unknown}; allowed: "
                             f"{', '.join(sorted(names))}")
        values = copy.deepcopy({k: v for k, v in data.items() if k in names})
        values["preprocessing"] = Preprocessing.from_dict(values.get("preprocessing"))
        if values.get("load_report") is not None:
            values["load_report"] = LoadReport(**values["load_report"])
        return cls(**values)


def get_model_info(model: Any) -> ModelInfo | None:
    """`model.model_info`, or for an object carrying only the legacy `build_args` /
    `preprocessing` attributes (e.g. an exported GraphModule) a new `ModelInfo` read from
    them (a snapshot: editing it does not change the object); None when there is neither."""
    info = vars(model).get("model_info") if hasattr(model, "__dict__") else None
    if isinstance(info, ModelInfo):
        return info
    args, prep = getattr(model, "build_args", None), getattr(model, "preprocessing", None)
    if isinstance(args, Mapping) and args.get("arch"):
        return ModelInfo.from_build_args(args, preprocessing=prep)
    if isinstance(prep, Mapping):
        return ModelInfo(library=None, preprocessing=Preprocessing.from_dict(prep))
    return None


class InfoAttributes:
    """Mixin: `build_args`, `preprocessing`, `attention_slots`, `load_report` as views of
    `self.model_info` (the attributes of attnres <= 0.2). Reading one of a model without
    info raises AttributeError, as a missing attribute does; assigning one creates the info
    if needed. `build_args` is a new dict each read: change the model through the info."""

    def _info(self, create: bool = False) -> ModelInfo:
        info = self.__dict__.get("model_info")
        if info is None:
            if not create:
                raise AttributeError("no model_info")
            info = self.__dict__["model_info"] = ModelInfo(library=None)
        return info

    @property
    def build_args(self) -> dict[str, Any]:
        info = self._info()
        if info.library != "attnres":  # not rebuildable by build_model: looks absent
            raise AttributeError("build_args: the model was not made by build_model")
        return info.build_args()

    @build_args.setter
    def build_args(self, value: Mapping[str, Any]) -> None:
        self.__dict__["model_info"] = ModelInfo.from_build_args(
            value, keep=self.__dict__.get("model_info"))

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self._info().preprocessing.to_dict()

    @preprocessing.setter
    def preprocessing(self, value: Mapping[str, Any] | None) -> None:
        self._info(create=True).preprocessing = Preprocessing.from_dict(value)

    @property
    def attention_slots(self) -> list[str]:
        return self._info().attention_slots

    @attention_slots.setter
    def attention_slots(self, value: Sequence[str]) -> None:
        self._info(create=True).attention_slots = list(value)

    @property
    def load_report(self) -> LoadReport | None:
        return self._info().load_report

    @load_report.setter
    def load_report(self, value: LoadReport | None) -> None:
        self._info(create=True).load_report = value


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INFO_VERSION", "InfoAttributes", "LoadReport",
           "ModelInfo", "Preprocessing", "get_model_info"]
