"""AttentionMonitor and find_saturation, checked against gates computed by hand (numpy,
float64) from the modules' weights with the papers' formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from attnres.attention.monitor import AttentionMonitor, find_saturation
from attnres.attention import (
    BAM, CBAM, EfficientChannelAttention, SqueezeExcite, attention_spec, create_attention,
    list_attention)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0)


def numpy_conv_2to1(x: np.ndarray, weight: np.ndarray, bias: float) -> np.ndarray:
    """Zero-padded 'same' convolution, x (B, 2, H, W), weight (1, 2, k, k) -> (B, 1, H, W)."""
    b, _, h, w = x.shape
    k = weight.shape[-1]
    pad = k // 2
    xp = np.zeros((b, 2, h + 2 * pad, w + 2 * pad))
    xp[:, :, pad:pad + h, pad:pad + w] = x
    out = np.full((b, 1, h, w), bias, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            out[:, 0, i, j] += (xp[:, :, i:i + k, j:j + k] * weight[0]).sum(axis=(1, 2, 3))
    return out


def cbam_gates_by_hand(module: CBAM, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CBAM eqs. 2-3: Mc = sigmoid(W1 relu(W0 avg) + W1 relu(W0 max)) (no MLP bias),
    Ms = sigmoid(conv7([mean_c F'; max_c F'])) with F' = Mc * F."""
    w0 = module.channel_gate.fc1.weight.detach().double().numpy()
    w1 = module.channel_gate.fc2.weight.detach().double().numpy()
    avg, mx = x.mean(axis=(2, 3)), x.max(axis=(2, 3))
    mc = sigmoid(relu(avg @ w0.T) @ w1.T + relu(mx @ w0.T) @ w1.T)  # (B, C)
    refined = x * mc[:, :, None, None]
    pooled = np.concatenate([refined.mean(axis=1, keepdims=True),
                             refined.max(axis=1, keepdims=True)], axis=1)
    conv = module.spatial_gate.conv
    ms = sigmoid(numpy_conv_2to1(pooled, conv.weight.detach().double().numpy(),
                                 float(conv.bias.detach())))
    return mc, ms


def se_gate_by_hand(module: SqueezeExcite, x: np.ndarray) -> np.ndarray:
    """SE: sigmoid(W2 relu(W1 avg + b1) + b2), (B, C)."""
    fc1, fc2 = module.gate.fc1, module.gate.fc2
    w1, b1 = fc1.weight.detach().double().numpy(), fc1.bias.detach().double().numpy()
    w2, b2 = fc2.weight.detach().double().numpy(), fc2.bias.detach().double().numpy()
    return sigmoid(relu(x.mean(axis=(2, 3)) @ w1.T + b1) @ w2.T + b2)


def normalised_entropy(maps: np.ndarray) -> np.ndarray:
    """maps (N, K) of positive values -> H(p) / log K for p = maps / sum."""
    p = maps / maps.sum(axis=1, keepdims=True)
    return -(p * np.log(p)).sum(axis=1) / np.log(maps.shape[1])


def check_stats(stats: dict[str, float], kind: str, values: np.ndarray) -> None:
    assert stats[f"{kind}_mean"] == pytest.approx(values.mean(), abs=1e-6)
    assert stats[f"{kind}_std"] == pytest.approx(values.std(), abs=1e-6)
    assert stats[f"{kind}_min"] == pytest.approx(values.min(), abs=1e-6)
    assert stats[f"{kind}_max"] == pytest.approx(values.max(), abs=1e-6)
    assert stats[f"{kind}_frac_below_0.05"] == pytest.approx((values < 0.05).mean())
    assert stats[f"{kind}_frac_above_0.95"] == pytest.approx((values > 0.95).mean())


def two_batches(channels: int = 16, size: int = 6) -> list[torch.Tensor]:
    """Two batches of different sizes, so an average of batch means would be wrong."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(3, channels, size, size, generator=g),
            torch.randn(1, channels, size, size, generator=g) * 2 + 0.5]


def test_cbam_statistics_equal_hand_computation() -> None:
    torch.manual_seed(1)
    cbam = CBAM(16, reduction=4).eval()
    with torch.no_grad():  # spread the gates out so the statistics are not all ~0.5
        cbam.channel_gate.fc2.weight.mul_(6)
        cbam.spatial_gate.conv.weight.mul_(8)
    batches = two_batches()
    with AttentionMonitor(cbam) as monitor, torch.no_grad():
        for x in batches:
            cbam(x)
    mc, ms = zip(*(cbam_gates_by_hand(cbam, x.double().numpy()) for x in batches))
    channel, spatial = np.concatenate(mc), np.concatenate(ms)  # (B, C), (B, 1, H, W)
    assert 0.02 < channel.std() and 0.02 < spatial.std()  # the test data is not degenerate
    summary = monitor.summary()
    assert list(summary) == ["CBAM"]
    stats = summary["CBAM"]
    check_stats(stats, "channel", channel)
    check_stats(stats, "spatial", spatial)
    entropy = normalised_entropy(spatial.reshape(len(spatial), -1))
    assert stats["spatial_entropy"] == pytest.approx(entropy.mean(), abs=1e-6)
    assert monitor.batches == 2


def test_se_statistics_equal_hand_computation_per_batch_and_aggregated() -> None:
    torch.manual_seed(2)
    se = SqueezeExcite(16, reduction=4)
    with torch.no_grad():
        se.gate.fc2.weight.mul_(10)
        se.gate.fc2.bias.fill_(-1.0)
    batches = two_batches()
    monitor = AttentionMonitor(se)
    with monitor:
        for x in batches:  # training mode, with gradients: the hooks must not get in the way
            se(x.requires_grad_()).sum().backward()
    gates = [se_gate_by_hand(se, x.detach().double().numpy()) for x in batches]
    check_stats(monitor.summary()["SqueezeExcite"], "channel", np.concatenate(gates))
    check_stats(monitor.last_batch()["SqueezeExcite"], "channel", gates[-1])
    assert "spatial_mean" not in monitor.summary()["SqueezeExcite"]
    monitor.reset()
    assert monitor.summary() == {} and monitor.batches == 0


def test_entropy_extremes_and_single_position_maps() -> None:
    cbam = CBAM(8, reduction=2, channel=False)  # spatial gate only
    with torch.no_grad():
        cbam.spatial_gate.conv.weight.zero_()
        cbam.spatial_gate.conv.bias.fill_(0.3)
    with AttentionMonitor(cbam) as flat:
        cbam(torch.randn(2, 8, 5, 5))
    assert flat.summary()["CBAM"]["spatial_entropy"] == pytest.approx(1.0, abs=1e-6)

    # A map that is ~1 at one position and ~0 elsewhere: entropy near 0.
    with torch.no_grad():
        cbam.spatial_gate.conv.weight.zero_()
        cbam.spatial_gate.conv.weight[0, 0, 3, 3] = 200.0  # follows the channel mean
        cbam.spatial_gate.conv.bias.fill_(-100.0)
    x = torch.zeros(1, 8, 5, 5)
    x[0, :, 2, 3] = 1.0
    with AttentionMonitor(cbam) as peaked:
        cbam(x)
    assert peaked.summary()["CBAM"]["spatial_entropy"] < 1e-3

    with AttentionMonitor(cbam) as one_by_one:  # 1x1 maps: entropy undefined, left out
        cbam(torch.randn(4, 8, 1, 1))
    stats = one_by_one.summary()["CBAM"]
    assert "spatial_mean" in stats and "spatial_entropy" not in stats


class TwoStages(nn.Module):
    """Attention modules of the same kind at several places, named like a ResNet's."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
        self.layer1.add_module("attn", SqueezeExcite(8, reduction=2))
        self.layer2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))
        self.layer2.add_module("attn", SqueezeExcite(8, reduction=2))
        self.layer3 = nn.Sequential(EfficientChannelAttention(8), BAM(8, reduction=2),
                                    CBAM(8, reduction=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(x)))


def test_modules_of_one_kind_are_told_apart_by_name() -> None:
    model = TwoStages().eval()
    with torch.no_grad():
        model.layer1.attn.gate.fc2.bias.fill_(3.0)   # gates ~0.95
        model.layer2.attn.gate.fc2.bias.fill_(-3.0)  # gates ~0.05
    with AttentionMonitor(model) as monitor, torch.no_grad():
        model(torch.randn(2, 3, 6, 6))
    summary = monitor.summary()
    assert sorted(summary) == ["layer1.attn", "layer2.attn", "layer3.0", "layer3.1", "layer3.2"]
    assert summary["layer1.attn"]["channel_mean"] > 0.9
    assert summary["layer2.attn"]["channel_mean"] < 0.1
    assert set(summary["layer3.0"]) == {k for k in summary["layer1.attn"]}  # ECA: channel only
    # BAM's full map is reported as both kinds, with the same values.
    bam = summary["layer3.1"]
    assert bam["channel_mean"] == bam["spatial_mean"] and "spatial_entropy" in bam
    assert {"channel_mean", "spatial_mean", "spatial_entropy"} <= set(summary["layer3.2"])


def test_hooks_are_removed_on_exit() -> None:
    model = TwoStages()
    before = sum(len(m._forward_hooks) for m in model.modules())
    with AttentionMonitor(model) as monitor:
        assert sum(len(m._forward_hooks) for m in model.modules()) > before
        model(torch.randn(1, 3, 4, 4))
    assert sum(len(m._forward_hooks) for m in model.modules()) == before
    seen = monitor.summary()
    model(torch.randn(1, 3, 4, 4))  # not recorded any more
    assert monitor.summary() == seen and monitor.batches == 1

    with pytest.raises(RuntimeError), AttentionMonitor(model):
        raise RuntimeError("an error inside the block")
    assert sum(len(m._forward_hooks) for m in model.modules()) == before


def test_find_saturation_flags_forced_saturation_and_not_a_healthy_module() -> None:
    torch.manual_seed(3)
    model = nn.Sequential()
    model.add_module("cbam", CBAM(8, reduction=2))
    model.add_module("se_open", SqueezeExcite(8, reduction=2))
    model.add_module("se_shut", SqueezeExcite(8, reduction=2))
    model.eval()
    x = torch.randn(4, 8, 6, 6)

    # Healthy: gates spread inside (0.05, 0.95), a spatial map with structure.
    with torch.no_grad():
        model.cbam.spatial_gate.conv.weight.mul_(6)
        for se in (model.se_open, model.se_shut):
            se.gate.fc2.weight.mul_(8)
    with AttentionMonitor(model) as monitor, torch.no_grad():
        model(x)
    summary = monitor.summary()
    assert summary["cbam"]["spatial_entropy"] < 0.99
    assert find_saturation(summary) == []

    with torch.no_grad():
        model.se_open.gate.fc2.bias.fill_(50.0)   # stuck open
        model.se_shut.gate.fc2.bias.fill_(-50.0)  # stuck shut
        model.cbam.spatial_gate.conv.weight.zero_()  # a flat map
    with AttentionMonitor(model) as monitor, torch.no_grad():
        model(x)
    warnings = find_saturation(monitor.summary())
    assert len(warnings) == 3, warnings
    assert warnings[0].startswith("cbam: spatial attention is flat")
    assert warnings[1].startswith("se_open: channel attention saturated")
    assert "above 0.95 (100.0%)" in warnings[1]
    assert warnings[2].startswith("se_shut: channel attention saturated")
    assert "below 0.05 (100.0%)" in warnings[2]

    with torch.no_grad():  # a channel gate stuck at 0.5 for every channel and image
        model.se_open.gate.fc2.weight.zero_()
        model.se_open.gate.fc2.bias.zero_()
    with AttentionMonitor(model) as monitor, torch.no_grad():
        model(x)
    warnings = find_saturation(monitor.summary())
    assert warnings[1].startswith("se_open: channel attention is constant: std 0.0000")
    assert "around 0.500" in warnings[1]

    with pytest.raises(ValueError, match="low=0.1"):
        find_saturation(monitor.summary(), low=0.1)


# what each registry gate kind is reported as (the monitor's documented naming)
REPORTED_AS = {"channel": ["channel"], "spatial": ["spatial"],
               "channel+spatial": ["channel", "spatial"], "row": ["row"], "column": ["column"]}


@pytest.mark.parametrize("name", list_attention())
def test_every_registered_module_reports_each_of_its_gates(name: str) -> None:
    """Statistics for every gate the registry names, equal to that sub-module's output
    captured here with a hook of the test's own."""
    torch.manual_seed(4)
    module = create_attention(name, 16).eval()
    spec = attention_spec(name)
    outputs: dict[str, list[torch.Tensor]] = {sub: [] for sub in spec.gates}
    for sub in spec.gates:
        module.get_submodule(sub).register_forward_hook(
            lambda m, a, out, s=sub: outputs[s].append(out.detach().double()))
    batches = two_batches()
    with AttentionMonitor(module) as monitor, torch.no_grad():
        for x in batches:
            module(x)
    (stats,) = monitor.summary().values()
    expected_kinds = {k for kind in spec.gates.values() for k in REPORTED_AS[kind]}
    assert {key.split("_")[0] for key in stats} == expected_kinds
    for sub, kind in spec.gates.items():
        values = torch.cat([g.flatten() for g in outputs[sub]]).numpy()
        for reported in REPORTED_AS[kind]:
            check_stats(stats, reported, values)
    assert monitor.batches == len(batches)
