"""The greenlet portal: sync nodes run inline on the loop await without blocking it."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import itertools
import time
import traceback
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import plait
from plait import LocalEngine, Pipeline, RunningLoopWarning, node, run_sync
from plait.bridge import portal

WAIT = 0.3  # seconds a sync node waits through the portal
BEAT = 0.01  # heartbeat period
MAX_GAP = 0.15  # a blocked loop would show a gap of about WAIT

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


@pytest.fixture(autouse=True)
def portal_calls_never_warn() -> Iterator[None]:
    """Awaiting through the portal blocks nothing: no RunningLoopWarning, ever."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunningLoopWarning)
        yield


class Heartbeat:
    """An async node that ticks every BEAT seconds until the sync node is done."""

    def __init__(self) -> None:
        self.beats: list[float] = []
        self.done = False

    def node(self) -> Any:
        @node(output_name="beats")
        async def heartbeat() -> int:
            while not self.done:
                self.beats.append(time.perf_counter())
                await asyncio.sleep(BEAT)
            return len(self.beats)

        return heartbeat

    def max_gap(self) -> float:
        return max(b - a for a, b in itertools.pairwise(self.beats))


def run_beside_heartbeat(sync_fn: Callable[[], Any]) -> tuple[Any, Heartbeat, float]:
    """Run ``sync_fn`` as a sync node beside a heartbeat node; return (result, heart, seconds)."""
    heart = Heartbeat()

    @node(output_name="result")
    def sync_node() -> Any:
        try:
            return sync_fn()
        finally:
            heart.done = True

    start = time.perf_counter()
    out = Pipeline([heart.node(), sync_node]).run()
    elapsed = time.perf_counter() - start
    assert out["beats"] == len(heart.beats)
    return out["result"], heart, elapsed


def assert_loop_kept_running(heart: Heartbeat, elapsed: float) -> None:
    assert elapsed >= WAIT
    assert len(heart.beats) >= WAIT / BEAT / 2, heart.beats
    assert heart.max_gap() < MAX_GAP


# --- the loop keeps running -----------------------------------------------------


def test_sync_node_run_sync_does_not_block_the_loop() -> None:
    result, heart, elapsed = run_beside_heartbeat(
        lambda: run_sync(asyncio.sleep(WAIT, result="slept"))
    )
    assert result == "slept"
    assert_loop_kept_running(heart, elapsed)


def test_sync_node_calls_plait_batch() -> None:
    async def slow_square(x: int) -> int:
        await asyncio.sleep(WAIT / 2)
        return x * x

    result, heart, elapsed = run_beside_heartbeat(
        lambda: plait.batch(slow_square, range(10), max_concurrent=5)
    )
    assert result == [x * x for x in range(10)]
    assert_loop_kept_running(heart, elapsed)


def test_sync_node_calls_another_pipelines_run() -> None:
    @node(output_name="y")
    async def slow(x: int) -> int:
        await asyncio.sleep(WAIT)
        return x + 1

    @node(output_name="z")
    def double(y: int) -> int:
        return 2 * y

    inner = Pipeline([slow, double])
    result, heart, elapsed = run_beside_heartbeat(lambda: inner.run(inputs={"x": 1}))
    assert result == {"y": 2, "z": 4}
    assert_loop_kept_running(heart, elapsed)


def test_sync_node_calls_map_and_imap() -> None:
    @node(output_name="y")
    async def slow(x: int) -> int:
        await asyncio.sleep(WAIT / 2)
        return x + 1

    inner = Pipeline([slow], engine=LocalEngine(map_executor="async", max_concurrent=4))

    def mapped() -> tuple[list[Any], list[tuple[int, Any]]]:
        listed = inner.map({"x": range(4)}, map_over="x")
        streamed = sorted(inner.imap({"x": range(4)}, map_over="x"))
        return listed, streamed

    (listed, streamed), heart, elapsed = run_beside_heartbeat(mapped)
    assert listed == [{"y": i + 1} for i in range(4)]
    assert streamed == [(i, {"y": i + 1}) for i in range(4)]
    assert_loop_kept_running(heart, elapsed)


def test_two_levels_of_sync_nodes_awaiting() -> None:
    @node(output_name="y")
    def inner_sync(x: int) -> int:
        return run_sync(asyncio.sleep(WAIT / 2, result=x + 1))

    @node(output_name="side")
    async def side() -> int:
        return 0

    inner = Pipeline([inner_sync, side])

    def outer() -> int:
        first: int = run_sync(asyncio.sleep(WAIT / 2, result=10))
        return first + inner.run(inputs={"x": 1})["y"]

    result, heart, elapsed = run_beside_heartbeat(outer)
    assert result == 12
    assert_loop_kept_running(heart, elapsed)


def test_all_sync_pipeline_run_inside_a_sync_node_awaits_through_the_same_portal() -> None:
    # inner.run() runs without a loop of its own (plain calls); its node's
    # run_sync still reaches the loop the outer sync node runs on.
    @node(output_name="y")
    def waits(x: int) -> int:
        return run_sync(asyncio.sleep(WAIT, result=x * 3))

    inner = Pipeline([waits])
    result, heart, elapsed = run_beside_heartbeat(lambda: inner.run(inputs={"x": 2}))
    assert result == {"y": 6}
    assert_loop_kept_running(heart, elapsed)


def test_all_sync_pipeline_awaited_with_arun() -> None:
    @node(output_name="y")
    def waits(x: int) -> int:
        return run_sync(asyncio.sleep(WAIT, result=x + 1))

    heart = Heartbeat()

    async def main() -> dict[str, Any]:
        ticker = asyncio.create_task(heart.node().func())
        try:
            return await Pipeline([waits]).arun(inputs={"x": 1})
        finally:
            heart.done = True
            await ticker

    start = time.perf_counter()
    assert asyncio.run(main()) == {"y": 2}
    assert_loop_kept_running(heart, time.perf_counter() - start)


def test_controlled_sync_node_awaits_through_the_portal() -> None:
    attempts = []

    def flaky() -> str:
        attempts.append(1)
        run_sync(asyncio.sleep(WAIT / 2))
        if len(attempts) == 1:
            raise ConnectionError("first attempt fails")
        return "ok"

    heart = Heartbeat()

    @node(output_name="result", retries=1, backoff=0)
    def controlled() -> str:
        try:
            return flaky()
        finally:
            if len(attempts) == 2:
                heart.done = True

    start = time.perf_counter()
    out = Pipeline([heart.node(), controlled]).run()
    assert out["result"] == "ok"
    assert len(attempts) == 2
    assert_loop_kept_running(heart, time.perf_counter() - start)


def test_all_sync_map_items_on_the_async_map_executor() -> None:
    @node(output_name="y")
    def waits(x: int) -> int:
        return run_sync(asyncio.sleep(WAIT, result=x))

    mapped = Pipeline([waits], engine=LocalEngine(map_executor="async", max_concurrent=10))
    start = time.perf_counter()
    result = mapped.map({"x": range(10)}, map_over="x")
    assert [r["y"] for r in result] == list(range(10))
    assert time.perf_counter() - start < 5 * WAIT  # items waited together, not one by one


# --- loop-bound objects, contextvars, errors, cancellation ----------------------


def test_objects_bound_to_the_loop_are_usable() -> None:
    # The queue and lock belong to the loop that runs the sync node: a sync call
    # blocking that loop could never get the item (it would deadlock or fail).
    state: dict[str, Any] = {}

    @node(output_name="made")
    async def make() -> bool:
        state["queue"] = asyncio.Queue()
        state["lock"] = asyncio.Lock()
        return True

    @node(output_name="got")
    def consume(made: bool) -> tuple[str, bool]:
        async def locked_get() -> str:
            async with state["lock"]:
                item: str = await state["queue"].get()
                return item

        return run_sync(locked_get()), state["lock"].locked()

    @node(output_name="put")
    async def produce(made: bool) -> bool:
        await asyncio.sleep(0.05)
        await state["queue"].put("item")
        return True

    out = Pipeline([make, consume, produce]).run()
    assert out["got"] == ("item", False)


def test_contextvars_are_visible_to_the_sync_code_and_the_awaited_work() -> None:
    async def read() -> str:
        await asyncio.sleep(0)
        return request_id.get()

    @node(output_name="seen")
    def sync_reader() -> tuple[str, str]:
        return request_id.get(), run_sync(read())

    @node(output_name="other")
    async def other() -> int:
        return 1

    token = request_id.set("caller")
    try:
        out = Pipeline([sync_reader, other]).run()
    finally:
        request_id.reset(token)
    assert out["seen"] == ("caller", "caller")


def test_exceptions_from_awaited_work_reach_the_sync_code_with_their_traceback() -> None:
    async def failing_call() -> None:
        await asyncio.sleep(0)
        raise ValueError("from async work")

    caught: list[str] = []

    @node(output_name="handled")
    def handles() -> str:
        try:
            run_sync(failing_call())
        except ValueError as exc:
            caught.append(str(exc))
        return "recovered"

    @node(output_name="raised")
    def lets_it_raise(handled: str) -> None:
        run_sync(failing_call())

    @node(output_name="other")
    async def other() -> int:
        return 1

    with pytest.raises(ValueError, match="from async work") as info:
        Pipeline([handles, lets_it_raise, other]).run()
    assert caught == ["from async work"]
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "lets_it_raise" in frames
    assert frames[-1] == "failing_call"
    assert any("node 'lets_it_raise'" in note for note in info.value.__notes__)


def test_timeout_inside_the_portal_cancels_the_work() -> None:
    cleaned = []

    async def forever() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append("finally ran")

    def times_out() -> str:
        start = time.perf_counter()
        with pytest.raises(TimeoutError):
            run_sync(forever(), timeout=WAIT)
        assert time.perf_counter() - start < 5 * WAIT
        return "timed out"

    result, heart, elapsed = run_beside_heartbeat(times_out)
    assert result == "timed out"
    assert cleaned == ["finally ran"]
    assert_loop_kept_running(heart, elapsed)


def test_cancelling_the_run_reaches_the_waiting_sync_code() -> None:
    events: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            events.append("work cancelled")

    @node(output_name="result")
    def waits() -> None:
        try:
            run_sync(forever())
        except asyncio.CancelledError:
            events.append("sync code saw CancelledError")
            raise

    @node(output_name="other")
    async def other() -> int:
        return 1

    async def main() -> None:
        async with asyncio.timeout(WAIT):
            await Pipeline([waits, other]).arun()

    start = time.perf_counter()
    with pytest.raises(TimeoutError):
        asyncio.run(main())
    assert time.perf_counter() - start < 5 * WAIT
    assert events == ["work cancelled", "sync code saw CancelledError"]


# --- the portal itself --------------------------------------------------------------


def test_call_is_plain_without_a_loop_and_suspends_when_the_code_awaits() -> None:
    assert portal.call(lambda a, b=0: a + b, 1, b=2) == 3  # no loop: a plain call
    assert not portal.in_worker()
    with pytest.raises(RuntimeError, match="only usable from sync code that plait runs"):
        portal.wait(asyncio.sleep(0))

    def awaits() -> tuple[bool, int]:
        return portal.in_worker(), portal.wait(asyncio.sleep(0, result=5))

    async def main() -> None:
        assert portal.call(lambda: portal.in_worker()) is True
        pending = portal.call(awaits)
        assert type(pending) is portal.Suspended
        assert await pending.finish() == (True, 5)
        with pytest.raises(RuntimeError, match="awaited only once"):
            await pending.finish()
        assert await portal.acall(awaits) == (True, 5)
        with pytest.raises(ZeroDivisionError):
            portal.call(lambda: 1 / 0)

    asyncio.run(main())


def test_sync_run_inside_a_running_loop_outside_plait_still_uses_the_portal_thread() -> None:
    # Plain sync code called from a coroutine is not run by plait: run_sync there
    # can only block its caller's loop (the documented rule), and warns.
    @node(output_name="y")
    def waits(x: int) -> int:
        return run_sync(asyncio.sleep(0.01, result=x + 1))

    async def main() -> dict[str, Any]:
        return Pipeline([waits]).run(inputs={"x": 1})

    with pytest.warns(RunningLoopWarning):
        assert asyncio.run(main()) == {"y": 2}


def test_an_idle_worker_keeps_no_result_or_exception_alive() -> None:
    class Payload:
        pass

    refs: list[weakref.ref[Payload]] = []

    @node(output_name="result")
    def fails() -> None:
        payload = Payload()
        refs.append(weakref.ref(payload))
        raise ValueError("failed with a payload in its frame")

    @node(output_name="other")
    async def other() -> int:
        return 1

    with pytest.raises(ValueError, match="payload"):
        Pipeline([fails, other]).run()
    gc.collect()
    assert refs[0]() is None
