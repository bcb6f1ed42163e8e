"""The README's claims that code can check: every Python block runs (in order, in one
namespace, as a reader would paste them), it starts with the two commands, its
architecture table is what `attnres models` prints, and every `attnres.X` it names exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch
import torchvision

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_starts_with_the_two_commands() -> None:
    first = re.search(r"```\n(.*?)```", README.read_text(), flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first.splitlines()]
    assert commands == ["make demo", "make test"]


def offline_downloads(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins for what the pretrained block downloads or names: torchvision's ResNet-50
    weights in torch's cache (random values, torchvision's own keys) and the CBAM authors'
    checkpoint file (random values in their key layout, see reference_cbam_authors.py)."""
    from reference_cbam_authors import AuthorsResNet, authors_checkpoint

    monkeypatch.setenv("TORCH_HOME", str(folder / "torch"))
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    cache = folder / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    cache.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet50().state_dict(), cache)
    torch.save(authors_checkpoint(AuthorsResNet(50)), folder / "RESNET50_CBAM_new_name_wrap.pth")


@pytest.mark.slow
def test_every_python_block_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = blocks("python")
    assert len(code) >= 3
    monkeypatch.chdir(tmp_path)  # the blocks write runs/ where they run
    offline_downloads(tmp_path, monkeypatch)
    namespace: dict = {}
    for i, block in enumerate(code):
        exec(compile(block, f"{README}, python block {i + 1}", "exec"), namespace)


def test_every_attnres_name_exists() -> None:
    """Names in code spans and blocks (`attnres.train`, `attnres.models.cbam_authors_model`)."""
    names = set(re.findall(r"\battnres((?:\.[A-Za-z_]\w*)+)", README.read_text()))
    assert "train" in {n.split(".")[1] for n in names}
    for dotted in sorted(names):
        obj, done = importlib.import_module("attnres"), "attnres"
        for part in dotted.strip(".").split("."):
            if not hasattr(obj, part) and isinstance(obj, type(importlib)):
                try:  # a submodule not imported yet
                    importlib.import_module(f"{done}.{part}")
                except ModuleNotFoundError:
                    pass
            assert hasattr(obj, part), f"the README names attnres{dotted}: no {part!r} in {done}"
            obj, done = getattr(obj, part), f"{done}.{part}"


def test_architecture_table_is_current() -> None:
    from attnres.models import model_table

    assert model_table() in README.read_text()


def test_data_paths_are_explained_and_the_cache_documented() -> None:
    """Every `--data` path in the README is a named data set, a placeholder or a path the
    README says where to find (and how to use your own data instead); the decode cache's
    folder and variable are documented."""
    text = README.read_text()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    named = {"digits", "cifar10", "cifar100"}
    paths = {m.rstrip("`]") for m in re.findall(r"--data ([^\s|]+)", text)}
    explained = [p for p in paths if p not in named and p != "DATA"
                 and not p.startswith(("/data/", "photos"))]
    assert explained, paths  # the README does run commands on a real archive
    for path in explained:
        paragraph = next((p for p in prose.split("\n\n") if f"`{path}`" in p
                          and "your own" in p), None)
        assert paragraph, f"{path}: no paragraph says where it is and how to use your own"
        assert "not part of the repository" in paragraph
    for word in ("ATTNRES_CACHE", "~/.cache/attnres", "--cache-dir"):
        assert word in prose
