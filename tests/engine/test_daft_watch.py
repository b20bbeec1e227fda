"""A Daft worker that dies is a WorkerDiedError naming its rows, raised promptly, with
nothing left running (the parity suite's dead-worker test covers every backend); the
book that decides it; and the Daft behaviour it relies on, pinned."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from pathlib import Path

import pytest

from plait import DaftEngine, LocalEngine, Pipeline, WorkerDiedError, node
from plait.engine.daft.watch import SKIPPED, Book, FileLedger, guarded, worker

daft = pytest.importorskip("daft")

pytestmark = pytest.mark.timeout(120)


# --- the book ------------------------------------------------------------------------


def test_a_row_started_again_by_another_worker_means_the_first_died() -> None:
    book = Book()
    assert book.start("a", [0, 1])
    assert book.start("b", [2, 3])
    book.finish("b", [2, 3])
    assert book.verdict(failed=False) is None
    assert not book.start("c", [0, 1])  # Daft reran a's task: a died, rows are skipped
    assert not book.start("b", [4, 5])  # and so is every row after
    assert book.verdict(failed=False) == (["a"], [0, 1])


def test_rows_started_again_after_they_finished_are_no_death() -> None:
    book = Book()
    assert book.start("a", [0, 1])
    book.finish("a", [0, 1])
    assert book.start("a", [0])  # the same worker
    assert book.start("b", [1])  # another one: a later stage, or a rerun that may pass
    assert book.verdict(failed=False) is None


def test_a_failed_query_s_unfinished_rows_were_in_a_dead_worker() -> None:
    book = Book()
    book.start("a", [0, 1])
    book.start("b", [2])
    book.finish("a", [0, 1])
    book.finish("a", [2])  # not a's row: b still runs it
    assert book.verdict(failed=False) is None
    assert book.verdict(failed=True) == (["b"], [2])
    book.finish("b", [2])
    assert book.verdict(failed=True) is None  # a failure of another kind


def test_a_stage_that_raises_lives_on_and_one_that_exits_does_not() -> None:
    def fails() -> list[bytes]:
        raise RuntimeError("a bug of plait's")

    def exits() -> list[bytes]:
        raise SystemExit(1)  # ends a Daft UDF process

    with contextlib.closing(FileLedger("token")) as ledger:
        with pytest.raises(RuntimeError):
            guarded(ledger, [0, 1], fails)
        assert ledger.verdict(failed=True) is None  # Daft's own error is raised as is
        with pytest.raises(SystemExit):
            guarded(ledger, [2, 3], exits)
        assert ledger.verdict(failed=True) == ([worker()], [2, 3])
    assert guarded(ledger, [4], fails) == [SKIPPED]  # closed: the map is over, skipped


# --- Daft's native runner with use_process=True --------------------------------------


def udf_processes() -> list[int]:
    """Daft's UDF processes that are children of this one (Linux's /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"daft.execution.udf_worker" in command:
            found.append(int(entry.name))
    return found


def test_stages_in_processes_of_their_own_give_what_local_gives() -> None:
    @node(output_name="y")
    def double(x: int) -> int:
        return 2 * x

    @node(output_name="z")
    async def inc(y: int) -> int:
        await asyncio.sleep(0)
        return y + 1

    engine = DaftEngine(use_process=True, batch_size=4)
    for nodes in ([double], [double, inc]):  # a batch of sync rows, rows on a loop
        pipeline = Pipeline(nodes)
        want = pipeline.with_engine(LocalEngine()).map({"x": range(10)}, map_over="x")
        assert pipeline.with_engine(engine).map({"x": range(10)}, map_over="x") == want
        assert pipeline.with_engine(engine).run({"x": 5}) == want[5]


def test_a_dead_process_names_its_rows_once_the_others_are_done() -> None:
    @node(output_name="y")
    def crash(x: int) -> int:
        if x == 3:
            os._exit(7)
        if x == 2:
            time.sleep(1)  # in flight in the other process as 3 dies: it finishes
        return x

    engine = DaftEngine(use_process=True, batch_size=1, concurrency=2)
    with pytest.raises(WorkerDiedError) as info:
        Pipeline([crash], engine=engine).map({"x": range(8)}, map_over="x")
    message = str(info.value)
    assert message.startswith("a Daft worker died (process ")
    assert "; Daft: UDF process closed the connection unexpectedly) while map items 3 " in message
    assert "were in flight; one of them was running in it when it was killed or " in message
    assert message.endswith("os._exit). Those items are lost.")
    assert isinstance(info.value.__cause__, RuntimeError)  # Daft's own error
    assert udf_processes() == []  # nothing left running


def test_a_run_whose_process_dies_is_a_worker_died_error() -> None:
    @node(output_name="y")
    def crash(x: int) -> int:
        os._exit(7)

    with pytest.raises(WorkerDiedError, match=r"while it ran the pipeline: it was killed"):
        Pipeline([crash], engine=DaftEngine(use_process=True)).run({"x": 1})


def test_daft_says_a_udf_process_closed_the_connection_when_it_dies() -> None:
    """Pinned: with ``use_process=True`` on the Ray runner, plait knows a UDF process
    died only from these words of Daft's error (the stages there cannot reach Ray)."""

    @daft.cls(use_process=True)
    class Crash:
        @daft.method(return_dtype=daft.DataType.int64())
        def __call__(self, x: int) -> int:
            os._exit(7)

    df = daft.from_pydict({"x": [1, 2]})
    with pytest.raises(Exception, match="UDF process closed the connection unexpectedly"):
        df.select(Crash()(df["x"])).collect()


@pytest.mark.parametrize(
    "where", ["threads", "processes", pytest.param("ray", marks=pytest.mark.daft_ray)]
)
def test_leaving_imap_early_skips_the_rows_not_started(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    @node(output_name="y")
    def slow(x: int, log: str) -> int:
        with open(log, "a") as file:
            file.write(f"{x}\n")
        # Slow enough that 100 rows take seconds even on several UDF processes, so a
        # first result delayed on a loaded machine still comes before they all start.
        time.sleep(0.05)
        return x

    log = tmp_path / "started"
    if where == "ray":
        request.getfixturevalue("daft_ray_engine")  # starts Ray, in the namespace
        engine = DaftEngine(runner="ray", batch_size=4)
    else:
        engine = DaftEngine(use_process=where == "processes", batch_size=4)
    stream = Pipeline([slow], engine=engine).imap({"x": range(200), "log": str(log)}, map_over="x")
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    if where == "ray":  # the batches running on Ray's workers finish (200 ms each)
        time.sleep(1)
    started = len(log.read_text().split())
    assert started < 100, f"{started} rows started"  # all 200 would without the skip
    time.sleep(0.5)
    assert len(log.read_text().split()) == started  # and none starts later


# --- Daft's Ray runner -------------------------------------------------------------


def in_flight(message: str) -> set[int]:
    """The items a WorkerDiedError names."""
    found = re.search(r"while map items ([0-9, -]+) were in flight", message)
    assert found is not None, message
    items: set[int] = set()
    for span in found.group(1).split(", "):
        first, _, last = span.partition("-")
        items.update(range(int(first), int(last or first) + 1))
    return items


@pytest.mark.daft_ray
@pytest.mark.parametrize("on_a_loop", [False, True], ids=["sync", "async"])
def test_on_ray_the_crashing_row_is_not_rerun(
    daft_ray_engine: DaftEngine, tmp_path: Path, on_a_loop: bool
) -> None:
    def crash(x: int, log: str) -> int:
        with open(log, "a") as file:
            file.write(f"{x}\n")
        if x == 3:
            os._exit(7)
        return x

    async def acrash(x: int, log: str) -> int:
        return crash(x, log)

    log = tmp_path / "started"
    step = node(acrash if on_a_loop else crash, output_name="y", name="crash")
    pipeline = Pipeline([step], engine=DaftEngine(runner="ray", batch_size=2))
    with pytest.raises(WorkerDiedError) as info:
        pipeline.map({"x": range(8), "log": str(log)}, map_over="x")
    assert 3 in in_flight(str(info.value))
    assert "Daft reran its task" in str(info.value)
    time.sleep(3)  # Daft restarts a dead worker within seconds; a rerun would show here
    assert log.read_text().split().count("3") == 1
    with pytest.raises(WorkerDiedError, match="while it ran the pipeline"):
        pipeline.run({"x": 3, "log": str(log)})
    assert pipeline.map({"x": [1, 2], "log": str(log)}, map_over="x") == [{"y": 1}, {"y": 2}]


# --- several stages (a node with resources in the middle) ---------------------------


def three_stages(crashes: str, log: Path, concurrency: int = 0) -> Pipeline:
    """a -> heavy (resources: a stage of its own) -> c (async): the node ``crashes``
    ends its process at item 3; each node logs ``node item pid`` as it starts.
    ``concurrency``: heavy's stage's instances (on Ray: Daft's actors of their own)."""

    def enter(name: str, x: int) -> int:
        with open(log, "a") as file:
            file.write(f"{name} {x} {os.getpid()}\n")
        if name == crashes and x == 3:
            os._exit(7)
        return x

    @node(output_name="y")
    def a(x: int) -> int:
        return enter("a", x)

    @node(
        output_name="z",
        resources={"cpus": 1, **({"concurrency": concurrency} if concurrency else {})},
    )
    def heavy(y: int) -> int:
        return enter("heavy", y)

    @node(output_name="w")
    async def c(z: int) -> int:
        await asyncio.sleep(0)
        return enter("c", z)

    return Pipeline([a, heavy, c])


def starts(log: Path) -> list[tuple[str, int, int]]:
    """The log's lines: (node, item, pid)."""
    return [(n, int(x), int(pid)) for n, x, pid in (line.split() for line in log.open())]


@pytest.mark.parametrize("crashes", ["a", "heavy", "c"])
@pytest.mark.parametrize(
    "where",
    [
        "processes",
        pytest.param("ray", marks=pytest.mark.daft_ray),
        pytest.param("ray-actors", marks=pytest.mark.daft_ray),
        pytest.param("ray-process", marks=pytest.mark.daft_ray),
    ],
)
def test_a_dead_worker_in_any_stage_is_a_worker_died_error(
    tmp_path: Path, where: str, crashes: str, request: pytest.FixtureRequest
) -> None:
    """On Ray a row's stages share Daft's worker, unless a stage has Daft's actors of
    its own (``ray-actors``: heavy's ``concurrency``), where rows cross workers."""
    if where.startswith("ray"):
        request.getfixturevalue("daft_ray_engine")  # starts Ray, in the namespace
    engine = DaftEngine(
        runner="ray" if where.startswith("ray") else "native",
        use_process=where in ("processes", "ray-process"),
        batch_size=2,
    )
    log = tmp_path / "started"
    pipeline = three_stages(crashes, log, 2 if where == "ray-actors" else 0).with_engine(engine)
    started = time.monotonic()
    with pytest.raises(WorkerDiedError) as info:
        pipeline.map({"x": range(8)}, map_over="x")
    assert time.monotonic() - started < 30  # Daft on Ray would rerun it forever
    lost = in_flight(str(info.value))
    assert 3 in lost
    ran = starts(log)
    assert [x for n, x, _ in ran if n == crashes].count(3) == 1  # the crash ran once
    if where != "ray-process":  # a ledger names the worker that died, no other
        dead = next(pid for n, x, pid in ran if (n, x) == (crashes, 3))
        assert f"a Daft worker died ({worker().split(':')[0]}:{dead}; " in str(info.value)
    if where == "processes":  # the other stages' processes end soon, running no row
        deadline = time.monotonic() + 5
        while udf_processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert udf_processes() == []
        assert starts(log) == ran
    assert pipeline.map({"x": [1, 2]}, map_over="x") == [
        {"y": 1, "z": 1, "w": 1},
        {"y": 2, "z": 2, "w": 2},
    ]  # the next map runs


@pytest.mark.daft_ray
def test_a_healthy_map_through_stages_on_ray_is_never_reported_dead(
    daft_ray_engine: DaftEngine, tmp_path: Path
) -> None:
    """Rows finished in one stage start in the next one in another worker (heavy's
    stage runs in Daft's actors of its own), batch after batch: none of that is taken
    for Daft's rerun of a dead worker's task."""
    log = tmp_path / "started"
    engine = DaftEngine(runner="ray", batch_size=1)
    pipeline = three_stages("nobody", log, concurrency=2).with_engine(engine)
    for _ in range(2):
        got = pipeline.map({"x": range(100)}, map_over="x")
        assert got == [{"y": x, "z": x, "w": x} for x in range(100)]
    pids = {n: {pid for m, _, pid in starts(log) if m == n} for n in ("a", "heavy", "c")}
    assert not pids["a"] & pids["heavy"]  # rows cross to other workers and back
    assert not pids["heavy"] & pids["c"]
