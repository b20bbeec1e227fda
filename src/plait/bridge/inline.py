"""Coroutines that run without an event loop when they can.

A run of plain sync functions never suspends, so it needs no event loop, and
starting one costs far more than the run itself. An async function marked
:func:`loop_optional` says: "my coroutine may be driven without a loop; I await
:func:`ensure_loop` before anything that needs one". :func:`start_inline` drives
such a coroutine with plain ``send`` calls. Either it finishes (no loop was ever
involved), or it stops at ``ensure_loop``, and the caller continues that same
coroutine on a loop, in the same context (:func:`plait.bridge.block_on` does).

Awaited on a loop in the usual way, ``ensure_loop`` does nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine, Generator
from types import CodeType
from typing import Any, Final, TypeVar

from plait.bridge import portal

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_LOOP_OPTIONAL: set[CodeType] = set()

#: What a coroutine driven inline yields to ask for an event loop.
NEED_LOOP: Final = object()


#: Set while a step is driven inline: the asyncio task current when the drive
#: started (None outside any task). Code is driven inline when it sees this value
#: and the same current task; a task of a loop started meanwhile (a nested
#: ``run_sync``, an ``asyncio.run`` inside a node) is not.
_DRIVING: contextvars.ContextVar[asyncio.Task[Any] | bool | None] = contextvars.ContextVar(
    "plait_driving_inline", default=False
)


def _current_task() -> asyncio.Task[Any] | None:
    loop = asyncio._get_running_loop()
    return None if loop is None else asyncio.current_task(loop)


def loop_optional(fn: F) -> F:
    """Mark an async function (or async generator function) as drivable without a loop."""
    _LOOP_OPTIONAL.add(fn.__code__)
    return fn


def is_loop_optional(obj: object) -> bool:
    """True for a coroutine or async generator of a :func:`loop_optional` function."""
    code = getattr(obj, "cr_code", None) or getattr(obj, "ag_code", None)
    return code in _LOOP_OPTIONAL


class _EnsureLoop:
    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        driving = _DRIVING.get()
        if driving is not False and driving is _current_task():
            yield NEED_LOOP


_ENSURE_LOOP: Final = _EnsureLoop()


def ensure_loop() -> _EnsureLoop:
    """``await ensure_loop()`` before the first thing that needs an event loop."""
    return _ENSURE_LOOP


def start_inline(step: Any, ctx: contextvars.Context) -> tuple[bool, Any]:
    """Drive ``step`` (a coroutine, or an async generator's ``__anext__()``) without a loop.

    Returns ``(True, result)`` when it finished, ``(False, None)`` when it waits
    at :func:`ensure_loop`: then continue it on a loop, in ``ctx``. Runs in
    ``ctx``. Exceptions propagate.
    """
    token = portal.enter_inline()  # sync code run here cannot await through the portal
    try:
        yielded = ctx.run(_send_driving, step)
    except StopIteration as stop:
        return True, stop.value
    finally:
        portal.exit_inline(token)
    if yielded is NEED_LOOP:
        return False, None
    step.close()
    raise RuntimeError(
        "plait internal error: a loop-optional coroutine suspended without asking for a loop"
    )


def _send_driving(step: Any) -> Any:
    token = _DRIVING.set(_current_task())
    try:
        return step.send(None)
    finally:
        _DRIVING.reset(token)


async def resume(step: Any) -> Any:
    """Continue, on a loop, a step that :func:`start_inline` left waiting at ensure_loop.

    Such a coroutine cannot be awaited directly (it is suspended inside an
    await); a task may drive it, and so may this coroutine, which passes every
    value and exception through as ``await`` would.
    """
    return await _Resumed(step)


class _Resumed:
    __slots__ = ("step",)

    def __init__(self, step: Any) -> None:
        self.step = step

    def __await__(self) -> Generator[Any, Any, Any]:
        step = self.step
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                if thrown is None:
                    yielded = step.send(sent)
                else:
                    error, thrown = thrown, None
                    yielded = step.throw(error)
            except StopIteration as stop:
                return stop.value
            try:
                sent = yield yielded
            except GeneratorExit:
                step.close()
                raise
            except BaseException as exc:
                sent, thrown = None, exc


def drive_inline(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends, without any event loop.

    Raises RuntimeError (after closing the coroutine) if it asks for a loop.
    """
    done, result = start_inline(coro, contextvars.copy_context())
    if done:
        return result  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("plait internal error: an inline run needed an event loop")
