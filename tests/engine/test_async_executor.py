"""AsyncExecutor: a concurrent.futures.Executor running work on its own event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import time

import pytest

from plait import AsyncExecutor, EngineError, LocalEngine, Pipeline, node

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


async def double(x):
    await asyncio.sleep(0.01)
    return 2 * x


def blocking_inc(x):
    time.sleep(0.01)
    return x + 1


def test_is_a_real_executor_for_async_and_sync_callables() -> None:
    with AsyncExecutor(max_concurrent=100) as executor:
        assert isinstance(executor, concurrent.futures.Executor)
        future = executor.submit(double, 21)
        assert isinstance(future, concurrent.futures.Future)
        assert future.result(timeout=5) == 42
        start = time.perf_counter()
        assert list(executor.map(double, range(100))) == [2 * x for x in range(100)]
        assert time.perf_counter() - start < 0.5  # concurrent, not 1 s
        assert list(executor.map(blocking_inc, range(4))) == [1, 2, 3, 4]


def test_errors_come_back_through_the_future() -> None:
    async def fails():
        raise KeyError("missing")

    with AsyncExecutor() as executor, pytest.raises(KeyError, match="missing"):
        executor.submit(fails).result(timeout=5)


def test_concurrency_is_bounded() -> None:
    state = {"now": 0, "peak": 0}

    async def tracked(_):
        state["now"] += 1  # all on the executor's one loop thread
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.01)
        state["now"] -= 1

    with AsyncExecutor(max_concurrent=3) as executor:
        list(executor.map(tracked, range(20)))
    assert state["peak"] == 3


def test_usable_inside_a_running_event_loop() -> None:
    async def main() -> int:
        with AsyncExecutor() as executor:
            return await asyncio.wrap_future(executor.submit(double, 5))

    assert asyncio.run(main()) == 10


def test_callers_contextvars_are_visible() -> None:
    async def read():
        return var.get()

    def read_sync():
        return var.get()

    token = var.set("caller")
    try:
        with AsyncExecutor() as executor:
            assert executor.submit(read).result(timeout=5) == "caller"
            assert executor.submit(read_sync).result(timeout=5) == "caller"
    finally:
        var.reset(token)


def test_cancel_before_start_and_shutdown_with_cancel_futures() -> None:
    started = threading.Event()
    release = asyncio.Event()

    async def hold():
        started.set()
        await asyncio.wait_for(release.wait(), 5)

    executor = AsyncExecutor(max_concurrent=1)
    first = executor.submit(hold)
    queued = [executor.submit(double, i) for i in range(5)]
    assert started.wait(5)
    assert queued[0].cancel()  # not started yet: cancellable
    executor.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in [first, *queued])
    assert all(f.cancelled() for f in queued)
    with pytest.raises(concurrent.futures.CancelledError):
        first.result()
    with pytest.raises(RuntimeError, match="cannot schedule new work after shutdown"):
        executor.submit(double, 1)


def test_shutdown_waits_for_running_work() -> None:
    executor = AsyncExecutor()
    future = executor.submit(double, 3)
    executor.shutdown(wait=True)
    assert future.result() == 6


def test_bad_max_concurrent() -> None:
    with pytest.raises(EngineError, match="max_concurrent must be a positive int, got 0"):
        AsyncExecutor(max_concurrent=0)


def test_as_a_map_executor_it_runs_items_on_its_loop() -> None:
    # Concurrently, shown by a count rather than a time: the items wait for ten of them
    # to be asleep at once (one after another, the first would time out).
    asleep = {"now": 0}
    ten_asleep = asyncio.Event()

    @node(output_name="loop_thread")
    async def where(x):
        asleep["now"] += 1
        if asleep["now"] >= 10:
            ten_asleep.set()
        await asyncio.wait_for(ten_asleep.wait(), 5)
        return threading.current_thread().name

    with AsyncExecutor(max_concurrent=50) as executor:
        pipe = Pipeline([where], engine=LocalEngine(map_executor=executor))
        names = {r["loop_thread"] for r in pipe.map(inputs={"x": range(50)}, map_over="x")}
    assert len(names) == 1
    assert names.pop().startswith("plait-async-executor")


def test_as_map_executor_it_keeps_max_concurrent_items_in_flight() -> None:
    @node(output_name="y")
    async def slow(x):
        await asyncio.sleep(0.2)
        return x

    with AsyncExecutor(max_concurrent=40) as executor:
        pipe = Pipeline([slow], engine=LocalEngine(map_executor=executor, max_workers=2))
        start = time.perf_counter()
        result = pipe.map(inputs={"x": range(40)}, map_over="x")
        elapsed = time.perf_counter() - start
    assert [r["y"] for r in result] == list(range(40))
    assert elapsed < 1.0  # 40 at once: 0.2 s (not max_workers: 10 rounds, 2 s)
