"""Which rows a Daft map's stages run: a dead worker's rows named, a map's leftovers skipped.

Daft reports a dead worker badly: its native runner fails the query with a
``RuntimeError`` about a closed connection, and its Ray runner reruns the dead
worker's task on another worker, forever when the crash happens on every attempt.
So each stage records in the map's :class:`Ledger` the rows it starts and finishes,
and the ledger's :class:`Book` decides: a row started again by another worker means
Daft reran a task whose worker died (the book then skips every row started from
there on, so the query drains in moments instead of crashing again); a failed
query with rows started and never finished means a worker died running them.
Daft cannot cancel a query either: once the driver leaves a map (``imap`` left
early, a failure with ``on_error="raise"``) its ledger is closed, and the stages
skip the rows they have not started.

A map of several stages (:mod:`plait.engine.daft.split`) records each row once per
stage: a row finished in one stage starts in the next, maybe in another worker,
which is no rerun. So a stage records its rows finished before it hands them on
(on Ray it waits for the actor's reply): the next stage's start always finds them so.

Where the book lives: in a file per worker process under a directory of the
driver's (native runner, ``use_process=True``), or in a Ray actor of the driver's
(Ray runner). Stages on Daft's threads in the driver's own process record nothing
(a worker that dies there is the driver): they only skip a closed map's rows.
Stages in Daft's UDF processes on Ray (``use_process=True``) cannot reach Ray and
have no ledger: there Daft fails the query itself, and only its error says that a
UDF process died.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from plait._text import spans
from plait.errors import WorkerDiedError

#: What a stage returns for a row it skipped (a real reply is never empty).
SKIPPED = b""


def worker() -> str:
    """This process, as a book names it: ``process host:pid``."""
    return f"process {socket.gethostname()}:{os.getpid()}"


def guarded(
    ledger: Ledger | None, rows: list[int], run: Callable[[], Sequence[bytes]]
) -> Sequence[bytes]:
    """In a stage: the replies of ``rows``, run by ``run`` between their records in
    ``ledger`` (None: no ledger), or :data:`SKIPPED` for each when the ledger says so."""
    if ledger is None:
        return run()
    if not ledger.start(rows):
        return [SKIPPED] * len(rows)
    try:
        replies = run()
    except Exception:  # this process lives on: its rows are not a dead worker's
        ledger.finish(rows)
        raise
    # (SystemExit and the like end a UDF process: its rows stay in flight.)
    ledger.finish(rows)
    return replies


async def aguarded(ledger: Ledger | None, row: int, run: Coroutine[Any, Any, bytes]) -> bytes:
    """:func:`guarded` for one row run by a coroutine."""
    if ledger is None:
        return await run
    if not await ledger.astart([row]):
        run.close()
        return SKIPPED
    try:
        reply = await run
    except (Exception, asyncio.CancelledError):  # this process lives on
        ledger.finish([row])
        raise
    await ledger.afinish([row])
    return reply


class Book:
    """The rows of one map started and finished by each worker, and what they mean."""

    def __init__(self) -> None:
        self.running: dict[int, str] = {}  # rows started and not finished -> worker
        self.dead: set[str] = set()
        self.lost: set[int] = set()  # rows in flight in a dead worker

    def start(self, by: str, rows: list[int]) -> bool:
        """Record ``rows`` started by worker ``by``; False: skip them, a worker died."""
        if not self.dead:
            # A row another worker started and never finished: Daft reran its task,
            # which it does when the worker died.
            rerun = {self.running[row] for row in rows if self.running.get(row, by) != by}
            if rerun:
                self.dead = rerun
                self.lost = {row for row, w in self.running.items() if w in rerun}
                self.lost = self.lost or set(rows)
        if self.dead:
            return False
        for row in rows:
            self.running[row] = by
        return True

    def finish(self, by: str, rows: list[int]) -> None:
        for row in rows:
            if self.running.get(row) == by:
                del self.running[row]

    def verdict(self, failed: bool) -> tuple[list[str], list[int]] | None:
        """The dead workers and their rows in flight, or None when none died. A
        failed query's rows still running were in flight in a worker that died."""
        if self.dead:
            return sorted(self.dead), sorted(self.lost)
        if failed and self.running:
            return sorted(set(self.running.values())), sorted(self.running)
        return None


class Ledger:
    """One map's book as its stages and the driver reach it (picklable: it travels
    to the stages). Subclasses say where the book is kept."""

    def start(self, rows: list[int]) -> bool:
        """In a stage: ``rows`` start here; False when they must be skipped (a worker
        died, or the map is over: the driver left it early)."""
        raise NotImplementedError

    async def astart(self, rows: list[int]) -> bool:
        return self.start(rows)

    def finish(self, rows: list[int]) -> None:
        raise NotImplementedError

    async def afinish(self, rows: list[int]) -> None:
        self.finish(rows)

    def verdict(self, failed: bool) -> tuple[list[str], list[int]] | None:
        """On the driver: see :meth:`Book.verdict`."""
        raise NotImplementedError

    def close(self) -> None:
        """On the driver, when the map ends: forget its book."""


#: What Daft's error says when a stage's UDF process died (``use_process=True``).
_UDF_PROCESS_DIED = ("UDF process closed the connection unexpectedly", "UDF process has terminated")


def died(
    ledger: Ledger | None, failed: BaseException | None, unreturned: Iterable[int], run: bool
) -> WorkerDiedError | None:
    """On the driver, once a query ended (``failed``: with that error): the error
    naming the rows a dead worker had in flight, or None when no worker died.

    Without a ledger (the Ray runner with ``use_process=True``: stages run in UDF
    processes that cannot reach Ray) Daft's own error says that a UDF process died,
    not which rows it ran: every row not returned yet is named.
    """
    if ledger is not None:
        verdict = ledger.verdict(failed is not None)
    elif failed is not None and any(text in str(failed) for text in _UDF_PROCESS_DIED):
        verdict = (["a UDF process"], sorted(unreturned))
    else:
        verdict = None
    if verdict is None:
        return None
    workers, rows = verdict
    how = "Daft reran its task" if failed is None else f"Daft: {_reason(failed)}"
    crash = "killed or crashed (out of memory, a segfault in an extension, os._exit)"
    if run:
        return WorkerDiedError(
            f"a Daft worker died ({', '.join(workers)}; {how}) while it ran the pipeline: "
            f"it was {crash}."
        )
    where = "in flight" if ledger is not None else "in flight or queued (Daft does not say which)"
    stopped = (
        "" if failed is not None else "; plait stopped the query rather than let Daft rerun them"
    )
    return WorkerDiedError(
        f"a Daft worker died ({', '.join(workers)}; {how}) while map items {spans(rows)} "
        f"were {where}; one of them was running in it when it was {crash}. Those items "
        f"are lost{stopped}."
    )


def _reason(error: BaseException) -> str:
    """Daft's error in short: what it says of a dead UDF process, or its first line."""
    text = str(error)
    for reason in _UDF_PROCESS_DIED:
        if reason in text:
            return reason
    lines = text.strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@contextlib.contextmanager
def ledger(runner: str, use_process: bool, token: str) -> Iterator[Ledger | None]:
    """A ledger for the map ``token`` whose stages run on ``runner`` (in processes of
    their own: ``use_process``); closed when the map ends. None: Daft's UDF processes
    on Ray, which cannot reach one."""
    if runner == "ray" and use_process:
        yield None
        return
    kept: Ledger
    if runner == "ray":
        kept = RayLedger(token)
    else:
        kept = FileLedger(token) if use_process else LiveLedger(token)
    try:
        yield kept
    finally:
        kept.close()


# --- native runner, stages in this process: nothing to record ---------------------------

#: The maps whose stages run in this process, by token, while they are not over.
_open_here: set[str] = set()


class LiveLedger(Ledger):
    """Stages on Daft's threads in the driver's own process: a worker that dies there
    is the driver, so nothing is recorded; the rows of a map that is over are skipped."""

    def __init__(self, token: str) -> None:
        self.token = token
        _open_here.add(token)

    def start(self, rows: list[int]) -> bool:
        return self.token in _open_here

    def finish(self, rows: list[int]) -> None:
        pass

    def verdict(self, failed: bool) -> tuple[list[str], list[int]] | None:
        return None

    def close(self) -> None:
        _open_here.discard(self.token)


# --- native runner, use_process=True: a file per worker process -------------------------


class FileLedger(Ledger):
    """The book as files under a directory of the driver's, one per worker process,
    each a line per batch of rows: ``s 1 2 3`` started, ``f 1 2 3`` finished."""

    def __init__(self, token: str) -> None:
        self.directory = tempfile.mkdtemp(prefix=f"plait-daft-{token[:8]}-")

    def start(self, rows: list[int]) -> bool:
        return self._write("s", rows)

    def finish(self, rows: list[int]) -> None:
        self._write("f", rows)

    def _write(self, kind: str, rows: list[int]) -> bool:
        """Append a line; False when the map is over (its directory is gone)."""
        # One write per line, unbuffered: a process that dies next keeps it.
        line = f"{kind} {' '.join(map(str, rows))}\n".encode()
        try:
            fd = os.open(Path(self.directory, worker()), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        except FileNotFoundError:
            return False
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return True

    def verdict(self, failed: bool) -> tuple[list[str], list[int]] | None:
        """The processes with rows started and never finished, once Daft failed the
        query (the native runner reruns no task, so that is how a worker died)."""
        if not failed:
            return None
        workers: list[str] = []
        rows: set[int] = set()
        for path in sorted(Path(self.directory).iterdir()):
            # Each file alone, in its own order: files replayed one after another would
            # make a row's later stage, in another process, look like a rerun.
            book = Book()
            for line in path.read_text().splitlines():
                kind, *numbers = line.split()
                record = book.start if kind == "s" else book.finish
                record(path.name, [int(row) for row in numbers])
            if book.running:
                workers.append(path.name)
                rows.update(book.running)
        return (workers, sorted(rows)) if rows else None

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


# --- Ray runner: an actor of the driver's ----------------------------------------------


class Books:
    """The books of a driver's maps, by token: the Ray actor that keeps them."""

    def __init__(self) -> None:
        self.books: dict[str, Book] = {}

    def open(self, token: str) -> None:
        self.books[token] = Book()

    def start(self, token: str, by: str, rows: list[int]) -> bool:
        book = self.books.get(token)
        return book is not None and book.start(by, rows)  # a map over: skip its rows

    def finish(self, token: str, by: str, rows: list[int]) -> None:
        book = self.books.get(token)
        if book is not None:
            book.finish(by, rows)

    def verdict(self, token: str, failed: bool) -> tuple[list[str], list[int]] | None:
        return self.books.get(token, Book()).verdict(failed)

    def forget(self, token: str) -> None:
        self.books.pop(token, None)


_actor: tuple[Any, Any] | None = None  # (the Ray job it belongs to, its handle)


def _books() -> Any:
    """This driver's :class:`Books` actor (one per Ray job, started on first use)."""
    global _actor
    import ray

    job = ray.get_runtime_context().get_job_id()
    if _actor is None or _actor[0] != job:
        # No CPU of its own: it must never wait for a slot the stages hold. One call
        # at a time, in each caller's order: a worker's finish before its next start.
        remote = ray.remote(num_cpus=0)(Books)
        _actor = (job, remote.remote())
    return _actor[1]


class RayLedger(Ledger):
    """The book in this driver's :class:`Books` actor; stages call it.

    Rows run as tasks on a stage's loop start (and finish) many at a time: those of
    one turn of the loop go to the actor in one call, not one call each.
    """

    def __init__(self, token: str) -> None:
        import ray

        self.token = token
        self.books = _books()
        ray.get(self.books.open.remote(token))  # open before any stage asks
        self._groups: dict[tuple[Any, str], tuple[list[int], asyncio.Future[bool]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"token": self.token, "books": self.books}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _groups={})

    def start(self, rows: list[int]) -> bool:
        import ray

        started: bool = ray.get(self.books.start.remote(self.token, worker(), rows))
        return started

    def finish(self, rows: list[int]) -> None:
        import ray

        # Waited for: the rows' next stage, maybe in another worker, must find them
        # finished here, or it would take its own start for a rerun of theirs.
        ray.get(self.books.finish.remote(self.token, worker(), rows))

    async def astart(self, rows: list[int]) -> bool:
        return await self._together("start", rows)

    async def afinish(self, rows: list[int]) -> None:
        await self._together("finish", rows)

    async def _together(self, kind: str, rows: list[int]) -> bool:
        """Record ``rows`` with the others of this turn of the loop, in one call."""
        key = (asyncio.get_running_loop(), kind)
        group = self._groups.get(key)
        if group is not None:  # a call is gathering rows: join it
            group[0].extend(rows)
            return await group[1]
        group = self._groups[key] = (list(rows), asyncio.get_running_loop().create_future())
        try:
            await asyncio.sleep(0)  # the rows starting (finishing) in this turn join
        finally:
            del self._groups[key]
        done = group[1]
        try:
            if kind == "finish":  # waited for, as in finish()
                await self.books.finish.remote(self.token, worker(), group[0])
                started = True
            else:
                started = await self.books.start.remote(self.token, worker(), group[0])
        except BaseException as exc:
            done.set_exception(exc)
            done.exception()  # retrieved, even when no other row waits for it
            raise
        done.set_result(started)
        return started

    def verdict(self, failed: bool) -> tuple[list[str], list[int]] | None:
        import ray

        verdict: tuple[list[str], list[int]] | None = ray.get(
            self.books.verdict.remote(self.token, failed)
        )
        return verdict

    def close(self) -> None:
        self.books.forget.remote(self.token)
