"""plait.batch / plait.abatch: one function over many items, on Pipeline.map."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib
import itertools
import random
import threading
import time
from typing import Any

import pytest

import plait
from plait import RunningLoopWarning, abatch, batch

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


async def slow_square(x: int) -> int:
    await asyncio.sleep(random.uniform(0, 0.02))
    return x * x


def sync_square(x: int) -> int:
    time.sleep(random.uniform(0, 0.005))
    return x * x


class InFlight:
    """Counts calls in flight, sync or async, and remembers the most at once."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.lock = threading.Lock()

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


# --- results and concurrency ------------------------------------------------------


def test_results_in_input_order_async_and_sync() -> None:
    assert batch(slow_square, range(40)) == [x * x for x in range(40)]
    assert batch(sync_square, range(40)) == [x * x for x in range(40)]
    assert plait.batch is batch


def test_items_may_be_any_iterable_and_empty() -> None:
    assert batch(slow_square, (x for x in range(5))) == [0, 1, 4, 9, 16]
    assert batch(slow_square, []) == []
    assert batch(str.upper, ["a", "b"]) == ["A", "B"]  # a builtin method


def test_abatch_on_the_running_loop() -> None:
    async def main() -> list[int]:
        return await abatch(slow_square, range(20), max_concurrent=4)

    assert asyncio.run(main()) == [x * x for x in range(20)]


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_concurrency_is_bounded(kind: str) -> None:
    flight = InFlight()

    async def async_fn(x: int) -> int:
        flight.enter()
        await asyncio.sleep(0.02)
        flight.leave()
        return x

    def sync_fn(x: int) -> int:
        flight.enter()
        time.sleep(0.02)
        flight.leave()
        return x

    fn: Any = async_fn if kind == "async" else sync_fn
    start = time.perf_counter()
    assert batch(fn, range(24), max_concurrent=4) == list(range(24))
    assert flight.most == 4
    assert time.perf_counter() - start < 24 * 0.02 / 2  # concurrent, not one by one


def test_sync_fn_runs_on_threads_and_async_fn_on_one_loop() -> None:
    threads: set[int] = set()
    loops: set[int] = set()

    def on_thread(x: int) -> int:
        threads.add(threading.get_ident())
        time.sleep(0.01)
        return x

    async def on_loop(x: int) -> int:
        loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0.01)
        return x

    batch(on_thread, range(8), max_concurrent=4)
    batch(on_loop, range(8), max_concurrent=4)
    assert threading.get_ident() not in threads
    assert len(threads) > 1
    assert len(loops) == 1


def test_contextvars_are_visible_in_fn() -> None:
    async def async_read(_: int) -> str:
        return request_id.get()

    def sync_read(_: int) -> str:
        return request_id.get()

    token = request_id.set("caller")
    try:
        assert batch(async_read, range(3)) == ["caller"] * 3
        assert batch(sync_read, range(3)) == ["caller"] * 3
    finally:
        request_id.reset(token)


# --- controls ---------------------------------------------------------------------


def test_retries() -> None:
    attempts: dict[int, int] = {}

    async def flaky(x: int) -> int:
        attempts[x] = attempts.get(x, 0) + 1
        if attempts[x] == 1:
            raise ConnectionError(f"first try of {x} fails")
        return x

    assert batch(flaky, range(5), retries=1) == list(range(5))
    assert attempts == dict.fromkeys(range(5), 2)
    attempts.clear()
    with pytest.raises(ConnectionError, match="first try"):
        batch(flaky, range(5), retries=0)


def test_timeout_cancels_the_slow_call() -> None:
    cleaned: list[int] = []

    async def maybe_slow(x: int) -> int:
        try:
            await asyncio.sleep(10 if x == 2 else 0)
        finally:
            if x == 2:
                cleaned.append(x)
        return x

    start = time.perf_counter()
    with pytest.raises(TimeoutError) as info:
        batch(maybe_slow, range(4), timeout=0.1)
    assert time.perf_counter() - start < 2
    assert cleaned == [2]
    assert "plait: in map item 2 with inputs (item=2)" in info.value.__notes__
    results = batch(maybe_slow, range(4), timeout=0.1, return_exceptions=True)
    assert [type(r) for r in results] == [int, int, TimeoutError, int]


def test_rate_limit_spaces_the_starts() -> None:
    starts: list[float] = []

    async def record(x: int) -> int:
        starts.append(time.perf_counter())
        return x

    assert batch(record, range(6), rate_limit="2/0.1s") == list(range(6))
    assert starts[-1] - starts[0] > 0.2 * 0.95  # 2 at once, then 2 per 0.1 s
    assert all(b - a >= 0.1 for a, b in itertools.pairwise(starts[::2]))


def test_return_exceptions_puts_each_failure_in_place() -> None:
    def checked(x: int) -> int:
        if x % 3 == 0:
            raise ValueError(f"bad {x}")
        return x

    results = batch(checked, range(7), return_exceptions=True)
    assert [r if isinstance(r, int) else str(r) for r in results] == [
        "bad 0",
        1,
        2,
        "bad 3",
        4,
        5,
        "bad 6",
    ]


def test_failure_names_the_item_and_cancels_the_rest() -> None:
    cancelled: list[int] = []

    async def fails_on_three(x: int) -> int:
        if x == 3:
            raise KeyError(x)
        try:
            await asyncio.sleep(5 if x > 3 else 0)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    start = time.perf_counter()
    with pytest.raises(KeyError) as info:
        batch(fails_on_three, range(8), max_concurrent=8)
    assert time.perf_counter() - start < 2
    notes = info.value.__notes__
    assert "plait: raised in node 'fails_on_three' (→ result) called with (item=3)" in notes
    assert "plait: in map item 3 with inputs (item=3)" in notes
    assert sorted(cancelled) == [4, 5, 6, 7]


# --- what fn may be -----------------------------------------------------------------


def test_fn_must_be_callable_with_the_item() -> None:
    with pytest.raises(TypeError, match="needs a function to call on each item, got int"):
        batch(42, [1])  # type: ignore[arg-type]

    def none() -> int:
        return 1

    def two(a: int, b: int) -> int:
        return a + b

    with pytest.raises(TypeError, match=r"calls fn with one argument, the item, but none\(\)"):
        batch(none, [1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"but two\(a, b\) cannot be called that way"):
        batch(two, [1])  # type: ignore[arg-type]

    async def agen(x: int) -> Any:
        yield x

    with pytest.raises(TypeError, match="async generator function"):
        batch(agen, [1])


def test_extra_parameters_with_defaults_and_partials_are_fine() -> None:
    async def scaled(x: int, factor: int = 10) -> int:
        return x * factor

    assert batch(scaled, [1, 2]) == [10, 20]
    assert batch(functools.partial(scaled, factor=3), [1, 2]) == [3, 6]


def test_a_sync_fn_returning_a_coroutine_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"returned a coroutine; pass the async function"):
        batch(lambda x: slow_square(x), [1])


# --- where it runs from --------------------------------------------------------------


def test_batch_from_a_worker_thread() -> None:
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(batch(slow_square, range(5))))
    worker.start()
    worker.join(10)
    assert result == [[0, 1, 4, 9, 16]]


def test_batch_from_sync_code_inside_a_running_loop_warns_and_works() -> None:
    async def main() -> list[int]:
        with pytest.warns(RunningLoopWarning) as record:
            result = batch(slow_square, range(5))
        assert record[0].filename == __file__
        return result

    assert asyncio.run(main()) == [0, 1, 4, 9, 16]


def test_pipelines_are_cached_per_fn_and_options() -> None:
    batch_module = importlib.import_module("plait.batch")  # the name plait.batch is the function

    async def fresh(x: int) -> int:
        return x

    assert batch(fresh, [1]) == [1]
    none = batch_module._Retries(0, (Exception,), 0.1, 60.0)
    cached = batch_module._pipeline(fresh, 10, none, None, None)
    assert batch_module._pipeline(fresh, 10, none, None, None) is cached
    assert batch_module._pipeline(fresh, 3, none, None, None) is not cached
    two = batch_module._Retries(2, (Exception,), 0.1, 60.0)
    assert batch_module._pipeline(fresh, 10, two, None, None) is not cached
    for n in range(1, batch_module._CACHE_SIZE + 5):  # the cache stays small
        batch_module._pipeline(fresh, n, none, None, None)
    assert len(batch_module._cache) == batch_module._CACHE_SIZE
