"""A plain sequential map runs its items in one copy of the caller's context that holds
the map's enclosing run: items see the caller's contextvars and the map, the caller and
the consumer's code between items see neither the map nor what its nodes set."""

from __future__ import annotations

import asyncio
import contextvars

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
