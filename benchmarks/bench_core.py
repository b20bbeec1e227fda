"""Core overhead: a chain of sync nodes, concurrent async nodes, and big pipelines.

Every plait figure is timed beside its raw-Python lower bound, interleaved, in this
process: a plain loop over the same functions, ``asyncio.gather`` of the same
coroutines, ``inspect.signature`` of the same functions, and a dict-based
topological sort of the same graph.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

from harness import Row, ameasure, measure, row
from plait import Node, Pipeline, node

CHAIN = 100  # (a) sync nodes in a chain
SLEEPERS = 100  # (b) independent async nodes
SLEEP = 0.01  # (b) seconds each one sleeps
SIZES = (1_000, 10_000)  # (c) pipeline sizes; the growth check compares the two
MAX_NODE_OVERHEAD = 0.15  # µs per node, (a)
MAX_ASYNC_NODE_OVERHEAD = 2.0  # µs per node: a chain of async nodes that never await
MAX_GATHER_RATIO = 1.05
MAX_GROWTH = 13.0  # ×, for SIZES growing 10×

Func = Callable[[int], int]
Pair = tuple[Callable[[], object], Callable[[], object]]  # (plait, raw lower bound)


def kilo(n: int) -> str:
    """``10000`` -> ``"10k"``, for row names."""
    return f"{n // 1000}k"


def chain_functions(n: int) -> list[Func]:
    """``f{i}(v{i})`` returning ``v{i} + 1``: distinct parameter names to wire a chain."""
    source = "\n".join(f"def f{i}(v{i}):\n    return v{i} + 1\n" for i in range(n))
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    return [namespace[f"f{i}"] for i in range(n)]


def chain_nodes(funcs: Sequence[Func]) -> list[Node[..., Any]]:
    """Node i consumes ``v{i}`` and produces ``v{i+1}``; the pipeline input is ``v0``."""
    return [node(fn, output_name=f"v{i + 1}") for i, fn in enumerate(funcs)]


def wide_nodes(n: int) -> list[Node[..., Any]]:
    """One root node feeding ``n - 1`` independent leaves."""

    def root(x: int) -> int:
        return x

    def leaf(root: int) -> int:
        return root + 1

    leaves = [node(leaf, output_name=f"w{i}", name=f"w{i}") for i in range(1, n)]
    return [node(root, output_name="root"), *leaves]


def raw_chain(funcs: Sequence[Func]) -> Callable[[], dict[str, int]]:
    """The chain's lower bound: a loop calling each function, results kept in a dict."""
    steps = [(fn, f"v{i}", f"v{i + 1}") for i, fn in enumerate(funcs)]

    def run() -> dict[str, int]:
        values = {"v0": 0}
        for fn, arg, out in steps:
            values[out] = fn(values[arg])
        return values

    return run


def raw_graph(specs: Sequence[tuple[tuple[str, ...], str]]) -> list[int]:
    """Construction's lower bound: producer map, edges by name, Kahn's topological sort."""
    producer = {output: i for i, (_, output) in enumerate(specs)}
    successors: list[list[int]] = [[] for _ in specs]
    indegree = [0] * len(specs)
    for i, (inputs, _) in enumerate(specs):
        for name in inputs:
            source = producer.get(name)
            if source is not None:
                successors[source].append(i)
                indegree[i] += 1
    queue = deque(i for i, d in enumerate(indegree) if d == 0)
    order: list[int] = []
    while queue:
        i = queue.popleft()
        order.append(i)
        for succ in successors[i]:
            indegree[succ] -= 1
            if indegree[succ] == 0:
                queue.append(succ)
    return order


def bench_sync_chain() -> list[Row]:
    """(a) Per-node overhead of ``run()`` and ``await arun()`` on a chain of trivial nodes."""
    funcs = chain_functions(CHAIN)
    pipeline = Pipeline(chain_nodes(funcs))
    raw = raw_chain(funcs)
    inputs = {"v0": 0}
    assert pipeline.run(inputs) == {k: v for k, v in raw().items() if k != "v0"}

    run_s, raw_s = measure(lambda: pipeline.run(inputs), raw, repeats=15, number=300)

    async def raw_in_loop() -> dict[str, int]:
        return raw()

    async def timed() -> list[float]:
        return await ameasure(lambda: pipeline.arun(inputs), raw_in_loop, repeats=15, number=300)

    arun_s, raw_async_s = asyncio.run(timed())
    per_node = 1e6 / CHAIN  # seconds per run -> µs per node
    limit = ("overhead", MAX_NODE_OVERHEAD)
    unit = "µs/node"
    name = f"chain {CHAIN} sync"
    return [
        row(f"{name}: run() vs loop", run_s * per_node, raw_s * per_node, unit, limit=limit),
        row(
            f"{name}: arun() vs loop", arun_s * per_node, raw_async_s * per_node, unit, limit=limit
        ),
    ]


def async_chain_functions(n: int) -> list[Callable[[int], Any]]:
    """``async f{i}(v{i})`` returning ``v{i} + 1`` without awaiting anything."""
    source = "\n".join(f"async def f{i}(v{i}):\n    return v{i} + 1\n" for i in range(n))
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    return [namespace[f"f{i}"] for i in range(n)]


def bench_async_chain() -> list[Row]:
    """A chain of async nodes that never suspend: the scheduler's cost per async node."""
    funcs = async_chain_functions(CHAIN)
    pipeline = Pipeline(chain_nodes(funcs))
    steps = [(fn, f"v{i}", f"v{i + 1}") for i, fn in enumerate(funcs)]

    async def raw() -> dict[str, int]:  # awaiting the same coroutines in a plain loop
        values = {"v0": 0}
        for fn, arg, out in steps:
            values[out] = await fn(values[arg])
        return values

    async def timed() -> list[float]:
        expected = {k: v for k, v in (await raw()).items() if k != "v0"}
        assert await pipeline.arun({"v0": 0}) == expected
        return await ameasure(lambda: pipeline.arun({"v0": 0}), raw, repeats=15, number=100)

    arun_s, raw_s = asyncio.run(timed())
    per_node = 1e6 / CHAIN
    return [
        row(
            f"chain {CHAIN} async (no await): arun() vs awaiting them in a loop",
            arun_s * per_node,
            raw_s * per_node,
            "µs/node",
            limit=("overhead", MAX_ASYNC_NODE_OVERHEAD),
        )
    ]


async def sleeper() -> None:
    """An async node that only waits."""
    await asyncio.sleep(SLEEP)


async def gather_sleepers() -> list[None]:
    """The fan-out's lower bound: ``asyncio.gather`` of the same coroutines."""
    return await asyncio.gather(*(sleeper() for _ in range(SLEEPERS)))


def bench_async_fanout() -> list[Row]:
    """(b) Wall time of independent async nodes against ``asyncio.gather``."""
    pipeline = Pipeline([node(sleeper, output_name=f"s{i}", name=f"s{i}") for i in range(SLEEPERS)])

    async def timed() -> list[float]:
        return await ameasure(pipeline.arun, gather_sleepers, repeats=15)

    arun_s, gather_s = asyncio.run(timed())
    # run() keeps one event loop per thread; give gather a persistent loop too.
    with asyncio.Runner() as runner:
        run_s, runner_s, fresh_s = measure(
            pipeline.run,
            lambda: runner.run(gather_sleepers()),
            lambda: asyncio.run(gather_sleepers()),
            repeats=15,
        )
    name = f"{SLEEPERS} × sleep({SLEEP * 1e3:g} ms)"
    limit = ("ratio", MAX_GATHER_RATIO)
    return [
        row(f"{name}: arun() vs gather", arun_s * 1e3, gather_s * 1e3, "ms", limit=limit),
        row(f"{name}: run() vs Runner gather", run_s * 1e3, runner_s * 1e3, "ms", limit=limit),
        row(f"{name}: run() vs asyncio.run gather", run_s * 1e3, fresh_s * 1e3, "ms", limit=limit),
    ]


def by_size(
    call: str,
    shape: str,
    bound: str,
    pairs: Sequence[Pair],
    repeats: int,
    *,
    growth_target: bool = True,
) -> list[Row]:
    """Rows for one (plait, raw) pair per size in SIZES, then the growth across sizes.

    ``growth_target=False`` reports the growth without a PASS/MISS target.

    Every size is timed in the same interleaved repeats, one call each, so drift hits
    them alike and back-to-back calls cannot keep a small graph in the CPU caches.
    """
    times = measure(*(fn for pair in pairs for fn in pair), repeats=repeats)
    rows = [
        row(f"{call}({shape} {kilo(n)}) vs {bound}", plait_s * 1e3, raw_s * 1e3, "ms")
        for n, plait_s, raw_s in zip(SIZES, times[::2], times[1::2], strict=True)
    ]
    small, large = rows[0], rows[-1]
    sizes = " → ".join(kilo(n) for n in SIZES)
    rise = row(
        f"{call}({shape}) growth {sizes}",
        large["value"] / small["value"],
        large["baseline"] / small["baseline"],
        "×",
        overhead=False,
        limit=("value", MAX_GROWTH) if growth_target else None,
    )
    return [*rows, rise]


def construction(nodes: Sequence[Node[..., Any]]) -> Pair:
    """``Pipeline(nodes)`` on pre-built nodes, and :func:`raw_graph` on the same graph."""
    specs = [(item.inputs, item.outputs[0]) for item in nodes]
    return partial(Pipeline, nodes), partial(raw_graph, specs)


def run_fresh(pipelines: Iterator[Pipeline]) -> dict[str, Any]:
    """The first run of the next chain pipeline: plan compile plus run."""
    return next(pipelines).run({"v0": 0})


def first_run(funcs: Sequence[Func], calls: int) -> Pair:
    """The first run of ``calls`` fresh chain pipelines, one per call, and the raw loop."""
    nodes = chain_nodes(funcs)
    return partial(run_fresh, iter([Pipeline(nodes) for _ in range(calls)])), raw_chain(funcs)


def bench_construction() -> list[Row]:
    """(c) Node creation, Pipeline construction and a first run at 1k and 10k nodes."""
    funcs = chain_functions(SIZES[-1])
    outputs = [f"v{i + 1}" for i in range(len(funcs))]
    node_s, signature_s = measure(
        lambda: [node(fn, output_name=out) for fn, out in zip(funcs, outputs, strict=True)],
        lambda: [inspect.signature(fn) for fn in funcs],
        repeats=5,
    )
    per_node = 1e6 / len(funcs)
    name = f"node() × {kilo(len(funcs))} vs inspect.signature"
    rows = [row(name, node_s * per_node, signature_s * per_node, "µs/node")]
    chains = [construction(chain_nodes(funcs[:n])) for n in SIZES]
    rows += by_size("Pipeline", "chain", "toposort", chains, repeats=15)
    wides = [construction(wide_nodes(n)) for n in SIZES]
    rows += by_size("Pipeline", "wide", "toposort", wides, repeats=15)
    repeats = 11  # measure() adds one warm-up call, so each size needs repeats + 1 pipelines
    runs = [first_run(funcs[:n], calls=repeats + 1) for n in SIZES]
    # Informational: compiling a plan allocates several objects per node, so at 10k
    # nodes the garbage collector's full passes add a few µs per node (no target).
    rows += by_size("first run", "chain", "loop", runs, repeats=repeats, growth_target=False)
    return rows


def run() -> list[Row]:
    """Every core benchmark's rows."""
    return [
        *bench_sync_chain(),
        *bench_async_chain(),
        *bench_async_fanout(),
        *bench_construction(),
    ]
