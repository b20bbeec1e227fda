"""The checks every run and map gets before any engine sees it.

:class:`~plait.Pipeline` calls these once per request, before the engine, so every
engine raises the same errors for the same mistakes, and none starts work on a
request that cannot succeed.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, overload

from plait._text import did_you_mean, plural, quoted, short_repr
from plait.deps import all_deps
from plait.engine.base import MapMode
from plait.errors import (
    InputError,
    IteratorInputWarning,
    MissingInputsError,
    UnusedInputWarning,
)
from plait.graph import Graph

#: Unused inputs named in full in a warning; more are counted.
LISTED = 10


def normalize_outputs(output_name: object) -> tuple[str, ...] | None:
    """``output_name`` as a tuple of names without repeats, or None for every output."""
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


@dataclass(frozen=True)
class Consumers:
    """Which nodes of a checked request take each given input, for :func:`check_iterators`."""

    #: Each given input the request's nodes take -> their names.
    by_input: Mapping[str, tuple[str, ...]]
    #: The inputs more than one node takes: (name, node names). Usually empty.
    shared: tuple[tuple[str, tuple[str, ...]], ...]


def check_run(
    graph: Graph, outputs: tuple[str, ...] | None, given: Collection[str], stacklevel: int
) -> Consumers:
    """Check that a run of ``graph`` for ``outputs`` with inputs named ``given`` can start,
    and return which nodes take each input (the request checks its values with it).

    Raises UnknownOutputError, InputError (an output given as an input) or
    MissingInputsError (every missing input, with the nodes that need it); warns
    UnusedInputWarning for inputs no node takes (``stacklevel`` from the caller).
    """
    unused = []
    for name in given:
        if graph.producer_index(name) is not None:
            raise InputError(
                f"{name!r} is an output of node {graph.producer(name).name!r}, not an "
                f"input; pipeline inputs are {quoted(graph.inputs) or 'none'}"
            )
        if not graph.is_input(name):
            unused.append(name)
    if unused:
        _warn_unused(graph, unused, stacklevel + 1)
    needed = graph.run_order(outputs)
    missing = _missing_inputs(graph, needed, given)
    if missing:
        raise missing_inputs_error(graph, missing)
    by_input: dict[str, list[str]] = {}
    for index in needed:
        item = graph.nodes[index]
        for param in item.inputs:
            if param in given and param not in item.deps:
                by_input.setdefault(param, []).append(item.name)
    shared = tuple((name, tuple(nodes)) for name, nodes in by_input.items() if len(nodes) > 1)
    return Consumers({name: tuple(nodes) for name, nodes in by_input.items()}, shared)


def check_iterators(
    given: Mapping[str, Any], consumers: Consumers, mapped: Collection[str], stacklevel: int
) -> None:
    """Warn IteratorInputWarning for an iterator input that more than one call consumes.

    The first call exhausts it and the others see it empty, so this is almost always a
    mistake; the input is passed on as it is (a lazy iterator may be long or endless,
    so plait does not copy it into a list). In a run, that is an iterator more than one
    node takes; in a map (``mapped`` not empty), also any iterator broadcast to every
    item. Costs nothing for a run in which no input is taken by two nodes.
    """
    if not mapped:  # a run: only inputs two nodes take (the cached few), one check each
        for name, nodes in consumers.shared:
            if isinstance(given[name], Iterator):
                _warn_iterator(name, given[name], nodes, "is", stacklevel + 1)
        return
    for name, nodes in consumers.by_input.items():
        if name not in mapped and isinstance(given[name], Iterator):
            how = "is broadcast to every item of the map, and"
            _warn_iterator(name, given[name], nodes, how, stacklevel + 1)


def _warn_iterator(
    name: str, value: object, nodes: tuple[str, ...], how: str, stacklevel: int
) -> None:
    takers = f"node {nodes[0]!r}" if len(nodes) == 1 else f"nodes {quoted(nodes)}"
    warnings.warn(
        f"input {name!r} is an iterator ({type(value).__name__}) and {how} taken by "
        f"{takers}: the first call exhausts it and the others get it empty. Pass a "
        f"list instead: inputs={{{name!r}: list(...)}}",
        IteratorInputWarning,
        stacklevel=stacklevel,
    )


def _warn_unused(graph: Graph, unused: list[str], stacklevel: int) -> None:
    hint = did_you_mean(unused[0], graph.inputs) if len(unused) == 1 else ""
    inputs = graph.inputs
    listed = quoted(inputs[:LISTED]) or "none"
    if len(inputs) > LISTED:
        listed += f" and {len(inputs) - LISTED} more"
    names = quoted(unused[:LISTED])
    if len(unused) > LISTED:
        names += f" and {len(unused) - LISTED} more"
    what = "input" if len(unused) == 1 else "inputs"
    verb = "is" if len(unused) == 1 else "are"
    warnings.warn(
        f"{what} {names} {verb} not used by any node and {verb} ignored.{hint} "
        f"Pipeline inputs: {listed}",
        UnusedInputWarning,
        stacklevel=stacklevel,
    )


def _missing_inputs(
    graph: Graph, needed: Iterable[int], given: Collection[str]
) -> dict[str, list[str]]:
    """Inputs the ``needed`` nodes take that are neither given, produced nor defaulted."""
    missing: dict[str, list[str]] = {}
    nodes = graph.nodes
    for index in needed:
        item = nodes[index]
        for param in item.inputs:
            if param in item.deps:
                continue
            if param in given or param in item.defaults or graph.producer_index(param) is not None:
                continue
            missing.setdefault(param, []).append(item.name)
        for param in item.dep_inputs:
            if param not in given and param not in item.dep_defaults:
                missing.setdefault(param, []).append(item.name)
    return missing


def missing_inputs_error(graph: Graph, missing: dict[str, list[str]]) -> MissingInputsError:
    """The error listing each missing input (name -> the nodes needing it)."""
    lines = []
    for param, needers in missing.items():
        described = ", ".join(graph[n].describe() for n in needers)
        lines.append(
            f"  {param!r}, needed by {'node' if len(needers) == 1 else 'nodes'} {described}"
        )
    message = (
        f"missing {plural(len(missing), 'required input')}: {quoted(missing)}\n"
        + "\n".join(lines)
        + "\nPass them in inputs={...} or bind them with pipeline.bind(...)."
    )
    return MissingInputsError(message, {p: tuple(n) for p, n in missing.items()})


@dataclass(frozen=True)
class MapSpec:
    """A checked map: which inputs vary per item and how items are formed."""

    names: tuple[str, ...]
    mode: MapMode
    columns: tuple[Iterable[Any], ...]

    @classmethod
    def of(cls, inputs: Mapping[str, Any], map_over: Sequence[str], mode: MapMode) -> MapSpec:
        """The spec of a map :func:`check_map` has passed."""
        names = tuple(map_over)
        return cls(names, mode, tuple(inputs[n] for n in names))

    def size_hint(self) -> int | None:
        """How many items there will be, when the inputs tell."""
        sizes = [len(c) for c in self.columns if isinstance(c, Sized)]
        if self.mode == "product":
            return math.prod(sizes) if len(sizes) == len(self.columns) else None
        return sizes[0] if sizes else None

    def items(self) -> Iterator[tuple[Any, ...]]:
        """The mapped values of each item, in order."""
        if self.mode == "product":
            return itertools.product(*self.columns)
        if len(self.columns) == 1:
            return zip(self.columns[0])
        return _strict_zip(self.names, self.columns)

    def items_and_values(self) -> tuple[Iterator[tuple[Any, ...]], Iterator[Any] | None]:
        """:meth:`items`, and when the map zips a single input, the iterator of its values
        they are read from: values taken from it (:class:`OneInputItems`) are items
        taken without a tuple made for each."""
        if self.mode == "zip" and len(self.columns) == 1:
            values = iter(self.columns[0])
            return zip(values), values
        return self.items(), None

    def inputs(self, item: tuple[Any, ...]) -> dict[str, Any]:
        """An item's mapped values by input name."""
        return dict(zip(self.names, item, strict=True))


class OneInputItems(Sequence[tuple[Any, ...]]):
    """Consecutive items of a map over one input, held as that input's values: read as
    the one-value tuples they are, with no tuple made per item until one is read (a
    chunk of them is pickled as its values)."""

    __slots__ = ("values",)

    def __init__(self, values: list[Any]) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return zip(self.values)

    @overload
    def __getitem__(self, position: int) -> tuple[Any, ...]: ...
    @overload
    def __getitem__(self, position: slice) -> OneInputItems: ...
    def __getitem__(self, position: int | slice) -> Any:
        if isinstance(position, slice):
            return OneInputItems(self.values[position])
        return (self.values[position],)


def map_items(
    inputs: Mapping[str, Any], map_over: Sequence[str], map_mode: MapMode
) -> Iterator[dict[str, Any]]:
    """Each item's mapped inputs by name, in order: what an engine runs per item."""
    spec = MapSpec.of(inputs, map_over, map_mode)
    return (spec.inputs(item) for item in spec.items())


def check_map(
    given: Mapping[str, Any],
    map_over: str | Sequence[str],
    map_mode: str,
    on_error: str,
    pipeline_inputs: Sequence[str],
) -> tuple[str, ...]:
    """Check a map's arguments before any work starts; the mapped input names."""
    names = (map_over,) if isinstance(map_over, str) else tuple(map_over)
    if not names or not all(isinstance(n, str) for n in names):
        raise InputError(f"map_over must be an input name or a list of names, got {map_over!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"map_over names {quoted(repeated)} more than once; name each input once")
    if map_mode not in ("zip", "product"):
        raise InputError(f"map_mode must be 'zip' or 'product', got {map_mode!r}")
    if on_error not in ("raise", "collect"):
        raise InputError(f"on_error must be 'raise' or 'collect', got {on_error!r}")
    for name in names:
        if name not in pipeline_inputs:
            raise InputError(
                f"map_over names {name!r}, which is not an input of this pipeline."
                f"{did_you_mean(name, pipeline_inputs)} Inputs: {quoted(pipeline_inputs)}"
            )
        if name not in given:
            raise InputError(
                f"map_over names {name!r} but inputs has no {name!r}; pass its values: "
                f"inputs={{{name!r}: [...]}}"
            )
        _check_column(name, given[name])
    if map_mode == "zip" and len(names) > 1:
        _check_lengths(names, [given[n] for n in names])
    return names


def check_map_deps(graph: Graph, outputs: tuple[str, ...] | None, mapped: Sequence[str]) -> None:
    """A dep set up once per map (``scope="run"``) must not take a mapped input."""
    needed = graph.run_order(outputs)
    nodes = graph.nodes
    shared = [dep for i in needed for dep in nodes[i].deps.values() if dep.scope == "run"]
    for dep in all_deps(shared):  # run-scoped deps only use run-scoped ones (see Dep)
        for param in dep.params:
            if param in mapped:
                raise InputError(
                    f"{dep!r} takes {param!r}, which this map goes over, so it differs per "
                    f"item: declare it Dep(..., scope='item') to set it up once per item"
                )


def _check_column(name: str, values: object) -> None:
    if isinstance(values, (str, bytes)):
        raise InputError(
            f"mapped input {name!r} is a {type(values).__name__} ({short_repr(values)}); "
            "mapping over it would run one item per character. Pass a list of values: "
            f"inputs={{{name!r}: [...]}}"
        )
    try:
        iter(values)  # type: ignore[call-overload]
    except TypeError:
        raise InputError(
            f"mapped input {name!r} must be iterable (a list, range, generator, array ...), "
            f"got {type(values).__name__}: {short_repr(values)}"
        ) from None


def _check_lengths(names: Sequence[str], columns: Sequence[object]) -> None:
    lengths = {n: len(c) for n, c in zip(names, columns, strict=True) if isinstance(c, Sized)}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{n!r} has {plural(k, 'item')}" for n, k in lengths.items())
        raise InputError(
            f"map_mode='zip' needs mapped inputs of one length: {listed}. "
            "Make them equal, or use map_mode='product' for every combination."
        )


_ZIP_MISMATCH = re.compile(r"zip\(\) argument (?P<arg>\d+) is (?P<how>shorter|longer) than")


def _strict_zip(
    names: Sequence[str], columns: Sequence[Iterable[Any]]
) -> Iterator[tuple[Any, ...]]:
    """zip(), but running out of one input before the others is an error naming both."""
    count = 0
    try:
        for row in zip(*columns, strict=True):
            yield row
            count += 1
    except ValueError as exc:
        mismatch = _ZIP_MISMATCH.match(str(exc))
        if mismatch is None:
            raise  # raised by an input's own iterator
        other = names[int(mismatch["arg"]) - 1]
        ended, more = (other, names[0]) if mismatch["how"] == "shorter" else (names[0], other)
        raise InputError(
            f"map_mode='zip' needs mapped inputs of one length: {ended!r} ended after "
            f"{plural(count, 'item')} while {more!r} had more"
        ) from None


def annotate_item(exc: BaseException, index: int, inputs: Mapping[str, Any]) -> None:
    """Add a note to ``exc`` naming the map item and its mapped inputs."""
    shown = ", ".join(f"{k}={short_repr(v)}" for k, v in inputs.items())
    exc.add_note(f"plait: in map item {index} with inputs ({shown})")
