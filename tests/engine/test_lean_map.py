"""A plain sequential map runs its items in one copy of the caller's context that holds
the map's enclosing run: items see the caller's contextvars and the map, the caller and
the consumer's code between items see neither the map nor what its nodes set."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from plait import Pipeline, node
from plait.engine.context import ENCLOSING

MARK: contextvars.ContextVar[str] = contextvars.ContextVar("mark", default="unset")


@node(output_name="y")
def look(x: int) -> tuple[str, int]:
    seen = MARK.get()
    MARK.set(f"item {x}")  # stays in the map's context
    return seen, ENCLOSING.get().map_depth


def test_items_see_the_caller_and_the_map_and_leave_the_callers_context_alone() -> None:
    token = MARK.set("caller")
    try:
        results = Pipeline([look]).map({"x": [1, 2]}, map_over="x")
        assert MARK.get() == "caller"
    finally:
        MARK.reset(token)
    assert results == [{"y": ("caller", 1)}, {"y": ("item 1", 1)}]
    assert ENCLOSING.get().map_depth == 0


def test_the_consumer_between_items_keeps_its_own_context() -> None:
    seen = []
    for _, outputs in Pipeline([look]).imap({"x": [1, 2, 3]}, map_over="x", ordered=True):
        seen.append((outputs["y"][1], ENCLOSING.get().map_depth, MARK.get()))
    assert seen == [(1, 0, "unset")] * 3


def test_what_nodes_set_in_an_awaited_plain_map_stays_out_of_the_awaiting_task() -> None:
    async def consume() -> list[tuple[tuple[str, int], str]]:
        MARK.set("caller")
        seen = []
        async for _, outputs in Pipeline([look]).aimap({"x": [1, 2]}, map_over="x", ordered=True):
            seen.append((outputs["y"], MARK.get()))
        assert MARK.get() == "caller"
        return seen

    assert asyncio.run(consume()) == [(("caller", 1), "caller"), (("item 1", 1), "caller")]


@node(output_name="y")
async def alook(x: int) -> tuple[str, int]:
    seen = MARK.get()
    MARK.set(f"item {x}")  # stays in the item's own task
    await asyncio.sleep(0)
    return seen, ENCLOSING.get().map_depth


def test_async_items_of_one_call_each_see_the_caller_and_the_map_in_a_context_of_their_own() -> (
    None
):
    """A map of one plain async call (a ``batch``) runs each item as that call in its own
    task, with no run around it: each sees the caller's contextvars and the map, and what
    it sets reaches neither the other items nor the caller."""

    async def caller() -> list[dict[str, tuple[str, int]]]:
        MARK.set("caller")
        results = await Pipeline([alook]).amap({"x": [1, 2, 3]}, map_over="x")
        assert MARK.get() == "caller"
        assert ENCLOSING.get().map_depth == 0
        return results

    assert asyncio.run(caller()) == [{"y": ("caller", 1)}] * 3


def test_an_async_item_of_one_call_fails_with_notes_naming_the_node_and_the_item() -> None:
    @node(output_name="y")
    async def half(x: int) -> float:
        await asyncio.sleep(0)
        if x == 2:
            raise ValueError("two")
        return x / 2

    with pytest.raises(ValueError, match="two") as info:
        Pipeline([half]).map({"x": [1, 2, 3]}, map_over="x")
    assert info.value.__notes__ == [
        "plait: raised in node 'half' (→ y) called with (x=2)",
        "plait: in map item 1 with inputs (x=2)",
    ]
    collected = Pipeline([half]).map({"x": [1, 2, 3]}, map_over="x", on_error="collect")
    assert [type(c).__name__ for c in collected] == ["dict", "ItemError", "dict"]
