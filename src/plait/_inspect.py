"""Small facts about callables that several layers need."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any


def is_async_callable(func: Callable[..., Any]) -> bool:
    """True for ``async def`` functions, partials of them, and objects whose
    ``__call__`` is ``async def``: calling them returns a coroutine."""
    inner = unwrap_partial(func)
    if inspect.iscoroutinefunction(inner):
        return True
    call = getattr(inner, "__call__", None)  # noqa: B004 - objects whose __call__ is async
    return not inspect.isroutine(inner) and inspect.iscoroutinefunction(call)


def unwrap_partial(func: Callable[..., Any]) -> Callable[..., Any]:
    """The function inside (nested) ``functools.partial`` objects."""
    while isinstance(func, functools.partial):
        func = func.func
    return func
