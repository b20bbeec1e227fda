"""Batch nodes as declared: the API, single runs, errors, and the engine-neutral calls."""

from __future__ import annotations

import asyncio
import pickle

import cloudpickle
import pytest

from plait import BatchLengthError, Dep, NodeDefinitionError, Pipeline, node
from plait.batching import Batching, acall_batch, batch_results, call_batch

CALLS: list[list[str]] = []


@node(output_name="up", batch_size=4)
def upper(text):
    CALLS.append(list(text))
    return [t.upper() for t in text]


def _lengths(word):
    return [len(w) for w in word], [w[::-1] for w in word]


@node(output_name=("n", "rev"), batch_size=3)
def measure(word):
    return _lengths(word)


def shout_many(text):
    CALLS.append(["many", *text])
    return [t + "!" for t in text]


@node(output_name="loud", batch=shout_many, batch_size=8)
def shout(text):
    CALLS.append(["one", text])
    return text + "!"


def test_the_node_is_its_batch_function_and_a_run_is_a_batch_of_one() -> None:
    CALLS.clear()
    assert upper(["a", "b"]) == ["A", "B"]  # the plain function, as any node
    assert Pipeline([upper]).run(inputs={"text": "q"}) == {"up": "Q"}
    assert CALLS == [["a", "b"], ["q"]]
    assert upper.batching == Batching(upper.func, 4, None, False, separate=False)


def test_a_tuple_output_is_a_tuple_of_lists() -> None:
    assert Pipeline([measure]).run(inputs={"word": "abc"}) == {"n": 3, "rev": "cba"}


def test_a_pair_runs_its_single_form_for_one_item() -> None:
    CALLS.clear()
    assert shout("a") == "a!"
    assert Pipeline([shout]).run(inputs={"text": "b"}) == {"loud": "b!"}
    assert CALLS == [["one", "a"], ["one", "b"]]
    assert shout.batching is not None
    assert shout.batching.func is shout_many
    assert shout.batching.separate


def test_an_async_batch_function_runs_for_one_item() -> None:
    @node(output_name="y", batch_size=2)
    async def double(x):
        await asyncio.sleep(0)
        return [v * 2 for v in x]

    assert double.is_async
    assert Pipeline([double]).run(inputs={"x": 4}) == {"y": 8}


def test_a_dep_reaches_the_batch_form_as_it_is() -> None:
    def make_offset():
        return 10

    @node(output_name="y", batch_size=3)
    def add(x, offset=Dep(make_offset)):
        assert offset == 10  # not [10]
        return [v + offset for v in x]

    assert Pipeline([add]).run(inputs={"x": 1}) == {"y": 11}


def test_the_wrong_number_of_results_names_the_node_and_both_lengths() -> None:
    @node(output_name="y", batch_size=3)
    def lossy(x):
        return []

    with pytest.raises(BatchLengthError) as info:
        Pipeline([lossy]).run(inputs={"x": 1})
    assert str(info.value) == (
        "node 'lossy': its batch function returned 0 results for a batch of 1 item; "
        "it must return one result per item, in order"
    )
    assert "plait: raised in node 'lossy' (→ y) called with (x=1)" in info.value.__notes__


def test_a_tuple_output_must_be_a_tuple_of_lists() -> None:
    @node(output_name=("a", "b"), batch_size=2)
    def half(x):
        return [1] * len(x)

    with pytest.raises(BatchLengthError, match=r"must return a tuple of 2 lists, one per output"):
        Pipeline([half]).run(inputs={"x": 1})

    @node(output_name=("a", "b"), batch_size=2)
    def short_b(x):
        return list(x), []

    with pytest.raises(BatchLengthError) as info:
        Pipeline([short_b]).run(inputs={"x": 1})
    assert str(info.value).startswith(
        "node 'short_b': its batch function returned 0 results for output 'b' for a batch of 1"
    )


def test_a_result_that_is_not_a_list_is_an_error() -> None:
    @node(output_name="y", batch_size=2)
    def scalar(x):
        return 5

    with pytest.raises(BatchLengthError, match=r"must return a list with one result per item; it"):
        Pipeline([scalar]).run(inputs={"x": 1})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "node 'f': batch_size must be an int >= 1, got 0"),
        ({"batch_size": True}, "node 'f': batch_size must be an int >= 1, got True"),
        ({"batch_size": "8"}, "node 'f': batch_size must be an int >= 1, got '8'"),
        ({"batch_size": 2, "max_wait": -1}, "node 'f': max_wait must be seconds >= 0 or None"),
        ({"batch_size": 2, "max_wait": "1s"}, "node 'f': max_wait must be seconds >= 0 or None"),
        ({"max_wait": 0.1}, "node 'f': max_wait need batch_size: pass batch_size=N"),
        ({"batch": shout_many}, "node 'f': batch need batch_size"),
        ({"batch": 3, "batch_size": 2}, "node 'f': batch must be a function taking one list"),
    ],
)
def test_bad_batch_options_are_rejected_naming_the_node(options, message) -> None:
    def f(text):
        return text

    with pytest.raises(NodeDefinitionError) as info:
        node(f, output_name="y", **options)
    assert str(info.value).startswith(message)


def test_a_batch_function_must_take_the_same_parameters() -> None:
    def many(texts, model):
        return texts

    def one(text, model):
        return text

    with pytest.raises(NodeDefinitionError) as info:
        node(one, output_name="y", batch=many, batch_size=2)
    assert str(info.value) == (
        "node 'one': its batch function many(texts, model) must take the same parameters as "
        "one(text, model), in the same order: the batch form gets a list for each input (a "
        "dep's value as it is)"
    )


def test_a_per_item_dep_on_a_batch_node_is_rejected() -> None:
    def make():
        return object()

    def f(x, res=Dep(make, scope="item")):
        return x

    with pytest.raises(NodeDefinitionError) as info:
        node(f, output_name="y", batch_size=2)
    assert "its dep parameter 'res' is set up per item (scope='item')" in str(info.value)
    assert "give that Dep the default scope='run'" in str(info.value)


def test_call_batch_gives_one_checked_list_per_output() -> None:
    assert call_batch(measure, {"word": ["ab", "c"]}) == ([2, 1], ["ba", "c"])
    assert call_batch(shout, {"text": ["a"]}) == (["a!"],)
    assert asyncio.run(acall_batch(upper, {"text": ["x"]})) == (["X"],)


def test_call_batch_checks_its_columns() -> None:
    message = r"takes the columns word; missing: word; not its inputs: w"
    with pytest.raises(ValueError, match=message):
        call_batch(measure, {"w": ["a"]})

    def two(a, b):
        return list(a)

    pair = node(two, output_name="y", batch_size=2)
    with pytest.raises(ValueError, match=r"the columns differ in length \(a: 2, b: 1\)"):
        call_batch(pair, {"a": [1, 2], "b": [1]})
    with pytest.raises(TypeError, match="has no batch form"):
        call_batch(node(two, output_name="y"), {"a": [1], "b": [1]})

    @node(output_name="y", batch_size=2)
    async def later(x):
        return x

    with pytest.raises(TypeError, match=r"await acall_batch"):
        call_batch(later, {"x": [1]})
    with pytest.raises(BatchLengthError, match="returned 1 result for a batch of 2 items"):
        batch_results(upper, ["only one"], 2)


def test_call_batch_passes_resources_to_dep_parameters() -> None:
    def make():
        return "!"

    @node(output_name="y", batch_size=2)
    def mark(x, suffix=Dep(make)):
        return [v + suffix for v in x]

    assert call_batch(mark, {"x": ["a", "b"]}, {"suffix": "?"}) == (["a?", "b?"],)


def test_batch_nodes_pickle_with_their_batch_form() -> None:
    for made in (upper, shout, measure):
        for dumps in (pickle.dumps, cloudpickle.dumps):
            copy = pickle.loads(dumps(made))
            assert copy.batching == made.batching
    renamed = shout.renamed("other")
    rebuilt = cloudpickle.loads(cloudpickle.dumps(renamed))
    assert rebuilt.name == "other"
    assert rebuilt.batching is not None
    assert rebuilt.batching.func is shout_many
    assert rebuilt.batch_node is not None
    assert rebuilt.batch_node.name == "other"
