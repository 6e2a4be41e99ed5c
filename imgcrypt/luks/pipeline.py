"""Order-preserving map of a function over chunks (sequential for now; see issue 4)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """``map(fn, items)``, results in input order."""
    for item in items:
        yield fn(item)
