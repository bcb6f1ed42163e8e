"""attnres.data integrity: every image mode decoded to the right RGB, the decode cache
validated against its header on every load, empty class folders refused.

References are computed here with numpy from the arrays the files were written from, never
with the code under test.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from attnres import data as D
from attnres.data import decode as decode_mod
from attnres.data import load_dataset

S = 8  # side of the mode test images: decoded at their own size, so nothing is resized


# ----------------------------------------------------------------------------- references

def _grey(v: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(v, dtype=np.uint8)[..., None], 3, axis=2)


def _over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """colour (h, w, c) over a white background with alpha (h, w), both on 0..255."""
    a = alpha.astype(np.float64)[..., None] / 255.0
    out = np.rint(colour.astype(np.float64) * a + 255.0 * (1.0 - a)).astype(np.uint8)
    return np.repeat(out, 3, axis=2) if out.shape[2] == 1 else out


def _from16(v: np.ndarray) -> np.ndarray:
    """16-bit -> 8-bit by the nominal range: value / 257, rounded."""
    return np.rint(v.astype(np.float64) / 257.0).astype(np.uint8)


def _stretch(v: np.ndarray) -> np.ndarray:
    """The image's own min..max onto 0..255."""
    v = v.astype(np.float64)
    return np.rint((v - v.min()) / (v.max() - v.min()) * 255.0).astype(np.uint8)


def _img(mode: str, arr: np.ndarray) -> Image.Image:
    """A PIL image of `mode` holding `arr` (h, w[, c]) laid out as that mode's raw bytes."""
    return Image.frombytes(mode, (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr).tobytes())


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def _png16(path: Path, arr: np.ndarray) -> Path:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by the channel count) written by hand:
    PIL reads these but cannot write them."""
    h, w, c = arr.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + tag + body
                + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF))

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def _palette(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, Image.Image]:
    """8 random colours, random indices (index 3 used), and the P image."""
    pal = rng.integers(0, 256, (8, 3)).astype(np.uint8)
    idx = rng.integers(0, 8, (S, S)).astype(np.uint8)
    idx[0, :3] = 3
    img = _img("P", idx)
    img.putpalette(pal.flatten().tolist())
    return pal, idx, img


# ----------------------------------------------------------------------------- mode cases
# each case writes one file into `d` and returns (path, expected (S, S, 3) uint8, tolerance)

Case = Callable[[Path, np.random.Generator], tuple[Path, np.ndarray, int]]


def _bilevel(fmt: str) -> Case:
    def make(d, rng):
        bits = rng.integers(0, 2, (S, S)).astype(bool)
        img = _img("L", bits.astype(np.uint8) * 255).convert("1")
        assert img.mode == "1"
        return _save(img, d / f"x.{fmt}"), _grey(bits * 255), 0
    return make


def _l_png(d, rng):
    g = rng.integers(0, 256, (S, S)).astype(np.uint8)
    return _save(_img("L", g), d / "x.png"), _grey(g), 0


def _l_png_transparency(d, rng):
    g = rng.integers(0, 256, (S, S)).astype(np.uint8)
    g[1, :4] = 7  # the transparent grey value
    alpha = np.where(g == 7, 0, 255)
    return _save(_img("L", g), d / "x.png", transparency=7), _over_white(g[..., None], alpha), 0


def _la_png(d, rng):
    la = rng.integers(0, 256, (S, S, 2)).astype(np.uint8)
    return _save(_img("LA", la), d / "x.png"), _over_white(la[..., :1], la[..., 1]), 0


def _rgb(fmt: str, **kw) -> Case:
    def make(d, rng):
        rgb = rng.integers(0, 256, (S, S, 3)).astype(np.uint8)
        return _save(_img("RGB", rgb), d / f"x.{fmt}", **kw), rgb, 0
    return make


def _rgb_png_transparency(d, rng):
    rgb = rng.integers(0, 256, (S, S, 3)).astype(np.uint8)
    rgb[2, :5] = (1, 2, 3)  # the transparent colour
    alpha = np.where((rgb == (1, 2, 3)).all(axis=2), 0, 255)
    return (_save(_img("RGB", rgb), d / "x.png", transparency=(1, 2, 3)),
            _over_white(rgb, alpha), 0)


def _rgba(fmt: str, **kw) -> Case:
    def make(d, rng):
        rgba = rng.integers(0, 256, (S, S, 4)).astype(np.uint8)
        rgba[0, :3, 3] = (0, 255, 128)  # fully transparent, opaque and half
        return (_save(_img("RGBA", rgba), d / f"x.{fmt}", **kw),
                _over_white(rgba[..., :3], rgba[..., 3]), 0)
    return make


def _p(fmt: str) -> Case:
    def make(d, rng):
        pal, idx, img = _palette(rng)
        return _save(img, d / f"x.{fmt}"), pal[idx], 0
    return make


def _p_transparent_index(fmt: str) -> Case:
    def make(d, rng):
        pal, idx, img = _palette(rng)
        alpha = np.where(idx == 3, 0, 255)
        return _save(img, d / f"x.{fmt}", transparency=3), _over_white(pal[idx], alpha), 0
    return make


def _p_png_alpha_table(d, rng):
    pal, idx, img = _palette(rng)
    table = np.array([0, 50, 100, 255, 10, 255, 200, 128], dtype=np.uint8)  # alpha per index
    return (_save(img, d / "x.png", transparency=table.tobytes()),
            _over_white(pal[idx], table[idx]), 0)


def _cmyk_tiff(d, rng):
    cmyk = rng.integers(0, 256, (S, S, 4)).astype(np.float64)
    rgb = np.rint((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255).astype(np.uint8)
    return _save(_img("CMYK", cmyk.astype(np.uint8)), d / "x.tiff"), rgb, 0


def _cmyk_jpeg(d, rng):
    cmyk = rng.integers(0, 256, (S, S, 4)).astype(np.uint8)
    path = _save(_img("CMYK", cmyk), d / "x.jpg", quality=95)
    stored = np.asarray(Image.open(path)).astype(np.float64)  # lossy: what the file holds
    rgb = np.rint((255 - stored[..., :3]) * (255 - stored[..., 3:]) / 255).astype(np.uint8)
    return path, rgb, 1  # libjpeg builds may round the IDCT differently


def _ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """JFIF (full-range BT.601) YCbCr -> RGB."""
    y, cb, cr = (ycc[..., i].astype(np.float64) for i in range(3))
    r = y + 1.402 * (cr - 128)
    g = y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128)
    b = y + 1.772 * (cb - 128)
    return np.clip(np.rint(np.stack([r, g, b], axis=2)), 0, 255).astype(np.uint8)


def _ycbcr_tiff(d, rng):
    ycc = rng.integers(0, 256, (S, S, 3)).astype(np.uint8)
    path = _save(_img("YCbCr", ycc), d / "x.tiff")
    with Image.open(path) as back:
        assert back.mode == "YCbCr" and np.array_equal(np.asarray(back), ycc)
    return path, _ycbcr_to_rgb(ycc), 0


def _i16(mode: str, fmt: str) -> Case:
    def make(d, rng):
        v = rng.integers(0, 65536, (S, S)).astype(np.uint16)
        v[0, :4] = (0, 128, 129, 65535)  # the ends and the first rounding step
        raw = v.astype(">u2") if mode == "I;16B" else v.astype("<u2")
        return _save(_img(mode, raw), d / f"x.{fmt}"), _grey(_from16(v)), 0
    return make


def _i32_tiff(d, rng):
    v = rng.integers(0, 65536, (S, S)).astype("<i4")
    return _save(_img("I", v), d / "x.tiff"), _grey(_from16(v)), 0


def _i32_tiff_wide(d, rng):
    v = rng.integers(-70000, 200000, (S, S)).astype("<i4")
    return _save(_img("I", v), d / "x.tiff"), _grey(_stretch(v)), 0


def _f_tiff_unit(d, rng):
    v = rng.random((S, S)).astype("<f4")
    v[0, :2] = (0.0, 1.0)
    want = np.rint(v.astype(np.float64) * 255.0).astype(np.uint8)
    return _save(_img("F", v), d / "x.tiff"), _grey(want), 0


def _f_tiff_wide(d, rng):
    v = (rng.random((S, S)) * 10 - 3).astype("<f4")
    return _save(_img("F", v), d / "x.tiff"), _grey(_stretch(v)), 0


def _png16_case(channels: int) -> Case:
    def make(d, rng):
        v = rng.integers(0, 65536, (S, S, channels)).astype(np.uint16)
        v[0, :3, -1] = (0, 65535, 32768)
        v8 = _from16(v)  # 16-bit channels come to 8 bits first, then alpha applies
        want = _over_white(v8[..., :-1], v8[..., -1]) if channels in (2, 4) else (
            _grey(v8[..., 0]) if channels == 1 else v8)
        return _png16(d / "x.png", v), want, 0
    return make


MODE_CASES: dict[str, Case] = {
    "1-png": _bilevel("png"), "1-bmp": _bilevel("bmp"), "L-png": _l_png,
    "L-png-transparency": _l_png_transparency, "LA-png": _la_png,
    "RGB-png": _rgb("png"), "RGB-bmp": _rgb("bmp"), "RGB-tiff": _rgb("tiff"),
    "RGB-png-transparency": _rgb_png_transparency,
    "RGBA-png": _rgba("png"), "RGBA-tiff": _rgba("tiff"),
    "RGBA-webp": _rgba("webp", lossless=True, exact=True),
    "P-png": _p("png"), "P-bmp": _p("bmp"), "P-gif": _p("gif"),
    "P-png-transparent-index": _p_transparent_index("png"),
    "P-gif-transparent-index": _p_transparent_index("gif"),
    "P-png-alpha-table": _p_png_alpha_table,
    "CMYK-tiff": _cmyk_tiff, "CMYK-jpeg": _cmyk_jpeg, "YCbCr-tiff": _ycbcr_tiff,
    "I;16-png": _i16("I;16", "png"), "I;16B-png": _i16("I;16B", "png"),
    "I;16-tiff": _i16("I;16", "tiff"), "I;16-pgm": _i16("I;16", "pgm"),
    "I-tiff": _i32_tiff, "I-tiff-wide-range": _i32_tiff_wide,
    "F-tiff-unit-range": _f_tiff_unit, "F-tiff-wide-range": _f_tiff_wide,
    "grey16-png": _png16_case(1), "greyalpha16-png": _png16_case(2),
    "RGB16-png": _png16_case(3), "RGBA16-png": _png16_case(4),
}
# PIL alone reads 16-bit colour PNGs by their high byte (v >> 8), not v / 257 rounded
NEEDS_TORCHVISION = {"greyalpha16-png", "RGB16-png", "RGBA16-png"}


def _check(got: torch.Tensor, want: np.ndarray, tol: int) -> None:
    assert got.dtype == torch.uint8 and tuple(got.shape) == (3, S, S)
    diff = np.abs(got.numpy().transpose(1, 2, 0).astype(int) - want.astype(int))
    assert diff.max() <= tol, f"max difference {diff.max()}"


@pytest.mark.parametrize("name", sorted(MODE_CASES))
def test_every_mode_decodes_to_the_numpy_reference(name, tmp_path):
    path, want, tol = MODE_CASES[name](tmp_path, np.random.default_rng(sorted(MODE_CASES)
                                                                        .index(name)))
    data = path.read_bytes()
    _check(D.decode_image_bytes(data, S), want, tol)
    _check(torch.from_numpy(D._decode_all([(path.name, data)], S)[0]), want, tol)  # batched


@pytest.mark.parametrize("name", sorted(set(MODE_CASES) - NEEDS_TORCHVISION))
def test_every_mode_decodes_the_same_without_torchvision(name, tmp_path, monkeypatch):
    monkeypatch.setattr(decode_mod, "_torchvision_decoders", lambda: None)
    path, want, tol = MODE_CASES[name](tmp_path, np.random.default_rng(7))
    _check(D.decode_image_bytes(path.read_bytes(), S), want, tol)


def test_unsupported_mode_is_listed_up_front(tmp_path):
    path = _save(_img("LAB", np.full((S, S, 3), 100, np.uint8)), tmp_path / "lab.tiff")
    with pytest.raises(ValueError, match=r"lab\.tiff.*LAB"):
        D._decode_all([("lab.tiff", path.read_bytes())], S)


def test_sixteen_bit_folder_is_cached_as_the_scaled_values(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(3)
    want = {}
    for c in ("a", "b"):
        for i in range(3):
            (root / c).mkdir(parents=True, exist_ok=True)
            v = rng.integers(0, 65536, (S, S)).astype("<u2")
            _save(_img("I;16", v), root / c / f"{i}.png")
            want[(c, i)] = _grey(_from16(v)).transpose(2, 0, 1)
    data = load_dataset(str(root), val_split=2, cache_dir=tmp_path / "cache")
    got = {tuple(x.flatten().tolist()) for x in torch.cat([data.train.images, data.val.images])}
    assert got == {tuple(w.flatten().tolist()) for w in want.values()}


# ----------------------------------------------------------------------------- empty classes

def _folder(root: Path, per_class: int = 4, size: int = 12, classes: int = 3) -> Path:
    """Classes of noisy solid colours, PNG and JPEG alternately."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        colour = np.array([(200, 30, 30), (30, 200, 30), (30, 30, 200)][c % 3])
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.clip(colour + rng.integers(-20, 20, (size, size, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(
                root / f"class{c}" / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def test_empty_class_folders_fail_naming_all_of_them(tmp_path):
    root = _folder(tmp_path / "data")
    (root / "empty_b").mkdir()
    (root / "empty_a").mkdir()
    (root / ".hidden").mkdir()  # not a class folder
    with pytest.raises(ValueError, match="empty_a, empty_b") as err:
        load_dataset(str(root), cache_dir=tmp_path / "cache")
    assert ".hidden" not in str(err.value) and "\n" not in str(err.value)
    # an archive of it fails the same way
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        tar.add(root, arcname="data")
    with pytest.raises(ValueError, match="empty_a, empty_b"):
        load_dataset(str(tmp_path / "a.tar"), cache_dir=tmp_path / "cache")


def test_empty_class_folder_fails_even_when_the_rest_is_cached(tmp_path):
    root = _folder(tmp_path / "data")
    load_dataset(str(root), val_split=3, cache_dir=tmp_path / "cache")
    (root / "late_empty").mkdir()
    with pytest.raises(ValueError, match="late_empty"):
        load_dataset(str(root), val_split=3, cache_dir=tmp_path / "cache")


def test_empty_validation_class_folder_fails(tmp_path):
    _folder(tmp_path / "ds" / "train", per_class=2)
    _folder(tmp_path / "ds" / "val", per_class=1)
    (tmp_path / "ds" / "val" / "class9").mkdir()
    with pytest.raises(ValueError, match="val/class9"):
        load_dataset(str(tmp_path / "ds"), cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------- the cache

def _archive(tmp_path: Path) -> Path:
    root = _folder(tmp_path / "src" / "data")
    out = tmp_path / "data.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(root, arcname="data")
    return out


def _fresh(source: Path, **kw) -> D.ImageData:
    """What a decode with no cache at all returns."""
    with tempfile.TemporaryDirectory() as d:
        data = load_dataset(str(source), val_split=3, cache_dir=d, **kw)
        assert not data.info["cache_hit"]
        return data


def _assert_same(a: D.ImageData, b: D.ImageData) -> None:
    for split in ("train", "val"):
        assert torch.equal(getattr(a, split).images, getattr(b, split).images)
        assert torch.equal(getattr(a, split).labels, getattr(b, split).labels)
    assert a.classes == b.classes and a.image_size == b.image_size and a.kind == b.kind
    assert a.mean == b.mean and a.std == b.std


def _entry(cache: Path) -> tuple[Path, Path]:
    npy, npz = sorted(cache.glob("*.npy")), sorted(cache.glob("*.npz"))
    assert len(npy) == 1 and len(npz) == 1, (npy, npz)
    return npy[0], npz[0]


def _rewrite_npz(npz: Path, **changes) -> None:
    with np.load(npz, allow_pickle=False) as z:
        fields = {k: z[k] for k in z.files}
    fields.update(changes)
    np.savez(npz, **fields)


def _rewrite_header(npz: Path, **changes) -> None:
    """Change header fields and re-seal the header, as another writer would."""
    with np.load(npz, allow_pickle=False) as z:
        header = json.loads(str(z["header"]))
    header.update(changes)
    text = json.dumps(header, sort_keys=True)
    _rewrite_npz(npz, header=np.array(text),
                 header_crc32=np.array(zlib.crc32(text.encode()), dtype=np.uint32))


def _swap_labels(npz: Path) -> None:
    with np.load(npz) as z:
        labels = z["labels"].copy()
    i, j = int(np.argmax(labels == 0)), int(np.argmax(labels == 1))
    labels[i], labels[j] = labels[j], labels[i]  # same counts, wrong images
    _rewrite_npz(npz, labels=labels)


def _flip_split(npz: Path) -> None:
    with np.load(npz) as z:
        is_val = z["is_val"].copy()
    is_val[0] = True
    _rewrite_npz(npz, is_val=is_val)


def _flip_pixel(npy: Path) -> None:
    raw = bytearray(npy.read_bytes())
    raw[-5] ^= 0x10  # inside the image data: the .npy still loads
    npy.write_bytes(bytes(raw))


CORRUPTIONS: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "dtype": (lambda npy, npz: np.save(npy, np.load(npy).astype(np.int16)), "dtype"),
    "channels": (lambda npy, npz: np.save(npy, np.load(npy)[:, :1]), "shape"),
    "image-size": (lambda npy, npz: np.save(npy, np.load(npy)[..., :-2, :-2]), "shape"),
    "header-image-size": (lambda npy, npz: _rewrite_header(npz, image_size=10), "image size"),
    "labels": (lambda npy, npz: _swap_labels(npz), "labels"),
    "class-names": (lambda npy, npz: _rewrite_header(npz, classes=["x", "y", "z"]), "class"),
    "counts": (lambda npy, npz: _rewrite_header(npz, counts={"train": [1, 1, 1], "val": [0] * 3}),
               "count"),
    "split-flags": (lambda npy, npz: _flip_split(npz), "split"),
    "pixels": (lambda npy, npz: _flip_pixel(npy), "checksum"),
    "truncated-images": (lambda npy, npz: npy.write_bytes(npy.read_bytes()[:-100]), "images"),
    "truncated-index": (lambda npy, npz: npz.write_bytes(npz.read_bytes()[:200]), "unreadable"),
    "missing-index": (lambda npy, npz: npz.unlink(), "incomplete"),
    "garbage-index": (lambda npy, npz: npz.write_bytes(b"\0" * 64), "unreadable"),
    "other-version": (lambda npy, npz: _rewrite_header(npz, version=1), "version"),
    "other-source": (lambda npy, npz: _rewrite_header(npz, source="0" * 64), "source"),
    "no-header": (lambda npy, npz: _drop_header(npz), "header"),
    "header-tampered": (lambda npy, npz: _tamper_header(npz), "header"),
}


def _drop_header(npz: Path) -> None:
    with np.load(npz) as z:
        fields = {k: z[k] for k in z.files if k not in ("header", "header_crc32")}
    np.savez(npz, **fields)


def _tamper_header(npz: Path) -> None:
    with np.load(npz) as z:
        text = str(z["header"])
    _rewrite_npz(npz, header=np.array(text.replace('"version": ', '"version": 1')))


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_damaged_cache_is_rebuilt_with_a_warning(how, tmp_path):
    source = _archive(tmp_path)
    cache = tmp_path / "cache"
    first = load_dataset(str(source), val_split=3, cache_dir=cache)
    npy, npz = _entry(cache)
    corrupt, what = CORRUPTIONS[how]
    corrupt(npy, npz)
    with pytest.warns(UserWarning, match=what) as record:
        again = load_dataset(str(source), val_split=3, cache_dir=cache)
    assert any(npy.stem in str(w.message) for w in record)  # names the cache entry
    assert not again.info["cache_hit"]
    _assert_same(again, _fresh(source))
    _assert_same(again, first)
    with warnings.catch_warnings():  # the rebuilt entry is whole
        warnings.simplefilter("error")
        third = load_dataset(str(source), val_split=3, cache_dir=cache)
    assert third.info["cache_hit"]
    _assert_same(third, first)
    assert _entry(cache) == (npy, npz)


def test_one_cache_entry_per_source_and_size(tmp_path):
    source = _archive(tmp_path)
    cache = tmp_path / "cache"
    auto = load_dataset(str(source), val_split=3, cache_dir=cache)  # the size read from the images
    explicit = load_dataset(str(source), val_split=3, cache_dir=cache, image_size=12)
    assert explicit.info["cache_hit"] and explicit.info["cache"] == auto.info["cache"]
    again = load_dataset(str(source), val_split=3, cache_dir=cache)
    assert again.info["cache_hit"]
    _entry(cache)
    # a copy of the archive under another name is the same source
    copy = tmp_path / "renamed.tar.gz"
    shutil.copy(source, copy)
    assert load_dataset(str(copy), val_split=3, cache_dir=cache, image_size=12).info["cache_hit"]
    # another size is another entry; the first is kept
    other = load_dataset(str(source), val_split=3, cache_dir=cache, image_size=10)
    assert not other.info["cache_hit"] and other.train.images.shape[-1] == 10
    assert len(list(cache.glob("*.npy"))) == 2
    assert load_dataset(str(source), val_split=3, cache_dir=cache).info["cache_hit"]


def test_cache_written_by_the_previous_version_is_rebuilt(tmp_path):
    source = _archive(tmp_path)
    cache = tmp_path / "cache"
    fresh = _fresh(source)
    # the layout version 1 wrote: no header, named by a hash of "v1|sha256|auto"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    old = cache / f"data-{hashlib.sha256(f'v1|{digest}|auto'.encode()).hexdigest()[:24]}"
    cache.mkdir()
    images = torch.cat([fresh.train.images, fresh.val.images]).numpy()
    labels = torch.cat([fresh.train.labels, fresh.val.labels]).numpy()
    np.save(old.with_suffix(".npy"), images)
    np.savez(old.with_suffix(".npz"), labels=labels, is_val=np.arange(15) >= 12,
             classes=np.array(fresh.classes), image_size=np.array(12),
             train_hist=D.channel_histogram(fresh.train.images).numpy(),
             files=np.array([f"f{i}" for i in range(15)]))
    with pytest.warns(UserWarning, match="older"):
        data = load_dataset(str(source), val_split=3, cache_dir=cache)
    assert not data.info["cache_hit"]
    _assert_same(data, fresh)
    assert not old.with_suffix(".npy").exists() and not old.with_suffix(".npz").exists()
    _entry(cache)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNRES_CACHE", str(tmp_path / "c"))
    assert D.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ATTNRES_CACHE")
    assert D.default_cache_dir() == Path.home() / ".cache" / "attnres"
    for word in ("ATTNRES_CACHE", "--cache-dir", "~/.cache/attnres"):
        assert word in D.cache.__doc__


# ----------------------------------------------------------------------------- property test

@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A small archive, its cache entry and the data a fresh decode gives."""
    tmp = tmp_path_factory.mktemp("pristine")
    source = _archive(tmp)
    cache = tmp / "cache"
    load_dataset(str(source), val_split=3, cache_dir=cache)
    return source, cache, _fresh(source)


corruption = st.fixed_dictionaries({
    "file": st.sampled_from([".npy", ".npz"]),
    "flips": st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                      max_size=4),
    "cut": st.one_of(st.none(), st.floats(0, 1, exclude_max=True)),
})


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=corruption)
def test_random_cache_damage_never_gives_wrong_data(pristine, c):
    source, clean, fresh = pristine
    with tempfile.TemporaryDirectory() as d:
        cache = Path(d)
        for f in clean.iterdir():
            shutil.copy(f, cache / f.name)
        target = next(cache.glob(f"*{c['file']}"))
        raw = bytearray(target.read_bytes())
        for where, xor in c["flips"]:
            raw[int(where * len(raw))] ^= xor
        if c["cut"] is not None:
            raw = raw[:int(c["cut"] * len(raw))]
        target.write_bytes(bytes(raw))
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            data = load_dataset(str(source), val_split=3, cache_dir=cache)
        warned = [str(w.message) for w in record if "cache" in str(w.message)]
        assert data.info["cache_hit"] == (not warned), warned
        _assert_same(data, fresh)
        assert load_dataset(str(source), val_split=3, cache_dir=cache).info["cache_hit"]
