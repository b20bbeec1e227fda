"""The cache and callbacks in effect for a run or a map, and the events around it.

A pipeline's own cache wins over its engine's, which wins over the enclosing
run's (a nested pipeline inherits its parent's cache). Callbacks add up: the
enclosing run's, the engine's and the pipeline's own, each once. When none is in
effect a run takes the plain path: no scope, no hooks, no hashing.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncGenerator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

from plait.bridge import ensure_loop, loop_optional
from plait.callbacks.base import EVENTS
from plait.callbacks.dispatch import Dispatcher, Emitter, Scope
from plait.engine.context import ENCLOSING, NESTED_NODE
from plait.engine.local.hooks import NodeHooks
from plait.engine.local.resources import run_with_deps
from plait.engine.local.scheduler import run_plan
from plait.errors import CacheWarning

if TYPE_CHECKING:
    from plait.cache.stores import CacheStore
    from plait.engine.base import PipelineView
    from plait.engine.local.controls import NodeRuntime
    from plait.engine.local.engine import LocalEngine
    from plait.engine.local.plan import Plan, Route
    from plait.engine.local.signatures import CacheSetup

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Services:
    """What one run or map observes with: its cache and its callbacks scope."""

    cache: CacheStore | None
    scope: Scope | None
    nested: bool  # inside another run: nested events, inherited services
    parent_item: int | None  # the enclosing map item, if any

    def for_worker(self, *, keep_cache: bool = False) -> Services:
        """These services as a worker process gets them: events recorded for replay
        here, and the cache only if processes can share it (or ``keep_cache``: the
        worker is in this process after all)."""
        from plait.callbacks.remote import recording_scope

        cache = self.cache
        if cache is not None and not keep_cache and not getattr(cache, "process_safe", False):
            warnings.warn(
                f"{type(cache).__name__} lives in one process: map items that run in worker "
                "processes neither read nor write it. Use plait.DiskCache(path) to cache "
                "across processes",
                CacheWarning,
                stacklevel=2,
            )
            cache = None
        scope = None if self.scope is None else recording_scope(self.scope)
        return Services(cache, scope, self.nested, self.parent_item)

    @property
    def run_kind(self) -> str:
        """What a run's start and end events are named after (``on_<kind>_start``)."""
        return "nested_pipeline" if self.nested else "pipeline"

    def hooks(self, plan: Plan, setup: CacheSetup | None, item: int | None = None) -> NodeHooks:
        """Hooks for one run (or one map item) of ``plan``."""
        return NodeHooks(plan, self.scope, setup, item)

    def setup(self, plan: Plan, varying: Sequence[int] = ()) -> CacheSetup | None:
        """The cache setup shared by the runs of ``plan`` (None without a cache)."""
        if self.cache is None:
            return None
        from plait.engine.local.signatures import CacheSetup

        return CacheSetup(plan, self.cache, varying)


def resolve(pipeline: PipelineView, engine: LocalEngine) -> Services | None:
    """The services for a run or map of ``pipeline`` on ``engine``; None when there are none."""
    here = ENCLOSING.get()
    parent = here.scope
    cache = pipeline.cache
    if cache is None:
        cache = engine.cache if engine.cache is not None else here.cache
    own = (*pipeline.callbacks, *engine.callbacks) if engine.callbacks else pipeline.callbacks
    if cache is None and parent is None and not own:
        return None  # the plain path: no scope, no hooks, no hashing
    if parent is not None:
        dispatch: Emitter | None = parent.dispatch.extended(own) if own else parent.dispatch
    else:
        dispatch = Dispatcher(own) if own else None
    scope = None
    label = pipeline.name or "pipeline"
    if dispatch is not None:
        if parent is None:
            path: tuple[str, ...] = (label,)
        else:
            via = NESTED_NODE.get()
            path = (*parent.path, via, label) if via else (*parent.path, label)
        scope = Scope(dispatch, label, path, None if parent is None else parent.scope_id)
    return Services(cache, scope, parent is not None, here.item)


async def observed_run(
    services: Services,
    route: Route,
    values: list[Any],
    runtime: NodeRuntime | None,
    owner: object | None = None,
) -> None:
    """One run of ``route``'s plan with its cache and its start and end events."""
    plan = route.plan
    hooks = services.hooks(plan, services.setup(plan), services.parent_item)
    run = partial(run_plan, route, values, runtime, hooks)
    scope = services.scope
    if scope is None:
        await run_with_deps(plan, values, run, owner=owner)
        return
    with _lifetime(scope, services.run_kind, item=services.parent_item):
        await run_with_deps(plan, values, run, owner=owner)


@loop_optional
async def observed_map(
    services: Services, total: int | None, items: AsyncGenerator[T, None], inline: bool
) -> AsyncGenerator[T, None]:
    """A map's stream of items between its ``on_map_start`` and ``on_map_end``
    (``item`` is the enclosing map item of a map nested in one). ``inline``: the
    stream never needs an event loop."""
    assert services.scope is not None
    if not inline:
        await ensure_loop()
    try:
        with _lifetime(services.scope, "map", total=total, item=services.parent_item):
            async for item in items:
                yield item
    finally:
        await items.aclose()


@contextmanager
def _lifetime(scope: Scope, kind: str, **fields: Any) -> Iterator[None]:
    """The ``on_<kind>_start`` and ``on_<kind>_end`` events around the block; the end
    carries the error that ended it, except a consumer stopping a stream early."""
    start = started(scope, kind, **fields)
    try:
        yield
    except GeneratorExit:  # the consumer stopped early: not an error
        ended(scope, kind, perf_counter() - start, None, **fields)
        raise
    except BaseException as exc:
        ended(scope, kind, perf_counter() - start, exc, **fields)
        raise
    ended(scope, kind, perf_counter() - start, None, **fields)


def started(scope: Scope, kind: str, **fields: Any) -> float:
    """Emit ``on_<kind>_start``; the time it started."""
    scope.emit(f"on_{kind}_start", **fields)
    return perf_counter()


def ended(
    scope: Scope, kind: str, duration: float, error: BaseException | None, **fields: Any
) -> None:
    """Emit ``on_<kind>_end``, with the error that ended it, if any."""
    if error is None:
        scope.emit(f"on_{kind}_end", duration=duration, **fields)
    else:
        scope.emit(f"on_{kind}_end", error=error, duration=duration, **fields)


def check_cache(cache: object) -> CacheStore | None:
    """``cache`` if it is None or a cache store; a clear TypeError otherwise."""
    if cache is None or all(callable(getattr(cache, m, None)) for m in ("get", "set")):
        return cache  # type: ignore[return-value]
    raise TypeError(
        f"cache must be a cache store such as plait.MemoryCache() or "
        f"plait.DiskCache(path), got {type(cache).__name__}: {cache!r}"
    )


def check_callbacks(callbacks: object) -> tuple[object, ...]:
    """``callbacks`` as a tuple; a clear TypeError for a single callback or a non-list."""
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Sequence):
        if any(hasattr(callbacks, event) for event in EVENTS):
            raise TypeError(
                f"callbacks takes a list of callbacks: callbacks=[{type(callbacks).__name__}(...)]"
            )
        raise TypeError(f"callbacks must be a list of callbacks, got {callbacks!r}")
    for callback in callbacks:
        if not any(callable(getattr(callback, event, None)) for event in EVENTS):
            raise TypeError(
                f"{callback!r} is not a callback: it implements none of {', '.join(EVENTS)}"
            )
    return tuple(callbacks)
