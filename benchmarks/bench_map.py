"""Mapping: per-item overhead, concurrent async items, CPU work on processes, streaming memory.

Every plait figure is timed beside its raw-Python lower bound, interleaved, in this
process: a plain loop over the same functions building the same dicts, and a
``Semaphore`` + ``asyncio.gather`` of the same coroutines. Memory is the peak RSS of
fresh subprocesses, less that of one that only imports plait and builds the pipeline;
their lower bounds are raw code in the same kind of subprocess: a generator loop, a
list of the same dicts, and windowed asyncio tasks. The subprocesses also time their
loops once each (median of three interpreters): informational throughput rows.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

from harness import Row, ameasure, measure, row
from plait import LocalEngine, Pipeline, node

ITEMS = 10_000  # (d) and (e) items per map
MAX_ITEM_OVERHEAD = 0.8  # µs per item, (d)
THREADED_ITEMS = 100_000  # items of the threaded map
MAX_THREADED_RATIO = 1.0  # × a hand-written ThreadPoolExecutor.map
SLEEP = 0.01  # (e) seconds each item sleeps
CONCURRENT = 1_000  # (e) items in flight
MAX_SLEEP_RATIO = 1.0  # (e)
STREAM_ITEMS = 1_000_000  # (g) sequential imap and map
ASYNC_STREAM_ITEMS = 200_000  # (g) imap on the async map executor (slower per item)
RSS_RUNS = 3  # (g) fresh subprocesses per figure; the median is reported
MAX_IMAP_GROWTH = 50.0  # MiB, (g): informal, imap must stay flat


def kilo(n: int) -> str:
    """``10000`` -> ``"10k"``, ``1000000`` -> ``"1M"``, for row names."""
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def fa(x: int) -> int:
    return x + 1


def fb(a: int) -> int:
    return a + 1


def fc(b: int) -> int:
    return b + 1


def bench_sync_map() -> list[Row]:
    """(d) Per-item overhead of ``map()`` over a 3-node sync chain, sequential engine."""
    pipeline = Pipeline(
        [node(fa, output_name="a"), node(fb, output_name="b"), node(fc, output_name="c")]
    )
    xs = list(range(ITEMS))
    inputs = {"x": xs}

    def raw() -> list[dict[str, int]]:
        out = []
        for x in xs:
            a = fa(x)
            b = fb(a)
            c = fc(b)
            out.append({"a": a, "b": b, "c": c})
        return out

    assert pipeline.map(inputs, map_over="x") == raw()
    map_s, raw_s = measure(lambda: pipeline.map(inputs, map_over="x"), raw, repeats=21)
    per_item = 1e6 / ITEMS
    return [
        row(
            f"map() 3 sync nodes × {kilo(ITEMS)} vs loop",
            map_s * per_item,
            raw_s * per_item,
            "µs/item",
            limit=("overhead", MAX_ITEM_OVERHEAD),
        )
    ]


def bench_threaded_map() -> list[Row]:
    """``"threaded"`` map of the 3-node chain beside ``ThreadPoolExecutor.map`` of the same
    per-item function, on as many threads."""
    workers = 2
    pipeline = Pipeline(
        [node(fa, output_name="a"), node(fb, output_name="b"), node(fc, output_name="c")],
        engine=LocalEngine(map_executor="threaded", max_workers=workers),
    )
    xs = range(THREADED_ITEMS)
    inputs = {"x": xs}

    def item(x: int) -> dict[str, int]:
        a = fa(x)
        b = fb(a)
        return {"a": a, "b": b, "c": fc(b)}

    with ThreadPoolExecutor(workers) as pool:

        def raw() -> list[dict[str, int]]:
            return list(pool.map(item, xs))

        assert pipeline.map(inputs, map_over="x") == raw()
        map_s, raw_s = measure(lambda: pipeline.map(inputs, map_over="x"), raw, repeats=5)
    per_item = 1e6 / THREADED_ITEMS
    return [
        row(
            f'map() 3 sync nodes × {kilo(THREADED_ITEMS)}, "threaded" vs ThreadPoolExecutor.map',
            map_s * per_item,
            raw_s * per_item,
            "µs/item",
            limit=("ratio", MAX_THREADED_RATIO),
        )
    ]


async def nap(x: int) -> int:
    """An async node that only waits."""
    await asyncio.sleep(SLEEP)
    return x


async def gather_naps(xs: list[int]) -> list[int]:
    """The async map's lower bound: a semaphore and ``asyncio.gather`` of every item."""
    slots = asyncio.Semaphore(CONCURRENT)

    async def one(x: int) -> int:
        async with slots:
            return await nap(x)

    return await asyncio.gather(*(one(x) for x in xs))


def bench_async_map() -> list[Row]:
    """(e) Wall time of 10k sleeping items, ``CONCURRENT`` at once, against gather."""
    engine = LocalEngine(map_executor="async", max_concurrent=CONCURRENT)
    pipeline = Pipeline([node(nap, output_name="y")], engine=engine)
    xs = list(range(ITEMS))
    inputs = {"x": xs}
    expected = [{"y": x} for x in xs]

    async def timed() -> list[float]:
        assert await pipeline.amap(inputs, map_over="x") == expected
        return await ameasure(
            lambda: pipeline.amap(inputs, map_over="x"), lambda: gather_naps(xs), repeats=5
        )

    amap_s, gather_s = asyncio.run(timed())
    # map() keeps one event loop per thread; give gather a persistent loop too.
    with asyncio.Runner() as runner:
        assert pipeline.map(inputs, map_over="x") == expected
        map_s, runner_s = measure(
            lambda: pipeline.map(inputs, map_over="x"),
            lambda: runner.run(gather_naps(xs)),
            repeats=5,
        )
    name = f"{kilo(ITEMS)} × sleep({SLEEP * 1e3:g} ms), {CONCURRENT} at once"
    limit = ("ratio", MAX_SLEEP_RATIO)
    return [
        row(f"{name}: amap() vs gather", amap_s * 1e3, gather_s * 1e3, "ms", limit=limit),
        row(f"{name}: map() vs Runner gather", map_s * 1e3, runner_s * 1e3, "ms", limit=limit),
    ]


# (g) Each script prints one JSON object: peak RSS in KiB, and seconds in the loop.
# The peak is the kernel's high-water mark of this process's own memory (VmHWM), reset
# once setup is done. ru_maxrss is no use here: exec() carries the parent's peak into
# the child (this benchmark process, or any big parent), and importing plait peaks
# above the steady state, which hides any growth smaller than that spike. ru_maxrss is
# the fallback where /proc is missing.
SETUP = """
import asyncio, gc, json, re, resource, time
from plait import LocalEngine, Pipeline, node

def inc(x):
    return x + 1

def high_water():
    try:
        with open("/proc/self/status") as status:
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

pipeline = Pipeline([node(inc, output_name="y")], engine=LocalEngine(map_executor={executor!r}))
gc.collect()
try:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the high-water mark to the current RSS
except OSError:
    pass
start = time.perf_counter()
"""
REPORT = """
seconds = time.perf_counter() - start
print(json.dumps({{"kib": high_water(), "seconds": seconds}}))
"""
WORK = {
    "baseline": "",
    "imap": """
for _ in pipeline.imap(inputs={{"x": range({n})}}, map_over="x"):
    pass
""",
    "map": """
results = pipeline.map(inputs={{"x": range({n})}}, map_over="x")
assert len(results) == {n}
""",
    # The map's lower bound: the same list of one-key dicts, built by a comprehension.
    "dicts": """
results = [{{"y": inc(x)}} for x in range({n})]
assert len(results) == {n}
""",
    "generator": """
for _ in (x + 1 for x in range({n})):
    pass
""",
    # The async imap's lower bound: each item a task, at most as many in flight as
    # plait's default max_concurrent, driven by one asyncio.run.
    "tasks": """
async def item(x):
    return inc(x)

async def tasks():
    pending = set()
    for x in range({n}):
        if len(pending) >= {window}:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        pending.add(asyncio.create_task(item(x)))
    await asyncio.wait(pending)

asyncio.run(tasks())
""",
}


def subprocess_run(work: str, n: int, executor: str = "sequential") -> dict[str, float]:
    """Peak RSS (MiB, median of ``RSS_RUNS`` fresh interpreters) and loop seconds."""
    code = SETUP.format(executor=executor) + WORK[work] + REPORT
    script = textwrap.dedent(code).format(n=n, window=LocalEngine().max_concurrent)
    runs = []
    for _ in range(RSS_RUNS):
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        "mib": statistics.median(r["kib"] for r in runs) / 1024,
        "seconds": statistics.median(r["seconds"] for r in runs),
    }


def bench_memory() -> list[Row]:
    """(g) Peak RSS increase of imap() and map() over 1M items, in fresh subprocesses."""
    base = subprocess_run("baseline", 0)["mib"]
    imap = subprocess_run("imap", STREAM_ITEMS)
    full = subprocess_run("map", STREAM_ITEMS)
    gen = subprocess_run("generator", STREAM_ITEMS)
    dicts = subprocess_run("dicts", STREAM_ITEMS)
    aimap = subprocess_run("imap", ASYNC_STREAM_ITEMS, executor="async")
    tasks = subprocess_run("tasks", ASYNC_STREAM_ITEMS, executor="async")
    abase = subprocess_run("baseline", 0, executor="async")["mib"]

    def growth(run: dict[str, float], baseline: float) -> float:
        # A raw loop that allocates nothing may show no growth at all: one 4 KiB page
        # as the floor keeps the ratio finite.
        return max(run["mib"] - baseline, 4 / 1024)

    seq, asy = f"imap {kilo(STREAM_ITEMS)}", f"imap {kilo(ASYNC_STREAM_ITEMS)} async"
    imap_limit = ("value", MAX_IMAP_GROWTH)
    per_item = 1e6 / STREAM_ITEMS
    per_async_item = 1e6 / ASYNC_STREAM_ITEMS
    return [
        row(
            f"{seq}: RSS growth vs generator",
            growth(imap, base),
            growth(gen, base),
            "MiB",
            limit=imap_limit,
        ),
        row(
            f"map {kilo(STREAM_ITEMS)}: RSS growth vs list of dicts",
            growth(full, base),
            growth(dicts, base),
            "MiB",
        ),
        row(
            f"{asy}: RSS growth vs tasks",
            growth(aimap, abase),
            growth(tasks, abase),
            "MiB",
            limit=imap_limit,
        ),
        row(
            f"{seq}: time vs generator",
            imap["seconds"] * per_item,
            gen["seconds"] * per_item,
            "µs/item",
        ),
        row(
            f"{seq}: throughput vs generator",
            STREAM_ITEMS / imap["seconds"],
            STREAM_ITEMS / gen["seconds"],
            "items/s",
            overhead=False,
        ),
        row(
            f"{asy}: time vs tasks",
            aimap["seconds"] * per_async_item,
            tasks["seconds"] * per_async_item,
            "µs/item",
        ),
    ]


CPU_ITEM_SECONDS = 0.05  # (f) pure-Python work per item
CPU_ITEMS = 40  # (f) items per map
MIN_PARALLEL_SPEEDUP = 1.8  # (f) on this 2-core machine


def spin(rounds: int) -> int:
    """Pure-Python CPU work: no I/O, no C calls that release the GIL."""
    total = 0
    for i in range(rounds):
        total = (total + i * i) % 1_000_003
    return total


def rounds_for(seconds: float) -> int:
    """How many :func:`spin` rounds take about ``seconds`` here."""
    probe = 200_000
    start = time.perf_counter()
    spin(probe)
    return max(1, int(probe * seconds / (time.perf_counter() - start)))


def bench_cpu_map() -> list[Row]:
    """(f) items of ~50 ms of pure-Python work: "parallel" against "sequential"."""
    rounds = rounds_for(CPU_ITEM_SECONDS)
    work = node(spin, output_name="total")
    inputs = {"rounds": [rounds] * CPU_ITEMS}
    sequential = Pipeline([work])
    with LocalEngine(map_executor="parallel") as engine:
        parallel = sequential.with_engine(engine)
        start = time.perf_counter()
        parallel.map(inputs, map_over="rounds")  # cold: starts the worker processes
        cold = time.perf_counter() - start
        par_s, seq_s = measure(
            lambda: parallel.map(inputs, map_over="rounds"),
            lambda: sequential.map(inputs, map_over="rounds"),
            repeats=5,
            warmup=0,
        )
    name = f"{CPU_ITEMS} × {CPU_ITEM_SECONDS * 1e3:.0f} ms CPU: parallel vs sequential"
    speedup = row(f"{name} (speed-up)", seq_s / par_s, 1.0, "×", overhead=False)
    speedup["target"] = f"≥ {MIN_PARALLEL_SPEEDUP:g}×"
    speedup["ok"] = seq_s / par_s >= MIN_PARALLEL_SPEEDUP
    return [
        row(f"{name} (warm pool)", par_s * 1e3, seq_s * 1e3, "ms"),
        speedup,
        row(f"{name} (first map, starts workers)", cold * 1e3, seq_s * 1e3, "ms"),
    ]


def run() -> list[Row]:
    """Every map benchmark's rows."""
    rows: list[Row] = []
    for bench in (bench_sync_map, bench_threaded_map, bench_async_map, bench_cpu_map, bench_memory):
        rows += bench()
    return rows
