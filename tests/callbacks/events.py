"""Hand-built event sequences, in the order the engine emits them (see plait.callbacks.base).

A :class:`Source` plays events to callbacks the way the dispatcher does: one call at
a time, a fresh :class:`CallbackContext` per call, one ``state`` dict per callback and
scope. Scenarios are generators that emit one event per step, so several runs, maps
or map items can be interleaved with :func:`interleave` (items finish out of order,
two maps are live at once).

    src = Source(callback)
    src.play(run(src, Run("etl", [N("load"), N("save", retries=1)])))
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

from plait.callbacks import CallbackContext

Steps = Generator[None, None, BaseException | None]


@dataclass(frozen=True)
class Scope:
    pipeline: str
    path: tuple[str, ...]
    scope_id: int
    parent_id: int | None


@dataclass
class N:
    """A node: it may be a cache hit, retry, fail, or run an inner pipeline or map."""

    name: str
    retries: int = 0
    error: BaseException | None = None
    cached: bool = False
    inner: Run | Map | Callable[[int | None], Run | Map] | None = None  # or one per item


@dataclass
class Run:
    name: str
    nodes: list[N]


@dataclass
class Map:
    """A map of ``items`` items over ``nodes``; ``failing`` maps item → node that raises."""

    name: str
    items: int
    nodes: list[N]
    cached: set[int] = field(default_factory=set)
    failing: dict[int, str] = field(default_factory=dict)
    total_known: bool = True
    concurrency: int = 3  # items in flight at once (their events interleave)
    abort: bool = False  # the first failure ends the map (items in flight get no end event)
    tell_item: bool = False  # inside a map item, the map's own events carry that item's index


class Source:
    """Calls callbacks like the dispatcher: serially, with per-scope state."""

    def __init__(self, *callbacks: object) -> None:
        self.callbacks = callbacks
        self._ids = itertools.count(1)
        self._states: dict[tuple[int, int], dict[str, Any]] = {}
        self.log: list[tuple[str, int, str | None, int | None]] = []  # (event, scope, node, item)
        self.threads: set[int] = set()

    def scope(self, name: str, parent: Scope | None = None, via: str | None = None) -> Scope:
        path = (name,) if parent is None else (*parent.path, *([via] if via else []), name)
        return Scope(name, path, next(self._ids), None if parent is None else parent.scope_id)

    def emit(self, scope: Scope, method: str, **fields: Any) -> None:
        self.log.append((method, scope.scope_id, fields.get("node"), fields.get("item")))
        self.threads.add(threading.get_ident())
        for i, callback in enumerate(self.callbacks):
            listener = getattr(callback, method, None)
            if listener is None:
                continue
            state = self._states.setdefault((i, scope.scope_id), {})
            ctx = CallbackContext(
                method[3:],
                scope.pipeline,
                scope.path,
                scope.scope_id,
                scope.parent_id,
                state=state,
                **fields,
            )
            listener(ctx)

    def play(self, *scenarios: Steps) -> None:
        """Run scenarios to completion, interleaving their events."""
        for _ in interleave(*scenarios):
            pass

    def play_in_thread(self, *scenarios: Steps) -> None:
        """Like :meth:`play`, from a worker thread (events need not come from the main thread)."""
        thread = threading.Thread(target=self.play, args=scenarios)
        thread.start()
        thread.join()


def interleave(*scenarios: Steps) -> Generator[None, None, list[BaseException | None]]:
    """Step the scenarios round-robin; return each one's outcome (its error or None)."""
    outcomes: list[BaseException | None] = [None] * len(scenarios)
    live = dict(enumerate(scenarios))
    while live:
        for i, steps in list(live.items()):
            try:
                next(steps)
            except StopIteration as stop:
                outcomes[i] = stop.value
                del live[i]
        if live:
            yield
    return outcomes


def run(
    src: Source,
    spec: Run,
    parent: Scope | None = None,
    via: str | None = None,
    item: int | None = None,
) -> Steps:
    """A top-level run, or a nested one when ``parent`` (and the node ``via``) are given."""
    scope = src.scope(spec.name, parent, via)
    kind = "pipeline" if parent is None else "nested_pipeline"
    src.emit(scope, f"on_{kind}_start", item=item)
    yield
    for n in spec.nodes:
        error = yield from node(src, scope, n, item)  # a nested run's nodes tell its item too
        if error is not None:
            src.emit(scope, f"on_{kind}_end", item=item, duration=0.5, error=error)
            return error
    src.emit(scope, f"on_{kind}_end", item=item, duration=0.5)
    return None


def map_(
    src: Source,
    spec: Map,
    parent: Scope | None = None,
    via: str | None = None,
    item: int | None = None,
) -> Steps:
    """A map: items in flight ``concurrency`` at a time, finishing in any order."""
    scope = src.scope(spec.name, parent, via)
    total = spec.items if spec.total_known else None
    src.emit(scope, "on_map_start", total=total, **({"item": item} if spec.tell_item else {}))
    yield
    pending = iter(range(spec.items))
    in_flight = {
        i: map_item(src, scope, spec, i) for i in itertools.islice(pending, spec.concurrency)
    }
    while in_flight:
        for i, steps in list(in_flight.items()):
            try:
                next(steps)
            except StopIteration as stop:
                del in_flight[i]
                if stop.value is not None and spec.abort:
                    src.emit(scope, "on_map_end", total=total, duration=1.0, error=stop.value)
                    return stop.value
                for j in itertools.islice(pending, 1):
                    in_flight[j] = map_item(src, scope, spec, j)
            yield
    src.emit(scope, "on_map_end", total=total, duration=1.0)
    return None


def map_item(src: Source, scope: Scope, spec: Map, i: int) -> Steps:
    src.emit(scope, "on_map_item_start", item=i)
    yield
    if i in spec.cached:
        for n in spec.nodes:
            src.emit(scope, "on_node_cached", node=n.name, item=i)
            yield
        src.emit(scope, "on_map_item_cached", item=i, duration=0.001)
        return None
    for n in spec.nodes:
        if spec.failing.get(i) == n.name:
            n = N(n.name, error=ValueError(f"bad item {i}"))
        error = yield from node(src, scope, n, i)
        if error is not None:
            src.emit(scope, "on_map_item_end", item=i, duration=0.1, error=error)
            return error
    src.emit(scope, "on_map_item_end", item=i, duration=0.1)
    return None


def node(src: Source, scope: Scope, n: N, item: int | None) -> Steps:
    """One node's events; returns the error it raised, if any."""
    if n.cached:
        src.emit(scope, "on_node_cached", node=n.name, item=item)
        yield
        return None
    src.emit(scope, "on_node_start", node=n.name, item=item)
    yield
    for attempt in range(1, n.retries + 1):
        error = ConnectionError(f"attempt {attempt} failed")
        src.emit(
            scope, "on_node_retry", node=n.name, item=item, attempt=attempt, delay=0.25, error=error
        )
        yield
    error = n.error
    inner = n.inner(item) if callable(n.inner) else n.inner
    if isinstance(inner, Run):
        error = error or (yield from run(src, inner, scope, n.name, item))
    elif isinstance(inner, Map):
        error = error or (yield from map_(src, inner, scope, n.name, item))
    if error is not None:
        src.emit(scope, "on_error", node=n.name, item=item, duration=0.05, error=error)
        yield
        return error
    src.emit(scope, "on_node_end", node=n.name, item=item, duration=0.05)
    yield
    return None


def nodes(*names: str) -> list[N]:
    return [N(name) for name in names]


def events(log: Iterable[tuple[str, int, str | None, int | None]]) -> list[str]:
    return [entry[0] for entry in log]
