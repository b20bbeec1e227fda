"""The scheduler: dataflow, concurrency, executors, fail-fast and cancellation."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from plait import EngineError, LocalEngine, Pipeline, node
from tests.helpers import renamed


def sleepers(count: int, seconds: float) -> list[Any]:
    async def nap() -> None:
        await asyncio.sleep(seconds)

    return [node(nap, output_name=f"o{i}", name=f"n{i}") for i in range(count)]


# --- concurrency and dataflow ---------------------------------------------------


def test_independent_async_nodes_run_concurrently() -> None:
    pipe = Pipeline(sleepers(100, 0.01))
    pipe.run()  # warm up the thread's loop
    start = time.perf_counter()
    pipe.run()
    assert time.perf_counter() - start < 0.5  # sequential would take 1 s


def test_a_node_starts_when_its_own_inputs_are_ready_not_in_waves() -> None:
    # fast -> after_fast; slow is independent and only finishes once after_fast
    # has started. Level-by-level scheduling would wait for slow first: deadlock.
    after_fast_started = asyncio.Event()

    @node(output_name="f")
    async def fast():
        return 1

    @node(output_name="s")
    async def slow():
        await asyncio.wait_for(after_fast_started.wait(), timeout=5)
        return 2

    @node(output_name="af")
    async def after_fast(f):
        after_fast_started.set()
        return f + 1

    @node(output_name="as_")
    def after_slow(s):
        return s + 1

    async def main() -> dict[str, Any]:
        return await Pipeline([after_slow, slow, after_fast, fast]).arun()

    assert asyncio.run(main()) == {"f": 1, "s": 2, "af": 2, "as_": 3}


def test_sync_nodes_run_inline_in_the_calling_task() -> None:
    seen: dict[str, Any] = {}

    @node(output_name="y")
    def inline(x):
        seen["thread"] = threading.get_ident()
        try:
            seen["task"] = asyncio.current_task()
        except RuntimeError:
            seen["task"] = None
        return x

    @node(output_name="z")
    async def after(y):
        return y

    async def main() -> None:
        seen["caller_task"] = asyncio.current_task()
        await Pipeline([inline, after]).arun(inputs={"x": 1})

    asyncio.run(main())
    assert seen["thread"] == threading.get_ident()
    assert seen["task"] is seen["caller_task"]  # no task was created for it


def test_all_sync_pipeline_runs_without_an_event_loop() -> None:
    @node(output_name="y")
    def no_loop(x):
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
        return x

    assert Pipeline([no_loop]).run(inputs={"x": 1}) == {"y": 1}


def test_async_tasks_start_before_an_inline_sync_node_blocks() -> None:
    started = threading.Event()

    @node(output_name="a")
    async def request():
        started.set()  # the "request is sent" moment
        await asyncio.sleep(0)
        return 1

    @node(output_name="b")
    def blocking():
        assert started.wait(0), "the async sibling did not get to start first"
        return 2

    assert Pipeline([blocking, request]).run() == {"b": 2, "a": 1}


def test_a_controlled_async_node_starts_before_an_inline_sync_node_blocks() -> None:
    started = threading.Event()

    @node(output_name="a", retries=1)  # controlled: its own task, through call_controlled
    async def request():
        started.set()
        await asyncio.sleep(0)
        return 1

    @node(output_name="b")
    def blocking():
        assert started.wait(0), "the controlled async sibling did not get to start first"
        return 2

    assert Pipeline([blocking, request]).run() == {"b": 2, "a": 1}


# --- executors ---------------------------------------------------------------------


def blocking_nodes(count: int, barrier: threading.Barrier) -> list[Any]:
    def meet() -> int:
        barrier.wait(timeout=5)  # only passes if all `count` run at the same time
        return threading.get_ident()

    return [node(meet, output_name=f"t{i}", name=f"b{i}") for i in range(count)]


def test_threaded_engine_overlaps_blocking_sync_nodes() -> None:
    with LocalEngine(node_executor="threaded", max_workers=4) as engine:
        result = Pipeline(blocking_nodes(4, threading.Barrier(4)), engine=engine).run()
    assert len(set(result.values())) == 4
    assert threading.get_ident() not in result.values()


def test_executor_instance_is_used_and_left_open() -> None:
    pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="mine")
    try:
        engine = LocalEngine(node_executor=pool)
        names = Pipeline(
            [node(lambda: threading.current_thread().name, output_name="who", name="who")],
            engine=engine,
        ).run()
        assert names["who"].startswith("mine")
        engine.close()
        assert pool.submit(lambda: 42).result() == 42  # still open
    finally:
        pool.shutdown()


def test_engine_owns_and_shuts_down_executors_it_creates() -> None:
    engine = LocalEngine(node_executor="threaded", max_workers=2)
    Pipeline(blocking_nodes(2, threading.Barrier(2)), engine=engine).run()
    pool = engine.node_pool()
    assert isinstance(pool, ThreadPoolExecutor)
    engine.close()
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)
    with pytest.raises(EngineError, match="this LocalEngine is closed"):
        Pipeline(blocking_nodes(1, threading.Barrier(1)), engine=engine).run()


def test_threaded_nodes_see_contextvars_and_async_nodes_still_run_on_the_loop() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    @node(output_name="s")
    def sync_reader():
        return var.get(), threading.current_thread().name

    @node(output_name="a")
    async def async_reader():
        return var.get(), threading.current_thread().name

    var.set("caller")
    with LocalEngine(node_executor="threaded") as engine:
        result = Pipeline([sync_reader, async_reader], engine=engine).run()
    assert result["s"][0] == "caller"
    assert result["s"][1].startswith("plait-node")
    assert result["a"] == ("caller", threading.current_thread().name)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("threads", r"unknown node_executor 'threads'\. Did you mean 'threaded'\?"),
        ("gpu", r"'gpu'\. Use one of 'sequential', 'async', 'threaded', 'parallel' or a"),
        (3, r"node_executor must be one of .* or a concurrent.futures.Executor instance, got int"),
    ],
)
def test_bad_executor_specs(spec: Any, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        LocalEngine(node_executor=spec)


def test_bad_max_workers() -> None:
    with pytest.raises(EngineError, match="max_workers must be a positive int, got 0"):
        LocalEngine(node_executor="threaded", max_workers=0)


def test_engine_repr() -> None:
    assert repr(LocalEngine("threaded", max_workers=3)) == (
        "LocalEngine(node_executor='threaded', map_executor='sequential', max_workers=3)"
    )
    assert repr(LocalEngine(map_executor="async", max_concurrent=50)) == (
        "LocalEngine(node_executor='sequential', map_executor='async', max_concurrent=50)"
    )


# --- fail-fast -----------------------------------------------------------------------


class Boom(ValueError):
    pass


def late_writer(path: Path, name: str, log: list[str]) -> Any:
    """A node that would write ``path`` after 10 s; ``log`` records how it ended. Once
    it reads started, cancelled, finished, nothing is left to write the file later: no
    need to wait and see."""

    async def write_later() -> None:
        log.append("started")
        try:
            await asyncio.sleep(10)
            path.write_text("written after the failure")  # noqa: ASYNC240 - the side effect under test
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        finally:
            log.append("finished")

    return node(write_later, output_name=f"{name}_out", name=name)


CANCELLED_AND_AWAITED = ["started", "cancelled", "finished"]


def test_failure_cancels_siblings_before_propagating(tmp_path: Path) -> None:
    marker = tmp_path / "late.txt"
    log: list[str] = []

    @node(output_name="bad")
    async def fails(x):
        await asyncio.sleep(0.01)
        raise Boom("no good")

    pipe = Pipeline([fails, late_writer(marker, "writer", log)])
    start = time.perf_counter()
    with pytest.raises(Boom, match="no good") as info:
        pipe.run(inputs={"x": [1, 2, 3]})
    assert time.perf_counter() - start < 5  # did not wait for the 10 s sibling
    assert "plait: raised in node 'fails' (→ bad) called with (x=[1, 2, 3])" in info.value.__notes__
    assert log == CANCELLED_AND_AWAITED
    assert not marker.exists()


def test_sync_failure_cancels_running_async_siblings(tmp_path: Path) -> None:
    marker = tmp_path / "late.txt"
    log: list[str] = []

    @node(output_name="gate")
    async def gate():
        await asyncio.sleep(0.01)
        return 1

    @node(output_name="bad")
    def fails(gate):
        raise KeyError("missing thing")

    with pytest.raises(KeyError) as info:
        Pipeline([gate, fails, late_writer(marker, "writer", log)]).run()
    assert "plait: raised in node 'fails' (→ bad) called with (gate=1)" in info.value.__notes__
    assert log == CANCELLED_AND_AWAITED
    assert not marker.exists()


def test_cancelled_nodes_are_awaited_before_the_error_propagates() -> None:
    states: list[str] = []

    @node(output_name="slow")
    async def slow():
        try:
            await asyncio.sleep(5)
        finally:
            await asyncio.sleep(0.05)  # cleanup that itself awaits
            states.append("slow cleaned up")

    @node(output_name="bad")
    async def bad():
        await asyncio.sleep(0.01)
        raise Boom

    with pytest.raises(Boom):
        Pipeline([slow, bad]).run()
    assert states == ["slow cleaned up"]


def test_errors_raised_while_cancelling_are_retrieved() -> None:
    # A sibling that raises its own error when cancelled must not produce an
    # "exception was never retrieved" log (the autouse fixture checks the logs).
    @node(output_name="grumpy")
    async def grumpy():
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            raise RuntimeError("raised while cancelled") from None

    @node(output_name="bad")
    async def bad():
        await asyncio.sleep(0.01)
        raise Boom

    with pytest.raises(Boom):
        Pipeline([grumpy, bad]).run()


def test_queued_thread_jobs_never_start_and_running_ones_are_waited_for(tmp_path: Path) -> None:
    log: list[str] = []
    running = threading.Event()

    def occupy() -> str:
        running.set()
        time.sleep(0.3)
        log.append("occupy finished")
        return "done"

    def write(marker: Path) -> None:
        marker.write_text("ran")

    queued_nodes = [
        node(renamed(write, f"p{i}", f"q{i}"), output_name=f"q{i}_out", name=f"q{i}")
        for i in range(3)
    ]

    @node(output_name="bad")
    async def bad():
        await asyncio.to_thread(running.wait, 5)
        raise Boom

    inputs = {f"p{i}": tmp_path / f"queued{i}" for i in range(3)}
    with LocalEngine(node_executor="threaded", max_workers=1) as engine:
        pipe = Pipeline(
            [node(occupy, output_name="o", name="occupy"), *queued_nodes, bad], engine=engine
        )
        with pytest.raises(Boom):
            pipe.run(inputs=inputs)
        # The running job finished before run() raised; the queued ones never ran.
        assert log == ["occupy finished"]
    time.sleep(0.1)
    assert not any((tmp_path / f"queued{i}").exists() for i in range(3))


# --- cancellation by the caller -------------------------------------------------------


def test_asyncio_timeout_around_arun_cancels_the_run(tmp_path: Path) -> None:
    marker = tmp_path / "late.txt"
    log: list[str] = []
    pipe = Pipeline([late_writer(marker, "writer", log), *sleepers(3, 5)])

    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await pipe.arun()
        # Here, before asyncio.run's own cleanup could cancel a task the run left behind.
        assert log == CANCELLED_AND_AWAITED

    asyncio.run(main())
    assert not marker.exists()


def test_task_cancel_propagates_into_the_run() -> None:
    finished: list[str] = []
    started = asyncio.Event()

    @node(output_name="a")
    async def a():
        started.set()
        try:
            await asyncio.sleep(5)
        finally:
            finished.append("a")

    @node(output_name="b")
    async def b():
        try:
            await asyncio.sleep(5)
        finally:
            finished.append("b")

    async def main() -> None:
        task = asyncio.create_task(Pipeline([a, b]).arun())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sorted(finished) == ["a", "b"]  # both were cancelled and awaited

    asyncio.run(main())


def test_repeated_cancellation_still_waits_for_running_thread_jobs() -> None:
    log: list[str] = []
    running = threading.Event()

    def busy() -> None:
        running.set()
        time.sleep(0.2)
        log.append("busy finished")

    async def main() -> None:
        with LocalEngine(node_executor="threaded") as engine:
            pipe = Pipeline([node(busy, output_name="o", name="busy")], engine=engine)
            task = asyncio.create_task(pipe.arun())
            await asyncio.to_thread(running.wait, 5)
            task.cancel()
            await asyncio.sleep(0.01)
            task.cancel()  # a second cancel during the wait
            with pytest.raises(asyncio.CancelledError):
                await task
            assert log == ["busy finished"]

    asyncio.run(main())


def test_the_user_exception_type_is_preserved_for_async_nodes() -> None:
    @node(output_name="y")
    async def bad(x):
        raise ZeroDivisionError("divide")

    with pytest.raises(ZeroDivisionError) as info:
        Pipeline([bad]).run(inputs={"x": "a" * 200})
    (note,) = info.value.__notes__
    assert note.startswith("plait: raised in node 'bad' (→ y) called with (x='aaaa")
    assert len(note) < 150  # inputs are shown in short form


def test_exception_from_creating_the_coroutine_is_annotated() -> None:
    class Weird:
        async def __call__(self, x):
            return x

    weird = node(Weird(), output_name="y", name="weird")
    weird.func = lambda x: 1 / 0  # calling it fails before any coroutine exists
    with pytest.raises(ZeroDivisionError) as info:
        Pipeline([weird]).run(inputs={"x": 1})
    assert "plait: raised in node 'weird' (→ y) called with (x=1)" in info.value.__notes__


# --- argument passing on every path ---------------------------------------------------


def _sync_kinds(a, /, b, *, c, d=4):
    return (a, b, c, d)


async def _async_kinds(a, /, b, *, c, d=4):
    return (a, b, c, d)


@pytest.mark.parametrize("func", [_sync_kinds, _async_kinds], ids=["sync", "async"])
@pytest.mark.parametrize("executor", ["sequential", "threaded"])
def test_positional_only_keyword_only_and_defaults(func: Any, executor: str) -> None:
    with LocalEngine(node_executor=executor) as engine:
        pipe = Pipeline([node(func, output_name="out", name="kinds")], engine=engine)
        assert pipe.run(inputs={"a": 1, "b": 2, "c": 3}) == {"out": (1, 2, 3, 4)}
        assert pipe.run(inputs={"a": 1, "b": 2, "c": 3, "d": 5}) == {"out": (1, 2, 3, 5)}


def test_builtin_with_positional_only_parameter() -> None:
    import math

    assert Pipeline([node(math.sqrt, output_name="root")]).run(inputs={"x": 9.0}) == {"root": 3.0}


@node(output_name="worker_pid")
def where_am_i(x):
    import os

    return os.getpid(), x * 2


@node(output_name="loop_pid")
async def on_the_loop(worker_pid):
    import os

    return os.getpid()


def test_process_pool_instance_runs_sync_nodes_in_worker_processes() -> None:
    import os
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = Pipeline([where_am_i, on_the_loop], engine=LocalEngine(node_executor=pool)).run(
            inputs={"x": 21}
        )
    worker_pid, doubled = result["worker_pid"]
    assert doubled == 42
    assert worker_pid != os.getpid()
    assert result["loop_pid"] == os.getpid()


@node(output_name="bad")
def fails_in_worker(x):
    raise ValueError(f"bad value {x}")


def test_process_pool_errors_keep_their_type_and_get_a_note() -> None:
    from concurrent.futures import ProcessPoolExecutor

    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool, pytest.raises(ValueError) as info:
        Pipeline([fails_in_worker], engine=LocalEngine(node_executor=pool)).run(inputs={"x": 7})
    assert str(info.value) == "bad value 7"
    assert (
        "plait: raised in node 'fails_in_worker' (→ bad) called with (x=7)" in info.value.__notes__
    )


# --- node_executor="async" --------------------------------------------------------------


def test_async_node_executor_runs_sync_nodes_off_the_loop_and_bounds_nodes() -> None:
    state = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def blocking() -> str:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.02)
        with lock:
            state["now"] -= 1
        return threading.current_thread().name

    async def napping() -> str:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.02)
        with lock:
            state["now"] -= 1
        return threading.current_thread().name

    nodes = [node(blocking, output_name=f"s{i}", name=f"s{i}") for i in range(6)]
    nodes += [node(napping, output_name=f"a{i}", name=f"a{i}") for i in range(6)]
    with LocalEngine(node_executor="async", max_concurrent=3) as engine:
        result = Pipeline(nodes, engine=engine).run()
    assert state["peak"] == 3
    loop_thread = threading.current_thread().name
    assert all(result[f"s{i}"] != loop_thread for i in range(6))  # sync nodes on threads
    assert all(result[f"a{i}"] == loop_thread for i in range(6))  # async nodes on the loop


def test_async_node_executor_overlaps_blocking_nodes() -> None:
    with LocalEngine(node_executor="async", max_concurrent=4) as engine:
        result = Pipeline(blocking_nodes(4, threading.Barrier(4)), engine=engine).run()
    assert len(set(result.values())) == 4


def test_async_node_executor_fails_fast() -> None:
    @node(output_name="bad")
    def fails():
        raise ValueError("sync failure on a thread")

    @node(output_name="slow")
    async def slow():
        await asyncio.sleep(5)

    with LocalEngine(node_executor="async") as engine, pytest.raises(ValueError) as info:
        Pipeline([slow, fails], engine=engine).run()
    assert "plait: raised in node 'fails' (→ bad) called with ()" in info.value.__notes__
