"""map_executor='parallel' and process-pool instances: real worker processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from plait import ItemError, LocalEngine, Pipeline, WorkerDiedError, node
from plait.engine.local.processes import pickle_items, unpickle_items
from plait.engine.request import OneInputItems


@pytest.fixture(scope="module")
def engine() -> Iterator[LocalEngine]:
    with LocalEngine(map_executor="parallel", max_workers=2) as shared:
        yield shared


def test_closures_and_lambdas_run_in_worker_processes(engine: LocalEngine) -> None:
    offset = 7
    scale = node(lambda x: x * 2 + offset, output_name="y", name="scale")

    @node(output_name="where")
    async def where(y):
        return os.getpid(), y

    result = Pipeline([scale, where], engine=engine).map(inputs={"x": range(40)}, map_over="x")
    assert [r["y"] for r in result] == [x * 2 + 7 for x in range(40)]
    pids = {r["where"][0] for r in result}
    assert os.getpid() not in pids


def test_results_come_back_in_input_order_with_uneven_work(engine: LocalEngine) -> None:
    def uneven(x):
        time.sleep(0.02 if x % 7 == 0 else 0)
        return x

    pipe = Pipeline([node(uneven, output_name="y")], engine=engine)
    assert [r["y"] for r in pipe.map(inputs={"x": range(60)}, map_over="x")] == list(range(60))
    streamed = dict(pipe.imap(inputs={"x": range(30)}, map_over="x"))
    assert sorted(streamed) == list(range(30))
    ordered = [i for i, _ in pipe.imap(inputs={"x": range(30)}, map_over="x", ordered=True)]
    assert ordered == list(range(30))


def test_collected_errors_carry_notes_and_the_workers_traceback(engine: LocalEngine) -> None:
    def reciprocal(x):
        return 1 / (x - 3)

    pipe = Pipeline([node(reciprocal, output_name="r")], engine=engine)
    out = pipe.map(inputs={"x": range(6)}, map_over="x", on_error="collect")
    error = out[3]
    assert isinstance(error, ItemError)
    assert (error.index, error.inputs) == (3, {"x": 3})
    assert isinstance(error.exception, ZeroDivisionError)
    assert "in reciprocal" in error.traceback
    assert error.exception.__notes__ == [
        "plait: raised in node 'reciprocal' (→ r) called with (x=3)",
        "plait: in map item 3 with inputs (x=3)",
    ]
    assert [o["r"] for i, o in enumerate(out) if i != 3] == [1 / (x - 3) for x in (0, 1, 2, 4, 5)]


class Unpicklable(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")

    def __reduce__(self) -> Any:
        raise TypeError("no pickling")


def raise_unpicklable(x):
    raise Unpicklable(x, "custom")


def test_unpicklable_errors_come_back_as_a_runtime_error(engine: LocalEngine) -> None:
    pipe = Pipeline([node(raise_unpicklable, output_name="y")], engine=engine)
    with pytest.raises(RuntimeError, match="Unpicklable: 5: custom") as info:
        pipe.map(inputs={"x": [5]}, map_over="x")
    assert "plait: the original Unpicklable could not be pickled" in info.value.__notes__


def test_failure_terminates_the_owned_pool_so_nothing_keeps_running(tmp_path: Path) -> None:
    # Item 0 fails once item 1 is running; item 1 would run for 10 s. The owned pool is
    # terminated before the map raises: its workers are gone, so nothing is written late.
    # (Checked on the workers themselves, not by waiting to see whether a file appears.)
    def slow_or_failing(x, folder):
        # Written whole or not at all: a worker may be terminated in the middle.
        Path(folder, f"tmp.{x}").write_text(str(os.getpid()))
        Path(folder, f"tmp.{x}").rename(Path(folder, f"pid.{x}"))
        if x == 0:
            deadline = time.monotonic() + 5
            while not Path(folder, "pid.1").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            raise ValueError("item 0 failed")
        time.sleep(10.0)
        Path(folder, f"late.{x}").write_text("written after the failure")
        return x

    with LocalEngine(map_executor="parallel", max_workers=2) as engine:
        pipe = Pipeline([node(slow_or_failing, output_name="y")], engine=engine)
        start = time.perf_counter()
        with pytest.raises(ValueError, match="item 0 failed") as info:
            pipe.map(inputs={"x": range(4), "folder": str(tmp_path)}, map_over="x")
        # Well below the 10 s item 1 would take (a pool start included): not waited for.
        assert time.perf_counter() - start < 8
        assert "plait: in map item 0 with inputs (x=0)" in info.value.__notes__
        pids = {int(p.read_text()) for p in tmp_path.glob("pid.*")}
        assert len(pids) == 2  # item 1 ran beside item 0
        for pid in pids:  # terminated and reaped before the map raised
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert not list(tmp_path.glob("late.*"))
        # The engine starts a fresh pool for the next map.
        assert pipe.map(inputs={"x": [], "folder": ""}, map_over="x") == []


def kill_on_five(x):
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.01)
    return x


def test_a_killed_worker_is_a_clear_error_not_a_hang() -> None:
    with LocalEngine(map_executor="parallel", max_workers=2) as engine:
        pipe = Pipeline([node(kill_on_five, output_name="y")], engine=engine)
        start = time.perf_counter()
        with pytest.raises(WorkerDiedError) as info:
            pipe.map(inputs={"x": range(40)}, map_over="x")
        assert time.perf_counter() - start < 10
        message = str(info.value)
        assert message.startswith("a worker process died (")
        in_flight = message.split("while map items ")[1].split(" were in flight")[0]
        spans = [span.partition("-") for span in in_flight.split(", ")]
        named = [(int(a), int(b or a)) for a, _, b in spans]
        assert any(first <= 5 <= last for first, last in named)  # the killed item is named
        assert message.startswith("a worker process died (killed by SIGKILL) ")
        assert "killed or crashed" in message
        # The broken pool is replaced: the next map works.
        survivors = Pipeline([node(lambda x: x + 1, output_name="y")], engine=engine)
        assert [r["y"] for r in survivors.map(inputs={"x": range(5)}, map_over="x")] == [
            1,
            2,
            3,
            4,
            5,
        ]


def double(x):
    return 2 * x


def test_process_pool_instance_is_used_and_left_open() -> None:
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pipe = Pipeline([node(double, output_name="y")], engine=LocalEngine(map_executor=pool))
        assert [r["y"] for r in pipe.map(inputs={"x": range(10)}, map_over="x")] == [
            2 * x for x in range(10)
        ]
        with pytest.raises(TypeError):
            pipe.map(inputs={"x": ["a", None]}, map_over="x")
        assert pool.submit(double, 21).result() == 42  # still open after a failure


def test_the_shipped_pipeline_file_is_removed(
    engine: LocalEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A temporary directory of this test's own: other suites running beside this one
    # (CI runs two Pythons at once) ship their maps' files to the shared one.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    shipped: list[str] = []
    real = tempfile.mkstemp

    def recording_mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, path = real(*args, **kwargs)
        shipped.append(path)
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", recording_mkstemp)
    Pipeline([node(double, output_name="y")], engine=engine).map(inputs={"x": [1]}, map_over="x")
    assert [Path(path).name.startswith("plait-map-") for path in shipped] == [True]
    assert not list(tmp_path.glob("plait-map-*"))


def test_node_limits_apply_within_each_worker(engine: LocalEngine) -> None:
    @node(output_name="y", retries=2, backoff=0)
    def flaky_once_per_value(x):
        marker = Path(tempfile.gettempdir()) / f"plait-test-flaky-{os.getppid()}-{x}"
        if not marker.exists():
            marker.write_text("failed once")
            raise ConnectionError("first attempt fails")
        marker.unlink()
        return x

    pipe = Pipeline([flaky_once_per_value], engine=engine)
    assert [r["y"] for r in pipe.map(inputs={"x": range(6)}, map_over="x")] == list(range(6))


def test_a_loky_executor_runs_items_with_closures() -> None:
    loky = pytest.importorskip("loky")
    offset = 5
    executor = loky.get_reusable_executor(max_workers=2)
    pipe = Pipeline(
        [node(lambda x: (x + offset, os.getpid()), output_name="y", name="shift")],
        engine=LocalEngine(map_executor=executor),
    )
    result = pipe.map(inputs={"x": range(8)}, map_over="x")
    assert [r["y"][0] for r in result] == [x + 5 for x in range(8)]
    assert os.getpid() not in {r["y"][1] for r in result}
    inverse = Pipeline(
        [node(lambda x: 1 / x, output_name="y", name="inv")],
        engine=LocalEngine(map_executor=executor),
    )
    with pytest.raises(ZeroDivisionError) as info:
        inverse.map(inputs={"x": [1, 0]}, map_over="x")
    assert "plait: in map item 1 with inputs (x=0)" in info.value.__notes__


def test_node_executor_parallel_runs_independent_sync_nodes_in_processes() -> None:
    base = 10
    nodes = [
        node(lambda i=i: (base + i, os.getpid()), output_name=f"o{i}", name=f"n{i}")
        for i in range(4)
    ]
    with LocalEngine(node_executor="parallel", max_workers=2) as engine:
        result = Pipeline(nodes, engine=engine).run()
    assert [result[f"o{i}"][0] for i in range(4)] == [10, 11, 12, 13]
    assert os.getpid() not in {v[1] for v in result.values()}


def test_per_node_parallel_executor() -> None:
    @node(output_name="where", executor="parallel")
    def elsewhere():
        return os.getpid()

    @node(output_name="here")
    def here():
        return os.getpid()

    with LocalEngine() as engine:
        result = Pipeline([elsewhere, here], engine=engine).run()
    assert result["here"] == os.getpid() != result["where"]


def test_a_dask_distributed_executor_runs_items_on_its_workers(dask_client: Any) -> None:
    factor = 3
    engine = LocalEngine(map_executor=dask_client.get_executor())
    pipe = Pipeline([node(lambda x: (x * factor, os.getpid()), output_name="y", name="mul")])
    result = pipe.with_engine(engine).map(inputs={"x": range(10)}, map_over="x")
    assert [r["y"][0] for r in result] == [3 * x for x in range(10)]
    assert os.getpid() not in {r["y"][1] for r in result}
    inverse = Pipeline([node(lambda x: 1 / x, output_name="y", name="inv")], engine=engine)
    with pytest.raises(ZeroDivisionError) as info:
        inverse.map(inputs={"x": [1, 0]}, map_over="x")
    assert "plait: in map item 1 with inputs (x=0)" in info.value.__notes__


def test_a_loky_executor_failing_to_return_an_item_fails_that_item() -> None:
    # Not the item's error: the item ran, then loky could not pickle its reply. The
    # launcher's branch for the executor's own failure must put it on the right item.
    loky = pytest.importorskip("loky")
    executor = loky.get_reusable_executor(max_workers=2)
    pipe = Pipeline(
        [node(lock_for_two, output_name="y", name="lock")],
        engine=LocalEngine(map_executor=executor),
    )
    result = pipe.map(inputs={"x": range(5)}, map_over="x", on_error="collect")
    assert [r if isinstance(r, ItemError) else r["y"] for r in result[:2] + result[3:]] == [
        0,
        1,
        3,
        4,
    ]
    failed = result[2]
    assert isinstance(failed, ItemError)
    assert (failed.index, failed.inputs) == (2, {"x": 2})
    assert "pickle" in str(failed.exception)
    with pytest.raises(TypeError, match="pickle") as info:
        pipe.map(inputs={"x": range(5)}, map_over="x")
    notes = [n for n in info.value.__notes__ if "map item" in n]
    assert notes == ["plait: in map item 2 with inputs (x=2)"]


def exit_on_two(x):
    if x == 2:
        os._exit(3)
    return x


def test_a_dask_worker_dying_fails_the_item_it_was_running() -> None:
    # The scheduler gives up on item 2's task (KilledWorker): dask's failure, not the
    # item's. One task at a time on the one worker, so item 2 alone was on it.
    dask = pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    settings = {
        "distributed.scheduler.allowed-failures": 0,
        "distributed.scheduler.worker-saturation": 1.0,
    }
    with (
        dask.config.set(settings),
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # its HTTP server: any free port
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        engine = LocalEngine(map_executor=client.get_executor())
        pipe = Pipeline([node(exit_on_two, output_name="y", name="exit")], engine=engine)
        result = pipe.map(inputs={"x": range(5)}, map_over="x", on_error="collect")
        assert [r["y"] for r in result[:2] + result[3:]] == [0, 1, 3, 4]
        failed = result[2]
        assert isinstance(failed, ItemError)
        assert (failed.index, failed.inputs) == (2, {"x": 2})
        assert isinstance(failed.exception, distributed.KilledWorker)
        # Another node name, so dask does not hand back the task it already ran.
        raising = Pipeline([node(exit_on_two, output_name="y", name="exit2")], engine=engine)
        with pytest.raises(distributed.KilledWorker) as info:
            raising.map(inputs={"x": range(5)}, map_over="x")
        notes = [n for n in info.value.__notes__ if "map item" in n]
        assert notes == ["plait: in map item 2 with inputs (x=2)"]


def exit_on_three(x):
    if x == 3:
        os._exit(3)
    return x


def test_a_worker_that_exits_is_reported_with_its_exit_status() -> None:
    with LocalEngine(map_executor="parallel", max_workers=2) as engine:
        pipe = Pipeline([node(exit_on_three, output_name="y")], engine=engine)
        with pytest.raises(WorkerDiedError, match=r"^a worker process died \(exit status 3\) "):
            pipe.map(inputs={"x": range(8)}, map_over="x")


def lock_for_two(x):
    return threading.Lock() if x == 2 else x


def a_generator(x):
    return (i for i in range(x))


def test_unpicklable_outputs_and_inputs_of_map_items_are_named(engine: LocalEngine) -> None:
    pipe = Pipeline([node(lock_for_two, output_name="y")], engine=engine)
    with pytest.raises(TypeError, match="cannot pickle") as info:
        pipe.map(inputs={"x": range(5)}, map_over="x")
    assert info.value.__notes__ == [
        "plait: output 'y' (a lock) of node 'lock_for_two' cannot be pickled to send it back "
        "from a worker process",
        "plait: in map item 2 with inputs (x=2)",
    ]
    out = pipe.map(inputs={"x": range(5)}, map_over="x", on_error="collect")
    assert isinstance(out[2], ItemError)
    assert [o["y"] for i, o in enumerate(out) if i != 2] == [0, 1, 3, 4]

    gen = Pipeline([node(a_generator, output_name="g")], engine=engine)
    with pytest.raises(TypeError, match="cannot pickle 'generator'") as info:
        gen.map(inputs={"x": [3]}, map_over="x")
    assert "a generator cannot be pickled: return a list" in info.value.__notes__[0]

    lock = threading.Lock()
    doubled = Pipeline([node(double, output_name="y")], engine=engine)
    out = doubled.map(inputs={"x": [1, lock, 3]}, map_over="x", on_error="collect")
    assert [out[0], out[2]] == [{"y": 2}, {"y": 6}]
    error = out[1]
    assert isinstance(error, ItemError)
    assert isinstance(error.exception, TypeError)
    assert error.exception.__notes__[0] == (
        "plait: input 'x' (a lock) of map item 1 cannot be pickled to send it to a worker process"
    )


@node(output_name="y", executor="parallel")
def lock_in_process(x):
    return threading.Lock()


@node(output_name="y", executor="parallel")
def generator_in_process(x):
    return (i for i in range(x))


@node(output_name="y", executor="parallel")
def double_in_process(x):
    return 2 * x


def test_unpicklable_outputs_and_inputs_of_parallel_nodes_are_named() -> None:
    with LocalEngine() as engine:
        with pytest.raises(TypeError, match="cannot pickle") as info:
            Pipeline([lock_in_process], engine=engine).run({"x": 1})
        assert info.value.__notes__[0] == (
            "plait: output 'y' (a lock) of node 'lock_in_process' cannot be pickled to send it "
            "back from a worker process"
        )
        with pytest.raises(TypeError, match="cannot pickle 'generator'") as info:
            Pipeline([generator_in_process], engine=engine).run({"x": 2})
        assert info.value.__notes__[0].endswith("; a generator cannot be pickled: return a list")
        with pytest.raises(TypeError, match="cannot pickle") as info:
            Pipeline([double_in_process], engine=engine).run({"x": threading.Lock()})
        assert info.value.__notes__[0] == (
            "plait: input 'x' (a lock) of node 'double_in_process' cannot be pickled to send it "
            "to a worker process"
        )
        assert Pipeline([double_in_process], engine=engine).run({"x": 4}) == {"y": 8}


def test_chunk_items_travel_as_columns_and_come_back_as_items() -> None:
    items = [(1, ("a", None)), (2, ("b", [3]))]  # two mapped inputs, values of any shape
    assert unpickle_items(pickle_items(items)) == items
    one_input = unpickle_items(pickle_items([(None,)] * 3))
    assert isinstance(one_input, OneInputItems)  # a map over one input: its values
    assert list(one_input) == [(None,)] * 3
    assert unpickle_items(pickle_items(OneInputItems([1, "a"]))).values == [1, "a"]


def test_a_map_of_two_mapped_inputs_in_processes(engine: LocalEngine) -> None:
    pipeline = Pipeline([node(lambda x, y: (x, y), output_name="pair")], engine=engine)
    inputs = {"x": [1, 2, 3], "y": [("a",), None, {"k": 1}]}
    results = pipeline.map(inputs, map_over=("x", "y"))
    assert [out["pair"] for out in results] == list(zip(inputs["x"], inputs["y"], strict=True))
