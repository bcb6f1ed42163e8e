"""`attnres.precision`: native-bf16 detection from cpuinfo text, `resolve_amp`'s decisions on
CPU and (with the CUDA query faked) on GPUs, and `autocast_context`."""

from __future__ import annotations

import pytest
import torch

from attnres.precision import (
    AmpChoice,
    autocast_context,
    cpu_bf16_flags,
    cpu_flags,
    cpu_has_native_bf16,
    cpu_model,
    resolve_amp,
)


def cpuinfo(flags: str, model: str = "Test CPU 9000") -> str:
    """Two processors as Linux prints them."""
    block = (f"processor\t: {{n}}\nvendor_id\t: Fake\nmodel name\t: {model}\n"
             f"flags\t\t: fpu sse2 avx2 {flags}\n\n")
    return block.format(n=0) + block.format(n=1)


SAPPHIRE = cpuinfo("avx512f avx512_bf16 amx_bf16 amx_tile")
ZEN4 = cpuinfo("avx512f avx512_vnni avx512_bf16", model="AMD EPYC 9654")
SKYLAKE = cpuinfo("avx512f avx512_vnni")
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU part\t: 0xd40\n"


@pytest.mark.parametrize("text, native, flags", [
    (SAPPHIRE, True, ["amx_bf16", "avx512_bf16"]),
    (ZEN4, True, ["avx512_bf16"]),
    (SKYLAKE, False, []),
    (ARM, False, []),  # ARM's "bf16" is not one of the x86 flags looked for
    ("", False, []),
])
def test_native_bf16_from_cpuinfo_text(text, native, flags):
    assert cpu_has_native_bf16(text) is native
    assert cpu_bf16_flags(text) == flags


def test_flags_are_whole_words():
    # a flag that merely contains the name does not count
    assert not cpu_has_native_bf16(cpuinfo("avx512_bf16x amx_bf16_beta"))
    assert "avx512_bf16" in cpu_flags(ZEN4) and "avx2" in cpu_flags(ZEN4)


def test_cpuinfo_path_is_injectable(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(ZEN4)
    assert cpu_has_native_bf16(path=path)
    assert cpu_model(path=path) == "AMD EPYC 9654"
    path.write_text(SKYLAKE)
    assert not cpu_has_native_bf16(path=path)
    assert cpu_flags(path=tmp_path / "missing") == set()  # no such file: no flags
    assert cpu_model(ZEN4) == "AMD EPYC 9654"


@pytest.mark.parametrize("request_", ["fp32", "float32", False, None])
def test_fp32_requests(request_):
    choice = resolve_amp(request_, "cpu", cpuinfo=ZEN4)
    assert (choice.enabled, choice.dtype, choice.use_grad_scaler) == (False, "fp32", False)
    assert choice.torch_dtype == torch.float32


@pytest.mark.parametrize("request_", ["auto", True, "AUTO"])
def test_auto_on_cpu_follows_the_flags(request_):
    on = resolve_amp(request_, "cpu", cpuinfo=SAPPHIRE)
    assert (on.enabled, on.dtype, on.use_grad_scaler) == (True, "bf16", False)
    assert "amx_bf16" in on.reason
    off = resolve_amp(request_, torch.device("cpu"), cpuinfo=SKYLAKE)
    assert (off.enabled, off.dtype) == (False, "fp32")
    assert "no native bf16" in off.reason


def test_explicit_bf16_is_honoured_without_native_support():
    choice = resolve_amp("bfloat16", "cpu", cpuinfo=SKYLAKE)
    assert (choice.enabled, choice.dtype, choice.torch_dtype) == (True, "bf16", torch.bfloat16)


@pytest.mark.parametrize("bf16_supported, dtype, scaler", [(True, "bf16", False),
                                                           (False, "fp16", True)])
def test_auto_on_cuda(monkeypatch, bf16_supported, dtype, scaler):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    choice = resolve_amp("auto", "cuda")
    assert (choice.enabled, choice.dtype, choice.use_grad_scaler) == (True, dtype, scaler)
    fp16 = resolve_amp("fp16", "cuda:0")
    assert (fp16.dtype, fp16.use_grad_scaler) == ("fp16", True)


@pytest.mark.parametrize("request_, match", [
    ("bf61", "allowed auto, bf16, fp16, fp32"),
    ("fp23", "did you mean 'fp32'"),
    (16, "allowed"),
])
def test_bad_requests(request_, match):
    with pytest.raises(ValueError, match=match):
        resolve_amp(request_, "cpu")


def test_fp16_needs_cuda():
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_amp("fp16", "cpu")


def test_autocast_context():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast_context(resolve_amp("fp32", "cpu"), "cpu"):
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ b).dtype == torch.float32
    with autocast_context(AmpChoice(True, "bf16", False, "test"), torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")
        assert (a @ b).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")
