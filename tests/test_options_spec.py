"""The one table of option rules (`attnres.training.options_spec.RULES`): it covers every
`TrainConfig` field, the `train` command line agrees with it, its rules accept the
defaults and refuse what they say they refuse, and every `--help` line of `train` and
`eval` states its default."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest

from attnres.cli import build_parser
from attnres.cli.common import number
from attnres.training import RECIPES, TrainConfig, validate_config
from attnres.training.options_spec import RULES, Rule

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def test_every_field_has_exactly_one_rule():
    assert sorted(RULES) == sorted(FIELDS)
    assert all(isinstance(rule, Rule) for rule in RULES.values())


def test_the_defaults_and_every_recipe_pass_their_rules():
    validate_config(TrainConfig())
    for name in RECIPES:
        validate_config(TrainConfig(**RECIPES[name], recipe=name))


def test_the_train_options_agree_with_the_rules():
    """Each option sets a field; its argparse type or choices match the field's rule; each
    field but `recipe`'s inputs has an option."""
    options = {a.dest: a for a in subparser("train")._actions if a.option_strings
               and a.dest not in ("help", "threads")}  # --threads sets torch, not a field
    assert set(options) <= set(FIELDS)
    missing = set(FIELDS) - set(options) - {"step_milestones", "step_gamma", "split_seed"}
    assert not missing, f"fields without a train option: {sorted(missing)}"
    for dest, action in options.items():
        rule = RULES[dest]
        assert action.default is None, dest  # so that a resume knows what was given
        if rule.kind == "int":
            assert action.type is int, dest
        elif rule.kind == "number":
            assert action.type in (float, number), dest
        elif rule.kind == "bool":
            assert action.nargs == 0, dest  # --x / --no-x, or a store_true flag
        elif rule.kind == "choice" and action.choices is not None:
            assert set(action.choices) <= set(rule.choices()), dest


@pytest.mark.parametrize("command", ["train", "eval"])
def test_every_help_line_states_its_default(command):
    for action in subparser(command)._actions:
        if not action.option_strings or action.dest == "help" or action.required:
            continue
        assert action.help and "default" in action.help, (command, action.dest)
    text = subparser(command).format_help()  # argparse can render every line
    assert "default: " in text


@pytest.mark.parametrize(("name", "bad"), [
    ("lr", 0.0), ("lr", math.inf), ("epochs", 0), ("epochs", -1.5), ("momentum", 1.0),
    ("weight_decay", -1e-9), ("weight_decay", 1e39), ("split_seed", -1), ("seed", 2**63),
    ("image_size", 7), ("image_size", 4097), ("skip_nonfinite", -1), ("amp", 1),
    ("schedule", "Cosine"), ("arch", "resnet"), ("val_split", 1.0), ("val_split", 0),
    ("warmup_epochs", 2e9), ("out", ""), ("resume", ""), ("placement", []),
])
def test_rules_refuse_what_they_describe(name, bad):
    with pytest.raises(ValueError) as info:
        validate_config(TrainConfig(**{name: bad}))
    message = str(info.value)
    assert "\n" not in message and (repr(bad) in message or name in message)


def test_the_largest_learning_rate_must_fit_float32():
    validate_config(TrainConfig(lr=1e9))  # allowed: the run then fails as not finite
    with pytest.raises(ValueError, match="beyond float32"):
        validate_config(TrainConfig(lr=1e30, attention_lr_mult=1e10))
    with pytest.raises(ValueError, match="beyond float32"):
        validate_config(TrainConfig(lr=1.0, schedule="step", step_gamma=1e20))
