"""A third-party engine: docs/engines.md's example, run as written, and what it sees."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

import plait
from plait import InputError, ItemError, LocalEngine, MissingInputsError, Pipeline, node
from plait.engine.base import Consecutive

DOC = Path(__file__).parents[2] / "docs" / "engines.md"


def doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def logging_engine_class() -> type[plait.Engine]:
    namespace: dict[str, Any] = {}
    exec(compile(doc_blocks()[1], str(DOC), "exec"), namespace)
    engine_class: type[plait.Engine] = namespace["LoggingEngine"]
    return engine_class


def test_the_documented_example_runs_as_written() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(doc_blocks()[1], str(DOC), "exec"), namespace)
    exec(compile(doc_blocks()[2], str(DOC), "exec"), namespace)
    assert namespace["engine"].calls == ["run doubler", "map doubler over x"]


@node(output_name="y")
async def slow_double(x: int) -> int:
    await asyncio.sleep(0.001)
    if x == 3:
        raise ValueError("three")
    return 2 * x


@node(output_name="z")
def inc(y: int, offset: int = 1) -> int:
    return y + offset


def test_every_entry_point_goes_through_the_two_methods() -> None:
    engine = logging_engine_class()()
    pipe = Pipeline([slow_double, inc], engine=engine, name="p")
    assert pipe.run({"x": 1}) == {"y": 2, "z": 3}
    assert asyncio.run(pipe.arun({"x": 1}, output_name="y")) == {"y": 2}
    assert pipe.map({"x": [1, 2]}, map_over="x") == [{"y": 2, "z": 3}, {"y": 4, "z": 5}]
    assert sorted(pipe.imap({"x": [1, 2]}, map_over="x")) == [
        (0, {"y": 2, "z": 3}),
        (1, {"y": 4, "z": 5}),
    ]

    async def stream() -> list[Any]:
        return [pair async for pair in pipe.aimap({"x": [5]}, map_over="x")]

    assert asyncio.run(stream()) == [(0, {"y": 10, "z": 11})]
    outer = Pipeline([pipe.as_node(map_over="x", output_mapping={"z": "zs"})], engine=engine)
    assert outer.run({"x": [1, 2]}) == {"zs": [3, 5]}
    assert engine.calls == [  # type: ignore[attr-defined]
        "run p",
        "run p",
        "map p over x",
        "map p over x",
        "map p over x",
        "run pipeline",
        "map p over x",
    ]


def test_errors_are_the_same_as_on_the_local_engine() -> None:
    engine = logging_engine_class()()
    for pipe in (
        Pipeline([slow_double, inc], engine=engine),
        Pipeline([slow_double, inc], engine=LocalEngine()),
    ):
        # Checked before the engine is called: it never sees these.
        with pytest.raises(MissingInputsError, match="missing 1 required input: 'x'"):
            pipe.run({})
        with pytest.raises(InputError, match="mapped input 'x' is a str"):
            pipe.map({"x": "12"}, map_over="x")
        with pytest.raises(ValueError, match="three") as info:
            pipe.map({"x": [1, 3]}, map_over="x")
        assert any("in map item 1" in note for note in info.value.__notes__)
        collected = pipe.map({"x": [3, 4]}, map_over="x", on_error="collect")
        assert isinstance(collected[0], ItemError)
        assert collected[0].index == 0
        assert collected[0].inputs == {"x": 3}
        assert collected[1] == {"y": 8, "z": 9}
    assert engine.calls == [  # type: ignore[attr-defined]
        "map pipeline over x",
        "map pipeline over x",
    ]


class RunsEngine(plait.Engine):
    """Yields a map's outcomes as runs of consecutive items, in the order given."""

    def __init__(self, runs: list[tuple[int, int]]) -> None:
        self.runs = runs  # (first, end) of each run

    async def arun(self, pipeline: Any, inputs: Any, output_name: Any = None) -> dict[str, Any]:
        raise NotImplementedError

    async def aimap(self, pipeline: Any, inputs: Any, map_over: Any, **options: Any) -> Any:
        xs = list(inputs["x"])
        for first, end in self.runs:
            yield Consecutive(first, [{"y": x} for x in xs[first:end]])


@pytest.mark.parametrize(
    "runs",
    [
        [(0, 3), (3, 7)],  # in order
        [(4, 7), (0, 2), (2, 4)],  # one ahead of a gap, then the gap in two
        [(2, 7), (0, 2)],  # the gap before it last
    ],
)
def test_runs_of_consecutive_items_come_back_in_their_places(runs: list[tuple[int, int]]) -> None:
    pipe = Pipeline([slow_double], engine=RunsEngine(runs))
    assert pipe.map({"x": range(7)}, map_over="x") == [{"y": x} for x in range(7)]
    pairs = list(pipe.imap({"x": range(7)}, map_over="x"))
    assert sorted(pairs, key=lambda pair: pair[0]) == [(x, {"y": x}) for x in range(7)]


def test_consecutive_reads_as_index_outcome_pairs() -> None:
    run = Consecutive(5, [{"y": 1}, {"y": 2}, {"y": 3}])
    assert list(run) == [(5, {"y": 1}), (6, {"y": 2}), (7, {"y": 3})]
    assert len(run) == 3
    assert run[0] == (5, {"y": 1})
    assert run[-1] == (7, {"y": 3})
    assert run[-3] == (5, {"y": 1})
    assert run[1:] == [(6, {"y": 2}), (7, {"y": 3})]
    for position in (3, -4):
        with pytest.raises(IndexError, match="of 3 consecutive outcomes"):
            run[position]
    assert repr(Consecutive(0, [])) == "Consecutive(0, [])"
