"""Reading any JSON shape an admin endpoint answers: a value of the wrong type counts as
absent, strings are cut, counters are ASCII digits or plain ints."""

from __future__ import annotations

from typing import Any

MAX_TEXT = 1024
"""Longest string kept from an answer (a name, a path, a regex)."""


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def text_of(value: Any, default: str = "") -> str:
    """A string of the answer, cut at :data:`MAX_TEXT`; ``default`` for any other type."""
    if not isinstance(value, str):
        return default
    return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "..."


def count_of(value: Any) -> int | None:
    """A counter's value, a number or a string of ASCII digits; None for anything else."""
    if isinstance(value, str) and 0 < len(value) <= 20 and value.isascii() \
            and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 64:
        return value
    return None
