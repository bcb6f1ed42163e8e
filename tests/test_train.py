"""Training: recipe pieces, named recipes, the run folder, determinism, resume after
SIGKILL/SIGINT, non-finite losses and argument validation.

Most runs are the tiny run of tiny_run.py (fixtures `tiny_data` and `reference_run` in
conftest.py).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import inspect
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import attnres.data
from attnres.checkpoint import load_checkpoint, load_model
from attnres.models import build_model
from attnres.training import (
    RECIPES,
    NonFiniteLossError,
    TrainConfig,
    attention_parameter_names,
    lr_factor,
    param_groups,
    train,
    validate_config,
)
from tiny_run import STEPS_PER_EPOCH, run_tiny, tiny_cli_args, tiny_dataset


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: bit-exact comparisons need the same thread count everywhere, and
    on a busy 2-core machine a second spinning thread slows these runs down many times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_momentum(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()
    for index in a["state"]:
        assert torch.equal(a["state"][index]["momentum_buffer"],
                           b["state"][index]["momentum_buffer"]), index


# ------------------------------------------------------------------ recipe pieces

def test_lr_factor_warmup_cosine_and_step():
    common = dict(total_steps=100, warmup_steps=10, milestones=[0.5, 0.75], gamma=0.1)
    cosine = [lr_factor(s, schedule="cosine", **common) for s in range(100)]
    assert cosine[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    for s in (10, 37, 55, 99):  # half-cosine from 1 at the end of warm-up to 0 at step 100
        assert cosine[s] == pytest.approx(0.5 * (1 + math.cos(math.pi * (s - 10) / 90)))
    step = [lr_factor(s, schedule="step", **common) for s in range(100)]
    assert step[10:50] == [1.0] * 40
    assert step[50:75] == pytest.approx([0.1] * 25)
    assert step[75:] == pytest.approx([0.01] * 25)


def test_param_groups_decay_and_attention_lr():
    model = build_model("resnet20", attention="cbam", num_classes=10)
    groups = param_groups(model, lr=0.1, weight_decay=5e-4, attention_lr_mult=3.0)
    by_id = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(by_id) == len(named)  # every parameter in exactly one group
    assert sum(len(g["params"]) for g in groups) == len(named)
    attention = attention_parameter_names(model)
    assert attention and all(".attn." in name for name in attention)
    norm_params = {f"{module_name}.{p}" for module_name, module in model.named_modules()
                   if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
                   for p, _ in module.named_parameters(recurse=False)}
    assert "bn1.weight" in norm_params and "layer3.2.bn2.bias" in norm_params
    for name, param in named.items():
        group = by_id[id(param)]
        is_norm_or_bias = name in norm_params or name.endswith(".bias")
        assert group["weight_decay"] == (0.0 if is_norm_or_bias else 5e-4), name
        assert group["lr"] == pytest.approx(0.3 if ".attn." in name else 0.1), name


def test_attention_parameters_come_from_the_registry():
    from attnres.attention import create_attention
    from attnres.models import insert_attention

    # a registered gate under a name without "attn": found through the registry alone
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), create_attention("cbam", 8))
    assert attention_parameter_names(model) == {f"1.{n}" for n, _ in model[1].named_parameters()}
    # a model that is itself a gate
    gate = create_attention("se", 16)
    assert attention_parameter_names(gate) == {n for n, _ in gate.named_parameters()}
    # SK convolutions replace the block's own convolution: backbone, not attention
    assert attention_parameter_names(build_model("skresnet50", num_classes=10)) == set()
    # inserted identity-init gates: the wrapper's scale is attention too
    tv = build_model("resnet18", num_classes=10)
    insert_attention(tv, "se", at=["layer1:before", "layer4:after"], init="identity")
    expected = {n for n, _ in tv.named_parameters() if ".attn_before." in n
                or ".attn_after." in n}
    assert any(n.endswith(".scale") for n in expected)
    assert attention_parameter_names(tv) == expected


# The 15-epoch CIFAR-10 grid's recipe, written out independently of attnres.training.RECIPES.
CIFAR_FAST = dict(arch="resnet20", epochs=50, batch_size=128, lr=0.1, momentum=0.9,
                  nesterov=True, weight_decay=5e-4, label_smoothing=0.1, schedule="cosine",
                  warmup_epochs=1.0, amp="bf16", channels_last=True, tta="flip")


def cli_config(*argv: str) -> TrainConfig:
    from attnres.cli import build_parser
    from attnres.cli.train import config_from_args

    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_recipe_gives_exactly_its_values_and_flags_override_them():
    assert RECIPES["cifar-fast"] == CIFAR_FAST
    config = cli_config("--recipe", "cifar-fast")
    assert config == TrainConfig(**CIFAR_FAST, recipe="cifar-fast")  # the rest: defaults
    validate_config(config)
    config = cli_config("--recipe", "cifar-fast", "--epochs", "3", "--no-amp", "--lr", "0.05",
                        "--attention", "se")
    assert config == TrainConfig(**{**CIFAR_FAST, "epochs": 3, "amp": "fp32", "lr": 0.05},
                                 attention="se", recipe="cifar-fast")
    assert cli_config("--epochs", "3").recipe is None


def test_unknown_recipe_is_a_one_line_error_with_the_closest_name(capsys):
    from attnres.cli import main

    assert main(["train", "--recipe", "cifar-fats", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'cifar-fats'" in err and "did you mean 'cifar-fast'" in err
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        validate_config(TrainConfig(recipe="nope"))


def test_recipe_is_recorded_in_config_json(tiny_data, tmp_path):
    out = tmp_path / "recipe"
    run_tiny(tiny_data, out, epochs=1, recipe="cifar-fast")
    saved = json.loads((out / "config.json").read_text())
    assert saved["recipe"] == "cifar-fast"
    assert saved == dataclasses.asdict(TrainConfig(**saved))


def test_resume_of_a_missing_run_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"resume=.*no-run.*not found"):
        train(TrainConfig(resume=str(tmp_path / "no-run"), quiet=True))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"resume=.*holds no last\.pt"):
        train(TrainConfig(resume=str(tmp_path / "empty"), quiet=True))


# ------------------------------------------------------------------ a real run, end to end

@pytest.mark.slow
def test_cli_run_on_digits_writes_run_folder(tmp_path, capsys):
    from attnres.cli import main

    out = tmp_path / "run"
    rc = main(["train", "--arch", "resnet20", "--attention", "se", "--data", "digits",
               "--image-size", "8", "--val-split", "0.9", "--epochs", "1", "--batch-size",
               "64", "--lr", "0.05", "--seed", "3", "--out", str(out), "--quiet"])
    assert rc == 0
    for name in ("config.json", "last.pt", "best.pt", "metrics.csv", "summary.json"):
        assert (out / name).is_file(), name
    assert list(out.glob("events.out.tfevents.*"))
    assert not list(out.glob(".*.tmp"))
    config = TrainConfig(**json.loads((out / "config.json").read_text()))
    assert (config.attention, config.seed, config.val_split) == ("se", 3, 0.9)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    summary = json.loads((out / "summary.json").read_text())
    for key in ("best_val_top1", "best_val_top5", "last_val_top1", "last_val_top5", "params",
                "train_time_s", "train_images_per_s", "peak_train_mem_mb", "epochs",
                "finished", "config"):
        assert key in summary, key
    assert summary["finished"] is True and summary["epochs"] == 1
    assert summary["config"] == json.loads((out / "config.json").read_text())

    # the saved model, rebuilt from the checkpoint alone, scores what the run reported
    model = load_model(out / "last.pt")
    assert not model.training
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    data = attnres.data.load_dataset("digits", val_split=0.9, seed=0, image_size=8)
    pre = model.preprocessing
    assert pre["classes"] == data.classes and pre["image_size"] == 8
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((data.val.images.float() / 255 - mean) / std)
    labels = data.val.labels
    top1 = (logits.argmax(1) == labels).double().mean().item() * 100
    top5 = (logits.topk(5, 1).indices == labels[:, None]).any(1).double().mean().item() * 100
    loss = F.cross_entropy(logits, labels).item()
    assert summary["last_val_top1"] == pytest.approx(top1, abs=1e-6)
    assert summary["last_val_top5"] == pytest.approx(top5, abs=1e-6)
    assert float(rows[0]["val_loss"]) == pytest.approx(loss, rel=1e-4)


def test_checkpoint_holds_everything_for_resume(reference_run):
    ckpt = load_checkpoint(reference_run / "last.pt")
    for key in ("model", "build_args", "optimizer", "scheduler", "scaler", "epoch", "rng",
                "config", "preprocessing", "metrics"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 2 and ckpt["batch"] == 0
    assert ckpt["scheduler"]["last_epoch"] == 2 * STEPS_PER_EPOCH
    assert ckpt["config"]["attention"] == "cbam" and len(ckpt["metrics"]) == 2
    best = load_checkpoint(reference_run / "best.pt")
    best_epoch = max(ckpt["metrics"], key=lambda r: r["val_top1"])["epoch"]
    assert best["epoch"] == best_epoch


# ------------------------------------------------------------------ determinism

def test_same_seed_gives_bit_identical_weights(tiny_data, reference_run, tmp_path):
    run_tiny(tiny_data, tmp_path / "again")
    reference = load_checkpoint(reference_run / "last.pt")
    again = load_checkpoint(tmp_path / "again" / "last.pt")
    assert_same_state(reference["model"], again["model"])
    assert_same_momentum(reference["optimizer"], again["optimizer"])

    run_tiny(tiny_data, tmp_path / "other", seed=1)
    other = load_checkpoint(tmp_path / "other" / "last.pt")["model"]
    assert not torch.equal(other["conv1.weight"], reference["model"]["conv1.weight"])


def test_loader_is_a_pure_function_of_seed_and_epoch(tiny_data):
    from attnres.data import make_loaders

    data = tiny_dataset(str(tiny_data))
    loader, _ = make_loaders(data, 32, seed=5)

    def epoch_batches(epoch):
        loader.set_epoch(epoch)
        return [x for x, _ in loader]

    first = epoch_batches(1)
    epoch_batches(0)
    again = epoch_batches(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], epoch_batches(2)[0])


# ------------------------------------------------------------------ interrupted runs

def interrupted_run(data: Path, out: Path, signal_name: str, at_step: int,
                    extra_args: tuple[str, ...] = ()) -> int:
    """Run the tiny CLI training (plus `extra_args`) in a subprocess that signals itself
    after optimizer step `at_step`; returns its exit status."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook
        torch.set_num_threads({torch.get_num_threads()})
        import attnres.data
        from attnres.cli import main
    """) + inspect.getsource(tiny_dataset) + textwrap.dedent(f"""
        attnres.data.load_dataset = tiny_dataset
        steps = [0]
        def after_step(optimizer, args, kwargs):
            steps[0] += 1
            if steps[0] == {at_step}:
                os.kill(os.getpid(), signal.{signal_name})
        register_optimizer_step_post_hook(after_step)
        sys.exit(main({[*tiny_cli_args(data, out), *extra_args]!r}))
    """)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tiny_data, reference_run,
                                                           tmp_path):
    out = tmp_path / "killed"
    rc = interrupted_run(tiny_data, out, "SIGKILL", at_step=STEPS_PER_EPOCH + 2)
    assert rc == -9
    saved = load_checkpoint(out / "last.pt")
    assert (saved["epoch"], saved["batch"]) == (1, 0)  # lost only the epoch in progress

    with pytest.MonkeyPatch.context() as mp:  # only --resume: the rest comes from the run
        mp.setattr(attnres.data, "load_dataset", tiny_dataset)
        train(TrainConfig(resume=str(out), quiet=True))
    reference = load_checkpoint(reference_run / "last.pt")
    resumed = load_checkpoint(out / "last.pt")
    assert resumed["config"] == {**reference["config"], "out": str(out), "resume": str(out)}
    assert_same_state(reference["model"], resumed["model"])
    assert_same_momentum(reference["optimizer"], resumed["optimizer"])
    assert [r["val_top1"] for r in resumed["metrics"]] == \
        [r["val_top1"] for r in reference["metrics"]]
    assert len(list(csv.DictReader((out / "metrics.csv").open()))) == 2
    assert json.loads((out / "summary.json").read_text())["finished"] is True


@pytest.mark.slow
def test_sigint_saves_mid_epoch_and_resume_is_exact(tiny_data, reference_run, tmp_path):
    out = tmp_path / "interrupted"
    rc = interrupted_run(tiny_data, out, "SIGINT", at_step=STEPS_PER_EPOCH + 1)
    assert rc == 130
    saved = load_checkpoint(out / "last.pt")
    assert saved["epoch"] == 1 and 0 < saved["batch"] < STEPS_PER_EPOCH
    assert json.loads((out / "summary.json").read_text())["finished"] is False

    run_tiny(tiny_data, out, resume=str(out))
    reference = load_checkpoint(reference_run / "last.pt")
    resumed = load_checkpoint(out / "last.pt")
    assert_same_state(reference["model"], resumed["model"])
    assert_same_momentum(reference["optimizer"], resumed["optimizer"])
    # the interrupted epoch's training sums were carried over, not restarted
    for key in ("train_loss", "train_top1", "train_images", "val_loss", "val_top1"):
        assert resumed["metrics"][1][key] == reference["metrics"][1][key], key


def test_resume_refuses_a_changed_recipe(tiny_data, reference_run):
    with pytest.raises(ValueError, match="cannot change lr"):
        run_tiny(tiny_data, reference_run, lr=0.5, resume=str(reference_run))


def test_new_run_refuses_to_overwrite(tiny_data, reference_run):
    with pytest.raises(ValueError, match="already holds a run"):
        run_tiny(tiny_data, reference_run)


# ------------------------------------------------------------------ non-finite loss

def poison_loss(monkeypatch, bad_calls: set[int]) -> None:
    """Make the training loss NaN on the given (1-based) training steps."""
    real = F.cross_entropy
    calls = [0]

    def cross_entropy(logits, target, *args, **kwargs):
        loss = real(logits, target, *args, **kwargs)
        if torch.is_grad_enabled():  # training, not validation
            calls[0] += 1
            if calls[0] in bad_calls:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(F, "cross_entropy", cross_entropy)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path,
                                                             monkeypatch):
    poison_loss(monkeypatch, {STEPS_PER_EPOCH + 2})
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 2") as info:
        run_tiny(tiny_data, out)
    assert str(out / "last.pt") in str(info.value)
    saved = load_checkpoint(out / "last.pt")
    assert saved["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())


def test_skip_nonfinite_tolerates_n_steps(tiny_data, tmp_path, monkeypatch):
    poison_loss(monkeypatch, {STEPS_PER_EPOCH + 2})
    summary = run_tiny(tiny_data, tmp_path / "skip", skip_nonfinite=1)
    assert summary["finished"] is True
    saved = load_checkpoint(tmp_path / "skip" / "last.pt")
    assert saved["nonfinite_steps"] == 1
    assert saved["metrics"][1]["train_images"] == 96 - 32  # the skipped batch is not counted
    assert all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())

    poison_loss(monkeypatch, {1, 2})
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 2"):
        run_tiny(tiny_data, tmp_path / "skip2", skip_nonfinite=1)


# ------------------------------------------------------------------ monitor

def test_monitor_logs_gate_statistics(tiny_data, tmp_path):
    pytest.importorskip("attnres.attention.monitor")
    run_tiny(tiny_data, tmp_path / "mon", epochs=1, monitor=True)
    rows = list(csv.DictReader((tmp_path / "mon" / "metrics.csv").open()))
    value = float(rows[0]["layer1.0.attn/channel_mean"])
    assert 0.0 <= value <= 1.0


# ------------------------------------------------------------------ bad arguments

@pytest.mark.parametrize(("overrides", "message"), [
    ({"batch_size": 0}, "batch_size=0"),
    ({"epochs": 0}, "epochs=0"),
    ({"lr": -1.0}, "lr=-1.0"),
    ({"val_split": 1.5}, "val_split=1.5"),
    ({"schedule": "linear"}, "schedule='linear'"),
    ({"arch": "resnet21"}, "did you mean"),
    ({"attention": "cbma"}, "did you mean 'cbam'"),
    ({"placement": "blok"}, "did you mean 'block'"),
    ({"preset": "nope"}, "unknown preset 'nope'"),
    ({"skip_nonfinite": -1}, "skip_nonfinite=-1"),
    ({"device": "tpu"}, "device='tpu'"),
    ({"ema": 1.0}, "ema=1.0"),
    ({"ema": -0.5}, "ema=-0.5"),
    ({"precise_bn": -1}, "precise_bn=-1"),
])
def test_bad_options_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate_config(TrainConfig(**overrides))


def test_cli_bad_argument_is_one_line(capsys):
    from attnres.cli import main

    assert main(["train", "--batch-size", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "batch_size=0" in err and "Traceback" not in err
    assert main(["train", "--attention-kwargs", "reduction", "--quiet"]) == 2
    assert "name=value" in capsys.readouterr().err


# ------------------------------------------------------------------ precise batch norm

def bn_input_statistics(model: torch.nn.Module, batches: list[torch.Tensor]
                        ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each batch norm of a copy of `model` run in training mode: the mean over
    `batches` of each batch's per-channel input mean and unbiased variance (float64),
    from forward hooks."""
    from attnres.training.bn_recompute import batch_norms

    model = copy.deepcopy(model).train()
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    names = {module: name for name, module in model.named_modules()}

    def hook(module, inputs, output):
        x = inputs[0].double()
        dims = [0, *range(2, x.dim())]
        seen.setdefault(names[module], []).append((x.mean(dims), x.var(dims, unbiased=True)))

    handles = [norm.register_forward_hook(hook) for norm in batch_norms(model)]
    with torch.no_grad():
        for x in batches:
            model(x)
    for handle in handles:
        handle.remove()
    return {name: (torch.stack([m for m, _ in stats]).mean(0),
                   torch.stack([v for _, v in stats]).mean(0)) for name, stats in seen.items()}


def random_batches(count: int, size: int = 6) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    # not standardised: the recomputed statistics must differ from the initial 0 / 1
    return [torch.randn(size, 3, 16, 16, generator=gen) * 2 + 0.5 for _ in range(count)]


def test_precise_bn_is_the_average_of_the_layers_input_statistics():
    from attnres import precise_bn
    from attnres.attention import SafeBatchNorm2d

    model = build_model("resnet20", attention="bam", placement="stage", num_classes=10)
    model.eval()
    assert any(isinstance(m, SafeBatchNorm2d) for m in model.modules())  # BAM's gates
    batches = random_batches(5)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    momenta = {n: m.momentum for n, m in model.named_modules() if hasattr(m, "momentum")}
    expected = bn_input_statistics(model, batches[:3])

    # a longer loader of (images, labels): only the first 3 batches count
    used = precise_bn(model, [(x, torch.zeros(len(x))) for x in batches], 3)
    assert used == 3
    modules = dict(model.named_modules())
    assert expected.keys() == {n for n, m in modules.items()
                               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    for name, (mean, var) in expected.items():
        norm = modules[name]
        torch.testing.assert_close(norm.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(norm.running_var.double(), var, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))
        assert norm.momentum == momenta[name]
    for name, p in model.named_parameters():  # weights frozen
        assert torch.equal(p, weights[name]), name
    assert not any(m.training for m in model.modules())  # modes restored


def test_precise_bn_equals_torch_update_bn():
    from torch.optim.swa_utils import update_bn

    from attnres import precise_bn

    model = build_model("resnet20", attention="cbam", num_classes=10,
                        attention_kwargs={"spatial_norm": "batch"})  # SafeBatchNorm2d in gates
    model.train()
    batches = random_batches(4)
    reference = copy.deepcopy(model)
    update_bn(batches, reference)
    assert precise_bn(model, iter(batches), 10) == 4  # the loader ran out first
    assert model.training
    for (name, ours), (_, theirs) in zip(model.state_dict().items(),
                                         reference.state_dict().items(), strict=True):
        assert torch.equal(ours, theirs), name


def test_precise_bn_refuses_bad_arguments():
    from attnres import precise_bn

    model = build_model("resnet20", num_classes=10)
    with pytest.raises(ValueError, match="batches=0"):
        precise_bn(model, random_batches(1), 0)
    with pytest.raises(ValueError, match="no batches"):
        precise_bn(model, [], 2)


@pytest.mark.slow
def test_precise_bn_after_training_is_recorded_and_saved(tiny_data, reference_run, tmp_path):
    from attnres.data import make_loaders
    from attnres.evaluation import evaluate
    from attnres.training.bn_recompute import precise_bn

    out = tmp_path / "precise"
    summary = run_tiny(tiny_data, out, precise_bn=2)
    result = summary["precise_bn"]
    assert json.loads((out / "summary.json").read_text())["precise_bn"] == result
    assert result["batches"] == 2 and result["images"] == 64
    assert result["val_top1_before"] == summary["last_val_top1"]
    # the same training, untouched: last.pt keeps the trained statistics
    assert_same_state(load_checkpoint(reference_run / "last.pt")["model"],
                      load_checkpoint(out / "last.pt")["model"])

    # precise-bn.pt: the final weights with statistics over two fresh training batches
    data = tiny_dataset(str(tiny_data))
    model = load_model(out / "last.pt")
    loader, _ = make_loaders(data, 32, seed=0)
    loader.set_epoch(2)
    precise_bn(model, loader, 2)
    saved = load_model(out / "precise-bn.pt")
    assert_same_state(model.state_dict(), saved.state_dict())
    after = evaluate(saved, data)
    assert result["val_top1_after"] == pytest.approx(after["top1"], abs=1e-9)
    assert result["val_loss_after"] == pytest.approx(after["loss"], rel=1e-5)


# ------------------------------------------------------------------ EMA of the weights

@pytest.mark.slow
def test_ema_is_the_closed_form_average_of_the_raw_weights(tiny_data, tmp_path):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    import attnres.training.loop as loop

    decay, models, states = 0.7, [], []
    make_ema = loop.make_ema

    def record(*_) -> None:  # the raw weights and buffers the EMA sees
        states.append({k: v.detach().double().clone()
                       for k, v in models[0].state_dict().items() if v.is_floating_point()})

    def capture(model, value):  # the raw model, when its EMA starts
        models.append(model)
        record()
        return make_ema(model, value)

    handle = register_optimizer_step_post_hook(record)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(loop, "make_ema", capture)
            summary = run_tiny(tiny_data, tmp_path / "ema", ema=decay)
    finally:
        handle.remove()
    assert len(states) == 1 + 2 * STEPS_PER_EPOCH  # the start, then after each step

    expected = dict(states[0])  # W_0^ema = W_0, then W^ema <- d W^ema + (1 - d) W_t
    for state in states[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * state[k] for k in expected}
    ema = load_checkpoint(tmp_path / "ema" / "ema.pt")
    assert ema["ema_decay"] == decay and ema["epoch"] == 2
    for key, value in expected.items():  # parameters and batch-norm statistics alike
        torch.testing.assert_close(ema["model"][key].double(), value, rtol=1e-5, atol=1e-6)
    last = load_checkpoint(tmp_path / "ema" / "last.pt")
    assert not torch.allclose(ema["model"]["conv1.weight"], last["model"]["conv1.weight"])
    assert last["ema"]["n_averaged"].item() == 1 + 2 * STEPS_PER_EPOCH

    # validated every epoch next to the raw weights; ema.pt loads and scores what was logged
    from attnres.evaluation import evaluate

    rows = list(csv.DictReader((tmp_path / "ema" / "metrics.csv").open()))
    assert all(float(r["ema_val_top1"]) >= 0 and "ema_val_loss" in r for r in rows)
    result = evaluate(load_model(tmp_path / "ema" / "ema.pt"), tiny_dataset(str(tiny_data)))
    assert float(rows[-1]["ema_val_top1"]) == pytest.approx(result["top1"], abs=1e-9)
    assert summary["last_ema_val_top1"] == float(rows[-1]["ema_val_top1"])
    best = max(rows, key=lambda r: float(r["ema_val_top1"]))
    assert load_checkpoint(tmp_path / "ema" / "ema-best.pt")["epoch"] == int(best["epoch"])


def test_ema_and_precise_bn_options_on_the_command_line():
    config = cli_config("--ema", "0.999", "--precise-bn", "50")
    assert (config.ema, config.precise_bn) == (0.999, 50)
    assert (TrainConfig().ema, TrainConfig().precise_bn) == (0.0, 0)  # off by default


@pytest.mark.slow
def test_sigint_then_resume_with_ema_is_exact(tiny_data, tmp_path):
    reference = tmp_path / "reference-ema"
    run_tiny(tiny_data, reference, ema=0.9)
    out = tmp_path / "interrupted-ema"
    assert interrupted_run(tiny_data, out, "SIGINT", at_step=STEPS_PER_EPOCH + 1,
                           extra_args=("--ema", "0.9")) == 130
    assert "ema" in load_checkpoint(out / "last.pt")
    run_tiny(tiny_data, out, resume=str(out), ema=0.9)
    expected, resumed = load_checkpoint(reference / "last.pt"), load_checkpoint(out / "last.pt")
    assert_same_state(expected["model"], resumed["model"])
    assert_same_state(expected["ema"], resumed["ema"])
    assert_same_state(load_checkpoint(reference / "ema.pt")["model"],
                      load_checkpoint(out / "ema.pt")["model"])
    assert [r["ema_val_top1"] for r in resumed["metrics"]] == \
        [r["ema_val_top1"] for r in expected["metrics"]]
