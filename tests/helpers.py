"""Builders for test graphs."""

from __future__ import annotations

import asyncio
import types
from typing import Any

from plait import Node, node


def _step(v: int) -> int:
    return v + 1


async def _astep(v: int) -> int:
    await asyncio.sleep(0)
    return v + 1


def renamed(func: Any, param: str, name: str) -> Any:
    """A copy of one-parameter ``func`` whose parameter is called ``param``."""
    code = func.__code__.replace(co_varnames=(param, *func.__code__.co_varnames[1:]), co_name=name)
    code = code.replace(co_qualname=name)
    return types.FunctionType(code, func.__globals__, name)


def chain(length: int, *, async_every: int = 0) -> list[Node[..., Any]]:
    """Nodes n0..n{length-1}; node i consumes v{i} and produces v{i+1} = v{i} + 1.

    With ``async_every=k``, every k-th node is ``async def`` (awaiting sleep(0)).
    Built without exec, so 100,000 nodes take about a second.
    """
    nodes = []
    for i in range(length):
        is_async = async_every and i % async_every == 0
        func = renamed(_astep if is_async else _step, f"v{i}", f"n{i}")
        nodes.append(node(func, output_name=f"v{i + 1}"))
    return nodes
