"""Bad command-line input: one line on stderr naming the bad value and what is allowed
(with the closest valid name), exit status 2, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnres.cli import main

CASES = [  # argv, text the message must hold (besides the bad value itself)
    (["train", "--arch", "resnet19"], "did you mean 'resnet18'"),
    (["train", "--attention", "cbma"], "did you mean 'cbam'"),
    (["train", "--placement", "blok"], "did you mean 'block'"),
    (["train", "--stages", "4"], "1..3"),
    (["train", "--blocks", "3:5"], "0..2"),
    (["train", "--blocks", "4:0"], "1..3"),
    (["train", "--preset", "progresive"], "did you mean 'progressive'"),
    (["train", "--data", "digitz"], "did you mean 'digits'"),
    (["train", "--data", "/no/such/folder"], "digits, cifar10, cifar100"),
    (["train", "--val-split", "1.5"], "(0, 1)"),
    (["train", "--val-split", "0"], "(0, 1)"),
    (["train", "--val-split", "-0.2"], "(0, 1)"),
    (["train", "--batch-size", "0"], "positive"),
    (["train", "--schedule", "cosin"], "did you mean 'cosine'"),
    (["ablate", "--preset", "modulez", "--out", "OUT"], "did you mean 'modules'"),
    (["eval", "--checkpoint", "/no/such/checkpoint.pt"], "not found"),
    (["bench", "--arch", "resnet5"], "allowed"),
    (["profile", "--attention", "sse"], "did you mean 'se'"),
    (["explain", "--checkpoint", "/no/such/run", "--out", "OUT"], "not found"),
]


@pytest.mark.parametrize("argv, hint", CASES, ids=[" ".join(a[:3]) for a, _ in CASES])
def test_bad_input_is_one_line_with_exit_status_2(argv, hint, tmp_path: Path, capsys,
                                                  monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own choice errors exit from inside parse_args
        status = e.code
    err = capsys.readouterr().err
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert f"attnres {argv[0]}: error:" in lines[0]
    value = argv[2].split(":")[0] if argv[1] == "--blocks" else argv[2]
    assert value.lstrip("-") in lines[0]
    assert hint in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_python_api_raises_value_error_with_the_same_facts() -> None:
    from attnres import build_model, create_attention, load_dataset

    with pytest.raises(ValueError, match=r"'resnet19'.*did you mean 'resnet18'"):
        build_model("resnet19")
    with pytest.raises(ValueError, match=r"'cbma'.*did you mean 'cbam'"):
        create_attention("cbma", 64)
    with pytest.raises(ValueError, match=r"stage 5 out of range.*1\.\.4"):
        build_model("resnet18", attention="se", stages=[5])
    with pytest.raises(ValueError, match=r"blocks\[2\] has 3 entries; stage 2 has 2 blocks"):
        build_model("resnet18", attention="se", blocks={2: [True, False, True]})
    with pytest.raises(ValueError, match=r"val_split 1\.5 is outside \(0, 1\)"):
        load_dataset("digits", val_split=1.5)


def test_blocks_option_puts_attention_in_the_named_blocks_only() -> None:
    from attnres.cli import build_parser
    from attnres.cli.train import config_from_args
    from attnres.models import build_model

    args = build_parser().parse_args(["train", "--attention", "se", "--blocks", "3:1,2"])
    config = config_from_args(args)
    assert config.blocks == {"3": [False, True, True]}
    model = build_model(config.arch, attention=config.attention, blocks=config.blocks)
    with_attention = sorted(name.rsplit(".", 1)[0] for name, m in model.named_modules()
                            if name.endswith(".attn") and not isinstance(m, torch.nn.Identity))
    assert with_attention == ["layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1",
                              "layer2.2", "layer3.1", "layer3.2"]
