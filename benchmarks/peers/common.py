"""What every side of ``make bench-peers`` shares: the workloads' sizes and functions,
their raw-Python lower bounds, and the timing. Standard library only: it runs in every
peer's venv.

A side module defines one function per workload it can run, named as in
:data:`WORKLOADS`, each returning seconds (a growth or a speed-up where the unit says
so); one it cannot run raises :class:`Unsupported` with the reason.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

CHAIN = 100  # nodes of the sync, async and cached chains
FANOUT = 100  # independent async nodes
SLEEP = 0.01  # seconds each async node or item sleeps
MAP_ITEMS = 10_000  # items of the sequential map
ASYNC_ITEMS = 1_000  # items of the async map
LIMIT = 100  # async map items in flight at once
CPU_ITEMS = 20  # items of the process map
CPU_SECONDS = 0.05  # pure-Python work per item
WORKERS = 2  # processes of the process map
BUILD_SIZES = (1_000, 10_000)  # nodes of the graphs built
CACHED_ITEMS = 1_000  # items of the cached map
SLOW = 5.0  # seconds: a call slower than this is timed once

#: name -> (what is measured, unit, per: what the seconds are divided by).
WORKLOADS: dict[str, tuple[str, str, float]] = {
    "sync_chain": (f"chain of {CHAIN} sync nodes, one run", "µs/node", CHAIN / 1e6),
    "async_fanout": (f"{FANOUT} async nodes × sleep 10 ms", "ms", 1e-3),
    "seq_map": (f"3-node sync map × {MAP_ITEMS:,} items, sequential", "µs/item", MAP_ITEMS / 1e6),
    "async_map": (
        f"async map, {ASYNC_ITEMS:,} items × sleep 10 ms, {LIMIT} at once",
        "ms",
        1e-3,
    ),
    "process_map": (
        f"process map speed-up, {CPU_ITEMS} × 50 ms CPU on {WORKERS} processes",
        "×",
        1.0,
    ),
    "build_1k": ("build a 1k-node chain", "ms", 1e-3),
    "build_10k": ("build a 10k-node chain", "ms", 1e-3),
    "cached_chain": (f"chain of {CHAIN} nodes, all cache hits", "µs/node", CHAIN / 1e6),
    "cached_map": (
        f"3-node map × {CACHED_ITEMS:,} items, all cache hits",
        "µs/item",
        CACHED_ITEMS / 1e6,
    ),
}


class Unsupported(Exception):
    """This peer cannot run the workload (the message says why)."""


def chain_source(n: int, *, is_async: bool = False, prefix: str = "f") -> str:
    """Source of ``{prefix}{i}(v{i})`` returning ``v{i} + 1``: node i makes ``v{i+1}``."""
    kind = "async def" if is_async else "def"
    return "\n".join(f"{kind} {prefix}{i}(v{i}):\n    return v{i} + 1\n" for i in range(n))


def chain_functions(n: int, *, is_async: bool = False) -> list[Callable[..., Any]]:
    namespace: dict[str, Any] = {}
    exec(chain_source(n, is_async=is_async), namespace)
    return [namespace[f"f{i}"] for i in range(n)]


def fa(x: int) -> int:
    return x + 1


def fb(a: int) -> int:
    return a * 2


def fc(b: int) -> int:
    return b - 3


async def nap() -> None:
    await asyncio.sleep(SLEEP)


async def nap_item(x: int) -> int:
    await asyncio.sleep(SLEEP)
    return x


def spin(x: int) -> int:
    """Pure-Python work of about ``CPU_SECONDS`` (calibrated by :func:`_rounds`)."""
    total = 0
    for i in range(ROUNDS):
        total += i * i % 7
    return total + x


def _rounds() -> int:
    start = time.perf_counter()
    n = 200_000
    total = 0
    for i in range(n):
        total += i * i % 7
    return max(1, int(n * CPU_SECONDS / (time.perf_counter() - start)))


ROUNDS = _rounds()


def timed(fn: Callable[[], object], repeats: int = 7, number: int = 1) -> float:
    """Median seconds per call of ``fn`` after one warm-up call, collector off; a call
    slower than ``SLOW`` seconds is timed once (a 10k-node build can take minutes)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    if first > SLOW:
        return first
    samples = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples.append((time.perf_counter() - start) / number)
        finally:
            gc.enable()
    return statistics.median(samples)


def atimed(make: Callable[[], Any], repeats: int = 7) -> float:
    """:func:`timed` for a coroutine function, awaited on one loop as async code would."""

    async def main() -> float:
        await make()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            await make()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    return asyncio.run(main())


# ---- the raw lower bounds ----------------------------------------------------------------


def raw_sync_chain() -> float:
    funcs = chain_functions(CHAIN)
    steps = [(fn, f"v{i}", f"v{i + 1}") for i, fn in enumerate(funcs)]

    def run() -> dict[str, int]:
        values = {"v0": 0}
        for fn, arg, out in steps:
            values[out] = fn(values[arg])
        return values

    return timed(run, number=100)


def raw_async_fanout() -> float:
    return atimed(lambda: asyncio.gather(*(nap() for _ in range(FANOUT))))


def raw_seq_map() -> float:
    def run() -> list[dict[str, int]]:
        out = []
        for x in range(MAP_ITEMS):
            a = fa(x)
            b = fb(a)
            out.append({"a": a, "b": b, "c": fc(b)})
        return out

    return timed(run)


def raw_async_map() -> float:
    async def run() -> list[int]:
        slots = asyncio.Semaphore(LIMIT)

        async def one(x: int) -> int:
            async with slots:
                return await nap_item(x)

        return await asyncio.gather(*(one(x) for x in range(ASYNC_ITEMS)))

    return atimed(run, repeats=5)


def raw_process_map() -> float:
    sequential = timed(lambda: [spin(x) for x in range(CPU_ITEMS)], repeats=3)
    with ProcessPoolExecutor(WORKERS) as pool:
        parallel = timed(lambda: list(pool.map(spin, range(CPU_ITEMS))), repeats=3)
    return sequential / parallel


def _raw_build(n: int) -> float:
    specs = [((f"v{i}",), f"v{i + 1}") for i in range(n)]

    def build() -> list[int]:
        producer = {output: i for i, (_, output) in enumerate(specs)}
        successors: list[list[int]] = [[] for _ in specs]
        indegree = [0] * len(specs)
        for i, (inputs, _) in enumerate(specs):
            for name in inputs:
                source = producer.get(name)
                if source is not None:
                    successors[source].append(i)
                    indegree[i] += 1
        ready = [i for i, d in enumerate(indegree) if d == 0]
        order = []
        while ready:
            i = ready.pop()
            order.append(i)
            for succ in successors[i]:
                indegree[succ] -= 1
                if indegree[succ] == 0:
                    ready.append(succ)
        return order

    return timed(build)


def raw_build_1k() -> float:
    return _raw_build(BUILD_SIZES[0])


def raw_build_10k() -> float:
    return _raw_build(BUILD_SIZES[1])


def raw_cached_chain() -> float:
    keys = [f"{i:040x}" for i in range(CHAIN)]
    store = dict.fromkeys(keys, 1)
    return timed(lambda: [store.get(k) for k in keys], number=100)


def raw_cached_map() -> float:
    keys = [f"{i:040x}" for i in range(3 * CACHED_ITEMS)]
    store = dict.fromkeys(keys, 1)
    return timed(lambda: [store.get(k) for k in keys])


def main(side: dict[str, Any], name: str, version: str) -> None:
    """Run every workload of ``side`` (a module's globals) and print one JSON object."""
    results: dict[str, Any] = {}
    only = set(sys.argv[1:])
    for workload in WORKLOADS:
        if only and workload not in only:
            continue
        fn = side.get(workload)
        first = results.get("build_1k", {}).get("seconds", 0.0)
        try:
            if workload == "build_10k" and first > SLOW:
                raise Unsupported(f"not run: the 1k-node build took {first:.0f} s")
            if fn is None:
                raise Unsupported("no such feature")
            results[workload] = {"seconds": fn()}
        except Unsupported as why:
            results[workload] = {"unsupported": str(why)}
        except Exception as exc:  # a failure is reported, not hidden
            results[workload] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        print(f"{name}: {workload} done", file=sys.stderr, flush=True)
    print(json.dumps({"peer": name, "version": version, "results": results}))
