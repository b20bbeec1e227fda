"""Run a coroutine to completion from sync code, wherever that code runs.

``run_sync`` picks one of three loops:

* **No loop running in this thread** (a script, a worker thread): the thread's
  own persistent event loop (an ``asyncio.Runner`` kept per thread). Objects
  that nodes bind to the loop, such as an HTTP client cached in a module
  global, stay usable across calls from the same thread; Ctrl-C in the main
  thread cancels the work cleanly and raises ``KeyboardInterrupt``.
* **A loop is running in this thread** (Jupyter, an async function, a sync node
  called from a loop): the shared *portal* loop, one background thread that
  stays up for the life of the process. The calling thread blocks until the
  work is done, so its own loop is paused meanwhile; a ``RunningLoopWarning``
  says so once. ``await`` the async form instead to keep that loop running.
* **Called from a portal loop itself** (a nested sync call inside work that is
  already on the portal): the next portal, one per nesting depth, so it never
  deadlocks and each depth keeps its loop-bound objects.

The caller's contextvars are visible inside the coroutine in every case.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import os
import threading
import warnings
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from plait.errors import RunningLoopWarning

T = TypeVar("T")

_thread_state = threading.local()
_portal_lock = threading.Lock()
_portals: list[LoopThread] = []  # _portals[k + 1] serves sync calls made on _portals[k]
_warned_running_loop = False
#: How often a blocked sync call inside a running loop checks for cancellation.
_CANCEL_POLL_SECONDS = 0.05


def run_sync(coro: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
    """Run ``coro`` to completion and return its result, from any sync context.

    Works in a script, in a worker thread, and inside a running event loop
    (without nest_asyncio): see the module docstring for which loop runs it.
    ``timeout`` (seconds) cancels the coroutine and raises ``TimeoutError``.
    """
    return _run_sync(coro, timeout=timeout, stacklevel=3)


def drive_inline(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends, without any event loop.

    plait's scheduler does not suspend when every node is a plain sync call, so
    such runs skip the event loop entirely. Raises RuntimeError (after closing
    the coroutine) if it does suspend.
    """
    ctx = contextvars.copy_context()
    try:
        ctx.run(coro.send, None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    coro.close()
    raise RuntimeError("plait internal error: an inline run tried to suspend")


def _run_sync(coro: Coroutine[Any, Any, T], *, timeout: float | None, stacklevel: int) -> T:
    """run_sync with the warning's ``stacklevel`` counted from this function's caller."""
    if timeout is not None:
        coro = _with_timeout(coro, timeout)
    ctx = contextvars.copy_context()
    if (owner := _delegate_loop()) is not None:
        return _run_delegated(owner, coro, ctx)
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return _thread_runner().run(coro, context=ctx)
    _warn_running_loop(stacklevel + 1)  # + this frame
    return _portal_for(running).run(coro, ctx)


async def _with_timeout(coro: Coroutine[Any, Any, T], seconds: float) -> T:
    async with asyncio.timeout(seconds):
        return await coro


def _warn_running_loop(stacklevel: int) -> None:
    global _warned_running_loop
    if _warned_running_loop:
        return
    _warned_running_loop = True
    warnings.warn(
        "a sync plait call (run, run_sync ...) was made inside a running event loop; it "
        "runs on a background loop and blocks this one until it finishes. In async code "
        "(a Jupyter cell, an async def) use the async form instead: await pipeline.arun(...)",
        RunningLoopWarning,
        stacklevel=stacklevel,
    )


class _RunnerHolder:
    """Keeps a thread's Runner and closes it when the thread's locals are cleared."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()

    def __del__(self) -> None:
        # Fails harmlessly at interpreter shutdown or with another loop running here.
        with contextlib.suppress(Exception):
            self.runner.close()


def _thread_runner() -> asyncio.Runner:
    holder: _RunnerHolder | None = getattr(_thread_state, "holder", None)
    if holder is None:
        holder = _thread_state.holder = _RunnerHolder()
        if threading.current_thread() is threading.main_thread():
            atexit.register(holder.runner.close)
    return holder.runner


class LoopThread:
    """An event loop running forever in a daemon thread; coroutines are submitted to it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(started,), name=name, daemon=True)
        self.thread.start()
        started.wait()

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], ctx: contextvars.Context) -> T:
        """Run ``coro`` on this loop in ``ctx``; block the calling thread until done.

        If the wait is interrupted (Ctrl-C), or the task of the calling loop is
        asked to cancel (``asyncio.run``'s Ctrl-C handler does that, and cannot
        interrupt a blocked thread), the task is cancelled and awaited before
        the interruption propagates.
        """
        outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
        task_box: list[asyncio.Task[T]] = []

        def start() -> None:
            task = self.loop.create_task(coro, context=ctx)
            task_box.append(task)
            task.add_done_callback(lambda t: _copy_outcome(t, outcome))

        self.loop.call_soon_threadsafe(start)
        caller = _current_task()
        try:
            while caller is not None and not outcome.done():
                concurrent.futures.wait([outcome], timeout=_CANCEL_POLL_SECONDS)
                if caller.cancelling():
                    raise asyncio.CancelledError
            return outcome.result()
        except BaseException:
            if not outcome.done():
                self.loop.call_soon_threadsafe(lambda: task_box[0].cancel())
                concurrent.futures.wait([outcome])
            raise

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _copy_outcome(task: asyncio.Task[T], outcome: concurrent.futures.Future[T]) -> None:
    if task.cancelled():
        outcome.set_exception(asyncio.CancelledError())
    elif (exc := task.exception()) is not None:
        outcome.set_exception(exc)
    else:
        outcome.set_result(task.result())


def _forget_loops_after_fork() -> None:
    """In a forked child, start afresh: the parent's loops are not ours to use or close.

    A copied loop shares its selector (epoll) with the parent, and the portal's
    thread does not exist in the child. Closing them here would touch the
    parent's selector, so the child keeps them unreachable but never closes them.
    """
    global _thread_state, _portals, _portal_lock
    _abandoned_after_fork.append((_thread_state, _portals))
    _thread_state = threading.local()
    _portals = []
    _portal_lock = threading.Lock()


_abandoned_after_fork: list[object] = []
os.register_at_fork(after_in_child=_forget_loops_after_fork)


def _portal_for(running: asyncio.AbstractEventLoop) -> LoopThread:
    """The portal a sync call made on loop ``running`` goes to: never ``running`` itself."""
    with _portal_lock:
        depth = next((k + 1 for k, p in enumerate(_portals) if p.loop is running), 0)
        while len(_portals) <= depth:
            portal = LoopThread(f"plait-portal-{len(_portals)}")
            atexit.register(portal.stop)
            _portals.append(portal)
        return _portals[depth]


# --- Delegation: sync code on a worker thread runs its coroutines on its owner's loop ---

_delegate_state = threading.local()


@contextlib.contextmanager
def delegate_to(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """While active in this thread, sync plait calls run their coroutine on ``loop``.

    For a worker thread that runs sync code on behalf of code on ``loop`` (an
    ``AsyncSession`` cell): ``run_sync``, ``pipeline.run`` ... schedule the
    coroutine on ``loop`` with the caller's contextvars and block only this
    thread, so ``loop`` keeps running its other tasks and loop-bound objects
    stay usable. A ``KeyboardInterrupt`` or timeout in the waiting thread
    cancels the coroutine and waits for it to finish. Ignored by code running
    on a loop in this thread itself; a sync call made while ``loop`` is not
    running raises RuntimeError.
    """
    previous = getattr(_delegate_state, "loop", None)
    _delegate_state.loop = loop
    try:
        yield
    finally:
        _delegate_state.loop = previous


def _delegate_loop() -> asyncio.AbstractEventLoop | None:
    loop: asyncio.AbstractEventLoop | None = getattr(_delegate_state, "loop", None)
    if loop is None or asyncio._get_running_loop() is not None:
        return None  # code on a loop in this thread: the usual rules apply
    return loop


def _run_delegated(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], ctx: contextvars.Context
) -> T:
    if loop.is_closed() or not loop.is_running():
        coro.close()
        raise RuntimeError(
            "delegate_to(): the loop run_sync delegates to is not running; "
            "leave the delegate_to() block before that loop stops"
        )
    outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
    task_box: list[asyncio.Task[T]] = []

    def start() -> None:
        task = loop.create_task(coro, context=ctx)
        task_box.append(task)
        task.add_done_callback(lambda t: _copy_outcome(t, outcome))

    def cancel() -> None:
        task_box[0].cancel()  # start() ran first: callbacks run in FIFO order

    loop.call_soon_threadsafe(start)
    try:
        # Short waits: an asynchronous KeyboardInterrupt (AsyncSession.interrupt)
        # is only delivered between bytecodes, not inside one long wait.
        while not outcome.done():
            concurrent.futures.wait([outcome], timeout=_CANCEL_POLL_SECONDS)
            if loop.is_closed():
                raise RuntimeError("the event loop this call was delegated to was closed")
        return outcome.result()
    except BaseException:
        if not outcome.done() and not loop.is_closed():
            loop.call_soon_threadsafe(cancel)
            while not outcome.done() and not loop.is_closed():
                concurrent.futures.wait([outcome], timeout=_CANCEL_POLL_SECONDS)
        raise


def _forget_delegate_after_fork() -> None:
    global _delegate_state
    _delegate_state = threading.local()


os.register_at_fork(after_in_child=_forget_delegate_after_fork)
