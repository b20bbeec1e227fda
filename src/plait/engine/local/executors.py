"""Executors: the workers an engine runs sync nodes and map items on.

An executor only runs callables (``submit`` returns a ``Future``); it knows
nothing of pipelines. A string alias makes the engine create, own and shut down
the executor; an ``Executor`` instance is used as given and left open.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar

from plait._text import did_you_mean, quoted
from plait.engine.local.async_executor import AsyncExecutor
from plait.engine.local.clusters import ClusterExecutor, DaskExecutor, dask_client
from plait.errors import EngineError

T = TypeVar("T")

#: Aliases accepted for ``Engine(node_executor=...)``.
NODE_EXECUTORS = ("sequential", "async", "threaded", "parallel")
#: Aliases accepted for ``Engine(map_executor=...)``.
MAP_EXECUTORS = ("sequential", "async", "threaded", "parallel")

ExecutorSpec = str | Executor


def check_spec(spec: object, option: str, aliases: tuple[str, ...]) -> ExecutorSpec:
    """Validate an executor option: a known alias or an Executor instance (a
    ``distributed.Client`` becomes one: :class:`~plait.engine.local.clusters.DaskExecutor`)."""
    if isinstance(spec, Executor):
        return spec
    client = dask_client(spec)
    if client is not None:
        return DaskExecutor(client)
    if isinstance(spec, str) and spec in aliases:
        return spec
    if isinstance(spec, str):
        raise EngineError(
            f"unknown {option} {spec!r}.{did_you_mean(spec, aliases)} "
            f"Use one of {quoted(aliases)} or a concurrent.futures.Executor instance."
        )
    raise EngineError(
        f"{option} must be one of {quoted(aliases)} or a "
        f"concurrent.futures.Executor instance, got {type(spec).__name__}: {spec!r}"
    )


def create(spec: str, max_workers: int | None, role: str) -> Executor | None:
    """The executor an alias stands for; None means "no executor" (inline or tasks)."""
    if spec in ("sequential", "async"):
        return None
    if spec == "timed":  # internal: sync calls with a timeout
        return DaemonThreads(default_workers(max_workers), role)
    if spec == "threaded":
        return ThreadPoolExecutor(max_workers=default_workers(max_workers), thread_name_prefix=role)
    if spec == "parallel":
        # spawn, not fork: forking a process that runs threads (plait's portal, thread
        # pools, the user's) can deadlock the child on a lock held at fork time.
        # Workers watch their parent: none outlives it (see _watch_parent).
        return ProcessPoolExecutor(
            max_workers=default_workers(max_workers),
            mp_context=_SpawnContext(),
            initializer=_watch_parent,
        )
    raise AssertionError(f"unchecked executor alias {spec!r}")


def default_workers(max_workers: int | None) -> int:
    """``max_workers`` or the machine's CPU count."""
    return max_workers or os.cpu_count() or 1


def worker_count(executor: Executor, fallback: int | None) -> int:
    """How many jobs ``executor`` runs at once, as far as it tells."""
    if isinstance(executor, AsyncExecutor):
        return executor.max_concurrent
    if isinstance(executor, ClusterExecutor):
        return executor.cpus()
    count = getattr(executor, "_max_workers", None)
    return count if isinstance(count, int) and count > 0 else default_workers(fallback)


def terminate_pool(executor: ProcessPoolExecutor) -> None:
    """Stop a process pool now: terminate its workers; the pool fails their jobs."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(5)
    executor.shutdown(wait=False)


# --- spawning workers -------------------------------------------------------------

_main_lock = threading.Lock()


@contextlib.contextmanager
def _unrunnable_main_hidden() -> Iterator[None]:
    """While a worker is spawned: hide ``__main__.__file__`` when it names no file.

    A spawned worker runs the parent's main script (as ``__mp_main__``) before its
    first job. Code read from stdin has ``__file__ == "<stdin>"``, which the worker
    then fails to open and dies before doing anything; without ``__file__`` (as
    for ``python -c`` or a notebook) it starts with an empty main module instead.
    Plait's nodes from ``__main__`` travel by value, so they need none.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    named = getattr(getattr(main, "__spec__", None), "name", None)
    if main is None or not isinstance(path, str) or named is not None:
        yield
        return
    start_dir = getattr(multiprocessing.process, "ORIGINAL_DIR", None) or ""
    if os.path.isfile(os.path.join(start_dir, path)):
        yield
        return
    with _main_lock:
        del main.__file__
        try:
            yield
        finally:
            main.__file__ = path


class _SpawnProcess(multiprocessing.context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        with _unrunnable_main_hidden():
            return multiprocessing.context.SpawnProcess._Popen(process_obj)


class _SpawnContext(multiprocessing.context.SpawnContext):
    """The spawn start method, able to start workers from code read from stdin."""

    Process = _SpawnProcess


#: How often a worker checks that its parent is still there.
_PARENT_CHECK_SECONDS = 0.5


def _watch_parent() -> None:
    """In a worker of a pool plait creates: exit as soon as the parent process is gone.

    A SIGKILLed parent runs no cleanup, so nothing stops its workers: they would
    live on (reparented to init), idle or still computing, holding its stdout and
    stderr open. A daemon thread waits on the parent's sentinel (it becomes
    readable when the parent dies) and checks the parent pid, then ends the worker.
    """
    parent = multiprocessing.parent_process()
    ppid = os.getppid()

    def watch() -> None:
        while True:
            if parent is not None:
                parent.join(_PARENT_CHECK_SECONDS)  # returns at once when the parent dies
            else:
                time.sleep(_PARENT_CHECK_SECONDS)
            if os.getppid() != ppid or (parent is not None and not parent.is_alive()):
                os._exit(1)

    threading.Thread(target=watch, name="plait-parent-watch", daemon=True).start()


# --- threads that never hold up interpreter exit ------------------------------------


class DaemonThreads(Executor):
    """A thread pool for sync calls with a timeout: its threads never delay exit.

    A call whose timeout fired is abandoned (a thread cannot be stopped). If it
    never returns, a ``ThreadPoolExecutor`` thread would keep the interpreter from
    exiting (those threads are joined at exit). These are daemon threads, started
    as needed, at most ``max_workers`` busy with jobs someone waits for;
    :meth:`abandon` marks a job nobody waits for any more, and
    ``shutdown(wait=True)`` waits only for the others.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max_workers = max_workers
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._threads = 0  # started and not ended
        self._idle = 0  # waiting for a job
        self._queued = 0
        self._running: set[Future[Any]] = set()
        self._abandoned: set[Future[Any]] = set()
        self._shutdown = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._jobs.put((future, lambda: fn(*args, **kwargs)))
            self._queued += 1
            self._start_thread()
        return future

    def _start_thread(self) -> None:
        """With the lock held, for a newly queued job: an idle thread takes it, or a
        new thread starts (threads stuck in abandoned jobs do not count)."""
        if self._idle > 0:
            self._idle -= 1
        elif self._threads - len(self._abandoned) < self._max_workers:
            self._threads += 1
            name = f"{self._name}_{self._threads}"
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def abandon(self, future: Future[Any]) -> None:
        """Nobody waits for ``future`` any more: its thread is not counted, shutdown
        does not wait for it."""
        with self._lock:
            if future in self._running and future not in self._abandoned:
                self._abandoned.add(future)
                if self._queued > self._idle and not self._shutdown:
                    self._start_thread()  # a thread to replace the one stuck in it
                self._changed.notify_all()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, call = job
            with self._lock:
                self._queued -= 1
                self._running.add(future)
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(call())
                    except BaseException as exc:
                        future.set_exception(exc)
            finally:
                with self._lock:
                    self._running.discard(future)
                    self._abandoned.discard(future)
                    self._idle += 1
                    self._changed.notify_all()
            del job, future, call
        with self._lock:
            self._threads -= 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is not None:
                        self._queued -= 1
                        job[0].cancel()
            for _ in range(self._threads):
                self._jobs.put(None)
            if wait:
                self._changed.wait_for(
                    lambda: self._queued == 0 and self._running <= self._abandoned
                )
