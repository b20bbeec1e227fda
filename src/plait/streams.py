"""Driving a map's stream of finished items: collect, flatten, or iterate from sync code.

The map loop (:func:`plait.engine.mapping.iterate`) is an async generator of
batches. These helpers turn it into what each entry point returns: a list
(``map``/``amap``), an async iterator (``aimap``) or a sync iterator (``imap``,
one bridge call per batch). A map of sync nodes on the sequential executor
skips all of that and runs as plain calls (:func:`inline_items`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterator

from plait import bridge
from plait.engine.engine import Engine
from plait.engine.mapping import ItemRunner, MapSpec, Outcome, annotate_item, item_error
from plait.engine.plan import Plan

Batches = AsyncGenerator[list[tuple[int, Outcome]], None]


def runs_inline(engine: Engine, plan: Plan) -> bool:
    """True when a map can run as plain calls: sequential items of sync nodes."""
    return engine.map_executor == "sequential" and engine.inline and not plan.needs_loop


async def collect(batches: Batches) -> list[Outcome]:
    """Every outcome of a map, in input order."""
    found: dict[int, Outcome] = {}
    async for batch in batches:
        found.update(batch)
    return [found[i] for i in range(len(found))]


async def flatten(
    batches: Batches,
) -> AsyncIterator[tuple[int, Outcome]]:
    try:
        async for batch in batches:
            for entry in batch:
                yield entry
    finally:
        await batches.aclose()


async def next_batch(
    batches: Batches,
) -> list[tuple[int, Outcome]] | None:
    return await anext(batches, None)


def sync_stream(
    batches: Batches,
) -> Iterator[tuple[int, Outcome]]:
    """Drive an async stream of batches from sync code, one bridge call per batch."""
    try:
        while (
            batch := bridge._run_sync(next_batch(batches), timeout=None, stacklevel=3)
        ) is not None:
            yield from batch
    finally:
        # Leaving early (break, an exception, garbage collection) cancels what is in flight.
        bridge._run_sync(batches.aclose(), timeout=None, stacklevel=3)


def inline_items(runner: ItemRunner, spec: MapSpec) -> Iterator[tuple[int, Outcome]]:
    """Sequential items of sync nodes: plain calls, no event loop."""
    run = runner.run_inline
    collect = spec.on_error == "collect"
    for index, item in enumerate(spec.items()):
        try:
            outcome: Outcome = run(index, item)
        except Exception as exc:
            annotate_item(exc, index, runner.inputs(item))
            if not collect:
                raise
            outcome = item_error(exc, index, runner.inputs(item))
        yield index, outcome
