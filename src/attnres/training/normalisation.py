"""Which mean/std a run normalises its images with: the pretrained weights' own, else the
training data's.

Weights are trained on inputs normalised one way; fine-tuning them on inputs normalised
another way starts from a shifted input distribution. So when `--pretrained` names weights
that carry their normalisation, training, validation and every later use of the checkpoint
(`attnres eval`, `attnres predict`) use those statistics:

* torchvision weights (a name such as "IMAGENET1K_V2"): `weights.transforms().mean/std`;
* a weights file whose name is a torchvision weights file (e.g. `resnet50-11ad3fa6.pth` from
  torch.hub's cache) for the run's architecture: the same;
* an attnres checkpoint (a run's best.pt, ema.pt): the `preprocessing` it stores;
* the CBAM / BAM authors' checkpoints (github.com/Jongchan/attention-module): the ImageNet
  statistics their `train_imagenet.py` normalises with.

Any other file, and no pretrained weights, leave the training data's own statistics.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ..data import ImageData

# transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]) in the
# authors' train_imagenet.py (Jongchan/attention-module), for CBAM and BAM alike
AUTHORS_MEAN = (0.485, 0.456, 0.406)
AUTHORS_STD = (0.229, 0.224, 0.225)


def normalisation_for(pretrained: str | os.PathLike | None, data: ImageData, *,
                      arch: str | None = None) -> dict[str, Any]:
    """The normalisation of a run that starts from `pretrained` on `data`:
    {"mean": [3 floats], "std": [3 floats], "source": "from pretrained weights X" or
    "from the training data ..."}, mean/std on the [0, 1] pixel scale.

    pretrained: a torchvision weights name (needs `arch`, e.g. "resnet50", unless it is the
        full "ResNet50_Weights.IMAGENET1K_V2"), a weights file, or None. Nothing is
        downloaded; a file is read (weights_only=True).
    """
    own = {"mean": list(data.mean), "std": list(data.std), "source": "from the training data"}
    if pretrained is None:
        return own
    from ..models.pretrained import FILE_SUFFIXES, torchvision_weights

    text = os.fspath(pretrained)
    if not (os.sep in text or "/" in text or text.lower().endswith(FILE_SUFFIXES)
            or os.path.exists(text)):  # the rule of load_pretrained: a name, not a file
        weights = torchvision_weights(arch, text)
        return _from_transforms(weights)
    weights = _torchvision_file(Path(text).name, arch)
    if weights is not None:
        return _from_transforms(weights, f" ({text})")
    found = _file_statistics(text)
    if found is None:
        return {**own, "source": f"from the training data (the weights file {text!r} "
                                 f"carries no normalisation)"}
    mean, std, what = found
    return {"mean": list(mean), "std": list(std),
            "source": f"from pretrained weights {text!r} ({what})"}


def with_normalisation(data: ImageData, pretrained: str | None, arch: str | None
                       ) -> tuple[ImageData, dict[str, Any]]:
    """`data` with the run's mean/std (see `normalisation_for`), and the `preprocessing`
    that checkpoints store: {"mean", "std", "image_size", "classes", "normalisation"}."""
    norm = normalisation_for(pretrained, data, arch=arch)
    data = dataclasses.replace(data, mean=tuple(norm["mean"]), std=tuple(norm["std"]))
    return data, {"mean": norm["mean"], "std": norm["std"], "image_size": data.image_size,
                  "classes": list(data.classes), "normalisation": norm["source"]}


def _from_transforms(weights: Any, where: str = "") -> dict[str, Any]:
    transforms = weights.transforms()
    return {"mean": [float(v) for v in transforms.mean],
            "std": [float(v) for v in transforms.std],
            "source": f"from pretrained weights {weights}{where}"}


def _torchvision_file(filename: str, arch: str | None) -> Any:
    """The torchvision weights whose download is called `filename`, for `arch`; or None."""
    if arch is None:
        return None
    try:
        from torchvision.models import get_model_weights

        members = list(get_model_weights(arch))
    except (ImportError, ValueError):  # not a torchvision architecture (e.g. resnet20)
        return None
    return next((w for w in members if os.path.basename(w.url) == filename), None)


def _file_statistics(path: str) -> tuple[list[float], list[float], str] | None:
    """(mean, std, what) that a weights file carries, or None."""
    from ..checkpoint import load_checkpoint
    from ..models.pretrained import detect_format, find_state_dict, strip_wrapper_prefixes

    if path.endswith(".safetensors"):  # tensors only: no preprocessing inside
        return None
    obj = load_checkpoint(path)
    prep = obj.get("preprocessing")
    if isinstance(prep, dict) and {"mean", "std"} <= set(prep):
        return list(prep["mean"]), list(prep["std"]), "the preprocessing it stores"
    try:
        fmt = detect_format(strip_wrapper_prefixes(find_state_dict(obj, path)))
    except ValueError:
        return None  # load_pretrained will say what is wrong with the file
    if fmt in ("cbam-authors", "bam-authors"):
        return list(AUTHORS_MEAN), list(AUTHORS_STD), "the authors' ImageNet statistics"
    return None


__all__ = ["AUTHORS_MEAN", "AUTHORS_STD", "normalisation_for", "with_normalisation"]
