"""The first hour at the command line: `attnres --version`, every option's help line and
default, one `--threads` for every command that computes, short data-set reprs, and the
message for a missing CBAM authors' checkpoint."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch

import attnres
from attnres.cli import build_parser, main
from attnres.cli.common import DefaultsFormatter, apply_threads, default_threads

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# the commands whose --help this work covers (train and eval have their own)
DOCUMENTED = ["ablate", "demo", "explain", "export", "bench", "profile", "models", "report",
              "predict"]
COMPUTING = ["train", "eval", "predict", "ablate", "demo", "explain", "export", "bench",
             "profile"]


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"attnres {attnres.__version__}"
    declared = re.search(r'^version = "(.+)"', PYPROJECT.read_text(), flags=re.M).group(1)
    assert attnres.__version__ == declared


@pytest.mark.parametrize("name", DOCUMENTED)
def test_every_option_has_one_help_line_and_its_default(name: str) -> None:
    parser = subparser(name)
    assert parser.formatter_class is DefaultsFormatter
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and "\n" not in action.help, action.option_strings
        shown = formatter._get_help_string(action)
        if action.option_strings and not action.required:
            assert re.search(r"default|required", shown, flags=re.I), (
                f"{name} {action.option_strings[0]}: {shown!r}")
    text = parser.format_help()  # renders (a stray % in a help line would raise here)
    assert "--help" in text


# options whose help is only the default the help formatter appends (cli/train.py and
# cli/eval.py, which the mixed-precision work is changing): to be given a line of their own
NO_HELP_YET: dict[str, list[str]] = {}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=f"{n}: {NO_HELP_YET[n]}"))
    if n in NO_HELP_YET else n for n in sorted(set(DOCUMENTED) | set(COMPUTING))])
def test_every_option_says_what_it_is_besides_its_default(name: str) -> None:
    """A help line that is only "default: X" tells a newcomer nothing about the option."""
    parser = subparser(name)
    formatter = parser._get_formatter()
    bare = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        shown = formatter._get_help_string(action) or ""
        words = re.sub(r"\(?default:[^)]*\)?", "", shown).strip(" .;,")
        if not words:
            bare.append(action.option_strings[0])
    assert not bare, f"{name}: options with no help but their default: {bare}"


def test_formatter_appends_what_the_default_is() -> None:
    parser = argparse.ArgumentParser(formatter_class=DefaultsFormatter)
    parser.add_argument("--n", type=int, default=4, help="how many")
    parser.add_argument("--flag", action="store_true", help="do it")
    parser.add_argument("--on", action=argparse.BooleanOptionalAction, default=True, help="x")
    parser.add_argument("--none", help="a value")
    parser.add_argument("--said", default=3, help="three (default: 3, the usual)")
    formatter = parser._get_formatter()
    shown = {a.dest: formatter._get_help_string(a) for a in parser._actions}
    assert shown["n"] == "how many (default: %(default)s)".replace("%(default)s", "4")
    assert shown["flag"] == "do it (default: off)" and shown["on"] == "x (default: on)"
    assert shown["none"] == "a value (default: none)"
    assert shown["said"] == "three (default: 3, the usual)"  # not said twice


@pytest.mark.parametrize("name", COMPUTING)
def test_every_computing_command_takes_the_same_threads_option(name: str) -> None:
    (action,) = [a for a in subparser(name)._actions if "--threads" in a.option_strings]
    assert action.type is int and action.default is None
    assert f"{default_threads()} here" in action.help


def test_threads_default_to_torchs_own_count_and_are_recorded() -> None:
    before = torch.get_num_threads()
    try:
        args = argparse.Namespace(threads=None)
        assert apply_threads(args) == before == default_threads() == args.threads
        assert torch.get_num_threads() == before  # a caller's setting is left alone
        assert apply_threads(argparse.Namespace(threads=1)) == 1 == torch.get_num_threads()
        with pytest.raises(ValueError, match="--threads 0"):
            apply_threads(argparse.Namespace(threads=0))
    finally:
        torch.set_num_threads(before)


def test_image_size_options_say_what_they_are() -> None:
    from attnres.cli import COMMANDS

    having = [n for n in COMMANDS
              if any("--image-size" in a.option_strings for a in subparser(n)._actions)]
    assert {"train", "explain", "export", "bench", "profile"} <= set(having)
    for name in having:
        (action,) = [a for a in subparser(name)._actions if "--image-size" in a.option_strings]
        assert action.help and ("size" in action.help or "pixels" in action.help), name


def test_data_sets_print_short() -> None:
    from attnres.data import ImageData, ImageSet

    images = torch.zeros(50, 3, 12, 12, dtype=torch.uint8)
    split = ImageSet(images, torch.arange(50) % 12)
    data = ImageData(split, ImageSet(images[:5], torch.arange(5)), [f"c{i}" for i in range(12)],
                     (0.5,) * 3, (0.2,) * 3, 12, "small", "toy")
    assert repr(split) == "ImageSet(50 images of 3x12x12 uint8)"
    text = repr(data)
    assert text.startswith("ImageData('toy': 50 train / 5 val images, 12x12 px, 12 classes")
    assert "c9, ..." in text and "tensor" not in text and len(text) < 200
    assert "tensor" not in str(attnres.load_dataset("digits", image_size=8))


def test_missing_authors_checkpoint_names_their_release(tmp_path) -> None:
    from attnres.models.pretrained import read_state_dict

    missing = tmp_path / "RESNET50_CBAM_new_name_wrap.pth"
    with pytest.raises(FileNotFoundError) as error:
        read_state_dict(missing)
    message = str(error.value)
    assert "github.com/Jongchan/attention-module" in message
    assert str(missing) in message and "\n" not in message
    from attnres.models import cbam_authors_model

    with pytest.raises(FileNotFoundError) as error:  # as a user reaches it
        cbam_authors_model("resnet18", pretrained=missing)
    assert "github.com/Jongchan/attention-module" in str(error.value)
    assert str(missing.absolute()) in str(error.value)
    with pytest.raises(FileNotFoundError) as error:  # other files: no such hint
        read_state_dict(tmp_path / "mine.pt")
    assert "Jongchan" not in str(error.value)


def test_train_from_a_missing_authors_checkpoint_names_their_release(tmp_path, capsys) -> None:
    """`attnres train --from RESNET50_CBAM...pth` (not the authors' route, which is
    --pretrained) still says where the file comes from, in one line, exit 2."""
    from attnres.cli import main

    missing = tmp_path / "RESNET50_CBAM_new_name_wrap.pth"
    assert main(["train", "--from", str(missing), "--data", "digits",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnres train: error: ") and "\n" not in err
    assert "github.com/Jongchan/attention-module" in err and "--pretrained" in err
    assert main(["train", "--from", str(tmp_path / "mine.pt"), "--data", "digits",
                 "--out", str(tmp_path / "run2")]) == 2
    assert "Jongchan" not in capsys.readouterr().err


def test_a_command_run_in_process_restores_the_thread_count(capsys) -> None:
    before = torch.get_num_threads()
    asked = before + 1
    assert main(["profile", "--arch", "resnet20", "--attention", "none", "--image-size", "8",
                 "--repeats", "3", "--threads", str(asked)]) == 0
    assert f"{asked} threads" in capsys.readouterr().out  # it ran with them
    assert torch.get_num_threads() == before  # and gave them back


@pytest.mark.parametrize("name", ["train", "bench", "profile"])
def test_attention_help_lists_every_registered_gate(name: str) -> None:
    """The --attention help comes from the registry: a module registered later (coord) is
    listed without touching the CLI."""
    from attnres.attention import list_attention

    action = next(a for a in subparser(name)._actions if "--attention" in a.option_strings)
    listed = re.findall(r"[a-z]+", action.help.split("(")[0])
    assert set(list_attention("gate")) <= set(listed), action.help
