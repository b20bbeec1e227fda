"""The pipeline graph: which node produces each name, who consumes it, in what order.

Pure data, built and validated once. Everything is iterative, so a 100,000-node
chain never touches the recursion limit.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from plait._text import did_you_mean, plural, quoted
from plait.deps import all_deps
from plait.errors import (
    CycleError,
    DuplicateNodeNameError,
    DuplicateOutputError,
    GraphError,
    UnknownOutputError,
)
from plait.node import Node


class Graph:
    """An immutable, validated DAG of :class:`~plait.Node` objects.

    Nodes are linked by name: a node consumes output ``y`` when one of its
    parameters is named ``y``. Parameters that no node produces are the graph's
    inputs. Construction raises :class:`~plait.errors.GraphError` subclasses for
    duplicate outputs, duplicate node names and cycles (with the cycle's path).
    Nodes sharing a name they did not choose get their outputs added to it:
    ``fetch[a]``, ``fetch[b]``.
    """

    __slots__ = (
        "__weakref__",
        "_by_name",
        "_consumers",
        "_inputs",
        "_nodes",
        "_optional",
        "_order",
        "_outputs",
        "_predecessors",
        "_producer",
        "_required",
        "_successors",
    )

    def __init__(self, nodes: Iterable[Node[..., Any]]) -> None:
        self._nodes: tuple[Node[..., Any], ...] = tuple(nodes)
        if not self._nodes:
            raise GraphError("a pipeline needs at least one node; got an empty list")
        self._producer: dict[str, int] = {}
        for index, item in enumerate(self._nodes):
            self._register(index, item)
        self._name_nodes()
        self._link()
        self._order = self._topological_order()
        self._list_names_in_order()

    def _register(self, index: int, item: object) -> None:
        if not isinstance(item, Node):
            raise GraphError(
                f"item {index} of nodes is {item!r}, not a Node; decorate the function with "
                "@node or wrap it: node(fn, output_name=...)"
            )
        for output in item.outputs:
            first = self._producer.get(output)
            if first is not None:
                if self._nodes[first] is item:
                    raise DuplicateNodeNameError(f"node {item.name!r} is listed twice in nodes")
                raise DuplicateOutputError(
                    f"output {output!r} is produced by two nodes: {self._nodes[first].name!r} "
                    f"and {item.name!r}; each output name must come from one node, so rename "
                    "one with output_name=..."
                )
            self._producer[output] = index

    def _name_nodes(self) -> None:
        """Index the nodes by name. Nodes sharing a name they did not choose (two lambdas,
        one function used twice) are told apart by their outputs: ``fetch[a]``, ``fetch[b]``."""
        counts = Counter(item.name for item in self._nodes)
        self._nodes = tuple(
            item
            if item.name_given or counts[item.name] == 1
            else item.renamed(f"{item.name}[{', '.join(item.outputs)}]")
            for item in self._nodes
        )
        self._by_name: dict[str, int] = {}
        for index, item in enumerate(self._nodes):
            other = self._by_name.get(item.name)
            if other is not None:
                raise DuplicateNodeNameError(
                    f"two nodes are named {item.name!r}: {self._nodes[other].describe()} and "
                    f"{item.describe()}; give one a distinct name with node(..., name=...)"
                )
            self._by_name[item.name] = index

    def _link(self) -> None:
        """Edges by name: each node's predecessors and successors, each input's consumers."""
        # Inputs: parameters no node produces, with the nodes consuming each.
        self._consumers: dict[str, list[int]] = {}
        preds: list[tuple[int, ...]] = []
        succs: list[list[int]] = [[] for _ in self._nodes]
        for index, item in enumerate(self._nodes):
            distinct: dict[int, None] = {}
            for param in item.inputs:
                producer = self._producer.get(param)
                if producer is None:
                    self._consumers.setdefault(param, []).append(index)
                elif producer not in distinct:
                    distinct[producer] = None
                    succs[producer].append(index)
            preds.append(tuple(distinct))
            self._link_dep_inputs(index, item)
        self._predecessors = tuple(preds)
        self._successors = tuple(tuple(s) for s in succs)

    def _link_dep_inputs(self, index: int, item: Node[..., Any]) -> None:
        """Record node ``index`` as a consumer of the pipeline inputs its deps take."""
        for param in item.dep_inputs:
            producer = self._producer.get(param)
            if producer is not None:
                dep = next(d for d in all_deps(item.deps.values()) if param in d.params)
                raise GraphError(
                    f"node {item.name!r}: {dep!r} takes {param!r}, which node "
                    f"{self._nodes[producer].name!r} produces; a dep's parameters must be "
                    "pipeline inputs or other deps, since deps are set up before any node "
                    "runs. Rename the parameter, or make the dep's work a node."
                )
            consumers = self._consumers.setdefault(param, [])
            if index not in consumers:
                consumers.append(index)

    def _list_names_in_order(self) -> None:
        """Outputs and inputs in dataflow order, whatever order nodes came in."""
        rank = {index: position for position, index in enumerate(self._order)}
        self._consumers = dict(
            sorted(self._consumers.items(), key=lambda item: min(rank[i] for i in item[1]))
        )
        self._outputs = tuple(o for i in self._order for o in self._nodes[i].outputs)
        optional = _optional_inputs(self._nodes, self._consumers)
        self._optional = tuple(n for n in self._consumers if n in optional)
        self._required = tuple(n for n in self._consumers if n not in optional)
        self._inputs = tuple(self._consumers)  # last: a Graph with inputs is complete

    def _topological_order(self) -> tuple[int, ...]:
        """Kahn's algorithm; stable (ties keep the order nodes were given in)."""
        indegree = [len(p) for p in self._predecessors]
        queue = deque(i for i, d in enumerate(indegree) if d == 0)
        order: list[int] = []
        while queue:
            index = queue.popleft()
            order.append(index)
            for succ in self._successors[index]:
                indegree[succ] -= 1
                if indegree[succ] == 0:
                    queue.append(succ)
        if len(order) < len(self._nodes):
            self._raise_cycle(indegree)
        return tuple(order)

    def _raise_cycle(self, indegree: list[int]) -> None:
        # Every node left with indegree > 0 has a predecessor also left over, so
        # walking predecessors from any of them must come back on itself.
        start = next(i for i, d in enumerate(indegree) if d > 0)
        seen: dict[int, int] = {}
        walk: list[int] = []
        current = start
        while current not in seen:
            seen[current] = len(walk)
            walk.append(current)
            current = next(p for p in self._predecessors[current] if indegree[p] > 0)
        loop = walk[seen[current] :]
        loop.reverse()  # predecessor order -> dataflow order
        names = [self._nodes[i].name for i in loop]
        names.append(names[0])
        edges = [
            f"{self._nodes[a].name!r} consumes "
            f"{quoted(o for o in self._nodes[b].outputs if o in self._nodes[a].inputs)} "
            f"from {self._nodes[b].name!r}"
            for a, b in zip(loop[1:] + loop[:1], loop, strict=True)
        ]
        raise CycleError(
            f"the nodes form a cycle: {' -> '.join(names)} ({'; '.join(edges)}); a pipeline "
            "must be acyclic, so break the cycle by renaming an input or output",
            names,
        )

    # --- read-only view -------------------------------------------------------

    @property
    def nodes(self) -> tuple[Node[..., Any], ...]:
        """The nodes, in the order they were given."""
        return self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node[..., Any]]:
        return iter(self._nodes)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Node[..., Any]:
        """The node called ``name``."""
        try:
            return self._nodes[self._by_name[name]]
        except KeyError:
            raise KeyError(
                f"no node is named {name!r}.{did_you_mean(name, self._by_name)} "
                f"Nodes: {quoted(self._by_name)}"
            ) from None

    def topological_order(self) -> tuple[Node[..., Any], ...]:
        """Every node after all the nodes it consumes from."""
        return tuple(self._nodes[i] for i in self._order)

    @property
    def outputs(self) -> tuple[str, ...]:
        """Every output name, in topological order."""
        return self._outputs

    @property
    def inputs(self) -> tuple[str, ...]:
        """Names that nodes consume but no node produces, in topological order of first use."""
        return self._inputs

    @property
    def required_inputs(self) -> tuple[str, ...]:
        """Inputs at least one node has no default for."""
        return self._required

    @property
    def optional_inputs(self) -> tuple[str, ...]:
        """Inputs every consuming node has a default for."""
        return self._optional

    def is_input(self, name: str) -> bool:
        """True when ``name`` is consumed by some node and produced by none."""
        return name in self._consumers

    @property
    def input_consumers(self) -> Mapping[str, tuple[str, ...]]:
        """For each input, the names of the nodes consuming it."""
        return MappingProxyType(
            {n: tuple(self._nodes[i].name for i in c) for n, c in self._consumers.items()}
        )

    def producer(self, output: str) -> Node[..., Any]:
        """The node producing ``output``."""
        return self._nodes[self._producer_index(output)]

    def predecessors(self, name: str) -> tuple[Node[..., Any], ...]:
        """The nodes whose outputs node ``name`` consumes."""
        return tuple(self._nodes[i] for i in self._predecessors[self._index(name)])

    def successors(self, name: str) -> tuple[Node[..., Any], ...]:
        """The nodes consuming an output of node ``name``."""
        return tuple(self._nodes[i] for i in self._successors[self._index(name)])

    # --- for the engine -----------------------------------------------------

    def index_of(self, node_name: str) -> int:
        """Position of node ``node_name`` in :attr:`nodes`."""
        return self._index(node_name)

    def producer_index(self, output: str) -> int | None:
        """Position of the node producing ``output``, or None for an input."""
        return self._producer.get(output)

    @property
    def order(self) -> tuple[int, ...]:
        """Topological order as positions in :attr:`nodes`."""
        return self._order

    @property
    def predecessor_indices(self) -> tuple[tuple[int, ...], ...]:
        return self._predecessors

    def needed_for(self, outputs: Iterable[str]) -> set[int]:
        """Positions of the nodes that must run to produce ``outputs``."""
        stack = [self._producer_index(o) for o in outputs]
        needed: set[int] = set()
        while stack:
            index = stack.pop()
            if index not in needed:
                needed.add(index)
                stack.extend(self._predecessors[index])
        return needed

    def run_order(self, outputs: Iterable[str] | None) -> tuple[int, ...]:
        """Positions of the nodes a run for ``outputs`` needs (all when None), in
        topological order."""
        if outputs is None:
            return self._order
        needed = self.needed_for(outputs)
        return tuple(i for i in self._order if i in needed)

    def _index(self, name: str) -> int:
        self[name]  # raises the helpful KeyError
        return self._by_name[name]

    def _producer_index(self, output: str) -> int:
        index = self._producer.get(output)
        if index is None:
            raise UnknownOutputError(
                f"no node produces output {output!r}.{did_you_mean(output, self._producer)} "
                f"Available outputs: {quoted(self._outputs)}"
            )
        return index

    def __repr__(self) -> str:
        # Also for a Graph whose construction failed or is under way (debuggers, tracebacks).
        nodes: tuple[Node[..., Any], ...] | None = getattr(self, "_nodes", None)
        inputs: tuple[str, ...] | None = getattr(self, "_inputs", None)
        if nodes is None:
            return "<Graph (incomplete)>"
        if inputs is None:
            return f"<Graph (incomplete): {plural(len(nodes), 'node')}>"
        return f"<Graph: {plural(len(nodes), 'node')}, inputs {quoted(inputs) or 'none'}>"


def _optional_inputs(
    nodes: tuple[Node[..., Any], ...], consumers: dict[str, list[int]]
) -> set[str]:
    """The inputs every node consuming them has a default for."""
    return {
        name
        for name, indices in consumers.items()
        if all(_optional_for(nodes[i], name) for i in indices)
    }


def _optional_for(item: Node[..., Any], name: str) -> bool:
    """Whether ``item`` (its parameters and its deps') has a default for input ``name``."""
    if name in item.inputs and name not in item.defaults:
        return False
    return name not in item.dep_inputs or name in item.dep_defaults
