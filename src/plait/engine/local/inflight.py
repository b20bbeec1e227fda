"""InFlight: the futures one run (or map) has started, and how to finish them all.

The scheduler and the map both keep a set of in-flight tasks and executor jobs,
wake when any of them completes, and on failure cancel the rest and wait until
every one has finished. This class is that bookkeeping, O(1) per completion.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections import deque
from typing import Any, Generic, TypeVar

K = TypeVar("K")


class InFlight(Generic[K]):
    """Futures keyed by what they compute (a node index, an item index)."""

    __slots__ = ("_done", "_futures", "_jobs", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._futures: dict[asyncio.Future[Any], K] = {}
        self._jobs: dict[asyncio.Future[Any], concurrent.futures.Future[Any]] = {}
        self._done: deque[asyncio.Future[Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._futures)

    def start_task(self, coro: Any, key: K, name: str | None = None) -> None:
        """Run ``coro`` as a task on the loop.

        The task reports its own end, in its last step: a done-callback would run
        one loop iteration later and wake the waiter one iteration after that, so
        a map's next items would start two iterations after the last ones ended.
        Only :meth:`cancel_all` may cancel these tasks (a task cancelled before
        its first step never reports).
        """
        self._futures[self._loop.create_task(self._reporting(coro), name=name)] = key

    async def _reporting(self, coro: Any) -> Any:
        try:
            return await coro
        finally:  # the task is done as soon as this returns, before the waiter wakes
            self._on_done(asyncio.current_task(self._loop))  # type: ignore[arg-type]

    def add_job(self, job: concurrent.futures.Future[Any], key: K) -> None:
        """Track an executor job (a ``concurrent.futures.Future``)."""
        future = asyncio.wrap_future(job, loop=self._loop)
        self._jobs[future] = job
        self._track(future, key)

    def _track(self, future: asyncio.Future[Any], key: K) -> None:
        self._futures[future] = key
        future.add_done_callback(self._on_done)

    def _on_done(self, future: asyncio.Future[Any]) -> None:
        self._done.append(future)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_any(self) -> None:
        """Wait until at least one tracked future has completed."""
        while not self._done:
            self._waiter = self._loop.create_future()
            await self._waiter

    def pop_done(self) -> tuple[asyncio.Future[Any], K] | None:
        """One completed future and its key, or None when none is waiting."""
        if not self._done:
            return None
        future = self._done.popleft()
        self._jobs.pop(future, None)
        return future, self._futures.pop(future)

    async def settle(self, seconds: float) -> None:
        """Wait (at most ``seconds``) for everything in flight to finish by itself."""
        if self._futures:
            await asyncio.wait(set(self._futures), timeout=seconds)

    async def cancel_all(self) -> None:
        """Cancel everything in flight and wait until all of it has finished.

        A job already running on a thread cannot be stopped; it is waited for, so
        nothing outlives its owner. A further cancellation of the caller during
        this wait is deferred until the wait is over, then re-raised.
        """
        if not self._futures:
            return
        for future in self._futures:
            job = self._jobs.get(future)
            if job is not None:
                job.cancel()  # a queued job never starts; a running one finishes
            else:
                _close_unstarted(future)
                future.cancel()
        try:
            await wait_all_deferring_cancel(set(self._futures))
        finally:
            self._futures.clear()
            self._jobs.clear()
            self._done.clear()


def _close_unstarted(task: asyncio.Future[Any]) -> None:
    """Close the coroutine a task of :meth:`InFlight.start_task` wraps if the task has
    not taken its first step: cancelled now, it never will, and the coroutine would
    be reported as never awaited."""
    wrapper = task.get_coro()  # type: ignore[attr-defined]
    if inspect.getcoroutinestate(wrapper) == inspect.CORO_CREATED:
        wrapper.cr_frame.f_locals["coro"].close()


async def wait_all_deferring_cancel(futures: set[asyncio.Future[Any]]) -> None:
    """Wait until every future is done, retrieving their exceptions.

    A cancellation of the caller meanwhile is deferred until the wait is over,
    then re-raised: cleanup that must finish (a thread job, a cancelled task's
    ``finally``) is never abandoned halfway.
    """
    pending = futures
    cancelled: asyncio.CancelledError | None = None
    while pending:
        try:
            _, pending = await asyncio.wait(pending)
        except asyncio.CancelledError as exc:
            cancelled = exc
    for future in futures:
        if not future.cancelled():
            future.exception()  # retrieved: no "exception was never retrieved"
    if cancelled is not None:
        raise cancelled
