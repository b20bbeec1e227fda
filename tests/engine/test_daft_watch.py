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
        time.sleep(0.02)
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
    if where == "ray":  # the batches running on Ray's workers finish (80 ms each)
        time.sleep(1)
    started = len(log.read_text().split())
    assert started < 100  # 200 rows would run without the skip: Daft cannot cancel
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
