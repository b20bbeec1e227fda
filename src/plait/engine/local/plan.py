"""Compiled plans: the part of a graph one run needs, flattened to ints and lists.

A plan is compiled once per (selected outputs, names given) and cached on the
pipeline, so the scheduler's hot loop touches only lists, tuples and ints.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from operator import itemgetter
from typing import Any, Final

from plait.deps import Dep
from plait.engine.local.inline import WarmingCalls
from plait.engine.request import missing_inputs_error
from plait.graph import Graph
from plait.node import Node

#: Placeholder for a slot whose value is not computed yet.
EMPTY: Final = object()


class Step:
    """One node of a plan: where its arguments come from and where its results go."""

    __slots__ = (
        "arg_slots",
        "controlled",
        "func",
        "getter",
        "is_async",
        "key_start",
        "keyword",
        "node",
        "out_slots",
        "payload",
        "positional",
        "sends_deps",
        "single",
        "successors",
        "unpacks",
    )

    def __init__(
        self,
        node: Node[..., Any],
        positional: tuple[int, ...],
        keyword: tuple[tuple[str, int], ...],
        out_slots: tuple[int, ...],
    ) -> None:
        self.node = node
        self.func: Callable[..., Any] = node.item_func
        self.is_async = node.is_async
        #: Runs through call_controlled (retries, timeout, limits, its own executor).
        self.controlled = node.options.controlled
        self.positional = positional
        self.keyword = keyword
        #: values -> tuple of positional args; None when there is at most one.
        self.getter: Callable[[Sequence[Any]], tuple[Any, ...]] | None = (
            itemgetter(*positional) if len(positional) > 1 else None
        )
        #: The slot of the only argument of a call that takes one positional one, else -1:
        #: the common call, made without unpacking anything.
        self.single = positional[0] if len(positional) == 1 and not keyword else -1
        self.out_slots = out_slots
        #: The node declared a tuple ``output_name`` (even of one name): its result is a
        #: tuple of that length, unpacked into ``out_slots``.
        self.unpacks = isinstance(node.output_name, tuple)
        #: (parameter, slot) for every argument, for error notes.
        self.arg_slots = tuple(zip(node.positional, positional, strict=True)) + keyword
        self.successors: tuple[int, ...] = ()
        #: It takes process-scoped deps: sent to another process, it uses that one's.
        self.sends_deps = any(dep.scope == "process" for dep in node.deps.values())
        #: The node cloudpickled, with a digest, once it is first sent to a process pool.
        self.payload: tuple[bytes, str] | None = None
        #: (code fingerprint, hasher fed with the fixed part of its cache key), memoized
        #: by :mod:`plait.engine.local.signatures` (never copied into a key without a copy).
        self.key_start: tuple[bytes, hashlib.blake2b] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Sent to a worker process: the memoized hasher stays behind (it cannot pickle).
        state = {name: getattr(self, name) for name in self.__slots__}
        state["key_start"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def args(self, values: Sequence[Any]) -> tuple[Any, ...]:
        """Positional arguments for this call."""
        if self.getter is not None:
            return self.getter(values)
        return (values[self.positional[0]],) if self.positional else ()

    def kwargs(self, values: Sequence[Any]) -> dict[str, Any]:
        """Keyword-only arguments for this call."""
        return {name: values[slot] for name, slot in self.keyword}


class Plan:
    """The steps of one run, in topological order, wired by integer slots.

    Slots hold values: the run's inputs first, then parameter defaults, then
    node outputs. ``template`` is copied per run and the inputs written in.
    """

    __slots__ = (
        "__weakref__",
        "batched",
        "calls",
        "dep_slots",
        "deps",
        "has_controls",
        "indegree",
        "input_index",
        "input_slots",
        "lone",
        "needs_loop",
        "output_slots",
        "outputs",
        "plain",
        "roots",
        "steps",
        "template",
    )

    def __init__(
        self,
        steps: tuple[Step, ...],
        template: tuple[Any, ...],
        input_slots: tuple[tuple[str, int], ...],
        output_slots: tuple[tuple[str, int], ...],
        deps: tuple[tuple[Dep[Any], int], ...] = (),
    ) -> None:
        self.steps = steps
        #: The deps the run's nodes take, with the slot each one's value goes to.
        self.deps = deps
        self.dep_slots = frozenset(slot for _, slot in deps)
        self.template = template
        self.input_slots = input_slots
        self.input_index = dict(input_slots)
        self.output_slots = output_slots
        self.has_controls = any(s.controlled for s in steps)
        #: The step of a plan of one plain async call (a batch item): awaited as it is.
        self.lone = (
            steps[0] if len(steps) == 1 and steps[0].is_async and not steps[0].controlled else None
        )
        #: Per step, what a plain call reads (:mod:`.inline`): (step, func, the slot of its
        #: only argument or -1, its output's slot or -1 when it unpacks).
        self.calls = tuple(
            (s, s.func, s.single, -1 if s.unpacks else s.out_slots[0]) for s in steps
        )
        #: ``plain(values)`` runs every step as a plain call (:mod:`.inline`): in a loop
        #: at first, then as code compiled for this plan; never pickled.
        self.plain: Callable[[list[Any]], None] = WarmingCalls(self)
        #: ``outputs(values)``: the selected outputs of a finished run, as a dict; compiled
        #: along with ``plain``.
        self.outputs = outputs_before_compiling(output_slots)
        #: Steps of batch nodes (a map groups their items into batch calls).
        self.batched = tuple(i for i, s in enumerate(steps) if s.node.batching is not None)
        #: False when every step is a plain sync call: the run never suspends.
        self.needs_loop = (
            self.has_controls or any(s.is_async for s in steps) or any(d.is_async for d, _ in deps)
        )
        indegree = [0] * len(steps)
        for step in steps:
            for succ in step.successors:
                indegree[succ] += 1
        self.indegree = tuple(indegree)
        self.roots = tuple(i for i, d in enumerate(indegree) if d == 0)

    def new_values(self, inputs: Mapping[str, Any], *, partial: bool = False) -> list[Any]:
        """A fresh slot list for one run, with ``inputs`` written in.

        With ``partial``, inputs missing from ``inputs`` stay empty (a map fills
        its mapped inputs per item).
        """
        values = list(self.template)
        for name, slot in self.input_slots:
            if not partial or name in inputs:
                values[slot] = inputs[name]
        return values

    def input_values(self, values: Sequence[Any]) -> dict[str, Any]:
        """The run's inputs by name (what its deps' functions take)."""
        return {name: values[slot] for name, slot in self.input_slots}

    def __getstate__(self) -> dict[str, Any]:
        # Sent to a worker process: generated functions are made again there.
        state = {name: getattr(self, name) for name in self.__slots__ if name != "__weakref__"}
        del state["outputs"], state["plain"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        self.outputs = outputs_before_compiling(self.output_slots)
        self.plain = WarmingCalls(self)


def outputs_before_compiling(
    output_slots: tuple[tuple[str, int], ...],
) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """``outputs(values)`` until the plan is compiled: a closure for one output (the
    usual map item's), a loop over them for more."""
    if len(output_slots) == 1:
        ((name, slot),) = output_slots

        def one_output(values: Sequence[Any]) -> dict[str, Any]:
            return {name: values[slot]}

        return one_output
    return partial(outputs_by_loop, output_slots)


def outputs_by_loop(
    output_slots: tuple[tuple[str, int], ...], values: Sequence[Any]
) -> dict[str, Any]:
    """The outputs named in ``output_slots``, read from their slots."""
    outputs = {}  # a loop, not a comprehension: no function made per call (3.11)
    for name, slot in output_slots:
        outputs[name] = values[slot]
    return outputs


@dataclass(frozen=True, slots=True)
class Route:
    """Where one plan runs on one engine, decided once and read everywhere else."""

    plan: Plan
    #: Every step a plain sync call on the calling thread: a run never suspends,
    #: so from sync code it runs without any event loop.
    inline: bool
    #: A map's items run one after another as such plain calls.
    map_inline: bool
    #: The executor plain sync nodes are submitted to (None: called inline).
    executor: Executor | None = None
    #: Nodes of a run in flight at once, sync ones on threads (``"async"`` node executor).
    limit: int | None = None
    #: A map's items run as tasks on the map's own event loop although the map
    #: executor is a thread pool: the plan needs a loop (async nodes, controls, async
    #: deps), and loop-bound objects (a dep's client, a module-global one) may only be
    #: used on the loop they belong to. Only plain sync nodes go to the pool's threads.
    items_on_loop: bool = False

    @classmethod
    def in_worker(cls, plan: Plan) -> Route:
        """The route of a plan shipped to a worker: no executor of its own (items of a
        plan with batch nodes run as tasks on one loop, to share batch calls)."""
        inline = not plan.needs_loop and not plan.batched
        return cls(plan, inline, inline)


_plans: weakref.WeakKeyDictionary[Graph, dict[Any, Plan]] = weakref.WeakKeyDictionary()
_plans_lock = threading.Lock()


def plan_for(graph: Graph, outputs: Sequence[str] | None, given: Collection[str]) -> Plan:
    """The plan for ``outputs`` with inputs named ``given``: compiled once per graph,
    output selection and set of input names, shared by every engine."""
    key = (outputs if outputs is None else tuple(outputs), frozenset(given))
    with _plans_lock:
        plans = _plans.setdefault(graph, {})
        plan = plans.get(key)
    if plan is None:
        plan = compile_plan(graph, outputs, given)
        with _plans_lock:
            plan = plans.setdefault(key, plan)
    return plan


def compile_plan(graph: Graph, outputs: Sequence[str] | None, given: Collection[str]) -> Plan:
    """Compile the nodes needed for ``outputs`` (all when None), given input names ``given``.

    Raises :class:`~plait.errors.MissingInputsError` listing every required input
    that is not in ``given``, with the nodes that need it.
    """
    needed = graph.run_order(outputs)
    layout = _Layout(given)
    step_of: dict[int, int] = {}
    steps: list[Step] = []
    # Names the run uses: selected, or read by a node it runs (None: every output).
    used = None
    if outputs is not None:
        used = {p for i in needed for p in graph.nodes[i].inputs}.union(outputs)
    for index in needed:
        step_of[index] = len(steps)
        item = graph.nodes[index]
        if used is not None and len(item.outputs) > 1:
            item = _narrowed(item, used)
        steps.append(layout.step(item))
    if layout.missing:  # the pipeline checks this first; kept for direct engine calls
        raise missing_inputs_error(graph, layout.missing)

    successors: list[list[int]] = [[] for _ in steps]
    for index in needed:
        for pred in graph.predecessor_indices[index]:
            successors[step_of[pred]].append(step_of[index])
    for step, succ in zip(steps, successors, strict=True):
        step.successors = tuple(succ)

    selected = [o for step in steps for o in step.node.outputs] if outputs is None else outputs
    return Plan(
        tuple(steps),
        tuple(layout.template),
        tuple(layout.input_slot.items()),
        tuple((name, layout.output_slot[name]) for name in selected),
        tuple(layout.dep_slot.items()),
    )


def _narrowed(item: Node[..., Any], used: set[str]) -> Node[..., Any]:
    """``item``, computing only its outputs in ``used`` when it can leave the others
    out (a nested pipeline's node: :meth:`Node.narrowed`)."""
    kept = tuple(o for o in item.outputs if o in used)
    if len(kept) == len(item.outputs):
        return item
    return item.narrowed(kept) or item


class _Layout:
    """The slots of a plan being compiled: one list holds inputs, defaults, dep values
    and outputs alike. Nodes come in topological order, so a name not yet among the
    outputs is a pipeline input."""

    def __init__(self, given: Collection[str]) -> None:
        self.given = given
        self.template: list[Any] = []
        self.output_slot: dict[str, int] = {}
        self.input_slot: dict[str, int] = {}
        self.dep_slot: dict[Dep[Any], int] = {}
        self.missing: dict[str, list[str]] = {}

    def new_slot(self, value: Any = EMPTY) -> int:
        self.template.append(value)
        return len(self.template) - 1

    def step(self, item: Node[..., Any]) -> Step:
        """The step of ``item``, with slots for its arguments and its outputs."""
        positional = tuple(self.source(p, item) for p in item.positional)
        keyword = tuple((p, self.source(p, item)) for p in item.keyword)
        outs = tuple(self.new_slot() for _ in item.outputs)
        self.output_slot.update(zip(item.outputs, outs, strict=True))
        for param in item.dep_inputs:  # what its deps' functions take
            if param in self.given and param not in self.input_slot:
                self.input_slot[param] = self.new_slot()
            elif param not in self.given and param not in item.dep_defaults:
                self.missing.setdefault(param, []).append(item.name)
        return Step(item, positional, keyword, outs)

    def source(self, param: str, item: Node[..., Any]) -> int:
        """The slot parameter ``param`` of ``item`` reads (-1 when nothing provides it)."""
        dep = item.deps.get(param)
        if dep is not None:  # filled when the run sets its deps up
            slot = self.dep_slot.get(dep)
            if slot is None:
                slot = self.dep_slot[dep] = self.new_slot()
            return slot
        slot = self.output_slot.get(param)
        if slot is None:
            slot = self.input_slot.get(param)
        if slot is not None:
            return slot
        if param in self.given:
            slot = self.input_slot[param] = self.new_slot()
            return slot
        if param in item.defaults:  # nobody gave it: this node's own default
            return self.new_slot(item.defaults[param])
        self.missing.setdefault(param, []).append(item.name)
        return -1
