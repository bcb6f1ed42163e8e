"""`attnres bench` / `attnres profile` and the measuring functions behind them (tiny sizes:
these check the plumbing and the measuring methods, not speed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from attnres.analysis import bench as bench_module
from attnres.analysis import suite as suite_module
from attnres.analysis.bench import (bench, format_bench, peak_step_memory, time_interleaved,
                                    timm_model)
from attnres.analysis.profile import activation_bytes, profile_model
from attnres.analysis.suite import format_suite, suite
from attnres.attention import attention_spec, list_attention
from attnres.cli import main
from attnres.precision import cpu_bf16_flags, cpu_model


def test_time_interleaved_takes_turns_and_returns_medians():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    result = time_interleaved(fns, warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4
    assert set(result) == {"a", "b"} and all(v >= 0 for v in result.values())


def test_peak_step_memory_counts_live_tensors_on_cpu():
    n = 1 << 20  # 1 MiB of float32 per tensor

    def one_at_a_time():
        for _ in range(3):
            t = torch.empty(n // 4)
            t.fill_(1)
            del t

    def two_alive():
        a = torch.empty(n // 4)
        b = torch.empty(n // 4)
        a.fill_(1)
        b.fill_(1)

    one = peak_step_memory(one_at_a_time, torch.device("cpu"))
    two = peak_step_memory(two_alive, torch.device("cpu"))
    if one is None:
        pytest.skip("this torch's profiler does not expose memory events")
    assert n <= one < n + 64 * 1024
    assert 2 * n <= two < 2 * n + 64 * 1024


def test_activation_bytes_by_hand():
    # conv keeps its input (B, 3, 8, 8); ReLU keeps its output (B, 4, 8, 8); weights excluded
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    x = torch.randn(2, 3, 8, 8)
    assert activation_bytes(model, x) == 4 * (2 * 3 * 8 * 8 + 2 * 4 * 8 * 8)


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_bench_result(mode):
    r = bench("resnet20", "cbam", batch_size=2, image_size=8, mode=mode, repeats=1, warmup=1)
    for key in ("baseline_ms", "attnres_ms", "attnres_ratio"):
        assert r[key] > 0
    assert r["attnres_ratio"] == pytest.approx(r["attnres_ms"] / r["baseline_ms"])
    assert r["timm_ms"] is None and r["timm_ratio"] is None
    assert r["attnres_params"] > r["baseline_params"]
    if mode == "train":
        assert r["attnres_peak_mem_mb"] > 0 and r["baseline_peak_mem_mb"] > 0
        assert r["peak_mem_ratio"] == pytest.approx(r["attnres_peak_mem_mb"]
                                                    / r["baseline_peak_mem_mb"])
    else:
        assert r["peak_mem_ratio"] is None
    json.dumps(r)


def test_bench_compares_with_timm():
    pytest.importorskip("timm")
    r = bench("resnet18", "se", batch_size=1, image_size=32, repeats=1, warmup=1,
              compare=("timm",))
    assert r["timm_ms"] > 0 and r["timm_ratio"] == pytest.approx(r["timm_ms"]
                                                                 / r["baseline_ms"])
    assert r["timm_params"] > r["baseline_params"]


@pytest.mark.parametrize("kwargs, match", [
    ({"arch": "resnet20", "attention": "cbam", "compare": ("timm",)}, "no timm counterpart"),
    ({"arch": "resnet20", "attention": "cbma"}, "allowed"),
    ({"arch": "resnet20", "attention": "cbam", "mode": "fit"}, "mode"),
    ({"arch": "resnet20", "attention": "cbam", "device": "tpu"}, "device"),
    ({"arch": "resnet20", "attention": "se", "impl": "triton"}, "for 'se': fast, reference"),
    ({"arch": "resnet20", "attention": "cbam", "amp": "fp61"}, "did you mean 'fp16'"),
    ({"arch": "resnet20", "attention": "cbam", "clock": "sundial"}, "allowed wall, cpu"),
])
def test_bench_bad_input(kwargs, match):
    if kwargs.get("compare"):
        pytest.importorskip("timm")
    with pytest.raises(ValueError, match=match):
        bench(**kwargs, repeats=1, warmup=0)


def test_cli_bench_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--arch", "resnet20", "--attention", "se", "--batch-size", "2",
               "--image-size", "8", "--repeats", "1", "--warmup", "1", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    for key in ("baseline_ms", "attnres_ms", "timm_ms", "attnres_ratio", "timm_ratio",
                "peak_mem_ratio", "batch_size", "arch", "attention", "mode", "device"):
        assert key in data
    assert "attnres" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cli_bench_cuda_without_cuda(capsys):
    rc = main(["bench", "--arch", "resnet20", "--device", "cuda", "--repeats", "1"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "CUDA is not available" in err and len(err.splitlines()) == 1


def test_profile_model_and_cli(tmp_path, capsys):
    r = profile_model("resnet20", "cbam", batch_size=2, image_size=8, repeats=1)
    base, attn = r["baseline"], r["attnres"]
    assert attn["params"] > base["params"] and attn["flops"] > base["flops"]
    assert attn["activation_mb"] > base["activation_mb"] > 0
    assert "FlopCounterMode" in r["flop_counter"]
    out = tmp_path / "p.json"
    assert main(["profile", "--arch", "resnet20", "--attention", "none", "--batch-size", "1",
                 "--image-size", "8", "--repeats", "1", "--json", str(out)]) == 0
    assert "attnres" not in json.loads(out.read_text())
    assert "GFLOPs" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_bench_bf16_channels_last(mode):
    r = bench("resnet20", "cbam", batch_size=2, image_size=8, mode=mode, repeats=1, warmup=1,
              amp="bf16", channels_last=True, clock="cpu")
    assert (r["amp"], r["channels_last"], r["clock"]) == ("bf16", True, "cpu")
    assert "bf16" in r["amp_reason"]
    for name in ("baseline", "attnres"):  # throughput is the batch over the median time
        assert r[f"{name}_images_per_s"] == pytest.approx(2 / (r[f"{name}_ms"] / 1e3))


def test_timm_names_come_from_the_registry():
    timm = pytest.importorskip("timm")
    del timm
    without = [n for n in list_attention() if attention_spec(n).timm_name is None]
    assert "bam" in without
    covered = ", ".join(n for n in list_attention() if attention_spec(n).timm_name)
    assert {"cbam", "eca", "se"} <= set(covered.split(", "))
    with pytest.raises(ValueError, match=f"no timm counterpart.*cover {covered}"):
        timm_model("resnet18", without[0], 10)
    model = timm_model("resnet18", "eca", 10)
    assert any(type(m).__name__.lower().startswith("eca") for m in model.modules())


TINY_SUITE = dict(rounds=1, warmup=0, train_batch=2, train_image_size=8, attentions=["cbam"],
                  infer_arch="resnet18", infer_batches=(1,), infer_image_size=32)


def test_suite_table():
    r = suite(**TINY_SUITE)
    train, infer = r["train"], r["infer"]
    assert train["models"] == ["plain", "cbam"]
    for p in ("bf16", "fp32"):
        rows = train[p]
        assert rows["cbam"]["ratio"] == pytest.approx(rows["cbam"]["ms"] / rows["plain"]["ms"])
        assert rows["plain"]["ratio"] == 1.0
        if rows["plain"]["peak_mem_mb"] is not None:
            assert rows["cbam"]["mem_ratio"] == pytest.approx(
                rows["cbam"]["peak_mem_mb"] / rows["plain"]["peak_mem_mb"])
        row = infer["batch1"][p]
        assert row["cbam"]["ratio"] == pytest.approx(row["cbam"]["ms"] / row["plain"]["ms"])
    assert train["bf16_speedup"] == pytest.approx(train["fp32"]["plain"]["ms"]
                                                  / train["bf16"]["plain"]["ms"])
    assert r["settings"]["precisions"]["bf16"]["dtype"] == "bf16"
    assert r["machine"]["cpu"] == cpu_model()
    assert r["machine"]["cpu_bf16_flags"] == cpu_bf16_flags()
    md = format_suite(r)
    assert cpu_model() in md and "| bf16 step time | 1.00" in md and "+cbam" in md
    assert "| fp32, batch 1 |" in md and "bf16 autocast against fp32" in md
    json.dumps(r)


def test_suite_bad_input():
    with pytest.raises(ValueError, match="precisions"):
        suite(**{**TINY_SUITE, "precisions": ("fp8",)})
    with pytest.raises(ValueError, match="allowed"):
        suite(**{**TINY_SUITE, "attentions": ["cbma"]})


@pytest.mark.slow
def test_cli_suite_writes_json_and_markdown(tmp_path, capsys, monkeypatch):
    real = suite_module.suite
    monkeypatch.setattr(suite_module, "suite", lambda **kw: real(**{**kw, **TINY_SUITE}))
    out = tmp_path / "suite"
    assert main(["bench", "--suite", "--out", str(out), "--rounds", "1", "--clock", "cpu"]) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "suite.json").read_text())
    assert data["settings"]["clock"] == "cpu" and data["settings"]["channels_last"] is True
    assert (out / "suite.md").read_text() in printed
    assert main(["bench", "--suite", "--amp", "bf16"]) == 2  # the suite runs both precisions
    assert "drop --amp" in capsys.readouterr().err


def _fake_samples(seconds: dict[str, list[float]]):
    """A stand-in for `time_interleaved_samples` giving each candidate known samples (the
    i-th candidate in call order gets `seconds[i]`), without running anything."""
    def fake(fns, *, warmup, repeats, clock):
        del warmup, clock
        keys = list(seconds)
        return {name: seconds[keys[i % len(keys)]][:repeats] for i, name in enumerate(fns)}
    return fake


KNOWN = {"a": [0.005, 0.001, 0.009, 0.002, 0.003],  # unsorted, one outlier
         "b": [0.010, 0.030, 0.020, 0.050, 0.012]}


def _expected_ms(samples: list[float]) -> tuple[float, float, float]:
    ms = np.array(samples) * 1e3
    return float(np.median(ms)), *map(float, np.percentile(ms, [25, 75]))


def test_bench_reports_the_spread_of_known_samples(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_module, "time_interleaved_samples", _fake_samples(KNOWN))
    out = tmp_path / "bench.json"
    assert main(["bench", "--arch", "resnet20", "--attention", "se", "--batch-size", "2",
                 "--image-size", "8", "--repeats", "5", "--warmup", "0", "--threads", "1",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    for name, key in (("baseline", "a"), ("attnres", "b")):
        median, q1, q3 = _expected_ms(KNOWN[key])
        assert data[f"{name}_ms"] == pytest.approx(median)
        assert data[f"{name}_ms_iqr"] == pytest.approx([q1, q3])
        assert data[f"{name}_samples"] == 5
        assert data[f"{name}_images_per_s"] == pytest.approx(2 / (median / 1e3))
        line = next(x for x in printed.splitlines() if x.startswith(name))
        assert f"{median:.2f}" in line and f"{q1:.2f}-{q3:.2f}" in line
    assert data["attnres_ratio"] == pytest.approx(_expected_ms(KNOWN["b"])[0]
                                                  / _expected_ms(KNOWN["a"])[0])
    assert data["timm_ms_iqr"] is None and data["timm_samples"] is None
    header = printed.splitlines()[0]
    assert "medians of 5 interleaved runs" in header and "interquartile" in header
    assert "1 thread," in header  # not "1 threads"
    # inference has no memory figures: no empty memory columns
    assert "peak MiB" not in printed and "mem ratio" not in printed


def test_bench_text_keeps_memory_columns_in_train_mode():
    r = bench("resnet20", "se", batch_size=2, image_size=8, mode="train", repeats=2, warmup=0,
              threads=1)
    text = format_bench(r)
    assert "peak MiB" in text and "IQR ms" in text
    for name in ("baseline", "attnres"):
        q1, q3 = r[f"{name}_ms_iqr"]
        assert q1 <= r[f"{name}_ms"] <= q3 and r[f"{name}_samples"] == 2
        line = next(x for x in text.splitlines() if x.startswith(name))
        assert f"{q1:.2f}-{q3:.2f}" in line and f"{r[f'{name}_peak_mem_mb']:.1f}" in line


def test_suite_markdown_and_json_carry_the_spread(monkeypatch):
    monkeypatch.setattr(bench_module, "time_interleaved_samples", _fake_samples(KNOWN))
    r = suite(**{**TINY_SUITE, "rounds": 5, "memory": False})
    md = format_suite(r)
    assert "interquartile" in md
    # candidates are timed plain, +cbam per precision, so they get "a", "b", "a", "b"
    runs = [r["train"]["bf16"], r["train"]["fp32"], r["infer"]["batch1"]["bf16"],
            r["infer"]["batch1"]["fp32"]]
    for run in runs:
        for model, key in (("plain", "a"), ("cbam", "b")):
            assert run[model]["samples"] == 5
            assert [run[model]["ms"], *run[model]["ms_iqr"]] == pytest.approx(
                list(_expected_ms(KNOWN[key])))
    # every model's cell: "median [q1-q3]" in ms, in a row of its own per precision / batch
    cells = {f"{m:.1f} [{a:.1f}-{b:.1f}]" for m, a, b in map(_expected_ms, KNOWN.values())}
    spread_rows = [line for line in md.splitlines() if "ms [IQR] |" in line]
    assert len(spread_rows) == 4  # train bf16, fp32; infer batch 1 bf16, fp32
    for line in spread_rows:
        found = [c.strip() for c in line.strip("|").split("|")[1:]]
        assert found and set(found) <= cells


def test_bench_compile_compiles_every_model_before_timing(monkeypatch, capsys):
    """--compile goes through torch.compile once per model, before the timed runs; the
    compilation needs an untimed warm-up run. (torch.compile is replaced by a recorder here:
    compiling for real takes minutes on CPU.)"""
    import torch

    from attnres.cli import main

    compiled = []

    def fake_compile(model, **kwargs):
        compiled.append(type(model).__name__)
        return model
    monkeypatch.setattr(torch, "compile", fake_compile)
    r = bench("resnet18", "cbam", batch_size=1, image_size=32, repeats=1, warmup=1,
              compare=("timm",), compile=True)
    assert r["compile"] is True and len(compiled) == 3  # baseline, attnres, timm
    assert "torch.compile" in format_bench(r)
    assert bench("resnet20", "se", batch_size=2, image_size=8, repeats=1, warmup=0)[
        "compile"] is False
    with pytest.raises(ValueError, match="warmup=0.*with compile"):
        bench("resnet20", "se", batch_size=2, image_size=8, repeats=1, warmup=0, compile=True)
    assert main(["bench", "--suite", "--compile"]) == 2
    assert "drop --amp / --impl / --compile" in capsys.readouterr().err
