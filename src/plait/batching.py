"""Batch nodes: what a node declares about its batch form, and how that form is called.

A node made with ``batch_size`` has a *batch form*: a function taking one list per
input (the values of several items, in order) and returning one list per output
(a list for a single output, a tuple of lists for a tuple ``output_name``), with
one result per item, in order. With ``batch=`` the node's own function handles one
item and ``batch`` is the batch form; without it the node's function *is* the batch
form and one item is a batch of one. Deps are passed once per batch call, as they
are (one resource serves the whole batch).

This module is the engine-neutral description (:class:`Batching`, read from
``node.batching``) and the calls every engine makes: :func:`call_batch` /
:func:`acall_batch` call the batch form on columns and check their lengths,
:func:`batch_results` splits a batch form's return value into per-item results.
Grouping items into batches is the engine's business (``plait.engine.local.batches``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from plait._inspect import is_async_callable
from plait._text import callable_name, plural, short_repr
from plait.errors import BatchLengthError, NodeDefinitionError


@dataclass(frozen=True, slots=True)
class Batching:
    """A node's batch form.

    Attributes:
        func: the batch form: one list per input in, one list per output out.
        size: the most items one call of ``func`` gets.
        max_wait: seconds a partial batch waits for more items before it is called
            anyway (None: until it is full or no other item in flight can join it).
        is_async: ``func`` is ``async def`` (or returns a coroutine when called).
        separate: the node has a single-item function of its own (``batch=`` was given);
            otherwise the node's function is ``func`` and one item is a batch of one.
    """

    func: Callable[..., Any]
    size: int
    max_wait: float | None
    is_async: bool
    separate: bool


class BatchNode(Protocol):
    """What the calls here read of a node (a :class:`~plait.Node` with ``batching``)."""

    @property
    def name(self) -> str: ...
    @property
    def output_name(self) -> str | tuple[str, ...]: ...
    @property
    def outputs(self) -> tuple[str, ...]: ...
    @property
    def inputs(self) -> tuple[str, ...]: ...
    @property
    def positional(self) -> tuple[str, ...]: ...
    @property
    def keyword(self) -> tuple[str, ...]: ...
    @property
    def batching(self) -> Batching | None: ...


def make_batching(
    node_name: str,
    func: Callable[..., Any],
    *,
    batch: Callable[..., Any] | None,
    batch_size: object,
    max_wait: object,
) -> Batching | None:
    """Check ``@node(batch_size=..., batch=..., max_wait=...)``; None when not a batch node."""
    if batch_size is None:
        given = [name for name, value in (("batch", batch), ("max_wait", max_wait)) if value]
        if given:
            raise NodeDefinitionError(
                f"node {node_name!r}: {' and '.join(given)} need batch_size: pass "
                "batch_size=N, the most items one batch call takes"
            )
        return None
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise NodeDefinitionError(
            f"node {node_name!r}: batch_size must be an int >= 1, got {batch_size!r}"
        )
    wait: float | None = None
    if max_wait is not None:
        if (
            not isinstance(max_wait, (int, float))
            or isinstance(max_wait, bool)
            or not math.isfinite(max_wait)
            or max_wait < 0
        ):
            raise NodeDefinitionError(
                f"node {node_name!r}: max_wait must be seconds >= 0 or None, got {max_wait!r}"
            )
        wait = float(max_wait)
    if batch is None:
        return Batching(func, batch_size, wait, is_async_callable(func), separate=False)
    if not callable(batch):
        raise NodeDefinitionError(
            f"node {node_name!r}: batch must be a function taking one list per input, "
            f"got {type(batch).__name__}: {batch!r}"
        )
    _check_same_parameters(node_name, func, batch)
    return Batching(batch, batch_size, wait, is_async_callable(batch), separate=True)


def _check_same_parameters(
    node_name: str, func: Callable[..., Any], batch: Callable[..., Any]
) -> None:
    """The batch form takes the node's inputs under the same names, in the same order."""

    def params(fn: Callable[..., Any]) -> list[tuple[str, bool]] | None:
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):
            return None
        return [
            (p.name, p.kind is p.KEYWORD_ONLY)
            for p in signature.parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    single, batched = params(func), params(batch)
    if single is not None and batched is not None and single != batched:

        def shown(ps: list[tuple[str, bool]]) -> str:
            return ", ".join(name for name, _ in ps)

        raise NodeDefinitionError(
            f"node {node_name!r}: its batch function {callable_name(batch)}({shown(batched)}) "
            f"must take the same parameters as {callable_name(func)}({shown(single)}), in the "
            "same order: the batch form gets a list for each input (a dep's value as it is)"
        )


def batch_results(node: BatchNode, result: Any, size: int) -> list[Any]:
    """The return value of ``node``'s batch form for ``size`` items, split per item: each
    item's value, or its tuple of values for a tuple ``output_name``. Raises
    :class:`~plait.errors.BatchLengthError` naming the node and both lengths."""
    columns = batch_columns(node, result, size)
    if len(columns) == 1 and isinstance(node.output_name, str):
        return columns[0]
    return list(zip(*columns, strict=True))


def batch_columns(node: BatchNode, result: Any, size: int) -> tuple[list[Any], ...]:
    """The return value of ``node``'s batch form as one list per output, each checked to
    hold ``size`` results."""
    if isinstance(node.output_name, str):
        return (_column(node, result, size, None),)
    outputs = node.outputs
    if not isinstance(result, tuple) or len(result) != len(outputs):
        raise BatchLengthError(
            f"node {node.name!r} declares {plural(len(outputs), 'output')} "
            f"{node.output_name!r}: its batch function must return a tuple of "
            f"{len(outputs)} lists, one per output; it returned {type(result).__name__} "
            f"{short_repr(result)}"
        )
    return tuple(
        _column(node, part, size, name) for part, name in zip(result, outputs, strict=True)
    )


def _column(node: BatchNode, values: Any, size: int, output: str | None) -> list[Any]:
    of = "" if output is None else f" for output {output!r}"
    try:
        column = values if type(values) is list else list(values)
    except TypeError:
        raise BatchLengthError(
            f"node {node.name!r}: its batch function must return a list{of} with one result "
            f"per item; it returned {type(values).__name__} {short_repr(values)}"
        ) from None
    if len(column) != size:
        raise BatchLengthError(
            f"node {node.name!r}: its batch function returned {plural(len(column), 'result')}"
            f"{of} for a batch of {plural(size, 'item')}; it must return one result per item, "
            "in order"
        )
    return column


def call_batch(
    node: BatchNode,
    columns: Mapping[str, Sequence[Any]],
    resources: Mapping[str, Any] | None = None,
) -> tuple[list[Any], ...]:
    """Call ``node``'s (sync) batch form on ``columns`` (one list per input, by name;
    every input of the node, all of one length) with ``resources`` (its deps' values,
    by parameter); return one list per output, each checked to hold a result per item.

    The call another engine makes to run a batch node on a batch of rows::

        vec, = call_batch(embed, {"text": ["a", "b"]})
    """
    batching, args, kwargs, size = _prepare(node, columns, resources)
    if batching.is_async:
        raise TypeError(
            f"node {node.name!r} has an async batch function: await acall_batch(...) "
            "(or plait.run_sync(acall_batch(...)) from sync code)"
        )
    return batch_columns(node, batching.func(*args, **kwargs), size)


async def acall_batch(
    node: BatchNode,
    columns: Mapping[str, Sequence[Any]],
    resources: Mapping[str, Any] | None = None,
) -> tuple[list[Any], ...]:
    """:func:`call_batch` for a sync or async batch form."""
    batching, args, kwargs, size = _prepare(node, columns, resources)
    result = batching.func(*args, **kwargs)
    if batching.is_async:
        result = await result
    return batch_columns(node, result, size)


def _prepare(
    node: BatchNode, columns: Mapping[str, Sequence[Any]], resources: Mapping[str, Any] | None
) -> tuple[Batching, list[Any], dict[str, Any], int]:
    batching = node.batching
    if batching is None:
        raise TypeError(f"node {node.name!r} has no batch form: make it with batch_size=...")
    resources = resources or {}
    missing = [name for name in node.inputs if name not in columns]
    extra = [name for name in columns if name not in node.inputs]
    if missing or extra:
        raise ValueError(
            f"node {node.name!r} takes the columns {', '.join(node.inputs) or '(none)'}; "
            + (f"missing: {', '.join(missing)}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"not its inputs: {', '.join(extra)}" if extra else "")
        )
    lengths = {name: len(columns[name]) for name in node.inputs}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}: {n}" for name, n in lengths.items())
        raise ValueError(f"node {node.name!r}: the columns differ in length ({shown})")
    size = next(iter(lengths.values()), 0)

    def value(param: str) -> Any:
        if param in columns:
            return list(columns[param])
        if param in resources:
            return resources[param]
        raise ValueError(f"node {node.name!r}: no value for its dep parameter {param!r}")

    args = [value(p) for p in node.positional]
    kwargs = {p: value(p) for p in node.keyword}
    return batching, args, kwargs, size


class OneItem:
    """One item's call of a node whose function is its batch form: the batch form on
    lists of one (deps as they are), its results unpacked."""

    __slots__ = ("deps", "node", "positional")

    def __init__(self, node: BatchNode, deps: frozenset[str]) -> None:
        self.node = node
        self.positional = node.positional
        self.deps = deps

    def lists(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        deps = self.deps
        listed = [a if p in deps else [a] for p, a in zip(self.positional, args, strict=False)]
        return listed, {k: v if k in deps else [v] for k, v in kwargs.items()}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        batching = self.node.batching
        assert batching is not None
        listed, named = self.lists(args, kwargs)
        return batch_results(self.node, batching.func(*listed, **named), 1)[0]


class AsyncOneItem(OneItem):
    """:class:`OneItem` for an async batch form."""

    __slots__ = ()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        batching = self.node.batching
        assert batching is not None
        listed, named = self.lists(args, kwargs)
        return batch_results(self.node, await batching.func(*listed, **named), 1)[0]
