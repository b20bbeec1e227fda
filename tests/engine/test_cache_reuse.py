"""The cache's fast paths: a plan's code fingerprints are kept across runs behind one
guard, and a sequential map's items run with their hooks in the map's own loop. Each
must fall back exactly where the slow path would: changed code, code that reads
something mutable, a failing item, callbacks, a node that awaits."""

from __future__ import annotations

import asyncio
import os
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from plait import MemoryCache, Pipeline, node, run_sync
from plait.bridge import portal
from plait.cache._code import Guard
from plait.callbacks.base import CallbackContext
from plait.engine.base import ItemError

calls: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()


def _chain_namespace() -> dict[str, Any]:
    """Three nodes as a notebook defines them: ``b`` reads the global helper ``scale``."""
    namespace: dict[str, Any] = {"calls": calls}
    exec(
        "def scale(v):\n    return v * 10\n"
        "def a(x):\n    calls['a'] += 1\n    return x + 1\n"
        "def b(a):\n    calls['b'] += 1\n    return scale(a)\n"
        "def c(b):\n    calls['c'] += 1\n    return b + 1\n",
        namespace,
    )
    return namespace


def _pipeline(namespace: dict[str, Any]) -> Pipeline:
    return Pipeline(
        [node(namespace[name], output_name=name) for name in "abc"], cache=MemoryCache()
    )


def test_a_redefined_helper_between_runs_misses_from_that_node_on() -> None:
    namespace = _chain_namespace()
    p = _pipeline(namespace)
    assert p.run({"x": 1}) == {"a": 2, "b": 20, "c": 21}
    assert p.run({"x": 1}) == {"a": 2, "b": 20, "c": 21}  # kept fingerprints: all hits
    assert calls == Counter(a=1, b=1, c=1)
    exec("def scale(v):\n    return v * 100\n", namespace)  # the notebook cell, run again
    assert p.run({"x": 1}) == {"a": 2, "b": 200, "c": 201}
    assert calls == Counter(a=1, b=2, c=2)
    assert p.run({"x": 1}) == {"a": 2, "b": 200, "c": 201}
    assert calls == Counter(a=1, b=2, c=2)


def test_a_function_given_new_code_between_runs_misses() -> None:
    namespace = _chain_namespace()
    p = _pipeline(namespace)
    assert p.run({"x": 1})["c"] == 21
    exec("def other(b):\n    calls['c'] += 1\n    return b + 5\n", namespace)
    namespace["c"].__code__ = namespace["other"].__code__
    assert p.run({"x": 1})["c"] == 25
    assert calls == Counter(a=1, b=1, c=2)


def test_code_that_reads_a_mutable_key_is_fingerprinted_again_every_run() -> None:
    class Settings:
        def __init__(self) -> None:
            self.mode = 1

        def __cache_key__(self) -> int:
            return self.mode

    namespace = _chain_namespace()
    namespace["SETTINGS"] = Settings()
    exec("def c(b):\n    calls['c'] += 1\n    return b + SETTINGS.mode\n", namespace)
    p = _pipeline(namespace)
    assert p.run({"x": 1})["c"] == 21
    assert p.run({"x": 1})["c"] == 21
    namespace["SETTINGS"].mode = 2  # in place: no guard can see this, the walk does
    assert p.run({"x": 1})["c"] == 22
    assert calls == Counter(a=1, b=1, c=2)  # the guarded nodes still hit


def test_another_working_directory_fingerprints_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = _pipeline(_chain_namespace())
    p.run({"x": 1})
    monkeypatch.chdir(tmp_path)  # which modules count as the user's may differ here
    assert p.run({"x": 1}) == {"a": 2, "b": 20, "c": 21}
    assert calls == Counter(a=1, b=1, c=1)  # the same code: the same keys, all hits


def _entries(func: types.FunctionType, *attrs: str) -> list[tuple[Any, ...]]:
    return [("attr", func, attr, getattr(func, attr)) for attr in attrs]


def test_a_merged_guard_holds_only_while_every_guard_does() -> None:
    def f(x: int) -> int:
        return x

    def g(x: int) -> int:
        return x

    first = Guard(_entries(f, "__code__", "__defaults__"))
    second = Guard(_entries(f, "__code__") + _entries(g, "__code__"))
    merged = Guard.merged([first, second])
    assert len(merged.attrs) == 3  # f.__code__ read by both: checked once
    assert merged.still()
    g.__code__ = f.__code__
    assert not merged.still()
    assert not second.still()
    assert first.still()


def test_guards_that_read_one_place_at_different_times_never_hold() -> None:
    def f(x: int) -> int:
        return x

    before = Guard(_entries(f, "__defaults__"))
    f.__defaults__ = (1,)
    after = Guard(_entries(f, "__defaults__"))
    assert after.still()
    assert not before.still()
    assert not Guard.merged([before, after]).still()  # one of them is stale
    assert not Guard.merged([after, before]).still()


def test_a_guard_made_in_another_directory_does_not_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = Guard([])
    assert guard.still()
    monkeypatch.chdir(tmp_path)
    assert os.getcwd() != guard.cwd
    assert not guard.still()
    assert not Guard.merged([guard]).still()


# ---- a sequential map with a cache or callbacks: items in the map's own loop -------------


@node(output_name="y")
def flaky(x: int) -> int:
    calls[f"flaky {x}"] += 1
    if x == 2:
        raise ValueError(f"bad item {x}")
    return x * 10


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any, Any]] = []

    def on_map_item_start(self, ctx: CallbackContext) -> None:
        self.seen.append(("start", ctx.item, None))

    def on_map_item_end(self, ctx: CallbackContext) -> None:
        self.seen.append(("end", ctx.item, type(ctx.error).__name__ if ctx.error else None))

    def on_map_item_cached(self, ctx: CallbackContext) -> None:
        self.seen.append(("cached", ctx.item, None))


def test_a_cached_map_keeps_going_past_a_failed_item_and_caches_the_rest() -> None:
    events = Events()
    p = Pipeline([flaky], cache=MemoryCache(), callbacks=[events])
    first = p.map({"x": [1, 2, 3]}, map_over="x", on_error="collect")
    assert first[0] == {"y": 10}
    assert first[2] == {"y": 30}
    assert isinstance(first[1], ItemError)
    assert "bad item 2" in str(first[1].exception)
    assert events.seen == [
        ("start", 0, None),
        ("end", 0, None),
        ("start", 1, None),
        ("end", 1, "ValueError"),
        ("start", 2, None),
        ("end", 2, None),
    ]
    events.seen.clear()
    again = p.map({"x": [1, 2, 3]}, map_over="x", on_error="collect")
    assert again[0] == {"y": 10}
    assert isinstance(again[1], ItemError)
    assert calls == Counter({"flaky 1": 1, "flaky 2": 2, "flaky 3": 1})  # errors never cached
    assert [kind for kind, *_ in events.seen] == [
        "start",
        "cached",
        "start",
        "end",
        "start",
        "cached",
    ]


def test_a_cached_map_raises_the_first_error_with_its_item() -> None:
    p = Pipeline([flaky], cache=MemoryCache())
    with pytest.raises(ValueError, match="bad item 2") as caught:
        p.map({"x": [1, 2, 3]}, map_over="x")
    assert any("item 1" in note for note in caught.value.__notes__)
    assert calls == Counter({"flaky 1": 1, "flaky 2": 1})  # stopped at the failure


def test_nested_runs_in_a_cached_map_item_see_the_item_and_the_cache() -> None:
    cache = MemoryCache()
    inner = Pipeline([node(lambda y: y + 1, output_name="z", name="inner")])

    @node(output_name="z")
    def outer(y: int) -> int:
        calls["outer"] += 1
        return inner.run({"y": y})["z"]

    p = Pipeline([flaky, outer], cache=cache)
    assert p.map({"x": [1, 3]}, map_over="x", output_name="z") == [{"z": 11}, {"z": 31}]
    before = len(cache)
    assert before == 6  # flaky, outer and the inner node, per item: the cache is inherited
    assert p.map({"x": [1, 3]}, map_over="x", output_name="z") == [{"z": 11}, {"z": 31}]
    assert len(cache) == before
    assert calls["outer"] == 2


def test_a_sync_node_of_a_cached_map_on_a_running_loop_awaits_through_the_portal() -> None:
    @node(output_name="y")
    def fetch(x: int) -> tuple[int, bool]:
        calls["fetch"] += 1
        return run_sync(asyncio.sleep(0, result=x)), portal.in_worker()

    p = Pipeline([fetch], cache=MemoryCache())

    async def main() -> list[Any]:
        return [outcome async for _, outcome in p.aimap({"x": [1, 2]}, map_over="x")]

    results = asyncio.run(main())
    assert results == [{"y": (1, True)}, {"y": (2, True)}]
    assert asyncio.run(main()) == results
    assert calls["fetch"] == 2
