"""`attnres.predict` and `attnres predict`: digit images written as PNG files are classified
as the trained model classifies the same pixels normalised by hand; every kind of input
(paths, folders, globs, PIL images, tensors) gives the same answer; larger images are
resized and cropped as evaluation does; bad input is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import attnres
from attnres.checkpoint import load_model
from tiny_run import tiny_dataset


@pytest.fixture(scope="module")
def digit_pngs(tiny_data, tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """Six validation digits (uint8 `(6, 3, 8, 8)`) written as PNG files 0.png .. 5.png."""
    images = tiny_dataset(str(tiny_data)).val.images[:6]
    folder = tmp_path_factory.mktemp("digits-png")
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return folder, images


def direct_probabilities(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax of the model on uint8 `(N, 3, H, W)` images normalised by hand."""
    prep = model.preprocessing
    mean = torch.tensor(prep["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(prep["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model((images.float() / 255 - mean) / std).softmax(dim=1)


def test_predict_on_digit_pngs_matches_the_model(reference_run, digit_pngs):
    folder, images = digit_pngs
    model = load_model(reference_run)
    files = [folder / f"{i}.png" for i in range(len(images))]
    results = attnres.predict(model, files, top_k=3)
    probs = direct_probabilities(model, images)
    classes = model.preprocessing["classes"]
    assert len(results) == len(images)
    for result, p in zip(results, probs, strict=True):
        top = p.topk(3)
        assert [c for c, _ in result] == [classes[i] for i in top.indices]
        assert [q for _, q in result] == pytest.approx(top.values.tolist(), abs=1e-6)
    assert attnres.predict(model, files[0], top_k=50)[0][-1][1] >= 0  # k capped at 10
    assert len(attnres.predict(model, files[0], top_k=50)[0]) == len(classes)


def assert_same(results: list, expected: list) -> None:
    """Same classes in the same order, probabilities equal up to float rounding (a batch of
    another size may take another kernel)."""
    assert [[c for c, _ in r] for r in results] == [[c for c, _ in r] for r in expected]
    for r, e in zip(results, expected, strict=True):
        assert [p for _, p in r] == pytest.approx([p for _, p in e], abs=1e-6)


def test_every_kind_of_input_gives_the_same_answer(reference_run, digit_pngs):
    folder, images = digit_pngs
    model = load_model(reference_run)
    expected = attnres.predict(model, [folder / "0.png", folder / "1.png"])
    pil = [Image.open(folder / "0.png"), Image.open(folder / "1.png").convert("L")]
    assert_same(attnres.predict(model, pil), expected)
    assert_same(attnres.predict(model, images[:2]), expected)               # (N, 3, H, W)
    assert_same(attnres.predict(model, [images[0], images[1]]), expected)   # uint8 (3, H, W)
    assert_same(attnres.predict(model, [images[0].float() / 255, images[1][0]]), expected)
    assert_same(attnres.predict(model, str(folder / "0.png")), expected[:1])  # one path


def test_large_images_are_resized_and_cropped_as_evaluation_does(tmp_path):
    """At 72 px (ImageNet-style data: stored at 83 px, centre cropped to 72) predict feeds
    the model what evaluation feeds it for the same files in an ImageFolder."""
    from attnres.data import BatchLoader, load_dataset

    gen = torch.Generator().manual_seed(0)
    for split, names in (("train", ["t0", "t1"]), ("val", ["v0", "v1", "v2"])):
        for cls in ("a", "b"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for k, name in enumerate(names):
                size = (90 + 7 * k, 120 - 5 * k)  # not square, not the model's size
                pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=gen)
                Image.fromarray(pixels.to(torch.uint8).numpy()).save(
                    tmp_path / "data" / split / cls / f"{name}.png")
    data = load_dataset(str(tmp_path / "data"), image_size=72, cache_dir=tmp_path / "cache")
    model = attnres.build_model("resnet20", num_classes=2).eval()
    model.preprocessing = {"mean": list(data.mean), "std": list(data.std), "image_size": 72,
                           "classes": data.classes}
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    files = sorted((tmp_path / "data" / "val").rglob("*.png"))
    attnres.predict(model, files, batch_size=4)
    loader = BatchLoader(data.val.images, data.val.labels, batch_size=len(files), train=False,
                         mean=data.mean, std=data.std, kind=data.kind, image_size=72)
    (evaluated, _), = list(loader)
    assert data.kind == "imagenet" and evaluated.shape == (6, 3, 72, 72)
    torch.testing.assert_close(torch.cat(seen), evaluated, rtol=0, atol=1e-6)


def test_cli_prints_top_k_and_json(reference_run, digit_pngs, capsys):
    from attnres.cli import main

    folder, images = digit_pngs
    model = load_model(reference_run)
    expected = attnres.predict(model, sorted(folder.glob("*.png")), top_k=2)
    assert main(["predict", "--checkpoint", str(reference_run), str(folder), "--top-k", "2",
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [Path(r["image"]).name for r in printed] == [f"{i}.png" for i in range(6)]
    assert [[(p["class"], p["probability"]) for p in r["predictions"]] for r in printed] \
        == [[(c, pytest.approx(p)) for c, p in top] for top in expected]

    assert main(["predict", "--checkpoint", str(reference_run / "best.pt"),
                 str(folder / "[01].png"), str(folder / "2.png"), "--top-k", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith(str(folder / "0.png") + ": ")
    assert lines[2].split(": ")[1].split(" (")[0] == expected[2][0][0]


@pytest.mark.parametrize("case", ["missing", "no-match", "empty-folder", "not-an-image"])
def test_bad_image_paths_are_one_line_errors(reference_run, tmp_path, capsys, case):
    from attnres.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    arg = {"missing": tmp_path / "nope.png", "no-match": tmp_path / "*.jpg",
           "empty-folder": tmp_path / "empty", "not-an-image": tmp_path / "broken.png"}[case]
    assert main(["predict", "--checkpoint", str(reference_run), str(arg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnres predict: error: ") and "\n" not in err
    assert str(arg) in err and "Traceback" not in err


def test_bad_python_inputs_raise_value_error(reference_run):
    model = load_model(reference_run)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        attnres.predict(model, torch.randn(3, 8, 8))        # normalised already: refused
    with pytest.raises(ValueError, match="top_k=0"):
        attnres.predict(model, torch.zeros(3, 8, 8, dtype=torch.uint8), top_k=0)
    with pytest.raises(ValueError, match=r"expected \(C, H, W\)"):
        attnres.predict(model, [torch.zeros(8, 8, 3, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="no preprocessing"):
        attnres.predict(attnres.build_model("resnet20"), torch.zeros(3, 8, 8))
