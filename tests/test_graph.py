"""Graph: build, validate (duplicates, cycles), inputs, order, read-only view."""

from __future__ import annotations

import itertools
import time

import pytest

from plait import (
    CycleError,
    DuplicateNodeNameError,
    DuplicateOutputError,
    Graph,
    GraphError,
    Pipeline,
    UnknownOutputError,
    node,
)
from tests.helpers import chain


@node(output_name="y")
def f(x):
    return x + 1


@node(output_name="z")
def g(y, scale=2):
    return y * scale


@node(output_name="w")
def h(y, z):
    return y + z


def test_inputs_outputs_and_order_do_not_depend_on_node_order() -> None:
    graph = Graph([h, g, f])
    assert graph.outputs == ("y", "z", "w")
    assert graph.inputs == ("x", "scale")
    assert [n.name for n in graph.topological_order()] == ["f", "g", "h"]


def test_required_and_optional_inputs() -> None:
    graph = Graph([f, g, h])
    assert graph.required_inputs == ("x",)
    assert graph.optional_inputs == ("scale",)


def test_input_with_default_in_one_consumer_only_is_required() -> None:
    @node(output_name="k")
    def needs_scale(scale):
        return scale

    graph = Graph([f, g, needs_scale])
    assert set(graph.required_inputs) == {"x", "scale"}
    assert graph.input_consumers["scale"] == ("g", "needs_scale")


def test_read_only_view() -> None:
    graph = Graph([f, g, h])
    assert graph["g"] is g
    assert "g" in graph
    assert len(graph) == 3
    assert list(graph) == [f, g, h]
    assert graph.producer("z") is g
    assert graph.predecessors("h") == (f, g)
    assert graph.successors("f") == (g, h)
    with pytest.raises(TypeError):
        graph.input_consumers["new"] = ("f",)  # type: ignore[index]


def test_unknown_node_name_suggests() -> None:
    with pytest.raises(KeyError, match="no node is named 'gg'. Did you mean 'g'"):
        Graph([f, g])["gg"]


@pytest.mark.parametrize("method", ["predecessors", "successors", "index_of"])
def test_unknown_node_name_in_lookups(method: str) -> None:
    graph = Graph([f, g])
    with pytest.raises(KeyError) as info:
        getattr(graph, method)("gg")
    assert info.value.args[0] == "no node is named 'gg'. Did you mean 'g'? Nodes: 'f', 'g'"


def test_repr() -> None:
    assert repr(Graph([f, g, h])) == "<Graph: 3 nodes, inputs 'x', 'scale'>"
    assert repr(Graph([g])) == "<Graph: 1 node, inputs 'y', 'scale'>"
    constant = node(lambda: 1, output_name="one", name="constant")
    assert repr(Graph([constant])) == "<Graph: 1 node, inputs none>"


def _half_built(info: pytest.ExceptionInfo[BaseException]) -> Graph:
    """The Graph whose construction raised ``info``, as a debugger would see it."""
    for entry in info.traceback:
        candidate = entry.frame.f_locals.get("self")
        if isinstance(candidate, Graph):
            return candidate
    raise AssertionError("no Graph in the traceback")


def test_repr_of_a_half_built_graph() -> None:
    with pytest.raises(GraphError) as info:
        Graph([])
    assert repr(_half_built(info)) == "<Graph (incomplete): 0 nodes>"
    with pytest.raises(DuplicateOutputError) as info:
        Graph([f, node(g.func, output_name="y")])
    assert repr(_half_built(info)) == "<Graph (incomplete): 2 nodes>"
    assert repr(Graph.__new__(Graph)) == "<Graph (incomplete)>"


def test_unknown_output_lists_available() -> None:
    with pytest.raises(
        UnknownOutputError, match=r"no node produces output 'zz'\. Did you mean 'z'"
    ):
        Graph([f, g]).producer("zz")


def test_duplicate_output_names_both_nodes() -> None:
    @node(output_name="y")
    def other(x):
        return x

    with pytest.raises(DuplicateOutputError) as info:
        Graph([f, other])
    message = str(info.value)
    assert "output 'y' is produced by two nodes: 'f' and 'other'" in message
    assert "rename one with output_name=" in message
    assert isinstance(info.value, ValueError)


def test_duplicate_node_names() -> None:
    f1 = node(f.func, output_name="y", name="f")
    f2 = node(f.func, output_name="y2", name="f")
    with pytest.raises(DuplicateNodeNameError) as info:
        Graph([f1, f2])
    message = str(info.value)
    assert "two nodes are named 'f': f(x) → y and f(x) → y2" in message
    assert "give one a distinct name with node(..., name=...)" in message


def test_colliding_default_names_are_told_apart_by_outputs() -> None:
    # f is named after its function; f2 too: neither name was chosen.
    f2 = node(f.func, output_name="y2")
    graph = Graph([f, f2, g])
    assert [n.name for n in graph] == ["f[y]", "f[y2]", "g"]
    assert graph["f[y]"].outputs == ("y",)
    assert graph.predecessors("g") == (graph["f[y]"],)
    assert graph.input_consumers["x"] == ("f[y]", "f[y2]")
    # The nodes given are not changed; the graph holds renamed copies.
    assert (f.name, f2.name) == ("f", "f")
    assert graph["f[y]"].func is f.func
    assert graph["g"] is g


def test_a_chosen_name_keeps_it_and_a_default_name_gives_way() -> None:
    chosen = node(f.func, output_name="y2", name="f")
    graph = Graph([f, chosen])
    assert [n.name for n in graph] == ["f[y]", "f"]
    assert graph["f"] is chosen


def test_tuple_outputs_in_a_disambiguated_name() -> None:
    split = node(lambda x: (x, x), output_name=("a", "b"))
    other = node(lambda x: x, output_name="c")
    assert [n.name for n in Graph([split, other])] == ["<lambda>[a, b]", "<lambda>[c]"]


def test_same_default_name_and_same_output_is_a_duplicate_output() -> None:
    with pytest.raises(DuplicateOutputError, match="output 'y' is produced by two nodes"):
        Graph([f, node(f.func, output_name="y")])


def test_lambdas_and_a_function_used_twice_share_a_pipeline() -> None:
    pipeline = Pipeline(
        [node(lambda v: v + 1, output_name="b"), node(lambda b: b * 2, output_name="c")]
    )
    assert [n.name for n in pipeline.nodes] == ["<lambda>[b]", "<lambda>[c]"]
    assert pipeline.run(inputs={"v": 1}) == {"b": 2, "c": 4}

    def fetch(url):
        if url == "bad":
            raise ValueError("unreachable")
        return url.upper()

    pipeline = Pipeline([node(fetch, output_name="a"), node(fetch, output_name="b")])
    assert [n.name for n in pipeline.nodes] == ["fetch[a]", "fetch[b]"]
    assert pipeline.run(inputs={"url": "x"}) == {"a": "X", "b": "X"}
    with pytest.raises(ValueError, match="unreachable") as info:
        pipeline.run(inputs={"url": "bad"}, output_name="b")
    assert any("node 'fetch[b]'" in note for note in info.value.__notes__)


def test_a_disambiguated_name_taken_by_a_chosen_name_is_an_error() -> None:
    taken = node(g.func, output_name="z", name="f[y]")
    with pytest.raises(DuplicateNodeNameError) as info:
        Graph([f, node(f.func, output_name="y2"), taken])
    message = str(info.value)
    assert "two nodes are named 'f[y]': f[y](x) → y and f[y](y, scale=2) → z" in message


def test_same_node_twice() -> None:
    with pytest.raises(DuplicateNodeNameError, match="node 'f' is listed twice"):
        Graph([f, g, f])


def test_two_node_cycle_shows_path() -> None:
    a = node(lambda b_out: b_out, output_name="a_out", name="a")
    b = node(lambda a_out: a_out, output_name="b_out", name="b")
    with pytest.raises(CycleError) as info:
        Graph([a, b])
    assert info.value.cycle in (("a", "b", "a"), ("b", "a", "b"))
    message = str(info.value)
    assert "the nodes form a cycle: " in message
    assert " -> ".join(info.value.cycle) in message
    assert "'b' consumes 'a_out' from 'a'" in message
    # The whole message, whichever node the path starts from.
    b_to_a, a_to_b = "'a' consumes 'b_out' from 'b'", "'b' consumes 'a_out' from 'a'"
    acyclic = "a pipeline must be acyclic, so break the cycle by renaming an input or output"
    assert message in (
        f"the nodes form a cycle: b -> a -> b ({b_to_a}; {a_to_b}); {acyclic}",
        f"the nodes form a cycle: a -> b -> a ({a_to_b}; {b_to_a}); {acyclic}",
    )


def test_self_cycle() -> None:
    loop = node(lambda y: y, output_name="y", name="loop")
    with pytest.raises(CycleError, match=r"cycle: loop -> loop"):
        Graph([loop])


def test_cycle_inside_a_larger_graph_reports_only_the_cycle() -> None:
    start = node(lambda x: x, output_name="s", name="start")
    c1 = node(lambda s, c3_out: s, output_name="c1_out", name="c1")
    c2 = node(lambda c1_out: c1_out, output_name="c2_out", name="c2")
    c3 = node(lambda c2_out: c2_out, output_name="c3_out", name="c3")
    tail = node(lambda c3_out: c3_out, output_name="t", name="tail")
    with pytest.raises(CycleError) as info:
        Graph([tail, start, c1, c2, c3])
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"c1", "c2", "c3"}
    assert len(cycle) == 4
    # Each step of the reported path is a real edge, in dataflow order.
    edges = {("c1", "c2"), ("c2", "c3"), ("c3", "c1")}
    assert set(itertools.pairwise(cycle)) == edges


def test_cycle_after_its_root_is_found() -> None:
    # Listed root first: the search for the cycle must skip the root, which has no
    # predecessor left (a search starting there would find nothing to walk).
    start = node(lambda x: x, output_name="s", name="start")
    c1 = node(lambda s, c2_out: s, output_name="c1_out", name="c1")
    c2 = node(lambda c1_out: c1_out, output_name="c2_out", name="c2")
    with pytest.raises(CycleError) as info:
        Graph([start, c1, c2])
    assert info.value.cycle in (("c1", "c2", "c1"), ("c2", "c1", "c2"))
    message = str(info.value)
    assert "'c2' consumes 'c1_out' from 'c1'" in message
    assert "'c1' consumes 'c2_out' from 'c2'" in message
    assert "break the cycle by renaming an input or output" in message


def test_non_node_items_are_rejected() -> None:
    def plain(x):
        return x

    with pytest.raises(GraphError, match=r"item 1 of nodes is .*plain.*not a Node; decorate"):
        Graph([f, plain])  # type: ignore[list-item]


def test_empty_graph_is_rejected() -> None:
    with pytest.raises(GraphError, match="a pipeline needs at least one node"):
        Graph([])


def test_tuple_outputs_make_one_edge_per_producer() -> None:
    split = node(lambda x: (x, x), output_name=("a", "b"), name="split")
    both = node(lambda a, b: a + b, output_name="c", name="both")
    graph = Graph([both, split])
    assert graph.predecessors("both") == (split,)
    assert graph.outputs == ("a", "b", "c")


def test_needed_for_prunes_to_ancestors() -> None:
    graph = Graph([f, g, h])
    assert graph.needed_for(["z"]) == {graph.index_of("f"), graph.index_of("g")}


def test_ten_thousand_nodes_build_quickly() -> None:
    nodes = chain(10_000)
    start = time.perf_counter()
    Pipeline(nodes)
    # The benchmark measures this (well under a second); here only a wide margin.
    assert time.perf_counter() - start < 3.0


def test_hundred_thousand_node_chain_builds_and_runs_without_recursion() -> None:
    pipeline = Pipeline(chain(100_000, async_every=1000))
    result = pipeline.run(inputs={"v0": 0}, output_name="v100000")
    assert result == {"v100000": 100_000}
    everything = pipeline.run(inputs={"v0": 0})
    assert len(everything) == 100_000
