"""The one `key=value` grammar of the command line (`--attention-kwargs`, `--set`).

    'reduction=8,kernel_size=3'  ->  {'reduction': 8, 'kernel_size': 3}

Items are separated by commas outside brackets, so a value may be a list
(`step_milestones=[0.5,0.75]`). A value is a Python literal (`8`, `0.5`, `'x'`, `[1, 2]`,
`None`, `True`), or one of JSON's `true`, `false`, `null`; anything else is the text
itself (`gate=sigmoid`). Dashes in a key are underscores (`warmup-epochs=1`).
"""

from __future__ import annotations

import ast
import json
from typing import Any

_OPEN, _CLOSE = "([{", ")]}"
_JSON_WORDS = {"true": True, "false": False, "null": None}


def _items(text: str) -> list[str]:
    """`text` split at the commas that are outside brackets."""
    items, current, depth = [], [], 0
    for char in text:
        if char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def parse_value(text: str) -> Any:
    """One value: a Python literal, JSON's true/false/null, else the text itself."""
    text = text.strip()
    if text in _JSON_WORDS:
        return _JSON_WORDS[text]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        return json.loads(text)  # NaN, Infinity
    except ValueError:
        return text


def parse_key_values(text: str, what: str, *,
                     example: str = "reduction=8,kernel_size=3") -> dict[str, Any]:
    """`'a=1,b=x'` -> `{'a': 1, 'b': 'x'}` (the grammar of this module's docstring).

    `what` names the option in errors: a one-line ValueError naming the bad item.
    """
    result: dict[str, Any] = {}
    for item in _items(text):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ValueError(f"{what} item {item!r}: expected name=value, e.g. {example}")
        result[key] = parse_value(value)
    return result


__all__ = ["parse_key_values", "parse_value"]
