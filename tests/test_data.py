"""attnres.data: data sets, stratified splits, statistics, batch augmentation, robustness."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnres import data as D
from attnres.data import BatchLoader, load_dataset, make_loaders, stratified_split


@pytest.fixture(scope="module")
def digits() -> D.ImageData:
    return load_dataset("digits")


# ----------------------------------------------------------------------------- digits

def test_digits_images_match_sklearn_and_labels(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    assert digits.classes == [str(i) for i in range(10)]
    assert len(digits.train) + len(digits.val) == 1797
    for split in (digits.train, digits.val):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (3, 32, 32)
        assert split.labels.dtype == torch.int64
        assert torch.equal(split.images[:, 0], split.images[:, 2])  # grey on 3 channels
    # an independent bilinear resize (half-pixel centres, edges clamped) of every original;
    # each split image must equal one of them (to rounding) and carry that one's label
    ref = _bilinear_numpy(bunch.images * 255.0 / 16.0, 32).reshape(1797, -1)
    for split in (digits.train, digits.val):
        got = split.images[:, 0].reshape(len(split), -1).double()
        nearest = torch.cdist(got, torch.from_numpy(ref)).argmin(dim=1)
        assert (got - torch.from_numpy(ref)[nearest]).abs().max() <= 1.0
        assert torch.equal(split.labels, torch.from_numpy(bunch.target)[nearest])


def _bilinear_numpy(images: np.ndarray, size: int) -> np.ndarray:
    n, h, w = images.shape
    out = np.empty((n, size, size))
    src = np.clip((np.arange(size) + 0.5) * h / size - 0.5, 0, h - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, h - 1)
    t = src - i0
    rows = images[:, i0, :] * (1 - t)[None, :, None] + images[:, i1, :] * t[None, :, None]
    out = rows[:, :, i0] * (1 - t)[None, None, :] + rows[:, :, i1] * t[None, None, :]
    return out


def test_digits_default_split_is_stratified_and_fixed(digits):
    counts = torch.bincount(torch.cat([digits.train.labels, digits.val.labels]), minlength=10)
    val_counts = torch.bincount(digits.val.labels, minlength=10)
    n_val = round(0.2 * 1797)
    assert int(val_counts.sum()) == n_val
    # each class within one image of its exact share
    exact = counts.double() * n_val / 1797
    assert ((val_counts.double() - exact).abs() < 1).all()
    again = load_dataset("digits")
    assert torch.equal(again.val.images, digits.val.images)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.val.images, digits.val.images)


def test_mean_std_are_training_split_statistics(digits):
    x = digits.train.images.numpy().astype(np.float64) / 255.0
    np.testing.assert_allclose(digits.mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(digits.std, x.std(axis=(0, 2, 3)), rtol=1e-12)
    everything = torch.cat([digits.train.images, digits.val.images]).numpy() / 255.0
    assert abs(digits.mean[0] - everything.mean(axis=(0, 2, 3))[0]) > 1e-6  # not all data


# ----------------------------------------------------------------------------- splits

def test_stratified_split_counts_by_hand():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    train, val = stratified_split(labels, 10, seed=3)
    assert torch.bincount(labels[val]).tolist() == [5, 3, 2]
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    # 7/7/6 images, 5 to validation: exact shares 1.75/1.75/1.5 -> floors 1/1/1, the two
    # leftover images go to the largest remainders (classes 0 and 1)
    labels = torch.tensor([0] * 7 + [1] * 7 + [2] * 6)
    _, val = stratified_split(labels, 5, seed=0)
    assert torch.bincount(labels[val], minlength=3).tolist() == [2, 2, 1]


def test_stratified_split_deterministic_per_seed_and_independent_of_order():
    labels = torch.arange(60) % 4
    a = stratified_split(labels, 12, seed=7)[1]
    b = stratified_split(labels, 12, seed=7)[1]
    c = stratified_split(labels, 12, seed=8)[1]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), float("inf"), 1797, "0.1",
                                 True])
def test_bad_val_split_rejected(bad):
    with pytest.raises(ValueError, match="val_split"):
        load_dataset("digits", val_split=bad)


def test_val_split_fraction_and_count():
    assert len(load_dataset("digits", val_split=0.5).val) == round(0.5 * 1797)
    assert len(load_dataset("digits", val_split=100).val) == 100


def test_unknown_spec_names_closest():
    with pytest.raises(FileNotFoundError, match="did you mean 'digits'"):
        load_dataset("digit")


def test_cifar_offline_says_pass_a_local_path(monkeypatch, tmp_path):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(ValueError, match="local path"):
        load_dataset("cifar10", cache_dir=tmp_path)


# ----------------------------------------------------------------------------- loaders

def _tiny(n=20, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return images, torch.arange(n) % 3


def test_val_batches_are_normalised_images_in_order():
    images, labels = _tiny(10)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    loader = BatchLoader(images, labels, batch_size=4, train=False, mean=mean, std=std)
    xs, ys = zip(*loader)
    assert [len(y) for y in ys] == [4, 4, 2] and len(loader) == 3
    x = torch.cat(xs).double()
    want = (images.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std).view(1, 3, 1, 1)
    assert x.dtype == torch.float64 and xs[0].dtype == torch.float32
    torch.testing.assert_close(x, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.cat(ys), labels)


def test_pad_crop_flip_matches_numpy_reference():
    images, _ = _tiny(6, size=5)
    gen = torch.Generator().manual_seed(11)
    out = D.pad_crop_flip(images, 2, torch.Generator().manual_seed(11))
    # redraw the same offsets and flips, then crop with numpy
    dy = torch.randint(0, 5, (6,), generator=gen)
    dx = torch.randint(0, 5, (6,), generator=gen)
    flip = torch.rand(6, generator=gen) < 0.5
    padded = np.pad(images.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)))
    for i in range(6):
        crop = padded[i, :, dy[i]:dy[i] + 5, dx[i]:dx[i] + 5]
        if flip[i]:
            crop = crop[:, :, ::-1]
        np.testing.assert_array_equal(out[i].numpy(), crop)
    assert out.shape == images.shape and out.dtype == torch.uint8


def test_training_batches_are_a_pure_function_of_seed_and_epoch():
    images, labels = _tiny(30)
    kw = dict(batch_size=8, train=True, mean=(0.5,) * 3, std=(0.25,) * 3, seed=5)
    a, b = BatchLoader(images, labels, **kw), BatchLoader(images, labels, **kw)
    a.set_epoch(2)
    b.set_epoch(2)
    first, second = list(a), list(b)
    assert len(first) == len(a) == 3  # drop_last by default when training
    for (xa, ya), (xb, yb) in zip(first, second):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.shape == (8, 3, 8, 8)
    b.set_epoch(3)
    assert not torch.equal(torch.cat([x for x, _ in b]), torch.cat([x for x, _ in first]))
    # resuming inside an epoch replays the remaining batches exactly
    b.set_epoch(2, start_batch=1)
    rest = list(b)
    assert len(rest) == 2 and all(torch.equal(x, y[0]) for x, y in zip(
        [x for x, _ in rest], first[1:]))
    # one iteration later (no set_epoch) the skip is gone
    assert len(list(b)) == 3


def test_shards_cover_the_data_once():
    images, labels = _tiny(11)
    kw = dict(batch_size=2, mean=(0.5,) * 3, std=(0.25,) * 3, world_size=2)
    val = [BatchLoader(images, labels, train=False, rank=r, **kw).indices() for r in (0, 1)]
    assert sorted(torch.cat(val).tolist()) == list(range(11))
    train = [BatchLoader(images, labels, train=True, rank=r, seed=1, **kw) for r in (0, 1)]
    idx = [t.indices() for t in train]
    assert len(idx[0]) == len(idx[1]) == 6 and len(train[0]) == len(train[1]) == 3
    assert set(torch.cat(idx).tolist()) == set(range(11))


def test_make_loaders(digits):
    train, val = make_loaders(digits, 64, seed=0)
    x, y = next(iter(train))
    assert x.shape == (64, 3, 32, 32) and y.shape == (64,)
    assert len(val) == -(-len(digits.val) // 64)
    assert sum(len(y) for _, y in val) == len(digits.val)


def test_random_resized_crop_full_view_is_identity_or_flip():
    images, _ = _tiny(8, size=6)
    out = D.random_resized_crop_flip(images, 6, torch.Generator().manual_seed(0),
                                     scale=(1.0, 1.0), ratio=(1.0, 1.0))
    for i in range(8):
        same = torch.allclose(out[i], images[i].float(), atol=1e-3)
        flipped = torch.allclose(out[i], images[i].flip(-1).float(), atol=1e-3)
        assert same or flipped
    small = D.random_resized_crop_flip(images, 4, torch.Generator().manual_seed(0))
    assert small.shape == (8, 3, 4, 4)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_bad_batch_size_rejected(bad):
    images, labels = _tiny(4)
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(images, labels, batch_size=bad, train=True, mean=(0,) * 3, std=(1,) * 3)


# ----------------------------------------------------------------------------- folders

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def _write_png(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_folder(root: Path, per_class: int = 4, size: int = 12) -> Path:
    """3 classes of solid-colour PNGs with a little noise, plus odd but valid files."""
    rng = np.random.default_rng(0)
    for c, colour in enumerate(COLOURS):
        for i in range(per_class):
            arr = np.clip(np.array(colour) + rng.integers(-20, 20, (size, size, 3)), 0, 255)
            suffix = "jpg" if i % 2 else "png"  # both decoders: batched JPEG and per-image
            _write_png(root / f"class{c}" / f"{i}.{suffix}", Image.fromarray(arr.astype(np.uint8)))
    return root


def test_folder_with_grey_rgba_mixed_sizes_and_junk(tmp_path):
    root = make_folder(tmp_path / "data")
    _write_png(root / "class0" / "grey.png", Image.new("L", (12, 12), 77))
    rgba = np.zeros((12, 12, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:, :6, 3] = 255  # left half opaque, right half transparent
    _write_png(root / "class1" / "rgba.png", Image.fromarray(rgba, "RGBA"))
    _write_png(root / "class2" / "big.png", Image.new("RGB", (30, 24), (5, 6, 7)))
    (root / "class2" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning) as record:
        data = load_dataset(str(root), val_split=3, cache_dir=tmp_path / "cache")
    messages = " ".join(str(w.message) for w in record)
    assert "notes.txt" in messages  # (empty class folders: tests/test_data_integrity.py)
    assert data.classes == ["class0", "class1", "class2"] and data.image_size == 12
    assert data.kind == "small"
    images = torch.cat([data.train.images, data.val.images])
    assert images.shape == (15, 3, 12, 12)
    colours = {tuple(int(v) for v in img[:, 3, 3]): img for img in images}
    assert (77, 77, 77) in colours  # grey replicated to RGB
    rgba_img = [img for img in images if tuple(img[:, 3, 2].tolist()) == (10, 20, 30)][0]
    assert rgba_img[:, 3, 10].tolist() == [255, 255, 255]  # transparent -> white
    big = [img for img in images if tuple(img[:, 5, 5].tolist()) == (5, 6, 7)][0]
    assert (big == torch.tensor([5, 6, 7]).view(3, 1, 1)).all()  # resized + cropped


def test_decoding_matches_pil(tmp_path):
    rng = np.random.default_rng(1)
    items = []
    for i, mode in enumerate(["RGB", "RGB", "L", "RGB"]):
        shape = (10, 10, 3) if mode == "RGB" else (10, 10)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8), mode).save(buf, "JPEG")
        items.append((f"{i}.jpg", buf.getvalue()))
    decoded = D._decode_all(items, 10)
    for (_, data), got in zip(items, decoded):
        want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)
        assert np.abs(want.astype(int) - got).max() <= 1  # both libjpeg; rounding may differ


def test_corrupt_files_fail_up_front_listing_all(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "class0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    good = io.BytesIO()
    Image.new("RGB", (12, 12)).save(good, format="PNG")
    (root / "class1" / "cut.png").write_bytes(good.getvalue()[:30])
    jpeg = (root / "class2" / "1.jpg").read_bytes()
    (root / "class2" / "cut.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])  # truncated JPEG
    with pytest.raises(ValueError, match="3 file") as err:
        load_dataset(str(root), cache_dir=tmp_path / "cache")
    for name in ("class0/broken.jpg", "class1/cut.png", "class2/cut.jpg"):
        assert name in str(err.value)
    assert not list((tmp_path / "cache").glob("*.npy"))  # nothing cached from a bad folder


def test_loose_images_and_empty_folder_are_errors(tmp_path):
    root = tmp_path / "loose"
    _write_png(root / "a.png", Image.new("RGB", (8, 8)))
    with pytest.raises(ValueError, match="class folders"):
        load_dataset(str(root), cache_dir=tmp_path / "cache")
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_dataset(str(tmp_path / "none"), cache_dir=tmp_path / "cache")


def test_train_val_folders_are_used_as_given(tmp_path):
    make_folder(tmp_path / "ds" / "train", per_class=3)
    make_folder(tmp_path / "ds" / "val", per_class=1)
    data = load_dataset(str(tmp_path / "ds"), cache_dir=tmp_path / "cache")
    assert len(data.train) == 9 and len(data.val) == 3
    assert data.val.labels.tolist() == [0, 1, 2]


def _tar(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(folder, arcname="train")
    return out


def test_archive_equals_folder_and_is_cached(tmp_path):
    root = make_folder(tmp_path / "data")
    archive = _tar(root, tmp_path / "data.tar.gz")
    cache = tmp_path / "cache"
    from_folder = load_dataset(str(root), val_split=0.25, cache_dir=cache)
    first = load_dataset(str(archive), val_split=0.25, cache_dir=cache)
    second = load_dataset(str(archive), val_split=0.25, cache_dir=cache)
    assert not first.info["cache_hit"] and second.info["cache_hit"]
    for a, b in [(from_folder, first), (first, second)]:
        assert torch.equal(a.train.images, b.train.images)
        assert torch.equal(a.val.labels, b.val.labels)
        assert a.mean == pytest.approx(b.mean, abs=1e-12) and a.classes == b.classes
    x = first.train.images.numpy() / 255.0  # cached statistics are still the train split's
    np.testing.assert_allclose(second.std, x.std(axis=(0, 2, 3)), rtol=1e-10)


def test_truncated_archive_detected_before_training(tmp_path):
    archive = _tar(make_folder(tmp_path / "data", per_class=20, size=16), tmp_path / "a.tar.gz")
    raw = archive.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_dataset(str(cut), cache_dir=tmp_path / "cache")


def test_archive_checksum_from_argument_and_sidecar(tmp_path):
    archive = _tar(make_folder(tmp_path / "data"), tmp_path / "a.tar.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert load_dataset(str(archive), sha256=digest, cache_dir=tmp_path / "c").num_classes == 3
    with pytest.raises(ValueError, match="sha256"):
        load_dataset(str(archive), sha256="0" * 64, cache_dir=tmp_path / "c")
    (tmp_path / "a.tar.gz.sha256").write_text(f"{'f' * 64}  a.tar.gz\n")
    with pytest.raises(ValueError, match="expected f+"):
        load_dataset(str(archive), cache_dir=tmp_path / "c")


def test_large_images_are_imagenet_kind(tmp_path):
    root = tmp_path / "big"
    for c in range(2):
        for i in range(3):
            _write_png(root / f"c{c}" / f"{i}.png", Image.new("RGB", (80, 96), (c * 100, 0, i)))
    data = load_dataset(str(root), val_split=2, image_size=70, cache_dir=tmp_path / "cache")
    assert data.kind == "imagenet" and data.image_size == 70
    assert data.train.images.shape[-1] == 80  # ceil(70 * 8 / 7): a margin for cropping
    train, val = make_loaders(data, 2)
    assert next(iter(train))[0].shape == (2, 3, 70, 70)
    assert next(iter(val))[0].shape == (2, 3, 70, 70)
