"""Batch nodes: 10,000 items through a node whose batch call costs 10 ms + 0.01 ms per
item, against its single form costing 10 ms per call, with the same concurrency (at
most 50 calls in flight, the node's ``max_concurrent``) on an ``"async"`` map.

Each plait figure is measured beside the same work written by hand with asyncio
(a semaphore of 50 and ``gather``: over the items for single calls, over chunks of
``BATCH`` items for batch calls), interleaved in one run, medians of the repeats.
"""

from __future__ import annotations

import asyncio
from typing import Any

from harness import Row, ameasure, row
from plait import LocalEngine, Pipeline, node

ITEMS = list(range(10_000))
BATCH = 100
IN_FLIGHT = 50  # calls at once, single or batch
CALL = 0.010  # seconds per call
PER_ITEM = 0.00001  # seconds per item of a batch call
REPEATS = 3


async def embed_one(x: int) -> int:
    await asyncio.sleep(CALL)
    return x * 2


async def embed_many(x: list[int]) -> list[int]:
    await asyncio.sleep(CALL + PER_ITEM * len(x))
    return [v * 2 for v in x]


single = node(embed_one, output_name="y", max_concurrent=IN_FLIGHT)
batched = node(embed_many, output_name="y", batch_size=BATCH, max_concurrent=IN_FLIGHT)


def pipeline(made: Any) -> Pipeline:
    # Items in flight: enough for IN_FLIGHT batch calls of BATCH items (and single calls).
    engine = LocalEngine(map_executor="async", max_concurrent=IN_FLIGHT * BATCH)
    return Pipeline([made], engine=engine)


async def raw_single() -> list[int]:
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(x: int) -> int:
        async with slots:
            return await embed_one(x)

    return await asyncio.gather(*(one(x) for x in ITEMS))


async def raw_batched() -> list[int]:
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def call(chunk: list[int]) -> list[int]:
        async with slots:
            return await embed_many(chunk)

    chunks = [ITEMS[i : i + BATCH] for i in range(0, len(ITEMS), BATCH)]
    return [y for ys in await asyncio.gather(*(call(c) for c in chunks)) for y in ys]


def run() -> list[Row]:
    return asyncio.run(_run())


async def _run() -> list[Row]:
    by_single, by_batch = pipeline(single), pipeline(batched)
    expected = [x * 2 for x in ITEMS]

    async def plait_single() -> None:
        results = await by_single.amap({"x": ITEMS}, map_over="x")
        assert [r["y"] for r in results] == expected

    async def plait_batched() -> None:
        results = await by_batch.amap({"x": ITEMS}, map_over="x")
        assert [r["y"] for r in results] == expected

    t_single, t_raw_single, t_batch, t_raw_batch = await ameasure(
        plait_single, raw_single, plait_batched, raw_batched, repeats=REPEATS
    )
    per = f"10k items, {IN_FLIGHT} calls in flight"
    return [
        row(f"batch node (batch of {BATCH}), {per}, amap", t_batch * 1e3, t_raw_batch * 1e3, "ms"),
        row(f"single form of that node, {per}, amap", t_single * 1e3, t_raw_single * 1e3, "ms"),
        row(
            "batch speed-up over single calls (lower bound: the raw code's own)",
            t_single / t_batch,
            t_raw_single / t_raw_batch,
            "×",
            overhead=False,
        ),
    ]
