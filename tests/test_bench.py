"""`attnres bench` / `attnres profile` and the measuring functions behind them (tiny sizes:
these check the plumbing and the measuring methods, not speed)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from attnres.analysis.bench import bench, peak_step_memory, time_interleaved
from attnres.analysis.profile import activation_bytes, profile_model
from attnres.cli import main


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
    ({"arch": "resnet20", "attention": "bam", "impl": "fast"}, "impl"),
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
