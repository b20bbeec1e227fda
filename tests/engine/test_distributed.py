"""One parity suite: the same pipelines on LocalEngine, on RayExecutor, on a Dask
cluster of worker processes and on DaftEngine (native, and on Ray), with identical
outputs, exceptions, notes, ItemErrors, callback events and cache behaviour.

Each cluster starts once per test session (``tests/engine/conftest.py``). Ray tests
are marked ``ray`` and Daft-on-Ray tests ``daft_ray`` (Daft's runner is set once per
process: they run in a pytest process of their own); both run only inside a private
network namespace (``make test-ray``). Dask's LocalCluster binds loopback and Daft's
native runner starts no server: they run in the default suite.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plait import (
    DaftEngine,
    Dep,
    DiskCache,
    ItemError,
    LocalEngine,
    Node,
    Pipeline,
    WorkerDiedError,
    node,
)
from plait.callbacks.base import EVENTS
from plait.engine.local.clusters import ClusterExecutor

pytestmark = pytest.mark.timeout(120)

EXECUTORS = ["dask", pytest.param("ray", marks=pytest.mark.ray)]
BACKENDS = [*EXECUTORS, "daft", pytest.param("daft-ray", marks=pytest.mark.daft_ray)]


@pytest.fixture(params=EXECUTORS)
def cluster(request: pytest.FixtureRequest) -> Any:
    """The executor (or Dask client) of the executor backend under test."""
    name = "ray_executor" if request.param == "ray" else "dask_client"
    return request.getfixturevalue(name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Any:
    """The executor, Dask client or DaftEngine of the backend under test."""
    names = {"ray": "ray_executor", "dask": "dask_client", "daft-ray": "daft_ray_engine"}
    return request.getfixturevalue(names.get(request.param, "daft_engine"))


def on(backend: Any, pipeline: Pipeline) -> Pipeline:
    if isinstance(backend, DaftEngine):
        return pipeline.with_engine(backend)
    return pipeline.with_engine(LocalEngine(map_executor=backend))


def local(pipeline: Pipeline) -> Pipeline:
    return pipeline.with_engine(LocalEngine())


@dataclasses.dataclass
class Point:
    x: int
    y: int


def nodes() -> list[Node]:
    """Sync, async and tuple-output nodes (defined here: they travel by value)."""

    @node(output_name="doubled")
    def double(x: int, k: int) -> int:
        return k * x

    @node(output_name=("half", "rest"))
    def split(doubled: int) -> tuple[int, int]:
        return divmod(doubled, 2)

    @node(output_name="total")
    async def add(half: int, rest: int, y: int = 0) -> int:
        await asyncio.sleep(0)
        return half + rest + y

    return [double, split, add]


def failing() -> Pipeline:
    @node(output_name="y")
    def check(x: int) -> int:
        if x % 40 == 13:
            raise ValueError(f"bad item {x}")
        return x

    @node(output_name="z")
    async def after(y: int) -> int:
        return y + 1

    return Pipeline([check, after])


def same_errors(got: ItemError | BaseException, want: ItemError | BaseException) -> None:
    if isinstance(want, ItemError):
        assert isinstance(got, ItemError)
        assert (got.index, got.inputs) == (want.index, want.inputs)
        same_errors(got.exception, want.exception)
        assert "in check" in got.traceback
        assert "ValueError: bad item" in got.traceback
        return
    assert type(got) is type(want)
    assert str(got) == str(want)
    assert got.__notes__ == want.__notes__


def test_outputs_bound_inputs_and_output_name(backend: Any) -> None:
    pipeline = Pipeline(nodes()).bind(k=3)
    inputs = {"x": range(20), "y": 5}
    want = local(pipeline).map(inputs, map_over="x")
    assert on(backend, pipeline).map(inputs, map_over="x") == want
    assert want[1] == {"doubled": 3, "half": 1, "rest": 1, "total": 7}
    chosen = on(backend, pipeline).map(inputs, map_over="x", output_name="half")
    assert chosen == local(pipeline).map(inputs, map_over="x", output_name="half")


def test_a_process_scoped_dep_is_made_once_per_worker(backend: Any, tmp_path: Path) -> None:
    log = tmp_path / "made"

    def load_model() -> dict[str, int]:
        with log.open("a") as file:
            file.write(f"{os.getpid()}\n")
        return {"pid": os.getpid()}

    @node(output_name="where")
    def predict(x: int, model: dict[str, int] = Dep(load_model, scope="process")) -> Any:
        return (os.getpid(), model["pid"], id(model))

    pipeline = Pipeline([predict])
    first = on(backend, pipeline).map({"x": range(200)}, map_over="x")
    second = on(backend, pipeline).map({"x": range(200)}, map_over="x")  # shipped anew
    made = log.read_text().split()
    assert len(made) == len(set(made)), made  # no worker made it twice
    where = [o["where"] for o in first + second]
    assert {str(pid) for pid, _, _ in where} == set(made)
    assert all(pid == made_in for pid, made_in, _ in where)
    assert len({(pid, ident) for pid, _, ident in where}) == len(made)  # one object each
    if isinstance(backend, DaftEngine):
        return  # Daft's native runner may run UDFs in this process: its own is fine
    assert str(os.getpid()) not in made
    # As a node executor: the run sets the dep up here, each call uses its worker's own.
    runs = pipeline.with_engine(LocalEngine(node_executor=backend))
    called = [runs.run({"x": x})["where"] for x in range(10)]
    made = log.read_text().split()
    assert len(made) == len(set(made)), made
    assert str(os.getpid()) in made
    assert all(pid == made_in for pid, made_in, _ in called)


def test_product_mode_and_an_empty_map(backend: Any) -> None:
    pipeline = Pipeline(nodes())
    inputs = {"x": [1, 2, 3], "k": [10, 20]}
    want = local(pipeline).map(inputs, map_over=["x", "k"], map_mode="product")
    assert on(backend, pipeline).map(inputs, map_over=["x", "k"], map_mode="product") == want
    assert len(want) == 6
    assert on(backend, pipeline).map({"x": [], "k": 1}, map_over="x") == []


def test_values_travel_as_python_objects(backend: Any) -> None:
    @node(output_name=("point", "mapping", "pair", "nothing", "array"))
    def shapes(x: int) -> tuple[Any, ...]:
        return Point(x, -x), {"x": x}, (x, str(x)), None, np.arange(x)

    got = on(backend, Pipeline([shapes])).map({"x": range(4)}, map_over="x")
    want = local(Pipeline([shapes])).map({"x": range(4)}, map_over="x")
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        assert (a["point"], a["mapping"], a["pair"], a["nothing"]) == (
            b["point"],
            b["mapping"],
            b["pair"],
            b["nothing"],
        )
        assert isinstance(a["pair"], tuple)
        assert isinstance(a["point"], Point)
        assert np.array_equal(a["array"], b["array"])


def test_collect_three_of_a_hundred_failing(backend: Any) -> None:
    pipeline = failing()
    got = on(backend, pipeline).map({"x": range(100)}, map_over="x", on_error="collect")
    want = local(pipeline).map({"x": range(100)}, map_over="x", on_error="collect")
    errors = [i for i, outcome in enumerate(want) if isinstance(outcome, ItemError)]
    assert errors == [13, 53, 93]
    for a, b in zip(got, want, strict=True):
        if isinstance(b, ItemError):
            same_errors(a, b)
        else:
            assert a == b


def test_raise_carries_the_same_type_and_notes(backend: Any) -> None:
    pipeline = failing()
    with pytest.raises(ValueError, match="bad item 13") as want:
        local(pipeline).map({"x": range(100)}, map_over="x")
    with pytest.raises(ValueError, match="bad item") as got:
        on(backend, pipeline).map({"x": range(100)}, map_over="x")
    # Fail-fast: the first failure to arrive may be another failing item's.
    index = int(str(got.value).rsplit(" ", 1)[1])
    assert index in (13, 53, 93)
    assert got.value.__notes__ == [
        f"plait: raised in node 'check' (→ y) called with (x={index})",
        f"plait: in map item {index} with inputs (x={index})",
    ]
    assert want.value.__notes__ == [
        "plait: raised in node 'check' (→ y) called with (x=13)",
        "plait: in map item 13 with inputs (x=13)",
    ]


def test_imap_ordered_unordered_and_leaving_early(backend: Any) -> None:
    pipeline = on(backend, Pipeline(nodes()).bind(k=2))
    want = local(Pipeline(nodes()).bind(k=2)).map({"x": range(50)}, map_over="x")
    ordered = list(pipeline.imap({"x": range(50)}, map_over="x", ordered=True))
    assert [i for i, _ in ordered] == list(range(50))
    assert [out for _, out in ordered] == want
    unordered = sorted(pipeline.imap({"x": range(50)}, map_over="x"), key=lambda pair: pair[0])
    assert [out for _, out in unordered] == want

    def endless() -> Iterator[int]:
        n = 0
        while True:
            yield n
            n += 1

    start = time.monotonic()
    stream = pipeline.imap({"x": endless()}, map_over="x", ordered=True)
    first = [out["total"] for _, (_, out) in zip(range(5), stream, strict=False)]
    stream.close()  # type: ignore[attr-defined]
    assert first == [0, 1, 2, 3, 4]
    assert time.monotonic() - start < 30
    assert pipeline.map({"x": [1]}, map_over="x")[0]["doubled"] == 2  # still usable


def tagger() -> Iterator[str]:
    yield "client"


def test_a_nested_map_and_a_dep(backend: Any) -> None:
    @node(output_name="word")
    def tag(letter: str, http: str = Dep(tagger, scope="item")) -> str:
        return f"{http}:{letter}"

    @node(output_name="joined")
    def join(word: list[str]) -> str:
        return ",".join(word)

    inner = Pipeline([tag], name="inner").as_node(map_over="letter")
    pipeline = Pipeline([inner, join])
    inputs = {"letter": [["a", "b"], ["c"], []]}
    want = local(pipeline).map(inputs, map_over="letter")
    assert want[0] == {"word": ["client:a", "client:b"], "joined": "client:a,client:b"}
    assert on(backend, pipeline).map(inputs, map_over="letter") == want


def test_a_node_executor_runs_calls_as_tasks(cluster: Any) -> None:
    @node(output_name="pid")
    def where(x: int) -> int:
        if x < 0:
            raise KeyError(x)
        return os.getpid()

    pipeline = Pipeline([where], engine=LocalEngine(node_executor=cluster))
    assert pipeline.run({"x": 1})["pid"] != os.getpid()
    with pytest.raises(KeyError) as info:
        pipeline.run({"x": -1})
    assert info.value.__notes__ == ["plait: raised in node 'where' (→ pid) called with (x=-1)"]


#: Backends whose nodes run in processes other than the test's (a node that ends its
#: process must not end the test): Daft's native runner with use_process=True.
DYING = [
    *EXECUTORS,
    "daft-process",
    pytest.param("daft-ray", marks=pytest.mark.daft_ray),
    pytest.param("daft-ray-process", marks=pytest.mark.daft_ray),
]


@pytest.fixture(params=DYING)
def dying(request: pytest.FixtureRequest) -> Any:
    """An executor, Dask client or DaftEngine whose workers may die."""
    names = {"ray": "ray_executor", "dask": "dask_client"}
    if request.param in names:
        return request.getfixturevalue(names[request.param])
    if request.param == "daft-process":
        pytest.importorskip("daft")
        return DaftEngine(use_process=True, batch_size=2)
    engine = request.getfixturevalue("daft_ray_engine")
    if request.param == "daft-ray-process":
        return DaftEngine(runner="ray", use_process=True, batch_size=2)
    return engine


def test_a_dead_worker_is_a_worker_died_error_naming_the_items(dying: Any) -> None:
    @node(output_name="y")
    def crash(x: int) -> int:
        if x == 3:
            os._exit(7)
        return x

    pipeline = on(dying, Pipeline([crash]))
    started = time.monotonic()
    with pytest.raises(WorkerDiedError) as info:
        pipeline.map({"x": range(8)}, map_over="x")
    assert time.monotonic() - started < 30  # Daft on Ray would rerun it forever
    message = str(info.value)
    assert re.match(
        r"a (Ray|Dask|Daft) worker died \((WorkerCrashedError|KilledWorker"
        r"|(process [^;]+|a UDF process); Daft[^)]+)\)",
        message,
    ), message
    spans = re.search(r"while map items ([0-9, -]+) were in flight", message)
    assert spans is not None
    in_flight = set()
    for span in spans.group(1).split(", "):
        first, _, last = span.partition("-")
        in_flight.update(range(int(first), int(last or first) + 1))
    assert 3 in in_flight
    if not isinstance(dying, ClusterExecutor | DaftEngine):  # Dask: its nanny restarts it
        dying.wait_for_workers(2, timeout=30)
    assert pipeline.map({"x": [1, 2]}, map_over="x") == [{"y": 1}, {"y": 2}]  # recovers


SCRIPT = """
import sys
from plait import LocalEngine, Pipeline, node

@node(output_name="y")
def shout(word):
    return word.upper() + "!"

def engine():
    if sys.argv[1] == "daft-ray":
        from plait import DaftEngine
        return DaftEngine(runner="ray", address=sys.argv[2])
    if sys.argv[1] == "ray":
        from plait import RayExecutor
        return LocalEngine(map_executor=RayExecutor(address=sys.argv[2]))
    from distributed import Client
    return LocalEngine(map_executor=Client(sys.argv[2]))

pipeline = Pipeline([shout], engine=engine())
print(pipeline.map({"word": ["a", "b"]}, map_over="word"))
"""


SCRIPT_BACKENDS = [*EXECUTORS, pytest.param("daft-ray", marks=pytest.mark.daft_ray)]


@pytest.mark.parametrize("name", SCRIPT_BACKENDS)
def test_a_node_of_a_script_runs_on_workers_that_cannot_import_it(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    if name == "dask":
        address = request.getfixturevalue("dask_client").scheduler.address
    else:  # Ray, started by the backend's fixture
        import ray

        if name == "ray":
            request.getfixturevalue("ray_executor").cpus()  # starts Ray
        else:
            request.getfixturevalue("daft_ray_engine")
        address = ray.get_runtime_context().gcs_address
    done = subprocess.run(
        [sys.executable, str(script), name, address],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[{'y': 'A!'}, {'y': 'B!'}]"


def test_a_dask_client_is_wrapped_and_stays_the_caller_s(dask_client: Any) -> None:
    from plait.engine.local.clusters import DaskExecutor

    engine = LocalEngine(dask_client, dask_client)
    assert isinstance(engine.map_executor, DaskExecutor)
    assert engine.map_executor.client is dask_client
    engine.close()
    engine.map_executor.shutdown()
    assert dask_client.status == "running"


def test_the_window_comes_from_the_cluster_cpus(cluster: Any) -> None:
    from plait.engine.local.clusters import ClusterLauncher

    executor = LocalEngine(map_executor=cluster).map_pool()
    assert isinstance(executor, ClusterExecutor)
    assert executor.cpus() == 2
    pipeline = Pipeline(nodes()).bind(k=1)
    runner: Any = type("Runner", (), {"names": ("x",), "replayer": lambda self: None})()
    runner.for_worker = lambda: pipeline  # anything picklable: not run here
    launcher = ClusterLauncher(runner, executor, stop_on_error=True, size_hint=800)
    assert launcher.largest == 100  # a quarter of each of 2 workers' share
    assert launcher.window == 800  # the whole map: its 8 chunks go at once
    assert launcher.chunk_size == 100  # a map of known length starts at its largest


class Recorder:
    """Records (event, node, item, error type) of every event."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def per_item(self) -> dict[Any, list[tuple[Any, ...]]]:
        items: dict[Any, list[tuple[Any, ...]]] = {}
        for event in self.events:
            items.setdefault(event[2], []).append(event)
        return items


def _record(self: Recorder, ctx: Any) -> None:
    error = type(ctx.error).__name__ if ctx.error is not None else None
    self.events.append((ctx.event, ctx.node, ctx.item, error))


for _event in EVENTS:
    setattr(Recorder, _event, _record)


def test_callback_events_and_a_disk_cache_rerun(backend: Any, tmp_path: Path) -> None:
    pipeline = failing()
    here, there = Recorder(), Recorder()
    inputs = {"x": range(20)}
    local(pipeline.with_callbacks([here])).map(inputs, map_over="x", on_error="collect")
    on(backend, pipeline.with_callbacks([there])).map(inputs, map_over="x", on_error="collect")
    assert there.events[0] == here.events[0]  # map_start
    assert there.events[-1] == here.events[-1]  # map_end
    assert there.per_item() == here.per_item()  # each item's events, in order

    cache = DiskCache(tmp_path / "cache")
    cached = Recorder()
    first = on(backend, pipeline.with_cache(cache)).map(inputs, map_over="x", on_error="collect")
    again = on(backend, pipeline.with_cache(cache).with_callbacks([cached]))
    second = again.map(inputs, map_over="x", on_error="collect")
    assert [type(o) for o in second] == [type(o) for o in first]
    ends = [event[0] for event in cached.events]
    assert ends.count("map_item_cached") == 19  # the failing item runs again, nothing else
    assert ends.count("map_item_end") == 1


def test_a_node_with_resources_in_the_middle(backend: Any, tmp_path: Path) -> None:
    """On Daft the node is a stage of its own; elsewhere its resources are not read."""

    @node(output_name="y")
    def check(x: int) -> int:
        if x % 40 == 13:
            raise ValueError(f"bad item {x}")
        return x

    @node(output_name="v", resources={"cpus": 1})
    def heavy(y: int) -> int:
        return 2 * y

    @node(output_name="z")
    async def after(v: int, y: int) -> int:
        return v + y

    pipeline = Pipeline([check, heavy, after])
    here, there = Recorder(), Recorder()
    inputs = {"x": range(60)}
    want = local(pipeline.with_callbacks([here])).map(inputs, map_over="x", on_error="collect")
    got = on(backend, pipeline.with_callbacks([there])).map(
        inputs, map_over="x", on_error="collect"
    )
    for a, b in zip(got, want, strict=True):
        if isinstance(b, ItemError):
            same_errors(a, b)
        else:
            assert a == b
    assert there.per_item() == here.per_item()

    cache = DiskCache(tmp_path / "cache")
    on(backend, pipeline.with_cache(cache)).map(inputs, map_over="x", on_error="collect")
    cached = Recorder()
    again = on(backend, pipeline.with_cache(cache).with_callbacks([cached]))
    again.map(inputs, map_over="x", on_error="collect")
    ends = [event[0] for event in cached.events]
    assert ends.count("map_item_cached") == 58  # the failing items run again, nothing else


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.mark.ray
def test_a_ray_task_that_ends_first_is_settled_first(ray_executor: Any) -> None:
    """One thread waits for every task: a short task submitted while it waits for a long
    one is settled when it ends, not when the long one does."""
    long = ray_executor.submit(_sleep, 3.0)
    time.sleep(0.5)  # the waiting thread is waiting for the long task alone
    start = time.monotonic()
    short = ray_executor.submit(_sleep, 0.1)
    assert short.result(timeout=10) == 0.1
    assert time.monotonic() - start < 2.0
    assert not long.done()
    assert long.result(timeout=10) == 3.0
