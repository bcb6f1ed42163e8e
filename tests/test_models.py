"""Models: every attention x every placement runs, presets land where they should,
torchvision weights load, and parameter counts match the papers."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from attnres.attention import ATTENTION, list_attention
from attnres.models import (ModelInfo, Preprocessing, build_model, get_model_info,
                            insert_attention, list_models, list_placements, list_presets,
                            rebuild_model)
from attnres.models.resnet import ARCHS, PadShortcut

torch.manual_seed(0)
torch.set_num_threads(1)  # tiny models: threads only contend on the shared CI cores

TORCHVISION_ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                     "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2"]
# (arch, input size): 64 px keeps an ImageNet net's layer4 at 2x2, so plain batch norm
# still has several values per channel at batch size 1
SMALL_ARCHS = [("resnet20", 32), ("resnet18", 64)]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def attention_module_names(model: nn.Module) -> set[str]:
    """Names of the attention modules in `model`, found by type, not by the build log."""
    kinds = tuple(ATTENTION.values())
    return {name for name, m in model.named_modules() if isinstance(m, kinds)}


def on_meta(fn, *args, **kwargs):
    """Build without allocating or initialising weights (shapes and counts only)."""
    with torch.device("meta"):
        return fn(*args, **kwargs)


@pytest.mark.parametrize("placement", ["block", "block-post", "stage", "stem", "head"])
@pytest.mark.parametrize("attention", list_attention())
@pytest.mark.parametrize("arch,size", SMALL_ARCHS)
def test_every_attention_at_every_placement_trains(arch, size, attention, placement) -> None:
    model = build_model(arch, attention=attention, placement=placement, num_classes=7).train()
    attn_params = {n: p for n, p in model.named_parameters() if "attn" in n}
    assert attn_params, "no attention parameters were added"
    for batch in (1, 2):
        model.zero_grad()
        out = model(torch.randn(batch, 3, size, size))
        assert out.shape == (batch, 7)
        assert torch.isfinite(out).all()
        out.square().mean().backward()
        for name, p in attn_params.items():
            assert p.grad is not None, f"{name} got no gradient at batch {batch}"
            assert torch.isfinite(p.grad).all(), name
        assert any(p.grad.abs().sum() > 0 for p in attn_params.values())


def test_all_placements_combined_and_names() -> None:
    model = build_model("resnet20", attention="se", placement=list_placements())
    expected = {"stem_attn", "head_attn"}
    expected |= {f"stage_attn.layer{s}" for s in (1, 2, 3)}
    expected |= {f"layer{s}.{i}.{slot}" for s in (1, 2, 3) for i in range(3)
                 for slot in ("attn", "attn_post")}
    assert attention_module_names(model) == expected
    assert set(model.attention_slots) == expected


def test_channels_are_derived_from_the_architecture() -> None:
    model = build_model("resnet50", attention="se", placement=["block", "stem", "head"])
    assert model.stem_attn.gate.fc1.in_features == 64
    assert model.head_attn.gate.fc1.in_features == 2048
    for stage, width in zip((model.layer1, model.layer2, model.layer3, model.layer4),
                            (256, 512, 1024, 2048)):
        for block in stage:
            assert block.attn.gate.fc1.in_features == width
            assert block.attn.gate.fc1.out_features == width // 16


def _blocks(stages: dict[int, int], slot: str = "attn") -> set[str]:
    return {f"layer{s}.{i}.{slot}" for s, n in stages.items() for i in range(n)}


@pytest.mark.parametrize("preset,expected_18,expected_20", [
    ("all", _blocks({1: 2, 2: 2, 3: 2, 4: 2}), _blocks({1: 3, 2: 3, 3: 3})),
    ("last-stage", _blocks({4: 2}), _blocks({3: 3})),
    ("progressive", _blocks({2: 2, 3: 2, 4: 2}), _blocks({2: 3, 3: 3})),
    # selective = stage 2 and the last stage: 2 and 4 (ImageNet), 2 and 3 (CIFAR)
    ("selective", _blocks({2: 2, 4: 2}), _blocks({2: 3, 3: 3})),
    ("stem+head", {"stem_attn", "head_attn"}, {"stem_attn", "head_attn"}),
])
def test_presets_select_the_right_modules(preset, expected_18, expected_20) -> None:
    assert preset in list_presets()
    assert attention_module_names(build_model("resnet18", attention="eca", preset=preset)) \
        == expected_18
    assert attention_module_names(build_model("resnet20", attention="eca", preset=preset)) \
        == expected_20


def test_stage_and_block_selection() -> None:
    model = build_model("resnet20", attention="cbam", placement=["block-post", "stage"],
                        stages=[1, 3], blocks={3: [False, True, False]})
    assert attention_module_names(model) == {
        "layer1.0.attn_post", "layer1.1.attn_post", "layer1.2.attn_post", "layer3.1.attn_post",
        "stage_attn.layer1", "stage_attn.layer3"}
    last_stage = build_model("resnet18", attention="se", preset="last-stage",
                             blocks={4: [False, True]})
    assert attention_module_names(last_stage) == {"layer4.1.attn"}


@pytest.mark.parametrize("kwargs,match", [
    ({"arch": "resnet-50"}, r"unknown architecture 'resnet-50'.*did you mean 'resnet50'"),
    ({"arch": "resnet18", "attention": "cbma"}, r"did you mean 'cbam'.*allowed: bam, cbam"),
    ({"arch": "resnet18", "attention": "se", "placement": "blocks"}, r"did you mean 'block'"),
    ({"arch": "resnet18", "attention": "se", "preset": "last_stage"},
     r"did you mean 'last-stage'"),
    ({"arch": "resnet20", "attention": "se", "stages": [4]}, r"stage 4 out of range.*1\.\.3"),
    ({"arch": "resnet18", "attention": "se", "stages": [0]}, r"stage 0 out of range"),
    ({"arch": "resnet18", "attention": "se", "blocks": {4: [True]}},
     r"blocks\[4\] has 1 entries; stage 4 has 2 blocks"),
    ({"arch": "resnet18", "attention": "se", "stages": [2], "blocks": {4: [True, True]}},
     r"not selected"),
    ({"arch": "resnet18", "attention": "se", "preset": "all", "stages": [1]}, r"preset"),
    ({"arch": "resnet18", "attention_kwargs": {"reduction": 8}}, r"without attention"),
])
def test_bad_arguments_raise_value_error(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        on_meta(build_model, **kwargs)


def test_build_args_rebuild_the_same_model_through_json() -> None:
    model = build_model("resnet20", attention="cbam", placement=["block", "head"], stages=[2, 3],
                        blocks={2: [True, False, True]},
                        attention_kwargs={"reduction": 4, "kernel_size": 3})
    args = json.loads(json.dumps(model.build_args))
    again = build_model(**args)
    assert attention_module_names(again) == attention_module_names(model)
    again.load_state_dict(model.state_dict())  # strict: same keys and shapes
    assert again.layer2[0].attn.spatial_gate.conv.kernel_size == (3, 3)


@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
def test_torchvision_state_dict_keys_and_shapes_match(arch) -> None:
    theirs = {k: v.shape for k, v in on_meta(getattr(torchvision.models, arch)).state_dict().items()}
    plain = {k: v.shape for k, v in on_meta(build_model, arch).state_dict().items()}
    assert plain == theirs  # what a strict load_state_dict checks
    with_cbam = {k: v.shape for k, v in on_meta(
        build_model, arch, attention="cbam", placement=list_placements()).state_dict().items()}
    missing_non_attention = {k for k in with_cbam if k not in theirs and "attn" not in k}
    assert not missing_non_attention
    assert {k: with_cbam[k] for k in theirs} == theirs


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("resnext50_32x4d",
                                                           marks=pytest.mark.slow)])
def test_outputs_equal_torchvision_with_the_same_weights(arch) -> None:
    theirs = getattr(torchvision.models, arch)().eval()
    for m in theirs.modules():  # non-trivial BN statistics so eval-mode BN matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    ours = build_model(arch).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)

    with_attention = build_model(arch, attention="se")
    result = with_attention.load_state_dict(theirs.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(".attn." in k for k in result.missing_keys)


def test_block_placement_sits_before_the_residual_add() -> None:
    model = build_model("resnet18", attention="se", placement=["block", "block-post"]).eval()
    block = model.layer2[0]  # strided, with a 1x1 conv shortcut
    x = torch.randn(2, 64, 16, 16)
    with torch.no_grad():
        branch = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        shortcut = block.downsample[1](block.downsample[0](x))
        expected = block.attn_post(torch.relu(block.attn(branch) + shortcut))
        torch.testing.assert_close(block(x), expected, rtol=0, atol=0)
        # ... and it matters: without the gate the result differs
        assert not torch.allclose(torch.relu(branch + shortcut), torch.relu(
            block.attn(branch) + shortcut))


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2], rtol=0, atol=0)
    assert (y[:, 16:] == 0).all()


def test_cifar_resnet_layout() -> None:
    model = build_model("resnet20")
    assert model.fc.out_features == 10 and model.fc.in_features == 64
    assert isinstance(model.maxpool, nn.Identity) and model.conv1.kernel_size == (3, 3)
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [3, 3, 3]
    shapes = []
    model.layer3.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    model(torch.randn(1, 3, 32, 32))
    assert shapes == [(1, 64, 8, 8)]  # 32 -> 32 -> 16 -> 8: no stem down-sampling
    # option A: no shortcut parameters at all
    assert not [k for k in model.state_dict() if "downsample" in k]


def cifar_resnet_params(n: int, classes: int = 10) -> int:
    """He et al. sec. 4.2 by hand: 3x3 stem (16), 3 stages of n two-conv blocks at widths
    16/32/64, BN (2 per channel) after each conv, option-A shortcuts (free), FC 64 -> classes."""
    total = 3 * 16 * 9 + 2 * 16
    c_in = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += 9 * c_in * width + 2 * width + 9 * width * width + 2 * width
            c_in = width
    return total + 64 * classes + classes


@pytest.mark.parametrize("arch,n,paper", [  # Table 6 of He et al. 2016, as printed
    ("resnet20", 3, "0.27"), ("resnet32", 5, "0.46"), ("resnet44", 7, "0.66"),
    ("resnet56", 9, "0.85"), ("resnet110", 18, "1.7")])
def test_cifar_parameter_counts_match_the_paper(arch, n, paper) -> None:
    count = n_params(on_meta(build_model, arch))
    assert count == cifar_resnet_params(n)
    assert f"{count / 1e6:.{len(paper.split('.')[1])}f}" == paper


RESNET50_WIDTHS = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3  # output of each bottleneck


def test_resnet50_parameter_counts_match_the_literature() -> None:
    plain = n_params(on_meta(build_model, "resnet50"))
    assert plain == n_params(on_meta(torchvision.models.resnet50)) == 25_557_032

    # CBAM in every bottleneck: bias-free shared MLP C -> C/16 -> C, 7x7 conv 2 -> 1 (+ its
    # bias, since the default spatial gate has no BN)
    cbam = n_params(on_meta(build_model, "resnet50", attention="cbam"))
    assert cbam == plain + sum(2 * c * c // 16 + 2 * 49 + 1 for c in RESNET50_WIDTHS)
    assert round(cbam / 1e6, 2) == 28.07

    # the authors' layout: conv without bias + BN(1)
    cbam_bn = n_params(on_meta(build_model, "resnet50", attention="cbam",
                               attention_kwargs={"spatial_norm": "batch"}))
    assert cbam_bn == plain + sum(2 * c * c // 16 + 2 * 49 + 2 for c in RESNET50_WIDTHS)

    # SE-ResNet-50 (Hu et al.): biased FCs C -> C/16 -> C
    se = n_params(on_meta(build_model, "resnet50", attention="se"))
    assert se == plain + sum(2 * c * c // 16 + c // 16 + c for c in RESNET50_WIDTHS)
    assert se == 28_088_024


@pytest.mark.parametrize("arch", ["skresnet50", "resnest50"])
def test_attention_convolution_nets_match_their_papers(arch) -> None:
    count = n_params(on_meta(build_model, arch))
    assert abs(count - 27.5e6) / 27.5e6 < 0.02, count


@pytest.mark.parametrize("arch", ["skresnet50", "resnest50"])
def test_attention_convolution_nets_train_at_batch_size_one(arch) -> None:
    model = build_model(arch, attention="eca", num_classes=5).train()
    out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 5) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_zero_init_residual_zeroes_the_last_norm_of_every_block() -> None:
    model = build_model("resnet50", zero_init_residual=True)
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4)
              for b in stage]
    assert all((b.bn3.weight == 0).all() for b in blocks)
    assert all((b.bn1.weight == 1).all() for b in blocks)


def test_list_models_names() -> None:
    names = list_models()
    assert set(TORCHVISION_ARCHS) <= set(names)
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "skresnet50",
            "resnest50"} <= set(names)


def test_models_command_prints_the_table(capsys) -> None:
    from attnres.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.splitlines() if line.startswith("| ")}
    assert set(list_models()) <= set(rows)
    # classes, plain, +se, +eca, +cbam, +bam for ResNet-50 (torchvision; SE-ResNet-50)
    assert rows["resnet50"][:3] == ["1000", "25,557,032", "28,088,024"]
    assert rows["resnet20"][:2] == ["10", f"{cifar_resnet_params(3):,}"]
    assert "placements: block, block-post, stage, stem, head" in out
    assert f"attention:  {', '.join(list_attention())}" in out


# ---------------------------------------------------------------------------- ModelInfo

def test_model_info_round_trips_through_json_and_rebuilds() -> None:
    model = build_model("resnet20", attention="cbam", placement=["block", "stage"],
                        stages=[2, 3], blocks={2: [True, False, True]}, num_classes=7,
                        attention_kwargs={"reduction": 4, "pool_types": ("avg", "max")},
                        zero_init_residual=True)
    insert_attention(model, "eca", "layer3:after", init="default")
    info = get_model_info(model)
    assert info is model.model_info and info.architecture == "resnet20"
    data = info.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON data only, tuples as lists
    again = ModelInfo.from_dict(json.loads(json.dumps(data)))
    assert again.to_dict() == data and again.attention_kwargs["pool_types"] == ["avg", "max"]
    rebuilt = rebuild_model(data)
    rebuilt.load_state_dict(model.state_dict())  # strict: the insertion was replayed
    assert get_model_info(rebuilt).to_dict() == data
    # the legacy attributes are views of the one object
    assert model.build_args == info.build_args() and model.build_args["zero_init_residual"]
    assert model.attention_slots is info.attention_slots
    assert model.attention_slots[-1] == "layer3.2.attn_after"


def test_legacy_build_args_alone_rebuild() -> None:
    """Checkpoints of attnres <= 0.2 store build_args and preprocessing dicts only."""
    old = {"arch": "resnet18", "attention": "se", "placement": "stage", "stages": [4],
           "blocks": None, "preset": None, "num_classes": 3, "attention_kwargs": None,
           "insertions": [{"attention": "eca", "at": ["layer1:before"], "init": "identity",
                           "kwargs": {}}]}
    model = rebuild_model(old)
    assert model.build_args == old
    assert isinstance(model.stage_attn.layer4, nn.Module) and model.fc.out_features == 3
    info = ModelInfo.from_dict(old)
    assert info.insertions == old["insertions"] and info.library == "attnres"

    class Exported(nn.Module):  # e.g. an int8 GraphModule: plain attributes
        pass

    exported = Exported()
    exported.build_args, exported.preprocessing = old, {"image_size": 16, "mean": [0.5] * 3}
    snapshot = get_model_info(exported)
    assert snapshot.architecture == "resnet18" and snapshot.preprocessing.image_size == 16
    assert get_model_info(nn.Linear(2, 2)) is None


def test_every_architecture_carries_its_default_preprocessing() -> None:
    # ImageNet's statistics as torchvision's weights carry them
    imagenet = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    mean, std = imagenet.mean, imagenet.std
    for arch in list_models():
        prep = on_meta(build_model, arch).preprocessing
        if ARCHS[arch].stem == "cifar":  # the statistics are the data's: unknown
            assert prep == {"image_size": 32, "source": "architecture"}, arch
        else:
            assert prep == {"mean": list(mean), "std": list(std), "image_size": 224,
                            "resize_size": 256, "interpolation": "bilinear",
                            "source": "architecture"}, arch
    assert "mean" not in on_meta(build_model, "resnet18", in_chans=1).preprocessing


def test_preprocessing_assignment_replaces_and_reads_back() -> None:
    model = build_model("resnet20")
    given = {"mean": [0.5, 0.4, 0.3], "std": [0.2] * 3, "image_size": 16,
             "classes": ["a", "b"], "note": "kept as given"}
    model.preprocessing = given
    assert model.preprocessing == given
    prep = model.model_info.preprocessing
    assert prep.classes == ("a", "b") and prep.extra == {"note": "kept as given"}
    assert model.model_info.input_size == (3, 16, 16)
    model.preprocessing = {}
    assert model.preprocessing == {} and model.model_info.preprocessing == Preprocessing()


def test_bad_model_info_is_refused() -> None:
    data = build_model("resnet20").model_info.to_dict()
    with pytest.raises(ValueError, match=r"version 99.*upgrade"):
        ModelInfo.from_dict({**data, "version": 99})
    with pytest.raises(ValueError, match=r"unknown fields \['colour'\]"):
        ModelInfo.from_dict({**data, "colour": "red"})
    model = build_model("resnet20", norm_layer=nn.BatchNorm2d)
    with pytest.raises(ValueError, match=r"not JSON data: build_kwargs\['norm_layer'\]"):
        model.model_info.to_dict()
    with pytest.raises(ValueError, match=r"rebuild_model: .*library=None"):
        rebuild_model(ModelInfo(library=None))


@pytest.mark.parametrize("in_chans", [1, 4])
def test_in_chans_and_num_classes_as_in_timm(in_chans) -> None:
    model = build_model("resnet18", in_chans=in_chans, num_classes=5).eval()
    assert model.conv1.in_channels == in_chans
    assert model(torch.randn(2, in_chans, 32, 32)).shape == (2, 5)
    assert model.model_info.in_chans == in_chans and model.build_args["in_chans"] == in_chans
    assert rebuild_model(model.model_info).conv1.in_channels == in_chans
    deep = build_model("resnest50", in_chans=in_chans)
    assert deep.conv1[0].in_channels == in_chans
    features = build_model("resnet18", num_classes=0).eval()
    assert features(torch.randn(2, 3, 32, 32)).shape == (2, 512)  # no classifier
    assert features.model_info.num_classes == 0 and features.num_classes == 0
    with pytest.raises(ValueError, match=r"in_chans=0: must be an integer >= 1"):
        build_model("resnet18", in_chans=0)
