"""Map items on a process pool: the pipeline shipped once per worker, items in chunks.

Functions, closures and lambdas travel with cloudpickle. Each map writes its
pickled item runner to a private temporary file once; a worker loads it on its
first chunk of that map and keeps it, so the pipeline reaches each worker once
whatever the number of chunks. The file is removed when the map ends, and a
worker then drops that runner (and the map's broadcast inputs with it) within a
fraction of a second, idle or not: the warm pool stays, the inputs do not.
Chunks of consecutive items come back as one result per item, and plait's map
orders them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from concurrent.futures import Future as JobFuture
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.reduction import ForkingPickler
from operator import itemgetter
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from plait.engine.local import launchers
from plait.engine.local.batches import chunk_size
from plait.engine.local.calls import unpicklable_note
from plait.engine.local.inflight import InFlight
from plait.engine.local.items import (
    ItemRunner,
    Reply,
    Result,
    failure,
    reply_results,
    run_items,
)
from plait.engine.local.launchers import Chunk, Launcher
from plait.engine.request import OneInputItems
from plait.errors import WorkerDiedError


class ChunkLauncher(Launcher):
    """Chunks of consecutive items to workers in other processes, one result per item.

    Items are pickled here, before they are submitted, so an item that cannot go
    fails alone with a note naming its input; replies carry the items' results
    (errors as values, with their tracebacks) and the events to replay here.
    Subclasses say how a chunk is submitted and which failure means a dead worker.
    """

    def __init__(self, runner: ItemRunner, stop_on_error: bool) -> None:
        self.stop_on_error = stop_on_error
        self.replayer = runner.replayer()
        self.names = runner.names
        self.in_flight: dict[int, int] = {}  # first item -> last item of running chunks
        self.unsent: set[int] = set()  # items that could not be pickled, failed here

    def submit(self, first: int, items: bytes) -> JobFuture[Any]:
        """Start the chunk of pickled ``items`` whose first item is ``first``."""
        raise NotImplementedError

    def died(self, error: Exception) -> WorkerDiedError | None:
        """The error to raise when ``error`` (a chunk's failure) means a worker died."""
        return None

    def reply(self, value: Any, chunk: Chunk) -> Reply:
        """A finished chunk's value as the worker's reply."""
        reply: Reply = value
        return reply

    def launch(self, inflight: InFlight[Chunk], chunk: Chunk) -> None:
        first, items = chunk
        try:  # here rather than on the pool's thread, to know which item cannot go
            sent = pickle_items(items)
        except Exception:
            self._launch_apart(inflight, chunk)
            return
        inflight.add_job(self.submit(first, sent), chunk)
        self.in_flight[first] = first + len(items) - 1

    def _launch_apart(self, inflight: InFlight[Chunk], chunk: Chunk) -> None:
        """A chunk with an item that cannot be pickled: that item fails here, with a
        note naming its input; the runs of items around it go as chunks of their own."""
        first, items = chunk
        run: list[tuple[Any, ...]] = []  # the items before this one that can go
        for index, item in enumerate(items, first):
            try:
                ForkingPickler.dumps(item)
            except Exception as exc:
                if run:
                    self.launch(inflight, (index - len(run), run))
                    run = []
                inputs = dict(zip(self.names, item, strict=True))
                exc.add_note(unpicklable_note(inputs, f"map item {index}", "input"))
                failed: JobFuture[Any] = JobFuture()
                failed.set_exception(exc)
                self.unsent.add(index)
                inflight.add_job(failed, (index, [item]))
            else:
                run.append(item)
        if run:
            self.launch(inflight, (first + len(items) - len(run), run))

    def results(self, future: asyncio.Future[Any], chunk: Chunk) -> tuple[Sequence[Result], bool]:
        if chunk[0] in self.unsent:  # never sent: see _launch_apart
            self.unsent.discard(chunk[0])
            return super().results(future, chunk)
        try:
            reply = self.reply(future.result(), chunk)
        except Exception as exc:
            dead = self.died(exc)
            if dead is None:
                raise
            raise dead from None
        del self.in_flight[chunk[0]]
        if self.replayer is not None:
            self.replayer.replay(reply[2])
        return reply_results(chunk[0], reply)

    def spans(self) -> str:
        """The items in flight, as ranges: ``0-15, 32-47``."""
        return ", ".join(
            str(a) if a == b else f"{a}-{b}" for a, b in sorted(self.in_flight.items())
        )


class ProcessLauncher(ChunkLauncher):
    """Submits chunks of items to a process pool."""

    def __init__(
        self,
        runner: ItemRunner,
        executor: Executor,
        workers: int,
        stop_on_error: bool,
        size_hint: int | None,
        on_abort: Callable[[], None] | None,
    ) -> None:
        super().__init__(runner, stop_on_error)
        self.executor = executor
        # Whole batches per chunk (a plan with batch nodes), else the launchers' size.
        self.chunk_size = chunk_size(runner.plan, launchers.chunk_size(size_hint, workers))
        self.token = uuid.uuid4().hex
        self.on_abort = on_abort
        self.broken = False
        # Worker processes seen so far: the pool forgets a dead one before we ask.
        self.processes: dict[int, Any] = {}
        fd, self.path = tempfile.mkstemp(prefix="plait-map-", suffix=".pkl")  # mode 0600
        with os.fdopen(fd, "wb") as file:
            cloudpickle.dump(runner.for_worker(), file)

    def submit(self, first: int, items: bytes) -> JobFuture[Any]:
        job = self.executor.submit(
            run_chunk, self.token, self.path, first, items, self.stop_on_error
        )
        self.processes.update(getattr(self.executor, "_processes", None) or {})
        return job

    def died(self, error: Exception) -> WorkerDiedError | None:
        if not isinstance(error, BrokenProcessPool):
            return None
        self.broken = True
        return WorkerDiedError(
            f"a worker process died ({_exit_codes(self.processes)}) while map items "
            f"{self.spans()} were in flight; one of them was running in it when it was "
            "killed or crashed (out of memory, a segfault in an extension, os._exit). Those "
            "items are lost; a pool the engine owns is replaced on the next map."
        )

    async def before_cancel(self, inflight: InFlight[Chunk]) -> None:
        # An owned pool is stopped hard, so no chunk keeps running in a worker: its
        # processes are terminated and the pool fails their jobs itself. Wait for
        # that rather than cancel the jobs meanwhile, which races with the pool's
        # own thread (concurrent.futures then raises InvalidStateError there).
        # A pool passed in is not ours to stop: its running chunks are waited for.
        if self.on_abort is not None:
            await asyncio.to_thread(self.on_abort)
        if self.on_abort is not None or self.broken:
            await inflight.settle(seconds=10)

    def close(self) -> None:
        """Remove the shipped pipeline file."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


#: How long a broken pool's report waits for its workers' exit statuses at most (a
#: loaded machine may take over a second to reap them; the wait ends once known).
_EXIT_STATUS_WAIT_SECONDS = 5.0


def _exit_codes(processes: dict[int, Any]) -> str:
    """How the dead worker ended: its signal or exit status.

    The pool notices a death before the dead process is reaped, so this waits
    briefly (bounded) for the statuses. The pool stops the survivors of a broken
    pool itself, with SIGTERM: that status is left out when another is known.
    """
    import signal

    deadline = time.monotonic() + _EXIT_STATUS_WAIT_SECONDS
    while True:
        known = [_exitcode(p) for p in processes.values()]
        if None not in known or time.monotonic() >= deadline:
            break
        if any(code not in (None, 0, -signal.SIGTERM) for code in known):
            break  # the dead worker's own status: the others are being stopped
        time.sleep(0.01)
    codes = {code for code in known if code not in (None, 0)}
    if len(codes) > 1:
        codes.discard(-signal.SIGTERM)
    if not codes:
        return "exit status unknown"
    return "; ".join(_describe_exit(c) for c in sorted(codes))


def _exitcode(process: Any) -> int | None:
    try:
        code: int | None = process.exitcode
    except ValueError:  # closed: it ended long ago
        return 0
    return code


def _describe_exit(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


# --- in the worker process -------------------------------------------------------

#: The runners of maps this worker has run chunks of: token -> (shipped file, runner).
_RUNNERS: dict[str, tuple[str, ItemRunner]] = {}
_runners_lock = threading.Lock()
_releasing = False  # a thread drops the runners of finished maps
#: How often a worker holding runners looks for maps that have ended.
_RELEASE_POLL_SECONDS = 0.1


def _runner(token: str, path: str) -> ItemRunner:
    """The item runner of map ``token``: loaded from ``path`` once, kept while the map
    runs (see :func:`_release_finished_maps`)."""
    global _releasing
    with _runners_lock:
        entry = _RUNNERS.get(token)
    if entry is not None:
        return entry[1]
    with open(path, "rb") as file:
        runner: ItemRunner = pickle.load(file)
    runner.attach_local_runtime()
    with _runners_lock:
        if len(_RUNNERS) >= 4:  # maps running at once from one pool: keep a few
            _RUNNERS.pop(next(iter(_RUNNERS)))
        _RUNNERS[token] = (path, runner)
        if not _releasing:
            _releasing = True
            threading.Thread(
                target=_release_finished_maps, name="plait-map-release", daemon=True
            ).start()
    return runner


def _release_finished_maps() -> None:
    """In a worker: drop the runner of every map whose file the parent has removed (it
    does when the map ends), so an idle worker does not keep old broadcast inputs
    alive; stop once none is left."""
    global _releasing
    while True:
        time.sleep(_RELEASE_POLL_SECONDS)
        with _runners_lock:
            ended = [t for t, (path, _) in _RUNNERS.items() if not os.path.exists(path)]
            dropped = [_RUNNERS.pop(token) for token in ended]
            done = not _RUNNERS
            if done:
                _releasing = False
        del dropped  # freed here, outside the lock
        if done:
            return


def run_chunk(token: str, path: str, first: int, sent: bytes, stop_on_error: bool) -> Pickled:
    """Run consecutive items in a worker (see :func:`~plait.engine.local.items.run_items`)."""
    return run_sent(_runner(token, path), first, sent, stop_on_error)


def run_sent(runner: ItemRunner, first: int, sent: bytes, stop_on_error: bool) -> Pickled:
    """Run the pickled items ``sent``, the first of them item ``first``, in a worker.

    The reply is pickled here: an item whose outputs cannot be pickled becomes
    that item's error, with a note naming the output and its node, rather than a
    bare error for the whole chunk. It arrives as the plain reply.
    """
    items = unpickle_items(sent)
    reply = run_items(runner, first, items, stop_on_error=stop_on_error)
    try:
        return Pickled(bytes(ForkingPickler.dumps(reply)))
    except Exception:
        return Pickled(bytes(ForkingPickler.dumps(_sendable(runner, first, items, reply))))


def pickle_items(items: Sequence[tuple[Any, ...]]) -> bytes:
    """A chunk's items pickled as columns, a list of values per mapped input: a pickled
    tuple per item costs about ten times as much, on both ends."""
    if isinstance(items, OneInputItems):
        columns = [items.values]
    else:
        columns = [list(map(itemgetter(i), items)) for i in range(len(items[0]))]
    return bytes(ForkingPickler.dumps(columns))


def unpickle_items(sent: bytes) -> Sequence[tuple[Any, ...]]:
    """The items :func:`pickle_items` pickled (those of a map over one input, as its
    values: :class:`~plait.engine.request.OneInputItems`)."""
    columns = pickle.loads(sent)
    if len(columns) == 1:
        return OneInputItems(columns[0])
    return list(zip(*columns, strict=True))


class Pickled:
    """Bytes pickled already: unpickled, the object they hold."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self) -> tuple[Any, ...]:
        return (pickle.loads, (self.blob,))


def _sendable(
    runner: ItemRunner, first: int, items: Sequence[tuple[Any, ...]], reply: Reply
) -> Reply:
    """``reply`` with each item one of whose outputs cannot be pickled turned into that
    item's failure: the error of sending it back, with notes naming the output."""
    outputs, failures, _ = reply
    for offset, produced in enumerate(outputs):
        if produced is None:
            continue
        for name, value in produced.items():
            try:
                ForkingPickler.dumps(value)
            except Exception as exc:
                steps = runner.plan.steps
                producer = next((s.node.name for s in steps if name in s.node.outputs), "?")
                exc.add_note(unpicklable_note({name: value}, f"node {producer!r}", "output"))
                failures.append(failure(runner, first + offset, items[offset], exc))
                outputs[offset] = None
                break
    return reply
