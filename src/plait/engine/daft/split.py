"""A plan cut into Daft stages: each node that declares resources a stage of its own.

Consecutive nodes without resources share one stage (a fused run of plait's own
scheduler); a node with ``@node(resources=...)`` gets a stage whose ``daft.cls``
asks Daft for exactly its request. Each segment's plan keeps the whole plan's slot
layout, so values, cache keys and callback events line up with a run of the whole
plan: a segment's steps are the whole plan's from ``start`` on.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from plait.engine.local.plan import Plan, Route
from plait.errors import EngineError
from plait.options import Resources


@dataclass(frozen=True, slots=True)
class Segment:
    """Consecutive steps ``start:stop`` of a plan, run as one Daft stage."""

    start: int
    stop: int
    #: The steps as a plan of their own (the whole plan's slots; successors in it).
    plan: Plan
    route: Route
    #: The node's own request (a node with resources), or None (fused nodes).
    resources: Resources | None
    #: Slots computed by this segment or earlier ones that later segments read or
    #: the plan outputs: what a row carries on to the next stage (for a dep only
    #: earlier nodes take that later cache keys are made of, its key: a ``DepKey``).
    carried: tuple[int, ...]

    @property
    def name(self) -> str:
        """The stage's name in Daft's plan: ``plait[node, ...]``."""
        return f"plait[{', '.join(step.node.name for step in self.plan.steps)}]"


def split(plan: Plan, *, keyed: bool = False) -> list[Segment]:
    """``plan`` cut into segments: one per node with resources, one per run of nodes
    without. A plan without such nodes is one segment: :func:`whole`. ``keyed``: a
    cache is in effect, so rows also carry what later nodes' cache keys are made of."""
    bounds: list[tuple[int, int]] = []
    for index, step in enumerate(plan.steps):
        alone = step.node.options.resources is not None
        if alone or not bounds or _has_resources(plan, bounds[-1][0]):
            bounds.append((index, index + 1))
        else:
            bounds[-1] = (bounds[-1][0], index + 1)
    if len(bounds) <= 1:
        return [whole(plan)]
    output_slots = {slot for _, slot in plan.output_slots}
    segments = []
    for start, stop in bounds:
        produced = {slot for step in plan.steps[:stop] for slot in step.out_slots}
        read_later = {slot for step in plan.steps[stop:] for _, slot in step.arg_slots}
        if keyed:  # and the keys of deps only earlier nodes take (see staged.Staged)
            leaves = _key_leaves(plan, stop)
            produced |= (plan.dep_slots & leaves) - read_later
            read_later |= leaves
        carried = tuple(sorted(produced & (read_later | output_slots)))
        segments.append(_segment(_part(plan, start, stop), start, stop, carried))
    return segments


def _key_leaves(plan: Plan, stop: int) -> set[int]:
    """Slots the cache keys of steps ``stop:`` may be made of: a cached node's key
    takes its cached upstream nodes' code down to their leaves' values
    (:mod:`plait.engine.local.signatures`), so every slot up such chains."""
    producer = {slot: i for i, step in enumerate(plan.steps) for slot in step.out_slots}
    later = [step for step in plan.steps[stop:] if step.node.cache]
    todo = [slot for step in later for _, slot in step.arg_slots]
    seen: set[int] = set()
    while todo:
        slot = todo.pop()
        if slot in seen:
            continue
        seen.add(slot)
        index = producer.get(slot)
        if index is not None and plan.steps[index].node.cache:
            todo.extend(slot for _, slot in plan.steps[index].arg_slots)
    return seen


def whole(plan: Plan) -> Segment:
    """All of ``plan`` as one segment, asking for the most any of its nodes declares
    (a plan of one node: all it declares)."""
    return _segment(plan, 0, len(plan.steps), ())


def _has_resources(plan: Plan, index: int) -> bool:
    return plan.steps[index].node.options.resources is not None


def _segment(part: Plan, start: int, stop: int, carried: tuple[int, ...]) -> Segment:
    if len(part.steps) == 1:
        resources = part.steps[0].node.options.resources
    else:
        resources = most(step.node.options.resources for step in part.steps)
    return Segment(start, stop, part, Route.in_worker(part), resources, carried)


def _part(plan: Plan, start: int, stop: int) -> Plan:
    """Steps ``start:stop`` of ``plan`` as a plan over the same slots: steps before
    ``start`` count as done (their outputs are in the values), later ones are left out."""
    steps = []
    for step in plan.steps[start:stop]:
        part = copy.copy(step)
        part.successors = tuple(s - start for s in step.successors if s < stop)
        steps.append(part)
    read = {slot for step in steps for _, slot in step.arg_slots}
    deps = tuple((dep, slot) for dep, slot in plan.deps if slot in read)
    return Plan(tuple(steps), plan.template, plan.input_slots, plan.output_slots, deps)


def most(declared: Iterable[Resources | None]) -> Resources | None:
    """The largest CPUs and GPUs among ``declared`` (None entries skipped); no
    ``concurrency``, which is a node's own stage's."""
    given = [r for r in declared if r is not None]
    if not given:
        return None
    cpus = [r.cpus for r in given if r.cpus is not None]
    gpus = [r.gpus for r in given if r.gpus is not None]
    return Resources(max(cpus) if cpus else None, max(gpus) if gpus else None)


def requested(segment: Segment, steps: Sequence[Any]) -> dict[str, float]:
    """The ``daft.cls`` options asking for ``segment``'s resources; ``steps`` (the
    whole plan's) name the node whose request Daft cannot take."""
    resources = segment.resources
    if resources is None:
        return {}
    options: dict[str, float] = {}
    if resources.cpus is not None:
        options["cpus"] = resources.cpus
    gpus = resources.gpus
    if gpus is not None:
        if gpus > 1 and not gpus.is_integer():
            node = next(s.node.name for s in steps if _gpus(s) == gpus)
            raise EngineError(
                f"node {node!r} asks for {gpus:g} GPUs: Daft takes a fraction of one GPU "
                "(such as 0.5) or a whole number of them"
            )
        options["gpus"] = gpus
    return options


def _gpus(step: Any) -> float | None:
    resources = step.node.options.resources
    return None if resources is None else resources.gpus
