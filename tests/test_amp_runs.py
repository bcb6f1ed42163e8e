"""Mixed precision through the commands: `amp="auto"` is the default of train, eval, ablate,
explain and bench; a run records what it resolved to (config.json, summary.json, the
checkpoints); bf16 runs are deterministic and resume bit for bit; older runs' `amp: true`
and `amp_dtype` still load and compare as what they ran.

conftest.py sets ATTNRES_CPU_BF16=0 (auto = fp32 on CPU); these tests set it to 1 where they
need auto to choose bf16, so they hold on any CPU (bf16 autocast runs, emulated, on every x86
CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnres.checkpoint import load_checkpoint
from attnres.precision import CPU_BF16_ENV, resolve_amp
from attnres.training import TrainConfig, upgrade_config_dict
from tiny_run import run_tiny, tiny_dataset


@pytest.fixture
def native_bf16(monkeypatch):
    """auto resolves to bf16 on this CPU, as on one with amx_bf16 / avx512_bf16."""
    monkeypatch.setenv(CPU_BF16_ENV, "1")


def test_auto_is_the_default_everywhere():
    import inspect

    from attnres.analysis.bench import bench
    from attnres.analysis.explain import explain
    from attnres.cli import build_parser
    from attnres.evaluation import evaluate, evaluate_checkpoint

    assert TrainConfig().amp == "auto"
    for fn in (evaluate, evaluate_checkpoint, explain):
        assert inspect.signature(fn).parameters["amp"].default == "auto", fn.__name__
    parser = build_parser()
    assert parser.parse_args(["eval", "--checkpoint", "run"]).amp == "auto"
    assert parser.parse_args(["explain", "--checkpoint", "run", "--out", "x"]).amp == "auto"
    assert parser.parse_args(["eval", "--checkpoint", "run", "--no-amp"]).amp == "fp32"
    assert parser.parse_args(["eval", "--checkpoint", "run", "--amp"]).amp == "auto"
    assert parser.parse_args(["eval", "--checkpoint", "run", "--amp", "bf16"]).amp == "bf16"
    # train and ablate leave it None so that a recipe's value stands; None is TrainConfig's
    assert parser.parse_args(["train"]).amp is None
    assert parser.parse_args(["ablate", "--preset", "modules", "--out", "x"]).amp is None
    assert inspect.signature(bench).parameters["amp"].default == "auto"
    assert parser.parse_args(["bench"]).amp is None  # bench's own: its suite runs both


def test_environment_override_of_the_cpu_flags(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    choice = resolve_amp("auto", "cpu")
    assert (choice.enabled, choice.dtype) == (True, "bf16") and CPU_BF16_ENV in choice.reason
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    choice = resolve_amp("auto", "cpu")
    assert (choice.enabled, choice.dtype) == (False, "fp32") and CPU_BF16_ENV in choice.reason
    # cpuinfo text given explicitly wins over the variable
    assert resolve_amp("auto", "cpu", cpuinfo="flags\t: fpu avx512_bf16\n").dtype == "bf16"
    monkeypatch.setenv(CPU_BF16_ENV, "yes")
    with pytest.raises(ValueError, match=f"{CPU_BF16_ENV}='yes': allowed 0 or 1"):
        resolve_amp("auto", "cpu")


@pytest.mark.parametrize(("old", "new"), [
    ({"amp": True, "amp_dtype": "bfloat16"}, "bf16"),
    ({"amp": True, "amp_dtype": "float16"}, "fp16"),
    ({"amp": True}, "bf16"),
    ({"amp": False, "amp_dtype": "bfloat16"}, "fp32"),
    ({"amp": "auto"}, "auto"),
    ({"amp": "bf16"}, "bf16"),
])
def test_old_amp_fields_are_upgraded(old, new):
    upgraded = upgrade_config_dict({"arch": "resnet20", **old})
    assert upgraded == {"arch": "resnet20", "amp": new, "tta": "none"}
    assert "amp_dtype" in old or upgraded is not old  # a copy, the input is left alone


def test_bad_amp_is_a_one_line_error():
    from attnres.training import validate_config

    for bad, words in (("fp61", "did you mean 'fp16'"), (1, "allowed auto, bf16, fp16, fp32")):
        with pytest.raises(ValueError, match=words):
            validate_config(TrainConfig(amp=bad))


def _records(out: Path) -> tuple[str, dict, str]:
    config = json.loads((out / "config.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    ckpt = load_checkpoint(out / "last.pt")
    assert config["amp"] == summary["config"]["amp"] == ckpt["config"]["amp"]
    return config["amp"], summary["precision"], ckpt["config"]["amp"]


def test_a_run_records_what_auto_chose(tiny_data, tmp_path, native_bf16, capsys):
    run_tiny(tiny_data, tmp_path / "bf16", epochs=1, quiet=False)
    amp, precision, _ = _records(tmp_path / "bf16")
    assert amp == "bf16" and precision["amp"] == "bf16"
    assert CPU_BF16_ENV in precision["reason"] and precision["device"] == "cpu"
    assert isinstance(precision["cpu"], str) and isinstance(precision["cpu_bf16_flags"], list)
    printed = [line for line in capsys.readouterr().err.splitlines() if "precision:" in line]
    assert printed == [f"precision: bf16 ({precision['reason']})"]  # once, at the start

    run_tiny(tiny_data, tmp_path / "fp32", epochs=1, amp="fp32")
    assert _records(tmp_path / "fp32")[0] == "fp32"


def test_bf16_runs_are_deterministic_and_resume_bit_for_bit(tiny_data, tmp_path, native_bf16):
    reference = tmp_path / "reference"
    run_tiny(tiny_data, reference)  # auto: bf16 here
    assert _records(reference)[0] == "bf16"
    again = tmp_path / "again"
    run_tiny(tiny_data, again, amp="bf16")
    first, second = (load_checkpoint(p / "last.pt") for p in (reference, again))
    for key, value in first["model"].items():
        assert torch.equal(value, second["model"][key]), key

    stopped = tmp_path / "stopped"
    run_tiny(tiny_data, stopped, max_time=1e-9)  # stops after step 1, mid-epoch
    assert (load_checkpoint(stopped / "last.pt")["epoch"],
            load_checkpoint(stopped / "last.pt")["batch"]) == (0, 1)
    run_tiny(tiny_data, stopped, resume=str(stopped))
    resumed = load_checkpoint(stopped / "last.pt")
    assert resumed["config"]["amp"] == "bf16"
    for key, value in first["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert [r["train_loss"] for r in first["metrics"]] == \
        [r["train_loss"] for r in resumed["metrics"]]


def test_resume_keeps_the_precision_the_run_chose(tiny_data, tmp_path, monkeypatch):
    """A run that auto made bf16 continues in bf16 on a machine where auto means fp32."""
    out = tmp_path / "run"
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    run_tiny(tiny_data, out, max_time=1e-9)
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    run_tiny(tiny_data, out, resume=str(out), amp="auto")
    assert _records(out)[0] == "bf16"
    with pytest.raises(ValueError, match="cannot change amp when resuming"):
        run_tiny(tiny_data, out, resume=str(out), amp="fp32")


def test_fp32_and_bf16_runs_differ_but_stay_close(tiny_data, tmp_path):
    """bf16 is really used (the weights differ from fp32's) and trains as well here."""
    fp32 = run_tiny(tiny_data, tmp_path / "fp32", amp="fp32")
    bf16 = run_tiny(tiny_data, tmp_path / "bf16", amp="bf16")
    a = load_checkpoint(tmp_path / "fp32" / "last.pt")["model"]["conv1.weight"]
    b = load_checkpoint(tmp_path / "bf16" / "last.pt")["model"]["conv1.weight"]
    assert not torch.equal(a, b)
    assert torch.allclose(a, b, atol=0.05)
    assert abs(fp32["last_val_top1"] - bf16["last_val_top1"]) <= 25.0  # 64 images, 2 epochs


def test_eval_in_bf16_reproduces_the_runs_own_validation(tiny_data, tmp_path, monkeypatch,
                                                         native_bf16):
    """eval's auto makes the same choice as train's and the same layout, so the checkpoint
    scores exactly what its run measured; --no-amp scores it in fp32."""
    import attnres.data
    from attnres.evaluation import evaluate_checkpoint

    out = tmp_path / "run"
    summary = run_tiny(tiny_data, out)
    monkeypatch.setattr(attnres.data, "load_dataset", tiny_dataset)
    monkeypatch.setattr("attnres.evaluation.load_dataset", tiny_dataset)
    result = evaluate_checkpoint(out, str(tiny_data), out=tmp_path / "eval")
    assert result["amp"] == "bf16" and CPU_BF16_ENV in result["amp_reason"]
    # the same arithmetic; at most one of 64 images may flip with the batch size's blocking
    assert result["top1"] == pytest.approx(summary["best_val_top1"], abs=100 / 64 + 1e-9)
    fp32 = evaluate_checkpoint(out, str(tiny_data), out=tmp_path / "eval32", amp="fp32")
    assert fp32["amp"] == "fp32"
    assert abs(fp32["top1"] - result["top1"]) <= 100 * 4 / 64  # a few of 64 images at most
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["amp"] == "bf16"


def test_explain_under_bf16(tiny_data, tmp_path, native_bf16):
    """Grad-CAM runs under bf16 autocast (the grad-cam package reads through numpy, which has
    no bf16) and its maps stay close to fp32's."""
    from attnres.analysis.explain import explain

    run_tiny(tiny_data, tmp_path / "run", epochs=1, attention="cbam")
    images = [(tiny_dataset(str(tiny_data)).val.images[i].permute(1, 2, 0).numpy())
              for i in range(2)]
    results = {}
    for amp in ("auto", "fp32"):
        summary = explain([tmp_path / "run" / "last.pt"], images, out=tmp_path / amp, amp=amp)
        results[amp] = summary
    assert (results["auto"]["amp"], results["fp32"]["amp"]) == ("bf16", "fp32")
    for a, b in zip(results["auto"]["results"], results["fp32"]["results"]):
        assert 0.0 <= a["cam"]["min"] <= a["cam"]["max"] <= 1.0
        assert a["cam"]["mean"] == pytest.approx(b["cam"]["mean"], abs=0.15)


def test_ablation_compares_old_and_new_precision_fields():
    from attnres.ablation import recipe_differences

    old = {"arch": "resnet20", "amp": True, "amp_dtype": "bfloat16", "epochs": 30}
    assert recipe_differences(old, {"arch": "resnet20", "amp": "bf16", "epochs": 30}) == []
    assert recipe_differences(old, {"arch": "resnet20", "amp": "auto", "epochs": 30}) == []
    assert recipe_differences({**old, "amp": False}, {"arch": "resnet20", "amp": "bf16",
                                                      "epochs": 30}) == ["amp (fp32 vs bf16)"]
