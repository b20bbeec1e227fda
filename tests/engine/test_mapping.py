"""Mapping a pipeline over items: map, amap, imap and aimap on every map executor.

Covers what a map accepts (any iterable, zip, product, broadcast and bound inputs,
output selection), every error raised before work starts, agreement of every map
executor with a plain loop (also as a hypothesis property), concurrency bounds,
fail-fast cancellation, ``on_error="collect"``, streaming with ``imap``/``aimap``
(order, early exit, the in-flight window), running inside an event loop,
contextvars, and the loop-free path for sync-only sequential maps.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import itertools
import multiprocessing
import pickle
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import plait
from plait import (
    InputError,
    ItemError,
    LocalEngine,
    MissingInputsError,
    Pipeline,
    RunningLoopWarning,
    bridge,
    node,
)
from plait.engine.request import MapSpec, OneInputItems

#: Map executors: the three aliases and a ThreadPoolExecutor instance.
EXECUTORS = ("sequential", "async", "threaded", "instance")
FORMS = ("map", "amap", "imap", "aimap")


class Boom(ValueError):
    pass


class Calls:
    """Call counts by name, safe to update from worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def hit(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def __getitem__(self, name: str) -> int:
        return self.counts[name]

    def total(self) -> int:
        return sum(self.counts.values())


@contextlib.contextmanager
def engine_for(kind: str, **options: Any) -> Iterator[LocalEngine]:
    """An engine whose map executor is ``kind``; closed (or its pool shut down) on exit."""
    if kind == "instance":
        workers = options.get("max_workers") or 4
        with (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mine") as pool,
            LocalEngine(map_executor=pool, **options) as engine,
        ):
            yield engine
        return
    with LocalEngine(map_executor=kind, **options) as engine:
        yield engine


def run_form(pipe: Pipeline, form: str, **kwargs: Any) -> list[Any]:
    """Every outcome of a map, in input order, through one of the four entry points."""
    if form == "map":
        return pipe.map(**kwargs)
    if form == "amap":
        return asyncio.run(pipe.amap(**kwargs))
    if form == "imap":
        pairs = list(pipe.imap(**kwargs))
    else:
        assert form == "aimap"

        async def collect() -> list[tuple[int, Any]]:
            return [pair async for pair in pipe.aimap(**kwargs)]

        pairs = asyncio.run(collect())
    indices = [i for i, _ in pairs]
    assert sorted(indices) == list(range(len(pairs))), "every index exactly once"
    return [outcome for _, outcome in sorted(pairs, key=lambda p: p[0])]


# --- the pipelines ----------------------------------------------------------------------


def mixed_nodes(calls: Calls | None = None) -> list[Any]:
    """sync double -> async shift -> sync combine."""

    @node(output_name="y")
    def double(x):
        if calls is not None:
            calls.hit("double")
        return 2 * x

    @node(output_name="z")
    async def shift(y, offset=1):
        if calls is not None:
            calls.hit("shift")
        await asyncio.sleep(0)
        return y + offset

    @node(output_name="w")
    def combine(y, z):
        if calls is not None:
            calls.hit("combine")
        return y * z

    return [combine, shift, double]


def mixed_reference(x: int, offset: int = 1) -> dict[str, int]:
    y = 2 * x
    z = y + offset
    return {"y": y, "z": z, "w": y * z}


def sync_nodes(calls: Calls | None = None) -> list[Any]:
    """sync double -> sync shift: no async node, so sequential maps run inline."""

    @node(output_name="y")
    def double(x):
        if calls is not None:
            calls.hit("double")
        return 2 * x

    @node(output_name="z")
    def shift(y, offset=1):
        if calls is not None:
            calls.hit("shift")
        return y + offset

    return [double, shift]


def sync_reference(x: int, offset: int = 1) -> dict[str, int]:
    return {"y": 2 * x, "z": 2 * x + offset}


# --- what a map accepts -------------------------------------------------------------


ITERABLES: dict[str, Callable[[], Any]] = {
    "list": lambda: [3, 1, 4, 1, 5],
    "tuple": lambda: (3, 1, 4, 1, 5),
    "range": lambda: range(3, 8),
    "generator": lambda: (v for v in [3, 1, 4, 1, 5]),
    "iterator": lambda: iter([3, 1, 4, 1, 5]),
    "dict keys": lambda: dict.fromkeys([3, 1, 4, 5]).keys(),
}


@pytest.mark.parametrize("kind", EXECUTORS)
@pytest.mark.parametrize("iterable", list(ITERABLES))
def test_map_over_any_iterable(kind: str, iterable: str) -> None:
    values = list(ITERABLES[iterable]())
    with engine_for(kind) as engine:
        mixed = Pipeline(mixed_nodes(), engine=engine)
        result = mixed.map({"x": ITERABLES[iterable]()}, map_over="x")
        assert isinstance(result, list)
        assert result == [mixed_reference(v) for v in values]
        plain = Pipeline(sync_nodes(), engine=engine)  # the inline path on "sequential"
        assert plain.map({"x": ITERABLES[iterable]()}, map_over="x") == [
            sync_reference(v) for v in values
        ]


def test_map_over_a_numpy_array() -> None:
    np = pytest.importorskip("numpy")
    array = np.arange(4) * 3
    assert Pipeline(sync_nodes()).map({"x": array}, map_over="x") == [
        sync_reference(int(v)) for v in array
    ]
    with LocalEngine(map_executor="async") as engine:
        result = Pipeline(mixed_nodes(), engine=engine).map({"x": array}, map_over="x")
    assert result == [mixed_reference(int(v)) for v in array]


@pytest.mark.parametrize("kind", EXECUTORS)
@pytest.mark.parametrize("form", FORMS)
def test_empty_input_gives_no_items_and_runs_nothing(kind: str, form: str) -> None:
    calls = Calls()
    with engine_for(kind) as engine:
        mixed = Pipeline(mixed_nodes(calls), engine=engine)
        assert run_form(mixed, form, inputs={"x": []}, map_over="x") == []
        assert run_form(mixed, form, inputs={"x": iter(())}, map_over="x") == []
        plain = Pipeline(sync_nodes(calls), engine=engine)
        assert run_form(plain, form, inputs={"x": range(0)}, map_over="x") == []
    assert calls.total() == 0


@node(output_name="pair")
def make_pair(a, b):
    return (a, b)


@node(output_name="triple")
async def make_triple(a, b, c):
    return (a, b, c)


@pytest.mark.parametrize("kind", EXECUTORS)
def test_zip_pairs_mapped_inputs_item_by_item(kind: str) -> None:
    with engine_for(kind) as engine:
        pipe = Pipeline([make_pair], engine=engine)
        result = pipe.map({"a": [1, 2, 3], "b": list("xyz")}, map_over=["a", "b"])
        assert result == [{"pair": (1, "x")}, {"pair": (2, "y")}, {"pair": (3, "z")}]
        # Generators zip too (their length is only known at the end).
        gens = {"a": (i for i in range(4)), "b": (c for c in "wxyz")}
        assert pipe.map(gens, map_over=["a", "b"], map_mode="zip") == [
            {"pair": p} for p in zip(range(4), "wxyz", strict=True)
        ]
        empty = pipe.map({"a": [], "b": ()}, map_over=["a", "b"])
        assert empty == []


@pytest.mark.parametrize("kind", EXECUTORS)
def test_product_runs_every_combination_in_itertools_product_order(kind: str) -> None:
    a, b, c = [1, 2, 3], ["x", "y"], (True, False)
    with engine_for(kind) as engine:
        pipe = Pipeline([make_pair], engine=engine)
        result = pipe.map({"a": a, "b": b}, map_over=["a", "b"], map_mode="product")
        assert result == [{"pair": p} for p in itertools.product(a, b)]
        # The order of map_over decides which input varies fastest.
        swapped = pipe.map({"a": a, "b": b}, map_over=["b", "a"], map_mode="product")
        assert swapped == [{"pair": (x, y)} for y, x in itertools.product(b, a)]
        three = Pipeline([make_triple], engine=engine).map(
            {"a": iter(a), "b": (v for v in b), "c": c},
            map_over=["a", "b", "c"],
            map_mode="product",
        )
        assert three == [{"triple": t} for t in itertools.product(a, b, c)]
        # Different lengths are fine for a product; an empty input gives no items.
        assert pipe.map({"a": a, "b": []}, map_over=["a", "b"], map_mode="product") == []
        # A product of one input is a plain map.
        single = pipe.map({"a": a, "b": "k"}, map_over="a", map_mode="product")
        assert single == [{"pair": (v, "k")} for v in a]


@pytest.mark.parametrize("kind", EXECUTORS)
def test_inputs_not_mapped_are_broadcast_as_the_same_object(kind: str) -> None:
    lookup = {"one": 1, "two": 2}
    seen: list[Any] = []

    @node(output_name="found")
    async def find(key, table, default=0):
        seen.append(table)
        return table.get(key, default)

    with engine_for(kind) as engine:
        pipe = Pipeline([find], engine=engine)
        result = pipe.map({"key": ["one", "two", "three"], "table": lookup}, map_over="key")
        assert result == [{"found": 1}, {"found": 2}, {"found": 0}]
        assert len(seen) == 3
        assert all(t is lookup for t in seen)  # not copied, not iterated
        # A list broadcast input stays whole: only map_over inputs are iterated.
        pipe2 = Pipeline(sync_nodes(), engine=engine)
        assert pipe2.map({"x": [1, 2], "offset": 10}, map_over="x") == [
            sync_reference(1, 10),
            sync_reference(2, 10),
        ]


@pytest.mark.parametrize("kind", EXECUTORS)
def test_bound_inputs_are_broadcast_and_can_be_mapped_over(kind: str) -> None:
    with engine_for(kind) as engine:
        pipe = Pipeline(mixed_nodes(), engine=engine)
        bound = pipe.bind(offset=100)
        assert bound.map({"x": [1, 2]}, map_over="x") == [
            mixed_reference(1, 100),
            mixed_reference(2, 100),
        ]
        # Mapping over a bound input: no inputs at all, or only broadcast ones.
        over_bound = pipe.bind(x=[5, 6, 7])
        assert over_bound.map(map_over="x") == [mixed_reference(v) for v in (5, 6, 7)]
        assert over_bound.map({"offset": 3}, map_over="x") == [
            mixed_reference(v, 3) for v in (5, 6, 7)
        ]
        # inputs override bound values, mapped or not.
        assert over_bound.map({"x": [9]}, map_over="x") == [mixed_reference(9)]
        assert bound.map({"x": [1], "offset": 0}, map_over="x") == [mixed_reference(1, 0)]
        # Both mapped inputs bound, zipped.
        zipped = pipe.bind(x=[1, 2], offset=[10, 20]).map(map_over=["x", "offset"])
        assert zipped == [mixed_reference(1, 10), mixed_reference(2, 20)]


def selection_nodes(calls: Calls) -> list[Any]:
    @node(output_name="a")
    def cheap(x):
        calls.hit("cheap")
        return x + 1

    @node(output_name="b")
    async def expensive(x, extra):
        calls.hit("expensive")
        return x * extra

    @node(output_name="c")
    async def after(a):
        calls.hit("after")
        return a * 10

    return [cheap, expensive, after]


@pytest.mark.parametrize("kind", EXECUTORS)
def test_output_name_runs_only_the_nodes_needed(kind: str) -> None:
    calls = Calls()
    with engine_for(kind) as engine:
        pipe = Pipeline(selection_nodes(calls), engine=engine)
        # 'extra' is only needed by 'expensive', so it need not be given.
        result = pipe.map({"x": [1, 2, 3]}, map_over="x", output_name="c")
        assert result == [{"c": 20}, {"c": 30}, {"c": 40}]
        assert calls.counts == Counter({"cheap": 3, "after": 3})

        calls.counts.clear()
        result = pipe.map({"x": range(4), "extra": 2}, map_over="x", output_name=["b", "a"])
        assert result == [{"b": 2 * v, "a": v + 1} for v in range(4)]
        assert calls.counts == Counter({"cheap": 4, "expensive": 4})

        # A mapped input the selection does not need still decides the items.
        calls.counts.clear()
        result = pipe.map({"x": [1, 2], "extra": [7, 8]}, map_over=["x", "extra"], output_name="a")
        assert result == [{"a": 2}, {"a": 3}]
        assert calls.counts == Counter({"cheap": 2})

        calls.counts.clear()
        result = pipe.map({"x": 1, "extra": [7, 8, 9]}, map_over="extra", output_name="a")
        assert result == [{"a": 2}] * 3
        assert calls.counts == Counter({"cheap": 3})


# --- errors before any work starts ----------------------------------------------------


def counted_scaled(calls: Calls) -> list[Any]:
    @node(output_name="scaled")
    def scale_it(count, scale):
        calls.hit("scale_it")
        return count * scale

    @node(output_name="shown")
    async def show(scaled):
        calls.hit("show")
        return str(scaled)

    return [scale_it, show]


ERROR_CASES = {
    "zip lengths differ": (
        {"inputs": {"count": [1, 2, 3], "scale": [1, 2]}, "map_over": ["count", "scale"]},
        InputError,
        [
            "map_mode='zip' needs mapped inputs of one length",
            "'count' has 3 items, 'scale' has 2 items",
            "map_mode='product'",
        ],
    ),
    "zip lengths differ, one item": (
        {"inputs": {"count": range(2), "scale": (5,)}, "map_over": ["count", "scale"]},
        InputError,
        ["'count' has 2 items, 'scale' has 1 item."],
    ),
    "unknown name, close match": (
        {"inputs": {"count": [1], "scale": 2}, "map_over": "cuont"},
        InputError,
        [
            "map_over names 'cuont', which is not an input of this pipeline.",
            "Did you mean 'count'?",
            "Inputs: 'count', 'scale'",
        ],
    ),
    "unknown name in a list": (
        {"inputs": {"count": [1], "scale": [2]}, "map_over": ["count", "scal"]},
        InputError,
        ["map_over names 'scal'", "Did you mean 'scale'?"],
    ),
    "unknown name, no close match": (
        {"inputs": {"count": [1], "scale": 2}, "map_over": "zebra"},
        InputError,
        ["map_over names 'zebra', which is not an input", "Inputs: 'count', 'scale'"],
    ),
    "an output, not an input": (
        {"inputs": {"count": [1], "scale": 2}, "map_over": "scaled"},
        InputError,
        ["map_over names 'scaled', which is not an input of this pipeline"],
    ),
    "mapped input not given": (
        {"inputs": {"scale": 2}, "map_over": "count"},
        InputError,
        ["map_over names 'count' but inputs has no 'count'", "inputs={'count': [...]}"],
    ),
    "mapped input not iterable": (
        {"inputs": {"count": 5, "scale": 2}, "map_over": "count"},
        InputError,
        ["mapped input 'count' must be iterable", "got int: 5"],
    ),
    "second mapped input not iterable": (
        {"inputs": {"count": [1], "scale": None}, "map_over": ["count", "scale"]},
        InputError,
        ["mapped input 'scale' must be iterable", "got NoneType: None"],
    ),
    "bad map_mode": (
        {"inputs": {"count": [1], "scale": 2}, "map_over": "count", "map_mode": "cartesian"},
        InputError,
        ["map_mode must be 'zip' or 'product', got 'cartesian'"],
    ),
    "bad on_error": (
        {"inputs": {"count": [1], "scale": 2}, "map_over": "count", "on_error": "ignore"},
        InputError,
        ["on_error must be 'raise' or 'collect', got 'ignore'"],
    ),
    "missing broadcast input": (
        {"inputs": {"count": [1, 2]}, "map_over": "count"},
        MissingInputsError,
        ["missing 1 required input: 'scale'", "needed by node scale_it"],
    ),
    "no map_over": (
        {"inputs": {"count": [1, 2], "scale": 2}},
        InputError,
        ["map_over must be an input name or a list of names, got ()"],
    ),
    "map_over not names": (
        {"inputs": {"count": [1, 2], "scale": 2}, "map_over": [1]},
        InputError,
        ["map_over must be an input name or a list of names, got [1]"],
    ),
}


def call_only(pipe: Pipeline, form: str, kwargs: dict[str, Any]) -> None:
    """Call an entry point; imap and aimap check their arguments before iterating."""
    if form == "map":
        pipe.map(**kwargs)
    elif form == "amap":
        asyncio.run(pipe.amap(**kwargs))
    elif form == "imap":
        pipe.imap(**kwargs)
    else:
        pipe.aimap(**kwargs)


@pytest.mark.parametrize("kind", ["sequential", "async", "threaded"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_arguments_raise_before_any_node_runs(kind: str, form: str, case: str) -> None:
    kwargs, error, fragments = ERROR_CASES[case]
    calls = Calls()
    with engine_for(kind) as engine:
        pipe = Pipeline(counted_scaled(calls), engine=engine)
        with pytest.raises(error) as info:
            call_only(pipe, form, kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    if case == "unknown name, no close match":
        assert "Did you mean" not in message
    assert calls.total() == 0


def counting(values: Any, pulled: list[int]) -> Iterator[Any]:
    for v in values:
        pulled[0] += 1
        yield v


@pytest.mark.parametrize("kind", EXECUTORS)
@pytest.mark.parametrize("on_error", ["raise", "collect"])
def test_zip_of_generators_with_different_lengths_fails_when_discovered(
    kind: str, on_error: str
) -> None:
    calls = Calls()
    with engine_for(kind) as engine:
        pipe = Pipeline(counted_scaled(calls), engine=engine)
        with pytest.raises(InputError) as short_first:
            pipe.map(
                {"count": (i for i in range(3)), "scale": (i for i in range(5))},
                map_over=["count", "scale"],
                on_error=on_error,
            )
        assert str(short_first.value) == (
            "map_mode='zip' needs mapped inputs of one length: 'count' ended after 3 items "
            "while 'scale' had more"
        )
        with pytest.raises(InputError) as short_second:
            pipe.map(
                {"count": (i for i in range(5)), "scale": iter([1, 2])},
                map_over=["count", "scale"],
                on_error=on_error,
            )
        assert "'scale' ended after 2 items while 'count' had more" in str(short_second.value)
        # A list and a generator: the list's length alone cannot tell.
        with pytest.raises(InputError, match="'scale' ended after 1 item while 'count' had"):
            pipe.map(
                {"count": [1, 2, 3], "scale": (i for i in [7])},
                map_over=["count", "scale"],
                on_error=on_error,
            )
    if kind == "sequential":
        # The error comes when the shorter input runs out: earlier items have run.
        assert calls["scale_it"] == 3 + 2 + 1


def consume_into(received: list[Any], items: Iterator[Any]) -> None:
    for item in items:
        received.append(item)


def test_imap_yields_the_items_before_a_zip_length_error() -> None:
    calls = Calls()
    pipe = Pipeline(counted_scaled(calls))
    received: list[tuple[int, Any]] = []
    items = pipe.imap(
        {"count": iter([1, 2, 3]), "scale": iter([10, 20])}, map_over=["count", "scale"]
    )
    with pytest.raises(InputError, match="'scale' ended after 2 items while 'count' had more"):
        consume_into(received, items)
    assert received == [(0, {"scaled": 10, "shown": "10"}), (1, {"scaled": 40, "shown": "40"})]


def test_a_repeated_map_over_name_is_rejected_or_counted_once() -> None:
    # map_over=["x", "x"] must not silently change the items: either an InputError, or
    # the same items as map_over="x". (Today a generator is consumed by both "columns",
    # so every other value is dropped: 2 items instead of 4, with wrong values.)
    pipe = Pipeline(sync_nodes())
    expected = pipe.map({"x": range(4)}, map_over="x")
    for mode in ("zip", "product"):
        try:
            result = pipe.map({"x": (v for v in range(4))}, map_over=["x", "x"], map_mode=mode)
        except InputError:
            continue
        assert result == expected, mode


# --- every executor agrees with a plain loop -----------------------------------------


@pytest.mark.parametrize("node_executor", ["sequential", "threaded"])
@pytest.mark.parametrize("kind", EXECUTORS)
@pytest.mark.parametrize("form", FORMS)
def test_every_executor_matches_a_plain_loop(kind: str, form: str, node_executor: str) -> None:
    xs = [5, -2, 0, 17, 3, 3, 8, 1, 42, -7, 11, 6]
    calls = Calls()
    with engine_for(kind, node_executor=node_executor, max_workers=3) as engine:
        pipe = Pipeline(mixed_nodes(calls), engine=engine)
        assert run_form(pipe, form, inputs={"x": xs}, map_over="x") == [
            mixed_reference(x) for x in xs
        ]
        offsets = [1, 2]
        assert run_form(
            pipe,
            form,
            inputs={"x": xs, "offset": offsets},
            map_over=["x", "offset"],
            map_mode="product",
        ) == [mixed_reference(x, o) for x, o in itertools.product(xs, offsets)]
        plain = Pipeline(sync_nodes(), engine=engine)
        assert run_form(plain, form, inputs={"x": xs, "offset": 4}, map_over="x") == [
            sync_reference(x, 4) for x in xs
        ]
    assert calls.counts == Counter({n: len(xs) * 3 for n in ("double", "shift", "combine")})


PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, LocalEngine]]:
    with (
        ThreadPoolExecutor(max_workers=3, thread_name_prefix="prop-pool") as pool,
        LocalEngine(map_executor="async", max_concurrent=4) as async_engine,
        LocalEngine(map_executor="threaded", max_workers=3) as threaded,
        LocalEngine(map_executor="threaded", node_executor="threaded", max_workers=2) as both,
        LocalEngine() as sequential,
        LocalEngine(map_executor=pool) as instance,
    ):
        yield {
            "sequential": sequential,
            "async": async_engine,
            "threaded": threaded,
            "threaded nodes too": both,
            "instance": instance,
        }
    # An executor given to an engine is never shut down by it.
    assert pool._shutdown


def jitter_nodes() -> list[Any]:
    @node(output_name="y")
    def square(x):
        return x * x

    @node(output_name="z")
    async def later(y, x):
        await asyncio.sleep(0.0005 * (x % 3))  # completion order differs from input order
        return y - x

    @node(output_name="w")
    def checked(z, x):
        return (z, x)

    return [square, later, checked]


def jitter_reference(x: int) -> dict[str, Any]:
    return {"y": x * x, "z": x * x - x, "w": (x * x - x, x)}


JITTER = Pipeline(jitter_nodes())


@PROPERTY_SETTINGS
@given(xs=st.lists(st.integers(-1000, 1000), max_size=40), form=st.sampled_from(FORMS))
def test_property_every_executor_matches_a_sequential_reference(
    engines: dict[str, LocalEngine], xs: list[int], form: str
) -> None:
    expected = [jitter_reference(x) for x in xs]
    for name, engine in engines.items():
        pipe = JITTER.with_engine(engine)
        assert run_form(pipe, form, inputs={"x": xs}, map_over="x") == expected, name


@node(output_name="out")
async def maybe_fail(item):
    value, fails = item
    await asyncio.sleep(0.0005 * (value % 2))
    if fails:
        raise Boom(f"item {value}")
    return value * 3


@PROPERTY_SETTINGS
@given(
    items=st.lists(st.tuples(st.integers(0, 100), st.booleans()), max_size=40),
    form=st.sampled_from(FORMS),
)
def test_property_collect_puts_item_errors_in_place(
    engines: dict[str, LocalEngine], items: list[tuple[int, bool]], form: str
) -> None:
    for name, engine in engines.items():
        pipe = Pipeline([maybe_fail], engine=engine)
        result = run_form(pipe, form, inputs={"item": items}, map_over="item", on_error="collect")
        assert len(result) == len(items), name
        for index, ((value, fails), outcome) in enumerate(zip(items, result, strict=True)):
            if not fails:
                assert outcome == {"out": value * 3}, name
                continue
            assert isinstance(outcome, ItemError), name
            assert outcome.index == index
            assert outcome.inputs == {"item": (value, True)}
            assert type(outcome.exception) is Boom
            assert str(outcome.exception) == f"item {value}"
            assert outcome.exception.__notes__[-1] == (
                f"plait: in map item {index} with inputs (item=({value}, True))"
            )


# --- concurrency ------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3, 7])
def test_async_executor_keeps_at_most_max_concurrent_items_in_flight(limit: int) -> None:
    state = {"now": 0, "peak": 0}
    reached = asyncio.Event()

    @node(output_name="y")
    async def track(x):
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        if state["now"] == limit:
            reached.set()
        try:
            # The first items wait until `limit` are in flight together: proof it is reached.
            await asyncio.wait_for(reached.wait(), timeout=2)
            await asyncio.sleep(0.001)
        finally:
            state["now"] -= 1
        return x

    with LocalEngine(map_executor="async", max_concurrent=limit) as engine:
        result = Pipeline([track], engine=engine).map({"x": range(25)}, map_over="x")
    assert result == [{"y": x} for x in range(25)]
    assert state["peak"] == limit
    assert state["now"] == 0


def test_async_executor_runs_many_items_concurrently() -> None:
    # Counted, not timed: how many items were asleep at once (one after another: 1).
    running = {"now": 0, "peak": 0}
    ten_asleep = asyncio.Event()

    @node(output_name="y")
    async def nap(x):
        running["now"] += 1
        running["peak"] = max(running["peak"], running["now"])
        if running["now"] >= 10:
            ten_asleep.set()
        await asyncio.wait_for(ten_asleep.wait(), 5)
        running["now"] -= 1
        return x

    with LocalEngine(map_executor="async", max_concurrent=100) as engine:
        result = Pipeline([nap], engine=engine).map({"x": range(100)}, map_over="x")
    assert result == [{"y": x} for x in range(100)]
    assert running["peak"] >= 10


def test_sequential_executor_runs_async_items_one_at_a_time() -> None:
    state = {"now": 0, "peak": 0}

    @node(output_name="y")
    async def track(x):
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.001)
        state["now"] -= 1
        return x

    assert Pipeline([track]).map({"x": range(10)}, map_over="x") == [{"y": x} for x in range(10)]
    assert state["peak"] == 1


@pytest.mark.parametrize("kind", ["threaded", "instance"])
def test_threaded_executor_overlaps_blocking_items(kind: str) -> None:
    workers = 4
    barrier = threading.Barrier(workers)

    def meet(x):
        barrier.wait(timeout=5)  # only passes when `workers` items block at once
        return threading.get_ident()

    with engine_for(kind, max_workers=workers) as engine:
        pipe = Pipeline([node(meet, output_name="tid", name="meet")], engine=engine)
        result = pipe.map({"x": range(2 * workers)}, map_over="x")
    threads = {r["tid"] for r in result}
    assert len(result) == 2 * workers
    assert len(threads) == workers
    assert threading.get_ident() not in threads


@pytest.mark.parametrize("kind", ["threaded", "instance"])
def test_threaded_map_of_async_items_runs_them_on_its_loop_and_sync_nodes_on_threads(
    kind: str,
) -> None:
    # A plan that needs a loop runs its items as tasks on the map's loop (where its
    # deps and loop-bound clients live); its plain sync nodes still overlap on threads.
    workers = 4
    barrier = threading.Barrier(workers)

    @node(output_name="loop_thread")
    async def where(x):
        await asyncio.sleep(0.001)
        return threading.get_ident()

    @node(output_name="tid")
    def meet(loop_thread):
        barrier.wait(timeout=5)  # only passes when `workers` sync nodes block at once
        return threading.get_ident()

    with engine_for(kind, max_workers=workers) as engine:
        pipe = Pipeline([where, meet], engine=engine)
        assert engine.route(pipe.graph, None, {"x": 0}).items_on_loop
        result = pipe.map({"x": range(2 * workers)}, map_over="x")
    assert {r["loop_thread"] for r in result} == {threading.get_ident()}  # this thread's loop
    threads = {r["tid"] for r in result}
    assert len(threads) == workers
    assert threading.get_ident() not in threads


# --- fail-fast -------------------------------------------------------------------------


def fail_fast_once(folder: Path, form: str) -> float:
    """Item 3 fails once all 8 items are in flight; the others would write a file later."""
    count = 8
    started: set[int] = set()
    cancelled: set[int] = set()
    finished: set[int] = set()
    all_started = asyncio.Event()

    @node(output_name="y")
    async def work(x, folder):
        started.add(x)
        if len(started) == count:
            all_started.set()
        if x == 3:
            await asyncio.wait_for(all_started.wait(), timeout=5)
            raise Boom(f"item {x} failed")
        try:
            await asyncio.sleep(10)
            (folder / f"late{x}.txt").write_text("written after the failure")
        except asyncio.CancelledError:
            cancelled.add(x)
            raise
        finally:
            finished.add(x)
        return x

    folder.mkdir()
    with LocalEngine(map_executor="async", max_concurrent=count) as engine:
        pipe = Pipeline([work], engine=engine)
        start = time.perf_counter()
        with pytest.raises(Boom, match="item 3 failed") as info:
            run_form(pipe, form, inputs={"x": range(count), "folder": folder}, map_over="x")
        elapsed = time.perf_counter() - start
    # Cancelled and awaited before the error reached us.
    assert started == set(range(count)), form
    assert cancelled == set(range(count)) - {3}, form
    assert finished == cancelled, form
    node_note, item_note = info.value.__notes__
    assert node_note.startswith("plait: raised in node 'work' (→ y) called with (x=3, folder=")
    assert item_note == "plait: in map item 3 with inputs (x=3)"
    return elapsed


def test_first_failure_cancels_in_flight_items(tmp_path: Path) -> None:
    timings = [fail_fast_once(tmp_path / form, form) for form in FORMS]
    assert max(timings) < 5, timings  # did not wait for the 10 s siblings
    # Every sibling was cancelled and finished before the error reached us (asserted in
    # fail_fast_once), so none is left to write a file later: no need to wait and see.
    assert not list(tmp_path.rglob("late*.txt"))


@pytest.mark.parametrize("kind", ["inline", *EXECUTORS])
@pytest.mark.parametrize("failing", ["sync", "async"])
def test_the_exception_keeps_its_type_and_gets_node_and_item_notes(kind: str, failing: str) -> None:
    @node(output_name="y")
    def sync_check(x, limit=10):
        if x > limit:
            raise KeyError(f"too big: {x}")
        return x

    @node(output_name="y")
    async def async_check(x, limit=10):
        if x > limit:
            raise KeyError(f"too big: {x}")
        return x

    @node(output_name="z")
    async def follow(y):
        return y

    nodes = [sync_check if failing == "sync" else async_check]
    if kind != "inline":
        nodes.append(follow)
    with engine_for("sequential" if kind == "inline" else kind) as engine:
        pipe = Pipeline(nodes, engine=engine)
        with pytest.raises(KeyError) as info:
            pipe.map({"x": [1, 5, 12, 3], "limit": 10}, map_over="x")
    name = nodes[0].name
    assert info.value.args == ("too big: 12",)
    assert info.value.__notes__ == [
        f"plait: raised in node '{name}' (→ y) called with (x=12, limit=10)",
        "plait: in map item 2 with inputs (x=12)",
    ]


@pytest.mark.parametrize("kind", ["sequential", "async"])
def test_queued_items_never_start_after_a_failure(kind: str) -> None:
    calls = Calls()

    @node(output_name="y")
    async def work(x):
        calls.hit("start")
        if x == 1:
            await asyncio.sleep(0.01)
            raise Boom("second item")
        await asyncio.sleep(0.02 if kind == "sequential" else 5)
        return x

    with LocalEngine(map_executor=kind, max_concurrent=3) as engine:
        with pytest.raises(Boom):
            Pipeline([work], engine=engine).map({"x": range(1000)}, map_over="x")
        expected = 2 if kind == "sequential" else 3  # item 0, item 1 (and item 2)
        assert calls["start"] == expected


@pytest.mark.parametrize("kind", ["threaded", "instance"])
def test_threaded_failure_cancels_queued_jobs(kind: str) -> None:
    calls = Calls()

    def work(x):
        calls.hit("start")
        if x == 1:
            raise Boom("second item")
        time.sleep(0.05)
        return x

    with engine_for(kind, max_workers=2) as engine:
        with pytest.raises(Boom) as info:
            Pipeline([node(work, output_name="y")], engine=engine).map(
                {"x": range(1000)}, map_over="x"
            )
        # Items 0 and 1 end their chunk; the chunk running beside it stops after its
        # first item once the failure is seen, and queued chunks never start.
        assert calls["start"] <= 4
    assert info.value.__notes__[-1] == "plait: in map item 1 with inputs (x=1)"


def test_sequential_map_stops_at_the_first_failure_without_a_loop() -> None:
    calls = Calls()

    @node(output_name="y")
    def work(x):
        calls.hit("start")
        if x == 2:
            raise Boom("third")
        return x

    with pytest.raises(Boom):
        Pipeline([work]).map({"x": range(100)}, map_over="x")
    assert calls["start"] == 3


# --- on_error="collect" ------------------------------------------------------------------


FAILING = {3, 17, 42}


@node(output_name="value")
def explode(x, factor):
    if x in FAILING:
        raise ValueError(f"bad item {x}")
    return x * factor


@node(output_name="shown")
async def render(value):
    await asyncio.sleep(0)
    return f"<{value}>"


@pytest.mark.parametrize("kind", ["inline", *EXECUTORS])
@pytest.mark.parametrize("form", FORMS)
def test_collect_returns_item_errors_in_place(kind: str, form: str) -> None:
    nodes = [explode] if kind == "inline" else [explode, render]
    with engine_for("sequential" if kind == "inline" else kind, max_concurrent=8) as engine:
        pipe = Pipeline(nodes, engine=engine)
        result = run_form(
            pipe, form, inputs={"x": range(50), "factor": 2}, map_over="x", on_error="collect"
        )
    assert len(result) == 50
    errors = [r for r in result if isinstance(r, ItemError)]
    assert [e.index for e in errors] == sorted(FAILING)
    for index, outcome in enumerate(result):
        if index in FAILING:
            continue
        expected = {"value": index * 2}
        if kind != "inline":
            expected["shown"] = f"<{index * 2}>"
        assert outcome == expected
    for error in errors:
        assert result[error.index] is error
        assert error.inputs == {"x": error.index}  # the mapped inputs only
        assert type(error.exception) is ValueError
        assert error.exception.args == (f"bad item {error.index}",)
        assert error.exception.__notes__ == [
            f"plait: raised in node 'explode' (→ value) called with (x={error.index}, factor=2)",
            f"plait: in map item {error.index} with inputs (x={error.index})",
        ]
        assert isinstance(error.traceback, str)
        assert "in explode" in error.traceback
        assert f"ValueError: bad item {error.index}" in error.traceback
        assert f"plait: in map item {error.index} with inputs" in error.traceback
    assert repr(errors[0]) == (
        "ItemError(index=3, inputs={'x': 3}, exception=ValueError('bad item 3'))"
    )


def test_item_error_is_public_frozen_and_short_in_repr() -> None:
    assert plait.ItemError is ItemError
    assert "ItemError" in plait.__all__

    @node(output_name="y")
    def refuse(text, other):
        raise RuntimeError("no")

    (error,) = Pipeline([refuse]).map(
        {"text": ["a" * 500], "other": [list(range(100))]},
        map_over=["text", "other"],
        on_error="collect",
    )
    assert isinstance(error, ItemError)
    assert error.inputs == {"text": "a" * 500, "other": list(range(100))}
    shown = repr(error)
    assert shown.startswith("ItemError(index=0, inputs={")
    assert "'other': [0, 1, 2, 3, 4, ...]" in shown
    assert "'text': 'aaaa" in shown
    assert shown.endswith("exception=RuntimeError('no'))")
    assert len(shown) < 250
    assert "traceback" not in shown
    with pytest.raises(dataclasses.FrozenInstanceError):
        error.index = 1  # type: ignore[misc]


@pytest.mark.parametrize("kind", ["async", "threaded"])
def test_collect_runs_every_item_despite_failures(kind: str) -> None:
    calls = Calls()

    @node(output_name="y")
    async def work(x):
        calls.hit("start")
        await asyncio.sleep(0.001)
        if x % 2:
            raise Boom(str(x))
        return x

    with engine_for(kind, max_concurrent=4, max_workers=4) as engine:
        result = Pipeline([work], engine=engine).map(
            {"x": range(20)}, map_over="x", on_error="collect"
        )
    assert calls["start"] == 20
    assert [isinstance(r, ItemError) for r in result] == [bool(x % 2) for x in range(20)]


# --- imap and aimap -------------------------------------------------------------------


@pytest.mark.parametrize("kind", EXECUTORS)
def test_imap_unordered_yields_every_index_exactly_once(kind: str) -> None:
    @node(output_name="y")
    async def vary(x):
        await asyncio.sleep(0.001 * (x % 4))
        return x * x

    with engine_for(kind, max_concurrent=6) as engine:
        pipe = Pipeline([vary], engine=engine)
        pairs = list(pipe.imap({"x": range(30)}, map_over="x"))
    assert sorted(i for i, _ in pairs) == list(range(30))
    assert all(outputs == {"y": i * i} for i, outputs in pairs)


def slow_first_nodes(
    count: int, finish_order: list[int], release: threading.Event | None = None
) -> list[Any]:
    """Item 0 finishes last: once the others have finished, or once ``release`` is set."""
    lock = threading.Lock()
    others_done = threading.Event() if release is None else release

    @node(output_name="y")
    async def work(x):
        if x == 0:
            assert await asyncio.to_thread(others_done.wait, 5), "item 0 was never released"
        with lock:
            finish_order.append(x)
            if release is None and len(finish_order) == count - 1:
                others_done.set()
        return x * 10

    return [work]


@pytest.mark.parametrize("kind", ["async", "threaded", "instance"])
def test_imap_ordered_yields_in_input_order_even_when_later_items_finish_first(
    kind: str,
) -> None:
    count = 6
    with engine_for(kind, max_concurrent=10, max_workers=4) as engine:
        finish_order: list[int] = []
        pipe = Pipeline(slow_first_nodes(count, finish_order), engine=engine)
        pairs = list(pipe.imap({"x": range(count)}, map_over="x", ordered=True))
        assert finish_order[-1] == 0
        assert pairs == [(i, {"y": i * 10}) for i in range(count)]

        finish_order.clear()
        pipe = Pipeline(slow_first_nodes(count, finish_order), engine=engine)

        async def collect() -> list[int]:
            items = pipe.aimap({"x": range(count)}, map_over="x", ordered=True)
            return [i async for i, _ in items]

        assert asyncio.run(collect()) == list(range(count))
        assert finish_order[-1] == 0

        # Unordered: items come as they finish; item 0 only once we have all the others.
        finish_order.clear()
        release = threading.Event()
        pipe = Pipeline(slow_first_nodes(count, finish_order, release), engine=engine)
        unordered = []
        for index, _ in pipe.imap({"x": range(count)}, map_over="x"):
            unordered.append(index)
            if len(unordered) == count - 1:
                release.set()
        assert sorted(unordered[:-1]) == list(range(1, count))
        assert unordered[-1] == 0


def test_sequential_imap_is_in_input_order() -> None:
    pairs = list(Pipeline(mixed_nodes()).imap({"x": [4, 2, 9]}, map_over="x"))
    assert pairs == [(i, mixed_reference(x)) for i, x in enumerate([4, 2, 9])]
    pairs = list(Pipeline(sync_nodes()).imap({"x": [4, 2, 9]}, map_over="x", ordered=True))
    assert pairs == [(i, sync_reference(x)) for i, x in enumerate([4, 2, 9])]


def cancellable_nodes(
    folder: Path, started: set[int], cancelled: set[int], finished: set[int]
) -> list[Any]:
    """Item 0 returns at once; every other item writes a file 10 s later, unless cancelled."""

    @node(output_name="y")
    async def work(x):
        started.add(x)
        if x == 0:
            await asyncio.sleep(0.01)
            return x
        try:
            await asyncio.sleep(10)
            (folder / f"late{x}.txt").write_text("written after the consumer left")
        except asyncio.CancelledError:
            cancelled.add(x)
            raise
        finally:
            finished.add(x)
        return x

    return [work]


def test_breaking_out_of_imap_cancels_in_flight_items(tmp_path: Path) -> None:
    started: set[int] = set()
    cancelled: set[int] = set()
    finished: set[int] = set()
    with LocalEngine(map_executor="async", max_concurrent=5) as engine:
        pipe = Pipeline(cancellable_nodes(tmp_path, started, cancelled, finished), engine=engine)
        received = []
        for index, outputs in pipe.imap({"x": range(50)}, map_over="x"):
            received.append((index, outputs))
            break
        # Right after the loop, before any sleeping: cancelled and awaited.
        assert received == [(0, {"y": 0})]
        assert started == set(range(5))
        assert cancelled == set(range(1, 5))
        assert finished == cancelled
    # Nothing is left to write a file (every started item finished, cancelled); whether
    # the map starts another item after the consumer left can only be seen by waiting:
    # one would start within milliseconds.
    time.sleep(0.3)
    assert not list(tmp_path.iterdir())
    assert started == set(range(5))  # nothing started later either


def test_leaving_aimap_with_aclosing_cancels_in_flight_items(tmp_path: Path) -> None:
    started: set[int] = set()
    cancelled: set[int] = set()
    finished: set[int] = set()

    async def main(pipe: Pipeline) -> None:
        received = []
        async with contextlib.aclosing(pipe.aimap({"x": range(50)}, map_over="x")) as items:
            async for index, outputs in items:
                received.append((index, outputs))
                break
        assert received == [(0, {"y": 0})]
        assert started == set(range(5))
        assert cancelled == set(range(1, 5))
        assert finished == cancelled
        await asyncio.sleep(0.3)  # another item would start within milliseconds: none does

    with LocalEngine(map_executor="async", max_concurrent=5) as engine:
        pipe = Pipeline(cancellable_nodes(tmp_path, started, cancelled, finished), engine=engine)
        asyncio.run(main(pipe))
    assert not list(tmp_path.iterdir())
    assert started == set(range(5))


@pytest.mark.parametrize("kind", EXECUTORS)
def test_aimap_async_for_over_results(kind: str) -> None:
    xs = [3, 1, 4, 1, 5, 9, 2, 6]

    async def main(pipe: Pipeline) -> list[tuple[int, Any]]:
        pairs = []
        async for index, outputs in pipe.aimap({"x": xs}, map_over="x"):
            pairs.append((index, outputs))
        return pairs

    with engine_for(kind) as engine:
        pairs = asyncio.run(main(Pipeline(mixed_nodes(), engine=engine)))
    assert sorted(pairs, key=lambda p: p[0]) == [(i, mixed_reference(x)) for i, x in enumerate(xs)]


@pytest.mark.parametrize(
    ("kind", "window"), [("async", 5), ("threaded", 4), ("instance", 4), ("sequential", 1)]
)
@pytest.mark.parametrize("ordered", [False, True])
def test_imap_keeps_a_bounded_window_of_items(kind: str, window: int, ordered: bool) -> None:
    # Items in flight plus finished items not yet yielded never exceed the window
    # (max_concurrent for "async", 2 * workers for threads, 1 for "sequential").
    pulled = [0]
    limits = []

    @node(output_name="y")
    async def vary(x):
        await asyncio.sleep(0.001 * ((x * 7) % 5))
        return x

    with engine_for(kind, max_concurrent=5, max_workers=2) as engine:
        pipe = Pipeline([vary], engine=engine)
        received = 0
        first_pull = None
        for index, outputs in pipe.imap(
            {"x": counting(range(60), pulled)}, map_over="x", ordered=ordered
        ):
            if first_pull is None:
                first_pull = pulled[0]
            limits.append(pulled[0] - received)
            assert outputs == {"y": index}
            received += 1
    assert received == 60
    assert pulled[0] == 60
    assert first_pull is not None
    assert first_pull <= window + 2  # not the whole input
    assert max(limits) <= window


@pytest.mark.parametrize("kind", ["async", "threaded"])
def test_imap_collect_yields_item_errors(kind: str) -> None:
    with engine_for(kind, max_concurrent=4, max_workers=2) as engine:
        pipe = Pipeline([explode, render], engine=engine)
        pairs = dict(
            pipe.imap({"x": range(20), "factor": 1}, map_over="x", on_error="collect", ordered=True)
        )
    assert sorted(pairs) == list(range(20))
    for index, outcome in pairs.items():
        if index in FAILING:
            assert isinstance(outcome, ItemError)
            assert outcome.index == index
        else:
            assert outcome == {"value": index, "shown": f"<{index}>"}


# --- inside a running event loop ---------------------------------------------------------


@pytest.mark.parametrize("kind", EXECUTORS)
def test_map_and_imap_inside_a_running_loop(kind: str) -> None:
    xs = [1, 2, 3, 4]
    expected = [mixed_reference(x) for x in xs]

    async def main(pipe: Pipeline) -> None:
        with pytest.warns(RunningLoopWarning):
            assert pipe.map({"x": xs}, map_over="x") == expected
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RunningLoopWarning)
            pairs = list(pipe.imap({"x": xs}, map_over="x", ordered=True))
        assert pairs == list(enumerate(expected))

    with engine_for(kind) as engine:
        asyncio.run(main(Pipeline(mixed_nodes(), engine=engine)))


def test_running_loop_warning_points_at_the_callers_line() -> None:
    pipe = Pipeline(mixed_nodes())

    async def main() -> None:
        with pytest.warns(RunningLoopWarning) as map_record:
            pipe.map({"x": [1, 2]}, map_over="x")
        bridge.loops._warned_running_loop = False  # warn once more, for imap
        with pytest.warns(RunningLoopWarning) as imap_record:
            pairs = list(pipe.imap({"x": [1, 2]}, map_over="x"))
        assert sorted(pairs) == [(0, mixed_reference(1)), (1, mixed_reference(2))]
        assert [w.filename for w in map_record] == [__file__]
        assert [w.filename for w in imap_record] == [__file__], "imap's warning location"

    asyncio.run(main())


def test_imap_from_sync_code_running_on_the_portal_loop_yields_every_item() -> None:
    # A sync node of a pipeline run from inside an event loop (a Jupyter cell, say)
    # runs on plait's portal loop; streaming another pipeline from there must still
    # give every item, not just the first batch.
    @node(output_name="y")
    async def vary(x):
        await asyncio.sleep(0.001 * (x % 3))
        return x

    with LocalEngine(map_executor="async", max_concurrent=3) as engine:
        inner = Pipeline([vary], engine=engine)

        @node(output_name="streamed")
        def stream(n):
            return sorted(i for i, _ in inner.imap({"x": range(n)}, map_over="x"))

        @node(output_name="mapped")
        def mapped(n):
            return len(inner.map({"x": range(n)}, map_over="x"))

        @node(output_name="marker")
        async def needs_a_loop(n):
            return n

        outer = Pipeline([stream, mapped, needs_a_loop])

        async def main() -> dict[str, Any]:
            return outer.run({"n": 10})

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RunningLoopWarning)
            # From a script, the sync nodes run on this thread's loop: inner calls use the portal.
            assert outer.run({"n": 10})["streamed"] == list(range(10))
            # From inside a loop, the sync nodes run on the portal: inner calls nest.
            result = asyncio.run(main())
    assert result["mapped"] == 10
    assert result["streamed"] == list(range(10))


def test_sync_only_sequential_map_inside_a_running_loop() -> None:
    async def main() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RunningLoopWarning)
            assert Pipeline(sync_nodes()).map({"x": [1, 2]}, map_over="x") == [
                sync_reference(1),
                sync_reference(2),
            ]

    asyncio.run(main())


@pytest.mark.parametrize("kind", EXECUTORS)
def test_amap_and_aimap_run_natively_without_warnings(kind: str) -> None:
    xs = [7, 8, 9]
    loops: list[asyncio.AbstractEventLoop] = []

    @node(output_name="y")
    async def where(x):
        loops.append(asyncio.get_running_loop())
        return x

    async def main(pipe: Pipeline) -> asyncio.AbstractEventLoop:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert await pipe.amap({"x": xs}, map_over="x") == [{"y": x} for x in xs]
            pairs = [p async for p in pipe.aimap({"x": xs}, map_over="x", ordered=True)]
            assert pairs == [(i, {"y": x}) for i, x in enumerate(xs)]
        return asyncio.get_running_loop()

    with engine_for(kind) as engine:
        caller_loop = asyncio.run(main(Pipeline([where], engine=engine)))
    assert len(loops) == 2 * len(xs)
    # Items ran on the caller's loop, also on threads (Route.items_on_loop): loop-bound
    # objects of that loop stay usable.
    assert all(loop is caller_loop for loop in loops)


def test_timeout_around_amap_cancels_the_items_in_flight() -> None:
    cancelled: set[int] = set()
    started = Calls()

    @node(output_name="y")
    async def slow(x):
        started.hit("slow")
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.add(x)
            raise
        return x

    async def main(pipe: Pipeline) -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await pipe.amap({"x": range(100)}, map_over="x")
        assert cancelled == set(range(4))  # cancelled and awaited before the timeout raised

    with LocalEngine(map_executor="async", max_concurrent=4) as engine:
        asyncio.run(main(Pipeline([slow], engine=engine)))
    assert started["slow"] == 4


def test_leaving_aimap_without_aclosing_cancels_once_collected() -> None:
    started: set[int] = set()
    cancelled: set[int] = set()

    @node(output_name="y")
    async def work(x):
        started.add(x)
        if x == 0:
            return x
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.add(x)
            raise
        return x

    async def main(pipe: Pipeline) -> None:
        async for _ in pipe.aimap({"x": range(50)}, map_over="x"):
            break
        # The loop closes the abandoned generator on its next iterations.
        for _ in range(100):
            if cancelled == set(range(1, 3)):
                break
            await asyncio.sleep(0.01)
        assert cancelled == set(range(1, 3))

    with LocalEngine(map_executor="async", max_concurrent=3) as engine:
        asyncio.run(main(Pipeline([work], engine=engine)))
    assert started == set(range(3))


def test_an_error_from_the_input_iterable_propagates_and_cancels_items() -> None:
    started: set[int] = set()
    cancelled: set[int] = set()

    def values() -> Iterator[int]:
        yield from range(4)
        raise LookupError("the source broke")

    @node(output_name="y")
    async def work(x):
        started.add(x)
        if x in (0, 3):  # finish at once, so the map pulls more input
            return x
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.add(x)
            raise
        return x

    with (
        LocalEngine(map_executor="async", max_concurrent=3) as engine,
        pytest.raises(LookupError, match="the source broke") as info,
    ):
        Pipeline([work], engine=engine).map({"x": values()}, map_over="x")
    assert not getattr(info.value, "__notes__", None)  # not an item's error
    assert started == {0, 1, 2, 3}
    assert cancelled == {1, 2}


def test_a_closed_engine_refuses_to_map_before_any_work() -> None:
    calls = Calls()
    engine = LocalEngine(map_executor="threaded", max_workers=2)
    pipe = Pipeline(mixed_nodes(calls), engine=engine)
    assert pipe.map({"x": [1]}, map_over="x") == [mixed_reference(1)]
    engine.close()
    calls.counts.clear()
    with pytest.raises(plait.EngineError, match="this LocalEngine is closed"):
        pipe.map({"x": [1, 2]}, map_over="x")
    with pytest.raises(plait.EngineError, match="this LocalEngine is closed"):
        pipe.imap({"x": [1, 2]}, map_over="x")
    with pytest.raises(plait.EngineError, match="this LocalEngine is closed"):
        pipe.aimap({"x": [1, 2]}, map_over="x")
    with pytest.raises(plait.EngineError, match="this LocalEngine is closed"):
        asyncio.run(pipe.amap({"x": [1, 2]}, map_over="x"))
    assert calls.total() == 0


@node(output_name="pid")
def worker_pid(x):
    import os

    return (os.getpid(), x * 2)


@node(output_name="half")
async def halve(pid):
    return pid[1] // 2


@node(output_name="y")
def fails_on_two(x):
    if x == 2:
        raise ValueError(f"bad {x}")
    return x


def test_process_pool_instance_as_map_executor() -> None:
    import os
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        engine = LocalEngine(map_executor=pool)
        result = Pipeline([worker_pid, halve], engine=engine).map({"x": range(6)}, map_over="x")
        assert [r["half"] for r in result] == list(range(6))
        assert all(r["pid"][0] != os.getpid() for r in result)
        collected = Pipeline([fails_on_two], engine=engine).map(
            {"x": [1, 2, 3]}, map_over="x", on_error="collect"
        )
        assert collected[0] == {"y": 1}
        assert collected[2] == {"y": 3}
        error = collected[1]
        assert isinstance(error, ItemError)
        assert type(error.exception) is ValueError
        assert error.exception.__notes__ == [
            "plait: raised in node 'fails_on_two' (→ y) called with (x=2)",
            "plait: in map item 1 with inputs (x=2)",
        ]


# --- contextvars ------------------------------------------------------------------------


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


def context_nodes() -> list[Any]:
    @node(output_name="seen_sync")
    def read_sync(x):
        return (x, REQUEST_ID.get())

    @node(output_name="seen_async")
    async def read_async(x):
        await asyncio.sleep(0)
        return (x, REQUEST_ID.get())

    return [read_sync, read_async]


@pytest.mark.parametrize("kind", ["inline", *EXECUTORS])
@pytest.mark.parametrize("form", FORMS)
def test_callers_contextvars_are_visible_in_nodes(kind: str, form: str) -> None:
    nodes = context_nodes()[:1] if kind == "inline" else context_nodes()
    xs = [1, 2, 3]
    with engine_for("sequential" if kind == "inline" else kind) as engine:
        pipe = Pipeline(nodes, engine=engine)
        if form in ("map", "imap"):
            token = REQUEST_ID.set(f"caller-{form}")
            try:
                result = run_form(pipe, form, inputs={"x": xs}, map_over="x")
            finally:
                REQUEST_ID.reset(token)
        else:

            async def main() -> list[Any]:
                REQUEST_ID.set(f"caller-{form}")
                if form == "amap":
                    return await pipe.amap({"x": xs}, map_over="x")
                pairs = [p async for p in pipe.aimap({"x": xs}, map_over="x", ordered=True)]
                return [outputs for _, outputs in pairs]

            result = asyncio.run(main())
    for x, outputs in zip(xs, result, strict=True):
        for value in outputs.values():
            assert value == (x, f"caller-{form}")
    assert REQUEST_ID.get() == "unset"


# --- no event loop for sync-only sequential maps --------------------------------------------


def test_sync_only_sequential_map_runs_without_an_event_loop() -> None:
    checked = Calls()

    @node(output_name="y")
    def no_loop(x):
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
        checked.hit("no_loop")
        if x == 2:
            raise Boom("two")
        return x

    @node(output_name="z")
    def also_no_loop(y):
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
        checked.hit("also_no_loop")
        return y + 1

    pipe = Pipeline([no_loop, also_no_loop])
    assert pipe.map({"x": [0, 1]}, map_over="x") == [{"y": 0, "z": 1}, {"y": 1, "z": 2}]
    assert list(pipe.imap({"x": [5]}, map_over="x")) == [(0, {"y": 5, "z": 6})]
    result = pipe.map({"x": [1, 2, 3]}, map_over="x", on_error="collect")
    assert isinstance(result[1], ItemError)
    assert result[0] == {"y": 1, "z": 2}
    assert result[2] == {"y": 3, "z": 4}
    assert checked.counts == Counter({"no_loop": 2 + 1 + 3, "also_no_loop": 2 + 1 + 2})


def test_mapping_over_a_string_is_an_error_that_says_so() -> None:
    # Issue 14 #16: a str as map_over iterated its characters.
    pipe = Pipeline([make_pair])
    for value in ("xyz", b"xyz"):
        with pytest.raises(InputError, match=r"mapped input 'b' is a (str|bytes) .*one item per"):
            pipe.map({"a": [1, 2, 3], "b": value}, map_over=["a", "b"])
    assert pipe.map({"a": [1], "b": ["xyz"]}, map_over=["a", "b"]) == [{"pair": (1, "xyz")}]


def test_items_that_finish_together_are_handed_on_in_index_order() -> None:
    """Items that finish in one wake-up, here in reverse order, come as one list
    (``Finished``) in index order; ``map`` relies on it to take a run of them at once."""

    @node(output_name="y")
    async def late_first(x: int) -> int:
        gate = asyncio.get_running_loop().create_future()
        waiting.append((x, gate))
        if len(waiting) == 10:  # the last to start: release all, the latest item first
            for _, other in sorted(waiting, reverse=True):
                other.set_result(None)
        await gate
        return x

    waiting: list[tuple[int, asyncio.Future[None]]] = []
    engine = LocalEngine(map_executor="async")
    pipeline = Pipeline([late_first], engine=engine)

    async def lists() -> list[list[int]]:
        stream = engine.aimap(pipeline, {"x": range(10)}, ("x",))
        return [[index for index, _ in finished] async for finished in stream]

    assert asyncio.run(lists()) == [list(range(10))]
    waiting.clear()
    assert pipeline.map({"x": range(10)}, map_over="x") == [{"y": x} for x in range(10)]


def test_items_of_a_map_over_one_input_read_as_one_value_tuples() -> None:
    items = OneInputItems(["a", None, ("t",)])
    assert len(items) == 3
    assert list(items) == [("a",), (None,), (("t",),)]
    assert items[0] == ("a",)
    assert items[-1] == (("t",),)
    assert list(items[1:]) == [(None,), (("t",),)]
    assert pickle.loads(pickle.dumps(items)).values == ["a", None, ("t",)]
    spec = MapSpec.of({"x": range(5)}, ("x",), "zip")
    tuples, values = spec.items_and_values()
    assert values is not None
    assert next(tuples) == (0,)
    assert list(itertools.islice(values, 2)) == [1, 2]  # the same items, read as values
    assert list(tuples) == [(3,), (4,)]
    assert MapSpec.of({"x": [1], "y": [2]}, ("x", "y"), "zip").items_and_values()[1] is None
