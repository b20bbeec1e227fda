"""Cache stores: time to write 1k and 10k entries, and how that time grows.

Each figure is timed beside its lower bound in this process, interleaved: a plain
dict assignment for :class:`~plait.cache.MemoryCache`, and for
:class:`~plait.cache.DiskCache` a raw ``diskcache.Cache.set`` (same settings) of the
same values already pickled, so the gap is plait's pickling plus its wrapper. Every
repeat writes into a fresh store (a fresh temporary directory for disk); opening and
closing the store are not timed.
"""

from __future__ import annotations

import gc
import pickle
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cloudpickle
import diskcache

from harness import Row, row
from plait.cache import DiskCache, MemoryCache
from plait.cache.fingerprint import cache_key
from plait.cache.stores import DISKCACHE_SETTINGS, SQLITE_TIMEOUT

SIZES = (1_000, 10_000)  # entries written; the growth check compares the two
MAX_GROWTH = 13.0  # ×, for SIZES growing 10× (linear is 10×)
# A disk write costs ~0.2-0.4 ms here (one sqlite transaction), so 3 repeats of 22k
# writes already take ~20 s; the median of three absorbs a cold first round.
DISK_REPEATS = 3
MEMORY_REPEATS = 15

# (open a fresh store, write the entries into it, close it): only the writes are timed.
Writer = tuple[Callable[[], Any], Callable[[Any], object], Callable[[Any], object]]


def kilo(n: int) -> str:
    """``10000`` -> ``"10k"``, for row names."""
    return f"{n // 1000}k"


def entries(n: int) -> list[tuple[str, Any]]:
    """``n`` (hex key, small node result) pairs, like a map over ``n`` items would store."""
    return [
        (cache_key(i.to_bytes(8, "little")), {"item": i, "label": f"row {i}", "scores": [i] * 8})
        for i in range(n)
    ]


def time_writers(writers: Sequence[Writer], repeats: int, warmup: int = 1) -> list[float]:
    """Median seconds of each writer's writes, interleaved across repeats, GC off while timed.

    The first ``warmup`` rounds are run and dropped.
    """
    samples: list[list[float]] = [[] for _ in writers]
    for _ in range(warmup + repeats):
        for (open_store, write, close), times in zip(writers, samples, strict=True):
            store = open_store()
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                write(store)
                times.append(time.perf_counter() - start)
            finally:
                gc.enable()
                close(store)
    return [statistics.median(times[warmup:]) for times in samples]


class Scratch:
    """Fresh temporary directories, all removed at the end."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="plait-bench-cache-"))
        self.count = 0

    def fresh(self) -> Path:
        self.count += 1
        return self.root / f"store{self.count}"

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def disk_writers(items: list[tuple[str, Any]], scratch: Scratch) -> tuple[Writer, Writer]:
    """DiskCache.set of the values, and raw diskcache.Cache.set of their pickled bytes."""
    pickled = [
        (key, cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)) for key, value in items
    ]

    def plait_write(cache: DiskCache) -> None:
        for key, value in items:
            cache.set(key, value)

    def raw_open() -> Any:
        return diskcache.Cache(str(scratch.fresh()), timeout=SQLITE_TIMEOUT, **DISKCACHE_SETTINGS)

    def raw_write(cache: Any) -> None:
        for key, data in pickled:
            cache.set(key, data)

    def close(cache: Any) -> None:
        cache.close()

    return (lambda: DiskCache(scratch.fresh()), plait_write, close), (raw_open, raw_write, close)


def memory_writers(items: list[tuple[str, Any]]) -> tuple[Writer, Writer]:
    """MemoryCache.set of the values, and plain dict assignment."""

    def plait_write(cache: MemoryCache) -> None:
        for key, value in items:
            cache.set(key, value)

    def raw_write(cache: dict[str, Any]) -> None:
        for key, value in items:
            cache[key] = value

    def close(cache: Any) -> None:
        cache.clear()

    return (MemoryCache, plait_write, close), (dict, raw_write, close)


def size_rows(store: str, bound: str, times: list[float]) -> list[Row]:
    """Per-entry rows for each size in SIZES, then the growth of the total time."""
    plait_s, raw_s = times[::2], times[1::2]
    rows = [
        row(f"{store}.set × {kilo(n)} vs {bound}", p * 1e6 / n, r * 1e6 / n, "µs/entry")
        for n, p, r in zip(SIZES, plait_s, raw_s, strict=True)
    ]
    sizes = " → ".join(kilo(n) for n in SIZES)
    rows.append(
        row(
            f"{store}.set growth {sizes}",
            plait_s[-1] / plait_s[0],
            raw_s[-1] / raw_s[0],
            "×",
            overhead=False,
            limit=("value", MAX_GROWTH),
        )
    )
    return rows


def bench_disk() -> list[Row]:
    """DiskCache writes against raw diskcache writes of the same pickled bytes."""
    scratch = Scratch()
    try:
        writers = [w for n in SIZES for w in disk_writers(entries(n), scratch)]
        check = DiskCache(scratch.fresh())
        writers[0][1](check)
        key, value = entries(1)[0]
        assert check.get(key) == value
        assert len(check) == SIZES[0]
        check.close()
        times = time_writers(writers, DISK_REPEATS, warmup=0)
    finally:
        scratch.remove()
    return size_rows("DiskCache", "raw diskcache.set", times)


def bench_memory() -> list[Row]:
    """MemoryCache writes against plain dict assignment."""
    writers = [w for n in SIZES for w in memory_writers(entries(n))]
    times = time_writers(writers, MEMORY_REPEATS)
    return size_rows("MemoryCache", "dict", times)


def run() -> list[Row]:
    """Every cache-store benchmark's rows."""
    return [*bench_disk(), *bench_memory()]
