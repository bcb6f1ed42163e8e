"""attnres.data streaming: listings of folders, tar archives and tar shards, the streaming
loader's contract (same validation images as the memory path, exact order and resume,
DistributedSampler semantics, worker-count independence), the chooser, real photographs, and
memory that does not grow with the data set."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnres import data as D
from attnres.data import (choose_loader_kind, estimate_decoded_bytes, list_source, load_dataset,
                          make_loaders, make_stream_loaders, open_stream)
from attnres.data.stream import StreamDataset, decode_full, epoch_order


def make_folder(root: Path, per_class=(5, 4, 6), size=(12, 12), seed=0) -> Path:
    """Classes of noisy solid colours, JPEG and PNG alternating (both decoders)."""
    rng = np.random.default_rng(seed)
    for c, n in enumerate(per_class):
        colour = np.array([(200, 30, 30), (30, 200, 30), (30, 30, 200)][c % 3])
        for i in range(n):
            arr = np.clip(colour + rng.integers(-40, 40, (*size, 3)), 0, 255).astype(np.uint8)
            path = root / f"class{c}" / f"{i:02d}.{'jpg' if i % 2 else 'png'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
    return root


def tar_of(folder: Path, out: Path, mode: str = "w") -> Path:
    """The folder's class folders at the archive's top level (names as in the folder)."""
    with tarfile.open(out, mode) as tar:
        for d in sorted(folder.iterdir()):
            tar.add(d, arcname=d.name)
    return out


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v)
                                    for (x, y), (u, v) in zip(a, b))


@pytest.mark.parametrize("val_split", [0.25, 4])
def test_validation_set_and_statistics_match_memory_path(tmp_path, val_split):
    root = make_folder(tmp_path / "data", size=(12, 16))  # not square: both resize + crop
    cache = tmp_path / "cache"
    mem = load_dataset(str(root), val_split=val_split, seed=3, cache_dir=cache)
    st = open_stream(root, val_split=val_split, seed=3, cache_dir=cache)
    assert (st.classes, st.image_size, st.kind) == (mem.classes, mem.image_size, mem.kind)
    assert st.mean == pytest.approx(mem.mean, abs=1e-12)  # every image sampled: exact
    assert st.std == pytest.approx(mem.std, abs=1e-12)
    assert torch.equal(torch.from_numpy(st.val.labels), mem.val.labels)
    _, mem_val = make_loaders(mem, 3)
    _, st_val = make_stream_loaders(st, 3)
    assert same(batches(mem_val), batches(st_val))  # same images, same pixels, same order
    # and the validation files are the stratified split of the sorted file list
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*"))
    labels = torch.tensor([int(n[5]) for n in names])
    n_val = round(val_split * len(names)) if val_split < 1 else val_split
    _, val_idx = D.stratified_split(labels, n_val, 3)
    assert st.val.names() == [names[i] for i in val_idx]


def test_sampled_statistics_are_close_and_computed_once(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data", per_class=(30, 30, 30))
    mem = load_dataset(str(root), val_split=9, cache_dir=tmp_path / "c")
    st = open_stream(root, val_split=9, stats_sample=20, cache_dir=tmp_path / "c")
    assert st.info["stats"] == "estimated from 20 training images"
    assert st.mean == pytest.approx(mem.mean, abs=0.03) and st.std == pytest.approx(mem.std,
                                                                                    abs=0.03)
    import attnres.data.scale as S

    monkeypatch.setattr(S, "estimate_stats", lambda *a: pytest.fail("estimated again"))
    again = open_stream(root, val_split=9, stats_sample=20, cache_dir=tmp_path / "c")
    assert again.mean == st.mean and again.std == st.std  # read from the listing's JSON


def test_given_val_folder_used_as_given(tmp_path):
    make_folder(tmp_path / "ds" / "train")
    make_folder(tmp_path / "ds" / "val", per_class=(1, 2, 1), seed=1)
    st = open_stream(tmp_path / "ds", cache_dir=tmp_path / "c")
    mem = load_dataset(str(tmp_path / "ds"), cache_dir=tmp_path / "c")
    assert st.val.labels.tolist() == mem.val.labels.tolist() == [0, 1, 1, 2]
    assert all(n.startswith("val/") for n in st.val.names()) and len(st.train) == 15


def test_order_reproducible_matches_batchloader_and_resume_is_exact(tmp_path):
    root = make_folder(tmp_path / "data", per_class=(9, 8, 10))
    st = open_stream(root, val_split=3, cache_dir=tmp_path / "c")
    mem = load_dataset(str(root), val_split=3, cache_dir=tmp_path / "c")
    train, _ = make_stream_loaders(st, 4, seed=5)
    mem_train, _ = make_loaders(mem, 4, seed=5)
    train.set_epoch(2)
    mem_train.set_epoch(2)
    assert torch.equal(train.indices(), mem_train.indices())  # the same permutation
    full = batches(train)
    assert len(full) == len(train) == 24 // 4
    assert torch.equal(torch.cat([y for _, y in full]),
                       torch.from_numpy(st.train.labels)[train.indices()[:24]])
    again, _ = make_stream_loaders(st, 4, seed=5)
    again.set_epoch(2)
    assert same(batches(again), full)  # a pure function of (seed, epoch)
    for k in (1, 4):
        again.set_epoch(2, start_batch=k)
        assert same(batches(again), full[k:])  # resume: the remaining batches exactly
    assert same(batches(again), full)  # the skip applies to one iteration only
    again.set_epoch(3)
    other = batches(again)
    assert not torch.equal(other[0][1], full[0][1]) or not torch.equal(other[0][0], full[0][0])


def test_augmentation_seeded_per_image_and_leaves_global_rng_alone(tmp_path):
    root = make_folder(tmp_path / "data", size=(40, 48))
    records = list_source(root, cache_dir=tmp_path / "c").train
    ds = StreamDataset(records, image_size=32, kind="imagenet", train=True, seed=1)
    state = torch.get_rng_state()
    a = ds[(4, 7)][0]
    torch.manual_seed(123)  # the global state must not matter
    assert torch.equal(ds[(4, 7)][0], a)
    torch.set_rng_state(state)
    ds[(4, 8)]
    assert torch.equal(torch.get_rng_state(), state)  # and is not changed
    assert not torch.equal(ds[(5, 7)][0], a)  # another epoch, another crop
    # the crop is torchvision's RandomResizedCrop + flip under the derived seed
    from torchvision.transforms import v2

    from attnres.data.stream import sample_seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sample_seed(1, 4, 7))
        want = v2.Compose([v2.RandomResizedCrop(32, antialias=True),
                           v2.RandomHorizontalFlip()])(decode_full(records.read(7)))
    assert torch.equal(a, want)


def test_two_ranks_disjoint_covering_and_padded(tmp_path):
    n = 11
    for shuffle in (True, False):
        parts = [epoch_order(n, seed=0, epoch=1, shuffle=shuffle, rank=r, world_size=2)
                 for r in range(2)]
        whole = torch.cat(parts)
        assert sorted(set(whole.tolist())) == list(range(n))  # covering
        if shuffle:  # padded to 12 by repeating the first index of the shuffled order
            assert len(parts[0]) == len(parts[1]) == 6
            assert len(set(whole.tolist())) == n and whole.tolist().count(
                epoch_order(n, seed=0, epoch=1, shuffle=True)[0].item()) == 2
        else:  # validation: disjoint, not padded, each image once
            assert [len(p) for p in parts] == [6, 5] and len(set(whole.tolist())) == n
    root = make_folder(tmp_path / "data", per_class=(4, 4, 3))
    st = open_stream(root, val_split=2, cache_dir=tmp_path / "c")  # 9 training images
    loaders = [make_stream_loaders(st, 2, rank=r, world_size=2)[0] for r in range(2)]
    seen = [torch.cat([y for _, y in batches(tl)]) for tl in loaders]
    assert len(loaders[0]) == len(loaders[1]) == 2  # 5 each (one padded), drop_last
    full = epoch_order(9, seed=0, epoch=0, shuffle=True).tolist()
    padded = full + full[:1]
    for r in range(2):
        want = torch.from_numpy(st.train.labels)[padded[r::2][:4]]
        assert torch.equal(seen[r], want)


def test_tar_and_shards_stream_without_extraction(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data")
    archive = tar_of(root, tmp_path / "data.tar")
    shards = tmp_path / "shards"
    shards.mkdir()
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*"))
    for s in range(3):  # members spread over 3 shards, class folders inside each
        with tarfile.open(shards / f"part-{s:03d}.tar", "w") as tar:
            for name in names[s::3]:
                tar.add(root / name, arcname=name)
    cache = tmp_path / "cache"

    def no_extraction(*args, **kwargs):
        raise AssertionError("members must be read by offset, not extracted")

    monkeypatch.setattr(tarfile.TarFile, "extractfile", no_extraction)
    monkeypatch.setattr(tarfile.TarFile, "extract", no_extraction)
    results = {}
    for spec in (root, archive, shards):
        st = open_stream(spec, val_split=3, cache_dir=cache)
        assert st.train.names() + st.val.names() != []
        train, val = make_stream_loaders(st, 4, seed=1)
        results[spec.name] = (st.info["fingerprint"], batches(train), batches(val))
        if spec != root:
            assert (st.train.offset >= 0).all() and st.info["layout"] in ("tar", "shards")
    assert {r[0] for r in results.values()} == {results["data"][0]}  # same content
    for key in ("data.tar", "shards"):
        assert same(results[key][1], results["data"][1])
        assert same(results[key][2], results["data"][2])
    assert sorted(p.suffix for p in cache.iterdir()) == [".json"] * 3  # only listings
    unpacked = [p for p in tmp_path.rglob("*.*") if p.suffix in (".jpg", ".png")
                and root not in p.parents]
    assert not unpacked


def test_gzip_archive_becomes_one_plain_tar_and_checks_sha256(tmp_path):
    root = make_folder(tmp_path / "data")
    gz = tar_of(root, tmp_path / "data.tar.gz", "w:gz")
    cache = tmp_path / "cache"
    import hashlib
    digest = hashlib.sha256(gz.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="sha256"):
        open_stream(gz, sha256="0" * 64, cache_dir=cache)
    assert not list(cache.glob("*.tar"))  # a mismatch leaves no copy behind
    st = open_stream(gz, sha256=digest, val_split=3, cache_dir=cache)
    copy = Path(st.train.sources[0])
    assert copy.parent == cache and copy.suffix == ".tar" and tarfile.is_tarfile(copy)
    plain = open_stream(tar_of(root, tmp_path / "plain.tar"), val_split=3, cache_dir=cache)
    assert same(batches(make_stream_loaders(st, 4)[0]), batches(make_stream_loaders(plain, 4)[0]))


def test_listing_cached_reused_and_refreshed_when_the_folder_changes(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    first = list_source(root, cache_dir=cache)
    stored = json.loads(first.path.read_text())
    assert stored["fingerprint"] == first.fingerprint and first.path.stat().st_size < 4000
    import attnres.data.shards as S

    real_scan = S._scan_folder
    monkeypatch.setattr(S, "_scan_folder", lambda *a: pytest.fail("listed again"))
    second = list_source(root, cache_dir=cache)
    assert second.train.names() == first.train.names()
    assert (second.train.size == first.train.size).all()
    monkeypatch.setattr(S, "_scan_folder", real_scan)
    Image.new("RGB", (12, 12)).save(root / "class1" / "new.png")
    third = list_source(root, cache_dir=cache)
    assert len(third.train) == len(first.train) + 1 and third.fingerprint != first.fingerprint
    first.path.write_text(first.path.read_text().replace('"size"', '"sizes"'))
    with pytest.warns(UserWarning, match="unreadable listing"):
        assert len(list_source(root, cache_dir=cache).train) == len(third.train)


def test_bad_sources_fail_with_one_line_errors(tmp_path):
    root = make_folder(tmp_path / "data", per_class=(20, 20, 20), size=(24, 24))
    archive = tar_of(root, tmp_path / "a.tar")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        list_source(cut, cache_dir=tmp_path / "c")
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "x.tar").write_bytes(archive.read_bytes())
    (tmp_path / "mixed" / "class0").mkdir()
    with pytest.raises(ValueError, match="shard folder holds only"):
        list_source(tmp_path / "mixed", cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="named data set"):
        open_stream("digits")
    (root / "class2" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    st = open_stream(root, val_split=3, cache_dir=tmp_path / "c", mean=(0.5,) * 3,
                     std=(0.25,) * 3)
    idx = st.train.names().index("class2/broken.jpg")
    with pytest.raises(ValueError, match=r"class2/broken\.jpg could not be read"):
        StreamDataset(st.train, image_size=24, kind="small", train=False)[idx]


def test_worker_count_does_not_change_batches(tmp_path):
    root = make_folder(tmp_path / "data", per_class=(6, 6, 6), size=(30, 40))
    st = open_stream(root, val_split=3, image_size=24, cache_dir=tmp_path / "c")
    assert st.kind == "small"
    got = []
    for workers in (0, 2):
        train, val = make_stream_loaders(st, 4, seed=2, num_workers=workers)
        train.set_epoch(1)
        epoch1 = batches(train)
        train.set_epoch(1, start_batch=2)  # resume with persistent workers
        resumed = batches(train)
        got.append((epoch1, resumed, batches(val)))
    assert same(got[0][0], got[1][0]) and same(got[0][2], got[1][2])
    assert same(got[1][1], got[0][0][2:])


def test_imagenet_kind_transforms_follow_torchvision_reference(tmp_path):
    root = make_folder(tmp_path / "data", per_class=(2, 2, 2), size=(90, 110))
    st = open_stream(root, val_split=3, image_size=72, cache_dir=tmp_path / "c")
    assert st.kind == "imagenet" and st.image_size == 72
    train, val = make_stream_loaders(st, 3)
    x, _ = next(iter(train))
    assert x.shape == (3, 3, 72, 72) and x.dtype == torch.float32
    from torchvision.transforms import v2

    ref = v2.Compose([v2.Resize(82, antialias=True), v2.CenterCrop(72)])  # 72 / 0.875 = 82.3
    want = torch.stack([ref(decode_full(st.val.read(i))) for i in range(3)]).float()
    mean, std = torch.tensor(st.mean).view(1, 3, 1, 1), torch.tensor(st.std).view(1, 3, 1, 1)
    got = next(iter(val))[0]
    torch.testing.assert_close(got, (want / 255 - mean) / std, atol=1e-5, rtol=1e-5)


def test_chooser_and_size_estimate(tmp_path):
    root = make_folder(tmp_path / "data", size=(20, 30))
    cache = tmp_path / "c"
    n = 15
    assert estimate_decoded_bytes(root, cache_dir=cache) == n * 3 * 20 * 20
    assert estimate_decoded_bytes(root, image_size=224, cache_dir=cache) == n * 3 * 256 * 256
    need = 2 * n * 3 * 20 * 20
    assert choose_loader_kind(root, cache_dir=cache, ram_budget=need) == "memory"
    assert choose_loader_kind(root, cache_dir=cache, ram_budget=need - 1) == "stream"
    assert choose_loader_kind(root, cache_dir=cache, ram_budget=need, processes=2) == "stream"
    assert choose_loader_kind(root, cache_dir=cache, kind="stream") == "stream"
    assert choose_loader_kind("cifar10") == "memory"
    assert choose_loader_kind(root, cache_dir=cache) == "memory"  # tiny vs this machine's RAM
    with pytest.raises(ValueError, match="did you mean 'stream'"):
        choose_loader_kind(root, kind="streem")
    with pytest.raises(FileNotFoundError, match="did you mean 'cifar10'"):
        choose_loader_kind("cifar1")
    shards = tmp_path / "shards"
    shards.mkdir()
    tar_of(root, shards / "0.tar")
    assert choose_loader_kind(shards, cache_dir=cache, ram_budget=10**12) == "stream"
    with pytest.raises(ValueError, match="only be streamed"):
        choose_loader_kind(shards, cache_dir=cache, kind="memory")


def test_photo_folder_of_real_photographs(tmp_path):
    root = D.make_photo_folder(tmp_path / "photos", per_class=3, photos=("chelsea", "coffee"),
                               crop=(120, 200), seed=4)
    again = D.make_photo_folder(tmp_path / "again", per_class=3, photos=("chelsea", "coffee"),
                                crop=(120, 200), seed=4)
    files = sorted(root.rglob("*.jpg"))
    assert [f.relative_to(root) for f in files] == [f.relative_to(again)
                                                    for f in sorted(again.rglob("*.jpg"))]
    assert all(f.read_bytes() == (again / f.relative_to(root)).read_bytes() for f in files)
    import skimage.data

    for f in files:
        with Image.open(f) as img:
            w, h = img.size
        assert 120 <= h <= 200 and 120 <= w <= 200
    crop = np.asarray(Image.open(files[0]).convert("RGB")).astype(np.float32)
    photo = skimage.data.chelsea().astype(np.float32)  # the crop is a piece of the photo
    h, w = crop.shape[:2]
    grey, patch = photo.mean(axis=2), crop[:8, :8].mean(axis=2)
    windows = np.lib.stride_tricks.sliding_window_view(grey, (8, 8))
    sad = np.abs(windows - patch).mean(axis=(2, 3))  # find its top-left corner
    top, left = np.unravel_index(np.argmin(sad), sad.shape)
    assert np.abs(photo[top:top + h, left:left + w] - crop).mean() < 4  # JPEG quality 90
    st = open_stream(root, val_split=2, cache_dir=tmp_path / "c")
    assert st.classes == ["chelsea", "coffee"] and st.kind == "imagenet"


@pytest.mark.slow
def test_memory_does_not_grow_with_the_data_set_and_first_batch_needs_no_full_pass(tmp_path):
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(4):  # smooth random images: real 300x400 JPEGs of a few kB
        small = rng.integers(0, 256, (8, 10, 3)).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize((400, 300), Image.BILINEAR).save(buf, "JPEG", quality=80)
        encoded.append(buf.getvalue())
    for n in (500, 5000):
        for i in range(n):
            path = tmp_path / f"n{n}" / f"class{i % 10}" / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encoded[i % 4])
    script = textwrap.dedent("""
        import json, resource, sys, torch
        torch.set_num_threads(1)
        import attnres.data.stream as S
        from attnres.data import make_stream_loaders, open_stream
        decoded = [0]
        real = S.decode_full
        def counting(data):
            decoded[0] += 1
            return real(data)
        S.decode_full = counting
        data = open_stream(sys.argv[1], cache_dir=sys.argv[2], image_size=96,
                           mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        train, _ = make_stream_loaders(data, 16)
        first = None
        for b, (x, y) in enumerate(train):
            first = decoded[0] if first is None else first
            if b == 9:
                break
        print(json.dumps({"rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                          "first": first, "decoded": decoded[0], "n": len(data.train)}))
    """)
    out = {}
    for n in (500, 5000):
        run = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"n{n}"),
                              str(tmp_path / "cache")], capture_output=True, text=True,
                             timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert run.returncode == 0, run.stderr[-2000:]
        out[n] = json.loads(run.stdout.strip().splitlines()[-1])
    assert out[5000]["n"] == 4500 and out[500]["n"] == 450
    for n in out:
        assert out[n]["first"] == 16 and out[n]["decoded"] == 160  # no pass over the data
    grown_mb = (out[5000]["rss_kb"] - out[500]["rss_kb"]) / 1024
    print(f"peak RSS: {out[500]['rss_kb'] / 1024:.1f} MB (500 files), "
          f"{out[5000]['rss_kb'] / 1024:.1f} MB (5,000 files): +{grown_mb:.1f} MB")
    # the in-memory path would hold 4,500 more images x 3 x 110^2 bytes = 163 MB
    assert grown_mb < 30, out
