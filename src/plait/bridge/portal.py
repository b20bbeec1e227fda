"""The greenlet portal: sync code that plait runs on its event loop may await.

plait calls sync nodes inline on the event loop. Such a node may itself call
``run_sync``, ``plait.batch`` or ``pipeline.run``; without help that call could
only block the loop (a blocked loop cannot run the work it waits for, so the
work goes to another loop in another thread, and the loop's other tasks stall
meanwhile).

With the portal, the scheduler makes such calls through :func:`call`, which runs
the sync code in a *worker greenlet* (a separate stack on the same thread). When
that code calls ``run_sync(awaitable)``, :func:`wait` switches back to the
coroutine that made the call, handing it the awaitable; :func:`call` returns a
:class:`Suspended`, the coroutine awaits :meth:`Suspended.finish`, which awaits
the awaitable on the loop (other tasks keep running) and switches back into the
sync code with its result or exception. This is what SQLAlchemy's asyncio layer
does (``greenlet_spawn`` / ``await_only``).

When the sync code never awaits, :func:`call` costs one greenlet switch there
and back (workers are reused per thread). Without a running loop, or inside a
synchronous drive (:func:`enter_inline`) that cannot await, it is a plain call.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

try:
    from greenlet import getcurrent, greenlet  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - greenlet is a dependency; without it: plain calls
    greenlet = None

T = TypeVar("T")

_get_running_loop = asyncio._get_running_loop  # None when no loop runs in this thread

_RESULT: Final = 0
_RAISED: Final = 1
_AWAIT: Final = 2
_MAX_IDLE = 8  # idle workers kept per thread

#: Greenlets running a synchronous drive of a coroutine over a running loop
#: (``bridge.drive_inline``): code there cannot await, so calls stay plain.
_inline_drivers: set[object] = set()


class _Idle(threading.local):
    def __init__(self) -> None:
        self.workers: list[Any] = []


_idle = _Idle()

#: The worker greenlet class; None when greenlet is not installed.
_Worker: Any = None

if greenlet is not None:

    class _WorkerGreenlet(greenlet):  # type: ignore[misc]
        """A greenlet running sync calls for coroutines on this thread; reused."""

        def __init__(self) -> None:
            super().__init__(self._serve)
            #: The greenlet awaiting this call's outcome: where to switch back to.
            self.caller: Any = None
            #: (kind, value) handed to the caller; an attribute, not a switch
            #: argument, so that an idle worker's frame keeps no result alive.
            self.outcome: tuple[int, Any] | None = None

        def _serve(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
            while True:
                try:
                    self.outcome = (_RESULT, fn(*args, **kwargs))
                except BaseException as exc:  # handed to the caller, which raises it
                    self.outcome = (_RAISED, exc)
                fn = args = kwargs = None  # type: ignore[assignment]
                caller, self.caller = self.caller, None
                fn, args, kwargs = caller.switch()

    _Worker = _WorkerGreenlet


def call(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T | Suspended:
    """Call ``fn(*args, **kwargs)``; a :class:`Suspended` if it awaited through :func:`wait`.

    The caller must be a coroutine on the running loop that, given a
    ``Suspended``, awaits its :meth:`~Suspended.finish` for the result. The call
    sees the caller's contextvars (the very same context, as a plain call would).
    """
    if _Worker is None or _get_running_loop() is None:
        return fn(*args, **kwargs)
    caller = getcurrent()
    if _inline_drivers and caller in _inline_drivers:
        return fn(*args, **kwargs)
    idle = _idle.workers
    worker = idle.pop() if idle else _Worker()
    worker.caller = caller
    worker.gr_context = caller.gr_context
    worker.switch(fn, args, kwargs)
    result: T | Suspended = _outcome(worker)
    return result


async def acall(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``call``, awaited to its end: the convenient form where a coroutine is cheap."""
    result = call(fn, *args, **kwargs)
    if type(result) is Suspended:
        return await result.finish()  # type: ignore[no-any-return]
    return result  # type: ignore[return-value]


def usable() -> bool:
    """True when :func:`call` may suspend here (greenlet installed, a loop running in
    this thread): elsewhere it is a plain call."""
    return _Worker is not None and _get_running_loop() is not None


def in_worker() -> bool:
    """True when the current code runs in a portal worker, so :func:`wait` may be used."""
    return _Worker is not None and type(getcurrent()) is _Worker


def wait(awaitable: Awaitable[T]) -> T:
    """From sync code in a portal worker: await ``awaitable`` on the loop, return its result.

    The coroutine that started the call awaits it; the loop's other tasks keep
    running meanwhile. Exceptions (including cancellation of that coroutine)
    are raised here.
    """
    worker = getcurrent()
    if type(worker) is not _Worker:
        if asyncio.iscoroutine(awaitable):
            awaitable.close()  # never to be awaited: no "never awaited" warning
        raise RuntimeError("portal.wait() is only usable from sync code that plait runs")
    worker.outcome = (_AWAIT, awaitable)
    del awaitable
    result: T = worker.caller.switch()
    return result


class Suspended:
    """A portal call waiting on an awaitable; ``await finish()`` carries it to its end."""

    __slots__ = ("_awaitable", "_worker")

    def __init__(self, worker: Any, awaitable: Awaitable[Any]) -> None:
        self._worker = worker
        self._awaitable: Awaitable[Any] | None = awaitable

    async def finish(self) -> Any:
        """Await what the sync code waits for, resume it, repeat until it returns."""
        worker, awaitable = self._worker, self._awaitable
        if awaitable is None:
            raise RuntimeError("Suspended.finish() may be awaited only once")
        self._awaitable = None
        while True:
            try:
                outcome = await awaitable
            except BaseException as exc:  # cancellation too: the sync code sees it
                awaitable = None
                worker.caller = getcurrent()
                # With its traceback, so it shows the awaited frames below run_sync.
                worker.throw(type(exc), exc, exc.__traceback__)
            else:
                awaitable = None
                worker.caller = getcurrent()
                worker.switch(outcome)
                outcome = None
            kind, value = worker.outcome
            if kind != _AWAIT:
                return _outcome(worker)
            worker.outcome = None
            awaitable, value = value, None


def _outcome(worker: Any) -> Any:
    """The call's result, its exception raised, or a Suspended when it awaits."""
    kind, value = worker.outcome
    worker.outcome = None
    if kind == _AWAIT:
        return Suspended(worker, value)
    worker.gr_context = None
    idle = _idle.workers
    if len(idle) < _MAX_IDLE:
        idle.append(worker)
    if kind == _RAISED:
        try:
            raise value
        finally:
            value = None  # no frame -> traceback -> exception cycle
    return value


def enter_inline() -> object | None:
    """Mark a synchronous drive over the running loop: no await possible, so no portal.

    Pass what it returns to :func:`exit_inline` when the drive ends.
    """
    if _Worker is None or _get_running_loop() is None:
        return None
    current: object = getcurrent()
    if current in _inline_drivers:
        return None
    _inline_drivers.add(current)
    return current


def exit_inline(token: object | None) -> None:
    """End what :func:`enter_inline` started."""
    if token is not None:
        _inline_drivers.discard(token)
