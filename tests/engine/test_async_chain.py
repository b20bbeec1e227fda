"""A chain of async nodes that never suspend is awaited step after step, with no task:
errors still name their node, and a branch leaves that path for the dataflow."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from plait import ItemError, MemoryCache, Pipeline, node
from plait.errors import NodeDefinitionError


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


def test_a_lone_async_node_fails_with_its_note_and_a_returned_coroutine_is_refused() -> None:
    @node(output_name="y")
    async def lone(x: int) -> int:
        raise KeyError(f"lone {x}")

    with pytest.raises(KeyError) as info:
        Pipeline([lone]).run({"x": 1})
    assert info.value.__notes__ == ["plait: raised in node 'lone' (→ y) called with (x=1)"]

    async def inner() -> int:
        return 1

    @node(output_name="y")
    async def nests(x: int) -> Any:
        return inner()

    with pytest.raises(NodeDefinitionError, match="returned a coroutine"):
        Pipeline([nests]).run({"x": 1})


def test_a_lone_async_node_with_a_cache_or_a_retry_takes_the_dataflow() -> None:
    calls: list[int] = []

    @node(output_name="y", retries=1, backoff=0)
    async def once_flaky(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise OSError("first try")
        return x + 1

    assert Pipeline([once_flaky]).run({"x": 1}) == {"y": 2}
    cached = Pipeline([node(once_flaky.func, output_name="y")], cache=MemoryCache())
    assert cached.run({"x": 5}) == {"y": 6}
    assert cached.run({"x": 5}) == {"y": 6}
    assert calls == [1, 1, 5]


async def _half(x: int) -> int:
    if x == 3:
        raise KeyError(f"item {x}")
    return x // 2


async def _scaled_half(x: int, scale: int = 1) -> int:
    return await _half(x) * scale


async def _returns_coroutine(x: int) -> Any:
    return _half(x)


@pytest.mark.parametrize(
    ("pipeline", "called_with"),
    [
        pytest.param(Pipeline([node(_half, output_name="y")]), "x=3", id="the item alone"),
        pytest.param(
            Pipeline([node(_scaled_half, output_name="y")]).bind(scale=1),
            "x=3, scale=1",
            id="with a bound input",
        ),
        pytest.param(
            Pipeline([node(_half, output_name="y", retries=1, retry_on=OSError)]),
            "x=3",
            id="controlled: the dataflow",
        ),
    ],
)
def test_a_map_of_one_async_call_gives_what_the_dataflow_gives(
    pipeline: Pipeline, called_with: str
) -> None:
    """A map of one plain async call runs each item as that call (its value passed as
    it is when it is the call's one argument): outputs, error notes and collected
    errors are those of the dataflow, and a returned coroutine is refused."""
    items = {"x": range(6)}
    outcomes = pipeline.map(items, map_over="x", on_error="collect")
    assert outcomes[:3] == [{"y": 0}, {"y": 0}, {"y": 1}]
    failed = outcomes[3]
    assert isinstance(failed, ItemError)
    assert (failed.index, failed.inputs, type(failed.exception)) == (3, {"x": 3}, KeyError)
    with pytest.raises(KeyError) as info:
        pipeline.map(items, map_over="x")
    assert info.value.__notes__[0].endswith(f"(→ y) called with ({called_with})")
    assert "map item 3" in info.value.__notes__[1]

    refused = Pipeline([node(_returns_coroutine, output_name="y")])
    with pytest.raises(NodeDefinitionError, match="'_returns_coroutine' returned a coroutine"):
        refused.map({"x": [1]}, map_over="x")
