"""Calling callbacks: which methods each implements, one call at a time, errors contained.

A :class:`Dispatcher` is built once per set of callbacks. It looks up which
event methods each callback implements (a method inherited unchanged from
:class:`~plait.callbacks.base.Callback` does not count), so an event nobody
listens to costs one dict lookup and builds no context.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from plait.callbacks.base import EVENTS, Callback, CallbackContext

logger = logging.getLogger("plait.callbacks")

_scope_ids = itertools.count(1)


def new_scope_id() -> int:
    """A process-unique id for a run or a map."""
    return next(_scope_ids)


class Emitter(Protocol):
    """What a scope sends its events to: a :class:`Dispatcher`, or a recorder in a
    worker process (:mod:`plait.callbacks.remote`)."""

    @property
    def callbacks(self) -> tuple[object, ...]: ...

    def extended(self, callbacks: Sequence[object]) -> Emitter: ...

    def emit(self, method: str, scope: Scope, fields: dict[str, Any]) -> None: ...


class Scope:
    """One run or map as callbacks see it: its name, place in the hierarchy and states."""

    __slots__ = ("dispatch", "parent_id", "path", "pipeline", "scope_id", "states")

    def __init__(
        self,
        dispatch: Emitter,
        pipeline: str,
        path: tuple[str, ...],
        parent_id: int | None,
    ) -> None:
        self.dispatch = dispatch
        self.pipeline = pipeline
        self.path = path
        self.scope_id = new_scope_id()
        self.parent_id = parent_id
        self.states: dict[int, dict[str, Any]] = {}

    def emit(self, method: str, **fields: Any) -> None:
        """Call every callback implementing ``method`` with a context for this scope."""
        self.dispatch.emit(method, self, fields)


class Dispatcher:
    """Calls the callbacks implementing an event, serially, containing their errors."""

    __slots__ = ("_lock", "_logged", "callbacks", "methods")

    def __init__(self, callbacks: Sequence[object]) -> None:
        unique: dict[int, object] = {}
        for callback in callbacks:
            unique.setdefault(id(callback), callback)  # given twice (engine and pipeline): once
        self.callbacks = tuple(unique.values())
        self.methods: dict[str, tuple[tuple[int, Callable[[CallbackContext], Any]], ...]] = {
            event: tuple(
                (i, method)
                for i, callback in enumerate(self.callbacks)
                if (method := _implemented(callback, event)) is not None
            )
            for event in EVENTS
        }
        self._lock = threading.RLock()
        self._logged: set[int] = set()

    def extended(self, callbacks: Sequence[object]) -> Dispatcher:
        """A dispatcher for these callbacks plus the ones given (each callback once)."""
        new = [c for c in callbacks if not any(c is mine for mine in self.callbacks)]
        return self if not new else Dispatcher((*self.callbacks, *new))

    def emit(self, method: str, scope: Scope, fields: dict[str, Any]) -> None:
        """Call ``method`` on each callback implementing it, one at a time."""
        listeners = self.methods[method]
        if not listeners:
            return
        event = method[3:]
        with self._lock:
            for i, listener in listeners:
                state = scope.states.get(i)
                if state is None:
                    state = scope.states[i] = {}
                ctx = CallbackContext(
                    event,
                    scope.pipeline,
                    scope.path,
                    scope.scope_id,
                    scope.parent_id,
                    state=state,
                    **fields,
                )
                try:
                    listener(ctx)
                except Exception as exc:
                    callback = self.callbacks[i]
                    if getattr(callback, "raise_errors", False):
                        exc.add_note(
                            f"plait: raised in callback {type(callback).__name__}.{method}"
                        )
                        raise
                    if i not in self._logged:
                        self._logged.add(i)
                        logger.error(
                            "callback %s.%s raised %s: %s (the run goes on; later errors of "
                            "this callback are not logged; set raise_errors = True on it to "
                            "fail the run instead)",
                            type(callback).__name__,
                            method,
                            type(exc).__name__,
                            exc,
                            exc_info=exc,
                        )


def _implemented(callback: object, method: str) -> Callable[[CallbackContext], Any] | None:
    bound = getattr(callback, method, None)
    if bound is None or not callable(bound):
        return None
    inherited = getattr(Callback, method)
    if getattr(type(callback), method, None) is inherited:
        return None
    return bound  # type: ignore[no-any-return]
