"""Nodes: decoration forms, inputs and outputs, sync/async detection, rejected signatures."""

from __future__ import annotations

import functools
import math
import operator
import pickle
from typing import Any

import pytest

from plait import Node, NodeDefinitionError, node


@node
def bare(a, b=2):
    return a + b


@node(output_name="y", name="doubler", cache=False)
def double(x):
    return 2 * x


@node(output_name=("q", "r"))
def divide(a, b):
    return divmod(a, b)


def test_bare_decorator_names_node_and_output_after_function() -> None:
    assert isinstance(bare, Node)
    assert bare.name == "bare"
    assert bare.output_name == "bare"
    assert bare.outputs == ("bare",)


def test_options_are_kept() -> None:
    assert double.name == "doubler"
    assert double.outputs == ("y",)
    assert double.cache is False
    assert bare.cache is True


def test_tuple_output_name() -> None:
    assert divide.output_name == ("q", "r")
    assert divide.outputs == ("q", "r")


def test_node_stays_callable_as_the_plain_function() -> None:
    assert bare(1) == 3
    assert bare(1, b=5) == 6
    assert divide(7, 2) == (3, 1)
    assert bare.__name__ == "bare"
    assert bare.__wrapped__.__name__ == "bare"


def test_inputs_required_and_optional() -> None:
    assert bare.inputs == ("a", "b")
    assert bare.required_inputs == ("a",)
    assert bare.optional_inputs == ("b",)
    assert dict(bare.defaults) == {"b": 2}


def test_keyword_only_and_positional_only_parameters() -> None:
    def f(a, /, b, *, c=3):
        return a + b + c

    n = node(f, output_name="s")
    assert n.positional == ("a", "b")
    assert n.keyword == ("c",)
    assert n.inputs == ("a", "b", "c")


def test_functional_form_for_functions_you_dont_own() -> None:
    root = node(math.sqrt, output_name="root")
    assert root.inputs == ("x",)
    assert root(9.0) == 3.0
    assert root.name == "sqrt"


def test_wrapping_a_node_again_wraps_its_function() -> None:
    again = node(double, output_name="z")
    assert again.func is double.func
    assert again.outputs == ("z",)


@pytest.mark.parametrize(
    "func",
    [
        pytest.param(lambda: None, id="lambda"),
        pytest.param(operator.add, id="builtin"),
        pytest.param(functools.partial(operator.add, 1), id="partial"),
    ],
)
def test_sync_callables_are_not_async(func: Any) -> None:
    assert node(func, output_name="o").is_async is False


async def _coro_fn(x):
    return x


class _AsyncCallable:
    async def __call__(self, x):
        return x


class _SyncCallable:
    def __call__(self, x):
        return x


@pytest.mark.parametrize(
    ("func", "name"),
    [
        pytest.param(_coro_fn, "_coro_fn", id="async-def"),
        pytest.param(_AsyncCallable(), "_AsyncCallable", id="async-callable-object"),
        pytest.param(functools.partial(_coro_fn), "_coro_fn", id="partial-of-async"),
    ],
)
def test_async_callables_are_detected(func: Any, name: str) -> None:
    n = node(func, output_name="o")
    assert n.is_async is True
    assert n.name == name
    assert n.inputs == ("x",)


def test_sync_callable_object() -> None:
    n = node(_SyncCallable(), output_name="o")
    assert n.is_async is False
    assert n.name == "_SyncCallable"


def test_star_args_rejected_with_reason() -> None:
    def f(a, *rest):
        return a

    with pytest.raises(NodeDefinitionError, match=r"node 'f' has a \*rest parameter") as info:
        node(f, output_name="y")
    assert "wired by parameter name" in str(info.value)
    assert "explicit parameters" in str(info.value)


def test_star_kwargs_rejected_with_reason() -> None:
    with pytest.raises(NodeDefinitionError, match=r"has a \*\*options parameter"):

        @node(output_name="y")
        def f(a, **options):
            return a


def test_rejections_are_type_errors() -> None:
    with pytest.raises(TypeError):
        node(lambda *a: a, output_name="y")


def test_async_generator_rejected() -> None:
    async def agen(x):
        yield x

    with pytest.raises(NodeDefinitionError, match="async generator function"):
        node(agen, output_name="y")


def test_generator_function_rejected_like_an_async_one() -> None:
    def gen(x):
        yield x

    with pytest.raises(NodeDefinitionError) as info:
        node(gen, output_name="y")
    assert str(info.value) == (
        "'gen' is a generator function; a node must return its value. Collect the items "
        "in a def that returns a list: return list(gen(...))."
    )
    with pytest.raises(NodeDefinitionError, match="'gen' is a generator function"):
        node(functools.partial(gen, 1), output_name="y")
    node(lambda x: (v for v in x), output_name="y")  # returning a generator is a value


@pytest.mark.parametrize(
    ("output_name", "message"),
    [
        ("", "output_name must be a non-empty string"),
        ((), "output_name must be a non-empty string"),
        (3, "output_name must be a non-empty string"),
        (("a", ""), "every name in output_name must be a non-empty string"),
        (("a", "a"), "repeats a name"),
    ],
)
def test_bad_output_names(output_name: Any, message: str) -> None:
    with pytest.raises(NodeDefinitionError, match=message):
        node(lambda x: x, output_name=output_name)


def test_bad_node_name() -> None:
    with pytest.raises(NodeDefinitionError, match="a node name must be a non-empty string"):
        node(lambda x: x, output_name="y", name="")


def test_not_callable() -> None:
    with pytest.raises(NodeDefinitionError, match="needs a function or other callable, got int"):
        node(3, output_name="y")  # type: ignore[call-overload]


def test_unreadable_signature() -> None:
    class NoSignature:
        __signature__ = "broken"

        def __call__(self) -> None: ...

    with pytest.raises(NodeDefinitionError, match="cannot read the parameters of 'NoSignature'"):
        node(NoSignature(), output_name="y")


def test_describe_and_repr() -> None:
    assert bare.describe() == "bare(a, b=2) → bare"
    assert divide.describe() == "divide(a, b) → (q, r)"
    assert repr(double) == "Node(doubler(x) → y)"


def test_module_level_node_pickles_by_reference() -> None:
    assert pickle.loads(pickle.dumps(double)) is double


def test_other_nodes_pickle_by_value() -> None:
    n = node(operator.add, output_name="s", name="adder")
    copy = pickle.loads(pickle.dumps(n))
    assert copy is not n
    assert (copy.name, copy.outputs, copy(2, 3)) == ("adder", ("s",), 5)


def test_name_given_tells_a_chosen_name_from_the_function_name() -> None:
    assert (bare.name_given, double.name_given) == (False, True)
    assert node(operator.add, output_name="s").name_given is False
    assert node(operator.add, output_name="s", name="add").name_given is True


def test_renamed_is_a_copy_under_another_name() -> None:
    copy = bare.renamed("bare[bare]")
    assert copy is not bare
    assert bare.name == "bare"
    assert (copy.name, copy.name_given, copy.func) == ("bare[bare]", False, bare.func)
    assert (copy.inputs, copy.outputs, copy.options) == (bare.inputs, bare.outputs, bare.options)
    assert copy(1) == 3
    unpickled = pickle.loads(pickle.dumps(copy))
    assert (unpickled.name, unpickled.name_given) == ("bare[bare]", False)
    assert double.renamed("twice").name_given is True


def test_a_node_made_from_a_module_level_node_pickles() -> None:
    # Its function is reachable by name only through the decorated Node.
    again = node(bare, output_name="again")
    unpickled = pickle.loads(pickle.dumps(again))
    assert (unpickled.name, unpickled.outputs, unpickled(1)) == ("bare", ("again",), 3)


@pytest.mark.parametrize(
    "func",
    [
        pytest.param(lambda x: x, id="lambda"),
        pytest.param(functools.partial(lambda x, y: x, 1), id="partial-of-lambda"),
    ],
)
def test_a_lambda_needs_an_output_name(func: Any) -> None:
    with pytest.raises(NodeDefinitionError) as info:
        node(func)
    assert str(info.value) == (
        "node '<lambda>' needs output_name: its output would take the function's name, "
        "'<lambda>', which no parameter can consume; name it, e.g. "
        "node(fn, output_name='y')"
    )
    assert node(func, output_name="y").outputs == ("y",)


def test_resources_are_checked_and_are_not_a_control() -> None:
    @node(output_name="y", resources={"cpus": 2, "gpus": 0.5})
    def f(x: int) -> int:
        return x

    assert (f.options.resources.cpus, f.options.resources.gpus) == (2.0, 0.5)  # type: ignore[union-attr]
    assert str(f.options.resources) == "cpus=2, gpus=0.5"
    assert not f.options.controlled  # a plain call wherever it runs
    assert node(f.func, output_name="y", resources={"cpus": 1}, retries=1).options.controlled
    with pytest.raises(NodeDefinitionError, match=r"node 'f': resources must be a dict with keys"):
        node(f.func, output_name="y", resources={"gpu": 1})
    with pytest.raises(NodeDefinitionError, match=r"resources\['cpus'\] must be a number > 0"):
        node(f.func, output_name="y", resources={"cpus": 0})


def test_concurrency_is_a_whole_number_of_stage_instances() -> None:
    @node(output_name="y", resources={"gpus": 1, "concurrency": 2})
    def f(x: int) -> int:
        return x

    assert f.options.resources is not None
    assert f.options.resources.concurrency == 2
    assert str(f.options.resources) == "gpus=1, concurrency=2"
    with pytest.raises(NodeDefinitionError, match=r"'concurrency'\] is a number of stage inst"):
        node(f.func, output_name="y", resources={"concurrency": 1.5})
