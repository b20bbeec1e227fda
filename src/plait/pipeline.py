"""Pipeline: an immutable, validated graph of nodes and the engine that runs it."""

from __future__ import annotations

import threading
import warnings
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from plait import bridge, streams
from plait._text import did_you_mean, quoted
from plait.engine import Engine
from plait.engine.engine import check_cache, check_callbacks
from plait.engine.executors import worker_count
from plait.engine.mapping import (
    ExecutorLauncher,
    ItemRunner,
    Launcher,
    MapMode,
    MapSpec,
    OnError,
    Outcome,
    TaskLauncher,
    check_map,
    iterate,
)
from plait.engine.nesting import ENCLOSING, Enclosing, nested_engine
from plait.engine.parallel import ProcessLauncher
from plait.engine.plan import Plan, compile_plan
from plait.engine.resources import around_inline_map, around_map, map_scope
from plait.engine.services import Services, observed_items, observed_map, observed_run, resolve
from plait.errors import InputError, UnusedInputWarning
from plait.graph import Graph
from plait.nested import as_node
from plait.node import Node

if TYPE_CHECKING:
    from plait.cache.stores import CacheStore

OutputSelection = str | Sequence[str] | None

_DEFAULT_ENGINE = Engine()


class _Shared:
    """What every pipeline derived from one graph shares: the graph and its plans."""

    __slots__ = ("graph", "lock", "plans")

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.plans: dict[tuple[tuple[str, ...] | None, frozenset[str]], Plan] = {}
        self.lock = threading.Lock()


class Pipeline:
    """Nodes wired by name into a validated graph, run with automatic concurrency.

    The graph is built and checked once, here: duplicate outputs, duplicate node
    names and cycles raise :class:`~plait.errors.GraphError` subclasses. The order of
    ``nodes`` does not matter. Pipelines are immutable: :meth:`bind`,
    :meth:`unbind`, :meth:`with_engine` and :meth:`with_name` return new ones.

        >>> @node(output_name="y")
        ... def double(x):
        ...     return 2 * x
        >>> @node(output_name="z")
        ... async def inc(y):
        ...     return y + 1
        >>> Pipeline([inc, double]).run(inputs={"x": 3})
        {'y': 6, 'z': 7}

    Args:
        nodes: the nodes, in any order.
        engine: how nodes run (default: sync nodes inline, async nodes as tasks).
        name: a name for errors, reprs and callbacks.
        cache: a cache store (:class:`~plait.MemoryCache`, :class:`~plait.DiskCache`):
            a node whose code and inputs were seen before is not run again.
        callbacks: objects told of runs, nodes and map items (see
            :mod:`plait.callbacks`), in addition to the engine's.
    """

    __slots__ = ("_bound", "_cache", "_callbacks", "_engine", "_name", "_shared")

    def __init__(
        self,
        nodes: Iterable[Node[..., Any]],
        *,
        engine: Engine | None = None,
        name: str | None = None,
        cache: CacheStore | None = None,
        callbacks: Sequence[object] = (),
    ) -> None:
        if isinstance(nodes, Node):
            raise TypeError("Pipeline takes a list of nodes: Pipeline([my_node])")
        self._shared = _Shared(Graph(nodes))
        self._engine = None if engine is None else _check_engine(engine)
        self._name = name
        self._bound: Mapping[str, Any] = MappingProxyType({})
        self._cache = check_cache(cache)
        self._callbacks = check_callbacks(callbacks)

    def _derive(
        self,
        *,
        engine: Engine | None = None,
        name: str | None = None,
        bound: Mapping[str, Any] | None = None,
        cache: CacheStore | None = None,
        callbacks: Sequence[object] | None = None,
    ) -> Pipeline:
        new = object.__new__(Pipeline)
        new._shared = self._shared
        new._engine = self._engine if engine is None else engine
        new._name = self._name if name is None else name
        new._bound = self._bound if bound is None else MappingProxyType(dict(bound))
        new._cache = self._cache if cache is None else cache
        new._callbacks = self._callbacks if callbacks is None else tuple(callbacks)
        return new

    # --- the graph ----------------------------------------------------------

    @property
    def graph(self) -> Graph:
        """A read-only view of the graph: nodes, producers, consumers, order."""
        return self._shared.graph

    @property
    def nodes(self) -> tuple[Node[..., Any], ...]:
        return self.graph.nodes

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def cache(self) -> CacheStore | None:
        """The cache given to this pipeline, or None (then the engine's, or when
        nested the enclosing run's, is used)."""
        return self._cache

    @property
    def callbacks(self) -> tuple[object, ...]:
        """This pipeline's own callbacks (the engine's and an enclosing run's add to them)."""
        return self._callbacks

    @property
    def engine(self) -> Engine | None:
        """The engine given to this pipeline, or None: then it runs on the engine of the
        run that calls it (when nested), else on the default engine."""
        return self._engine

    def _run_engine(self) -> Engine:
        """The engine this call runs on (see :attr:`engine`)."""
        return self._engine if self._engine is not None else nested_engine(_DEFAULT_ENGINE)

    @property
    def input_names(self) -> tuple[str, ...]:
        """Every input: names that nodes consume and no node produces."""
        return self.graph.inputs

    @property
    def required_inputs(self) -> tuple[str, ...]:
        """Inputs some node has no default for (whether bound or not)."""
        return self.graph.required_inputs

    @property
    def optional_inputs(self) -> tuple[str, ...]:
        """Inputs every consuming node has a default for."""
        return self.graph.optional_inputs

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.graph.outputs

    @property
    def bound_inputs(self) -> Mapping[str, Any]:
        """Inputs fixed with :meth:`bind`."""
        return self._bound

    @property
    def unfulfilled_args(self) -> tuple[str, ...]:
        """Required inputs not bound: what every run must pass in ``inputs``."""
        return tuple(n for n in self.graph.required_inputs if n not in self._bound)

    # --- derived pipelines --------------------------------------------------

    def bind(self, **inputs: Any) -> Pipeline:
        """A new pipeline with these inputs fixed (a run's ``inputs`` may override them)."""
        for name in inputs:
            self._check_input_name(name, "bind")
        return self._derive(bound={**self._bound, **inputs})

    def unbind(self, *names: str) -> Pipeline:
        """A new pipeline without these bound inputs."""
        unknown = [n for n in names if n not in self._bound]
        if unknown:
            raise InputError(
                f"cannot unbind {quoted(unknown)}: not bound. "
                f"Bound inputs: {quoted(self._bound) or 'none'}"
            )
        return self._derive(bound={k: v for k, v in self._bound.items() if k not in names})

    def with_engine(self, engine: Engine) -> Pipeline:
        """A new pipeline that runs on ``engine``."""
        return self._derive(engine=_check_engine(engine))

    def with_name(self, name: str) -> Pipeline:
        """A new pipeline called ``name``."""
        return self._derive(name=name)

    def with_cache(self, cache: CacheStore) -> Pipeline:
        """A new pipeline that caches node results in ``cache``."""
        return self._derive(cache=check_cache(cache))

    def with_callbacks(self, callbacks: Sequence[object]) -> Pipeline:
        """A new pipeline with these callbacks instead of its own."""
        return self._derive(callbacks=check_callbacks(callbacks))

    def as_node(
        self,
        input_mapping: Mapping[str, str] | None = None,
        output_mapping: Mapping[str, str] | None = None,
        map_over: str | Sequence[str] | None = None,
        map_mode: MapMode = "zip",
        name: str | None = None,
    ) -> Node[..., Any]:
        """This pipeline as one (async) node of another pipeline.

        The node's inputs are this pipeline's unbound inputs, renamed by
        ``input_mapping={outer: inner}``; optional ones stay optional. Its outputs are
        all of this pipeline's outputs, or with ``output_mapping={inner: outer}`` only
        those, renamed, and then only the inner nodes they need run. With
        ``map_over`` (outer input names) the node takes iterables for those inputs,
        maps this pipeline over them and returns one list per output.

        The pipeline runs on its own engine when it was given one; otherwise on the
        engine of the run that calls it, with nested maps sharing one budget
        (see :mod:`plait.engine.nesting`).

            >>> per_doc = Pipeline([tokenize, count], name="per_doc")  # doctest: +SKIP
            >>> corpus = Pipeline([per_doc.as_node(map_over="text",
            ...                                    output_mapping={"count": "counts"}),
            ...                    total])
        """
        return as_node(
            self,
            input_mapping=input_mapping,
            output_mapping=output_mapping,
            map_over=map_over,
            map_mode=map_mode,
            name=name,
        )

    # --- running --------------------------------------------------------------

    async def arun(
        self, inputs: Mapping[str, Any] | None = None, output_name: OutputSelection = None
    ) -> dict[str, Any]:
        """Run the pipeline on the current event loop; the native form of :meth:`run`.

        Returns a dict of node outputs: all of them, or those named by
        ``output_name`` (a name or a list of names), in which case only the nodes
        needed for them run and only their inputs are required.
        """
        plan, values = self._prepare(inputs, output_name)
        engine = self._run_engine()
        services = self._services(engine)
        if services is None:
            await engine.arun_plan(plan, values)
        else:
            await observed_run(services, engine, plan, values)
        return plan.outputs(values)

    def run(
        self, inputs: Mapping[str, Any] | None = None, output_name: OutputSelection = None
    ) -> dict[str, Any]:
        """Run the pipeline from sync code and return its outputs; see :meth:`arun`.

        Works in a script, in worker threads and inside a running event loop
        (where it blocks that loop until done and warns once: prefer ``await
        arun()`` there). Ctrl-C cancels the whole run.
        """
        plan, values = self._prepare(inputs, output_name)
        engine = self._run_engine()
        services = self._services(engine)
        if services is None:
            run = engine.arun_plan(plan, values)
        else:
            run = observed_run(services, engine, plan, values)
        if engine.inline and not plan.needs_loop:
            # Nothing can suspend: run without any event loop.
            bridge.drive_inline(run)
        else:
            bridge._run_sync(run, timeout=None, stacklevel=3)
        return plan.outputs(values)

    # --- mapping ---------------------------------------------------------------

    async def amap(
        self,
        inputs: Mapping[str, Any] | None = None,
        map_over: str | Sequence[str] = (),
        map_mode: MapMode = "zip",
        output_name: OutputSelection = None,
        on_error: OnError = "raise",
    ) -> list[Outcome]:
        """Run the pipeline once per item; the native form of :meth:`map`."""
        engine, runner, spec = self._prepare_map(inputs, map_over, map_mode, output_name, on_error)
        return await streams.collect(self._iterate(engine, runner, spec, ordered=False))

    def map(
        self,
        inputs: Mapping[str, Any] | None = None,
        map_over: str | Sequence[str] = (),
        map_mode: MapMode = "zip",
        output_name: OutputSelection = None,
        on_error: OnError = "raise",
    ) -> list[Outcome]:
        """Run the pipeline once per item and return one dict of outputs per item, in order.

        ``map_over`` names the inputs that vary per item; each is any iterable.
        ``map_mode="zip"`` pairs them item by item (they must have one length);
        ``"product"`` runs every combination. Other inputs are broadcast to every
        item. How items run is the engine's ``map_executor``.

        By default the first failing item cancels the rest and its exception
        propagates with a note naming the item; with ``on_error="collect"`` every
        item comes back and a failed one is an :class:`~plait.ItemError` in its
        place. Works from sync code anywhere, like :meth:`run`.

            >>> pipeline.map({"x": [1, 2, 3]}, map_over="x")  # doctest: +SKIP
            [{'y': 2}, {'y': 4}, {'y': 6}]
        """
        engine, runner, spec = self._prepare_map(inputs, map_over, map_mode, output_name, on_error)
        if streams.runs_inline(engine, runner.plan):
            return [outcome for _, outcome in self._inline_items(runner, spec)]
        return bridge._run_sync(
            streams.collect(self._iterate(engine, runner, spec, ordered=False)),
            timeout=None,
            stacklevel=3,
        )

    def imap(
        self,
        inputs: Mapping[str, Any] | None = None,
        map_over: str | Sequence[str] = (),
        map_mode: MapMode = "zip",
        output_name: OutputSelection = None,
        on_error: OnError = "raise",
        ordered: bool = False,
    ) -> Iterator[tuple[int, Outcome]]:
        """Stream ``(index, outputs)`` pairs as items finish (in input order with ``ordered``).

        Items in flight are bounded by the engine, so a million items stream with
        flat memory. Leaving the loop early cancels what is in flight. Arguments
        are checked before this returns; see :meth:`map` for their meaning.
        """
        engine, runner, spec = self._prepare_map(inputs, map_over, map_mode, output_name, on_error)
        if streams.runs_inline(engine, runner.plan):
            return self._inline_items(runner, spec)
        return streams.sync_stream(self._iterate(engine, runner, spec, ordered=ordered))

    def aimap(
        self,
        inputs: Mapping[str, Any] | None = None,
        map_over: str | Sequence[str] = (),
        map_mode: MapMode = "zip",
        output_name: OutputSelection = None,
        on_error: OnError = "raise",
        ordered: bool = False,
    ) -> AsyncIterator[tuple[int, Outcome]]:
        """The async form of :meth:`imap`: ``async for index, outputs in pipeline.aimap(...)``.

        To cancel in-flight items as soon as you leave the loop early, close the
        iterator: ``async with contextlib.aclosing(pipeline.aimap(...)) as items:``
        (otherwise they are cancelled when the iterator is garbage-collected).
        """
        engine, runner, spec = self._prepare_map(inputs, map_over, map_mode, output_name, on_error)
        return streams.flatten(self._iterate(engine, runner, spec, ordered=ordered))

    def _prepare_map(
        self,
        inputs: Mapping[str, Any] | None,
        map_over: str | Sequence[str],
        map_mode: str,
        output_name: OutputSelection,
        on_error: str,
    ) -> tuple[Engine, ItemRunner, MapSpec]:
        given = self._given(inputs)
        spec = check_map(given, map_over, map_mode, on_error, self.graph.inputs)
        plan = self._plan(_normalize_outputs(output_name), given)
        engine = self._run_engine()
        runner = ItemRunner(plan, given, spec.names, engine.node_pool(), engine.runtime(plan))
        runner.enclosing = Enclosing(engine, ENCLOSING.get().map_depth + 1, 1)
        services = self._services(engine)
        if services is not None:
            runner.observe(services)
        if plan.deps:
            runner.shared = map_scope(plan, runner.base, spec.names)
        return engine, runner, spec

    def _inline_items(self, runner: ItemRunner, spec: MapSpec) -> Iterator[tuple[int, Outcome]]:
        items = streams.inline_items(runner, spec)
        if runner.shared is not None:
            items = around_inline_map(runner.shared, runner.plan, items)
        services = runner.services
        if services is None or services.scope is None:
            return items
        return observed_items(services, spec.size_hint(), items)

    def _iterate(
        self, engine: Engine, runner: ItemRunner, spec: MapSpec, *, ordered: bool
    ) -> streams.Batches:
        executor = engine.map_pool()
        launcher: Launcher
        if executor is None:
            launcher = TaskLauncher(runner)
            window = engine.max_concurrent if engine.map_executor == "async" else 1
        elif isinstance(executor, ProcessPoolExecutor):
            workers = worker_count(executor, engine.max_workers)
            owned = engine.map_executor == "parallel"
            launcher = ProcessLauncher(
                runner,
                executor,
                workers,
                stop_on_error=spec.on_error == "raise",
                size_hint=spec.size_hint(),
                on_abort=engine.discard_map_pool if owned else None,
            )
            window = 2 * workers * launcher.chunk_size
        else:
            launcher = ExecutorLauncher(runner, executor)
            window = 2 * worker_count(executor, engine.max_workers)
        depth = runner.enclosing.map_depth if runner.enclosing else 1
        runner.enclosing = Enclosing(engine, depth, window)  # nested maps share the budget
        batches = iterate(
            runner, spec.items(), launcher, window=window, on_error=spec.on_error, ordered=ordered
        )
        if runner.shared is not None:
            batches = around_map(runner.shared, runner.plan, batches)
        services = runner.services
        if services is None or services.scope is None:
            return batches
        return observed_map(services, spec.size_hint(), batches)

    # --- shared preparation ---------------------------------------------------

    def _given(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        if inputs is None:
            return dict(self._bound)
        if isinstance(inputs, Mapping):
            return {**self._bound, **inputs} if self._bound else dict(inputs)
        raise InputError(
            f"inputs must be a mapping of input name to value, got {type(inputs).__name__}"
        )

    def _plan(self, outputs: tuple[str, ...] | None, given: Mapping[str, Any]) -> Plan:
        key = (outputs, frozenset(given))
        plan = self._shared.plans.get(key)
        if plan is None:
            plan = self._compile(outputs, given)
            with self._shared.lock:
                self._shared.plans[key] = plan
        return plan

    def _prepare(
        self, inputs: Mapping[str, Any] | None, output_name: OutputSelection
    ) -> tuple[Plan, list[Any]]:
        """Check everything that can be checked before a run; return its plan and slots."""
        given = self._given(inputs)
        plan = self._plan(_normalize_outputs(output_name), given)
        return plan, plan.new_values(given)

    def _compile(self, outputs: tuple[str, ...] | None, given: Mapping[str, Any]) -> Plan:
        graph = self.graph
        for name in given:
            if graph.producer_index(name) is not None:
                raise InputError(
                    f"{name!r} is an output of node {graph.producer(name).name!r}, not an "
                    f"input; pipeline inputs are {quoted(graph.inputs) or 'none'}"
                )
            if not graph.is_input(name):
                warnings.warn(
                    f"input {name!r} is not used by any node and is ignored."
                    f"{did_you_mean(name, graph.inputs)} Pipeline inputs: "
                    f"{quoted(graph.inputs) or 'none'}",
                    UnusedInputWarning,
                    stacklevel=5,
                )
        return compile_plan(graph, outputs, given)

    def _services(self, engine: Engine) -> Services | None:
        """The cache and callbacks this run observes with, or None."""
        if self._cache is None and not self._callbacks and engine.cache is None:
            here = ENCLOSING.get()
            if not engine.callbacks and here.scope is None and here.cache is None:
                return None
        return resolve(self._name, self._cache, self._callbacks, engine)

    def _check_input_name(self, name: str, verb: str) -> None:
        graph = self.graph
        if graph.is_input(name):
            return
        if graph.producer_index(name) is not None:
            raise InputError(
                f"cannot {verb} {name!r}: it is an output of node {graph.producer(name).name!r}, "
                f"not an input. Inputs: {quoted(graph.inputs) or 'none'}"
            )
        raise InputError(
            f"cannot {verb} {name!r}: no node takes an input of that name."
            f"{did_you_mean(name, graph.inputs)} Inputs: {quoted(graph.inputs) or 'none'}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # The graph is rebuilt (and checked) on arrival; compiled plans are not sent.
        # Callbacks stay in this process: events of runs elsewhere are replayed here.
        return (
            _rebuild_pipeline,
            (self.nodes, self._engine, self._name, dict(self._bound), self._cache),
        )

    def __repr__(self) -> str:
        name = f"{self._name!r}, " if self._name else ""
        inputs = quoted(self.input_names) or "none"
        return (
            f"Pipeline({name}{len(self.graph)} nodes, inputs: {inputs}, "
            f"outputs: {quoted(self.output_names)})"
        )


def _normalize_outputs(output_name: OutputSelection) -> tuple[str, ...] | None:
    if output_name is None:
        return None
    if isinstance(output_name, str):
        return (output_name,)
    if isinstance(output_name, Sequence) and all(isinstance(n, str) for n in output_name):
        if not output_name:
            raise InputError("output_name is an empty list; pass None to get every output")
        return tuple(dict.fromkeys(output_name))
    raise TypeError(
        f"output_name must be None, an output name or a list of names, got {output_name!r}"
    )


def _check_engine(engine: object) -> Engine:
    if not isinstance(engine, Engine):
        raise TypeError(
            f"engine must be a plait.Engine, got {type(engine).__name__}; "
            "to run on an executor use Engine(node_executor=executor)"
        )
    return engine


def _rebuild_pipeline(
    nodes: tuple[Node[..., Any], ...],
    engine: Engine | None,
    name: str | None,
    bound: dict[str, Any],
    cache: CacheStore | None = None,
) -> Pipeline:
    pipeline = Pipeline(nodes, engine=engine, name=name, cache=cache)
    return pipeline.bind(**bound) if bound else pipeline
