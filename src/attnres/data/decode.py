"""Image bytes -> uint8 RGB `(3, S, S)`: every PIL mode made RGB by the rules below, other
sizes resized and centre cropped, sizes probed from headers.

How each mode becomes 8-bit RGB (the tests check every rule against numpy):

- 8-bit channels are kept; mode "1" is 0 or 255; grey is repeated over the 3 channels;
  palette images ("P", "PA") are looked up in their palette.
- 16-bit channels ("I;16", "I;16B", 16-bit PNGs) are scaled by their nominal range,
  value / 257 rounded (0 -> 0, 65535 -> 255), the same for every image, so a dark scan stays
  dark. (PIL's own `convert("L")` clips them at 255 instead: almost every pixel white.)
- 32-bit integers ("I", which 16-bit PGMs and TIFFs open as): as 16-bit when every value
  lies in 0..65535, else the image's own min..max is stretched onto 0..255.
- floats ("F"): value * 255 rounded when every value lies in [0, 1], else the image's own
  min..max is stretched onto 0..255; NaN and infinities become 0.
- alpha (LA, RGBA, PA, a palette's or a colour key's transparency) is composited over white:
  round(c * a + 255 * (1 - a)) with a = alpha / 255, after 16-bit channels are brought to
  8 bits; fully transparent pixels are white.
- CMYK: R = (255 - C) * (255 - K) / 255 rounded (G from M, B from Y), as libjpeg does.
- YCbCr: JFIF full-range BT.601, R = Y + 1.402 (Cr - 128), G = Y - 0.344136 (Cb - 128)
  - 0.714136 (Cr - 128), B = Y + 1.772 (Cb - 128), rounded and clipped.
- HSV, RGBX and premultiplied La / RGBa go through PIL's conversion; other modes (LAB, ...)
  are a ValueError naming the mode.

JPEGs, and PNGs and WebPs with neither a palette nor a colour key, decode through
torchvision (libjpeg-turbo, libpng, libwebp; about 10x faster than PIL for small JPEGs);
every other file through PIL. Multi-frame files give their first frame. Without torchvision,
16-bit colour PNGs keep PIL's high byte (value >> 8, at most 1 below value / 257).
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .augment import center_crop
from .datasets import SMALL_MAX_SIZE

# modes left to PIL's own conversion (rare in files); every other mode has a rule here
_PIL_CONVERTS = {"HSV": "RGB", "RGBX": "RGB", "La": "LA", "RGBa": "RGBA"}


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


def _to8(arr: np.ndarray) -> np.ndarray:
    """uint8 kept; uint16 -> round(value / 257), in integers (257 is odd: never a tie)."""
    if arr.dtype == np.uint8:
        return arr
    return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 `(h, w, c)` over white with uint8 alpha `(h, w)`: 255 - round(a (255 - c) / 255),
    in integers (the exact value is never a tie, so this is the rounded float formula)."""
    a = alpha.astype(np.int32)[..., None]
    return (255 - (a * (255 - colour.astype(np.int32)) + 127) // 255).astype(np.uint8)


def _channels_to_rgb(arr: np.ndarray) -> np.ndarray:
    """uint8 or uint16 `(h, w, c)`, c = 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA), ->
    uint8 RGB `(h, w, 3)`."""
    arr = _to8(arr)
    c = arr.shape[2]
    if c in (2, 4):
        arr = _over_white(arr[..., :-1], arr[..., -1])
    elif c not in (1, 3):
        raise ValueError(f"unsupported channel count {c}")
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def _float_to8(v: np.ndarray) -> np.ndarray:
    """Float `(h, w)` -> uint8: [0, 1] scaled by 255, any other range stretched from the
    image's min..max; non-finite values become 0."""
    v = v.astype(np.float64)
    finite = np.isfinite(v)
    if not finite.any():
        return np.zeros(v.shape, np.uint8)
    lo, hi = float(v[finite].min()), float(v[finite].max())
    if lo >= 0.0 and hi <= 1.0:
        out = np.rint(v * 255.0)
    elif hi > lo:
        out = np.rint((v - lo) / (hi - lo) * 255.0)
    else:  # one value outside [0, 1]: no range to stretch
        out = np.zeros(v.shape)
    return np.where(finite, out, 0).astype(np.uint8)


def _with_colour_key(arr: np.ndarray, key) -> np.ndarray:
    """Append an alpha channel that is 0 where `(h, w, c)` equals the colour key (PNG tRNS
    for grey or RGB images: an int or an RGB tuple), else full."""
    key_arr = np.atleast_1d(np.asarray(key, dtype=np.int64))
    if key_arr.size != arr.shape[2]:
        return arr
    full = np.iinfo(arr.dtype).max
    alpha = np.where((arr.astype(np.int64) == key_arr).all(axis=2), 0, full).astype(arr.dtype)
    return np.concatenate([arr, alpha[..., None]], axis=2)


def _palette_rgba(img) -> np.ndarray:
    """(256, 4) uint8 RGBA palette of a "P"/"PA" image, with its transparency applied."""
    pal = np.zeros((256, 4), np.uint8)
    pal[:, 3] = 255
    entries = img.getpalette("RGBA")
    if entries is None:  # no palette: the indices are grey levels
        pal[:, :3] = np.arange(256, dtype=np.uint8)[:, None]
    else:
        entries = np.asarray(entries, np.uint8).reshape(-1, 4)[:256]
        pal[:len(entries)] = entries
    t = img.info.get("transparency")
    if isinstance(t, int) and 0 <= t < 256:
        pal[t, 3] = 0
    elif isinstance(t, bytes):  # one alpha per palette index (PNG tRNS)
        table = np.frombuffer(t, np.uint8)[:256]
        pal[:len(table), 3] = table
    return pal


def _pil_channels(img) -> np.ndarray:
    """uint8/uint16 `(h, w, c)` channels (grey, grey+alpha, RGB or RGBA) of a loaded PIL image
    of any mode, by the rules in the module docstring."""
    mode = img.mode
    if mode in _PIL_CONVERTS:
        img, mode = img.convert(_PIL_CONVERTS[mode]), _PIL_CONVERTS[mode]
    arr = np.asarray(img)
    if mode in ("L", "LA", "RGB", "RGBA") or mode.startswith("I;16"):
        arr = arr.astype(np.uint16) if mode.startswith("I;16") else arr
        arr = arr[..., None] if arr.ndim == 2 else arr
        key = img.info.get("transparency")
        return arr if key is None or mode in ("LA", "RGBA") else _with_colour_key(arr, key)
    if mode == "1":
        return (arr.astype(np.uint8) * 255)[..., None]
    if mode in ("P", "PA"):
        rgba = _palette_rgba(img)[arr[..., 0] if mode == "PA" else arr]
        if mode == "PA":
            rgba[..., 3] = arr[..., 1]
        return rgba
    if mode == "CMYK":
        c = arr.astype(np.int32)
        return (((255 - c[..., :3]) * (255 - c[..., 3:]) + 127) // 255).astype(np.uint8)
    if mode == "YCbCr":
        y, cb, cr = (arr[..., i].astype(np.float64) for i in range(3))
        r = y + 1.402 * (cr - 128)
        g = y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128)
        b = y + 1.772 * (cb - 128)
        return np.clip(np.rint(np.stack([r, g, b], axis=2)), 0, 255).astype(np.uint8)
    if mode == "I":
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.uint16)[..., None]
        return _float_to8(arr)[..., None]
    if mode == "F":
        return _float_to8(arr)[..., None]
    raise ValueError(f"image mode {mode!r} is not supported; save the image as RGB, grey or "
                     f"palette")


def _decode_pil(data: bytes) -> np.ndarray:
    """Channels `(h, w, c)` of any image PIL opens (BMP, TIFF, GIF, PPM, palette PNG...)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return _pil_channels(img)


def _plain_png(data: bytes) -> bool:
    """A PNG without palette (colour type 3) or colour key (tRNS): one torchvision reads
    exactly. torchvision returns palette indices as grey and ignores tRNS."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 33 or data[25] == 3:
        return False
    pos = 8
    while pos + 8 <= len(data):  # walk the chunk headers up to the image data
        length, tag = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if tag == b"tRNS":
            return False
        if tag == b"IDAT":
            return True
        pos += 12 + length
    return False


def _torchvision_decoders():
    """(decode_image, decode_jpeg, ImageReadMode) or None where torchvision.io lacks them."""
    try:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    except ImportError:  # torchvision plans to move decoding to torchcodec
        return None
    return decode_image, decode_jpeg, ImageReadMode


def _decode_torchvision(data: bytes) -> np.ndarray | None:
    """Channels `(h, w, c)` (uint8, or uint16 for 16-bit PNGs) through torchvision for JPEG,
    plain PNG and WebP; None for other files or when torchvision fails (PIL tries next)."""
    decoders = _torchvision_decoders()
    if decoders is None:
        return None
    decode_image, _, read_mode = decoders
    if data[:2] == b"\xff\xd8":
        read_mode = read_mode.RGB  # libjpeg converts grey, YCbCr and CMYK itself
    elif _plain_png(data) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        read_mode = read_mode.UNCHANGED  # keep alpha and 16 bits to convert them here
    else:
        return None
    try:
        with warnings.catch_warnings():  # torchvision.io warns it will move to torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                 mode=read_mode)
    except Exception:
        return None
    image = image[0] if image.dim() == 4 else image  # animated: the first frame
    return image.permute(1, 2, 0).numpy()


def decode_full(data: bytes) -> torch.Tensor:
    """Decode image bytes to uint8 RGB `(3, H, W)` at full resolution (any mode, converted
    by the rules in the module docstring). Raises on data that is not a readable image, or
    an image mode with no rule (ValueError naming it)."""
    channels = _decode_torchvision(data)
    if channels is None:
        channels = _decode_pil(data)
    rgb = _channels_to_rgb(channels)
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def pil_to_tensor(img) -> torch.Tensor:
    """A loaded PIL image of any mode as uint8 RGB `(3, h, w)`, by the module's rules."""
    rgb = _channels_to_rgb(_pil_channels(img))
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def fit_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 `(C, h, w)`, C in 1..4 (grey, grey+alpha, RGB, RGBA) -> RGB `(3, size, size)`
    as images are loaded: alpha over white, grey repeated, shorter side resized, centre crop."""
    rgb = _channels_to_rgb(image.permute(1, 2, 0).numpy())
    return _fit(torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))), size)


def decode_image_bytes(data: bytes, size: int) -> torch.Tensor:
    """`decode_full(data)` resized (shorter side) and centre cropped to `(3, size, size)`."""
    return _fit(decode_full(data), size)


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
