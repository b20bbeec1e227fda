"""Per-node controls: retries, backoff, timeout, max_concurrent, rate_limit, executor."""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from plait import ItemError, LocalEngine, NodeDefinitionError, Pipeline, node
from plait.engine.local.controls import Rate, Slots
from plait.options import NodeOptions, RateLimit, parse_rate

# --- validation at decoration ------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": -1}, "node 'f': retries must be an int >= 0, got -1"),
        ({"retry_on": "oops"}, "node 'f': retry_on must be an exception class or a tuple"),
        ({"retry_on": (ValueError, int)}, "retry_on must be an exception class or a tuple"),
        ({"backoff": -1}, "node 'f': backoff must be seconds >= 0 or a function"),
        ({"timeout": 0}, "node 'f': timeout must be seconds > 0, got 0"),
        ({"max_concurrent": 0}, "node 'f': max_concurrent must be an int >= 1, got 0"),
        ({"rate_limit": "fast"}, "node 'f': rate_limit must look like '20/s', '100/min'"),
        ({"rate_limit": 0}, "rate_limit must look like"),
        ({"executor": "gpu"}, "node 'f': executor must be one of 'sequential', 'threaded'"),
    ],
)
def test_bad_controls_are_rejected_naming_the_node(options: dict[str, Any], message: str) -> None:
    def f(x):
        return x

    with pytest.raises(NodeDefinitionError, match=re.escape(message)):
        node(f, output_name="y", **options)


@pytest.mark.parametrize(
    ("rate", "count", "period"),
    [
        ("20/s", 20, 1.0),
        ("120/min", 120, 60.0),
        ("5/10s", 5, 10.0),
        ("3/0.5s", 3, 0.5),
        ("3600/h", 3600, 3600.0),
        ("1/second", 1, 1.0),
        (3, 3, 1.0),
        (2.5, 1, 0.4),  # a fractional count: single starts, evenly spaced
        ("2.5/s", 1, 0.4),
        (0.5, 1, 2.0),
    ],
)
def test_rate_formats(rate: Any, count: int, period: float) -> None:
    limit = parse_rate("n", rate)
    assert limit is not None
    assert (limit.count, limit.period) == (count, pytest.approx(period))
    assert limit == RateLimit(count, limit.period)


def test_plain_nodes_are_not_controlled() -> None:
    assert node(lambda x: x, output_name="y").options == NodeOptions()
    assert not node(lambda x: x, output_name="y").options.controlled
    assert node(lambda x: x, output_name="y", retries=1).options.controlled


def test_backoff_doubles_with_jitter() -> None:
    options = NodeOptions(backoff=1.0)
    error = ValueError()
    assert options.delay(1, error, 0.0) == 0.5
    assert options.delay(1, error, 0.999) == pytest.approx(1.499)
    assert options.delay(3, error, 0.5) == 4.0
    assert NodeOptions(backoff=lambda n: n * 10).delay(2, error, 0.3) == 20


# --- retries -----------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_retries_until_success(is_async: bool) -> None:
    attempts: list[int] = []

    def flaky(x):
        attempts.append(x)
        if len(attempts) < 3:
            raise ConnectionError("down")
        return x * 10

    async def aflaky(x):
        return flaky(x)

    n = node(aflaky if is_async else flaky, output_name="y", name="flaky", retries=2, backoff=0)
    assert Pipeline([n]).run(inputs={"x": 4}) == {"y": 40}
    assert attempts == [4, 4, 4]


def test_retries_exhausted_raise_the_last_error_with_a_note() -> None:
    attempts = []

    @node(output_name="y", retries=2, backoff=0.001)
    def always_down(x):
        attempts.append(1)
        raise ConnectionError(f"down {len(attempts)}")

    with pytest.raises(ConnectionError, match="down 3") as info:
        Pipeline([always_down]).run(inputs={"x": 1})
    assert len(attempts) == 3
    assert info.value.__notes__ == ["plait: raised in node 'always_down' (→ y) called with (x=1)"]


def test_only_retry_on_types_are_retried() -> None:
    attempts = []

    @node(output_name="y", retries=5, retry_on=(ConnectionError, TimeoutError), backoff=0)
    def wrong_kind(x):
        attempts.append(1)
        raise ValueError("not transient")

    with pytest.raises(ValueError, match="not transient"):
        Pipeline([wrong_kind]).run(inputs={"x": 1})
    assert len(attempts) == 1


def test_backoff_waits_between_attempts() -> None:
    times: list[float] = []

    @node(output_name="y", retries=2, backoff=lambda attempt: 0.05 * attempt)
    async def flaky():
        times.append(time.monotonic())
        if len(times) < 3:
            raise ConnectionError
        return 1

    Pipeline([flaky]).run()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.045
    assert gaps[1] >= 0.095


def test_retry_hook_sees_each_retry() -> None:
    from plait.engine.local import controls
    from plait.engine.local.plan import plan_for

    seen: list[tuple[str, int, str, float]] = []

    @node(output_name="y", retries=2, backoff=0)
    def flaky(x):
        if len(seen) < 2:
            raise ConnectionError("again")
        return x

    pipe = Pipeline([flaky])
    plan = plan_for(pipe.graph, None, {"x"})
    runtime = LocalEngine().runtime(plan)
    assert runtime is not None

    def on_retry(step, attempt, exc, delay):
        seen.append((step.node.name, attempt, str(exc), delay))

    values = plan.new_values({"x": 1})
    asyncio.run(controls.call_controlled(plan.steps[0], 0, values, runtime, on_retry))
    assert seen == [("flaky", 1, "again", 0.0), ("flaky", 2, "again", 0.0)]


# --- timeouts ------------------------------------------------------------------------


def test_async_timeout_cancels_and_names_the_node() -> None:
    cancelled = threading.Event()

    @node(output_name="y", timeout=0.05)
    async def hangs(x):
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    start = time.perf_counter()
    with pytest.raises(TimeoutError, match=r"node 'hangs' timed out after 0\.05 s") as info:
        Pipeline([hangs]).run(inputs={"x": 1})
    assert time.perf_counter() - start < 1
    assert cancelled.is_set()
    assert "plait: raised in node 'hangs' (→ y) called with (x=1)" in info.value.__notes__


def test_sync_timeout_is_reported_and_the_late_result_discarded() -> None:
    release, finished = threading.Event(), threading.Event()

    @node(output_name="y", timeout=0.05)
    def blocks(x):
        release.wait(10)
        finished.set()
        return "late"

    with pytest.raises(TimeoutError, match="cannot be stopped, so it runs to its end"):
        Pipeline([blocks]).run(inputs={"x": 1})
    assert not finished.is_set()  # reported without waiting for the thread
    release.set()
    assert finished.wait(2)  # the thread itself ran on, documented


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_call_that_finishes_within_its_timeout_returns_its_result(kind: str) -> None:
    def quick(x):
        return ("quick", x, threading.current_thread() is threading.main_thread())

    async def aquick(x):
        await asyncio.sleep(0)
        return quick(x)

    fn = quick if kind == "sync" else aquick
    pipe = Pipeline([node(fn, output_name="y", name="quick", timeout=5)])
    # A sync node with a timeout runs on a thread (to be timed); an async one on the loop.
    assert pipe.run(inputs={"x": 7}) == {"y": ("quick", 7, kind == "async")}


def test_a_controlled_sync_node_without_a_timeout_runs_on_the_calling_thread() -> None:
    @node(output_name="y", retries=1, max_concurrent=2, rate_limit="100/s")
    def where(x):
        return threading.get_ident()

    assert Pipeline([where]).run(inputs={"x": 1}) == {"y": threading.get_ident()}


def test_a_released_slot_frees_exactly_one() -> None:
    async def main() -> None:
        slots = Slots(1)
        await slots.acquire()
        slots.release()  # nobody waiting: back to one free slot
        await slots.acquire()
        second = asyncio.create_task(slots.acquire())
        for _ in range(3):
            await asyncio.sleep(0)
        assert not second.done(), "a release with nobody waiting freed more than one slot"
        slots.release()
        await asyncio.wait_for(second, 1)
        slots.release()

    asyncio.run(main())


def test_a_release_adds_one_free_slot_to_those_left() -> None:
    async def main() -> None:
        slots = Slots(3)
        await slots.acquire()
        await slots.acquire()
        slots.release()  # one was free, now two: not reset to one
        assert slots._free == 2
        await asyncio.wait_for(slots.acquire(), 1)
        await asyncio.wait_for(slots.acquire(), 1)
        assert slots._free == 0

    asyncio.run(main())


def test_a_waiter_cancelled_while_its_grant_is_on_the_way_passes_the_slot_on_once() -> None:
    # release() handed the slot to the queued waiter (its grant is scheduled on the
    # loop), then the waiter is cancelled before the grant lands: the grant passes
    # the slot on; the cancelled waiter must not pass it on a second time.
    async def main() -> None:
        slots = Slots(1)
        await slots.acquire()
        queued = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0)
        slots.release()
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        await asyncio.sleep(0)  # the grant has landed
        assert slots._free == 1

    asyncio.run(main())


def test_a_waiter_cancelled_after_its_grant_landed_passes_the_slot_on() -> None:
    async def main() -> None:
        slots = Slots(1)
        await slots.acquire()
        queued = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0)
        slots.release()
        await asyncio.sleep(0)  # the grant lands; the waiter has not resumed yet
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert slots._free == 1  # the slot it was granted is not lost

    asyncio.run(main())


def test_cancelling_a_queued_waiter_leaves_the_queue() -> None:
    async def main() -> None:
        slots = Slots(1)
        await slots.acquire()
        queued = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0)
        assert len(slots._waiters) == 1
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert not slots._waiters  # it left the queue; nothing was granted to it
        slots.release()
        assert slots._free == 1
        await asyncio.wait_for(slots.acquire(), 1)  # the slot is there, at once

    asyncio.run(main())


def test_timeouts_are_retried_when_asked() -> None:
    attempts = []

    @node(output_name="y", timeout=0.05, retries=2, retry_on=TimeoutError, backoff=0)
    async def slow_then_fast():
        attempts.append(1)
        await asyncio.sleep(1 if len(attempts) < 3 else 0)
        return "ok"

    assert Pipeline([slow_then_fast]).run() == {"y": "ok"}
    assert len(attempts) == 3


# --- limits across a run or map ---------------------------------------------------------


class Gauge:
    """Counts calls in flight and remembers the peak (thread-safe)."""

    def __init__(self) -> None:
        self.now = self.peak = 0
        self.lock = threading.Lock()

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def test_max_concurrent_holds_across_an_async_map() -> None:
    gauge = Gauge()

    @node(output_name="y", max_concurrent=4)
    async def call_api(x):
        gauge.enter()
        await asyncio.sleep(0.01)
        gauge.leave()
        return x

    with LocalEngine(map_executor="async", max_concurrent=100) as engine:
        result = Pipeline([call_api], engine=engine).map(inputs={"x": range(40)}, map_over="x")
    assert [r["y"] for r in result] == list(range(40))
    assert gauge.peak == 4


def test_max_concurrent_holds_across_threads_of_a_threaded_map() -> None:
    gauge = Gauge()

    @node(output_name="y", max_concurrent=2)
    def blocking(x):
        gauge.enter()
        time.sleep(0.01)
        gauge.leave()
        return x

    with LocalEngine(map_executor="threaded", max_workers=6) as engine:
        Pipeline([blocking], engine=engine).map(inputs={"x": range(30)}, map_over="x")
    assert gauge.peak == 2


def test_max_concurrent_holds_across_nodes_of_one_run() -> None:
    gauge = Gauge()

    async def work():
        gauge.enter()
        await asyncio.sleep(0.01)
        gauge.leave()

    shared = [node(work, output_name=f"o{i}", name=f"w{i}", max_concurrent=1) for i in range(3)]
    Pipeline(shared).run()
    # Each node has its own limit: three different nodes may overlap.
    assert gauge.peak == 3


def most_in_a_window(starts: list[float], period: float) -> int:
    """The most starts any half-open window ``[t, t + period)`` holds."""
    starts = sorted(starts)
    return max(sum(1 for t in starts[i:] if t - s < period) for i, s in enumerate(starts))


def test_rate_limit_holds_in_every_window_even_when_a_start_is_late() -> None:
    starts: list[float] = []

    @node(output_name="y", rate_limit="4/0.3s")
    async def call(x):
        starts.append(time.monotonic())
        if x == 0:
            time.sleep(0.12)  # blocks the loop: the starts due meanwhile come late
        return x

    with LocalEngine(map_executor="async", max_concurrent=100) as engine:
        Pipeline([call], engine=engine).map(inputs={"x": range(9)}, map_over="x")
    assert len(starts) == 9
    assert most_in_a_window(starts, 0.3) == 4


def test_rate_limit_starts_a_burst_then_holds_every_window() -> None:
    starts: list[float] = []

    @node(output_name="y", rate_limit="5/1s")
    async def call(x):
        starts.append(time.monotonic())
        await asyncio.sleep(0)
        return x

    with LocalEngine(map_executor="async", max_concurrent=100) as engine:
        Pipeline([call], engine=engine).map(inputs={"x": range(10)}, map_over="x")
    # Up to the limit at once (evenly spaced starts would take 0.8 s), then a full
    # period before the sixth; the margins hold on a loaded machine.
    assert starts[4] - starts[0] < 0.5
    assert starts[5] - starts[0] >= 1.0
    assert most_in_a_window(starts, 1.0) == 5


def test_rate_holds_across_the_loops_of_several_threads() -> None:
    rate = Rate(RateLimit(4, 0.1))
    starts: list[float] = []

    async def calls() -> None:
        async def one() -> None:
            await rate.wait()
            starts.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(8)))

    with ThreadPoolExecutor(3) as pool:
        for job in [pool.submit(asyncio.run, calls()) for _ in range(3)]:
            job.result(10)
    assert len(starts) == 24
    assert most_in_a_window(starts, 0.1) == 4
    assert max(starts) - min(starts) >= 0.5 * 0.99  # 24 starts, 4 per 0.1 s


def test_rate_waits_for_a_late_start_on_another_loop() -> None:
    rate = Rate(RateLimit(1, 0.05))
    starts: dict[str, float] = {}
    reserved = threading.Event()

    async def busy_loop() -> None:
        await rate.wait()

        async def late() -> None:
            await rate.wait()
            starts["late"] = time.monotonic()

        task = asyncio.create_task(late())
        await asyncio.sleep(0)  # it takes its turn, due in 0.05 s
        reserved.set()
        time.sleep(0.2)  # this loop is blocked past that
        await task

    async def other() -> None:
        await rate.wait()  # due after the late one: it must wait for it to start
        starts["other"] = time.monotonic()

    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(asyncio.run, busy_loop())
        assert reserved.wait(5)
        asyncio.run(other())
        job.result(5)
    assert starts["other"] - starts["late"] >= 0.05


def test_a_cancelled_rate_waiter_does_not_block_the_next() -> None:
    rate = Rate(RateLimit(1, 0.05))

    async def main() -> float:
        await rate.wait()
        cancelled = asyncio.create_task(rate.wait())
        await asyncio.sleep(0)
        after = asyncio.create_task(rate.wait())
        await asyncio.sleep(0)
        cancelled.cancel()
        start = time.monotonic()
        await asyncio.wait_for(after, 2)
        return time.monotonic() - start

    # It counts as a start when it was due (0.05 s): the next waits one more period.
    assert 0.03 < asyncio.run(main()) < 1


def test_cancelled_waiters_do_not_lose_slots() -> None:
    gauge = Gauge()

    @node(output_name="y", max_concurrent=1, timeout=0.02)
    async def one_at_a_time(x):
        gauge.enter()
        try:
            await asyncio.sleep(0.05 if x == 0 else 0)
        finally:
            gauge.leave()
        return x

    with LocalEngine(map_executor="async", max_concurrent=10) as engine:
        out = Pipeline([one_at_a_time], engine=engine).map(
            inputs={"x": range(5)}, map_over="x", on_error="collect"
        )
    # item 0 times out; the queued ones still get the slot, one at a time
    assert isinstance(out[0], ItemError)
    assert isinstance(out[0].exception, TimeoutError)
    assert [o["y"] for o in out[1:]] == [1, 2, 3, 4]
    assert gauge.peak == 1


# --- executors per node -----------------------------------------------------------------


def test_node_executor_threaded_overrides_the_engine() -> None:
    @node(output_name="where", executor="threaded")
    def on_thread():
        return threading.current_thread().name

    @node(output_name="here")
    def inline():
        return threading.current_thread().name

    with LocalEngine() as engine:
        result = Pipeline([on_thread, inline], engine=engine).run()
    assert result["where"].startswith("plait-threads")
    assert result["here"] == threading.current_thread().name


def test_node_executor_instance() -> None:
    with ThreadPoolExecutor(1, thread_name_prefix="custom") as pool:

        @node(output_name="where", executor=pool)
        def on_pool():
            return threading.current_thread().name

        assert Pipeline([on_pool]).run()["where"].startswith("custom")


def test_controlled_thread_job_is_waited_for_on_failure() -> None:
    # The run must not raise before a thread job it started has finished. Checked inside
    # the engine's `with`: leaving it shuts the pool down, which waits for the job anyway.
    log: list[str] = []
    running, failing = threading.Event(), threading.Event()

    @node(output_name="a", executor="threaded", retries=1)
    def busy():
        running.set()
        failing.wait(5)
        time.sleep(0.1)  # a run that does not wait for this job has raised meanwhile
        log.append("busy finished")

    @node(output_name="b")
    async def fails():
        await asyncio.to_thread(running.wait, 5)
        failing.set()
        raise KeyError("x")

    with LocalEngine() as engine:
        with pytest.raises(KeyError):
            Pipeline([busy, fails], engine=engine).run()
        assert log == ["busy finished"], "the run raised before its thread job finished"
