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
from plait.engine.local.plan import plan_for

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
