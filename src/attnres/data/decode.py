"""Image bytes -> uint8 RGB `(3, S, S)`: torchvision's decoders with PIL as the fallback,
every mode made RGB, other sizes resized and centre cropped, sizes probed from headers."""

from __future__ import annotations

import io
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .augment import center_crop
from .datasets import SMALL_MAX_SIZE

if TYPE_CHECKING:
    from PIL import Image


def _fit(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 `(3, h, w)` -> `(3, size, size)`: shorter side resized to `size`, centre crop."""
    h, w = image.shape[-2:]
    if (h, w) == (size, size):
        return image
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear",
                      align_corners=False, antialias=scale < 1)[0]
    return center_crop(x.round_().clamp_(0, 255).to(torch.uint8), size)


def _to_rgb(image: torch.Tensor) -> torch.Tensor:
    """uint8 `(C, h, w)` with C in 1..4 -> RGB `(3, h, w)`; alpha is composited over white."""
    c = image.shape[0]
    if c in (2, 4):  # grey+alpha or RGBA: transparent pixels become white, not black
        alpha = image[-1:].float() / 255.0
        colour = image[:-1].float() * alpha + 255.0 * (1 - alpha)
        image = colour.round_().to(torch.uint8)
        c -= 1
    if c == 1:
        image = image.expand(3, -1, -1)
    if image.shape[0] != 3:
        raise ValueError(f"unsupported channel count {c}")
    return image


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """A PIL image as uint8 `(C, h, w)`: grey, grey+alpha, RGB or RGBA (other modes, e.g.
    palette or CMYK, converted to RGB, or RGBA when they carry transparency)."""
    if img.mode not in ("RGB", "L", "LA", "RGBA"):
        has_alpha = "transparency" in img.info or img.mode.endswith("A")
        img = img.convert("RGBA" if has_alpha else "RGB")
    arr = np.array(img, dtype=np.uint8)  # a copy: PIL's buffer is read-only
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _decode_pil(data: bytes) -> torch.Tensor:
    """Fallback decoder for formats torchvision cannot read (BMP, TIFF, PPM, palette...)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return pil_to_tensor(img)


def fit_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 `(C, h, w)`, C in 1..4 -> RGB `(3, size, size)` as images are loaded: alpha over
    white, grey repeated, shorter side resized to `size`, centre crop."""
    return _fit(_to_rgb(image), size)


def _torchvision_decoders():
    """(decode_image, decode_jpeg, ImageReadMode) or None where torchvision.io lacks them."""
    try:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    except ImportError:  # torchvision plans to move decoding to torchcodec
        return None
    return decode_image, decode_jpeg, ImageReadMode


def decode_image_bytes(data: bytes, size: int) -> torch.Tensor:
    """Decode image bytes to uint8 RGB `(3, size, size)` (any mode; other sizes resized+cropped).

    libjpeg-turbo/libpng through torchvision (about 10x faster than PIL for small JPEGs), with
    PIL as the fallback for other formats. Raises on data that is not a readable image.
    """
    decoders = _torchvision_decoders()
    try:
        if decoders is None:
            raise RuntimeError("torchvision.io unavailable")
        decode_image, _, mode = decoders
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        is_jpeg = data[:2] == b"\xff\xd8"
        with warnings.catch_warnings():  # torchvision.io warns it will move to torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            # JPEG: libjpeg converts grey/CMYK to RGB; others: keep alpha to composite it
            image = decode_image(raw, mode=mode.RGB if is_jpeg else mode.UNCHANGED)
    except Exception:
        image = _decode_pil(data)
    return fit_image(image, size)


def _decode_all(items: Sequence[tuple[str, bytes]], size: int, chunk: int = 1024
                ) -> np.ndarray:
    """Decode every item into one uint8 `(N, 3, size, size)` array, or raise ValueError
    listing every file that failed (all files are tried first, so the list is complete).

    JPEGs go through torchvision's batched decoder (one call per chunk, no per-image Python);
    a chunk that fails, and every other format, falls back to one image at a time.
    """
    decoders = _torchvision_decoders()
    out = np.empty((len(items), 3, size, size), dtype=np.uint8)
    out_t = torch.from_numpy(out)
    bad: list[tuple[str, str]] = []
    jpeg_idx = [k for k, (_, data) in enumerate(items) if data[:2] == b"\xff\xd8"]
    if decoders is None:
        jpeg_idx = []
    done = np.zeros(len(items), dtype=bool)
    for start in range(0, len(jpeg_idx), chunk):
        ks = jpeg_idx[start:start + chunk]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                decoded = decoders[1]([torch.frombuffer(bytearray(items[k][1]), dtype=torch.uint8)
                                       for k in ks], mode=decoders[2].RGB)
        except Exception:  # one bad file spoils the batch call: retry these one by one
            continue
        for k, image in zip(ks, decoded):
            out_t[k] = image if image.shape[-2:] == (size, size) else _fit(image, size)
            done[k] = True
    for k in np.flatnonzero(~done):
        name, data = items[k]
        try:
            out_t[k] = decode_image_bytes(data, size)
        except Exception as e:  # any decoder failure marks the file as bad, listed up front
            first = str(e).splitlines()[0][:100] if str(e) else ""
            bad.append((name, f"{type(e).__name__}: {first}"))
    if bad:
        shown = "; ".join(f"{n} ({err})" for n, err in bad[:10])
        more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ValueError(f"{len(bad)} file(s) could not be read as images: {shown}{more} "
                         f"(remove or replace them)")
    return out


def _probe_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header only, or None when unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:
        return None


def _choose_size(items: Sequence[tuple[str, bytes]], image_size: int | None) -> int:
    """The requested size, else the most common image side (<= 64 px data) or 224."""
    if image_size is not None:
        return image_size
    sample = items[:: max(1, len(items) // 200)]  # a few hundred probes are enough
    sizes = Counter(s for s in (_probe_size(d) for _, d in sample) if s is not None)
    if not sizes:
        return 224
    (w, h), _ = sizes.most_common(1)[0]
    side = min(w, h)
    return side if side <= SMALL_MAX_SIZE else 224


__all__ = ["decode_image_bytes", "fit_image", "pil_to_tensor"]
