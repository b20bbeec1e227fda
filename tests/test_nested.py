"""Nested pipelines: as_node wiring, selection, mapping, engines and the shared budget."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from typing import Any

import pytest

from plait import InputError, LocalEngine, Pipeline, UnknownOutputError, node
from plait.engine.context import ENCLOSING

calls: list[str] = []


@node(output_name="words")
def tokenize(text):
    calls.append("tokenize")
    return text.split()


@node(output_name="count")
def count(words):
    calls.append("count")
    return len(words)


@node(output_name="longest")
def longest(words, min_len=0):
    calls.append("longest")
    return max((w for w in words if len(w) >= min_len), key=len, default="")


PER_DOC = Pipeline([tokenize, count, longest], name="per_doc")


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()


def test_node_inputs_outputs_and_name() -> None:
    n = PER_DOC.as_node()
    assert n.name == "per_doc"
    assert n.inputs == ("text", "min_len")
    assert n.required_inputs == ("text",)
    assert n.outputs == ("words", "count", "longest")
    assert n.is_async


def test_input_and_output_mapping_rename_and_prune() -> None:
    n = PER_DOC.as_node(input_mapping={"doc": "text"}, output_mapping={"count": "n"}, name="c")
    assert (n.inputs, n.outputs) == (("doc", "min_len"), ("n",))
    assert Pipeline([n]).run(inputs={"doc": "a bb ccc"}) == {"n": 3}
    assert calls == ["tokenize", "count"]  # longest did not run


def test_optional_inner_inputs_keep_their_defaults_or_take_values() -> None:
    n = PER_DOC.as_node(output_mapping={"longest": "best"})
    pipe = Pipeline([n])
    assert pipe.run(inputs={"text": "aaa bb"}) == {"best": "aaa"}
    assert pipe.run(inputs={"text": "aaa bb", "min_len": 4}) == {"best": ""}


def test_bound_inner_inputs_are_not_node_inputs() -> None:
    n = PER_DOC.bind(min_len=2).as_node(output_mapping={"longest": "best"})
    assert n.inputs == ("text",)
    assert Pipeline([n]).run(inputs={"text": "a bb"}) == {"best": "bb"}


def test_map_over_takes_lists_and_returns_lists() -> None:
    docs = PER_DOC.as_node(
        map_over="text", output_mapping={"count": "counts", "longest": "longs"}, name="docs"
    )

    @node(output_name="total")
    def total(counts):
        return sum(counts)

    result = Pipeline([docs, total]).run(inputs={"text": ["a bb", "ccc d e"], "min_len": 0})
    assert result == {"counts": [2, 3], "longs": ["bb", "ccc"], "total": 5}


def test_map_over_product_mode() -> None:
    pair = Pipeline([node(lambda a, b: f"{a}{b}", output_name="ab", name="pair")])
    n = pair.as_node(map_over=["a", "b"], map_mode="product", output_mapping={"ab": "all"})
    assert Pipeline([n]).run(inputs={"a": [1, 2], "b": ["x", "y"]}) == {
        "all": ["1x", "1y", "2x", "2y"]
    }


def test_three_levels() -> None:
    corpus = Pipeline(
        [
            PER_DOC.as_node(map_over="text", output_mapping={"count": "counts"}, name="docs"),
            node(lambda counts: sum(counts), output_name="total", name="total"),
        ],
        name="corpus",
    )
    shelves = Pipeline(
        [corpus.as_node(map_over="text", output_mapping={"total": "totals"}, name="shelves")]
    )
    top = Pipeline([shelves.as_node(output_mapping={"totals": "all"}, name="top")])
    assert top.run(inputs={"text": [["a b", "c"], ["d e f"]]}) == {"all": [3, 3]}


def test_inner_errors_keep_their_type_with_notes_from_each_level() -> None:
    @node(output_name="y")
    def fails(x):
        raise KeyError(x)

    inner = Pipeline([fails], name="inner")
    outer = Pipeline([inner.as_node(name="wrapped")])
    with pytest.raises(KeyError) as info:
        outer.run(inputs={"x": 3})
    assert info.value.__notes__ == [
        "plait: raised in node 'fails' (→ y) called with (x=3)",
        "plait: raised in node 'wrapped' (→ y) called with (x=3)",
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"input_mapping": {"doc": "txt"}}, InputError, "maps 'doc' to 'txt', which is not an"),
        ({"output_mapping": {"cnt": "n"}}, UnknownOutputError, "names 'cnt'.*Did you mean 'count'"),
        ({"map_over": "docs"}, InputError, "map_over names 'docs', which is not an input"),
        ({"output_mapping": {}}, TypeError, "output_mapping exposes no output"),
    ],
)
def test_bad_as_node_arguments(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        PER_DOC.as_node(**kwargs)


def test_an_inner_async_engine_runs_async_inside_an_outer_threaded_engine() -> None:
    @node(output_name="r")
    async def nap(x):
        await asyncio.sleep(0.05)
        return threading.current_thread().name

    with (
        LocalEngine(map_executor="async", max_concurrent=100) as inner_engine,
        LocalEngine(node_executor="threaded") as outer_engine,
    ):
        inner = Pipeline([nap], engine=inner_engine)
        outer = Pipeline(
            [inner.as_node(map_over="x", output_mapping={"r": "rs"}, name="naps")],
            engine=outer_engine,
        )
        start = time.perf_counter()
        result = outer.run(inputs={"x": list(range(50))})
    assert len(result["rs"]) == 50
    assert time.perf_counter() - start < 1.0  # 50 × 50 ms sequentially would be 2.5 s


def test_a_pipeline_without_an_engine_runs_on_the_callers_engine() -> None:
    seen: list[Any] = []

    @node(output_name="y")
    async def look(x):
        seen.append(ENCLOSING.get().engine)
        return x

    inner = Pipeline([look])
    with LocalEngine(node_executor="threaded") as engine:
        Pipeline([inner.as_node(name="wrapped")], engine=engine).run(inputs={"x": 1})
    assert seen == [engine]


def test_nested_maps_share_one_budget() -> None:
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    @node(output_name="y")
    async def leaf(x):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.01)
        with lock:
            state["now"] -= 1
        return x

    leaves = Pipeline([leaf], name="leaves")
    middle = Pipeline([leaves.as_node(map_over="x", output_mapping={"y": "ys"}, name="mid")])
    with LocalEngine(map_executor="async", max_concurrent=16) as engine:
        outer = Pipeline([middle.as_node(name="outer")], engine=engine)
        result = outer.map(inputs={"x": [list(range(10))] * 16}, map_over="x")
    assert [r["ys"] for r in result] == [list(range(10))] * 16
    # 16 outer items, each nested map gets isqrt(16) = 4 slots: at most 64 leaves at once
    assert 16 < state["peak"] <= 64


def test_deeper_nested_maps_run_sequentially() -> None:
    depths: list[int] = []

    @node(output_name="y")
    async def leaf(x):
        depths.append(ENCLOSING.get().map_depth)
        return x

    level1 = Pipeline([leaf]).as_node(map_over="x", output_mapping={"y": "ys"}, name="l1")
    level2 = Pipeline([level1]).as_node(map_over="x", output_mapping={"ys": "yss"}, name="l2")
    with LocalEngine(map_executor="async", max_concurrent=9) as engine:
        result = Pipeline([level2], engine=engine).map(inputs={"x": [[[1, 2]]]}, map_over="x")
    assert result == [{"yss": [[1, 2]]}]
    assert set(depths) == {3}
    assert engine.scaled(1).map_executor == "sequential"
    assert engine.scaled(3).max_concurrent == 3


def test_nested_nodes_and_pipelines_pickle() -> None:
    n = PER_DOC.as_node(input_mapping={"doc": "text"}, output_mapping={"count": "n"})
    pipe = pickle.loads(pickle.dumps(Pipeline([n], name="outer").bind(min_len=1)))
    assert pipe.run(inputs={"doc": "a b"}) == {"n": 2}
    assert pipe.name == "outer"
    assert pipe.bound_inputs == {"min_len": 1}


@node(output_name="report")
def report(count):
    calls.append("report")
    return f"{count} words"


def test_only_the_inner_nodes_of_the_outputs_the_outer_run_uses_run() -> None:
    outer = Pipeline([PER_DOC.as_node(), report])
    assert outer.run(inputs={"text": "a bb ccc"}, output_name="report") == {"report": "3 words"}
    assert calls == ["tokenize", "count", "report"]  # longest did not run
    calls.clear()
    assert outer.run(inputs={"text": "a bb"}, output_name=["report", "longest"]) == {
        "report": "2 words",
        "longest": "bb",
    }
    assert sorted(calls) == ["count", "longest", "report", "tokenize"]
    calls.clear()
    assert outer.run(inputs={"text": "a bb"}, output_name="words") == {"words": ["a", "bb"]}
    assert calls == ["tokenize"]
    calls.clear()
    everything = outer.run(inputs={"text": "a bb"})  # every output is asked for
    assert everything == {"words": ["a", "bb"], "count": 2, "longest": "bb", "report": "2 words"}
    assert sorted(calls) == ["count", "longest", "report", "tokenize"]


def test_only_what_is_used_with_map_over_and_in_a_map() -> None:
    docs = PER_DOC.as_node(map_over="text", name="docs")

    @node(output_name="total")
    def total(count):
        calls.append("total")
        return sum(count)

    outer = Pipeline([docs, total])
    texts = ["a bb", "ccc", "d e f"]
    assert outer.run(inputs={"text": texts}, output_name="total") == {"total": 6}
    assert sorted(calls) == ["count"] * 3 + ["tokenize"] * 3 + ["total"]
    calls.clear()
    got = outer.map(inputs={"text": [texts, texts[:1]]}, map_over="text", output_name="longest")
    assert got == [{"longest": ["bb", "ccc", "d"]}, {"longest": ["bb"]}]
    assert sorted(calls) == ["longest"] * 4 + ["tokenize"] * 4


def test_a_narrowed_nested_node_is_cached_apart_and_pickles() -> None:
    from plait import MemoryCache

    cache = MemoryCache()
    outer = Pipeline([PER_DOC.as_node(), report], cache=cache)
    assert outer.run(inputs={"text": "a bb"}, output_name="report") == {"report": "2 words"}
    calls.clear()
    # All outputs now: the narrowed node's entry (count alone) is not a hit for this one.
    assert outer.run(inputs={"text": "a bb"})["longest"] == "bb"
    assert "longest" in calls
    calls.clear()
    assert outer.run(inputs={"text": "a bb"}, output_name="report") == {"report": "2 words"}
    assert calls == []  # both are cached now
    narrowed = PER_DOC.as_node().narrowed(("count",))
    assert narrowed is not None
    assert narrowed.outputs == ("count",)
    assert narrowed.output_name == "count"
    assert pickle.loads(pickle.dumps(narrowed)).outputs == ("count",)
    assert report.narrowed(("report",)) is None  # a plain function cannot leave outputs out
    with LocalEngine(map_executor="parallel", max_workers=2) as engine:
        on_workers = Pipeline([PER_DOC.as_node(), report], engine=engine)
        got = on_workers.map(inputs={"text": ["a", "b c"]}, map_over="text", output_name="report")
        assert got == [{"report": "1 words"}, {"report": "2 words"}]
