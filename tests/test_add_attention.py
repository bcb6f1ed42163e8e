"""add_attention: build_model's placements in torchvision and timm networks.

References are built independently of attnres: torchvision's and timm's own networks, and
timm's own CBAM ResNet (`block_args=dict(attn_layer="cbam")`). Nothing is downloaded: every
network has random weights.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torchvision
from torch import nn

from attnres.attention import iter_attention
from attnres.models import (IdentityInit, ResNet, add_attention, build_model, get_model_info,
                            rebuild_model)

timm = pytest.importorskip("timm")
torch.set_num_threads(1)


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affines (as after training), eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 0.6 - 0.3)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.6 - 0.3)
    return model.eval()


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------- torchvision ResNets

@pytest.mark.parametrize("arch,placement", [
    ("resnet18", "block"),
    ("resnet18", ["stage", "stem", "head", "block-post"]),
    pytest.param("resnet50", "block", marks=pytest.mark.slow),
    pytest.param("resnext50_32x4d", "block", marks=pytest.mark.slow),
])
def test_torchvision_resnet_gets_build_models_modules_and_outputs(arch, placement) -> None:
    model = getattr(torchvision.models, arch)()
    add_attention(model, "cbam", placement=placement, init="default")
    reference = trained_looking(build_model(arch, attention="cbam", placement=placement), seed=1)
    assert shapes(model) == shapes(reference)
    assert isinstance(model, ResNet) and model.build_args == reference.build_args
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(outputs(model, x), outputs(reference, x), rtol=0, atol=0)


def test_identity_init_keeps_a_torchvision_resnets_outputs_and_rebuilds() -> None:
    model = trained_looking(torchvision.models.resnet18(), seed=2)
    x = torch.randn(2, 3, 64, 64)
    before = outputs(model, x)
    add_attention(model, "se", placement=["block", "stage"], stages=[2, 4],
                  blocks={2: [False, True]})
    assert torch.equal(outputs(model, x), before)
    assert [p for p, _, _ in iter_attention(model)] == [
        "layer2.1.attn.attn", "layer4.0.attn.attn", "layer4.1.attn.attn",
        "stage_attn.layer2.attn", "stage_attn.layer4.attn"]
    again = build_model(**model.build_args)  # what checkpoints do
    again.load_state_dict(model.state_dict())  # strict: same modules, identity wrappers too
    assert torch.equal(outputs(again, x), before)


# ------------------------------------------------------------------------ timm ResNets

@pytest.mark.parametrize("arch", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_timm_resnet_attention_sits_where_timms_own_cbam_does(arch) -> None:
    """timm's Bottleneck / BasicBlock call `self.se` after the last norm, before drop_path and
    the add; its CBAM ResNet fills that slot. add_attention fills the same slot, so the
    attention modules have the same paths and, given the same weights, the same outputs."""
    ours = timm.create_model(arch)
    add_attention(ours, "cbam", init="default", spatial_norm="batch")
    timms = trained_looking(timm.create_model(arch, block_args=dict(attn_layer="cbam")), seed=3)
    timm_paths = [n for n, m in timms.named_modules() if type(m).__name__ == "CbamModule"]
    assert [p for p, _, _ in iter_attention(ours)] == timm_paths
    assert all(p.endswith(".se") for p in timm_paths) and len(timm_paths) > 0
    # With the spatial conv followed by batch norm (timm's ConvNormAct) the counts agree;
    # attnres' default CBAM has a biased spatial conv and no norm: one parameter fewer each.
    assert n_params(ours) == n_params(timms)
    default = timm.create_model(arch)
    add_attention(default, "cbam", init="default")
    assert n_params(default) == n_params(timms) - len(timm_paths)
    # the same function: timm's network with our gates in its attention slots
    timms_with_ours = copy.deepcopy(timms)
    for path in timm_paths:
        timms_with_ours.get_submodule(path.rpartition(".")[0]).se = copy.deepcopy(
            ours.get_submodule(path))
    ours.load_state_dict(timms_with_ours.state_dict())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(outputs(ours, x), outputs(timms_with_ours, x), rtol=0, atol=0)


def test_timm_seresnet_keeps_its_se_and_gets_the_gate_after_it() -> None:
    model = trained_looking(timm.create_model("seresnet18"), seed=4)
    keys, x = model.state_dict(), torch.randn(2, 3, 64, 64)
    before = outputs(model, x)
    add_attention(model, "eca", stages=[3])
    assert torch.equal(outputs(model, x), before)  # identity init
    new = model.state_dict()
    assert all(torch.equal(new[k], v) for k, v in keys.items())  # the SE weights stay
    assert sorted({k.rsplit(".attn_after.", 1)[0] for k in set(new) - set(keys)}) == [
        "layer3.0.se", "layer3.1.se"]


def test_timm_resnet_stage_selection_block_post_and_rebuild() -> None:
    model = trained_looking(timm.create_model("resnet18"), seed=5)
    add_attention(model, "se", placement=["block", "block-post"], stages=[2],
                  blocks={2: [False, True]}, init="default")
    assert model.model_info.attention_slots == ["layer2.1.act2.attn_after", "layer2.1.se"]
    assert model.layer2[0].se is None
    info = get_model_info(model).to_dict()
    assert info["library"] == "timm" and info["architecture"] == "resnet18"
    again = rebuild_model(info)  # timm.create_model, then the call replayed
    again.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(outputs(again, x), outputs(model, x), rtol=0, atol=0)


# ------------------------------------------------------------- other timm CNNs, generically

@pytest.mark.parametrize("arch", ["convnext_atto", "regnetx_002"])
def test_timm_cnn_identity_init_keeps_outputs_and_gates_precede_the_add(arch) -> None:
    model = timm.create_model(arch).eval()
    x = torch.randn(2, 3, 64, 64)
    before = outputs(model, x)
    add_attention(model, "cbam", placement=["block", "stage", "stem", "head"])
    assert torch.equal(outputs(model, x), before)
    depths = [len(list(m for m in s.modules() if hasattr(m, "drop_path")))
              for s in (model.stages if arch.startswith("convnext")
                        else [model.s1, model.s2, model.s3, model.s4])]
    assert len(model.model_info.attention_slots) == sum(depths) + 4 + 2

    # with default gates, a block's output is (its activation of) its input plus the gate's
    # output: the gate sits on the residual branch just before the add
    fresh = timm.create_model(arch).eval()
    add_attention(fresh, "cbam", init="default")
    path = fresh.model_info.attention_slots[-1]  # the last block: an identity shortcut
    block = fresh.get_submodule(path.split(".drop_path")[0])
    seen = {}
    block.register_forward_hook(lambda m, a, out: seen.update(x=a[0].clone(), y=out))
    fresh.get_submodule(path).register_forward_hook(lambda m, a, out: seen.update(gate=out))
    outputs(fresh, x)
    activation = getattr(block, "act3", nn.Identity())  # RegNet: ReLU after the add
    torch.testing.assert_close(seen["y"], activation(seen["gate"] + seen["x"]))
    assert not torch.allclose(outputs(fresh, x), outputs(model, x))


# ---------------------------------------------------------------- pickling, errors, replays

@pytest.mark.parametrize("make", [
    lambda: torchvision.models.resnet18(),
    lambda: timm.create_model("resnet18"),
    lambda: timm.create_model("convnext_atto"),
], ids=["torchvision", "timm-resnet", "timm-convnext"])
def test_edited_models_pickle(make) -> None:
    model = trained_looking(make(), seed=6)
    add_attention(model, "cbam", placement=["block", "stage"], init="default")
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is type(model)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(outputs(loaded, x), outputs(model, x), rtol=0, atol=0)
    assert get_model_info(loaded) == get_model_info(model)


def test_unrecognisable_network_fails_naming_what_was_found() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    with pytest.raises(ValueError, match=r"cannot find the stages.*Sequential.*insert_attention"):
        add_attention(model, "se")


@pytest.mark.parametrize("kwargs,match", [
    ({"attention": "cbma"}, r"did you mean 'cbam'"),
    ({"attention": "sk"}, r"replaces a convolution"),
    ({"attention": "se", "placement": "blok"}, r"unknown placement 'blok'"),
    ({"attention": "se", "stages": [5]}, r"stage 5 out of range"),
    ({"attention": "se", "init": "zeros"}, r"init='zeros'"),
    ({"attention": "se", "reduction": 0}, r"reduction"),
])
@pytest.mark.parametrize("library", ["torchvision", "timm"])
def test_bad_arguments_leave_the_model_as_it_was(kwargs, match, library) -> None:
    model = torchvision.models.resnet18() if library == "torchvision" else \
        timm.create_model("resnet18")
    cls, keys = type(model), set(model.state_dict())
    with pytest.raises(ValueError, match=match):
        add_attention(model, **kwargs)
    assert set(model.state_dict()) == keys and type(model) is cls


def test_filled_slots_are_refused_and_later_calls_are_recorded() -> None:
    model = build_model("resnet18", attention="se", stages=[4])
    keys = set(model.state_dict())
    with pytest.raises(ValueError, match=r"layer4.0.attn holds attention already"):
        add_attention(model, "eca", stages=[3, 4])
    assert set(model.state_dict()) == keys and isinstance(model.layer3[0].attn, nn.Identity)
    add_attention(model, "eca", placement="stage", stages=[1])
    assert isinstance(model.stage_attn.layer1, IdentityInit)
    assert model.build_args["insertions"] == [
        {"op": "add", "attention": "eca", "placement": "stage", "stages": [1], "blocks": None,
         "preset": None, "init": "identity", "kwargs": {}}]
    again = build_model(**model.build_args)
    again.load_state_dict(model.state_dict())
