"""Pipeline: an immutable, validated graph of nodes and the engine that runs it."""

from __future__ import annotations

import operator
import os
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Container,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from plait import bridge, viz
from plait._text import did_you_mean, quoted
from plait.engine.base import Consecutive, Engine, Finished, MapMode, OnError, Outcome
from plait.engine.context import ENCLOSING
from plait.engine.local import LocalEngine
from plait.engine.local.observe import check_cache, check_callbacks
from plait.engine.request import (
    Consumers,
    check_iterators,
    check_map,
    check_map_deps,
    check_run,
    normalize_outputs,
)
from plait.errors import InputError
from plait.graph import Graph
from plait.nested import as_node
from plait.node import Node
from plait.viz import render

if TYPE_CHECKING:
    from plait.cache.stores import CacheStore

OutputSelection = str | Sequence[str] | None

_DEFAULT_ENGINE = LocalEngine()


class _Shared:
    """What every pipeline derived from one graph shares: the graph and the requests
    already checked against it."""

    __slots__ = ("checked", "graph", "lock")

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.checked: dict[tuple[tuple[str, ...] | None, frozenset[str]], Consumers] = {}
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
        if self._engine is not None:
            return self._engine
        return ENCLOSING.get().engine or _DEFAULT_ENGINE

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
        (see :mod:`plait.engine.context`).

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
        given, outputs = self._request(self._given(inputs), output_name, stacklevel=4)
        return await self._run_engine().arun(self, given, outputs)

    def run(
        self, inputs: Mapping[str, Any] | None = None, output_name: OutputSelection = None
    ) -> dict[str, Any]:
        """Run the pipeline from sync code and return its outputs; see :meth:`arun`.

        Works in a script, in worker threads and inside a running event loop
        (where it blocks that loop until done and warns once: prefer ``await
        arun()`` there). Ctrl-C cancels the whole run. A run of plain sync nodes
        on the local engine needs no event loop and starts none.
        """
        given, outputs = self._request(self._given(inputs), output_name, stacklevel=4)
        return bridge.block_on(self._run_engine().arun(self, given, outputs), stacklevel=3)

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
        return await _collect(self._map(inputs, map_over, map_mode, output_name, on_error, False))

    def map(
        self,
        inputs: Mapping[str, Any] | None = None,
        map_over: str | Sequence[str] = (),
        map_mode: MapMode = "zip",
        output_name: OutputSelection = None,
        on_error: OnError = "raise",
    ) -> list[Outcome]:
        """Run the pipeline once per item and return one dict of outputs per item, in order.

        ``map_over`` names the inputs that vary per item; each is any iterable
        (not a string). ``map_mode="zip"`` pairs them item by item (they must have
        one length); ``"product"`` runs every combination. Other inputs are
        broadcast to every item. How items run is the engine's business (for
        :class:`~plait.LocalEngine`, its ``map_executor``).

        By default the first failing item cancels the rest and its exception
        propagates with a note naming the item; with ``on_error="collect"`` every
        item comes back and a failed one is an :class:`~plait.ItemError` in its
        place. Works from sync code anywhere, like :meth:`run`.

            >>> pipeline.map({"x": [1, 2, 3]}, map_over="x")  # doctest: +SKIP
            [{'y': 2}, {'y': 4}, {'y': 6}]
        """
        stream = self._map(inputs, map_over, map_mode, output_name, on_error, False)
        return bridge.block_on(_collect(stream), stacklevel=3)

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
        stream = self._map(inputs, map_over, map_mode, output_name, on_error, ordered)
        return _pairs(bridge.iterate(stream, stacklevel=4))  # warnings name the caller's loop

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
        return _apairs(self._map(inputs, map_over, map_mode, output_name, on_error, ordered))

    def _map(
        self,
        inputs: Mapping[str, Any] | None,
        map_over: str | Sequence[str],
        map_mode: MapMode,
        output_name: OutputSelection,
        on_error: OnError,
        ordered: bool,
    ) -> AsyncIterator[Finished]:
        """Check a map request, then hand it to the engine."""
        given = self._given(inputs)
        names = check_map(given, map_over, map_mode, on_error, self.graph.inputs)
        given, outputs = self._request(given, output_name, stacklevel=5, mapped=names)
        check_map_deps(self.graph, outputs, names)
        return self._run_engine().aimap(
            self,
            given,
            names,
            map_mode=map_mode,
            output_name=outputs,
            on_error=on_error,
            ordered=ordered,
        )

    # --- pictures ---------------------------------------------------------------

    def to_dot(
        self, *, output_name: OutputSelection = None, depth: int | None = 1, orient: str = "TB"
    ) -> str:
        """The pipeline's picture as Graphviz DOT text (needs nothing installed).

        It shows the inputs (required; optional with their default; bound with their
        value), the nodes (sync or async, with the controls they set), the outputs,
        edges named after the value they carry, and nested pipelines as clusters,
        ``depth`` levels deep (0: as single boxes; None: all levels), with what they
        map over. With ``output_name`` only the nodes a run for those outputs needs
        are drawn. ``orient`` is ``"TB"`` (top to bottom), ``"LR"``, ``"BT"`` or ``"RL"``.
        """
        return viz.to_dot(self._figure(output_name, depth, orient))

    def to_mermaid(
        self, *, output_name: OutputSelection = None, depth: int | None = 1, orient: str = "TB"
    ) -> str:
        """The picture as Mermaid flowchart text, for Markdown and GitHub; see :meth:`to_dot`."""
        return viz.to_mermaid(self._figure(output_name, depth, orient))

    def visualize(
        self,
        filename: str | os.PathLike[str] | None = None,
        format: str | None = None,
        *,
        output_name: OutputSelection = None,
        depth: int | None = 1,
        orient: str = "TB",
    ) -> Any:
        """Draw the picture (:meth:`to_dot`) with Graphviz; returns a ``graphviz.Source``,
        which a notebook displays.

        With ``filename`` it is also written there, as ``format`` (``"svg"``, ``"png"``,
        ...; by default the filename's suffix, else SVG). Needs the extra ``plait[viz]``
        and Graphviz's ``dot`` program; an ImportError names both when either is missing.
        """
        picture = self._figure(output_name, depth, orient)
        drawing = render.source(viz.to_dot(picture), render.format_for(filename, format))
        if filename is not None:
            render.write(drawing, filename)
        return drawing

    def _repr_mimebundle_(
        self, include: Container[str] | None = None, exclude: Container[str] | None = None
    ) -> dict[str, str]:
        """Jupyter shows a pipeline as its picture: SVG with Graphviz, else Mermaid."""
        picture = self._figure(None, 1, "TB")
        return render.mimebundle(
            viz.to_dot(picture), viz.to_mermaid(picture), repr(self), include, exclude
        )

    def _figure(self, output_name: OutputSelection, depth: int | None, orient: str) -> viz.Figure:
        return viz.figure(self, output_name=output_name, depth=depth, orient=orient)

    # --- shared preparation ---------------------------------------------------

    def _request(
        self,
        given: dict[str, Any],
        output_name: OutputSelection,
        *,
        stacklevel: int,
        mapped: tuple[str, ...] = (),
    ) -> tuple[dict[str, Any], tuple[str, ...] | None]:
        """The inputs (``given``: bound ones merged in) and outputs of a checked request.

        Every check that every engine needs runs here, once per output selection
        and set of input names (see :mod:`plait.engine.request`); only iterator
        inputs that several calls would consume are looked for on each request.
        """
        outputs = normalize_outputs(output_name)
        key = (outputs, frozenset(given))
        consumers = self._shared.checked.get(key)
        if consumers is None:
            consumers = check_run(self.graph, outputs, given, stacklevel=stacklevel)
            with self._shared.lock:
                self._shared.checked[key] = consumers
        if consumers.shared or mapped:
            check_iterators(given, consumers, mapped, stacklevel=stacklevel)
        return given, outputs

    def _given(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        if inputs is None:
            return dict(self._bound)
        if isinstance(inputs, Mapping):
            return {**self._bound, **inputs} if self._bound else dict(inputs)
        raise InputError(
            f"inputs must be a mapping of input name to value, got {type(inputs).__name__}"
        )

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
        shared = getattr(self, "_shared", None)
        if shared is None:  # construction failed (a debugger shows the half-built object)
            return "<Pipeline (not built)>"
        name = getattr(self, "_name", None)
        shown = f"{name!r}, " if name else ""
        inputs = quoted(self.input_names) or "none"
        return (
            f"Pipeline({shown}{len(self.graph)} nodes, inputs: {inputs}, "
            f"outputs: {quoted(self.output_names)})"
        )


def _check_engine(engine: object) -> Engine:
    if not isinstance(engine, Engine):
        raise TypeError(
            f"engine must be a plait.Engine such as plait.LocalEngine(...), got "
            f"{type(engine).__name__}; to run on an executor use "
            "LocalEngine(node_executor=executor)"
        )
    return engine


@bridge.loop_optional
async def _collect(stream: AsyncIterator[Finished]) -> list[Outcome]:
    """Every outcome of a map, in input order. Needs an event loop only if the stream does."""
    if not bridge.is_loop_optional(stream):
        await bridge.ensure_loop()
    results: list[Any] = []  # by index; a gap holds None until its item arrives
    try:
        async for finished in stream:
            count = len(results)
            if type(finished) is Consecutive:  # a chunk's outcomes: in their place at once
                first, outcomes = finished.first, finished.outcomes
                end = first + len(outcomes)
                if first == count:
                    results += outcomes
                else:
                    results += [None] * (end - count)  # nothing when they fill a gap
                    results[first:end] = outcomes
                continue
            if len(finished) == 1:  # an item on its own (a sequential map): the common case
                index, outcome = finished[0]
                if index == count:
                    results.append(outcome)
                    continue
            elif finished[0][0] == count and finished[-1][0] == count + len(finished) - 1:
                results += map(_outcome, finished)  # the next items, all of them (in order)
                continue
            for index, outcome in finished:
                if index == count:
                    results.append(outcome)
                    count += 1
                elif index < count:
                    results[index] = outcome
                else:  # ahead of items still running
                    results += [None] * (index - count)
                    results.append(outcome)
                    count = index + 1
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    return results


_outcome = operator.itemgetter(1)


def _pairs(stream: Iterator[Finished]) -> Iterator[tuple[int, Outcome]]:
    """A map's ``(index, outcome)`` pairs one by one; closing this closes ``stream``."""
    try:
        for finished in stream:
            yield from finished
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


async def _apairs(stream: AsyncIterator[Finished]) -> AsyncGenerator[tuple[int, Outcome], None]:
    """The async form of :func:`_pairs`."""
    try:
        async for finished in stream:
            for pair in finished:
                yield pair
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


def _rebuild_pipeline(
    nodes: tuple[Node[..., Any], ...],
    engine: Engine | None,
    name: str | None,
    bound: dict[str, Any],
    cache: CacheStore | None = None,
) -> Pipeline:
    pipeline = Pipeline(nodes, engine=engine, name=name, cache=cache)
    return pipeline.bind(**bound) if bound else pipeline
