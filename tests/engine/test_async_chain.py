"""A chain of async nodes that never suspend is awaited step after step, with no task:
errors still name their node, and a branch leaves that path for the dataflow."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from plait import Pipeline, node


def async_chain(n: int, fail_at: int = -1, called: list[int] | None = None) -> list[Any]:
    """``async f{i}(v{i})`` returning ``v{i} + 1`` without awaiting; ``f{fail_at}`` raises."""
    namespace: dict[str, Any] = {"called": [] if called is None else called}
    for i in range(n):
        fails = f"    raise KeyError('step {i}')\n" if i == fail_at else ""
        source = f"async def f{i}(v{i}):\n    called.append({i})\n{fails}    return v{i} + 1\n"
        exec(source, namespace)
    return [node(namespace[f"f{i}"], output_name=f"v{i + 1}") for i in range(n)]


def test_a_long_async_chain_runs_in_order() -> None:
    result = Pipeline(async_chain(300)).run({"v0": 0})
    assert result["v300"] == 300


def test_a_failure_in_an_async_chain_names_its_node_and_stops_the_chain() -> None:
    called: list[int] = []
    with pytest.raises(KeyError) as info:
        asyncio.run(Pipeline(async_chain(50, fail_at=30, called=called)).arun({"v0": 0}))
    assert called == list(range(31))
    assert "plait: raised in node 'f30' (→ v31) called with (v30=30)" in info.value.__notes__


def test_an_async_chain_with_a_branch_runs_every_node() -> None:
    @node(output_name="side")
    async def side(v10: int) -> int:
        await asyncio.sleep(0.001)
        return -v10

    @node(output_name="both")
    def both(side: int, v20: int) -> int:
        return side + v20

    result = Pipeline([*async_chain(20), side, both]).run({"v0": 0})
    assert result["both"] == 10
