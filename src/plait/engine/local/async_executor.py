"""AsyncExecutor: a concurrent.futures.Executor that runs work on an event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import itertools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from plait._inspect import is_async_callable
from plait.bridge import LoopThread
from plait.errors import EngineError

T = TypeVar("T")

_names = itertools.count(1)


class AsyncExecutor(concurrent.futures.Executor):
    """Runs sync or async callables on a background event loop, at most N at once.

    ``submit`` returns a ``concurrent.futures.Future`` and can be called from any
    thread, including inside a running event loop (a notebook): the work runs on
    the executor's own loop thread. Async callables run as tasks on that loop;
    sync callables run on the loop's default thread pool so they never block it.
    Each job sees the contextvars of the code that submitted it.

        >>> with AsyncExecutor(max_concurrent=100) as ex:  # doctest: +SKIP
        ...     answers = list(ex.map(ask_llm, prompts))

    ``Future.cancel()`` stops a job that has not started; ``shutdown(cancel_futures=True)``
    also cancels running async jobs.
    """

    def __init__(self, max_concurrent: int = 10) -> None:
        if not isinstance(max_concurrent, int) or isinstance(max_concurrent, bool):
            raise EngineError(f"max_concurrent must be a positive int, got {max_concurrent!r}")
        if max_concurrent < 1:
            raise EngineError(f"max_concurrent must be a positive int, got {max_concurrent!r}")
        self.max_concurrent = max_concurrent
        self._thread = LoopThread(f"plait-async-executor-{next(_names)}")
        self._slots = asyncio.Semaphore(max_concurrent)
        # Futures change state only on the loop thread (plus a caller's cancel()),
        # which keeps set_running_or_notify_cancel() to exactly one call each.
        self._jobs: dict[concurrent.futures.Future[Any], asyncio.Task[None]] = {}
        self._notified: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Schedule ``fn(*args, **kwargs)``; return a Future of its result."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        ctx = contextvars.copy_context()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
            self._thread.loop.call_soon_threadsafe(self._start, future, fn, args, kwargs, ctx)
        return future

    def _start(
        self,
        future: concurrent.futures.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ctx: contextvars.Context,
    ) -> None:
        task = self._thread.loop.create_task(self._run(future, fn, args, kwargs), context=ctx)
        self._jobs[future] = task
        task.add_done_callback(lambda _: self._finish(future))

    async def _run(
        self,
        future: concurrent.futures.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        async with self._slots:
            self._notified.add(future)
            if not future.set_running_or_notify_cancel():
                return  # cancelled while queued
            try:
                if is_async_callable(fn):
                    result = await fn(*args, **kwargs)
                else:  # on a thread, in a copy of this task's context
                    result = await asyncio.to_thread(fn, *args, **kwargs)
            except asyncio.CancelledError:
                future.set_exception(concurrent.futures.CancelledError())
                raise
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def _finish(self, future: concurrent.futures.Future[Any]) -> None:
        """On the loop: a job's task is done; a future it never started is cancelled."""
        self._jobs.pop(future, None)
        if future not in self._notified:
            future.cancel()
            future.set_running_or_notify_cancel()
        self._notified.discard(future)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; optionally cancel what is queued or running; wait; stop."""
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        if cancel_futures:
            self._thread.loop.call_soon_threadsafe(self._cancel_all)
        if wait:
            self._stop_when_idle()
        else:
            threading.Thread(target=self._stop_when_idle, daemon=True).start()

    def _cancel_all(self) -> None:
        for task in list(self._jobs.values()):
            task.cancel()

    def _stop_when_idle(self) -> None:
        async def idle() -> None:
            while self._jobs:
                await asyncio.wait(list(self._jobs.values()))

        asyncio.run_coroutine_threadsafe(idle(), self._thread.loop).result()
        self._thread.stop()
