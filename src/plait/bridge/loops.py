"""Run a coroutine (or any awaitable) to completion from sync code, wherever that code runs.

``run_sync`` picks the first rule that applies:

* **Sync code that plait runs on its loop** (a sync node called inline by the
  scheduler): the *greenlet portal* (:mod:`plait.bridge.portal`). The sync code is
  suspended, the coroutine that called it awaits the work on that same loop,
  and the loop's other tasks keep running. Loop-bound objects of that loop work.
* **A thread delegating to a loop** (:func:`delegate_to`, as a kernel does for a
  sync cell run on a worker thread): the work runs on that loop; only this
  thread blocks.
* **No loop running in this thread** (a script, a worker thread): the thread's
  own persistent event loop (an ``asyncio.Runner`` kept per thread). Objects
  that nodes bind to the loop, such as an HTTP client cached in a module
  global, stay usable across calls from the same thread; Ctrl-C in the main
  thread cancels the work cleanly and raises ``KeyboardInterrupt``.
* **A loop is running in this thread** (Jupyter, an async function calling sync
  code): the shared *portal* loop, one background thread that stays up for the
  life of the process. The calling thread blocks until the work is done, so its
  own loop is paused meanwhile; a ``RunningLoopWarning`` says so once.
  ``await`` the async form instead to keep that loop running.
* **Called from a portal loop itself** (a nested sync call inside work that is
  already on the portal): the next portal, one per nesting depth, so it never
  deadlocks and each depth keeps its loop-bound objects.

The caller's contextvars are visible inside the awaited work in every case.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import os
import selectors
import signal
import threading
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from types import CoroutineType
from typing import Any, ParamSpec, TypeVar

from plait._inspect import is_async_callable
from plait.bridge import portal
from plait.bridge.inline import is_loop_optional, resume, start_inline
from plait.errors import RunningLoopWarning

T = TypeVar("T")
P = ParamSpec("P")

_thread_state = threading.local()
_portal_lock = threading.Lock()
_portals: list[LoopThread] = []  # _portals[k + 1] serves sync calls made on _portals[k]
_warned_running_loop = False
#: How often a blocked sync call inside a running loop checks for cancellation.
_CANCEL_POLL_SECONDS = 0.05


def run_sync(awaitable: Awaitable[T], *, timeout: float | None = None) -> T:
    """Await ``awaitable`` to completion and return its result, from any sync context.

    Takes a coroutine, a task or future of the loop that will run it, or any
    object with ``__await__``. Works in a script, in a worker thread, inside a
    running event loop (without nest_asyncio) and in sync code plait runs on its
    loop: see the module docstring for which loop runs it. ``timeout`` (seconds)
    cancels the work and raises ``TimeoutError``; so does Ctrl-C, raising
    ``KeyboardInterrupt`` once the work has been cancelled.
    """
    return block_on(awaitable, timeout=timeout, stacklevel=3)


def syncify(async_fn: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """A sync function calling ``async_fn`` through :func:`run_sync`.

    >>> @syncify
    ... async def fetch(url): ...
    >>> fetch("https://example.org")  # doctest: +SKIP
    """
    if not callable(async_fn) or not is_async_callable(async_fn):
        kind = "a sync function" if callable(async_fn) else type(async_fn).__name__
        raise TypeError(
            f"syncify() takes an async function (async def), got {kind}: {async_fn!r}; "
            "a sync function can be called as it is"
        )

    @functools.wraps(async_fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        return block_on(async_fn(*args, **kwargs), stacklevel=3)

    return call


def block_on(awaitable: Awaitable[T], *, timeout: float | None = None, stacklevel: int = 2) -> T:
    """:func:`run_sync`, with the ``RunningLoopWarning``'s ``stacklevel`` counted from
    this function's caller (plait's sync entry points pass their own).

    A coroutine of a :func:`~plait.bridge.inline.loop_optional` function is first
    driven without any loop, and handed to one (below) only if it asks for one.
    """
    coro = _as_coroutine(awaitable)
    ctx = contextvars.copy_context()
    if timeout is None and is_loop_optional(coro):
        done, result = start_inline(coro, ctx)
        if done:
            return result  # type: ignore[no-any-return]
        coro = resume(coro)  # it waits at ensure_loop: a loop continues it
    if timeout is not None:
        coro = _with_timeout(coro, timeout, _awaited_name(awaitable))
    if portal.in_worker():
        return portal.wait(coro)
    running = asyncio._get_running_loop()
    if running is None:
        delegation: Delegation | None = getattr(_thread_state, "delegation", None)
        if delegation is not None:
            return delegation.run(coro, ctx)
        return _run_on_thread_loop(_thread_runner(), coro, ctx)
    _warn_running_loop(stacklevel + 1)  # + this frame
    with _dropping_closed_fds(running):
        return _portal_for(running).run(coro, ctx)


@contextlib.contextmanager
def _dropping_closed_fds(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Drop what the work, on another loop, left registered on ``loop``'s selector for
    a file descriptor it has since closed.

    Work run on the portal can call methods of the blocked caller's loop through an
    object bound to it (an aiohttp session made in an earlier Jupyter cell):
    ``loop.sock_connect`` registers a writer there, the await fails ("attached to a
    different loop"), the socket is closed, and the registration stays. The next
    socket given that fd number on ``loop`` then never sees its connection complete
    (the selector thinks it is registered already): httpx's ConnectTimeout.
    """
    selector = getattr(loop, "_selector", None)  # selector event loops only
    if selector is None:
        yield
        return
    own = getattr(selector, "_fd_to_key", None)  # the selectors module's own dict
    registered: Mapping[int, selectors.SelectorKey] = (
        own if isinstance(own, dict) else selector.get_map()
    )
    before = dict(registered)
    try:
        yield
    finally:
        if registered != before:  # values compare by identity first: cheap when unchanged
            _drop_closed(loop, registered, before)


def _drop_closed(
    loop: asyncio.AbstractEventLoop,
    registered: Mapping[int, selectors.SelectorKey],
    before: dict[int, selectors.SelectorKey],
) -> None:
    """Unregister from ``loop`` what was registered on it since ``before``: every new fd
    (``loop`` was blocked, so only work on other threads, wrongly, could have added it,
    and by now the fd number may even belong to another file), and changed ones that
    are closed."""
    for fd, key in list(registered.items()):
        previous = before.get(fd)
        if previous is key:
            continue
        if previous is not None and _is_open(fd):  # an existing registration, still in use
            continue
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            if key.events & selectors.EVENT_READ:
                loop.remove_reader(fd)
            if key.events & selectors.EVENT_WRITE:
                loop.remove_writer(fd)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _as_coroutine(awaitable: Awaitable[T]) -> Coroutine[Any, Any, T]:
    """A coroutine awaiting ``awaitable``; a clear TypeError for anything else."""
    if type(awaitable) is CoroutineType:
        return awaitable
    given: object = awaitable
    if inspect.isawaitable(given):
        return _await(awaitable)
    if callable(given) and inspect.iscoroutinefunction(given):
        hint = f"call it: run_sync({getattr(given, '__name__', 'fn')}(...))"
    else:
        hint = "pass a coroutine (the result of calling an async function), a task or a future"
    raise TypeError(f"run_sync() needs an awaitable, got {type(given).__name__}; {hint}")


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _with_timeout(coro: Coroutine[Any, Any, T], seconds: float, what: str) -> T:
    """Await ``coro``, cancelling it after ``seconds``; the TimeoutError says what and when.

    A TimeoutError the work raises itself passes through unchanged.
    """
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            return await coro
    except TimeoutError:
        if not deadline.expired():
            raise
        raise TimeoutError(
            f"run_sync(): {what} did not finish within timeout={seconds:g} s and was cancelled"
        ) from None


def _awaited_name(awaitable: object) -> str:
    """How a timeout message names what was awaited: ``fetch()``, or the object's type."""
    name = getattr(awaitable, "__qualname__", None)
    if type(awaitable) is CoroutineType and isinstance(name, str):
        return f"{name}()"
    return type(awaitable).__name__


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


def _run_on_thread_loop(
    runner: asyncio.Runner, coro: Coroutine[Any, Any, T], ctx: contextvars.Context
) -> T:
    """``runner.run(coro, context=ctx)``, with a SIGINT handler that is cheap to swap.

    ``Runner.run`` installs a ``functools.partial`` as the handler, and the
    ``signal`` module formats its repr (the task's) on every swap, which costs
    about 0.1 ms per call. The behaviour is Runner.run's: the first Ctrl-C cancels
    the task and raises KeyboardInterrupt once it has finished; a second one
    raises at once.
    """
    if threading.current_thread() is not threading.main_thread():
        return runner.run(coro, context=ctx)  # no signal handling off the main thread
    loop = runner.get_loop()
    task = loop.create_task(coro, context=ctx)
    handler: _Sigint | None = None
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        handler = _Sigint(loop, task)
        try:
            signal.signal(signal.SIGINT, handler)
        except ValueError:  # pragma: no cover - not the main interpreter
            handler = None
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        if handler is not None and handler.count > 0 and task.uncancel() == 0:
            raise KeyboardInterrupt from None
        raise
    finally:
        if handler is not None and signal.getsignal(signal.SIGINT) is handler:
            signal.signal(signal.SIGINT, signal.default_int_handler)


class _Sigint:
    """A SIGINT handler cancelling one task; its repr is cheap (see _run_on_thread_loop)."""

    __slots__ = ("count", "loop", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        self.loop = loop
        self.task = task
        self.count = 0

    def __call__(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count == 1 and not self.task.done():
            self.task.cancel()
            self.loop.call_soon_threadsafe(lambda: None)  # wake a loop blocked in select()
            return
        raise KeyboardInterrupt

    def __repr__(self) -> str:
        return "<plait SIGINT handler>"


class _RunnerHolder:
    """Keeps a thread's Runner; closes it when the thread's locals are cleared (the main
    thread's: at exit)."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()

    def close(self) -> None:
        """Close as ``Runner.close()`` does, except that the default executor is shut
        down without waiting (``loop.close()``; its idle workers exit on their own).

        ``Runner.close()`` starts a Thread to join that executor, which neither place
        this runs allows. As the thread's locals are cleared, threading has already
        forgotten the thread, and ``Thread()`` calls ``threading.current_thread()``,
        which registers a dummy thread that is never removed (listed by
        ``threading.enumerate()``; Python 3.13 prints "Exception ignored in
        _DeleteDummyThreadOnDel.__del__" at exit). At exit, Python 3.12 refuses new
        threads ("can't create new thread at interpreter shutdown").
        Fails harmlessly at interpreter shutdown or with another loop running here.
        """
        with contextlib.suppress(Exception):
            loop = self.runner.get_loop()
            if loop.is_closed():
                return
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def __del__(self) -> None:
        self.close()


def _thread_runner() -> asyncio.Runner:
    holder: _RunnerHolder | None = getattr(_thread_state, "holder", None)
    if holder is None:
        holder = _thread_state.holder = _RunnerHolder()
        if threading.current_thread() is threading.main_thread():
            atexit.register(holder.close)
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
        caller = _current_task()
        return _run_on(self.loop, coro, ctx, None if caller is None else caller.cancelling)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class Delegation:
    """Where :func:`run_sync` sends work from a thread inside :func:`delegate_to`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._tasks: set[asyncio.Task[Any]] = set()

    def run(self, coro: Coroutine[Any, Any, T], ctx: contextvars.Context) -> T:
        """Run ``coro`` on the loop in ``ctx``; block this thread (only) until it is done."""
        if self.loop.is_closed() or not self.loop.is_running():
            coro.close()
            raise RuntimeError(
                "delegate_to(): the loop run_sync delegates to is not running; "
                "leave the delegate_to() block before that loop stops"
            )
        # Polling lets an exception sent to this thread (a kernel's interrupt) in.
        return _run_on(self.loop, coro, ctx, self._loop_gone, self._tasks)

    def _loop_gone(self) -> bool:
        return not self.loop.is_running()

    def cancel(self) -> None:
        """Cancel the work this thread is waiting for: its ``run_sync`` raises CancelledError.

        Thread-safe; meant to be called from the loop (or any thread) to
        interrupt sync code blocked in ``run_sync``.
        """
        self.loop.call_soon_threadsafe(self._cancel_all)

    def _cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()


@contextlib.contextmanager
def delegate_to(loop: asyncio.AbstractEventLoop) -> Iterator[Delegation]:
    """While active, ``run_sync`` in this thread runs its work on ``loop``; only this thread waits.

    For a worker thread running sync code on behalf of ``loop``, which runs in
    another thread (a kernel running a sync cell off its loop): the work then
    uses ``loop``'s loop-bound objects, and ``loop`` keeps running other tasks.
    The caller's contextvars are copied in; a ``timeout`` or an exception that
    interrupts the waiting thread cancels the work. ``Delegation.cancel()``
    cancels the work in flight from the loop's side.

        >>> with delegate_to(kernel_loop):  # doctest: +SKIP
        ...     run_cell_sync_code()
    """
    if asyncio._get_running_loop() is loop:
        raise RuntimeError(
            "delegate_to(loop) was entered on the thread running that loop: run_sync there "
            "would wait for the loop it blocks. Use it on a worker thread, or await instead"
        )
    delegation = Delegation(loop)
    previous: Delegation | None = getattr(_thread_state, "delegation", None)
    _thread_state.delegation = delegation
    try:
        yield delegation
    finally:
        _thread_state.delegation = previous


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _run_on(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, T],
    ctx: contextvars.Context,
    should_stop: Callable[[], object] | None,
    tasks: set[asyncio.Task[Any]] | None = None,
) -> T:
    """Run ``coro`` as a task on ``loop`` (another thread's) and block until it is done.

    With ``should_stop``, the wait polls it and raises CancelledError when it
    turns true. Whatever ends the wait early (that, Ctrl-C, an exception sent to
    this thread) cancels the task and waits for it to finish before propagating.
    ``tasks`` holds the task while it runs (for whoever wants to cancel it).
    """
    outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
    task_box: list[asyncio.Task[T]] = []

    def start() -> None:
        if outcome.set_running_or_notify_cancel():
            task = loop.create_task(coro, context=ctx)
            task_box.append(task)
            if tasks is not None:
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda t: _copy_outcome(t, outcome))
        else:  # the caller gave up before the loop got to it
            coro.close()

    loop.call_soon_threadsafe(start)
    poll = None if should_stop is None else _CANCEL_POLL_SECONDS
    try:
        while True:
            try:
                return outcome.result(timeout=poll)
            except TimeoutError:
                if outcome.done():  # the work's own TimeoutError
                    raise
            assert should_stop is not None
            if should_stop():
                raise asyncio.CancelledError
    except BaseException:
        if not outcome.done() and not outcome.cancel():  # started: cancel it, wait for its end
            loop.call_soon_threadsafe(lambda: task_box[0].cancel())
            concurrent.futures.wait([outcome])
        raise


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


# --- which loop is which, in words (for notes on errors) --------------------------------

#: What asyncio and the libraries on it say when an object is used on another loop.
_LOOP_MISMATCH = ("different event loop", "attached to a different loop")


def is_loop_mismatch(exc: BaseException) -> bool:
    """True when ``exc`` says an object bound to one event loop was used on another."""
    text = str(exc)
    return any(phrase in text for phrase in _LOOP_MISMATCH)


def describe_loop(*, sync: bool = False, worker_thread: bool = False) -> str:
    """In words, the event loop work started here runs on, for a note on an error.

    Async code runs on the loop running in this thread. With ``sync``, this is sync
    code, and the loop is the one :func:`run_sync` called here uses (the rules in the
    module docstring). ``worker_thread``: sync code that ran on an executor's thread
    (not this one), where ``run_sync`` uses that thread's own loop.
    """
    if worker_thread:
        return (
            "a worker thread of an executor, where run_sync (and pipeline.run, batch) uses "
            "that thread's own event loop"
        )
    running = asyncio._get_running_loop()
    if sync and not portal.in_worker():
        if running is None:
            if getattr(_thread_state, "delegation", None) is not None:
                return "the loop this thread delegates to (bridge.delegate_to)"
            return _own_loop(threading.current_thread())
        nested = next((k + 1 for k, p in enumerate(_portals) if p.loop is running), 0)
        return _portal_words(nested)
    if running is None:
        return "no event loop (plain calls)"
    depth = next((k for k, p in enumerate(_portals) if p.loop is running), None)
    if depth is not None:
        return _portal_words(depth)
    holder: _RunnerHolder | None = getattr(_thread_state, "holder", None)
    thread = threading.current_thread()
    if holder is not None and getattr(holder.runner, "_loop", None) is running:
        return _own_loop(thread)
    if thread.name.startswith("plait-"):
        return f"the event loop of plait's thread {thread.name!r}"
    return (
        f"the event loop running in thread {thread.name!r}, the caller's own (an async call: "
        "await pipeline.arun(), await plait.abatch())"
    )


def _own_loop(thread: threading.Thread) -> str:
    who = "this thread" if thread is threading.main_thread() else f"worker thread {thread.name!r}"
    return (
        f"the own event loop of {who}, which plait keeps for sync calls made there with no "
        "loop running (pipeline.run() from a script or a worker thread)"
    )


def _portal_words(depth: int) -> str:
    which = "portal loop" if depth == 0 else f"portal loop {depth} (a nested sync call)"
    return (
        f"plait's {which}, a background thread: a sync call (pipeline.run(), plait.batch(), "
        "run_sync) was made while an event loop was running in the caller's thread, "
        "as in a notebook cell"
    )


def _portal_for(running: asyncio.AbstractEventLoop) -> LoopThread:
    """The portal a sync call made on loop ``running`` goes to: never ``running`` itself."""
    with _portal_lock:
        depth = next((k + 1 for k, p in enumerate(_portals) if p.loop is running), 0)
        while len(_portals) <= depth:
            portal = LoopThread(f"plait-portal-{len(_portals)}")
            atexit.register(portal.stop)
            _portals.append(portal)
        return _portals[depth]
