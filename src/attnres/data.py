"""Image data sets by name or path, stratified splits, decode caching and batch augmentation.

`load_dataset(spec)` returns an `ImageData`: uint8 image tensors `(N, 3, H, W)` for a training
and a validation split, the class names and the training split's channel statistics.
`BatchLoader` turns one split into normalised float batches, augmenting whole uint8 batches
as tensors (no per-image PIL work), so an epoch over 45,000 CIFAR images costs little on a CPU.

Specs:
- ``"digits"``: scikit-learn's bundled 1,797 handwritten 8x8 digits, resized to 32x32, grey
  repeated over 3 channels; needs no download.
- ``"cifar10"`` / ``"cifar100"``: torchvision's data sets (downloaded when online).
- a path to an ImageFolder directory (``root/<class>/<image>``, or ``root/train/<class>`` and
  ``root/val/<class>``) or to a ``.tar`` / ``.tar.gz`` / ``.tgz`` archive holding one.
  Decoded images are cached as ``.npy`` + ``.npz`` in ``cache_dir`` (default ``$ATTNRES_CACHE`` or
  ``~/.cache/attnres``), keyed by the archive's sha256 or the folder's file list.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tarfile
import tempfile
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                    ".gif")
NAMED_DATASETS = ("digits", "cifar10", "cifar100")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
SMALL_MAX_SIZE = 64  # data at or below this many pixels is augmented like CIFAR
DEFAULT_VAL_SPLIT = 0.1
DIGITS_VAL_SPLIT = 0.2
# Split folder names recognised under an ImageFolder root (root/train/<class>, root/val/<class>).
TRAIN_DIR_NAMES = ("train", "training")
VAL_DIR_NAMES = ("val", "valid", "validation", "test")
_CACHE_VERSION = 1  # bump when the decoded layout changes, so stale caches are ignored
_CACHE_FIELDS = ("images", "labels", "is_val", "classes", "image_size", "train_hist", "files")


@dataclass
class ImageSet:
    """One split: `images` uint8 `(N, 3, H, W)`, `labels` int64 `(N,)`."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class ImageData:
    """A data set ready for training: two splits, class names and normalisation statistics.

    `mean`/`std` are per-channel statistics of the training split on the [0, 1] scale.
    `kind` is "small" (<= 64 px: pad-crop + flip) or "imagenet" (random-resized-crop + flip);
    for "imagenet" the stored images are `ceil(image_size * 8 / 7)` pixels (256 for 224) and
    are cropped to `image_size` by the loader.
    """

    train: ImageSet
    val: ImageSet
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    kind: str
    name: str
    info: dict = field(default_factory=dict)  # where it came from, cache file, split sizes

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --------------------------------------------------------------------------- splits + stats

def _check_val_split(val_split: float | None, n: int) -> int | None:
    """Turn `val_split` into a number of validation images (None stays None).

    A fraction in (0, 1) or a whole count in [1, n - 1]; anything else is a ValueError.
    """
    if val_split is None:
        return None
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float)):
        raise ValueError(f"val_split {val_split!r} is not a number; use a fraction in (0, 1) "
                         f"or a whole number of images")
    v = float(val_split)
    if 0.0 < v < 1.0:
        count = round(v * n)
    elif v >= 1.0 and v.is_integer():
        count = int(v)
    else:
        raise ValueError(f"val_split {val_split!r} is outside (0, 1); use a fraction in (0, 1) "
                         f"or a whole number of images between 1 and {n - 1}")
    if not 1 <= count <= n - 1:
        raise ValueError(f"val_split {val_split!r} gives {count} validation images out of {n}; "
                         f"it must leave at least 1 image in each split")
    return count


def stratified_split(labels: torch.Tensor, n_val: int, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices so each class keeps its share in both parts; seeded, order-independent.

    labels: int64 `(N,)`. Returns (train_idx, val_idx), each sorted. Per-class validation counts
    are `n_val * n_c / N` rounded by largest remainder (so they sum to exactly `n_val`), and a
    class of two or more images always keeps at least one training image.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    n = labels.numel()
    if not 0 < n_val < n:
        raise ValueError(f"n_val {n_val} must be between 1 and {n - 1}")
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * n_val / n
    per_class = exact.floor().long()
    # hand the remaining images to the classes with the largest remainders (ties: lower label)
    remainder = exact - per_class
    order = sorted(range(len(classes)), key=lambda i: (-float(remainder[i]), i))
    for i in order[: n_val - int(per_class.sum())]:
        per_class[i] += 1
    per_class = torch.minimum(per_class, (counts - 1).clamp(min=0))
    gen = torch.Generator().manual_seed(int(seed))
    train_parts, val_parts = [], []
    for c, k in zip(classes.tolist(), per_class.tolist()):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        val_parts.append(idx[:k])
        train_parts.append(idx[k:])
    return torch.cat(train_parts).sort().values, torch.cat(val_parts).sort().values


def channel_histogram(images: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Counts of each uint8 value per channel of `(N, 3, H, W)` images: int64 `(3, 256)`."""
    hist = torch.zeros(3, 256, dtype=torch.int64)
    for start in range(0, images.shape[0], chunk):
        part = images[start:start + chunk]
        for c in range(3):
            hist[c] += torch.bincount(part[:, c].reshape(-1), minlength=256)
    return hist


def stats_from_histogram(hist: torch.Tensor
                         ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Exact per-channel mean and population std on the [0, 1] scale from `(3, 256)` counts."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    count = hist.sum(dim=1).double()
    if bool((count == 0).any()):
        raise ValueError("cannot compute statistics of an empty image set")
    mean = (hist * values).sum(dim=1) / count
    var = (hist * (values - mean[:, None]) ** 2).sum(dim=1) / count
    std = var.sqrt().clamp(min=1e-3)  # a constant channel must not divide by zero
    return tuple(mean.tolist()), tuple(std.tolist())  # type: ignore[return-value]


def channel_stats(images: torch.Tensor
                  ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std (population) of uint8 `(N, 3, H, W)` images on the [0, 1] scale."""
    return stats_from_histogram(channel_histogram(images))


def _kind_for(image_size: int) -> str:
    return "small" if image_size <= SMALL_MAX_SIZE else "imagenet"


def _stored_size(image_size: int) -> int:
    """Pixels kept per side: small data as is; ImageNet-style data with a crop margin."""
    return image_size if image_size <= SMALL_MAX_SIZE else math.ceil(image_size * 8 / 7)


def _finish(name: str, images: torch.Tensor, labels: torch.Tensor, classes: list[str],
            val_split: float | None, seed: int, image_size: int, *,
            default_val: float, val: tuple[torch.Tensor, torch.Tensor] | None = None,
            info: dict | None = None, hist: torch.Tensor | None = None) -> ImageData:
    """Split (unless a separate validation set is given), compute statistics, package.

    hist: `channel_histogram(images)` when already known (cached), so a split only needs
    the validation images counted.
    """
    if val is not None and val_split is None:
        train = ImageSet(images, labels)
        val_set = ImageSet(*val)
    else:
        if val is not None:  # an explicit --val-split re-splits the training part only
            warnings.warn(f"{name}: val_split given, so the separate validation images are "
                          f"not used; the training images are split instead", stacklevel=3)
        n_val = _check_val_split(default_val if val_split is None else val_split,
                                 labels.numel())
        train_idx, val_idx = stratified_split(labels, n_val, seed)
        train = ImageSet(images[train_idx], labels[train_idx])
        val_set = ImageSet(images[val_idx], labels[val_idx])
        if hist is not None:  # train counts = all counts - validation counts
            hist = hist - channel_histogram(val_set.images)
    mean, std = stats_from_histogram(hist if hist is not None else
                                     channel_histogram(train.images))
    info = dict(info or {}, n_train=len(train), n_val=len(val_set), split_seed=seed)
    return ImageData(train=train, val=val_set, classes=list(classes), mean=mean, std=std,
                     image_size=image_size, kind=_kind_for(image_size), name=name, info=info)


def _resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 `(N, 3, H, W)` to `(N, 3, size, size)`; bilinear, antialiased to shrink."""
    if images.shape[-2:] == (size, size):
        return images
    out = []
    for start in range(0, images.shape[0], 2048):
        x = images[start:start + 2048].float()
        shrinking = size < max(images.shape[-2:])
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=shrinking)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


# --------------------------------------------------------------------------- named data sets

def _load_digits(val_split: float | None, seed: int, image_size: int | None) -> ImageData:
    from sklearn.datasets import load_digits

    bunch = load_digits()  # bundled with scikit-learn: values 0..16 on an 8x8 grid
    grey = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32))  # (N, 8, 8)
    size = image_size or 32
    stored = _stored_size(size)
    x = grey.unsqueeze(1) * (255.0 / 16.0)
    x = F.interpolate(x, size=(stored, stored), mode="bilinear", align_corners=False)
    images = x.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    classes = [str(c) for c in bunch.target_names]
    return _finish("digits", images, labels, classes, val_split, seed, size,
                   default_val=DIGITS_VAL_SPLIT, info={"source": "sklearn.datasets.load_digits"})


def _load_torchvision_cifar(name: str, val_split: float | None, seed: int,
                            image_size: int | None, cache_dir: Path) -> ImageData:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = cache_dir / "torchvision"
    try:
        train = cls(root=str(root), train=True, download=True)
        test = cls(root=str(root), train=False, download=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; offline or blocked
        raise ValueError(f"could not download {name} ({type(e).__name__}); offline, pass a "
                         f"local path instead, e.g. --data ../shared/data/"
                         f"cifar10-jpeg-train.tar.gz") from None

    def to_tensor(ds) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return imgs, torch.as_tensor(ds.targets, dtype=torch.int64)

    size = image_size or 32
    (xi, yi), (xv, yv) = to_tensor(train), to_tensor(test)
    xi, xv = _resize_batch(xi, _stored_size(size)), _resize_batch(xv, _stored_size(size))
    # the official test split serves as validation unless the user asks for a split
    return _finish(name, xi, yi, list(train.classes), val_split, seed, size,
                   default_val=DEFAULT_VAL_SPLIT, val=(xv, yv),
                   info={"source": f"torchvision.datasets.{cls.__name__}", "root": str(root)})


# --------------------------------------------------------------------------- decoding

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


def _decode_pil(data: bytes) -> torch.Tensor:
    """Fallback decoder for formats torchvision cannot read (BMP, TIFF, PPM, palette...)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode not in ("RGB", "L", "LA", "RGBA"):
            has_alpha = "transparency" in img.info or img.mode.endswith("A")
            img = img.convert("RGBA" if has_alpha else "RGB")
        arr = np.asarray(img, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


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
    return _fit(_to_rgb(image), size)


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


# --------------------------------------------------------------------------- ImageFolder layout

def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _layout(files: Sequence[str], dirs: Sequence[str], where: str
            ) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Work out the ImageFolder layout from relative POSIX paths of image files and folders.

    Returns (classes, {"train": [(path, label)], "val": [...]}) where "val" is empty unless
    the root holds train/ and val/ folders. Class folders without images are skipped with a
    warning; images not inside a class folder are an error naming them.
    """
    parents = {f.rsplit("/", 1)[0] if "/" in f else "" for f in files}
    if not files:
        raise ValueError(f"{where}: no image files found (looked for "
                         f"{', '.join(IMAGE_EXTENSIONS)})")
    if "" in parents:
        loose = [f for f in files if "/" not in f][:5]
        raise ValueError(f"{where}: images must sit in class folders (root/<class>/<image>); "
                         f"found loose images: {', '.join(loose)}")
    roots = {p.rsplit("/", 1)[0] if "/" in p else "" for p in parents}
    # root/train/<class> + root/val/<class>: a given validation split
    split_roots: dict[str, str] = {}
    if len(roots) == 2:
        for r in roots:
            leaf = r.rsplit("/", 1)[-1].lower()
            if leaf in TRAIN_DIR_NAMES:
                split_roots["train"] = r
            elif leaf in VAL_DIR_NAMES:
                split_roots["val"] = r
        if set(split_roots) != {"train", "val"} or len({r.rsplit("/", 1)[0] if "/" in r else ""
                                                        for r in roots}) != 1:
            split_roots = {}
    if not split_roots:
        if len(roots) != 1:
            raise ValueError(f"{where}: images sit at different depths "
                             f"({', '.join(sorted(roots)[:4])}); expected root/<class>/<image> "
                             f"or root/train|val/<class>/<image>")
        split_roots = {"train": next(iter(roots))}

    def class_dirs_under(root: str) -> set[str]:
        prefix = f"{root}/" if root else ""
        return {d[len(prefix):] for d in dirs
                if d.startswith(prefix) and d != root and "/" not in d[len(prefix):]}

    train_root = split_roots["train"]
    prefix = f"{train_root}/" if train_root else ""
    # class folders = the parents of images that sit directly under the training root
    with_images = {p[len(prefix):] for p in parents
                   if p.startswith(prefix) and "/" not in p[len(prefix):]}
    classes = sorted(with_images)
    empty = sorted(class_dirs_under(train_root) - with_images)
    empty = [e for e in empty if not e.startswith(".")]
    if empty:
        warnings.warn(f"{where}: skipping class folder(s) with no images: {', '.join(empty)}",
                      stacklevel=4)
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, list[tuple[str, int]]] = {"train": [], "val": []}
    for split, root in split_roots.items():
        pre = f"{root}/" if root else ""
        for f in files:
            if not f.startswith(pre):
                continue
            cls = f[len(pre):].split("/", 1)[0]
            if cls not in index:
                raise ValueError(f"{where}: validation class folder {cls!r} has no training "
                                 f"images; classes are {', '.join(classes)}")
            out[split].append((f, index[cls]))
    for split in out:
        out[split].sort()
    return classes, out


# --------------------------------------------------------------------------- cache

def default_cache_dir() -> Path:
    """`$ATTNRES_CACHE`, else `~/.cache/attnres`."""
    env = os.environ.get("ATTNRES_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "attnres"


def _atomic_write(path: Path, write) -> None:
    """Call `write(file)` on a temp file in `path`'s folder, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_cache(stem: Path, images: np.ndarray, **meta: np.ndarray) -> None:
    """Images as a plain .npy (loads at disk speed), then the small .npz that marks it done."""
    _atomic_write(stem.with_suffix(".npy"), lambda f: np.save(f, images))
    _atomic_write(stem.with_suffix(".npz"), lambda f: np.savez(f, **meta))


def _load_cache(stem: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent or unreadable (then the data is decoded again)."""
    meta_path, images_path = stem.with_suffix(".npz"), stem.with_suffix(".npy")
    if not (meta_path.is_file() and images_path.is_file()):
        return None
    try:
        with np.load(meta_path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
        out["images"] = np.load(images_path, allow_pickle=False)
        if out["images"].shape[0] != out["labels"].shape[0]:
            raise ValueError("images and labels disagree")
        missing = set(_CACHE_FIELDS) - set(out)
        if missing:
            raise ValueError(f"fields {sorted(missing)} missing")
        return out
    except Exception:  # a damaged cache is rebuilt, never trusted
        warnings.warn(f"ignoring unreadable cache {images_path}", stacklevel=3)
        return None


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _expected_sha256(path: Path, sha256: str | None) -> str | None:
    if sha256:
        return sha256.strip().lower()
    for sidecar in (path.with_name(path.name + ".sha256"), path.with_suffix(".sha256")):
        if sidecar.is_file():
            text = sidecar.read_text().strip().split()
            if text:
                return text[0].lower()
    return None


# --------------------------------------------------------------------------- path data sets

def _read_archive(path: Path) -> tuple[list[tuple[str, bytes]], list[str], list[str]]:
    """Stream an archive once: image bytes by member name, plus all dirs and skipped files.

    Truncated or corrupt archives raise ValueError naming the file.
    """
    items: list[tuple[str, bytes]] = []
    dirs: set[str] = set()
    skipped: list[str] = []
    try:
        with tarfile.open(path, mode="r|*") as tar:  # a stream: 2x faster, nothing on disk
            for member in tar:
                name = member.name
                while name.startswith("./"):
                    name = name[2:]
                name = name.strip("/")
                if not name:
                    continue
                parts = name.split("/")
                dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
                if member.isdir():
                    dirs.add(name)
                    continue
                if not member.isfile() or parts[-1].startswith("."):
                    continue
                if not _is_image(name):
                    skipped.append(name)
                    continue
                f = tar.extractfile(member)
                items.append((name, f.read() if f is not None else b""))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else "read error"
        raise ValueError(f"archive {path} is truncated or corrupt ({type(e).__name__}: "
                         f"{reason})") from None
    return items, sorted(dirs), skipped


def _scan_folder(root: Path) -> tuple[list[str], list[str], list[str]]:
    """Relative POSIX paths of image files, of folders, and of skipped non-image files."""
    files, dirs, skipped = [], [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root).as_posix()
        rel = "" if rel == "." else rel
        for d in dirnames:
            dirs.append(f"{rel}/{d}" if rel else d)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            (files if _is_image(name) else skipped).append(f"{rel}/{name}" if rel else name)
    return files, dirs, skipped


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


def _load_path(spec: str, val_split: float | None, seed: int, image_size: int | None,
               cache_dir: Path, sha256: str | None) -> ImageData:
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data {spec!r} is neither a known name "
                                f"({', '.join(NAMED_DATASETS)}) nor an existing path")
    is_archive = path.is_file()
    if is_archive and not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise ValueError(f"data file {spec!r} is not an archive; use a folder or one of "
                         f"{', '.join(ARCHIVE_SUFFIXES)}")
    info: dict = {"source": str(path)}
    if is_archive:
        digest = file_sha256(path)
        expected = _expected_sha256(path, sha256)
        if expected is not None and expected != digest:
            raise ValueError(f"archive {path} has sha256 {digest}, expected {expected} "
                             f"(the file is damaged or not the one you meant)")
        info["sha256"] = digest
        key_src = digest
        listing = None
    else:
        files, dirs, skipped = _scan_folder(path)
        listing = (files, dirs, skipped)
        h = hashlib.sha256()
        for f in files:  # names, sizes and mtimes: a changed file changes the key
            st = (path / f).stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        key_src = h.hexdigest()

    size_key = image_size if image_size is not None else "auto"
    key = hashlib.sha256(f"v{_CACHE_VERSION}|{key_src}|{size_key}".encode()).hexdigest()[:24]
    cache_stem = cache_dir / f"{path.name.split('.')[0] or 'data'}-{key}"
    cached = _load_cache(cache_stem)
    if cached is not None:
        images = torch.from_numpy(cached["images"])
        labels = torch.from_numpy(cached["labels"]).long()
        is_val = torch.from_numpy(cached["is_val"]).bool()
        classes = [str(c) for c in cached["classes"]]
        size = int(cached["image_size"])
        hist = torch.from_numpy(cached["train_hist"])
        info.update(cache=str(cache_stem.with_suffix(".npy")), cache_hit=True)
    else:
        if is_archive:
            items, dirs, skipped = _read_archive(path)
            files = [n for n, _ in items]
        else:
            files, dirs, skipped = listing  # type: ignore[misc]
            items = [(f, (path / f).read_bytes()) for f in files]
        if skipped:
            warnings.warn(f"{path}: ignored {len(skipped)} non-image file(s), e.g. "
                          f"{', '.join(skipped[:3])}", stacklevel=3)
        classes, layout = _layout(files, dirs, str(path))
        by_name = dict(items)
        ordered = layout["train"] + layout["val"]
        size = _choose_size(items, image_size)
        decoded = _decode_all([(n, by_name[n]) for n, _ in ordered], _stored_size(size))
        images = torch.from_numpy(decoded)
        labels = torch.tensor([lab for _, lab in ordered], dtype=torch.int64)
        n_train = len(layout["train"])
        is_val = torch.zeros(len(ordered), dtype=torch.bool)
        is_val[n_train:] = True
        hist = channel_histogram(images[:n_train])  # cached: later splits count only val
        _save_cache(cache_stem, decoded, labels=labels.numpy(), is_val=is_val.numpy(),
                    classes=np.array(classes), image_size=np.array(size),
                    train_hist=hist.numpy(), files=np.array([n for n, _ in ordered]))
        info.update(cache=str(cache_stem.with_suffix(".npy")), cache_hit=False)
    # the cache keeps the training part first, so it is a view, not a copy
    n_train = int((~is_val).sum())
    val = (images[n_train:], labels[n_train:]) if n_train < labels.numel() else None
    train_images, train_labels = images[:n_train], labels[:n_train]
    for c in range(len(classes)):
        if not bool((train_labels == c).any()):
            raise ValueError(f"{path}: class {classes[c]!r} has no training images")
    return _finish(path.name, train_images, train_labels, classes, val_split, seed, size,
                   default_val=DEFAULT_VAL_SPLIT, val=val, info=info, hist=hist)


def load_dataset(spec: str, *, val_split: float | None = None, seed: int = 0,
                 image_size: int | None = None, cache_dir: str | Path | None = None,
                 sha256: str | None = None) -> ImageData:
    """Load a data set by name ("digits", "cifar10", "cifar100") or ImageFolder path/archive.

    val_split: fraction in (0, 1) or whole number of validation images, split stratified by
        class with `seed`; None uses the data set's own validation images when it has them
        (cifar test split, root/val/ folder), else 0.2 for digits and 0.1 otherwise.
    image_size: side of the images the model sees; default 32 for digits/cifar, the most
        common side for folders (224 when above 64 px).
    sha256: expected archive checksum (also read from a `<archive>.sha256` sidecar).
    Images of any mode are converted to RGB; other sizes are resized (shorter side) and centre
    cropped. Unreadable images raise ValueError listing them before any training starts.
    """
    if not isinstance(spec, (str, os.PathLike)) or not str(spec):
        raise ValueError(f"data spec {spec!r} must be a name ({', '.join(NAMED_DATASETS)}) "
                         f"or a path")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        raise ValueError(f"image_size {image_size!r} must be a whole number >= 8")
    spec = str(spec)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = spec.lower()
    if name == "digits":
        return _load_digits(val_split, seed, image_size)
    if name in ("cifar10", "cifar100"):
        return _load_torchvision_cifar(name, val_split, seed, image_size, cache)
    if not Path(spec).expanduser().exists():
        import difflib

        close = difflib.get_close_matches(name, NAMED_DATASETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FileNotFoundError(f"data {spec!r} is neither a known name "
                                f"({', '.join(NAMED_DATASETS)}) nor an existing path{hint}")
    return _load_path(spec, val_split, seed, image_size, cache, sha256)


# --------------------------------------------------------------------------- batches

def _derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of the parts (distinct tuples, distinct seeds)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2)
    return (int(state[0]) << 31) ^ int(state[1])


def pad_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator
                  ) -> torch.Tensor:
    """Random crop with zero padding plus horizontal flip, per image, on a whole uint8 batch.

    images: `(B, C, H, W)`; returns `(B, C, H, W)`; offsets and flips drawn from `generator`.
    """
    b, c, h, w = images.shape
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = (dy[:, None] + torch.arange(h)).to(images.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(images.device)  # flip = reversed cols
    batch_idx = torch.arange(b, device=images.device)[:, None, None, None]
    chan_idx = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]


def random_resized_crop_flip(images: torch.Tensor, size: int, generator: torch.Generator,
                             scale: tuple[float, float] = (0.08, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Inception-style random resized crop plus flip on a batch, via one `grid_sample`.

    images: uint8 or float `(B, C, H, W)`; returns float `(B, C, size, size)` on the 0..255 scale.
    Crop area ~ U(scale) * H * W, aspect ratio log-uniform in `ratio`, clipped to the image.
    """
    b, _, h, w = images.shape
    area = torch.empty(b).uniform_(*scale, generator=generator)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_r.exp()
    # crop sides as fractions of the image sides
    cw = (area * aspect * h / w).sqrt().clamp(max=1.0)
    ch = (area / aspect * w / h).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - cw)  # centre in [-1, 1] coords
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - ch)
    sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)  # -1: flip
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cw * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    theta = theta.to(images.device)
    grid = F.affine_grid(theta, [b, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre `size x size` crop of `(B, C, H, W)`."""
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top:top + size, left:left + size]


class BatchLoader:
    """Batches `(x, y)` from uint8 images: x float32 normalised `(B, 3, S, S)`, y int64 `(B,)`.

    Training loaders shuffle and augment; the order and every random draw are a pure function
    of (seed, epoch, rank, batch index), so `set_epoch` + the same seed replays an epoch
    exactly (resume), and `set_epoch(epoch, start_batch=k)` skips to batch k without drawing.
    With `world_size > 1` each rank takes every world_size-th index of the shuffled order
    (training pads the order so all ranks get the same number of batches; validation does
    not pad, so each image is counted once when sums are reduced across ranks).
    `device`: where batches are built (e.g. "cuda" to augment on the GPU; images moved once).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                 train: bool, mean: Sequence[float], std: Sequence[float], kind: str = "small",
                 seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool | None = None, image_size: int | None = None,
                 padding: int = 4, device: str | torch.device | None = None) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size {batch_size!r} must be a whole number >= 1")
        if kind not in ("small", "imagenet"):
            raise ValueError(f"kind {kind!r} is not one of: small, imagenet")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match "
                             f"{images.shape[0]} images")
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.labels = labels.to(torch.int64).to(self.device)
        self.batch_size, self.train, self.kind = batch_size, train, kind
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.padding = padding
        stored = images.shape[-1]
        self.image_size = image_size or (stored if kind == "small" else round(stored * 7 / 8))
        # x_norm = x_uint8 * scale + shift, i.e. (x / 255 - mean) / std in one fused op
        std_t = torch.tensor(std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(1, 3, 1, 1).to(self.device)
        self._shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, 3, 1, 1).to(
            self.device)
        self.epoch, self.start_batch = 0, 0
        n_local = self._num_local()
        self.drop_last = (train and n_local >= batch_size) if drop_last is None else drop_last

    def _num_local(self) -> int:
        n = self.labels.numel()
        if self.world_size == 1:
            return n
        if self.train:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Fix the shuffle + augmentation of the next iteration; optionally skip batches."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        n = self._num_local()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's image indices for the current epoch, in batch order."""
        n = self.labels.numel()
        if self.train:
            gen = torch.Generator().manual_seed(_derive_seed(self.seed, self.epoch, 0x5EED))
            order = torch.randperm(n, generator=gen)
            if self.world_size > 1:  # pad by wrapping so every rank gets the same count
                total = math.ceil(n / self.world_size) * self.world_size
                order = torch.cat([order, order[: total - n]]) if total > n else order
        else:
            order = torch.arange(n)
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices().to(self.device)
        start, self.start_batch = self.start_batch, 0  # a skip applies to one iteration only
        for i in range(start, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self._make_batch(idx, i)

    def _make_batch(self, idx: torch.Tensor, batch_index: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.images[idx]
        if self.train:
            gen = torch.Generator().manual_seed(
                _derive_seed(self.seed, self.epoch, self.rank, batch_index))
            if self.kind == "small":
                x = pad_crop_flip(images, self.padding, gen).float()
            else:
                x = random_resized_crop_flip(images, self.image_size, gen)
        else:
            x = images if images.shape[-1] == self.image_size else center_crop(
                images, self.image_size)
            x = x.float()
        return x.mul_(self._scale).add_(self._shift).contiguous(), self.labels[idx]


def make_loaders(data: ImageData, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, device: str | torch.device | None = None,
                 val_batch_size: int | None = None) -> tuple[BatchLoader, BatchLoader]:
    """Training (shuffled, augmented) and validation loaders for `data`, sharded by rank."""
    common = dict(mean=data.mean, std=data.std, kind=data.kind, seed=seed, rank=rank,
                  world_size=world_size, image_size=data.image_size, device=device)
    train = BatchLoader(data.train.images, data.train.labels, batch_size=batch_size,
                        train=True, **common)
    val = BatchLoader(data.val.images, data.val.labels, batch_size=val_batch_size or batch_size,
                      train=False, **common)
    return train, val


def describe(data: ImageData) -> str:
    """One line: name, sizes, classes, image size."""
    return (f"{data.name}: {len(data.train)} train / {len(data.val)} val images, "
            f"{data.num_classes} classes, {data.image_size}x{data.image_size} ({data.kind})")


__all__ = ["ImageData", "ImageSet", "BatchLoader", "load_dataset", "make_loaders",
           "stratified_split", "channel_stats", "pad_crop_flip", "random_resized_crop_flip",
           "center_crop", "file_sha256", "default_cache_dir", "describe"]
