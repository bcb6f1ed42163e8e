"""attnres.evaluation: metrics against hand computations, the confusion PNG, `attnres eval`."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn as nn
from PIL import Image

from attnres.data import ImageData, ImageSet, load_dataset
from attnres.evaluation import evaluate, metrics_from_logits, save_confusion_png

# 7 classes (so top-5 is a real top-5), 4 samples, logits chosen so the ranks are obvious
LOGITS = torch.tensor([
    [9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.0],  # label 0: rank 1
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # label 2: rank 5 (6 > 5 > 4 > 3 > 2)
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # label 1: rank 6, outside the top-5
    [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0],  # label 0: rank 2
])
LABELS = torch.tensor([0, 2, 1, 0])
CLASSES = [f"c{i}" for i in range(7)]


def test_metrics_equal_hand_computation():
    m = metrics_from_logits(LOGITS, LABELS, CLASSES)
    assert m["n"] == 4 and m["topk"] == 5
    assert m["top1"] == pytest.approx(100 * 1 / 4)  # percent, like summary.json
    assert m["top5"] == pytest.approx(100 * 3 / 4)
    confusion = [[0] * 7 for _ in range(7)]
    confusion[0][0] += 1  # predicted 0
    confusion[2][6] += 1  # predicted 6
    confusion[1][6] += 1
    confusion[0][6] += 1
    assert m["confusion"] == confusion
    assert m["per_class"]["c0"] == pytest.approx(50.0) and m["per_class"]["c1"] == 0.0
    assert m["per_class"]["c3"] is None  # no samples of class 3
    loss = 0.0
    for row, y in zip(LOGITS.tolist(), LABELS.tolist()):
        loss += math.log(sum(math.exp(v) for v in row)) - row[y]
    assert m["loss"] == pytest.approx(loss / 4, rel=1e-6)


def test_topk_capped_at_class_count():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 2.0, 1.0]])
    m = metrics_from_logits(logits, torch.tensor([0, 2]), ["a", "b", "c"])
    assert m["topk"] == 3 and m["top5"] == 100.0 and m["top1"] == 0.0


class FixedLogits(nn.Module):
    """Returns LOGITS row i for the image whose every pixel equals i after normalisation."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x)
        return LOGITS[x[:, 0, 0, 0].round().long()]


def test_evaluate_batches_normalises_and_restores_mode():
    images = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 4, 4).contiguous()
    split = ImageSet(images, LABELS)
    # mean 0, std 1/255: the normalised pixel of image i is exactly i
    data = ImageData(train=split, val=split, classes=CLASSES, mean=(0.0,) * 3,
                     std=(1 / 255,) * 3, image_size=4, kind="small", name="fixed")
    model = FixedLogits().train()
    result = evaluate(model, data, batch_size=3)
    assert model.training  # mode restored
    assert [x.shape[0] for x in model.seen] == [3, 1]
    want = metrics_from_logits(LOGITS, LABELS, CLASSES)
    assert result["top1"] == want["top1"] and result["top5"] == want["top5"]
    assert result["confusion"] == want["confusion"]
    assert result["loss"] == pytest.approx(want["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="split"):
        evaluate(model, data, split="test")
    with pytest.raises(ValueError, match="device='tpu'"):
        evaluate(model, data, device="tpu")


@pytest.mark.slow
def test_evaluate_real_model_on_digits():
    from attnres.models import build_model

    data = load_dataset("digits", val_split=20)
    model = build_model("resnet20", num_classes=10)
    result = evaluate(model, data, batch_size=8)
    confusion = torch.tensor(result["confusion"])
    assert result["n"] == 20 == int(confusion.sum())
    assert confusion.sum(dim=1).tolist() == torch.bincount(data.val.labels, minlength=10).tolist()
    assert result["top1"] == pytest.approx(100 * float(confusion.trace()) / 20)
    assert 0 <= result["top1"] <= result["top5"] <= 100 and math.isfinite(result["loss"])


def test_confusion_png(tmp_path):
    path = save_confusion_png([[5, 1], [2, 7]], ["cat", "dog"], tmp_path / "out" / "c.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100
    assert [p.name for p in path.parent.iterdir()] == ["c.png"]  # no temp file left
    with pytest.raises(ValueError, match="classes"):
        save_confusion_png([[1, 2], [3, 4]], ["only one"], tmp_path / "x.png")


@pytest.fixture
def checkpoint(tmp_path):
    from attnres.models import build_model
    from attnres.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10)
    # statistics unlike the data's own, so using the wrong ones would change the loss
    prep = {"mean": [0.2, 0.3, 0.4], "std": [0.5, 0.6, 0.7], "image_size": 32,
            "classes": [str(i) for i in range(10)]}
    run = tmp_path / "run"
    save_checkpoint({"model": model.state_dict(), "build_args": model.build_args,
                     "preprocessing": prep,
                     "config": {"data": "digits", "val_split": 30, "split_seed": 2}},
                    run / "best.pt")
    return run, model, prep


def test_evaluate_checkpoint_uses_checkpoint_preprocessing_and_split(checkpoint):
    from attnres.evaluation import evaluate_checkpoint

    run, model, prep = checkpoint
    result = evaluate_checkpoint(run)
    data = load_dataset("digits", val_split=30, seed=2)
    want = evaluate(model, dataclasses.replace(data, mean=tuple(prep["mean"]),
                                               std=tuple(prep["std"])))
    assert result["n"] == 30
    assert result["confusion"] == want["confusion"]
    assert result["loss"] == pytest.approx(want["loss"], rel=1e-5)
    own_stats = evaluate(model, data)
    assert abs(own_stats["loss"] - result["loss"]) > 1e-4  # the data's own stats differ
    saved = json.loads((run / "eval" / "eval.json").read_text())
    assert saved["top1"] == result["top1"] and saved["n"] == 30
    hits = sum(saved["confusion"][i][i] for i in range(10))
    assert saved["accuracy_unit"] == "percent"
    assert saved["top1"] == pytest.approx(100 * hits / 30)  # percent, counted from the matrix
    for name, row in zip(saved["per_class"], saved["confusion"]):
        if sum(row):
            assert saved["per_class"][name] == pytest.approx(100 * row[int(name)] / sum(row))
    assert (run / "eval" / "confusion.png").is_file()


def test_cli_eval(checkpoint, tmp_path, capsys):
    from attnres.cli import main

    run, _, _ = checkpoint
    out = tmp_path / "report"
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "top-5" in text and "eval.json" in text
    assert json.loads((out / "eval.json").read_text())["n"] == 30
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert "missing.pt" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", "--checkpoint", str(run), "--data", "digitz"]) == 2
    assert "did you mean 'digits'" in capsys.readouterr().err


def test_old_eval_json_with_fractions_is_read_as_percent(tmp_path):
    from attnres.evaluation import read_eval_json

    old = {"top1": 0.25, "top5": 0.75, "per_class": {"a": 0.5, "b": None}, "n": 4}
    (tmp_path / "old.json").write_text(json.dumps(old))
    read = read_eval_json(tmp_path / "old.json")
    assert (read["top1"], read["top5"]) == (25.0, 75.0)
    assert read["per_class"] == {"a": 50.0, "b": None}
    new = {**read, "top1": 30.0}
    (tmp_path / "new.json").write_text(json.dumps(new))
    assert read_eval_json(tmp_path / "new.json")["top1"] == 30.0  # already percent: kept
