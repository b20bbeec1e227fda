"""Per-node controls at run time: concurrency slots, rate limits, timeouts, retries.

Limits hold across every call of a node in one run or one map, including maps
whose items run on different threads' event loops, so the semaphore and the
rate limiter here are thread-safe and wake each waiter on its own loop. (Items
in other processes have limits of their own.)
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from concurrent.futures import Future as JobFuture
from typing import Any

from plait.bridge import portal
from plait.engine.local import executors
from plait.engine.local.calls import submit_call
from plait.engine.local.inflight import wait_all_deferring_cancel
from plait.engine.local.plan import Plan, Step
from plait.options import RateLimit

#: Called before each retry sleep: (step, attempt that failed, exception, delay seconds).
RetryHook = Callable[[Step, int, BaseException, float], None]


class Slots:
    """A counting semaphore usable from any thread's event loop."""

    def __init__(self, count: int) -> None:
        self._free = count
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            granted: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, granted))
        try:
            await granted
        except asyncio.CancelledError:
            with self._lock:
                if (loop, granted) in self._waiters:  # never granted: just leave the queue
                    self._waiters.remove((loop, granted))
                    raise
            if granted.done() and not granted.cancelled():
                self.release()  # granted, then cancelled before resuming: pass it on
            raise

    def release(self) -> None:
        with self._lock:
            if not self._waiters:
                self._free += 1
                return
            loop, granted = self._waiters.popleft()
        try:
            loop.call_soon_threadsafe(self._grant, granted)
        except RuntimeError:  # that loop is closed: its waiter is gone
            self.release()

    def _grant(self, granted: asyncio.Future[None]) -> None:
        if granted.done():  # cancelled meanwhile: the slot goes to the next waiter
            self.release()
        else:
            granted.set_result(None)


#: How often a waiter looks again when the start before its turn is itself late
#: (its loop, on another thread, is busy): rare, and never long.
_LATE_POLL = 0.005


class Rate:
    """At most ``limit.count`` call starts in any window of ``limit.period`` seconds.

    A sliding-window log: each start waits until the start ``count`` places before
    it is a full period old, so up to ``count`` calls start at once and no window
    of the period's length ever sees more. Waiters are served in arrival order,
    each sleeping only until its own turn (no herd waking on every start). A start
    is logged when it happens, not when it was due, so a waiter that woke late (a
    busy loop) pushes the ones after it back instead of crowding them.
    """

    def __init__(self, limit: RateLimit) -> None:
        self._period = limit.period
        #: The last ``count`` starts, each ``[time, started]``: when it started, or
        #: (until it does) when it is due; a time only ever moves later.
        self._log: deque[list[Any]] = deque(maxlen=limit.count)
        self._lock = threading.Lock()

    async def wait(self) -> None:
        period = self._period
        with self._lock:
            now = time.monotonic()
            log = self._log
            ahead = log[0] if len(log) == log.maxlen else None  # the start `count` back
            if ahead is None or (ahead[1] and ahead[0] + period <= now):
                log.append([now, True])
                return
            mine = [ahead[0] + period, False]
            log.append(mine)  # drops `ahead` from the log; this waiter keeps it
        try:
            while True:
                await asyncio.sleep(mine[0] - now)
                with self._lock:
                    now = time.monotonic()
                    if not ahead[1]:  # it is late itself: look again shortly
                        mine[0] = max(ahead[0] + period, now + _LATE_POLL)
                    elif now >= ahead[0] + period:
                        mine[0], mine[1] = now, True
                        return
                    else:  # woke early, or `ahead` started later than it was due
                        mine[0] = ahead[0] + period
        finally:
            if not mine[1]:  # cancelled: counted as a start when due (never one too many)
                with self._lock:
                    mine[1] = True


class NodeRuntime:
    """What controlled steps share across one run or map: limits and executors."""

    __slots__ = ("executors", "rates", "slots", "threads")

    def __init__(
        self,
        plan: Plan,
        executors: Sequence[Executor | None],
        threads: Callable[[], Executor],
    ) -> None:
        options = [step.node.options for step in plan.steps]
        self.slots = tuple(Slots(o.max_concurrent) if o.max_concurrent else None for o in options)
        self.rates = tuple(Rate(o.rate_limit) if o.rate_limit else None for o in options)
        self.executors = tuple(executors)
        #: Daemon threads for sync nodes with a timeout and no executor of their own.
        self.threads = threads


_worker_pools: dict[str, Executor] = {}
_worker_lock = threading.Lock()


def worker_runtime(plan: Plan) -> NodeRuntime | None:
    """Node limits for a plan shipped to a worker process, with executors of that process
    (limits do not span processes): plain nodes inline, ``"threaded"`` ones and sync
    nodes with a timeout on a thread pool, ``"parallel"`` ones on a process pool."""
    if not plan.has_controls:
        return None

    def pool(kind: str) -> Executor:
        with _worker_lock:
            if kind not in _worker_pools:
                created = executors.create(kind, None, f"plait-worker-{kind}")
                assert created is not None
                _worker_pools[kind] = created
            return _worker_pools[kind]

    def executor_for(spec: str | Executor | None) -> Executor | None:
        if isinstance(spec, Executor):
            return spec
        return pool(spec) if spec in ("threaded", "parallel") else None

    def executor_for_step(step: Step) -> Executor | None:
        spec = step.node.options.executor
        if timed_on_threads(step) and spec in (None, "threaded"):
            return None  # on the runtime's daemon threads (executors.DaemonThreads)
        return executor_for(spec)

    chosen = [executor_for_step(step) for step in plan.steps]
    return NodeRuntime(plan, chosen, lambda: pool("timed"))


def timed_on_threads(step: Step) -> bool:
    """A sync node with a timeout: on threads of this process, it runs on daemon threads
    (:class:`~plait.engine.local.executors.DaemonThreads`), so that a call abandoned
    when its timeout fired cannot keep the process from exiting."""
    return step.node.options.timeout is not None and not step.is_async


async def call_controlled(
    step: Step,
    index: int,
    values: list[Any],
    runtime: NodeRuntime,
    on_retry: RetryHook | None = None,
) -> Any:
    """One node call with its slot, rate limit, timeout and retries; ``on_retry`` is
    told of each retry before its wait."""
    options = step.node.options
    slots, rate = runtime.slots[index], runtime.rates[index]
    attempt = 0
    while True:
        attempt += 1
        try:
            if slots is not None:
                await slots.acquire()
            try:
                if rate is not None:
                    await rate.wait()
                return await _attempt(step, index, values, runtime, options.timeout)
            finally:
                if slots is not None:
                    slots.release()
        except options.retry_on as exc:
            if attempt > options.retries:
                raise
            delay = options.delay(attempt, exc, random.random())
            if on_retry is not None:
                on_retry(step, attempt, exc, delay)
            await asyncio.sleep(delay)


async def _attempt(
    step: Step, index: int, values: list[Any], runtime: NodeRuntime, limit: float | None
) -> Any:
    args, kwargs = step.args(values), step.kwargs(values)
    if step.is_async:
        if limit is None:
            return await step.func(*args, **kwargs)
        try:
            async with asyncio.timeout(limit):
                return await step.func(*args, **kwargs)
        except TimeoutError:
            raise TimeoutError(
                f"node {step.node.name!r} timed out after {limit:g} s (it was cancelled)"
            ) from None
    executor = runtime.executors[index]
    if executor is None and limit is not None:
        executor = runtime.threads()
    if executor is None:  # inline, through the portal (see plait.bridge.portal)
        result = portal.call(step.func, *args, **kwargs)
        return await result.finish() if type(result) is portal.Suspended else result
    return await await_job(submit_call(executor, step, args, kwargs), step, limit, executor)


async def await_job(
    job: JobFuture[Any], step: Step, limit: float | None, executor: Executor
) -> Any:
    """Await an executor job. If cancelled, cancel it or wait for it to finish.

    On timeout the job is abandoned: a running thread cannot be stopped, so it
    runs to the end and its late result is discarded; on daemon threads it does
    not hold up shutdown or interpreter exit.
    """
    future = asyncio.wrap_future(job)
    try:
        if limit is None:
            return await asyncio.shield(future)
        done, _ = await asyncio.wait({future}, timeout=limit)
        if not done:
            job.cancel()
            if isinstance(executor, executors.DaemonThreads):
                executor.abandon(job)
            future.add_done_callback(_discard)
            raise TimeoutError(
                f"node {step.node.name!r} timed out after {limit:g} s; a sync call on a thread "
                "cannot be stopped, so it runs to its end and its result is discarded"
            )
        return future.result()
    except asyncio.CancelledError:
        if not job.cancel() and not job.done():
            # Running on a thread: nothing may outlive the run.
            await wait_all_deferring_cancel({future})
        raise


def _discard(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a late failure is not logged as unretrieved
