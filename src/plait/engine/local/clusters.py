"""Maps on a cluster (Ray, Dask): the pipeline shipped once per map, items in chunks.

A :class:`ClusterExecutor` is a ``concurrent.futures.Executor`` over a cluster's
tasks (:class:`~plait.engine.local.ray_executor.RayExecutor`, :class:`DaskExecutor`
around a ``distributed.Client``), so it serves as a node executor like any other.
A map on one runs through :class:`ClusterLauncher`: the map's item runner is
cloudpickled once; a small one travels in each task, a large one is put on the
cluster once (``ray.put``, ``client.scatter(broadcast=True)``) and each task
carries a reference to it. Each task carries a chunk of consecutive items, and a
worker unpickles the runner once per map (:func:`run_shipped_chunk`). Items run through
:func:`~plait.engine.local.items.run_items` as in a local process pool: errors
come back as values with their tracebacks and plait's notes, callback events are
replayed here.

Chunks are sized to the round trip: once a reply says how long an item takes, a
chunk holds about :data:`ROUND_TRIPS_PER_CHUNK` round trips of work, never more
than a quarter of a worker's share of a map of known length (so work stays
balanced) nor :data:`MAX_CHUNK` items. Before that, a map of known length starts
at that quarter share; a stream of unknown length starts at :data:`FIRST_CHUNK`
items, doubling with each chunk, so its first results come soon. The window of
items in flight is sized from the cluster's CPUs, not this machine's.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import inspect
import math
import sys
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, InvalidStateError
from concurrent.futures import Future as JobFuture
from functools import partial
from time import monotonic, perf_counter
from typing import Any, TypeVar

import cloudpickle  # type: ignore[import-untyped]

from plait.engine.local.items import ItemRunner, Reply
from plait.engine.local.launchers import Chunk
from plait.engine.local.processes import ChunkLauncher, Pickled, run_sent
from plait.errors import WorkerDiedError

T = TypeVar("T")

#: Items per chunk, at most.
MAX_CHUNK = 4096
#: Items in the first chunks of a map, before any item's duration is known.
FIRST_CHUNK = 16
#: Work per chunk, in round trips: the round trip then costs about 5% of a chunk.
ROUND_TRIPS_PER_CHUNK = 20
#: A map's runner pickled smaller than this many bytes travels in each of its tasks
#: rather than once through the cluster's object store: a put and its fetch by each
#: worker cost a map about 5 ms on a local Ray (measured: 1.19× against 0.96× the
#: hand-written map), and both backends carry small arguments in the task itself.
SHIP_INLINE = 64 * 1024


class ClusterExecutor(Executor):
    """An executor whose calls run as tasks on a cluster, and what a map needs to know
    of that cluster.

    ``submit`` returns a ``concurrent.futures.Future`` that is never marked running:
    ``cancel()`` always succeeds until the task has finished, and cancels the task
    (one still queued never runs), unless the backend says a task of that function
    is not to be cancelled. A failed call's future holds the call's own exception,
    not the backend's wrapper of it. Backends say how a task starts, how it ends,
    and how it is cancelled.
    """

    #: The backend's name, for messages.
    backend = "cluster"
    #: Seconds one task's round trip (submit to result) costs on this backend.
    round_trip = 0.003
    #: Calls run in other processes (a node's process-scoped deps go by reference).
    other_processes = True
    #: Seconds a count of the cluster's CPUs is reused (counting asks the cluster's head).
    cpus_max_age = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: set[JobFuture[Any]] = set()
        self._shutdown = False
        self._cpus: tuple[int, float] | None = None  # (count, when counted)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> JobFuture[T]:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        task = self._start(fn, args, kwargs)
        future: JobFuture[T] = JobFuture()
        if not self._cancellable(fn):  # running from the start: waited for, never cancelled
            future.set_running_or_notify_cancel()
        with self._lock:
            self._futures.add(future)

        def finished(done: JobFuture[T]) -> None:
            with self._lock:
                self._futures.discard(done)
            if done.cancelled():
                self._cancel(task)

        future.add_done_callback(finished)
        self._when_done(task, partial(self._settle, future))
        return future

    def _settle(self, future: JobFuture[Any], outcome: Callable[[], Any]) -> None:
        """Give ``future`` its task's outcome (``outcome()`` returns or raises it)."""
        with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
            try:
                value = outcome()
            except BaseException as exc:
                error = self._unwrap(exc)
                if error is None:
                    future.cancel()
                else:
                    future.set_exception(error)
            else:
                future.set_result(value)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more tasks; ``cancel_futures`` cancels those not finished; ``wait`` waits
        for the rest."""
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
            futures = list(self._futures)
        if cancel_futures:
            for future in futures:
                future.cancel()
        if wait:
            concurrent.futures.wait(futures)
        self._stop()

    # --- what a backend provides ------------------------------------------------------

    def _start(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Start the task ``fn(*args, **kwargs)``; its handle."""
        raise NotImplementedError

    def _when_done(self, task: Any, settle: Callable[[Callable[[], Any]], None]) -> None:
        """Call ``settle(outcome)`` once ``task`` has ended; ``outcome()`` returns its value
        or raises its error."""
        raise NotImplementedError

    def _cancel(self, task: Any) -> None:
        raise NotImplementedError

    def _cancellable(self, fn: Callable[..., Any]) -> bool:
        """False when a task of ``fn`` is not to be cancelled: its future is marked
        running at once, so ``cancel()`` fails and whoever cancels waits for it."""
        return True

    def _unwrap(self, error: BaseException) -> BaseException | None:
        """The exception a failed task's future holds; None when it was cancelled."""
        return None if isinstance(error, concurrent.futures.CancelledError) else error

    def _stop(self) -> None:
        """After shutdown: release what this executor started."""

    def cpus(self) -> int:
        """How many tasks the cluster runs at once (counted again after
        :attr:`cpus_max_age` seconds: a cluster may grow or shrink)."""
        counted = self._cpus
        now = monotonic()
        if counted is None or now - counted[1] > self.cpus_max_age:
            counted = self._cpus = (self._count_cpus(), now)
        return counted[0]

    def _count_cpus(self) -> int:
        """Ask the cluster how many tasks it runs at once."""
        raise NotImplementedError

    def ship(self, blob: bytes) -> Any:
        """What a task is given to receive ``blob`` (a map's pickled runner): ``blob``
        itself when smaller than :data:`SHIP_INLINE` (it travels in each task),
        otherwise a handle of it, put on the cluster once."""
        return blob if len(blob) < SHIP_INLINE else self._put(blob)

    def _put(self, blob: bytes) -> Any:
        """Put ``blob`` on the cluster once; a task given the handle returned receives
        ``blob`` itself."""
        raise NotImplementedError

    def dead_worker(self, error: BaseException) -> bool:
        """True when a task failed with ``error`` because its worker died."""
        raise NotImplementedError


class ClusterLauncher(ChunkLauncher):
    """Submits chunks of a map's items to a :class:`ClusterExecutor`."""

    def __init__(
        self,
        runner: ItemRunner,
        executor: ClusterExecutor,
        stop_on_error: bool,
        size_hint: int | None,
    ) -> None:
        super().__init__(runner, stop_on_error)
        self.executor = executor
        self.workers = workers = max(1, executor.cpus())
        share = -(-size_hint // (workers * 4)) if size_hint else MAX_CHUNK
        self.largest = max(1, min(share, MAX_CHUNK))
        # A map of known length starts at its largest chunk (as few tasks as a
        # hand-written map would send); a stream starts small, so results come soon.
        self.chunk_size = self.largest if size_hint else min(self.largest, FIRST_CHUNK)
        #: Items in flight or waiting to be yielded in order: two chunks per worker (one
        #: runs while the next waits), or a whole map of at most four chunks per worker,
        #: sent at once as a hand-written map would (a second wave would wait a round
        #: trip for the first replies: ~1.5 ms on a local Ray, ~11 ms on Dask).
        self.window = 2 * workers * self.largest
        if size_hint and size_hint <= 4 * workers * self.largest:
            self.window = size_hint
        self.target = ROUND_TRIPS_PER_CHUNK * executor.round_trip  # seconds of work a chunk
        self.per_item: float | None = None  # seconds, smoothed over replies (None: none yet)
        blob = cloudpickle.dumps(runner.for_worker())
        self.shipped: Any = executor.ship(blob)
        # A worker keeps the runners it unpickled by what identifies them: a runner
        # that travels in each task by its bytes, so maps of the same pipeline and
        # inputs share one (unpickling it and compiling its loop cost a worker's first
        # chunk about 0.5 ms); one put on the cluster by this map's token.
        self.token = None if self.shipped is blob else uuid.uuid4().hex

    def submit(self, first: int, items: bytes) -> JobFuture[Any]:
        # One argument when the runner travels inline: a backend serializes each one
        # apart (on Ray, ~35 µs apiece). A runner put on the cluster comes as a second
        # one, which the backend resolves to its bytes (not when nested in another).
        stop = self.stop_on_error
        if self.token is None:
            job = self.executor.submit(run_shipped_chunk, (None, first, items, stop, self.shipped))
        else:
            chunk = (self.token, first, items, stop, None)
            job = self.executor.submit(run_shipped_chunk, chunk, self.shipped)
        if self.per_item is None:  # no duration known yet: grow, as TCP's slow start
            self.chunk_size = min(self.largest, 2 * self.chunk_size)
        return job

    def reply(self, value: Any, chunk: Chunk) -> Reply:
        reply, seconds = value
        per_item = seconds / len(chunk[1])
        smoothed = per_item if self.per_item is None else (self.per_item + per_item) / 2
        self.per_item = smoothed
        wanted = math.ceil(self.target / smoothed) if smoothed > 0 else self.largest
        self.chunk_size = max(1, min(wanted, self.largest))
        result: Reply = reply
        return result

    def died(self, error: Exception) -> WorkerDiedError | None:
        if not self.executor.dead_worker(error):
            return None
        return WorkerDiedError(
            f"a {self.executor.backend} worker died ({type(error).__name__}) while map items "
            f"{self.spans()} were in flight; one of them was running in it when it was killed "
            "or crashed (out of memory, a segfault in an extension, os._exit). Those items "
            "are lost."
        )

    def close(self) -> None:
        """Let the cluster free the shipped runner."""
        self.shipped = None


# --- on a worker of the cluster -----------------------------------------------------

#: The runners of maps this worker has run chunks of, newest last, by their map's token
#: or, for a runner sent in each task, by its bytes.
_RUNNERS: collections.OrderedDict[str | bytes, ItemRunner] = collections.OrderedDict()
_runners_lock = threading.Lock()
#: Maps whose runners a worker keeps at once (a map's runner holds its broadcast inputs).
_KEEP = 4


def run_shipped_chunk(
    chunk: tuple[str | None, int, bytes, bool, bytes | None], put: bytes | None = None
) -> tuple[Pickled, float]:
    """On a worker: run a chunk ``(token, first, sent, stop_on_error, runner)`` of a map;
    the reply, and the seconds its items took. ``runner`` is the map's pickled runner,
    sent with the chunk (``token`` None: the worker knows it by these bytes), or None
    when it was put on the cluster once: then it is ``put``, and ``token`` names it."""
    token, first, sent, stop_on_error, inline = chunk
    shipped = inline if token is None else put
    assert shipped is not None
    key = shipped if token is None else token
    with _runners_lock:
        runner = _RUNNERS.get(key)
        if runner is not None:
            _RUNNERS.move_to_end(key)
    if runner is None:
        runner = cloudpickle.loads(shipped)
        runner.attach_local_runtime()
        with _runners_lock:
            runner = _RUNNERS.setdefault(key, runner)
            while len(_RUNNERS) > _KEEP:
                _RUNNERS.popitem(last=False)
    start = perf_counter()  # the items' time, not the runner's first load
    reply = run_sent(runner, first, sent, stop_on_error)
    return reply, perf_counter() - start


# --- Dask ------------------------------------------------------------------------------


def dask_client(spec: object) -> Any:
    """``spec`` when it is a ``distributed.Client`` (without importing distributed)."""
    distributed = sys.modules.get("distributed")
    if distributed is not None and isinstance(spec, distributed.Client):
        return spec
    return None


class DaskExecutor(ClusterExecutor):
    """A ``distributed.Client`` as an executor: what ``LocalEngine`` makes of a client
    given as ``map_executor`` or ``node_executor``. The client stays the caller's:
    :meth:`shutdown` cancels or waits for this executor's tasks, never closes it."""

    backend = "Dask"
    round_trip = 0.02  # submit to result on a LocalCluster of processes: 11-20 ms

    def __init__(self, client: Any) -> None:
        super().__init__()
        self.client = client

    def _start(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.client.submit(fn, *args, pure=False, **kwargs)

    def _when_done(self, task: Any, settle: Callable[[Callable[[], Any]], None]) -> None:
        # On the client's event loop, as its own executor does (Future._result): the
        # results of many tasks are fetched at once. (A done-callback fetching each one
        # with result() runs them one after another on a single thread.)
        async def fetch() -> None:
            try:
                value = await task._result()
            except BaseException as exc:
                settle(partial(reraise, exc))
            else:
                settle(lambda: value)

        self.client.loop.add_callback(fetch)

    def _cancel(self, task: Any) -> None:
        cancelling = task.cancel()
        if inspect.isawaitable(cancelling):  # on the client's own loop: cancel() is async there
            self.client.loop.add_callback(_awaited, cancelling)

    def _count_cpus(self) -> int:
        return sum(self.client.nthreads().values()) or 1

    def _put(self, blob: bytes) -> Any:
        return self.client.scatter(blob, broadcast=True, hash=False)

    def dead_worker(self, error: BaseException) -> bool:
        return isinstance(error, sys.modules["distributed"].KilledWorker)

    def __repr__(self) -> str:
        return f"DaskExecutor({self.client!r})"


async def _awaited(awaitable: Any) -> None:
    await awaitable


def reraise(error: BaseException) -> Any:
    raise error
