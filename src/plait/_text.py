"""Small text helpers for error messages: short reprs, suggestions, lists."""

from __future__ import annotations

import difflib
import functools
import reprlib
from collections.abc import Callable, Iterable
from typing import Any


def _shortener(text: int, items: int, levels: int) -> reprlib.Repr:
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = text
    shortener.maxlist = shortener.maxtuple = shortener.maxset = shortener.maxdict = items
    shortener.maxlevel = levels
    return shortener


_repr = _shortener(text=60, items=5, levels=3)
_brief = _shortener(text=24, items=3, levels=2)


def short_repr(value: object, *, brief: bool = False) -> str:
    """A repr that stays short for large or deeply nested values; ``brief``: shorter
    still, for labels in a picture."""
    try:
        return (_brief if brief else _repr).repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        return f"<{type(value).__name__} object (repr failed)>"


def quoted(names: Iterable[str]) -> str:
    """``'a', 'b', 'c'``."""
    return ", ".join(repr(n) for n in names)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` (with a leading space) or an empty string."""
    matches = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    if not matches:
        return ""
    return f" Did you mean {' or '.join(repr(m) for m in matches)}?"


def plural(count: int, word: str, plural_word: str | None = None) -> str:
    """``1 input``, ``2 inputs``."""
    return f"{count} {word if count == 1 else (plural_word or word + 's')}"


def callable_name(func: Callable[..., Any]) -> str:
    """The name of what ``func`` calls (through partials), for names and messages."""
    inner: Any = func
    while isinstance(inner, functools.partial):
        inner = inner.func
    name = getattr(inner, "__name__", None)
    return name if isinstance(name, str) else type(inner).__name__


def spans(indices: Iterable[int]) -> str:
    """Indices as sorted ranges: ``0-3, 7, 9-12``."""
    runs: list[list[int]] = []
    for index in sorted(indices):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
