"""A pipeline's picture as plain data: boxes, clusters and edges, before any drawing.

:func:`figure` decides what a picture shows; the DOT, Mermaid and text renderers only
decide how it looks, so the three always agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from plait.engine.request import normalize_outputs
from plait.graph import Graph
from plait.nested import Nesting, nesting
from plait.node import Node
from plait.viz.labels import controls, input_default, value_label

#: What a box stands for: an input (required, optional with its default, bound to a
#: value), a node (sync, async, or a nested pipeline drawn as one box), a nested
#: pipeline's input inside its cluster, or an output of the run.
Kind = Literal["input", "optional", "bound", "sync", "async", "pipeline", "port", "output"]

ORIENTS = ("TB", "LR", "BT", "RL")


class Drawable(Protocol):
    """What a picture needs of a pipeline (:class:`plait.Pipeline` has it)."""

    @property
    def name(self) -> str | None: ...
    @property
    def graph(self) -> Graph: ...
    @property
    def bound_inputs(self) -> Mapping[str, Any]: ...


@dataclass(slots=True)
class Box:
    id: str
    kind: Kind
    title: str
    #: Small lines under the title: a node's controls, an input's default or value.
    details: tuple[str, ...] = ()
    #: For a node: how it reads in text, ``name(a, b=1) → y``.
    signature: str = ""


@dataclass(slots=True)
class Edge:
    source: str
    target: str
    #: The value's name on an edge between nodes; empty from an input.
    label: str = ""
    #: True when a ``Dep`` of the target takes the value (not a parameter).
    dep: bool = False


@dataclass(slots=True)
class Cluster:
    """One pipeline level: the top one, or a nested pipeline expanded in place."""

    id: str
    title: str
    details: tuple[str, ...] = ()
    #: Its boxes and nested clusters, inputs first, then nodes in the order they run.
    items: list[Box | Cluster] = field(default_factory=list)

    @property
    def boxes(self) -> list[Box]:
        return [item for item in self.items if isinstance(item, Box)]

    @property
    def clusters(self) -> list[Cluster]:
        return [item for item in self.items if isinstance(item, Cluster)]

    def walk(self) -> list[Box]:
        """Every box, this cluster's and its nested clusters'."""
        found = []
        for item in self.items:
            found.extend([item] if isinstance(item, Box) else item.walk())
        return found


@dataclass(slots=True)
class Figure:
    top: Cluster
    edges: list[Edge]
    orient: str


def figure(
    pipeline: Drawable,
    *,
    output_name: str | Sequence[str] | None = None,
    depth: int | None = 1,
    orient: str = "TB",
) -> Figure:
    """What the picture of ``pipeline`` shows; see :meth:`plait.Pipeline.to_dot`."""
    if orient not in ORIENTS:
        raise ValueError(f"orient must be one of {', '.join(map(repr, ORIENTS))}, got {orient!r}")
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or depth < 0):
        raise ValueError(
            f"depth must be an int >= 0 (how many levels of nested pipelines to expand) "
            f"or None (all of them), got {depth!r}"
        )
    outputs = normalize_outputs(output_name)
    for output in outputs or ():
        pipeline.graph.producer(output)  # an unknown output raises, with a suggestion
    top = Cluster(id="", title=pipeline.name or "pipeline")
    drawing = _Drawing()
    level = drawing.level(pipeline, top, "", depth, outputs, {})
    returned = outputs if outputs is not None else level.returned
    for output in returned:
        if outputs is not None or output not in level.consumed:
            box = Box(f"out:{output}", "output", output)
            top.items.append(box)
            drawing.edges.append(Edge(level.producers[output], box.id))
    return Figure(top, drawing.edges, orient)


@dataclass(slots=True)
class _Level:
    producers: dict[str, str]  # output name -> id of the box producing it
    labels: dict[str, str]  # output name -> its label on edges
    consumed: set[str]  # outputs some drawn node takes
    returned: tuple[str, ...]  # the outputs of the drawn nodes


class _Drawing:
    def __init__(self) -> None:
        self.edges: list[Edge] = []

    def level(
        self,
        pipeline: Drawable,
        cluster: Cluster,
        prefix: str,
        depth: int | None,
        outputs: tuple[str, ...] | None,
        sources: Mapping[str, str],
    ) -> _Level:
        """Draw the nodes ``outputs`` need into ``cluster``; ``sources`` gives the box of
        each input fed from outside (a nested pipeline's ports)."""
        graph = pipeline.graph
        nodes = [graph.nodes[i] for i in graph.run_order(outputs)]
        drawn = {item.name for item in nodes}
        inputs = dict(sources)
        for name, consumers in graph.input_consumers.items():
            if name not in inputs and drawn.intersection(consumers):
                box = _input_box(pipeline, prefix, name)
                cluster.items.append(box)
                inputs[name] = box.id
        level = _Level({}, {}, set(), tuple(o for item in nodes for o in item.outputs))
        targets: dict[tuple[str, str], str] = {}  # (node, parameter) -> box id
        for item in nodes:
            nested = nesting(item)
            if nested is not None and (depth is None or depth > 0):
                self._expand(item, nested, cluster, prefix, depth, level, targets)
                continue
            box = _node_box(item, nested, prefix)
            cluster.items.append(box)
            for param in (*item.inputs, *item.dep_inputs):
                targets[item.name, param] = box.id
            for output in item.outputs:
                level.producers[output] = box.id
                level.labels[output] = output
        for item in nodes:
            for param in item.inputs:
                target = targets[item.name, param]
                if param in level.producers:
                    level.consumed.add(param)
                    label = level.labels[param]
                    self.edges.append(Edge(level.producers[param], target, label))
                else:
                    self.edges.append(Edge(inputs[param], target))
            for param in item.dep_inputs:
                if param not in item.inputs:
                    self.edges.append(Edge(inputs[param], targets[item.name, param], dep=True))
        return level

    def _expand(
        self,
        item: Node[..., Any],
        nested: Nesting,
        cluster: Cluster,
        prefix: str,
        depth: int | None,
        level: _Level,
        targets: dict[tuple[str, str], str],
    ) -> None:
        """Draw nested node ``item`` as a cluster holding its pipeline."""
        inner_prefix = f"{prefix}{item.name}/"
        sub = Cluster(
            id=f"{prefix}{item.name}", title=item.name, details=_nested_details(item, nested)
        )
        cluster.items.append(sub)
        ports: dict[str, str] = {}
        for outer, inner in nested.inputs.items():
            title = inner if outer == inner else f"{outer} → {inner}"
            mapped = ("each item",) if outer in nested.map_over else ()
            port = Box(f"{inner_prefix}in:{inner}", "port", title, mapped)
            sub.items.append(port)
            ports[inner] = targets[item.name, outer] = port.id
        drawn = self.level(
            nested.pipeline,
            sub,
            inner_prefix,
            None if depth is None else depth - 1,
            tuple(nested.outputs),
            ports,
        )
        for inner_name, outer in nested.outputs.items():
            level.producers[outer] = drawn.producers[inner_name]
            level.labels[outer] = f"{outer} (list)" if nested.map_over else outer


def _input_box(pipeline: Drawable, prefix: str, name: str) -> Box:
    box_id = f"{prefix}in:{name}"
    if name in pipeline.bound_inputs:
        return Box(box_id, "bound", name, (f"= {value_label(pipeline.bound_inputs[name])}",))
    if name in pipeline.graph.optional_inputs:
        default = input_default(pipeline.graph, name)
        return Box(box_id, "optional", name, (f"= {default}",) if default else ())
    return Box(box_id, "input", name)


def _node_box(item: Node[..., Any], nested: Nesting | None, prefix: str) -> Box:
    box_id = f"{prefix}node:{item.name}"
    if nested is not None:
        return Box(box_id, "pipeline", item.name, _nested_details(item, nested), item.describe())
    kind: Kind = "async" if item.is_async else "sync"
    return Box(box_id, kind, item.name, (kind, *controls(item)), item.describe())


def _nested_details(item: Node[..., Any], nested: Nesting) -> tuple[str, ...]:
    details = []
    name = nested.pipeline.name
    details.append(f"pipeline {name!r}" if name and name != item.name else "pipeline")
    if nested.map_over:
        mode = f" ({nested.map_mode})" if len(nested.map_over) > 1 else ""
        details.append(f"map over {', '.join(nested.map_over)}{mode}")
    return (*details, *controls(item))
