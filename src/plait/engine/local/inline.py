"""Plain calls: a plan of sync nodes run in topological order, with no event loop.

Without hooks a plan runs through ``plan.plain(values)``: at first its steps in
a loop (:class:`WarmingCalls`); once it has run :data:`COMPILE_AFTER` times (a
map's items, a pipeline run again and again), as straight-line Python compiled
for it (:func:`compile_calls`, and :func:`compile_outputs` for ``plan.outputs``):
each node one call whose arguments are read from their slots and whose result is
written to its own, with no loop, dispatch or tuple unpacking between calls, so
a node costs little more than its own call. Both keep the rules every other path
follows: an exception is annotated with the node and its inputs, a tuple output
is checked and unpacked, a sync node that returns a coroutine is an error."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from plait._text import plural, short_repr
from plait.bridge.loops import describe_loop, is_loop_mismatch
from plait.cache.miss import MISS
from plait.engine.local.codegen import make_function
from plait.errors import NodeDefinitionError, OutputArityError

if TYPE_CHECKING:
    from plait.engine.local.hooks import NodeHooks
    from plait.engine.local.plan import Plan, Step


def run_inline(plan: Plan, values: list[Any], hooks: NodeHooks | None = None) -> None:
    """Run a plan of sync nodes as plain calls in topological order (no event loop)."""
    if hooks is None:
        plan.plain(values)
        return
    before = hooks.before
    for index, (step, _, _, out) in enumerate(plan.calls):
        result = before(index, values)
        if result is MISS:
            try:
                result = call_step(step, values)
                store_result(step, values, result)
            except BaseException as exc:
                hooks.failed(index, exc)
                raise
            hooks.after(index, result)
        elif out < 0:
            store_result(step, values, result)
        else:  # a cached result: stored as the node returned it, never a coroutine
            values[out] = result


#: Runs of a plan in a loop before its calls are compiled. Compiling costs 50-100 µs
#: per step and saves about 0.1 µs per step and run: after this many runs a compile
#: costs at most about what the plan's runs took so far, and pays for itself soon after.
COMPILE_AFTER = 256


class WarmingCalls:
    """A plan's ``plain`` until it is compiled: its steps called in a loop, counting
    runs; the :data:`COMPILE_AFTER`-th run puts the compiled code in its place."""

    __slots__ = ("plan", "runs_left")

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.runs_left = COMPILE_AFTER

    def __call__(self, values: list[Any]) -> None:
        plan = self.plan
        self.runs_left -= 1
        if self.runs_left <= 0 and plan.plain is self:
            plan.plain = compile_calls(plan)
            plan.outputs = compile_outputs(plan.output_slots)
        # call_step and store_result's common cases written out: the loop of cold plans.
        for step, func, single, out in plan.calls:
            if single >= 0:
                try:
                    result = func(values[single])
                except Exception as exc:
                    annotate(exc, step, values)
                    raise
            else:
                result = call_step(step, values)
            if out < 0 or type(result) is CoroutineType:
                store_result(step, values, result)  # unpacks or raises
            else:
                values[out] = result


def compile_calls(plan: Plan) -> Callable[[list[Any]], None]:
    """The function ``calls(values)`` that runs every step of ``plan`` as a plain call,
    in order, as :func:`call_step` then :func:`store_result` would."""
    lines = ["def calls(v):", *_call_lines(plan, lambda slot: f"v[{slot}]", "v", "    ")]
    if not plan.steps:
        lines.append("    pass")
    function: Callable[[list[Any]], None] = make_function(
        "calls", lines, _call_namespace(plan), f"<plait: plain calls of {_named(plan)}>"
    )
    return function


#: ``items(items, first, base, outputs, fail)``: see :func:`compile_items`.
ItemsRun = Callable[
    [
        Sequence[tuple[Any, ...]],
        int,
        Sequence[Any],
        list[dict[str, Any] | None],
        Callable[[int, tuple[Any, ...], Exception], bool],
    ],
    None,
]


def compile_items(plan: Plan, mapped: Sequence[int]) -> ItemsRun:
    """The function ``items(items, first, base, outputs, fail)`` that runs map items
    one after another as plain calls of ``plan``'s steps (a worker's chunk).

    ``mapped`` are the slots of an item's mapped values (-1: not needed), ``base``
    the map's slot list (broadcast inputs), ``first`` the first item's index. Each
    item's outputs are appended to ``outputs`` (an empty list); a failed item
    appends None, then ``fail(index, item, exc)`` says whether to stop. Values live
    in local variables, not a slot list; errors get the same notes as
    :func:`compile_calls`. With one mapped input, ``items`` are its values, not
    one-value tuples (no tuple is made for an item unless it fails).
    """
    produced = {slot for step in plan.steps for slot in step.out_slots}
    count = len(plan.template)
    names = tuple(f"l{slot}" for slot in range(count))
    namespace = _call_namespace(plan)
    namespace["slot_values"] = partial(_slot_values, names)
    lines = ["def items(items, first, base, outputs, fail):", "    output = outputs.append"]
    lines += [
        f"    l{slot} = base[{slot}]"
        for slot in range(count)
        if slot not in produced and slot not in mapped
    ]
    targets = [f"l{slot}" if slot >= 0 else f"m{i}" for i, slot in enumerate(mapped)]
    if len(mapped) == 1:
        item = f"({targets[0]},)"
        lines.append(f"    for {targets[0]} in items:")
    else:
        item = "item"
        lines += ["    for item in items:", f"        {', '.join(targets)}, = item"]
    lines.append("        try:")
    lines += _call_lines(plan, lambda slot: f"l{slot}", "slot_values(locals())", " " * 12)
    if not plan.steps:
        lines.append("            pass")
    entries = ", ".join(f"{name!r}: l{slot}" for name, slot in plan.output_slots)
    lines += [
        "        except Exception as exc:",
        "            index = first + len(outputs)  # the items before it each have an entry",
        "            output(None)",
        f"            if fail(index, {item}, exc):",
        "                return",
        "            continue",
        f"        output({{{entries}}})",
    ]
    function: ItemsRun = make_function(
        "items", lines, namespace, f"<plait: map items of {_named(plan)}>"
    )
    return function


def _call_lines(plan: Plan, slot: Callable[[int], str], values: str, indent: str) -> list[str]:
    """Each step of ``plan`` as a plain call, in order: its arguments read from (and its
    results stored to) ``slot(index)``; ``values`` is the run's slot list, for the notes
    of an error."""
    lines = []
    for index, step in enumerate(plan.steps):
        args = [slot(s) for s in step.positional]
        args += [f"{name}={slot(s)}" for name, s in step.keyword]
        outs = step.out_slots
        # A result goes straight to its slot when that is a local variable.
        result = slot(outs[0]) if not step.unpacks and slot(outs[0]).isidentifier() else "r"
        lines += [
            "try:",
            f"    {result} = f{index}({', '.join(args)})",
            "except Exception as exc:",
            f"    annotate(exc, s{index}, {values})",
            "    raise",
        ]
        if step.unpacks:
            lines += [
                f"if not isinstance(r, tuple) or len(r) != {len(outs)}:",
                f"    raise output_arity_error(s{index}, {values}, r)",
                f"{', '.join(slot(s) for s in outs)}, = r",
            ]
        else:
            lines += [
                f"if type({result}) is Coroutine:",
                f"    raise returned_coroutine(s{index}, {values}, {result})",
            ]
            if result == "r":
                lines.append(f"{slot(outs[0])} = r")
    return [indent + line for line in lines]


def _call_namespace(plan: Plan) -> dict[str, Any]:
    """The globals of code generated by :func:`_call_lines`."""
    namespace: dict[str, Any] = {
        "annotate": annotate,
        "output_arity_error": output_arity_error,
        "returned_coroutine": returned_coroutine,
        "Coroutine": CoroutineType,
    }
    for index, step in enumerate(plan.steps):
        namespace[f"f{index}"] = step.func
        namespace[f"s{index}"] = step
    return namespace


def _slot_values(names: tuple[str, ...], local: Mapping[str, Any]) -> list[Any]:
    """A run's slot list rebuilt from the local variables of generated code (for an
    error's notes; slots not computed yet are None)."""
    return [local.get(name) for name in names]


def _named(plan: Plan) -> str:
    names = ", ".join(step.node.name for step in plan.steps[:3])
    return names + (", ..." if len(plan.steps) > 3 else "")


def compile_outputs(
    output_slots: tuple[tuple[str, int], ...],
) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """``outputs(values)``: a dict of the outputs named in ``output_slots``, read from
    their slots (a dict display: a third of the cost of a loop over them)."""
    entries = ", ".join(f"{name!r}: v[{slot}]" for name, slot in output_slots)
    function: Callable[[Sequence[Any]], dict[str, Any]] = make_function(
        "outputs", ["def outputs(v):", f"    return {{{entries}}}"], {}, "<plait: outputs>"
    )
    return function


def call_step(step: Step, values: list[Any]) -> Any:
    """Call a step's function; annotate any exception with the node and its inputs."""
    try:
        if step.single >= 0:
            return step.func(values[step.single])
        if step.keyword:
            return step.func(*step.args(values), **step.kwargs(values))
        if step.getter is not None:
            return step.func(*step.getter(values))
        return step.func()
    except Exception as exc:
        annotate(exc, step, values)
        raise


def store_result(step: Step, values: list[Any], result: Any) -> None:
    """Write a step's result to its slots: a tuple output checked and unpacked, a
    coroutine refused."""
    outs = step.out_slots
    if not step.unpacks:
        if type(result) is CoroutineType:  # one type check: nothing measurable per node
            raise returned_coroutine(step, values, result)
        values[outs[0]] = result
        return
    if not isinstance(result, tuple) or len(result) != len(outs):
        raise output_arity_error(step, values, result)
    for slot, value in zip(outs, result, strict=True):
        values[slot] = value


def output_arity_error(step: Step, values: Sequence[Any], result: Any) -> OutputArityError:
    """The error for a node of several outputs whose result is not a tuple of as many."""
    count = len(step.out_slots)
    exc = OutputArityError(
        f"node {step.node.name!r} declares {plural(count, 'output')} "
        f"{step.node.output_name!r} and must return a tuple of length {count}; "
        f"it returned {type(result).__name__} {short_repr(result)}"
    )
    annotate(exc, step, values)
    return exc


def returned_coroutine(
    step: Step, values: Sequence[Any], coro: CoroutineType[Any, Any, Any]
) -> NodeDefinitionError:
    """The error for a node whose result is a coroutine: it is closed, never awaited."""
    coro.close()  # no "coroutine was never awaited" warning on top of the error
    name = step.node.name
    if step.is_async:
        hint = f"await it inside {name!r} and return its result"
    else:
        hint = (
            f"{name!r} is a sync function (a lambda or def returning a coroutine looks like "
            "one); define it with async def, or pass the async function itself "
            "(functools.partial(async_fn, ...) to fix other arguments)"
        )
    exc = NodeDefinitionError(
        f"node {name!r} returned a coroutine ({coro.__qualname__}), which plait does not "
        f"await: {hint}"
    )
    annotate(exc, step, values)
    return exc


def annotate(
    exc: BaseException, step: Step, values: Sequence[Any], *, worker_thread: bool = False
) -> None:
    """Add a note to ``exc`` naming the node and a short repr of its inputs; for an
    object used on another event loop, a second one saying which loop the node ran on.

    ``worker_thread``: the (sync) node ran on an executor's thread, not this one.
    """
    args = ", ".join(f"{name}={short_repr(values[slot])}" for name, slot in step.arg_slots)
    outputs = ", ".join(step.node.outputs)
    exc.add_note(f"plait: raised in node {step.node.name!r} (→ {outputs}) called with ({args})")
    if is_loop_mismatch(exc):
        where = describe_loop(sync=not step.is_async, worker_thread=worker_thread)
        exc.add_note(f"plait: node {step.node.name!r} ran on {where}. {LOOP_HINT}")


#: What to do about an object bound to another event loop (docs/notebooks.md).
LOOP_HINT = (
    "An object bound to another event loop (a client made at import, in another notebook "
    "cell, or by a run on another loop) cannot be used there. Give nodes their client "
    "through a Dep, set up on the loop each run uses, or in a notebook call only the async "
    "forms (await pipeline.arun(...), await plait.abatch(...)): see docs/notebooks.md"
)
