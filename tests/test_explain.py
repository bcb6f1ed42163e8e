"""Grad-CAM and attention maps (`attnres.analysis.explain`) and `attnres explain`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from attnres.analysis.explain import explain, grad_cam
from attnres.attention import attention_spec, list_attention
from attnres.cli import main
from attnres.models import build_model
from attnres.checkpoint import save_checkpoint

CLASSES = [f"class{i}" for i in range(4)]
SIZE = 16


def trained_model(attention: str, seed: int) -> torch.nn.Module:
    """A resnet20 trained for a few steps on a fixed random batch (differently per seed)."""
    torch.manual_seed(seed)
    model = build_model("resnet20", attention=attention, num_classes=len(CLASSES))
    x = torch.randn(8, 3, SIZE, SIZE)
    y = torch.arange(8) % len(CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.preprocessing = {"mean": [0.5] * 3, "std": [0.25] * 3, "image_size": SIZE,
                           "classes": CLASSES}
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, especially on a shared CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(one_thread) -> list[torch.nn.Module]:
    return [trained_model("cbam", seed=0), trained_model("se", seed=1)]


def grad_cam_by_hand(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor,
                     cls: int) -> np.ndarray:
    """Selvaraju et al. 2017: weights = spatial mean of d logit_c / d A, map = ReLU(sum_k
    w_k A_k), scaled to [0, 1], bilinearly upsampled to the input size and scaled to [0, 1]
    again (grad-cam rescales after resizing, as bilinear upsampling lowers the peak)."""
    feats = []
    handle = layer.register_forward_hook(lambda m, i, o: feats.append(o))
    with torch.enable_grad():
        logits = model(x)
    handle.remove()
    (grads,) = torch.autograd.grad(logits[0, cls], feats[0])
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * feats[0]).sum(dim=1, keepdim=True)).detach()
    cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return ((cam - cam.min()) / (cam.max() - cam.min() + 1e-7))[0, 0].numpy()


@pytest.mark.slow
def test_grad_cam_maps_match_the_formula_have_the_image_size_and_differ(models) -> None:
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    maps = []
    for model in models:
        with torch.no_grad():
            pred = model(x).argmax(dim=1)
        cams = grad_cam(model, model.layer3, x, pred.tolist())
        assert cams.shape == (2, SIZE, SIZE) and cams.dtype == np.float32
        assert cams.min() >= 0.0 and cams.max() <= 1.0
        hand = grad_cam_by_hand(model, model.layer3, x[:1], int(pred[0]))
        np.testing.assert_allclose(cams[0], hand, atol=2e-3)
        maps.append(cams)
    # differently trained models look at different places
    assert np.abs(maps[0] - maps[1]).mean() > 0.05


def save_run(model: torch.nn.Module, path) -> None:
    """A checkpoint as `attnres train` writes it (the fields load_model reads)."""
    save_checkpoint({"model": model.state_dict(), "build_args": model.build_args,
                     "preprocessing": model.preprocessing}, path)


def test_explain_on_two_checkpoints_writes_grid_pngs_and_json(models, tmp_path) -> None:
    (tmp_path / "cbam").mkdir()
    (tmp_path / "se").mkdir()
    save_run(models[0], tmp_path / "cbam" / "best.pt")
    save_run(models[1], tmp_path / "se" / "best.pt")
    rng = np.random.default_rng(0)
    images = []
    for name, shape in [("wide", (30, 50, 3)), ("gray", (40, 40))]:
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / f"{name}.png")
        images.append(tmp_path / f"{name}.png")
    out = tmp_path / "out"

    result = explain([tmp_path / "cbam" / "best.pt", tmp_path / "se" / "best.pt"], images,
                     out=out, device="cpu")

    # 2 images x (CBAM: Grad-CAM + attention, SE: Grad-CAM) individual pictures
    pngs = sorted(p.name for p in out.glob("*__*.png"))
    assert pngs == ["gray__cbam_best__attn.png", "gray__cbam_best__cam.png",
                    "gray__se_best__cam.png", "wide__cbam_best__attn.png",
                    "wide__cbam_best__cam.png", "wide__se_best__cam.png"]
    with Image.open(out / "grid.png") as grid:
        width, height = grid.size
    assert width > height > 200  # 2 rows, 4 columns (image, CAM, attention, CAM)
    assert not list(out.glob(".*tmp"))  # no temporary files left over

    saved = json.loads((out / "explain.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert [m["attention_module"] for m in saved["models"]] == ["layer3.2.attn", None]
    assert [m["layer"] for m in saved["models"]] == ["layer3", "layer3"]
    assert len(saved["results"]) == 4
    for r in saved["results"]:
        assert r["pred_class"] == CLASSES[r["pred_index"]] and 0.25 <= r["prob"] <= 1
        assert 0 <= r["cam"]["min"] <= r["cam"]["max"] <= 1
        assert ("attention" in r) == (r["model"] == "cbam/best")
        if "attention" in r:
            assert r["attention"]["map_size"] == [SIZE // 4, SIZE // 4]  # layer3: stride 4


def test_explain_probabilities_match_the_model_on_the_cropped_image(models, tmp_path) -> None:
    image = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE + 6, 3), dtype=np.uint8)
    result = explain([models[0]], [image], out=tmp_path, device="cpu")
    crop = torch.from_numpy(image[:, 3:3 + SIZE].copy()).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        probs = torch.softmax(models[0](((crop - 0.5) / 0.25)[None]), dim=1)[0]
    (r,) = result["results"]
    assert r["pred_index"] == int(probs.argmax())
    assert r["prob"] == pytest.approx(float(probs.max()), abs=1e-5)


@pytest.mark.slow
def test_cli_explain_default_photographs_and_bad_input(models, tmp_path, capsys) -> None:
    save_run(models[0], tmp_path / "a.pt")
    assert main(["explain", "--checkpoint", str(tmp_path / "a.pt"), "--out",
                 str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "chelsea" in text and "wrote" in text
    assert (tmp_path / "out" / "grid.png").is_file()
    assert len(list((tmp_path / "out").glob("*__cam.png"))) == 4  # the 4 sample photographs

    assert main(["explain", "--checkpoint", str(tmp_path / "a.pt"), "--layer", "layer9",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "layer='layer9'" in capsys.readouterr().err
    assert main(["explain", "--checkpoint", str(tmp_path / "missing.pt"), "--out",
                 str(tmp_path / "bad")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_dataset_images_take_one_validation_image_per_class_in_turn() -> None:
    from attnres.analysis.explain import dataset_images
    from attnres.data import load_dataset

    val = load_dataset("digits").val
    picked = dataset_images("digits", num_images=12)
    labels = [int(name.split("-")[0]) for name, _ in picked]
    assert labels == [*range(10), 0, 1]
    for name, image in picked:
        index = int(name.split("-val")[1])
        assert int(val.labels[index]) == int(name.split("-")[0])
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, val.images[index].permute(1, 2, 0).numpy())
    firsts = [next(i for i, y in enumerate(val.labels.tolist()) if y == c) for c in range(10)]
    assert [int(n.split("-val")[1]) for n, _ in picked[:10]] == firsts


# gate kinds that vary over positions: explain draws the modules that have one
POSITIONAL_KINDS = {"spatial", "channel+spatial", "row", "column"}


@pytest.mark.parametrize("name", list_attention())
def test_attention_map_of_every_registered_module(name, tmp_path) -> None:
    """A map exactly for modules with a positional gate: the mean over channels of the
    product of those gates' outputs (captured here with the test's own hooks)."""
    torch.manual_seed(6)
    model = build_model("resnet20", attention=name, num_classes=len(CLASSES)).eval()
    model.preprocessing = {"mean": [0.5] * 3, "std": [0.25] * 3, "image_size": SIZE,
                           "classes": CLASSES}
    spec = attention_spec(name)
    module = model.layer3[2].attn
    positional = [sub for sub, kind in spec.gates.items() if kind in POSITIONAL_KINDS]
    outputs: list[torch.Tensor] = []
    for sub in positional:
        module.get_submodule(sub).register_forward_hook(lambda m, a, o: outputs.append(o))
    image = np.random.default_rng(2).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    (record,) = explain([model], [image], out=tmp_path, device="cpu")["results"]
    assert ("attention" in record) == bool(positional)
    if not positional:
        assert not list(tmp_path.glob("*__attn.png"))
        return
    attention = record["attention"]
    assert attention["module"] == "layer3.2.attn"
    assert attention["map_size"] == [SIZE // 4, SIZE // 4]
    product = outputs[0]
    for out in outputs[1:len(positional)]:  # the first forward pass: explain's prediction
        product = product * out
    expected = product.detach().mean(dim=1)[0].expand(SIZE // 4, SIZE // 4)
    assert attention["mean"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert attention["min"] == pytest.approx(float(expected.min()), abs=1e-6)
    assert attention["max"] == pytest.approx(float(expected.max()), abs=1e-6)
    assert (tmp_path / "image0__model0__attn.png").is_file()


def test_gates_drawn_as_they_are_with_a_colour_bar_and_both_labels(models, tmp_path) -> None:
    """The gate's panel blends its raw values on the fixed 0-1 scale (a min-max stretch
    would make any nearly constant gate look like a strong one), its title gives the
    range, every title names the true and the predicted class, and the colour bar is
    drawn."""
    from attnres.analysis.explain_plot import DISPLAY_SIZE, center_square, overlay, resize_map

    model = models[0]
    gates: list[torch.Tensor] = []
    handle = model.layer3[2].attn.spatial_gate.register_forward_hook(
        lambda m, a, o: gates.append(o.detach()))
    image = np.random.default_rng(3).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    try:
        result = explain([model], [image], labels=["class2"], out=tmp_path, device="cpu")
    finally:
        handle.remove()
    gate = gates[0][0, 0].numpy()  # the first forward: the prediction's
    display = center_square(image, max(SIZE, DISPLAY_SIZE))
    want = overlay(display, resize_map(gate, display.shape[0]))
    drawn = np.asarray(Image.open(tmp_path / "image0__model0__attn.png").convert("RGB"))
    np.testing.assert_array_equal(drawn, want)
    stretched = (gate - gate.min()) / (gate.max() - gate.min())
    assert not np.array_equal(drawn, overlay(display, resize_map(stretched,
                                                                 display.shape[0])))
    (record,) = result["results"]
    assert record["true_class"] == "class2"
    titles = result["titles"][0]
    assert titles[0] == "image0\ntrue class2"
    assert titles[1] == (f"model0 Grad-CAM\ntrue class2, pred {record['pred_class']} "
                         f"({record['prob']:.2f})")
    assert titles[2] == (f"model0 cbam layer3.2.attn spatial\ngate {gate.min():.2f}-"
                         f"{gate.max():.2f} of 0-1")
    # the colour bar at the right edge runs from jet's dark blue (0) to its dark red (1)
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB")).astype(int)
    edge = grid[:, int(0.9 * grid.shape[1]):]
    near = lambda rgb: (np.abs(edge - np.array(rgb)).max(axis=2) < 30).any()  # noqa: E731
    assert near((0, 0, 128)) and near((128, 0, 0))
    with pytest.raises(ValueError, match="labels: 2 given for 1 images"):
        explain([model], [image], labels=["a", "b"], out=tmp_path, device="cpu")
