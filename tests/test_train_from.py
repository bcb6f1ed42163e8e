"""Training a network you already have: `TrainConfig.source` ("timm:NAME",
"torchvision:NAME", a saved model), `add_attention`, `attnres.train(config, model=...)` and
`attnres train --from`. The run records the network's ModelInfo, so load_model, evaluation
and --resume rebuild it; the run folder also holds model.safetensors + model.json."""

from __future__ import annotations

import pytest
import torch
import torchvision
from tiny_run import run_tiny, tiny_dataset

import attnres
import attnres.data
from attnres.checkpoint import load_checkpoint
from attnres.model_files import load_saved_model

pytest.importorskip("timm")


def _same_state(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def _val_top1(model: torch.nn.Module, tiny_data) -> float:
    data = tiny_dataset(str(tiny_data))
    prep = model.preprocessing
    data = attnres.data.ImageData(train=data.train, val=data.val, classes=data.classes,
                                  mean=tuple(prep["mean"]), std=tuple(prep["std"]),
                                  image_size=8, kind="small", name="tiny")
    return attnres.evaluate(model, data)["top1"]


@pytest.mark.slow
def test_timm_source_trains_evaluates_resumes_and_loads(tiny_data, tmp_path):
    source = dict(attention=None, source="timm:resnet18", add_attention="cbam")
    full = tmp_path / "full"
    run_tiny(tiny_data, full, **source)
    ckpt = load_checkpoint(full / "best.pt")
    assert ckpt["model_info"]["library"] == "timm" and "build_args" not in ckpt
    assert ckpt["model_info"]["num_classes"] == 10
    assert ckpt["model_info"]["insertions"][0]["attention"] == "cbam"

    model = attnres.load_model(full)
    assert _same_state(model.state_dict(), ckpt["model"])
    best = max(ckpt["metrics"], key=lambda r: r["val_top1"])
    assert _val_top1(model, tiny_data) == pytest.approx(best["val_top1"], abs=1e-4)
    saved = load_saved_model(full)  # the run's model.safetensors: the best weights
    assert _same_state(saved.state_dict(), ckpt["model"])
    assert saved.preprocessing["mean"] == ckpt["preprocessing"]["mean"]

    part = tmp_path / "part"
    run_tiny(tiny_data, part, epochs=1, **source)
    first = load_checkpoint(part / "last.pt")
    run_tiny(tiny_data, part, epochs=2, resume=str(part), **source)
    resumed = load_checkpoint(part / "last.pt")
    assert resumed["epoch"] == 2 and resumed["metrics"][0] == first["metrics"][0]
    assert resumed["model_info"] == first["model_info"]
    assert not _same_state(resumed["model"], first["model"])  # it trained on
    assert _same_state(attnres.load_model(part / "last.pt").state_dict(), resumed["model"])


@pytest.mark.slow
def test_train_given_model_and_saved_model_source(tiny_data, tmp_path):
    net = torchvision.models.resnet18(num_classes=1000)
    attnres.add_attention(net, "se", placement="block")
    _train_with_model(tiny_data, tmp_path / "given", net)
    ckpt = load_checkpoint(tmp_path / "given" / "last.pt")
    assert ckpt["build_args"]["arch"] == "resnet18" and ckpt["build_args"]["num_classes"] == 10
    assert _same_state(net.state_dict(), ckpt["model"])  # trained in place
    assert _same_state(attnres.load_model(tmp_path / "given").state_dict(),
                       load_checkpoint(tmp_path / "given" / "best.pt")["model"])

    attnres.save_model(net, tmp_path / "saved")  # fine-tune the saved model again
    run_tiny(tiny_data, tmp_path / "again", attention=None, epochs=1,
             source=str(tmp_path / "saved"))
    again = load_checkpoint(tmp_path / "again" / "last.pt")
    assert list(again["model"]) == list(net.state_dict())


def _train_with_model(tiny_data, out, net):
    from tiny_run import tiny_config

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attnres.data, "load_dataset", tiny_dataset)
        return attnres.train(tiny_config(tiny_data, out, attention=None, epochs=1), model=net)


def test_cli_from_and_add_attention_fill_the_config():
    import argparse

    from attnres.cli import train as cli_train

    parser = argparse.ArgumentParser()
    cli_train.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--from", "torchvision:resnet50", "--add-attention",
                              "cbam", "--placement", "block", "--pretrained", "IMAGENET1K_V2"])
    config = cli_train.config_from_args(args)
    assert (config.source, config.add_attention, config.placement, config.pretrained) == (
        "torchvision:resnet50", "cbam", "block", "IMAGENET1K_V2")


def test_bad_source_options_are_one_line_errors(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="use add_attention='cbam'"):
        run_tiny(tiny_data, tmp_path / "a", source="timm:resnet18", attention="cbam")
    with pytest.raises(ValueError, match="add_attention needs a source"):
        run_tiny(tiny_data, tmp_path / "b", attention=None, add_attention="cbam")
    with pytest.raises(ValueError, match=r"source=.*nowhere"):
        run_tiny(tiny_data, tmp_path / "c", attention=None, source=str(tmp_path / "nowhere"))
