"""Shared benchmark helpers: interleaved median timings and result rows."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Literal, TypedDict

Field = Literal["value", "ratio", "overhead"]


class Row(TypedDict):
    """One plait figure beside its raw-Python lower bound, in the same unit."""

    name: str
    value: float
    unit: str
    baseline: float
    ratio: float
    overhead: float | None
    target: str | None
    ok: bool | None


def row(
    name: str,
    value: float,
    baseline: float,
    unit: str,
    *,
    overhead: bool = True,
    limit: tuple[Field, float] | None = None,
) -> Row:
    """A result row; ``limit`` (field, maximum) sets its target and PASS/MISS."""
    result = Row(
        name=name,
        value=value,
        unit=unit,
        baseline=baseline,
        ratio=value / baseline,
        overhead=value - baseline if overhead else None,
        target=None,
        ok=None,
    )
    if limit is not None:
        field, maximum = limit
        figure = result[field]
        assert figure is not None, f"{name}: no {field} to check"
        label = "" if field == "value" else f"{field} "
        suffix = "" if field == "ratio" else unit if unit == "×" else f" {unit}"
        result["target"] = f"{label}≤ {maximum:g}{suffix}"
        result["ok"] = figure <= maximum
    return result


@contextmanager
def _timing() -> Iterator[None]:
    """Collect garbage first, then keep the collector off while timing (as timeit does)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def measure(
    *fns: Callable[[], object], repeats: int, number: int = 1, warmup: int = 1
) -> list[float]:
    """Median seconds per call of each of ``fns``, after ``warmup`` untimed calls of each.

    Each repeat times ``number`` back-to-back calls of every fn in turn, so drift on a
    noisy machine affects all of them alike.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, times in zip(fns, samples, strict=True):
            with _timing():
                start = time.perf_counter()
                for _ in range(number):
                    fn()
                times.append((time.perf_counter() - start) / number)
    return [statistics.median(times) for times in samples]


async def ameasure(
    *fns: Callable[[], Awaitable[object]], repeats: int, number: int = 1, warmup: int = 1
) -> list[float]:
    """:func:`measure` for coroutine functions, awaited on the running event loop."""
    for fn in fns:
        for _ in range(warmup):
            await fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, times in zip(fns, samples, strict=True):
            with _timing():
                start = time.perf_counter()
                for _ in range(number):
                    await fn()
                times.append((time.perf_counter() - start) / number)
    return [statistics.median(times) for times in samples]
