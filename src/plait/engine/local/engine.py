"""LocalEngine: runs pipelines on this machine — inline, as tasks, on threads or processes."""

from __future__ import annotations

import math
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from plait.bridge import ensure_loop, loop_optional
from plait.engine.base import Engine, Finished, MapMode, OnError, PipelineView
from plait.engine.context import ENCLOSING, Enclosing
from plait.engine.local import executors, observe
from plait.engine.local.async_executor import AsyncExecutor
from plait.engine.local.batches import items_route
from plait.engine.local.controls import NodeRuntime, timed_on_threads
from plait.engine.local.executors import terminate_pool, worker_count
from plait.engine.local.items import ItemRunner
from plait.engine.local.mapping import map_items
from plait.engine.local.plan import Plan, Route, plan_for
from plait.engine.local.resources import run_with_deps
from plait.engine.local.scheduler import run_plan
from plait.engine.request import MapSpec
from plait.errors import EngineError

if TYPE_CHECKING:
    from plait.cache.stores import CacheStore
    from plait.graph import Graph


class LocalEngine(Engine):
    """Runs pipelines on this machine: the dataflow scheduler plus the executors it uses.

    Args:
        node_executor: where sync nodes run within one run. ``"sequential"``
            (default) calls them inline on the event loop, one at a time;
            ``"threaded"`` runs them on a thread pool the engine owns, so
            independent blocking nodes overlap; ``"async"`` runs them on threads
            too and keeps at most ``max_concurrent`` nodes of a run in flight;
            ``"parallel"`` on a process pool it owns (closures and lambdas travel
            with cloudpickle); an ``Executor`` instance is used as given. Async
            nodes always run as tasks on the event loop.
        map_executor: how :meth:`~plait.Pipeline.map` runs items. ``"sequential"``
            (default): one after another; ``"async"``: as tasks on the event loop,
            at most ``max_concurrent`` at once (the way to run 10,000 async calls);
            ``"threaded"``: chunks of items on the threads of a pool the engine owns
            (each item in its own copy of the caller's context; a plan
            that needs an event loop, or has batch nodes, runs items as tasks on the
            map's loop, where its deps and loop-bound clients live and its items can
            share batch calls, and only its plain sync nodes on the threads:
            :attr:`Route.items_on_loop <plait.engine.local.plan.Route>`);
            ``"parallel"``: chunks of items on a process pool it owns; an
            ``Executor`` instance: each item submitted to it (chunks of items to a
            ``ThreadPoolExecutor``).
        max_workers: size of the executors the engine creates (default:
            ``os.cpu_count()``).
        max_concurrent: items in flight at once with ``map_executor="async"``;
            nodes in flight at once within a run with ``node_executor="async"``.
        cache: a cache store (:class:`~plait.MemoryCache`, :class:`~plait.DiskCache`)
            for every pipeline run on this engine that has none of its own.
        callbacks: callbacks for every run and map on this engine, in addition
            to the pipeline's own.

    Executors given as strings are created on first use, kept across runs, and
    shut down by :meth:`close` (or ``with LocalEngine(...) as engine:``); instances
    passed in are never shut down by the engine. Where a plan runs (as plain
    calls without an event loop, on the dataflow scheduler, on which executor)
    is decided once per plan and engine (:class:`~plait.engine.local.plan.Route`).

        >>> engine = LocalEngine(map_executor="async", max_concurrent=100)
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
        self.cache = observe.check_cache(cache)
        self.callbacks = observe.check_callbacks(callbacks)
        self._pools: dict[str, Executor | None] = {}
        self._owned: list[Executor] = []
        self._scaled: dict[int, LocalEngine] = {}
        self._routes: weakref.WeakKeyDictionary[Graph, dict[Any, Route]] = (
            weakref.WeakKeyDictionary()
        )
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
        """The size of the executors this engine creates (None: the CPU count)."""
        return self._max_workers

    @property
    def max_concurrent(self) -> int:
        """Items (``"async"`` maps) or nodes (``"async"`` runs) in flight at once."""
        return self._max_concurrent

    # --- the two entry points ---------------------------------------------------

    @loop_optional
    async def arun(
        self,
        pipeline: PipelineView,
        inputs: Mapping[str, Any],
        output_name: tuple[str, ...] | None = None,
    ) -> dict[str, Any]:
        """Run ``pipeline`` once; see :meth:`plait.Engine.arun`.

        A run whose route is inline never suspends: driven from sync code, it
        runs without any event loop.
        """
        route = self.route(pipeline.graph, output_name, inputs)
        if not route.inline:
            await ensure_loop()
        plan = route.plan
        values = plan.new_values(inputs)
        services = observe.resolve(pipeline, self)
        here = ENCLOSING.get()
        nested = self if here.map_depth == 0 else self.nested_engine(here.map_depth, here.map_width)
        scope, cache = (None, None) if services is None else (services.scope, services.cache)
        token = ENCLOSING.set(Enclosing(nested, here.map_depth, here.map_width, scope, cache))
        try:
            runtime = self.runtime(plan)
            if services is None:
                run = partial(run_plan, route, values, runtime)
                await run_with_deps(plan, values, run, owner=self)
            else:
                await observe.observed_run(services, route, values, runtime, self)
        finally:
            ENCLOSING.reset(token)
        return plan.outputs(values)

    def aimap(
        self,
        pipeline: PipelineView,
        inputs: Mapping[str, Any],
        map_over: tuple[str, ...],
        *,
        map_mode: MapMode = "zip",
        output_name: tuple[str, ...] | None = None,
        on_error: OnError = "raise",
        ordered: bool = False,
    ) -> AsyncIterator[Finished]:
        """Run ``pipeline`` once per item; see :meth:`plait.Engine.aimap`.

        A sequential map of a plan whose route is inline never suspends: driven
        from sync code, it runs as plain calls without any event loop.
        """
        spec = MapSpec.of(inputs, map_over, map_mode)
        route = self.route(pipeline.graph, output_name, inputs)
        threads = None
        if not route.map_inline:
            pool = self.map_pool()  # created now, or refused now if this engine is closed
            if route.items_on_loop:
                assert pool is not None
                route, threads = _items_route(route, pool), pool
            elif isinstance(pool, AsyncExecutor):
                _check_async_executor_deps(route.plan)
        if route.plan.batched:
            route = items_route(route)
        runner = ItemRunner(route, inputs, spec.names, self.runtime(route.plan, threads))
        runner.owner = self
        services = observe.resolve(pipeline, self)
        if services is not None:
            runner.observe(services)
        if route.plan.batched:
            runner.batch()
        return map_items(self, runner, spec, on_error, ordered)

    # --- routes and executors --------------------------------------------------

    def route(
        self, graph: Graph, outputs: tuple[str, ...] | None, inputs: Mapping[str, Any]
    ) -> Route:
        """Where a run of ``graph`` for ``outputs`` with these inputs runs; decided once."""
        key = (outputs, frozenset(inputs))
        routes = self._routes.get(graph)
        if routes is None:
            routes = self._routes.setdefault(graph, {})
        route = routes.get(key)
        if route is None:
            route = routes[key] = self._decide(plan_for(graph, outputs, inputs))
        return route

    def _decide(self, plan: Plan) -> Route:
        limit = self._max_concurrent if self._node_spec == "async" else None
        executor = None if limit is not None else self.node_pool()
        inline = executor is None and limit is None and not plan.needs_loop
        # A map of batch nodes runs its items together, as tasks: see local/batches.py.
        map_inline = inline and self._map_spec == "sequential" and not plan.batched
        return Route(plan, inline, map_inline, executor, limit, self._items_on_loop(plan))

    def _items_on_loop(self, plan: Plan) -> bool:
        """Whether a map's items run as tasks on the map's loop, not on its threads.

        A map executor of threads in this process (``"threaded"``, a
        ``ThreadPoolExecutor``) would run each item on its thread's own event loop,
        while the map's deps were set up on the map's loop and a module-global
        client was bound to the caller's: an async client used there fails
        ("attached to a different loop") or hangs. So when the plan needs a loop,
        its items run on the map's loop and only its plain sync nodes go to the
        threads; a plan of plain sync calls still runs whole items on them.
        """
        spec = self._map_spec
        on_loop = plan.needs_loop or bool(plan.batched)  # batch calls gather items on a loop
        return on_loop and (spec == "threaded" or isinstance(spec, ThreadPoolExecutor))

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
                raise EngineError("this LocalEngine is closed; create a new one to run pipelines")
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

    def runtime(self, plan: Plan, threads: Executor | None = None) -> NodeRuntime | None:
        """Fresh limits for one run or map of ``plan``; None when no node has controls.

        ``threads``: where controlled sync nodes with no executor of their own run
        (a map's thread pool when its items run on the map's loop) instead of inline.
        """
        if not plan.has_controls:
            return None
        chosen = [self._executor_for(step.node.options.executor) for step in plan.steps]
        for index, step in enumerate(plan.steps):
            pool = chosen[index]
            if pool is None and threads is not None and not step.is_async:
                chosen[index] = pool = threads
            if timed_on_threads(step) and (pool is None or pool in self._owned_threads()):
                chosen[index] = None  # on daemon threads: see timed_on_threads
        return NodeRuntime(plan, chosen, self.timed_threads)

    def timed_threads(self) -> Executor:
        """Daemon threads for sync nodes with a timeout (:class:`executors.DaemonThreads`)."""
        pool = self._pool("timed", "timed")
        assert pool is not None
        return pool

    def _owned_threads(self) -> list[Executor]:
        return [pool for pool in self._owned if isinstance(pool, ThreadPoolExecutor)]

    def _executor_for(self, spec: str | Executor | None) -> Executor | None:
        if spec is None:
            return self.threads() if self._node_spec == "async" else self.node_pool()
        if isinstance(spec, Executor):
            return spec
        if spec == "parallel":
            return self._pool("node" if self._node_spec == "parallel" else "processes", spec)
        return self.threads() if spec == "threaded" else None

    def map_window(self, executor: Executor | None) -> int:
        """Items a map keeps in flight on ``executor`` (the map pool, or None)."""
        if executor is None:
            return self._max_concurrent if self._map_spec == "async" else 1
        return 2 * worker_count(executor, self._max_workers)

    def owns_map_pool(self) -> bool:
        """True when the map pool is one this engine created (and may replace)."""
        return isinstance(self._map_spec, str)

    # --- nesting ---------------------------------------------------------------

    def nested_engine(self, depth: int, width: int) -> LocalEngine:
        """The engine pipelines without their own run on inside an item of this engine's
        map at ``depth`` (1: not nested in another map) with ``width`` items in flight:
        one sized to ⌊√width⌋ at depth 1, deeper one that runs items one by one, so
        nested maps share one concurrency budget. (At the top, outside any map, nested
        runs use this engine itself.)"""
        return self.scaled(math.isqrt(width) if depth == 1 else 1)

    def scaled(self, width: int) -> LocalEngine:
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
                engine = LocalEngine(
                    self._node_spec,
                    kind,
                    max_workers=width if kind == "threaded" else self._max_workers,
                    max_concurrent=width if kind == "async" else self._max_concurrent,
                )
                self._scaled[width] = engine
        return engine

    # --- lifetime --------------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent to another process: aliases travel, executor instances and
        # callbacks stay behind (their events are replayed in this process).
        def alias(spec: str | Executor) -> str:
            return spec if isinstance(spec, str) else "sequential"

        return (
            _rebuild,
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
        """Shut down the executors this engine created (waiting for their jobs), then
        tear down the process-scoped deps its runs made here that no other engine holds."""
        with self._lock:
            self._closed = True
            owned, self._owned = self._owned, []
            self._pools.clear()
            self._routes.clear()  # they hold executors
            scaled, self._scaled = list(self._scaled.values()), {}
        for pool in owned:
            pool.shutdown(wait=True)
        for engine in scaled:
            engine.close()
        process_deps = sys.modules.get("plait.engine.local.process_deps")
        if process_deps is not None:  # loaded once a run took a process-scoped dep
            process_deps.release(self)

    def __enter__(self) -> LocalEngine:
        return self

    def __repr__(self) -> str:
        options = [f"node_executor={self._node_spec!r}", f"map_executor={self._map_spec!r}"]
        if self._max_workers:
            options.append(f"max_workers={self._max_workers}")
        if "async" in (self._map_spec, self._node_spec):
            options.append(f"max_concurrent={self._max_concurrent}")
        return f"LocalEngine({', '.join(options)})"


def _items_route(route: Route, pool: Executor) -> Route:
    """The route of a map's items run on its loop (``route.items_on_loop``): plain sync
    nodes go to the map's thread pool, unless the engine has a node executor or limit."""
    if route.executor is not None or route.limit is not None:
        return route
    return replace(route, executor=pool)


def _check_async_executor_deps(plan: Plan) -> None:
    """An AsyncExecutor runs a map's items on its own loop: async run-scoped deps, set up
    on the map's loop, cannot be used there."""
    shared = [dep for dep, _ in plan.deps if dep.scope == "run" and dep.is_async]
    if shared:
        names = ", ".join(repr(dep) for dep in shared)
        raise EngineError(
            f"map_executor=AsyncExecutor(...) runs map items on its own event loop, but "
            f"{names} is async and set up once for the map on the caller's loop: what it "
            "yields (an async client) cannot be used on another loop. Use "
            'map_executor="async" (items as tasks on the caller\'s loop, at most '
            'max_concurrent at once), or give the dep scope="item"'
        )


def _rebuild(
    node_executor: str,
    map_executor: str,
    max_workers: int | None,
    max_concurrent: int,
    cache: CacheStore | None,
) -> LocalEngine:
    return LocalEngine(
        node_executor,
        map_executor,
        max_workers=max_workers,
        max_concurrent=max_concurrent,
        cache=cache,
    )


def _check_positive(option: str, value: object, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise EngineError(f"{option} must be a positive int, got {value!r}")
