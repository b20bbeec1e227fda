"""Events of map items that run in other processes: recorded there, replayed here.

Callbacks stay in the process that started the map. A worker process gets a
:func:`recording_scope` in their place, which appends each event to the list of
the item being run (a contextvar, so threads and tasks of the item record into
the same list). The events travel back with the item's result and a
:class:`Replayer` calls the real callbacks with them, in the order they
happened, before the item's result is handed on.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from plait.callbacks.dispatch import Scope

#: (method, worker pid, pipeline, path, scope_id, parent_id, fields)
Event = tuple[str, int, str, tuple[str, ...], int, int | None, dict[str, Any]]

#: The scope id a worker gives the map's own scope; scopes it creates get positive ids.
ROOT_ID = -1

_RECORDING: ContextVar[list[Event] | None] = ContextVar("plait_recording", default=None)


class RecordingDispatch:
    """Takes the place of a dispatcher in a worker process: records instead of calling."""

    __slots__ = ()
    callbacks: tuple[object, ...] = ()

    def extended(self, callbacks: Sequence[object]) -> RecordingDispatch:
        # A pipeline's callbacks stay behind when it is shipped, so nothing to add.
        return self

    def emit(self, method: str, scope: Scope, fields: dict[str, Any]) -> None:
        events = _RECORDING.get()
        if events is None:
            return
        error = fields.get("error")
        if error is not None:
            fields = {**fields, "error": portable(error)}
        pid = os.getpid()
        events.append(
            (method, pid, scope.pipeline, scope.path, scope.scope_id, scope.parent_id, fields)
        )


def recording_scope(scope: Scope) -> Scope:
    """A stand-in for ``scope`` to ship to a worker process."""
    stand_in = Scope(RecordingDispatch(), scope.pipeline, scope.path, None)
    stand_in.scope_id = ROOT_ID
    return stand_in


@contextmanager
def recording() -> Iterator[list[Event]]:
    """Record the events emitted in this context (one map item) into the list yielded."""
    events: list[Event] = []
    token = _RECORDING.set(events)
    try:
        yield events
    finally:
        _RECORDING.reset(token)


class Replayer:
    """Calls the real callbacks with events recorded in workers of one map."""

    __slots__ = ("root", "scopes")

    def __init__(self, root: Scope) -> None:
        self.root = root
        self.scopes: dict[tuple[int, int], Scope] = {}  # (pid, worker scope id) -> scope here

    def replay(self, events: Sequence[Event]) -> None:
        for method, pid, pipeline, path, scope_id, parent_id, fields in events:
            scope = self._scope(pid, pipeline, path, scope_id, parent_id)
            scope.emit(method, **fields)
            if method in ("on_pipeline_end", "on_nested_pipeline_end", "on_map_end"):
                self.scopes.pop((pid, scope_id), None)

    def _scope(
        self, pid: int, pipeline: str, path: tuple[str, ...], scope_id: int, parent_id: int | None
    ) -> Scope:
        if scope_id == ROOT_ID:
            return self.root
        scope = self.scopes.get((pid, scope_id))
        if scope is None:
            parent = (
                self.root if parent_id in (None, ROOT_ID) else self.scopes.get((pid, parent_id))
            )
            parent_here = (parent or self.root).scope_id
            scope = Scope(self.root.dispatch, pipeline, path, parent_here)
            self.scopes[(pid, scope_id)] = scope
        return scope


def portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError carrying its text and notes."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        stand_in = RuntimeError(f"{type(exc).__qualname__}: {exc}")
        for note in getattr(exc, "__notes__", ()):
            stand_in.add_note(note)
        stand_in.add_note(f"plait: the original {type(exc).__qualname__} could not be pickled")
        return stand_in
