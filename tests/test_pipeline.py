"""Pipeline: running, output selection, input checks, immutability."""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import Any

import pytest

import plait
from plait import (
    InputError,
    LocalEngine,
    MissingInputsError,
    OutputArityError,
    Pipeline,
    UnknownOutputError,
    UnusedInputWarning,
    node,
)

calls: list[str] = []


@node(output_name="y")
def f(x):
    calls.append("f")
    return x + 1


@node(output_name="z")
async def g(y, scale=2):
    calls.append("g")
    await asyncio.sleep(0)
    return y * scale


@node(output_name="w")
def h(y, z):
    calls.append("h")
    return y + z


@node(output_name="other")
def unrelated(a, b):
    calls.append("unrelated")
    return a - b


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


PIPE = Pipeline([h, g, f], name="demo")


def test_run_returns_node_outputs_not_inputs() -> None:
    assert PIPE.run(inputs={"x": 1}) == {"y": 2, "z": 4, "w": 6}


def test_outputs_come_in_topological_order() -> None:
    assert list(PIPE.run(inputs={"x": 1})) == ["y", "z", "w"]


def test_arun_is_the_native_form() -> None:
    assert asyncio.run(PIPE.arun(inputs={"x": 1})) == {"y": 2, "z": 4, "w": 6}


def test_optional_input_default_and_override() -> None:
    assert PIPE.run(inputs={"x": 1, "scale": 10})["z"] == 20
    assert PIPE.run(inputs={"x": 1})["z"] == 4


def test_each_node_uses_its_own_default() -> None:
    @node(output_name="p")
    def p1(base, k=1):
        return base + k

    @node(output_name="q")
    def p2(base, k=100):
        return base + k

    pipe = Pipeline([p1, p2])
    assert pipe.run(inputs={"base": 0}) == {"p": 1, "q": 100}
    assert pipe.run(inputs={"base": 0, "k": 5}) == {"p": 5, "q": 5}


def test_output_name_runs_only_needed_nodes_and_needs_only_their_inputs() -> None:
    pipe = Pipeline([f, g, h, unrelated])
    assert pipe.run(inputs={"x": 1}, output_name="y") == {"y": 2}
    assert calls == ["f"]
    calls.clear()
    assert pipe.run(inputs={"x": 1}, output_name=["z", "y"]) == {"z": 4, "y": 2}
    assert sorted(calls) == ["f", "g"]


def test_tuple_outputs_are_separate_values() -> None:
    split = node(lambda n: divmod(n, 3), output_name=("q", "r"), name="split")
    join = node(lambda q, r: f"{q}r{r}", output_name="text", name="join")
    assert Pipeline([join, split]).run(inputs={"n": 7}) == {"q": 2, "r": 1, "text": "2r1"}


def test_wrong_tuple_return_names_node_and_length() -> None:
    split = node(lambda n: n, output_name=("q", "r"), name="split")
    with pytest.raises(OutputArityError) as info:
        Pipeline([split]).run(inputs={"n": 7})
    assert str(info.value) == (
        "node 'split' declares 2 outputs ('q', 'r') and must return a tuple of length 2; "
        "it returned int 7"
    )
    assert "plait: raised in node 'split' (→ q, r) called with (n=7)" in info.value.__notes__


@pytest.mark.parametrize("kind", ["sync", "async", "threaded"])
def test_one_name_tuple_output_is_unpacked_and_checked(kind: str) -> None:
    def pair(n):
        return (n, n + 1)

    def single(n):
        return (n,)

    async def apair(n):
        return pair(n)

    async def asingle(n):
        return single(n)

    controls = {"executor": "threaded"} if kind == "threaded" else {}
    one = node(asingle if kind == "async" else single, output_name=("a",), name="one", **controls)
    assert Pipeline([one]).run(inputs={"n": 3}) == {"a": 3}
    two = node(apair if kind == "async" else pair, output_name=("a",), name="two", **controls)
    with pytest.raises(OutputArityError) as info:
        Pipeline([two]).run(inputs={"n": 3})
    assert str(info.value) == (
        "node 'two' declares 1 output ('a',) and must return a tuple of length 1; "
        "it returned tuple (3, 4)"
    )


async def _fetch(i):
    return i * 10


@pytest.mark.parametrize(
    "controls",
    [{}, {"async_sibling": True}, {"executor": "threaded"}, {"retries": 1}, {"map": True}],
    ids=["inline", "dataflow", "threaded", "controlled", "map"],
)
def test_sync_node_returning_a_coroutine_is_a_clear_error(controls: dict[str, Any]) -> None:
    controls = dict(controls)
    sibling, mapped = controls.pop("async_sibling", False), controls.pop("map", False)
    fetch = node(lambda i: _fetch(i), output_name="page", name="fetch", **controls)
    nodes = [fetch, node(g, output_name="z")] if sibling else [fetch]
    pipe = Pipeline(nodes)
    inputs = {"i": [1, 2] if mapped else 1, **({"y": 1} if sibling else {})}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(plait.NodeDefinitionError) as info:
            pipe.map(inputs, map_over="i") if mapped else pipe.run(inputs)
        gc.collect()
    assert str(info.value) == (
        "node 'fetch' returned a coroutine (_fetch), which plait does not await: 'fetch' is "
        "a sync function (a lambda or def returning a coroutine looks like one); define it "
        "with async def, or pass the async function itself (functools.partial(async_fn, "
        "...) to fix other arguments)"
    )
    assert any("raised in node 'fetch'" in note for note in info.value.__notes__)
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_async_node_returning_a_coroutine_is_an_error() -> None:
    async def outer(i):
        return _fetch(i)

    with pytest.raises(plait.NodeDefinitionError, match="await it inside 'outer'"):
        Pipeline([node(outer, output_name="page")]).run({"i": 1})
    assert Pipeline([node(_fetch, output_name="page")]).run({"i": 1}) == {"page": 10}


def test_wrong_tuple_length_from_async_node() -> None:
    async def three(n):
        return (1, 2, 3)

    split = node(three, output_name=("q", "r"), name="split")
    with pytest.raises(
        OutputArityError, match="must return a tuple of length 2; it returned tuple"
    ):
        Pipeline([split]).run(inputs={"n": 7})


def test_missing_inputs_are_listed_together_with_their_nodes() -> None:
    pipe = Pipeline([f, g, h, unrelated])
    with pytest.raises(MissingInputsError) as info:
        pipe.run(inputs={"a": 1})
    assert str(info.value) == (
        "missing 2 required inputs: 'x', 'b'\n"
        "  'x', needed by node f(x) → y\n"
        "  'b', needed by node unrelated(a, b) → other\n"
        "Pass them in inputs={...} or bind them with pipeline.bind(...)."
    )
    assert info.value.missing == {"x": ("f",), "b": ("unrelated",)}
    assert not calls  # raised before anything ran
    assert isinstance(info.value, TypeError)


def test_missing_input_needed_by_several_nodes() -> None:
    a = node(lambda shared: shared, output_name="o1", name="a")
    b = node(lambda shared, own: shared, output_name="o2", name="b")
    with pytest.raises(MissingInputsError, match=r"'shared', needed by nodes a\(shared\) → o1, b"):
        Pipeline([a, b]).run(inputs={"own": 1})


def test_missing_inputs_only_for_selected_outputs() -> None:
    pipe = Pipeline([f, unrelated])
    assert pipe.run(inputs={"x": 1}, output_name="y") == {"y": 2}
    with pytest.raises(MissingInputsError, match="missing 1 required input: 'a'"):
        pipe.run(inputs={"x": 1, "b": 2}, output_name="other")


def test_unknown_output_suggests_and_lists() -> None:
    with pytest.raises(UnknownOutputError) as info:
        PIPE.run(inputs={"x": 1}, output_name="ww")
    message = str(info.value)
    assert "no node produces output 'ww'. Did you mean 'w'?" in message
    assert "Available outputs: 'y', 'z', 'w'" in message


def test_unused_input_warns_with_suggestion() -> None:
    with pytest.warns(UnusedInputWarning) as record:
        result = PIPE.run(inputs={"x": 1, "scael": 10})
    assert result["z"] == 4  # the typo did not reach the node: default used, and we warned
    message = str(record[0].message)
    assert "input 'scael' is not used by any node and is ignored. Did you mean 'scale'?" in message
    assert record[0].filename == __file__  # points at the caller's line


def test_used_inputs_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PIPE.run(inputs={"x": 1, "scale": 3})
        # an input of another branch is still a pipeline input: no warning
        Pipeline([f, unrelated]).run(inputs={"x": 1, "a": 1}, output_name="y")


def _total(values):
    return sum(values)


def _count(values):
    return len(list(values))


def test_an_iterator_two_nodes_consume_warns_naming_the_input_and_nodes() -> None:
    pipe = Pipeline([node(_total, output_name="total"), node(_count, output_name="count")])
    with pytest.warns(plait.IteratorInputWarning) as record:
        result = pipe.run({"values": iter([1, 2, 3])})
    assert result == {"total": 6, "count": 0}  # passed on as it is: documented, warned
    assert str(record[0].message) == (
        "input 'values' is an iterator (list_iterator) and is taken by nodes '_total', "
        "'_count': the first call exhausts it and the others get it empty. Pass a list "
        "instead: inputs={'values': list(...)}"
    )
    assert record[0].filename == __file__
    with pytest.warns(plait.IteratorInputWarning, match="input 'values' is an iterator"):
        pipe.run({"values": (v for v in [1, 2])})  # checked on every run, not once
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pipe.run({"values": [1, 2]}) == {"total": 3, "count": 2}
        # one node takes it: an iterator is fine
        assert pipe.run({"values": iter([1, 2])}, output_name="total") == {"total": 3}


def test_an_iterator_broadcast_to_every_item_of_a_map_warns() -> None:
    pipe = Pipeline([node(lambda x, values: x + sum(values), output_name="y")])
    with pytest.warns(plait.IteratorInputWarning) as record:
        pipe.map({"x": [1, 2], "values": iter([10])}, map_over="x")
    assert (
        "input 'values' is an iterator (list_iterator) and is broadcast to every item of "
        "the map, and taken by node '<lambda>'" in str(record[0].message)
    )
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the mapped iterator itself is consumed once
        two = Pipeline([node(_total, output_name="t"), node(lambda values: 0, output_name="u")])
        assert two.map({"values": iter([[1], [2]])}, map_over="values") == [
            {"t": 1, "u": 0},
            {"t": 2, "u": 0},
        ]


def test_giving_an_output_as_input_is_an_error() -> None:
    with pytest.raises(InputError, match="'y' is an output of node 'f', not an input"):
        PIPE.run(inputs={"x": 1, "y": 5})


def test_inputs_must_be_a_mapping() -> None:
    with pytest.raises(
        InputError, match="inputs must be a mapping of input name to value, got list"
    ):
        PIPE.run(inputs=[1])  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [3, [1]])
def test_output_name_type_is_checked(bad: Any) -> None:
    with pytest.raises(TypeError, match="output_name must be None, an output name or a list"):
        PIPE.run(inputs={"x": 1}, output_name=bad)


def test_empty_output_list_is_an_error() -> None:
    with pytest.raises(ValueError, match="output_name is an empty list"):
        PIPE.run(inputs={"x": 1}, output_name=[])


def test_properties() -> None:
    pipe = Pipeline([f, g, h, unrelated])
    assert pipe.input_names == ("x", "a", "b", "scale")
    assert pipe.required_inputs == ("x", "a", "b")
    assert pipe.optional_inputs == ("scale",)
    assert pipe.output_names == ("y", "other", "z", "w")
    assert pipe.graph["g"] is g
    assert pipe.nodes == (f, g, h, unrelated)
    assert PIPE.name == "demo"


def test_bind_returns_a_new_pipeline() -> None:
    bound = PIPE.bind(x=1)
    assert bound is not PIPE
    assert PIPE.bound_inputs == {}
    assert bound.bound_inputs == {"x": 1}
    assert bound.run() == {"y": 2, "z": 4, "w": 6}
    assert bound.run(inputs={"x": 10})["y"] == 11  # inputs override bound values
    assert PIPE.unfulfilled_args == ("x",)
    assert bound.unfulfilled_args == ()
    with pytest.raises(TypeError):
        bound.bound_inputs["x"] = 2  # type: ignore[index]


def test_unbind() -> None:
    bound = PIPE.bind(x=1, scale=3)
    partly = bound.unbind("x")
    assert partly.bound_inputs == {"scale": 3}
    assert bound.bound_inputs == {"x": 1, "scale": 3}
    with pytest.raises(MissingInputsError):
        partly.run()
    with pytest.raises(InputError, match=r"cannot unbind 'nope': not bound. Bound inputs: 'scale'"):
        partly.unbind("nope")


def test_bind_checks_names() -> None:
    with pytest.raises(
        InputError, match="cannot bind 'xx': no node takes an input of that name. Did you mean 'x'"
    ):
        PIPE.bind(xx=1)
    with pytest.raises(InputError, match="cannot bind 'y': it is an output of node 'f'"):
        PIPE.bind(y=1)


def test_with_engine_and_with_name() -> None:
    engine = LocalEngine()
    other = PIPE.with_engine(engine).with_name("renamed")
    assert other.engine is engine
    assert other.name == "renamed"
    assert PIPE.name == "demo"
    assert PIPE.engine is not engine
    assert other.graph is PIPE.graph


def test_engine_type_is_checked() -> None:
    with pytest.raises(
        TypeError, match=r"engine must be a plait.Engine such as plait.LocalEngine\(...\), got str"
    ):
        Pipeline([f], engine="threaded")  # type: ignore[arg-type]


def test_a_single_node_is_not_a_list() -> None:
    with pytest.raises(TypeError, match=r"Pipeline takes a list of nodes: Pipeline\(\[my_node\]\)"):
        Pipeline(f)  # type: ignore[arg-type]


def test_repr() -> None:
    assert repr(PIPE) == "Pipeline('demo', 3 nodes, inputs: 'x', 'scale', outputs: 'y', 'z', 'w')"


def test_many_inputs_bind_and_run_in_linear_time() -> None:
    import time

    from tests.helpers import renamed

    def identity(v):
        return v

    count = 20_000
    nodes = [node(renamed(identity, f"i{i}", f"n{i}"), output_name=f"o{i}") for i in range(count)]
    inputs = {f"i{i}": i for i in range(count)}
    pipe = Pipeline(nodes)
    start = time.perf_counter()
    result = pipe.bind(**inputs).run()
    # Linear work is ~0.2 s here; the quadratic membership test this guards against took ~8 s.
    assert time.perf_counter() - start < 3.0
    assert result["o19999"] == 19_999


def test_engine_is_an_interface_that_points_to_local_engine() -> None:
    with pytest.raises(TypeError, match=r"use plait.LocalEngine\(...\)"):
        plait.Engine(node_executor="threaded")  # type: ignore[abstract,call-arg]
    assert isinstance(LocalEngine(), plait.Engine)


def test_the_unused_input_warning_lists_at_most_ten_names() -> None:
    # Issue 14 #17: one typo among 10,000 inputs made a 109,011-character warning.
    source = "\n".join(f"def g{i}(x{i}):\n    return x{i}\n" for i in range(10_000))
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    nodes = [node(namespace[f"g{i}"], output_name=f"y{i}") for i in range(10_000)]
    pipe = Pipeline(nodes)
    inputs: dict[str, Any] = {f"x{i}": i for i in range(10_000)}
    inputs["x1O"] = 0  # a typo
    with pytest.warns(UnusedInputWarning) as record:
        pipe.run(inputs, output_name="y1")
    (message,) = [str(w.message) for w in record]
    assert "input 'x1O' is not used by any node and is ignored." in message
    assert "and 9990 more" in message
    assert len(message) < 400


def test_the_unused_input_warning_counts_many_unused_inputs() -> None:
    inputs = {"x": 1, **{f"extra{i}": i for i in range(25)}}
    with pytest.warns(UnusedInputWarning) as record:
        Pipeline([f]).run(inputs)
    (message,) = [str(w.message) for w in record]
    assert message.startswith("inputs 'extra0', 'extra1'")
    assert "and 15 more are not used by any node and are ignored." in message


def test_repr_of_a_pipeline_whose_construction_failed() -> None:
    # Issue 14 #18: debuggers, pytest's locals and rich tracebacks call repr on it.
    half_built = object.__new__(Pipeline)
    assert repr(half_built) == "<Pipeline (not built)>"
    with pytest.raises(plait.GraphError) as info:
        Pipeline([])
    frames = [tb.tb_frame for tb in _traceback_entries(info.value.__traceback__)]
    for frame in frames:
        for value in frame.f_locals.values():
            if isinstance(value, Pipeline):
                assert repr(value) == "<Pipeline (not built)>"


def _traceback_entries(tb: Any) -> list[Any]:
    entries = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    return entries
