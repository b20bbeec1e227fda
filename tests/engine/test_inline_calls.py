"""Plain calls (engine.local.inline): a plan of sync nodes run in a loop for its first
runs, then as straight-line code compiled for it; each test checks both."""

from __future__ import annotations

import pickle
import traceback
from typing import Any

import cloudpickle  # type: ignore[import-untyped]
import pytest

from plait import LocalEngine, NodeDefinitionError, OutputArityError, Pipeline, node
from plait.engine.local.inline import COMPILE_AFTER, WarmingCalls, run_inline
from plait.engine.local.items import ItemRunner, Reply, run_items
from plait.engine.local.plan import Route, plan_for

#: Enough runs for a plan to be compiled, and one more run of its compiled code.
RUNS = COMPILE_AFTER + 2


def compiled(pipe: Pipeline, given: set[str], output_name: str | None = None) -> bool:
    plan = plan_for(pipe.graph, None if output_name is None else (output_name,), given)
    return not isinstance(plan.plain, WarmingCalls)


@node(output_name="base")
def zero() -> int:
    return 10


@node(output_name=("low", "high"))
def split(base: int, x: int) -> tuple[int, int]:
    return base - x, base + x


@node(output_name="scaled")
def scale(low: int, /, high: int, *, v: int = 2, factor: int = 3) -> int:
    # ``v`` is also the compiled code's name for the values: a keyword of that name works.
    return (low + high) * factor * v


@node(output_name=("single",))
def one_tuple(scaled: int) -> tuple[int]:
    return (scaled + 1,)


def pipeline() -> Pipeline:
    return Pipeline([zero, split, scale, one_tuple])


def expected(x: int, factor: int = 3, v: int = 2) -> dict[str, Any]:
    low, high = 10 - x, 10 + x
    scaled = (low + high) * factor * v
    return {"base": 10, "low": low, "high": high, "scaled": scaled, "single": scaled + 1}


def test_every_kind_of_call_and_output_runs_as_plain_calls() -> None:
    pipe = pipeline()
    for _ in range(RUNS):
        assert pipe.run({"x": 1}) == expected(1)
        assert pipe.run({"x": 1, "factor": 5, "v": 1}) == expected(1, factor=5, v=1)
        assert pipe.run({"x": 1}, output_name="scaled") == {"scaled": 120}
    assert compiled(pipe, {"x"})
    assert compiled(pipe, {"x"}, "scaled")
    assert pipe.map({"x": range(RUNS)}, map_over="x") == [expected(x) for x in range(RUNS)]


def test_the_same_outputs_in_worker_processes() -> None:
    with LocalEngine(map_executor="parallel", max_workers=2) as engine:
        pipe = pipeline().with_engine(engine)
        assert pipe.map({"x": range(6)}, map_over="x") == [expected(x) for x in range(6)]


def test_a_failing_node_keeps_its_exception_and_is_named_with_its_inputs() -> None:
    @node(output_name="y")
    def fragile(scaled: int) -> int:
        raise KeyError(scaled)

    pipe = Pipeline([zero, split, scale, fragile])
    for _ in range(RUNS):
        with pytest.raises(KeyError) as info:
            pipe.run({"x": 1})
        notes = info.value.__notes__
        assert notes == ["plait: raised in node 'fragile' (→ y) called with (scaled=120)"]
        frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
        assert frames[-1] == "fragile"
    assert compiled(pipe, {"x"})


def test_a_tuple_output_of_the_wrong_length_is_an_error_naming_the_node() -> None:
    @node(output_name=("a", "b"))
    def short(x: int) -> tuple[int]:
        return (x,)

    pipe = Pipeline([short])
    for _ in range(RUNS):
        with pytest.raises(OutputArityError, match="node 'short' declares 2 outputs") as info:
            pipe.run({"x": 1})
        assert info.value.__notes__ == ["plait: raised in node 'short' (→ a, b) called with (x=1)"]
    assert compiled(pipe, {"x"})


def test_a_sync_node_returning_a_coroutine_is_refused_in_a_chain() -> None:
    async def later(x: int) -> int:
        return x

    first = node(lambda x: x + 1, output_name="a", name="first")
    sneaky = node(lambda a: later(a), output_name="b", name="sneaky")
    pipe = Pipeline([first, sneaky])
    for _ in range(RUNS):
        with pytest.raises(NodeDefinitionError, match="node 'sneaky' returned a coroutine"):
            pipe.run({"x": 1})
    assert compiled(pipe, {"x"})


def test_a_plan_is_pickled_without_its_compiled_calls_and_warms_up_again() -> None:
    pipe = pipeline()
    plan = plan_for(pipe.graph, None, {"x"})
    for _ in range(RUNS):
        run_inline(plan, plan.new_values({"x": 1}, partial=True))
    assert not isinstance(plan.plain, WarmingCalls)
    copy = pickle.loads(cloudpickle.dumps(plan))  # as a plan goes to a worker
    assert isinstance(copy.plain, WarmingCalls)
    assert copy.plain.plan is copy
    for _ in range(RUNS):
        values = copy.new_values({"x": 2}, partial=True)
        run_inline(copy, values)
        assert copy.outputs(values) == expected(2)
    assert not isinstance(copy.plain, WarmingCalls)


# --- map items in a worker's chunk (run_items): a loop at first, then compiled ---------


def worker_runner(
    pipe: Pipeline, names: tuple[str, ...], given: dict[str, Any], output_name: str | None = None
) -> ItemRunner:
    """The runner a worker process unpickles for a map over ``names``."""
    selected = None if output_name is None else (output_name,)
    plan = plan_for(pipe.graph, selected, {*names, *given})
    runner = ItemRunner(Route.in_worker(plan), given, names, None).for_worker()
    copy: ItemRunner = pickle.loads(cloudpickle.dumps(runner))
    copy.attach_local_runtime()
    return copy


def chunks_before_and_after_compiling(
    runner: ItemRunner, items: list[tuple[Any, ...]], *, stop_on_error: bool = False
) -> list[Reply]:
    """A short chunk (run in the loop), then a chunk long enough to compile, then one more
    through the compiled code: each chunk holds ``items``, numbered from 100 on."""
    replies = [run_items(runner, 100, items, stop_on_error=stop_on_error)]
    assert runner.compiled_items(0) is None
    run_items(runner, 100, items * (COMPILE_AFTER // len(items) + 1), stop_on_error=False)
    assert runner.compiled_items(0) is not None
    replies.append(run_items(runner, 100, items, stop_on_error=stop_on_error))
    return replies


def test_map_items_in_a_worker_run_every_kind_of_call_the_same_once_compiled() -> None:
    runner = worker_runner(pipeline(), ("x",), {"factor": 5})
    items = [(x,) for x in range(5)]
    for outputs, failures, _ in chunks_before_and_after_compiling(runner, items):
        assert outputs == [expected(x, factor=5) for x in range(5)]
        assert failures == []


def test_map_items_with_a_mapped_input_the_outputs_do_not_need() -> None:
    first = node(lambda x: x + 1, output_name="a", name="first")
    other = node(lambda y: y * 2, output_name="b", name="other")
    runner = worker_runner(Pipeline([first, other]), ("y", "x"), {}, output_name="a")
    items = [(-1, x) for x in range(4)]
    for outputs, _, _ in chunks_before_and_after_compiling(runner, items):
        assert outputs == [{"a": x + 1} for x in range(4)]


def test_failed_map_items_over_one_input_the_outputs_do_not_need_name_it() -> None:
    inverse = node(lambda x: 1 // x, output_name="a", name="inverse")
    other = node(lambda y: y * 2, output_name="b", name="other")
    runner = worker_runner(Pipeline([inverse, other]), ("y",), {"x": 0}, output_name="a")
    items = [(f"y{n}",) for n in range(2)]
    for outputs, failures, _ in chunks_before_and_after_compiling(runner, items):
        assert outputs == [None, None]
        assert [exc.__notes__[-1] for _, exc, _ in failures] == [
            "plait: in map item 100 with inputs (y='y0')",
            "plait: in map item 101 with inputs (y='y1')",
        ]


def test_failed_map_items_in_a_worker_carry_their_notes_once_compiled() -> None:
    @node(output_name="y")
    def fragile(scaled: int, x: int) -> int:
        if x == 1:
            raise KeyError(x)
        return scaled + x

    runner = worker_runner(Pipeline([zero, split, scale, fragile]), ("x",), {})
    items = [(x,) for x in range(3)]
    for outputs, failures, _ in chunks_before_and_after_compiling(runner, items):
        assert [None if out is None else out["y"] for out in outputs] == [120, None, 122]
        ((index, exc, formatted),) = failures
        assert (index, type(exc)) == (101, KeyError)
        assert exc.__notes__ == [
            "plait: raised in node 'fragile' (→ y) called with (scaled=120, x=1)",
            "plait: in map item 101 with inputs (x=1)",
        ]
        assert "fragile" in formatted
    for outputs, failures, _ in chunks_before_and_after_compiling(
        worker_runner(Pipeline([zero, split, scale, fragile]), ("x",), {}),
        items,
        stop_on_error=True,
    ):
        assert outputs[1:] == [None]  # stopped at the failed item
        assert [index for index, _, _ in failures] == [101]


def test_wrong_outputs_of_map_items_in_a_worker_are_errors_naming_the_node() -> None:
    async def later(x: int) -> int:
        return x

    short = node(lambda x: (x,), output_name=("a", "b"), name="short")
    sneaky = node(lambda x: later(x), output_name="c", name="sneaky")
    for pipe, error, message in [
        (Pipeline([short]), OutputArityError, "node 'short' declares 2 outputs"),
        (Pipeline([sneaky]), NodeDefinitionError, "node 'sneaky' returned a coroutine"),
    ]:
        runner = worker_runner(pipe, ("x",), {})
        for outputs, failures, _ in chunks_before_and_after_compiling(runner, [(7,)]):
            assert outputs == [None]
            ((_, exc, _),) = failures
            assert isinstance(exc, error)
            assert message in str(exc)
            assert exc.__notes__[0].endswith("called with (x=7)")


def test_plans_of_the_same_shape_share_compiled_code_and_call_their_own_nodes() -> None:
    from plait.engine.local.inline import compile_calls

    plus = Pipeline([node(lambda x: x + 1, output_name="y", name="step")])
    times = Pipeline([node(lambda x: x * 10, output_name="y", name="step")])
    plans = [plan_for(pipe.graph, None, {"x"}) for pipe in (plus, times)]
    calls = [compile_calls(plan) for plan in plans]
    assert calls[0].__code__ is calls[1].__code__  # compiled once per process
    results = []
    for plan, call in zip(plans, calls, strict=True):
        values = plan.new_values({"x": 4}, partial=True)
        call(values)
        results.append(plan.outputs(values))
    assert results == [{"y": 5}, {"y": 40}]
