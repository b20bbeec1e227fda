"""The cluster machinery without a cluster: a ClusterExecutor over a process pool.

What Ray and Dask share (futures that cancel their tasks, shutdown, the launcher's
chunk sizes and window, dead workers) is tested here on a stand-in backend; the
real backends run the parity suite (test_distributed.py).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import cloudpickle  # type: ignore[import-untyped]
import pytest

from plait import LocalEngine, Pipeline, WorkerDiedError, node
from plait.engine.local import clusters
from plait.engine.local.clusters import ClusterExecutor, ClusterLauncher
from plait.engine.local.items import ItemRunner
from plait.engine.local.plan import Route, plan_for
from plait.engine.local.processes import pickle_items


class PoolCluster(ClusterExecutor):
    """A "cluster" of two local worker processes."""

    backend = "Pool"

    def __init__(self) -> None:
        super().__init__()
        self.pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
        self.shipped: list[bytes] = []

    def _start(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        args = tuple(self.shipped[0] if a == "shipped" else a for a in args)
        return self.pool.submit(fn, *args, **kwargs)

    def _when_done(self, task: Any, settle: Callable[[Callable[[], Any]], None]) -> None:
        task.add_done_callback(lambda done: settle(done.result))

    def _cancel(self, task: Any) -> None:
        task.cancel()

    def _stop(self) -> None:
        self.pool.shutdown()

    def _count_cpus(self) -> int:
        return 2

    def _put(self, blob: bytes) -> Any:
        self.shipped.append(blob)
        return "shipped"

    def dead_worker(self, error: BaseException) -> bool:
        return isinstance(error, BrokenProcessPool)


@pytest.fixture
def cluster() -> Any:
    executor = PoolCluster()
    yield executor
    executor.shutdown()


def triple(x: int) -> int:
    return 3 * x


def test_submit_gives_the_call_s_result_or_its_own_exception(cluster: PoolCluster) -> None:
    assert cluster.submit(triple, 2).result() == 6
    with pytest.raises(ZeroDivisionError):
        cluster.submit(divmod, 1, 0).result()


def test_cancel_reaches_the_task_and_shutdown_refuses_new_work(cluster: PoolCluster) -> None:
    cancelled: list[Any] = []
    cluster._cancel = cancelled.append  # type: ignore[method-assign]
    future: Future[Any] = cluster.submit(slow, 1)
    assert future.cancel()  # never marked running: a cluster's task is cancelled either way
    with pytest.raises(CancelledError):
        future.result()
    assert len(cancelled) == 1
    cluster.shutdown(cancel_futures=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        cluster.submit(triple, 1)


def padded(x: int, pad: bytes) -> int:
    return x + len(pad)


def test_a_map_puts_a_large_pipeline_on_the_cluster_once_and_sends_a_small_one_in_each_task(
    cluster: PoolCluster,
) -> None:
    pipeline = Pipeline([node(padded, output_name="y")], engine=LocalEngine(map_executor=cluster))
    assert pipeline.map({"x": range(100), "pad": b""}, map_over="x") == [
        {"y": x} for x in range(100)
    ]
    assert cluster.shipped == []  # small: it travels in each task
    pad = b"p" * clusters.SHIP_INLINE  # a broadcast input makes the runner large
    out = pipeline.map({"x": range(100), "pad": pad}, map_over="x")
    assert out == [{"y": x + len(pad)} for x in range(100)]
    assert len(cluster.shipped) == 1  # put once for the map's tasks
    pipeline.map({"x": range(100), "pad": pad}, map_over="x")
    assert len(cluster.shipped) == 2  # and once per map


def test_chunks_start_at_a_quarter_share_or_grow_from_the_first_chunk(
    cluster: PoolCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    submit = ClusterLauncher.submit

    def record(self: ClusterLauncher, first: int, items: bytes) -> Any:
        sizes.append(self.chunk_size)
        return submit(self, first, items)

    monkeypatch.setattr(ClusterLauncher, "submit", record)
    pipeline = Pipeline([node(triple, output_name="y")], engine=LocalEngine(map_executor=cluster))
    out = pipeline.map({"x": range(2000)}, map_over="x")
    assert out == [{"y": 3 * x} for x in range(2000)]
    # A quarter of each worker's share of 2,000 items, from the start.
    assert set(sizes) == {250}
    sizes.clear()
    streamed = pipeline.imap({"x": iter(range(2000))}, map_over="x", ordered=True)
    assert [out["y"] for _, out in streamed] == [3 * x for x in range(2000)]
    # A stream's length is unknown: a slow start from FIRST_CHUNK, then the largest
    # chunk the round trip asks for (trivial items: MAX_CHUNK, bounded by the window).
    assert sizes[:3] == [clusters.FIRST_CHUNK, 2 * clusters.FIRST_CHUNK, 4 * clusters.FIRST_CHUNK]
    assert pipeline.map({"x": []}, map_over="x") == []


def slow(x: int) -> int:
    import time

    time.sleep(0.05)
    return x


def test_a_small_map_goes_at_once_and_a_large_one_two_chunks_per_worker(
    cluster: PoolCluster,
) -> None:
    runner: Any = type("Runner", (), {"names": ("x",), "replayer": lambda self: None})()
    runner.for_worker = lambda: Pipeline([node(slow, output_name="y")])
    small = ClusterLauncher(runner, cluster, stop_on_error=True, size_hint=10_000)
    assert (small.largest, small.window) == (1250, 10_000)  # 4 chunks per worker, all sent
    size = 2 * 4 * clusters.MAX_CHUNK + 1
    large = ClusterLauncher(runner, cluster, stop_on_error=True, size_hint=size)
    assert (large.largest, large.window) == (clusters.MAX_CHUNK, 2 * 2 * clusters.MAX_CHUNK)


def test_chunks_shrink_to_the_round_trip_when_items_are_slow(cluster: PoolCluster) -> None:
    pipeline = Pipeline([node(slow, output_name="y")])
    runner: Any = type("Runner", (), {"names": ("x",), "replayer": lambda self: None})()
    runner.for_worker = lambda: pipeline
    launcher = ClusterLauncher(runner, cluster, stop_on_error=True, size_hint=None)
    assert (launcher.largest, launcher.window) == (clusters.MAX_CHUNK, 4 * clusters.MAX_CHUNK)
    launcher.reply((([], [], []), 16 * 0.05), (0, [(i,) for i in range(16)]))
    # 20 round trips of 3 ms of work: 60 ms, about one 50 ms item.
    assert launcher.chunk_size == 2


def exit_on_five(x: int) -> int:
    if x == 5:
        os._exit(5)
    return x


def test_a_dead_worker_names_the_items_in_flight(cluster: PoolCluster) -> None:
    pipeline = Pipeline([node(exit_on_five, output_name="y")])
    with pytest.raises(WorkerDiedError, match=r"^a Pool worker died \(BrokenProcessPool\) while"):
        pipeline.with_engine(LocalEngine(map_executor=cluster)).map({"x": range(8)}, map_over="x")


def test_plait_imports_ray_only_when_a_ray_executor_starts() -> None:
    import subprocess
    import sys

    code = (
        "import sys, plait\n"
        "executor = plait.RayExecutor(init_kwargs={'num_cpus': 1})\n"
        "print('ray' in sys.modules, repr(executor))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False RayExecutor(init_kwargs={'num_cpus': 1})"


def test_a_worker_reuses_a_runner_sent_in_each_task_for_maps_of_the_same_pipeline() -> None:
    pipeline = Pipeline([node(triple, output_name="y")])
    plan = plan_for(pipeline.graph, None, {"x"})
    blob = cloudpickle.dumps(ItemRunner(Route.in_worker(plan), {}, ("x",), None).for_worker())
    sent = pickle_items([(1,), (2,)])
    clusters._RUNNERS.clear()
    for _ in range(2):  # two maps, the runner sent in each task: known by its bytes
        reply, _ = clusters.run_shipped_chunk((None, 0, sent, True, bytes(blob)))
        assert pickle.loads(reply.blob)[0] == [{"y": 3}, {"y": 6}]
    assert list(clusters._RUNNERS) == [blob]
    clusters.run_shipped_chunk(("map-token", 0, sent, True, None), blob)  # put on the cluster
    assert list(clusters._RUNNERS) == [blob, "map-token"]
    clusters._RUNNERS.clear()


def fails_first(x: int) -> int:
    if x == 0:
        raise ValueError("item 0")
    time.sleep(0.1)  # the others are still in flight when item 0 fails
    return x


def test_a_backend_may_have_a_failed_map_wait_for_its_chunks_instead_of_cancelling_them(
    cluster: PoolCluster,
) -> None:
    """Ray's cancellation races with its replies: its chunks are waited for, not
    cancelled, when a map fails (a backend says which tasks are not cancellable)."""
    cancelled: list[Any] = []
    cluster._cancel = cancelled.append  # type: ignore[method-assign]
    pipeline = Pipeline([node(fails_first, output_name="y")])
    engine = LocalEngine(map_executor=cluster)
    with pytest.raises(ValueError, match="item 0"):
        pipeline.with_engine(engine).map({"x": range(8)}, map_over="x")  # 8 chunks of 1
    assert cancelled  # the chunks still queued were cancelled

    cancelled.clear()
    cluster._cancellable = lambda fn: fn is not clusters.run_shipped_chunk  # type: ignore[method-assign]
    started = time.monotonic()
    with pytest.raises(ValueError, match="item 0"):
        pipeline.with_engine(engine).map({"x": range(8)}, map_over="x")
    assert cancelled == []
    # Every chunk ran and was waited for: 7 chunks of 0.1 s on 2 workers.
    assert time.monotonic() - started >= 0.3
    assert cluster.submit(time.sleep, 0.5).cancel()  # other calls still cancel
