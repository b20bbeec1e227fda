"""Pipeline caching: hits skip work, keys follow code and inputs, maps cache per item."""

from __future__ import annotations

import asyncio
import importlib
import sys
import threading
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from plait import LocalEngine, Pipeline, node
from plait.cache.stores import MemoryCache
from plait.errors import CacheWarning

calls: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()


@node(output_name="doubled")
def double(x):
    calls["double"] += 1
    return x * 2


@node(output_name="nothing")
def nothing(doubled):
    calls["nothing"] += 1
    return


@node(output_name="total")
async def total(doubled, nothing, offset=0):
    calls["total"] += 1
    await asyncio.sleep(0)
    return doubled + offset


@node(output_name="stamp", cache=False)
def stamp(total):
    calls["stamp"] += 1
    return total


def pipeline(**options: Any) -> Pipeline:
    return Pipeline([double, nothing, total], **options)


def test_second_run_is_all_hits_including_a_none_result() -> None:
    cache = MemoryCache()
    p = pipeline(cache=cache)
    first = p.run(inputs={"x": 3})
    second = p.run(inputs={"x": 3})
    assert first == second == {"doubled": 6, "nothing": None, "total": 6}
    assert calls == {"double": 1, "nothing": 1, "total": 1}


def test_changed_input_recomputes_only_what_depends_on_it() -> None:
    p = pipeline(cache=MemoryCache())
    p.run(inputs={"x": 3, "offset": 0})
    assert p.run(inputs={"x": 3, "offset": 1})["total"] == 7
    assert calls == {"double": 1, "nothing": 1, "total": 2}
    assert p.run(inputs={"x": 4, "offset": 1})["total"] == 9
    assert calls == {"double": 2, "nothing": 2, "total": 3}


def test_equal_values_of_different_types_do_not_share_entries() -> None:
    p = pipeline(cache=MemoryCache())
    assert p.run(inputs={"x": 2})["total"] == 4
    assert p.run(inputs={"x": True})["total"] == 2
    assert p.run(inputs={"x": 2.0})["total"] == 4.0
    assert calls["double"] == 3


def test_opted_out_node_always_runs_and_downstream_keys_use_its_value() -> None:
    @node(output_name="final")
    def final(stamp):
        calls["final"] += 1
        return stamp + 1

    p = Pipeline([double, nothing, total, stamp, final], cache=MemoryCache())
    assert p.run(inputs={"x": 1})["final"] == 3
    assert p.run(inputs={"x": 1})["final"] == 3
    assert calls["stamp"] == 2
    assert calls["final"] == 1
    assert calls["double"] == 1


def test_unfingerprintable_input_warns_and_is_never_a_wrong_hit() -> None:
    @node(output_name="name")
    def lock_name(lock):
        calls["lock_name"] += 1
        return type(lock).__name__

    p = Pipeline([lock_name], cache=MemoryCache())
    with pytest.warns(CacheWarning, match=r"'lock_name' is not cached.*lock"):
        p.run(inputs={"lock": threading.Lock()})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        p.run(inputs={"lock": threading.Lock()})  # said once per node and pipeline
    assert record == []
    assert calls["lock_name"] == 2


def test_downstream_of_an_unfingerprintable_input_is_cached_by_its_own_arguments() -> None:
    @node(output_name="name")
    def lock_name(lock):
        calls["lock_name"] += 1
        return type(lock).__name__

    @node(output_name="shout")
    def shout(name):
        calls["shout"] += 1
        return name.upper()

    p = Pipeline([lock_name, shout], cache=MemoryCache())
    with pytest.warns(CacheWarning, match=r"'lock_name' is not cached"):
        assert p.run(inputs={"lock": threading.Lock()})["shout"] == "LOCK"
    assert p.run(inputs={"lock": threading.Lock()})["shout"] == "LOCK"
    assert calls == {"lock_name": 2, "shout": 1}  # keyed by the value it was given


def test_runs_maps_and_output_selections_share_entries() -> None:
    cache = MemoryCache()
    p = pipeline(cache=cache)
    p.run(inputs={"x": 1})
    assert p.map(inputs={"x": [1, 2]}, map_over="x", output_name="doubled") == [
        {"doubled": 2},
        {"doubled": 4},
    ]
    assert calls == {"double": 2, "nothing": 1, "total": 1}
    assert p.run(inputs={"x": 2}, output_name="total") == {"total": 4}
    assert p.run(inputs={"x": 2, "offset": 0})["total"] == 4  # an equal default given
    assert calls == {
        "double": 2,
        "nothing": 2,
        "total": 2,
    }


def test_keys_follow_every_input_a_node_depends_on_and_no_other() -> None:
    @node(output_name="s")
    def add(a, b):
        calls["add"] += 1
        return a + b

    @node(output_name="t")
    def twice(a):
        calls["twice"] += 1
        return 2 * a

    p = Pipeline([add, twice], cache=MemoryCache())
    p.map(inputs={"a": [1, 2], "b": [10, 20]}, map_over=["a", "b"], map_mode="product")
    assert calls == {"add": 4, "twice": 2}
    out = p.map(inputs={"a": [1, 2], "b": [30]}, map_over=["a", "b"], map_mode="product")
    assert out == [{"s": 31, "t": 2}, {"s": 32, "t": 4}]
    assert calls == {"add": 6, "twice": 2}
    long = "x" * 100  # hashed, where short strings and small ints enter keys as they are
    assert p.run(inputs={"a": long, "b": "y"}) == {"s": long + "y", "t": long * 2}
    assert p.run(inputs={"a": long, "b": "y"}) == {"s": long + "y", "t": long * 2}
    assert p.run(inputs={"a": 2**70, "b": 1})["s"] == 2**70 + 1
    assert p.run(inputs={"a": True, "b": 1})["s"] == 2  # True is not the int 1
    assert p.run(inputs={"a": 1, "b": 1})["s"] == 2
    assert calls == {"add": 10, "twice": 5}  # twice(a=1) was cached by the map


class Prompting:
    """A plain settings object: cached by its type and its attributes."""

    def __init__(self, model: str, temperature: float) -> None:
        self.model = model
        self._temperature = temperature  # private storage behind a property counts too

    @property
    def temperature(self) -> float:
        return self._temperature


class WithClient:
    def __init__(self, model: str) -> None:
        self.settings = Prompting(model, 0.0)
        self.settings.client = threading.Lock()  # type: ignore[attr-defined]
        self.model = model
        self.temperature = 0.0


def test_plain_objects_are_cached_by_their_state_and_a_lock_inside_is_named() -> None:
    @node(output_name="answer")
    def ask(prompt, settings):
        calls["ask"] += 1
        return f"{settings.model}@{settings.temperature}: {prompt}"

    p = Pipeline([ask], cache=MemoryCache())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no CacheWarning
        assert p.run(inputs={"prompt": "hi", "settings": Prompting("m", 0.2)}) == {
            "answer": "m@0.2: hi"
        }
        assert p.run(inputs={"prompt": "hi", "settings": Prompting("m", 0.2)}) == {
            "answer": "m@0.2: hi"
        }
        assert calls["ask"] == 1  # an equal object: a hit
        assert p.run(inputs={"prompt": "hi", "settings": Prompting("m", 0.9)}) == {
            "answer": "m@0.9: hi"
        }
        assert calls["ask"] == 2  # another temperature: a miss, never a wrong hit
    with pytest.warns(CacheWarning) as record:
        p.run(inputs={"prompt": "hi", "settings": WithClient("m")})
    (message,) = _cache_warnings(record)
    assert "'ask' is not cached" in message
    assert "at input 'settings' → .settings → .client" in message
    assert "Define __cache_key__() on tests.test_caching.Prompting, which holds it" in message
    assert calls["ask"] == 3


def _cache_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, CacheWarning)]


def test_unfingerprintable_function_warns_once_per_node_and_pipeline() -> None:
    lock_default = threading.Lock()

    @node(output_name="y")
    def locked(x, lock=lock_default):
        calls["locked"] += 1
        return x

    p = Pipeline([locked, double], cache=MemoryCache())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for x in (1, 2, 1):
            assert p.run(inputs={"x": x}) == {"y": x, "doubled": 2 * x}
        p.map(inputs={"x": [1, 2, 3]}, map_over="x")
    messages = _cache_warnings(record)
    assert len(messages) == 1, messages
    assert messages[0].startswith(
        "node 'locked' is not cached: its function cannot be fingerprinted (cannot "
        "fingerprint <unlocked _thread.lock object"
    )
    assert calls["locked"] == 6  # never a hit
    assert calls["double"] == 3  # the others are cached as before
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        Pipeline([locked], cache=MemoryCache()).run(inputs={"x": 1})
    assert len(_cache_warnings(record)) == 1  # another pipeline says it again


def test_unpicklable_result_warning_names_the_node_and_the_item(tmp_path: Path) -> None:
    from plait.cache.stores import DiskCache

    @node(output_name="lock")
    def make_lock(x):
        return threading.Lock() if x == 2 else x

    with DiskCache(tmp_path) as cache:
        p = Pipeline([make_lock], cache=cache)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            p.map(inputs={"x": [1, 2, 3]}, map_over="x")
            p.run(inputs={"x": 2})
        messages = _cache_warnings(record)
        assert len(messages) == 2, messages
        wheres = ["node 'make_lock' (map item 1)", "node 'make_lock'"]
        for message, where in zip(messages, wheres, strict=True):
            assert message.startswith(f"{where}: result <unlocked _thread.lock object at 0x")
            assert "(type lock) cannot be pickled, so it was not cached under " in message
            assert message.endswith("(TypeError: cannot pickle '_thread.lock' object)")
        assert len(cache) == 2  # items 0 and 2


def test_failed_node_is_not_cached_and_runs_again() -> None:
    @node(output_name="y")
    def flaky(x):
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise RuntimeError("first time fails")
        return x

    p = Pipeline([flaky], cache=MemoryCache())
    with pytest.raises(RuntimeError):
        p.run(inputs={"x": 1})
    assert p.run(inputs={"x": 1}) == {"y": 1}
    assert p.run(inputs={"x": 1}) == {"y": 1}
    assert calls["flaky"] == 2


def test_map_caches_items_one_by_one() -> None:
    p = pipeline(cache=MemoryCache())
    assert [r["total"] for r in p.map(inputs={"x": [1, 2]}, map_over="x")] == [2, 4]
    assert [r["total"] for r in p.map(inputs={"x": [1, 2, 3]}, map_over="x")] == [2, 4, 6]
    assert calls["double"] == 3


@pytest.mark.parametrize("map_executor", ["async", "threaded", "sequential"])
def test_map_items_hit_on_every_in_process_executor(map_executor: str) -> None:
    p = pipeline(cache=MemoryCache(), engine=LocalEngine(map_executor=map_executor))
    p.map(inputs={"x": range(5)}, map_over="x")
    assert [r["total"] for r in p.map(inputs={"x": range(5)}, map_over="x")] == [
        2 * i for i in range(5)
    ]
    assert calls["double"] == 5


def test_controlled_and_threaded_nodes_are_cached() -> None:
    @node(output_name="y", retries=2, timeout=5)
    async def controlled(x):
        calls["controlled"] += 1
        return x + 1

    p = Pipeline([controlled], cache=MemoryCache(), engine=LocalEngine(node_executor="threaded"))
    assert p.run(inputs={"x": 1}) == p.run(inputs={"x": 1}) == {"y": 2}
    assert calls["controlled"] == 1


def test_engine_cache_applies_and_pipeline_cache_wins() -> None:
    engine_cache, own_cache = MemoryCache(), MemoryCache()
    engine = LocalEngine(cache=engine_cache)
    pipeline(engine=engine).run(inputs={"x": 1})
    assert len(engine_cache) == 3
    pipeline(engine=engine, cache=own_cache).run(inputs={"x": 1})
    assert len(own_cache) == 3
    assert calls["double"] == 2
    pipeline(engine=engine).run(inputs={"x": 1})
    assert calls["double"] == 2


def test_nested_pipeline_is_cached_by_its_inner_code() -> None:
    inner = Pipeline([double, nothing, total], name="inner")
    outer = Pipeline([inner.as_node(name="sub")], cache=MemoryCache())
    assert outer.run(inputs={"x": 2}) == outer.run(inputs={"x": 2})
    assert calls == {"double": 1, "nothing": 1, "total": 1}
    # The inner pipeline inherits the cache: run directly with it, its nodes hit.
    outer.map(inputs={"x": [2, 5]}, map_over="x")
    assert calls["double"] == 2


def test_nested_cache_key_is_stable_and_follows_inner_code() -> None:
    from plait.cache.fingerprint import fingerprint_code

    first = Pipeline([double, total, nothing]).as_node(name="sub")
    again = Pipeline([nothing, double, total]).as_node(name="sub")
    assert fingerprint_code(first.func) == fingerprint_code(again.func)

    @node(output_name="doubled")
    def double_differently(x):
        return x + x

    other = Pipeline([double_differently, total, nothing]).as_node(name="sub")
    assert fingerprint_code(first.func) != fingerprint_code(other.func)


HELPERS_V1 = "def clean(text):\n    return text.strip()\n"
HELPERS_V2 = "def clean(text):\n    return text.strip().lower()\n"
USER = "import helpers_mod\n\ndef process(text):\n    return helpers_mod.clean(text)\n"


def test_editing_a_helper_in_a_user_module_invalidates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "helpers_mod.py").write_text(HELPERS_V1)
    (tmp_path / "user_mod.py").write_text(USER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import helpers_mod  # type: ignore[import-not-found]
    import user_mod  # type: ignore[import-not-found]

    try:
        cache = MemoryCache()
        p = Pipeline([node(user_mod.process, output_name="out")], cache=cache)
        assert p.run(inputs={"text": " Hi "}) == {"out": "Hi"}
        assert p.run(inputs={"text": " Hi "}) == {"out": "Hi"}
        assert len(cache) == 1
        (tmp_path / "helpers_mod.py").write_text(HELPERS_V2)
        importlib.reload(helpers_mod)
        assert p.run(inputs={"text": " Hi "}) == {"out": "hi"}
        assert len(cache) == 2
    finally:
        sys.modules.pop("helpers_mod", None)
        sys.modules.pop("user_mod", None)


def test_no_cache_means_no_hashing_and_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Pipeline([node(lambda lock: 1, output_name="y")]).run(inputs={"lock": threading.Lock()})


def test_bad_cache_argument_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="cache must be a cache store"):
        Pipeline([double], cache="/tmp/somewhere")  # type: ignore[arg-type]


def test_a_cached_sequential_map_goes_on_past_a_failed_item() -> None:
    @node(output_name="y")
    def fragile(x):
        calls["fragile"] += 1
        if x == 1:
            raise ValueError(x)
        return x * 10

    @node(output_name="z")
    def after(y):
        calls["after"] += 1
        return y + 1

    p = Pipeline([fragile, after], cache=MemoryCache())
    first = p.map(inputs={"x": [0, 1, 2]}, map_over="x", on_error="collect")
    assert first[0] == {"y": 0, "z": 1}
    assert first[2] == {"y": 20, "z": 21}
    again = p.map(inputs={"x": [0, 1, 2]}, map_over="x", on_error="collect")
    assert [type(o).__name__ for o in again] == ["dict", "ItemError", "dict"]
    assert again[0] == first[0]
    assert again[2] == first[2]
    assert calls == {"fragile": 4, "after": 2}  # only the failed item ran again
