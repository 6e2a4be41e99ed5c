"""Refusing JSON objects that repeat a key: Python's json keeps the last value silently, which
would let one document mean two things to two readers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Pairs = list[tuple[str, Any]]


def unique_keys(refuse: Callable[[str], Exception]) -> Callable[[Pairs], dict[str, Any]]:
    """An ``object_pairs_hook`` that raises ``refuse(key)`` for the first repeated key."""

    def hook(pairs: Pairs) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise refuse(key)
            out[key] = value
        return out

    return hook
