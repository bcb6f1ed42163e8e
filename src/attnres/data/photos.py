"""A small ImageFolder of real photographs for ImageNet-style demos, offline: random crops,
at full resolution, of scikit-image's sample photographs, one class per photograph."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..utils import atomic_write

# scikit-image's bundled photographs (no download); grey ones are written as grey JPEGs
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field",
          "immunohistochemistry", "rocket")


def make_photo_folder(root: str | Path, *, per_class: int = 40,
                      photos: Sequence[str] = PHOTOS, crop: tuple[int, int] = (240, 400),
                      seed: int = 0, quality: int = 90) -> Path:
    """Write `root/<photo>/<photo>_<k>.jpg`: `per_class` random crops of each photograph.

    Each crop's height and width are drawn independently from `crop` (min, max) pixels,
    capped by the photograph's sides, at a random position; nothing is resized, so the
    loader sees real full-resolution detail. Returns `root`. The same seed writes the same
    files. 8 photographs x 40 crops = 320 images, about 10 MB.
    """
    import skimage.data
    from PIL import Image

    lo, hi = crop
    if not (isinstance(lo, int) and isinstance(hi, int) and 16 <= lo <= hi):
        raise ValueError(f"crop {crop!r} must be (min, max) whole pixels with 16 <= min <= max")
    if not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class {per_class!r} must be a whole number >= 1")
    unknown = [p for p in photos if p not in PHOTOS]
    if unknown:
        raise ValueError(f"photo {unknown[0]!r} is not one of: {', '.join(PHOTOS)}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for name in photos:
        image = np.asarray(getattr(skimage.data, name)())
        h, w = image.shape[:2]
        for k in range(per_class):
            ch = int(rng.integers(min(lo, h), min(hi, h) + 1))
            cw = int(rng.integers(min(lo, w), min(hi, w) + 1))
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            piece = Image.fromarray(np.ascontiguousarray(image[top:top + ch, left:left + cw]))
            atomic_write(root / name / f"{name}_{k:03d}.jpg",
                         lambda f, p=piece: p.save(f, format="JPEG", quality=quality))
    return root


__all__ = ["PHOTOS", "make_photo_folder"]
