"""InFlight: tasks report their own end; the waiter wakes the loop iteration after."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Callable

import pytest

from plait import abatch
from plait.engine.local.inflight import InFlight


def ticker(loop: asyncio.AbstractEventLoop) -> tuple[Callable[[], int], Callable[[], None]]:
    """Counts loop iterations: a callback that schedules itself again runs once in each.
    Returns (count, stop)."""
    ticks = [0]
    handle: list[asyncio.Handle] = []

    def tick() -> None:
        ticks[0] += 1
        handle[:] = [loop.call_soon(tick)]

    handle.append(loop.call_soon(tick))
    return (lambda: ticks[0]), (lambda: handle[0].cancel())


async def returns(value: object) -> object:
    return value


async def raises() -> None:
    raise ValueError("boom")


def test_the_waiter_wakes_in_the_iteration_after_the_task_ends() -> None:
    # The task runs (and ends) in the next iteration; the waiter in the one after.
    # A done-callback would run one iteration later still, and only then wake it.
    async def main() -> int:
        loop = asyncio.get_running_loop()
        inflight: InFlight[str] = InFlight(loop)
        count, stop = ticker(loop)
        await asyncio.sleep(0)  # the ticker runs from here on
        start = count()
        inflight.start_task(returns(7), "seven")
        await inflight.wait_any()
        woke = count() - start
        stop()
        done = inflight.pop_done()
        assert done is not None
        future, key = done
        assert (key, future.result()) == ("seven", 7)
        assert inflight.pop_done() is None
        assert len(inflight) == 0
        return woke

    assert asyncio.run(main()) == 2


def test_a_failed_task_is_reported_with_its_exception() -> None:
    async def main() -> None:
        inflight: InFlight[int] = InFlight(asyncio.get_running_loop())
        inflight.start_task(raises(), 1)
        inflight.start_task(returns(2), 2)
        await inflight.wait_any()
        outcomes = {}
        while (done := inflight.pop_done()) is not None:
            future, key = done
            outcomes[key] = future.exception() or future.result()
        assert outcomes.keys() == {1, 2}
        assert isinstance(outcomes[1], ValueError)
        assert outcomes[2] == 2

    asyncio.run(main())


def test_tasks_cancelled_before_their_first_step_leave_no_unawaited_coroutine() -> None:
    started = []

    async def item(i: int) -> None:
        started.append(i)
        await asyncio.sleep(1)

    async def main() -> None:
        inflight: InFlight[int] = InFlight(asyncio.get_running_loop())
        inflight.start_task(item(0), 0)
        await asyncio.sleep(0)  # item 0 starts
        inflight.start_task(item(1), 1)  # item 1 never does
        await inflight.cancel_all()
        assert len(inflight) == 0

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert started == [0]
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


@pytest.mark.parametrize("window", [1, 10])
def test_a_map_of_no_op_items_takes_two_loop_iterations_per_window(window: int) -> None:
    # Items that finish in their first step: the map sees them the iteration after
    # and starts the next ones then, which run the iteration after that.
    async def main() -> int:
        await abatch(returns, range(window), max_concurrent=window)  # warm the cache
        count, stop = ticker(asyncio.get_running_loop())
        await asyncio.sleep(0)
        start = count()
        assert await abatch(returns, range(5 * window), max_concurrent=window) == list(
            range(5 * window)
        )
        stop()
        return count() - start

    assert asyncio.run(main()) <= 2 * 5 + 1
