"""Batch nodes in maps on LocalEngine: grouping, flushing, controls, cache, callbacks, errors."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plait import (
    AsyncExecutor,
    BatchLengthError,
    Dep,
    ItemError,
    LocalEngine,
    MemoryCache,
    Pipeline,
    node,
)
from plait.callbacks import Callback

CALLS: list[list[Any]] = []


@node(output_name="up", batch_size=4)
def upper(text, log):
    if log[0] is None:
        CALLS.append(list(text))
    else:  # another process: the batch sizes go through a file
        with open(log[0], "a") as file:
            file.write(f"{len(text)}\n")
    return [t.upper() for t in text]


@node(output_name="size")
def size(up):
    return len(up)


def _texts(n: int) -> list[str]:
    return [f"t{i}" for i in range(n)]


def _expected(n: int) -> list[dict[str, Any]]:
    return [{"up": t.upper(), "size": len(t)} for t in _texts(n)]


IN_PROCESS = ["sequential", "async", "threaded", "thread-pool"]


def _executor(kind: str) -> Any:
    if kind == "thread-pool":
        return ThreadPoolExecutor(2)
    if kind == "process-pool":
        return ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    return kind


@pytest.mark.parametrize("kind", IN_PROCESS)
def test_a_map_groups_items_into_full_batches_in_order(kind: str) -> None:
    CALLS.clear()
    executor = _executor(kind)
    with LocalEngine(map_executor=executor) as engine:
        results = Pipeline([upper, size], engine=engine).map(
            inputs={"text": _texts(10), "log": None}, map_over="text"
        )
    if not isinstance(executor, str):
        executor.shutdown()
    assert results == _expected(10)
    assert [len(call) for call in CALLS] == [4, 4, 2]  # the last, partial one: end of input
    assert sorted(t for call in CALLS for t in call) == sorted(_texts(10))


@pytest.mark.parametrize("kind", ["parallel", "process-pool"])
def test_items_in_worker_processes_share_batch_calls(kind: str, tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    executor = _executor(kind)
    with LocalEngine(map_executor=executor, max_workers=2) as engine:
        results = Pipeline([upper, size], engine=engine).map(
            inputs={"text": _texts(40), "log": str(log)}, map_over="text"
        )
    if not isinstance(executor, str):
        executor.shutdown()
    assert results == _expected(40)
    sizes = [int(line) for line in log.read_text().split()]
    assert sum(sizes) == 40
    assert max(sizes) == 4
    assert len(sizes) == 10  # chunks are whole batches


def test_an_async_executor_batches_the_items_it_runs_at_once() -> None:
    CALLS.clear()
    with AsyncExecutor(max_concurrent=3) as executor, LocalEngine(map_executor=executor) as engine:
        results = Pipeline([upper, size], engine=engine).map(
            inputs={"text": _texts(10), "log": None}, map_over="text"
        )
    assert results == _expected(10)
    assert sum(len(call) for call in CALLS) == 10
    assert max(len(call) for call in CALLS) == 3
    assert len(CALLS) < 10


def test_an_async_executor_item_waits_for_the_items_submitted_after_it() -> None:
    CALLS.clear()

    def slowly() -> Iterator[str]:  # the executor's loop runs item 0 meanwhile
        for text in _texts(6):
            yield text
            time.sleep(0.05)

    with AsyncExecutor(max_concurrent=3) as executor, LocalEngine(map_executor=executor) as engine:
        results = Pipeline([upper, size], engine=engine).map(
            inputs={"text": slowly(), "log": None}, map_over="text"
        )
    assert results == _expected(6)
    assert [len(call) for call in CALLS] == [3, 3]


def test_loky_runs_jobs_of_a_batch(tmp_path: Path) -> None:
    loky = pytest.importorskip("loky")
    log = tmp_path / "calls.txt"
    executor = loky.get_reusable_executor(max_workers=2)
    with LocalEngine(map_executor=executor) as engine:
        results = Pipeline([upper, size], engine=engine).map(
            inputs={"text": _texts(10), "log": str(log)}, map_over="text"
        )
    assert results == _expected(10)
    assert sorted(int(line) for line in log.read_text().split()) == [2, 4, 4]


def test_a_run_is_a_batch_of_one_and_a_map_matches_single_calls() -> None:
    CALLS.clear()
    pipeline = Pipeline([upper, size])
    assert pipeline.run(inputs={"text": "ab", "log": None}) == {"up": "AB", "size": 2}
    assert CALLS == [["ab"]]


def test_a_partial_batch_goes_after_max_wait() -> None:
    gate: list[asyncio.Future[None]] = []  # made on the map's loop by the first waiter
    seen: list[list[int]] = []

    @node(output_name="ready")
    async def arrive(x):
        if x > 0:  # the others arrive only once the first batch has been called, together
            if not gate:
                gate.append(asyncio.get_running_loop().create_future())
            await gate[0]
        return x

    @node(output_name="y", batch_size=10, max_wait=0.05)
    def collect(ready):
        seen.append(list(ready))
        if not gate[0].done():
            gate[0].get_loop().call_soon_threadsafe(gate[0].set_result, None)
        return ready

    with LocalEngine(map_executor="async") as engine:
        results = Pipeline([arrive, collect], engine=engine).map(
            inputs={"x": [0, 1, 2]}, map_over="x"
        )
    assert [r["y"] for r in results] == [0, 1, 2]
    assert seen == [[0], [1, 2]]


def test_without_max_wait_a_batch_waits_for_items_that_may_still_join() -> None:
    seen: list[list[int]] = []

    @node(output_name="ready")
    async def arrive(x):
        await asyncio.sleep(0.02 * x)  # items arrive one by one
        return x

    @node(output_name="y", batch_size=10)
    def collect(ready):
        seen.append(list(ready))
        return ready

    with LocalEngine(map_executor="async") as engine:
        Pipeline([arrive, collect], engine=engine).map(inputs={"x": range(5)}, map_over="x")
    assert seen == [[0, 1, 2, 3, 4]]


def test_max_concurrent_and_rate_limit_count_batch_calls() -> None:
    lock = threading.Lock()
    state = {"now": 0, "peak": 0, "calls": 0}

    @node(output_name="y", batch_size=5, max_concurrent=2, rate_limit="4/s")
    async def slow(x):
        with lock:
            state["now"] += 1
            state["calls"] += 1
            state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.02)
        with lock:
            state["now"] -= 1
        return [v * 10 for v in x]

    start = time.monotonic()
    with LocalEngine(map_executor="async", max_concurrent=100) as engine:
        results = Pipeline([slow], engine=engine).map(inputs={"x": range(20)}, map_over="x")
    elapsed = time.monotonic() - start
    assert [r["y"] for r in results] == [v * 10 for v in range(20)]
    assert state["calls"] == 4
    assert state["peak"] == 2
    assert elapsed < 2.0  # 4 starts at "4/s"; counted per item, 20 starts would take 4 s


def test_a_failed_batch_call_is_retried_whole() -> None:
    attempts: list[list[int]] = []
    retries: list[tuple[str | None, tuple[int, ...] | None, int | None]] = []

    class Retries(Callback):
        def on_node_retry(self, ctx):
            retries.append((ctx.node, ctx.items, ctx.attempt))

    @node(output_name="y", batch_size=3, retries=2, retry_on=ConnectionError, backoff=0)
    async def flaky(x):
        attempts.append(list(x))
        if len(attempts) == 1:
            raise ConnectionError("dropped")
        return [v + 1 for v in x]

    with LocalEngine(map_executor="async") as engine:
        results = Pipeline([flaky], engine=engine, callbacks=[Retries()]).map(
            inputs={"x": [1, 2, 3]}, map_over="x"
        )
    assert [r["y"] for r in results] == [2, 3, 4]
    assert attempts == [[1, 2, 3], [1, 2, 3]]
    assert retries == [("flaky", (0, 1, 2), 1)]


def test_only_cache_misses_go_into_batches() -> None:
    CALLS.clear()
    cache = MemoryCache()
    pipeline = Pipeline([upper, size], cache=cache)
    pipeline.map(inputs={"text": _texts(6), "log": None}, map_over="text")
    CALLS.clear()
    results = pipeline.map(inputs={"text": _texts(10), "log": None}, map_over="text")
    assert results == _expected(10)
    assert sorted(t for call in CALLS for t in call) == ["t6", "t7", "t8", "t9"]
    CALLS.clear()
    assert pipeline.run(inputs={"text": "t3", "log": None}) == {"up": "T3", "size": 2}
    assert CALLS == []  # a single run finds what the batch call stored


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any, Any]] = []

    def on_node_start(self, ctx):
        self.events.append(("start", ctx.node, ctx.item))

    def on_node_end(self, ctx):
        self.events.append(("end", ctx.node, ctx.item))

    def on_error(self, ctx):
        self.events.append(("error", ctx.node, ctx.item))

    def on_batch_start(self, ctx):
        self.events.append(("batch_start", ctx.node, ctx.items))

    def on_batch_end(self, ctx):
        assert ctx.duration is not None
        self.events.append(("batch_end", ctx.node, (ctx.items, type(ctx.error).__name__)))


def test_callbacks_get_item_events_and_a_batch_event() -> None:
    recorder = Recorder()
    Pipeline([upper], callbacks=[recorder]).map(
        inputs={"text": _texts(6), "log": None}, map_over="text"
    )
    events = recorder.events
    assert [e for e in events if e[0] == "batch_start"] == [
        ("batch_start", "upper", (0, 1, 2, 3)),
        ("batch_start", "upper", (4, 5)),
    ]
    assert [e for e in events if e[0] == "batch_end"] == [
        ("batch_end", "upper", ((0, 1, 2, 3), "NoneType")),
        ("batch_end", "upper", ((4, 5), "NoneType")),
    ]
    assert sorted(e[2] for e in events if e[0] == "start") == list(range(6))
    assert sorted(e[2] for e in events if e[0] == "end") == list(range(6))
    # an item's end comes after the batch call that served it
    first_end = events.index(("batch_end", "upper", ((0, 1, 2, 3), "NoneType")))
    assert all(events.index(("end", "upper", i)) > first_end for i in range(4))


def test_callbacks_of_items_in_worker_processes_are_replayed(tmp_path: Path) -> None:
    recorder = Recorder()
    with LocalEngine(map_executor="parallel", max_workers=2) as engine:
        Pipeline([upper], engine=engine, callbacks=[recorder]).map(
            inputs={"text": _texts(8), "log": str(tmp_path / "log")}, map_over="text"
        )
    batches = sorted(e[2] for e in recorder.events if e[0] == "batch_start")
    assert sorted(i for items in batches for i in items) == list(range(8))
    assert sorted(e[2] for e in recorder.events if e[0] == "end") == list(range(8))


@node(output_name="y", batch_size=3)
def picky(x):
    if 4 in x:
        raise ValueError("4 is not welcome")
    return [v * 2 for v in x]


def test_collect_fails_every_item_of_the_failed_batch_only() -> None:
    recorder = Recorder()
    results = Pipeline([picky], callbacks=[recorder]).map(
        inputs={"x": range(8)}, map_over="x", on_error="collect"
    )
    failed = [r for r in results if isinstance(r, ItemError)]
    assert [r.index for r in failed] == [3, 4, 5]
    assert [r["y"] for r in results if not isinstance(r, ItemError)] == [0, 2, 4, 12, 14]
    assert len({id(r.exception) for r in failed}) == 3  # each item its own copy, own notes
    for r in failed:
        assert isinstance(r.exception, ValueError)
        notes = r.exception.__notes__
        assert notes[0] == (
            "plait: raised in a batch call of node 'picky' (→ y) with 3 items: "
            "3 (x=3), 4 (x=4), 5 (x=5)"
        )
        assert notes[1:] == [f"plait: in map item {r.index} with inputs (x={r.index})"]
    assert sorted(e[2] for e in recorder.events if e[0] == "error") == [3, 4, 5]
    assert ("batch_end", "picky", ((3, 4, 5), "ValueError")) in recorder.events


def test_each_failed_item_keeps_its_own_notes_when_tblib_pickles_exceptions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tblib's pickling support (which dask's distributed installs for every exception
    class) makes ``copy.copy`` of an exception share its ``__dict__``, notes and all."""
    import copyreg

    from tblib import pickling_support

    monkeypatch.setitem(copyreg.dispatch_table, ValueError, pickling_support.pickle_exception)
    results = Pipeline([picky]).map(inputs={"x": range(8)}, map_over="x", on_error="collect")
    failed = [r for r in results if isinstance(r, ItemError)]
    assert [r.exception.__notes__[1:] for r in failed] == [
        [f"plait: in map item {i} with inputs (x={i})"] for i in (3, 4, 5)
    ]


def test_fail_fast_names_the_node_and_the_batch_items() -> None:
    with pytest.raises(ValueError, match="4 is not welcome") as info:
        Pipeline([picky]).map(inputs={"x": range(8)}, map_over="x")
    notes = info.value.__notes__
    assert notes[0].startswith("plait: raised in a batch call of node 'picky' (→ y) with 3 items:")
    assert notes[1].startswith("plait: in map item ")


def test_a_long_batch_note_counts_the_other_items() -> None:
    @node(output_name="y", batch_size=10)
    def broken(x):
        raise RuntimeError("down")

    with pytest.raises(RuntimeError) as info:
        Pipeline([broken]).map(inputs={"x": range(10)}, map_over="x")
    assert info.value.__notes__[0] == (
        "plait: raised in a batch call of node 'broken' (→ y) with 10 items: "
        "0 (x=0), 1 (x=1), 2 (x=2) and 7 more: 3-9"
    )


def test_a_wrong_number_of_results_in_a_map_names_node_and_lengths() -> None:
    @node(output_name="y", batch_size=4)
    def drops_one(x):
        return list(x)[:-1]

    with pytest.raises(BatchLengthError) as info:
        Pipeline([drops_one]).map(inputs={"x": range(6)}, map_over="x")
    assert str(info.value) == (
        "node 'drops_one': its batch function returned 3 results for a batch of 4 items; "
        "it must return one result per item, in order"
    )
    assert info.value.__notes__[0].startswith("plait: raised in a batch call of node 'drops_one'")


def test_a_pair_uses_its_batch_form_in_a_map_and_keeps_order() -> None:
    seen: list[list[int]] = []

    async def many(x):
        seen.append(list(x))
        await asyncio.sleep(0.01 * (5 - len(x)))
        return [v * v for v in x]

    @node(output_name="sq", batch=many, batch_size=5)
    def square(x):
        raise AssertionError("a map uses the batch form")

    with LocalEngine(map_executor="async", max_concurrent=50) as engine:
        results = Pipeline([square], engine=engine).map(inputs={"x": range(12)}, map_over="x")
    assert [r["sq"] for r in results] == [v * v for v in range(12)]
    assert [len(s) for s in seen] == [5, 5, 2]


def test_a_run_scoped_dep_is_shared_by_the_batch() -> None:
    made: list[int] = []

    def make_client():
        made.append(1)
        return "client"

    @node(output_name="y", batch_size=4)
    def call(x, client=Dep(make_client)):
        assert client == "client"
        return [f"{client}:{v}" for v in x]

    results = Pipeline([call]).map(inputs={"x": range(6)}, map_over="x")
    assert [r["y"] for r in results] == [f"client:{v}" for v in range(6)]
    assert made == [1]


def test_a_sync_batch_function_runs_on_the_map_threads() -> None:
    threads: list[str] = []

    @node(output_name="y", batch_size=4)
    def where(x):
        threads.append(threading.current_thread().name)
        return list(x)

    with LocalEngine(map_executor="threaded", max_workers=2) as engine:
        Pipeline([where], engine=engine).map(inputs={"x": range(8)}, map_over="x")
    assert len(threads) == 2
    assert all(name.startswith("plait-map") for name in threads)


def test_a_nested_map_batches_its_items() -> None:
    CALLS.clear()
    inner = Pipeline([upper], name="inner")
    outer = Pipeline([inner.as_node(map_over="text", output_mapping={"up": "ups"})])
    assert outer.run(inputs={"text": _texts(6), "log": None}) == {
        "ups": [t.upper() for t in _texts(6)]
    }
    assert [len(call) for call in CALLS] == [4, 2]


def test_leaving_imap_early_cancels_waiting_items_cleanly() -> None:
    started: list[int] = []

    @node(output_name="ready")
    async def arrive(x):
        if x >= 2:
            await asyncio.sleep(10)  # never arrives before the consumer leaves
        return x

    @node(output_name="y", batch_size=2)
    def pair(ready):
        started.append(len(ready))
        return ready

    with LocalEngine(map_executor="async") as engine:
        stream = Pipeline([arrive, pair], engine=engine).imap(inputs={"x": range(6)}, map_over="x")
        first = next(iter(stream))
        stream.close()
    assert first[1]["y"] in (0, 1)
    assert started == [2]


@pytest.mark.parametrize("node_executor", ["threaded", "async", "parallel"])
def test_a_sync_batch_function_runs_where_the_node_executor_puts_sync_nodes(
    node_executor: str, tmp_path: Path
) -> None:
    log = tmp_path / "calls.txt"
    with LocalEngine(node_executor, "async", max_workers=2) as engine:
        results = Pipeline([upper, size], engine=engine).map(
            inputs={"text": _texts(10), "log": str(log)}, map_over="text"
        )
    assert results == _expected(10)
    assert sorted(int(line) for line in log.read_text().split()) == [2, 4, 4]


def test_a_batch_call_that_times_out_fails_its_items() -> None:
    @node(output_name="y", batch_size=3, timeout=0.05)
    async def stuck(x):
        await asyncio.sleep(10)
        return x

    results = Pipeline([stuck]).map(inputs={"x": range(3)}, map_over="x", on_error="collect")
    assert all(isinstance(r, ItemError) for r in results)
    for r in results:
        assert isinstance(r.exception, TimeoutError)
        assert str(r.exception) == "node 'stuck' timed out after 0.05 s (it was cancelled)"
        assert r.exception.__notes__[0].startswith("plait: raised in a batch call of node 'stuck'")


@pytest.fixture(params=["dask", pytest.param("ray", marks=pytest.mark.ray)])
def cluster(request: pytest.FixtureRequest) -> Any:
    """A Dask client, or (``make test-ray``) a RayExecutor, shared by the session."""
    return request.getfixturevalue("ray_executor" if request.param == "ray" else "dask_client")


def test_items_on_a_cluster_share_batch_calls(cluster: Any, tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    with LocalEngine(map_executor=cluster) as engine:
        results = Pipeline([upper, size], engine=engine).map(
            inputs={"text": _texts(40), "log": str(log)}, map_over="text"
        )
    assert results == _expected(40)
    sizes = [int(line) for line in log.read_text().split()]
    assert sum(sizes) == 40
    assert max(sizes) == 4
    assert len(sizes) < 40  # the items of a chunk share calls


_KINDS = ("sequential", "async", "threaded")


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, LocalEngine]]:
    made = {kind: LocalEngine(map_executor=kind, max_workers=2) for kind in _KINDS}
    yield made
    for engine in made.values():
        engine.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 30),
    first=st.integers(1, 6),
    second=st.integers(1, 6),
    waits=st.lists(st.sampled_from([0, 0.001, 0.003]), min_size=30, max_size=30),
    kind=st.sampled_from(_KINDS),
    max_wait=st.sampled_from([None, 0.0, 0.002]),
)
def test_chained_batch_nodes_equal_single_calls(
    engines, n, first, second, waits, kind, max_wait
) -> None:
    """Random item counts, batch sizes, arrival times and executors: every item's outputs
    are those of single calls, in order, and every batch call holds at most its size."""
    calls: dict[str, list[int]] = {"double": [], "shift": []}

    @node(output_name="ready")
    async def arrive(x):
        await asyncio.sleep(waits[x])
        return x

    @node(output_name="d", batch_size=first, max_wait=max_wait)
    async def double(ready):
        calls["double"].append(len(ready))
        return [v * 2 for v in ready]

    @node(output_name=("s", "t"), batch_size=second)
    def shift(d, ready):
        calls["shift"].append(len(d))
        return [v + 1 for v in d], [r - 1 for r in ready]

    pipeline = Pipeline([arrive, double, shift], engine=engines[kind])
    results = pipeline.map(inputs={"x": range(n)}, map_over="x")
    assert results == [{"ready": x, "d": 2 * x, "s": 2 * x + 1, "t": x - 1} for x in range(n)]
    for name, size_ in (("double", first), ("shift", second)):
        assert sum(calls[name]) == n
        assert all(1 <= c <= size_ for c in calls[name])


def test_logging_callback_logs_batch_calls_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    from plait.callbacks import LoggingCallback

    caplog.set_level(logging.DEBUG, "test.batches")
    Pipeline([picky], name="p", callbacks=[LoggingCallback("test.batches")]).map(
        inputs={"x": range(8)}, map_over="x", on_error="collect"
    )
    batches = [
        (r.levelno, r.getMessage().split(" in ")[0])
        for r in caplog.records
        if "batch call" in r.getMessage()
    ]
    assert batches == [
        (logging.DEBUG, "plait p:picky: batch call of 3 items done"),
        (logging.DEBUG, "plait p:picky: batch call of 3 items failed"),
        (logging.DEBUG, "plait p:picky: batch call of 2 items done"),
    ]
    assert all(
        r.getMessage().endswith(("(items 0-2)", "(items 3-5)", "(items 6-7)"))
        for r in caplog.records
        if "batch call" in r.getMessage()
    )


def test_in_a_steady_stream_batches_stay_full() -> None:
    """Items finish one by one downstream (different latencies), so room for new items
    opens one at a time: a partial batch waits for them instead of going alone."""
    sizes: list[int] = []

    @node(output_name="y", batch_size=4)
    def first(x):
        sizes.append(len(x))
        return list(x)

    @node(output_name="z")
    async def later(y):
        await asyncio.sleep(0.002 * (y % 7))
        return y

    with LocalEngine(map_executor="async", max_concurrent=8) as engine:
        results = Pipeline([first, later], engine=engine).map(inputs={"x": range(40)}, map_over="x")
    assert [r["z"] for r in results] == list(range(40))
    assert sum(sizes) == 40
    assert sizes.count(4) >= 8  # at most a couple of partial batches, at the end
