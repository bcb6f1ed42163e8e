"""load_pretrained: files, torchvision's weights cache, the CBAM and BAM authors' checkpoints.

Expected outputs come from models built independently of attnres: torchvision's ResNet, and
the reference re-implementation of the authors' ResNet + CBAM in reference_cbam_authors.py.
Nothing is downloaded: the tests write their own state dicts and checkpoints.
"""

from __future__ import annotations

import pathlib
import urllib.error

import pytest
import torch
import torchvision
from reference_cbam_authors import AuthorsResNet, authors_checkpoint, bam_state_dict, randomize
from safetensors.torch import save_file

from attnres.attention import SqueezeExcite
from attnres.models import (bam_authors_model, build_model, cbam_authors_model, detect_format,
                            insert_attention, load_pretrained, wrap_identity)
from attnres.models.pretrained import attention_module_names

IMAGENET_INPUT = (1, 3, 224, 224)  # the authors' AvgPool2d(7) head needs 7x7 final maps


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def torchvision_resnet18() -> torch.nn.Module:
    """torchvision's resnet18 with random weights and BN statistics, 10 classes."""
    return randomize(torchvision.models.resnet18(num_classes=10), seed=1).eval()


@pytest.fixture(scope="module")
def authors_cbam18(tmp_path_factory) -> tuple[torch.nn.Module, pathlib.Path]:
    """A random reference ResNet-18 + CBAM and its checkpoint in the authors' format."""
    reference = randomize(AuthorsResNet(18, num_classes=10), seed=2).eval()
    path = tmp_path_factory.mktemp("authors") / "RESNET18_CBAM_checkpoint.pth.tar"
    torch.save(authors_checkpoint(reference), path)
    return reference, path


def save_as(state: dict[str, torch.Tensor], path: pathlib.Path, fmt: str) -> None:
    state = {k: v.contiguous() for k, v in state.items()}
    if fmt == "raw .pth":
        torch.save(state, path)
    elif fmt == "checkpoint .pt":  # a DataParallel model inside a training checkpoint
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        save_file(state, str(path))


@pytest.mark.parametrize("fmt", ["raw .pth", "checkpoint .pt", ".safetensors"])
def test_torchvision_state_dict_file_loads_and_reproduces_torchvision(
        tmp_path, torchvision_resnet18, fmt):
    suffix = {"raw .pth": ".pth", "checkpoint .pt": ".pt", ".safetensors": ".safetensors"}[fmt]
    path = tmp_path / f"weights{suffix}"
    save_as(torchvision_resnet18.state_dict(), path, fmt)
    x = torch.randn(2, 3, 32, 32)
    expected = outputs(torchvision_resnet18, x)

    plain = build_model("resnet18", num_classes=10)
    report = load_pretrained(plain, path)
    assert report.loaded == len(torchvision_resnet18.state_dict())
    assert not report.missing_attention and not report.unexpected
    torch.testing.assert_close(outputs(plain, x), expected, rtol=0, atol=1e-5)


def test_torchvision_weights_into_cbam_model_with_identity_attention(tmp_path,
                                                                     torchvision_resnet18):
    path = tmp_path / "checkpoint.pt"
    save_as(torchvision_resnet18.state_dict(), path, "checkpoint .pt")
    cbam = build_model("resnet18", attention="cbam", num_classes=10)
    report = load_pretrained(cbam, path, identity_init_missing=True)
    assert report.loaded == len(torchvision_resnet18.state_dict())
    assert report.missing_attention and all(".attn." in k for k in report.missing_attention)
    assert report.identity_init == [f"layer{s}.{i}.attn" for s in range(1, 5) for i in range(2)]
    assert cbam.build_args["identity_init"] == report.identity_init  # to rebuild the wrappers
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(outputs(cbam, x), outputs(torchvision_resnet18, x),
                               rtol=0, atol=1e-5)
    # without identity init the random CBAMs change the function
    other = build_model("resnet18", attention="cbam", num_classes=10)
    load_pretrained(other, path)
    assert (outputs(other, x) - outputs(torchvision_resnet18, x)).abs().max() > 1e-3


def test_build_model_with_pretrained_and_attention_keeps_function_and_rebuilds(
        tmp_path, torchvision_resnet18):
    """build_model(pretrained=, attention=): identity gates, a fresh head for other class
    counts, and build_args that rebuild the wrapped model from a state dict alone."""
    path = tmp_path / "tv.pth"
    save_as(torchvision_resnet18.state_dict(), path, "raw .pth")
    x = torch.randn(2, 3, 32, 32)
    model = build_model("resnet18", attention="se", pretrained=str(path), num_classes=10)
    torch.testing.assert_close(outputs(model, x), outputs(torchvision_resnet18, x),
                               rtol=0, atol=1e-5)  # 10 classes here and in the source
    assert model.load_report.identity_init == model.build_args["identity_init"]
    rebuilt = build_model(**{**model.build_args, "pretrained": None})
    rebuilt.load_state_dict(model.state_dict())  # strict: same keys, scales included
    torch.testing.assert_close(outputs(rebuilt, x), outputs(model, x), rtol=0, atol=0)

    # other class count: the backbone loads, the classifier stays fresh (not loaded)
    five = build_model("resnet18", attention="se", pretrained=str(path), num_classes=5)
    assert five.load_report.skipped == ["fc.weight", "fc.bias"]
    features = {k: v for k, v in five.state_dict().items() if k.startswith("layer4.1.conv2")}
    torch.testing.assert_close(features["layer4.1.conv2.weight"],
                               torchvision_resnet18.layer4[1].conv2.weight)


def test_any_module_with_inserted_attention_loads_its_backbone(torchvision_resnet18):
    model = insert_attention(torchvision.models.resnet18(num_classes=10), "se",
                             at=["layer2:after", "conv1:after"], init="default")
    report = load_pretrained(model, torchvision_resnet18.state_dict(),
                             identity_init_missing=True)
    assert report.loaded == len(torchvision_resnet18.state_dict())
    assert sorted(report.identity_init) == ["conv1.attn_after", "layer2.1.attn_after"]
    assert all(".attn_after." in k for k in report.missing_attention)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(outputs(model, x), outputs(torchvision_resnet18, x),
                               rtol=0, atol=1e-5)


def test_missing_or_misshapen_non_attention_keys_fail_naming_them(torchvision_resnet18):
    model = build_model("resnet18", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    state = dict(torchvision_resnet18.state_dict())
    del state["layer3.1.bn2.running_var"]
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    with pytest.raises(ValueError) as error:
        load_pretrained(model, state)
    message = str(error.value)
    assert "layer3.1.bn2.running_var" in message and "layer2.0.conv1.weight" in message
    assert "(128, 64, 5, 5)" in message and "\n" not in message
    # the checks run before anything is copied
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    imagenet_head = randomize(torchvision.models.resnet18()).state_dict()
    with pytest.raises(ValueError, match=r"fc\.weight.*skip=\['fc'\]"):
        load_pretrained(model, imagenet_head)
    report = load_pretrained(model, imagenet_head, skip=["fc"])
    assert report.skipped == ["fc.weight", "fc.bias"]
    assert torch.equal(model.fc.weight, before["fc.weight"])
    assert torch.equal(model.layer1[0].conv1.weight, imagenet_head["layer1.0.conv1.weight"])


class RunsCode:
    """Unpickling this calls pathlib.Path.touch(marker): code execution made visible."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(1)}, "payload": RunsCode(marker)}, path)

    with pytest.raises(ValueError, match="refusing to load"):
        load_pretrained(build_model("resnet20"), path)
    assert not marker.exists()
    # the file really runs code when unpickled without weights_only
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_file_and_bad_source_raise_clear_errors(tmp_path):
    model = build_model("resnet20")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_pretrained(model, tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match="torchvision has no weights for 'resnet20'"):
        load_pretrained(model, "IMAGENET1K_V1")
    with pytest.raises(ValueError, match=r"did you mean 'IMAGENET1K_V2'"):
        load_pretrained(build_model("resnet50"), "IMAGENET1K_V3")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pt"):
        load_pretrained(model, tmp_path / "empty.pt")


def test_torchvision_weights_name_reads_torch_hub_cache(tmp_path, monkeypatch,
                                                        torchvision_resnet18):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    # the cache file torchvision's own `weights.get_state_dict()` reads, built by hand
    cache_file = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network in the test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FileNotFoundError) as error:
        load_pretrained(build_model("resnet18"), "IMAGENET1K_V1")
    message = str(error.value)
    assert cache_file.name in message and str(cache_file.parent) in message
    assert weights.url in message

    imagenet_like = randomize(torchvision.models.resnet18(), seed=3).eval()
    cache_file.parent.mkdir(parents=True, exist_ok=True)  # the failed try made it
    torch.save(imagenet_like.state_dict(), cache_file)
    model = build_model("resnet18")
    x = torch.randn(1, 3, 32, 32)
    for name in ("IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"):
        with torch.no_grad():  # forget the previous load
            for tensor in model.state_dict().values():
                tensor.zero_()
        report = load_pretrained(model, name)
        assert report.format == "torchvision" and "IMAGENET1K_V1" in report.source
        torch.testing.assert_close(outputs(model, x), outputs(imagenet_like, x), rtol=0, atol=1e-5)
    # build_model's `pretrained=` goes the same way
    model = build_model("resnet18", pretrained="IMAGENET1K_V1")
    assert torch.equal(model.fc.bias, imagenet_like.fc.bias)


def test_cbam_authors_checkpoint_reproduces_their_resnet18(authors_cbam18):
    reference, path = authors_cbam18
    model = cbam_authors_model("resnet18", num_classes=10)
    report = load_pretrained(model, path)
    assert report.format == "cbam-authors"
    assert report.loaded == len(reference.state_dict()) == len(model.state_dict())
    assert not report.missing_attention and not report.unexpected

    x = torch.randn(IMAGENET_INPUT)
    expected = outputs(reference, x)
    assert expected.std() > 0.1  # a non-trivial function to compare
    assert (outputs(model, x) - expected).abs().max() <= 1e-5

    # The [max, mean] -> [mean, max] swap of the spatial conv is what makes them agree.
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("spatial_gate.conv"):
                module.weight.copy_(module.weight.flip(1))
    assert (outputs(model, x) - expected).abs().max() > 1e-3


def test_cbam_authors_resnet50_keys_map_and_features_agree():
    reference = randomize(AuthorsResNet(50, num_classes=5), seed=4).eval()
    state = authors_checkpoint(reference)["state_dict"]
    assert detect_format(state) == "cbam-authors"
    model = cbam_authors_model("resnet50", num_classes=5)
    report = load_pretrained(model, state)
    assert report.loaded == len(model.state_dict()) == len(state)
    assert not report.missing_attention and not report.unexpected
    # A small input, so compare layer4's output (all 16 CBAMs) rather than the 7x7-pool head.
    features = []
    model.layer4.register_forward_hook(lambda module, args, out: features.append(out))
    x = torch.randn(1, 3, 64, 64)
    outputs(model, x)
    with torch.no_grad():
        expected = reference.features(x)
    assert (features[0] - expected).abs().max() <= 1e-5


def test_cbam_authors_checkpoint_into_other_models(authors_cbam18):
    _, path = authors_cbam18
    # a CBAM with attnres' paper defaults (no MLP bias, no BN) cannot take their gates
    with pytest.raises(ValueError, match="cbam_authors_model"):
        load_pretrained(build_model("resnet18", attention="cbam", num_classes=10), path)
    # a plain model takes their backbone and reports their attention weights as unused
    plain = build_model("resnet18", num_classes=10)
    report = load_pretrained(plain, path)
    assert report.loaded == len(plain.state_dict())
    assert len(report.unexpected) == 8 * 10  # 8 blocks x (fc1, fc2: 4; conv: 1; BN: 5)
    with pytest.raises(ValueError, match="strict_attention"):
        load_pretrained(plain, path, strict_attention=True)
    # the convenience builder loads through build_model(pretrained=...)
    reference = authors_cbam18[0]
    model = cbam_authors_model("resnet18", num_classes=10, pretrained=path)
    assert torch.equal(model.layer4[1].attn.channel_gate.fc2.bias,
                       reference.layer4[1].cbam.ChannelGate.mlp[3].bias)
    # their train_imagenet.py: Scale(256), CenterCrop(224), ImageNet's mean and std
    imagenet = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    assert model.preprocessing == {"mean": imagenet.mean, "std": imagenet.std,
                                   "image_size": 224, "resize_size": 256,
                                   "interpolation": "bilinear", "source": "weights"}
    assert model.model_info.weights == str(path)


def test_bam_authors_checkpoint_loads_backbone_and_identity_bam():
    reference = randomize(AuthorsResNet(18, num_classes=10, use_cbam=False), seed=5).eval()
    checkpoint = authors_checkpoint(reference)
    for stage, channels in ((1, 64), (2, 128), (3, 256)):
        checkpoint["state_dict"].update(
            {f"module.{k}": v for k, v in bam_state_dict(channels, f"bam{stage}").items()})

    model = bam_authors_model("resnet18", num_classes=10)
    report = load_pretrained(model, checkpoint, identity_init_missing=True)
    assert report.format == "bam-authors"
    assert report.loaded == len(reference.state_dict())
    assert len(report.unexpected) == 3 * 28 and all(k.startswith("bam") for k in report.unexpected)
    assert report.identity_init == ["stage_attn.layer1", "stage_attn.layer2", "stage_attn.layer3"]
    x = torch.randn(IMAGENET_INPUT)
    assert (outputs(model, x) - outputs(reference, x)).abs().max() <= 1e-5


# ------------------------------------------------------- timm habits, metadata, the registry

def offline_hub(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network in the test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)


def test_pretrained_true_means_torchvisions_default_weights(tmp_path, monkeypatch):
    from attnres.models.sources import default_weights

    for arch in ("resnet18", "resnet50", "wide_resnet50_2"):
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        assert default_weights(arch) == f"{type(weights).__name__}.{weights.name}"
    offline_hub(tmp_path, monkeypatch)
    default = torchvision.models.ResNet50_Weights.DEFAULT
    with pytest.raises(FileNotFoundError) as error:
        build_model("resnet50", pretrained=True)
    assert default.url.rsplit("/", 1)[1] in str(error.value)  # the DEFAULT weights' file
    with pytest.raises(ValueError, match=r"no default weights for 'resnet20'"):
        build_model("resnet20", pretrained=True)
    assert build_model("resnet18", pretrained=False).model_info.weights is None


def test_torchvision_weights_set_the_models_metadata(tmp_path, monkeypatch):
    offline_hub(tmp_path, monkeypatch)
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cache_file = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    cache_file.parent.mkdir(parents=True)
    torch.save(randomize(torchvision.models.resnet18(), seed=7).state_dict(), cache_file)

    model = build_model("resnet18", attention="se", pretrained="IMAGENET1K_V1")
    info = model.model_info
    assert info.weights == "ResNet18_Weights.IMAGENET1K_V1"
    assert info.load_report is model.load_report and info.load_report.format == "torchvision"
    transform = weights.transforms()  # torchvision's own evaluation transform
    assert model.preprocessing == {
        "mean": transform.mean, "std": transform.std, "image_size": transform.crop_size[0],
        "resize_size": transform.resize_size[0], "interpolation": transform.interpolation.value,
        "classes": weights.meta["categories"], "source": "weights"}
    # another head: the classifier is not the weights', so neither are the class names
    ten = build_model("resnet18", num_classes=10, pretrained="IMAGENET1K_V1")
    assert "classes" not in ten.preprocessing and ten.preprocessing["image_size"] == 224


@pytest.mark.parametrize("in_chans", [1, 2, 6])
def test_in_chans_adapts_the_first_conv_as_timm_does(tmp_path, torchvision_resnet18, in_chans):
    """timm (adapt_input_conv): one channel sums the RGB filters, more repeat them scaled
    by 3 / in_chans. So a grey image gives the RGB net's output on (x, x, x), and an image
    whose channels repeat (r, g, b) gives the RGB net's output on (r, g, b)."""
    path = tmp_path / "tv.pth"
    save_as(torchvision_resnet18.state_dict(), path, "raw .pth")
    model = build_model("resnet18", in_chans=in_chans, num_classes=10, pretrained=str(path))
    assert model.load_report.adapted == ["conv1.weight"]
    x = torch.randn(2, 3, 32, 32)
    if in_chans == 1:
        grey = x[:, :1]
        torch.testing.assert_close(outputs(model, grey),
                                   outputs(torchvision_resnet18, grey.expand(-1, 3, -1, -1)),
                                   rtol=1e-4, atol=1e-4)
    elif in_chans % 3 == 0:
        torch.testing.assert_close(outputs(model, x.repeat(1, in_chans // 3, 1, 1)),
                                   outputs(torchvision_resnet18, x), rtol=1e-4, atol=1e-4)
    else:  # repeated (r, g, b, r, ...), cut to in_chans, scaled
        rgb = torchvision_resnet18.conv1.weight
        expected = rgb.repeat(1, 1, 1, 1)[:, :in_chans] * (3 / in_chans)
        torch.testing.assert_close(model.conv1.weight, expected)
    assert "mean" not in model.preprocessing  # ImageNet's RGB statistics do not apply


def test_attention_modules_are_found_through_the_registry(torchvision_resnet18):
    """A registered gate anywhere counts as attention (its keys may be missing), wrapped
    or not; slots are not looked up by name."""
    model = torchvision.models.resnet18(num_classes=10)
    model.layer3[1].extra_gate = SqueezeExcite(256)  # a name no slot list knows
    model.layer2[0].attn = SqueezeExcite(128)
    wrap_identity(model, ["layer2.0.attn"])
    assert attention_module_names(model) == ["layer2.0.attn", "layer3.1.extra_gate"]
    report = load_pretrained(model, torchvision_resnet18.state_dict(),
                             identity_init_missing=True)
    assert sorted(report.identity_init) == ["layer3.1.extra_gate"]  # wrapped already: kept
    assert all(k.startswith(("layer2.0.attn.", "layer3.1.extra_gate."))
               for k in report.missing_attention)
