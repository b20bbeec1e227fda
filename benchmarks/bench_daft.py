"""DaftEngine beside the same work written by hand on Daft, in the same run.

(a) 10,000 trivial items through 3 sync nodes: plait's map on ``DaftEngine()`` vs
    three hand-written ``@daft.func`` row UDFs chained with ``with_column``, whose
    columns are then turned into the same list of dicts; then the same with the
    middle node (and the hand-written one) asking for a CPU, which makes plait's
    query three stages instead of one.
(b) 1,000 async items of 10 ms through a node with ``max_concurrent=100`` on
    ``DaftEngine()`` vs ``asyncio.gather`` under a ``Semaphore(100)``.
(c) 40 CPU-bound items of ~50 ms: the speed-up over a sequential loop of
    ``DaftEngine()`` with the node on plait's process pool (``executor="parallel"``),
    and of ``DaftEngine(use_process=True)`` (Daft's processes, started per query).

Daft's native runner; the Ray runner is exercised by the parity suite (``make
test-ray``), not timed here.
"""

from __future__ import annotations

import asyncio
import os
import sys

os.environ.setdefault("DAFT_PROGRESS_BAR", "0")
os.environ.setdefault("DO_NOT_TRACK", "1")  # Daft's import-time analytics

import daft

from bench_distributed import CPU_ITEMS, chain, cpu_pipeline, spin
from bench_map import fa, fb, fc
from harness import Row, measure, row
from plait import DaftEngine, Pipeline, node

ITEMS = 10_000
ASYNC_ITEMS = 1_000
LIMIT = 100
SLEEP = 0.01
REPEATS = 5


def trivial_rows() -> list[Row]:
    return [trivial_row(staged=False), trivial_row(staged=True)]


def trivial_row(*, staged: bool) -> Row:
    """(a); ``staged``: node b (and the hand-written b) asks for a CPU, so plait's query
    has three stages, a row going from one to the next as bytes."""
    xs = list(range(ITEMS))
    expected = [{"a": x + 1, "b": x + 2, "c": x + 3} for x in xs]
    nodes = chain()
    request = {"cpus": 1} if staged else {}
    if staged:
        nodes[1] = node(fb, output_name="b", resources=request)
    pipeline = Pipeline(nodes, engine=DaftEngine())
    a = daft.func(fa, return_dtype=daft.DataType.int64())
    b = daft.func(fb, return_dtype=daft.DataType.int64(), **request)
    c = daft.func(fc, return_dtype=daft.DataType.int64())

    def plait_map() -> None:
        assert pipeline.map({"x": xs}, map_over="x") == expected

    def hand_map() -> None:
        df = daft.from_pydict({"x": xs})
        df = df.with_column("a", a(df["x"]))
        df = df.with_column("b", b(df["a"]))
        df = df.with_column("c", c(df["b"]))
        got = df.to_pydict()
        out = [
            {"a": p, "b": q, "c": r} for p, q, r in zip(got["a"], got["b"], got["c"], strict=True)
        ]
        assert out == expected

    plait_s, hand_s = measure(plait_map, hand_map, repeats=REPEATS)
    name = "Daft: map 10k items x 3 nodes vs hand-written Daft UDFs"
    if staged:
        name = "Daft: 10k items x 3 nodes, b with resources: 3 stages, vs by hand"
    return row(name, plait_s * 1e3, hand_s * 1e3, "ms", limit=None if staged else ("ratio", 1.2))


async def wait(x: int) -> int:
    await asyncio.sleep(SLEEP)
    return x


def async_rows() -> list[Row]:
    pipeline = Pipeline([node(wait, output_name="y", max_concurrent=LIMIT)], engine=DaftEngine())
    xs = list(range(ASYNC_ITEMS))

    def plait_map() -> None:
        assert len(pipeline.map({"x": xs}, map_over="x")) == ASYNC_ITEMS

    async def gather() -> list[int]:
        slots = asyncio.Semaphore(LIMIT)

        async def one(x: int) -> int:
            async with slots:
                return await wait(x)

        return await asyncio.gather(*(one(x) for x in xs))

    plait_s, raw_s = measure(plait_map, lambda: asyncio.run(gather()), repeats=REPEATS)
    return [
        row(
            f"Daft: 1k async items x 10 ms, {LIMIT} at once, vs gather",
            plait_s * 1e3,
            raw_s * 1e3,
            "ms",
            limit=("ratio", 1.3),
        )
    ]


def cpu_rows() -> list[Row]:
    """CPU-bound nodes on Daft: plait's process pool for the node (``executor=
    "parallel"``, warm across queries), and Daft's own processes (``use_process``,
    started per query)."""
    cpu = cpu_pipeline()
    on_pool = Pipeline([node(spin, output_name="y", executor="parallel")], engine=DaftEngine())
    on_daft = cpu.with_engine(DaftEngine(use_process=True, concurrency=2, batch_size=10))
    items = {"x": range(CPU_ITEMS)}
    pool_s, daft_s, sequential_s = measure(
        lambda: on_pool.map(items, map_over="x"),
        lambda: on_daft.map(items, map_over="x"),
        lambda: cpu.map(items, map_over="x"),
        repeats=3,
    )
    return [
        row(
            'Daft, node executor="parallel": 40 x 50 ms CPU, speed-up',
            sequential_s / pool_s,
            1.0,
            "×",
            overhead=False,
        ),
        row(
            "Daft, use_process=True: 40 x 50 ms CPU, speed-up",
            sequential_s / daft_s,
            1.0,
            "×",
            overhead=False,
        ),
    ]


def run() -> list[Row]:
    return [*trivial_rows(), *async_rows(), *cpu_rows()]


if __name__ == "__main__":
    for item in run() if len(sys.argv) == 1 else []:
        print(item)
