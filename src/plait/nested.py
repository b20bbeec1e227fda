"""A pipeline used as one node of another: ``pipeline.as_node(...)``."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Protocol

from plait._text import did_you_mean, quoted
from plait.engine.base import ItemError, Outcome
from plait.engine.context import NESTED_NODE
from plait.errors import InputError, NodeDefinitionError, UnknownOutputError
from plait.node import Node

if TYPE_CHECKING:
    from plait.graph import Graph


class Nestable(Protocol):
    """What a nested node needs of the pipeline it runs (:class:`plait.Pipeline` has it)."""

    @property
    def name(self) -> str | None: ...
    @property
    def graph(self) -> Graph: ...
    @property
    def nodes(self) -> tuple[Node[..., Any], ...]: ...
    @property
    def input_names(self) -> tuple[str, ...]: ...
    @property
    def optional_inputs(self) -> tuple[str, ...]: ...
    @property
    def output_names(self) -> tuple[str, ...]: ...
    @property
    def bound_inputs(self) -> Mapping[str, Any]: ...

    async def arun(
        self, inputs: Mapping[str, Any] | None = ..., output_name: Any = ...
    ) -> dict[str, Any]: ...

    async def amap(
        self,
        inputs: Mapping[str, Any] | None = ...,
        map_over: str | Sequence[str] = ...,
        map_mode: Any = ...,
        output_name: Any = ...,
        on_error: Any = ...,
    ) -> list[Outcome]: ...


@dataclass(frozen=True, slots=True)
class Nesting:
    """How a node made by :meth:`Pipeline.as_node` runs its pipeline (see :func:`nesting`)."""

    pipeline: Nestable
    #: The node's parameter (outer name) -> the inner input it feeds.
    inputs: Mapping[str, str]
    #: The inner output -> the node's output (outer name) it becomes.
    outputs: Mapping[str, str]
    #: The parameters the node maps the pipeline over; empty when it runs it once.
    map_over: tuple[str, ...]
    map_mode: str


def nesting(item: Node[..., Any]) -> Nesting | None:
    """How ``item`` runs a nested pipeline, or None when it is not a nested node."""
    call = item.func
    if not isinstance(call, _NestedCall):
        return None
    return Nesting(
        pipeline=call.pipeline,
        inputs=MappingProxyType(dict(call.params)),
        outputs=MappingProxyType(dict(zip(call.selected, item.outputs, strict=True))),
        map_over=call.mapped,
        map_mode=call.map_mode,
    )


class _InnerDefault:
    """Stands for "not given: the inner node's own default applies"."""

    def __repr__(self) -> str:
        return "<inner default>"

    def __cache_key__(self) -> str:
        return "plait.nested.INNER_DEFAULT"

    def __reduce__(self) -> str:
        return "INNER_DEFAULT"  # one instance, also after pickling


INNER_DEFAULT: Final = _InnerDefault()


def as_node(
    pipeline: Nestable,
    *,
    input_mapping: Mapping[str, str] | None,
    output_mapping: Mapping[str, str] | None,
    map_over: str | Sequence[str] | None,
    map_mode: str,
    name: str | None,
) -> Node[..., Any]:
    """Build the node that runs ``pipeline``; see :meth:`Pipeline.as_node`."""
    node_name = name or pipeline.name or "nested"
    params = _parameters(pipeline, node_name, input_mapping)
    exposed = _exposed_outputs(pipeline, node_name, output_mapping)
    selected = list(exposed)
    mapped = _mapped_inputs(node_name, params, map_over)
    call = _NestedCall(
        pipeline, params, selected, [exposed[o] for o in selected], mapped, map_mode, node_name
    )
    optional = set(pipeline.optional_inputs)
    call.__signature__ = inspect.Signature(
        [
            inspect.Parameter(
                outer,
                inspect.Parameter.KEYWORD_ONLY,
                default=INNER_DEFAULT if inner in optional else inspect.Parameter.empty,
            )
            for outer, inner in params.items()
        ]
    )
    outputs = [exposed[o] for o in selected]
    output_name = outputs[0] if len(outputs) == 1 else tuple(outputs)
    # Only a name given here is the user's choice; the default (the pipeline's name, or
    # "nested") gives way to distinct names when two such nodes meet (see Graph).
    return Node(call, output_name=output_name, name=name)


def _parameters(
    pipeline: Nestable, node_name: str, input_mapping: Mapping[str, str] | None
) -> dict[str, str]:
    """The node's parameters: outer name -> the unbound inner input it feeds."""
    inner_inputs = [n for n in pipeline.input_names if n not in pipeline.bound_inputs]
    to_inner = dict(input_mapping or {})
    for outer, inner in to_inner.items():
        if inner not in inner_inputs:
            raise InputError(
                f"as_node {node_name!r}: input_mapping maps {outer!r} to {inner!r}, which is "
                f"not an unbound input of the pipeline.{did_you_mean(inner, inner_inputs)} "
                f"Inputs: {quoted(inner_inputs) or 'none'}"
            )
    to_outer = {inner: outer for outer, inner in to_inner.items()}
    return {to_outer.get(n, n): n for n in inner_inputs}


def _exposed_outputs(
    pipeline: Nestable, node_name: str, output_mapping: Mapping[str, str] | None
) -> dict[str, str]:
    """The inner outputs the node returns: inner name -> outer name."""
    if output_mapping is None:
        exposed = {o: o for o in pipeline.output_names}
    else:
        for inner in output_mapping:
            if inner not in pipeline.output_names:
                raise UnknownOutputError(
                    f"as_node {node_name!r}: output_mapping names {inner!r}, which the pipeline "
                    f"does not produce.{did_you_mean(inner, pipeline.output_names)} "
                    f"Outputs: {quoted(pipeline.output_names)}"
                )
        exposed = dict(output_mapping)
    if not exposed:
        raise NodeDefinitionError(f"as_node {node_name!r}: output_mapping exposes no output")
    return exposed


def _mapped_inputs(
    node_name: str, params: Mapping[str, str], map_over: str | Sequence[str] | None
) -> tuple[str, ...]:
    """The node parameters it maps the pipeline over (none: it runs once)."""
    if map_over is None:
        return ()
    mapped = (map_over,) if isinstance(map_over, str) else tuple(map_over)
    for outer in mapped:
        if outer not in params:
            raise InputError(
                f"as_node {node_name!r}: map_over names {outer!r}, which is not an input "
                f"of the node.{did_you_mean(outer, params)} Inputs: {quoted(params)}"
            )
    return mapped


class _NestedCall:
    """The nested node's function: run (or map) the inner pipeline. Plain-picklable."""

    __signature__: inspect.Signature

    def __init__(
        self,
        pipeline: Nestable,
        params: dict[str, str],
        selected: list[str],
        outputs: list[str],
        mapped: tuple[str, ...],
        map_mode: str,
        name: str,
    ) -> None:
        self.pipeline = pipeline
        self.params = params  # outer parameter -> inner input
        self.selected = selected  # the inner outputs it returns
        self.outputs = outputs  # their outer names
        self.mapped = mapped
        self.map_mode = map_mode
        self.__name__ = name

    def __cache_key__(self) -> tuple[Any, ...]:
        """What this node computes, for the cache: the inner nodes' code and wiring, the
        inner pipeline's bound inputs and this node's mappings. Stable across processes."""
        from plait.cache.fingerprint import fingerprint_code

        inner = sorted(self.pipeline.nodes, key=lambda n: n.name)
        return (
            "plait.nested",
            tuple(
                (n.name, n.outputs, n.inputs, n.cache, fingerprint_code(n.func, where=n.name))
                for n in inner
            ),
            tuple(sorted(self.pipeline.bound_inputs.items())),
            tuple(sorted(self.params.items())),
            tuple(self.selected),
            self.mapped,
            self.map_mode,
        )

    def __plait_select__(self, outputs: tuple[str, ...]) -> _NestedCall:
        """This call returning only ``outputs`` (outer names): the inner pipeline then
        runs only the inner nodes they need (see :meth:`plait.Node.narrowed`)."""
        inner = dict(zip(self.outputs, self.selected, strict=True))
        chosen = _NestedCall(
            self.pipeline,
            self.params,
            [inner[o] for o in outputs],
            list(outputs),
            self.mapped,
            self.map_mode,
            self.__name__,
        )
        chosen.__signature__ = self.__signature__
        return chosen

    async def __call__(self, **kwargs: Any) -> Any:
        inputs = {self.params[k]: v for k, v in kwargs.items() if v is not INNER_DEFAULT}
        token = NESTED_NODE.set(self.__name__)
        try:
            return await self._call(inputs)
        finally:
            NESTED_NODE.reset(token)

    async def _call(self, inputs: dict[str, Any]) -> Any:
        if not self.mapped:
            result = await self.pipeline.arun(inputs, output_name=self.selected)
            values = [result[o] for o in self.selected]
        else:
            items = await self.pipeline.amap(
                inputs,
                map_over=[self.params[m] for m in self.mapped],
                map_mode=self.map_mode,
                output_name=self.selected,
            )
            values = [[_outputs(item)[o] for item in items] for o in self.selected]
        return values[0] if len(values) == 1 else tuple(values)


def _outputs(item: dict[str, Any] | ItemError) -> dict[str, Any]:
    if isinstance(item, ItemError):  # not reached with on_error="raise"; kept for typing
        raise item.exception
    return item
