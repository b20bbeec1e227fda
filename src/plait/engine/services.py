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
from contextvars import ContextVar
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

from plait.callbacks.dispatch import Dispatcher, Emitter, Scope
from plait.engine.hooks import NodeHooks
from plait.engine.nesting import ENCLOSING
from plait.errors import CacheWarning

if TYPE_CHECKING:
    from plait.cache.signatures import CacheSetup
    from plait.cache.stores import CacheStore
    from plait.engine.engine import Engine
    from plait.engine.plan import Plan

T = TypeVar("T")

#: Set by a nested pipeline's node while it runs the inner pipeline: the node's name.
NESTED_NODE: ContextVar[str | None] = ContextVar("plait_nested_node", default=None)


@dataclass(frozen=True, slots=True)
class Services:
    """What one run or map observes with: its cache and its callbacks scope."""

    cache: CacheStore | None
    scope: Scope | None
    nested: bool  # inside another run: nested events, inherited services
    parent_item: int | None  # the enclosing map item, if any

    def for_worker(self) -> Services:
        """These services as a worker process gets them: events recorded for replay
        here, and the cache only if processes can share it."""
        from plait.callbacks.remote import recording_scope

        cache = self.cache
        if cache is not None and not getattr(cache, "process_safe", False):
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

    def hooks(self, plan: Plan, setup: CacheSetup | None, item: int | None = None) -> NodeHooks:
        """Hooks for one run (or one map item) of ``plan``."""
        return NodeHooks(plan, self.scope, None if setup is None else setup.signer(), item)

    def setup(self, plan: Plan, varying: Sequence[int] = ()) -> CacheSetup | None:
        """The cache setup shared by the runs of ``plan`` (None without a cache)."""
        if self.cache is None:
            return None
        from plait.cache.signatures import CacheSetup

        return CacheSetup(plan, self.cache, varying)


def resolve(
    name: str | None,
    cache: CacheStore | None,
    callbacks: Sequence[object],
    engine: Engine,
) -> Services | None:
    """The services for a run of the pipeline called ``name``; None when there are none."""
    here = ENCLOSING.get()
    parent = here.scope
    cache = cache if cache is not None else engine.cache if engine.cache is not None else here.cache
    own = (*callbacks, *engine.callbacks)
    if parent is not None:
        dispatch: Emitter | None = parent.dispatch.extended(own) if own else parent.dispatch
    else:
        dispatch = Dispatcher(own) if own else None
    if cache is None and dispatch is None:
        return None
    scope = None
    label = name or "pipeline"
    if dispatch is not None:
        if parent is None:
            path: tuple[str, ...] = (label,)
        else:
            via = NESTED_NODE.get()
            path = (*parent.path, via, label) if via else (*parent.path, label)
        scope = Scope(dispatch, label, path, None if parent is None else parent.scope_id)
    return Services(cache, scope, parent is not None, here.item)


async def observed_run(services: Services, engine: Engine, plan: Plan, values: list[Any]) -> None:
    """One run of ``plan`` with its cache and its start and end events."""
    hooks = services.hooks(plan, services.setup(plan), services.parent_item)
    scope = services.scope
    if scope is None:
        await engine.arun_plan(plan, values, hooks, None, services.cache)
        return
    kind = "nested_pipeline" if services.nested else "pipeline"
    with _lifetime(scope, kind, item=services.parent_item):
        await engine.arun_plan(plan, values, hooks, scope, services.cache)


async def observed_map(
    services: Services, total: int | None, batches: AsyncGenerator[T, None]
) -> AsyncGenerator[T, None]:
    """A map's stream of batches between its ``on_map_start`` and ``on_map_end``
    (``item`` is the enclosing map item of a map nested in one)."""
    assert services.scope is not None
    try:
        with _lifetime(services.scope, "map", total=total, item=services.parent_item):
            async for batch in batches:
                yield batch
    finally:
        await batches.aclose()


def observed_items(services: Services, total: int | None, items: Iterator[T]) -> Iterator[T]:
    """The sync twin of :func:`observed_map`, for maps that run as plain calls."""
    assert services.scope is not None
    with _lifetime(services.scope, "map", total=total, item=services.parent_item):
        yield from items


@contextmanager
def _lifetime(scope: Scope, kind: str, **fields: Any) -> Iterator[None]:
    """The ``on_<kind>_start`` and ``on_<kind>_end`` events around the block; the end
    carries the error that ended it, except a consumer stopping a stream early."""
    scope.emit(f"on_{kind}_start", **fields)
    start = perf_counter()
    try:
        yield
    except GeneratorExit:  # the consumer stopped early: not an error
        scope.emit(f"on_{kind}_end", duration=perf_counter() - start, **fields)
        raise
    except BaseException as exc:
        scope.emit(f"on_{kind}_end", error=exc, duration=perf_counter() - start, **fields)
        raise
    scope.emit(f"on_{kind}_end", duration=perf_counter() - start, **fields)
