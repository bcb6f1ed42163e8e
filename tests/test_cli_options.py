"""The one key=value grammar of the command line (`attnres.cli.options`), and that the two
options that used to parse on their own (`--attention-kwargs`, `ablate --set`) still read
every valid input as before."""

from __future__ import annotations

import ast
import json
import math

import pytest

from attnres.cli.ablate import parse_settings
from attnres.cli.options import parse_key_values


def old_attention_kwargs(text: str) -> dict:
    """`attnres train --attention-kwargs` before the shared grammar: split at every comma,
    a Python literal or else the text."""
    result = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        try:
            result[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            result[key.strip()] = value.strip()
    return result


def old_set(items: list[str]) -> dict:
    """`attnres ablate --set` before the shared grammar: one FIELD=VALUE per option, JSON or
    else the text, dashes in the field made underscores."""
    result = {}
    for item in items:
        key, _, text = item.partition("=")
        try:
            result[key.strip().replace("-", "_")] = json.loads(text)
        except json.JSONDecodeError:
            result[key.strip().replace("-", "_")] = text
    return result


@pytest.mark.parametrize("text", [
    "reduction=8,kernel_size=3", "reduction=8", "", "gate=sigmoid", "pool_types='avg'",
    " reduction = 4 , use_bias=True ", "scale=0.5,name='x'", "k=-3,flag=False,none=None",
])
def test_attention_kwargs_read_as_before(text):
    assert parse_key_values(text, "--attention-kwargs") == old_attention_kwargs(text)


@pytest.mark.parametrize("items", [
    ["lr=0.05", "schedule=step"], ["warmup-epochs=0.2"], ["amp=true", "compile=false"],
    ["preset=null"], ["step_milestones=[0.5, 0.75]"], ["step_milestones=[0.5,0.75]"],
    ["blocks={\"3\": [true, false, true]}"], ["attention_kwargs={\"reduction\": 8}"],
    ["out=runs/x"], ["epochs=3", "lr=1e-2"], ['data="digits"'],
])
def test_set_reads_as_before(items):
    assert parse_settings(items) == old_set(items)


def test_values_lists_and_words():
    got = parse_key_values("a=1,b=[1, 2],c={'x': (3, 4)},d=text,e=true,f=null,g='q',h=2.5e-3",
                           "--x")
    assert got == {"a": 1, "b": [1, 2], "c": {"x": (3, 4)}, "d": "text", "e": True, "f": None,
                   "g": "q", "h": 2.5e-3}
    assert math.isnan(parse_key_values("v=NaN", "--x")["v"])


@pytest.mark.parametrize("text", ["reduction", "=3", "a=1,b", "1a=2", "a b=1"])
def test_bad_items_are_one_line_errors_naming_the_item(text):
    with pytest.raises(ValueError) as info:
        parse_key_values(text, "--attention-kwargs")
    message = str(info.value)
    assert message.startswith("--attention-kwargs item ") and "name=value" in message
    assert "\n" not in message


def test_set_errors_name_the_option():
    with pytest.raises(ValueError, match=r"--set item 'lr': expected name=value, e\.g\. "
                                         r"warmup_epochs=0\.2"):
        parse_settings(["lr"])
