"""Engine: how a pipeline's nodes and map items are executed."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

from plait.engine import executors
from plait.engine.controls import NodeRuntime
from plait.engine.executors import terminate_pool
from plait.engine.hooks import NodeHooks
from plait.engine.nesting import ENCLOSING, Enclosing
from plait.engine.plan import Plan
from plait.engine.resources import run_with_deps
from plait.engine.scheduler import run_plan
from plait.errors import EngineError

if TYPE_CHECKING:
    from plait.cache.stores import CacheStore
    from plait.callbacks.dispatch import Scope


class Engine:
    """Orchestrates runs: the scheduler plus the executors work runs on.

    Args:
        node_executor: where sync nodes run within one run. ``"sequential"``
            (default) calls them inline on the event loop, one at a time;
            ``"threaded"`` runs them on a thread pool the engine owns, so
            independent blocking nodes overlap; ``"async"`` runs them on threads
            too and keeps at most ``max_concurrent`` nodes of a run in flight;
            ``"parallel"`` on a process pool
            it owns (closures and lambdas travel with cloudpickle); an
            ``Executor`` instance is used as given. Async nodes always run as
            tasks on the event loop.
        map_executor: how :meth:`~plait.Pipeline.map` runs items. ``"sequential"``
            (default): one after another; ``"async"``: as tasks on the event loop,
            at most ``max_concurrent`` at once (the way to run 10,000 async calls);
            ``"threaded"``: each item on a thread of a pool the engine owns; an
            ``Executor`` instance: each item submitted to it.
        max_workers: size of the executors the engine creates (default:
            ``os.cpu_count()``).
        max_concurrent: items in flight at once with ``map_executor="async"``;
            nodes in flight at once within a run with ``node_executor="async"``.
        cache: a cache store (:class:`~plait.MemoryCache`, :class:`~plait.DiskCache`)
            for every pipeline run on this engine that has none of its own.
        callbacks: callbacks for every run and map on this engine, in addition
            to the pipeline's own.

    Executors given as strings are created on first use, kept across runs, and
    shut down by :meth:`close` (or ``with Engine(...) as engine:``); instances
    passed in are never shut down by the engine.

        >>> engine = Engine(map_executor="async", max_concurrent=100)
    """

    def __init__(
        self,
        node_executor: str | Executor = "sequential",
        map_executor: str | Executor = "sequential",
        *,
        max_workers: int | None = None,
        max_concurrent: int = 10,
        cache: CacheStore | None = None,
        callbacks: Sequence[object] = (),
    ) -> None:
        self._node_spec = executors.check_spec(
            node_executor, "node_executor", executors.NODE_EXECUTORS
        )
        self._map_spec = executors.check_spec(map_executor, "map_executor", executors.MAP_EXECUTORS)
        _check_positive("max_workers", max_workers, allow_none=True)
        _check_positive("max_concurrent", max_concurrent, allow_none=False)
        self._max_workers = max_workers
        self._max_concurrent = max_concurrent
        self.cache = check_cache(cache)
        self.callbacks = check_callbacks(callbacks)
        self._pools: dict[str, Executor | None] = {}
        self._owned: list[Executor] = []
        self._scaled: dict[int, Engine] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def node_executor(self) -> str | Executor:
        """The node executor as given: an alias or an Executor instance."""
        return self._node_spec

    @property
    def map_executor(self) -> str | Executor:
        """The map executor as given: an alias or an Executor instance."""
        return self._map_spec

    @property
    def max_workers(self) -> int | None:
        return self._max_workers

    @property
    def max_concurrent(self) -> int:
        return self._max_concurrent

    @property
    def inline(self) -> bool:
        """True when sync nodes are plain calls on the event loop."""
        return self._node_spec == "sequential"

    def node_pool(self) -> Executor | None:
        """The executor for sync nodes, created on first use; None when inline."""
        return self._pool("node", self._node_spec)

    def map_pool(self) -> Executor | None:
        """The executor for map items; None for ``"sequential"`` and ``"async"``."""
        return self._pool("map", self._map_spec)

    def _pool(self, role: str, spec: str | Executor) -> Executor | None:
        if isinstance(spec, Executor):
            return spec
        if spec in ("sequential", "async"):
            return None
        pool = self._pools.get(role)
        if pool is not None:
            return pool
        with self._lock:
            if self._closed:
                raise EngineError("this Engine is closed; create a new one to run pipelines")
            pool = self._pools.get(role)
            if pool is None:
                pool = executors.create(spec, self._max_workers, f"plait-{role}")
                if pool is not None:
                    self._owned.append(pool)
                    weakref.finalize(self, pool.shutdown, wait=False)
                self._pools[role] = pool
        return pool

    def threads(self) -> Executor:
        """The thread pool for nodes that ask for threads (``executor="threaded"``, a
        sync node's ``timeout``): the node executor when that is ``"threaded"``."""
        pool = self._pool("node" if self._node_spec == "threaded" else "threads", "threaded")
        assert pool is not None
        return pool

    def runtime(self, plan: Plan) -> NodeRuntime | None:
        """Fresh limits for one run or map of ``plan``; None when no node has controls."""
        if not plan.has_controls:
            return None
        executors = [self._executor_for(step.node.options.executor) for step in plan.steps]
        return NodeRuntime(plan, executors, self.threads)

    def _executor_for(self, spec: str | Executor | None) -> Executor | None:
        if spec is None:
            return self.threads() if self._node_spec == "async" else self.node_pool()
        if isinstance(spec, Executor):
            return spec
        if spec == "parallel":
            return self._pool("node" if self._node_spec == "parallel" else "processes", spec)
        return self.threads() if spec == "threaded" else None

    async def arun_plan(
        self,
        plan: Plan,
        values: list[Any],
        hooks: NodeHooks | None = None,
        scope: Scope | None = None,
        cache: CacheStore | None = None,
    ) -> None:
        """Run a compiled plan, writing results into ``values``; ``hooks``, ``scope``
        and ``cache`` are the run's cache and callbacks (see :mod:`.services`)."""
        here = ENCLOSING.get()
        token = ENCLOSING.set(Enclosing(self, here.map_depth, here.map_width, scope, cache))
        try:
            limit = self._max_concurrent if self._node_spec == "async" else None
            run = partial(
                run_plan, plan, values, self.node_pool(), self.runtime(plan), limit, hooks
            )
            await run_with_deps(plan, values, run)
        finally:
            ENCLOSING.reset(token)

    def scaled(self, width: int) -> Engine:
        """This engine for a map nested in one of its map items: ``width`` items at once.

        Nodes run as here; map items run on an engine of the same kind sized to
        ``width``. A width of 1 runs them one by one, and so do executor
        instances and process pools, where nested items would queue behind
        their own parents.
        """
        width = max(1, width)
        with self._lock:
            engine = self._scaled.get(width)
            if engine is None:
                kind = self._map_spec if width > 1 else "sequential"
                if kind not in ("async", "threaded"):
                    kind = "sequential"
                engine = Engine(
                    self._node_spec,
                    kind,
                    max_workers=width if kind == "threaded" else self._max_workers,
                    max_concurrent=width if kind == "async" else self._max_concurrent,
                )
                self._scaled[width] = engine
        return engine

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent to another process: aliases travel, executor instances and
        # callbacks stay behind (their events are replayed in this process).
        def alias(spec: str | Executor) -> str:
            return spec if isinstance(spec, str) else "sequential"

        return (
            _rebuild_engine,
            (
                alias(self._node_spec),
                alias(self._map_spec),
                self._max_workers,
                self._max_concurrent,
                self.cache,
            ),
        )

    def discard_map_pool(self) -> None:
        """Terminate the owned map process pool now (after a failure or a dead worker);
        the next map starts a fresh one."""
        with self._lock:
            pool = self._pools.pop("map", None)
            if pool in self._owned:
                self._owned.remove(pool)
        if isinstance(pool, ProcessPoolExecutor):
            terminate_pool(pool)
        elif pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Shut down the executors this engine created (waiting for their jobs)."""
        with self._lock:
            self._closed = True
            owned, self._owned = self._owned, []
            self._pools.clear()
            scaled, self._scaled = list(self._scaled.values()), {}
        for pool in owned:
            pool.shutdown(wait=True)
        for engine in scaled:
            engine.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        options = [f"node_executor={self._node_spec!r}", f"map_executor={self._map_spec!r}"]
        if self._max_workers:
            options.append(f"max_workers={self._max_workers}")
        if "async" in (self._map_spec, self._node_spec):
            options.append(f"max_concurrent={self._max_concurrent}")
        return f"Engine({', '.join(options)})"


def _rebuild_engine(
    node_executor: str,
    map_executor: str,
    max_workers: int | None,
    max_concurrent: int,
    cache: CacheStore | None,
) -> Engine:
    return Engine(
        node_executor,
        map_executor,
        max_workers=max_workers,
        max_concurrent=max_concurrent,
        cache=cache,
    )


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
    from plait.callbacks.base import EVENTS

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


def _check_positive(option: str, value: object, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise EngineError(f"{option} must be a positive int, got {value!r}")
