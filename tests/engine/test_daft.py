"""DaftEngine beyond the parity suite: limits, cache, runs, plans, runner conflicts,
and the Daft behaviours it relies on or works around (pinned, so that a Daft upgrade
that changes them is caught)."""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from plait import (
    DaftEngine,
    Dep,
    DiskCache,
    EngineError,
    ItemError,
    LocalEngine,
    MemoryCache,
    Pipeline,
    node,
)
from plait.callbacks.progress import ProgressCallback

daft = pytest.importorskip("daft")

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def engine(daft_engine: DaftEngine) -> DaftEngine:
    return daft_engine


class Peak:
    """Calls in flight at once, across threads."""

    def __init__(self) -> None:
        self.now = self.peak = 0
        self.lock = threading.Lock()

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def test_max_concurrent_holds_across_every_row(engine: DaftEngine) -> None:
    peak = Peak()

    @node(output_name="y", max_concurrent=3)
    async def call(x: int) -> int:
        with peak:
            await asyncio.sleep(0.01)
        return x

    pipeline = Pipeline([call], engine=engine)
    assert pipeline.map({"x": range(60)}, map_over="x") == [{"y": x} for x in range(60)]
    assert peak.peak == 3


def test_a_memory_cache_is_shared_with_the_native_stages(engine: DaftEngine) -> None:
    calls: list[int] = []

    @node(output_name="y")
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    pipeline = Pipeline([square], engine=engine, cache=MemoryCache())
    first = pipeline.map({"x": range(10)}, map_over="x")
    assert pipeline.map({"x": range(12)}, map_over="x")[:10] == first
    assert sorted(calls) == [*range(10), 10, 11]  # the rerun computed only the new items
    assert pipeline.run({"x": 3}) == {"y": 9}
    assert len(calls) == 12


def test_a_run_raises_the_node_s_error_with_its_notes_only(engine: DaftEngine) -> None:
    @node(output_name="y")
    def check(x: int) -> int:
        raise KeyError(x)

    with pytest.raises(KeyError) as info:
        Pipeline([check], engine=engine).run({"x": 1})
    assert info.value.__notes__ == ["plait: raised in node 'check' (→ y) called with (x=1)"]


def test_nested_maps_and_deps_run_inside_the_stage(engine: DaftEngine) -> None:
    opened: list[str] = []

    def client() -> Iterator[str]:
        opened.append("open")
        yield "client"
        opened.append("closed")

    @node(output_name="word")
    def tag(letter: str, http: str = Dep(client, scope="item")) -> str:
        return f"{http}:{letter}"

    inner = Pipeline([tag], name="inner").as_node(map_over="letter")

    @node(output_name="joined")
    def join(word: list[str]) -> str:
        return ",".join(word)

    pipeline = Pipeline([inner, join])
    inputs = {"letter": [["a", "b"], ["c"]]}
    want = pipeline.with_engine(LocalEngine()).map(inputs, map_over="letter")
    opened.clear()
    assert pipeline.with_engine(engine).map(inputs, map_over="letter") == want
    assert want == [
        {"word": ["client:a", "client:b"], "joined": "client:a,client:b"},
        {"word": ["client:c"], "joined": "client:c"},
    ]
    assert opened == ["open", "closed"] * 3


def test_progress_callback_on_daft(engine: DaftEngine) -> None:
    out = io.StringIO()

    @node(output_name="y")
    def inc(x: int) -> int:
        return x + 1

    progress = ProgressCallback(file=out, plain_interval=0)
    Pipeline([inc], name="inc", engine=engine, callbacks=[progress]).map(
        {"x": range(30)}, map_over="x"
    )
    assert "plait: map 'inc' 30/30 items" in out.getvalue()


def test_show_plan_prints_the_stage_named_after_its_nodes() -> None:
    @node(output_name="y")
    def inc(x: int) -> int:
        return x + 1

    shown = io.StringIO()
    with redirect_stdout(shown):
        Pipeline([inc], engine=DaftEngine(show_plan=True)).map({"x": [1]}, map_over="x")
    assert "plait[inc]" in shown.getvalue()


def test_another_runner_is_a_clear_engine_error(engine: DaftEngine) -> None:
    @node(output_name="y")
    def inc(x: int) -> int:
        return x + 1

    assert Pipeline([inc], engine=engine).run({"x": 1}) == {"y": 2}  # sets the native runner
    with pytest.raises(EngineError, match='asks for Daft\'s "ray" runner.*"native" runner'):
        Pipeline([inc], engine=DaftEngine(runner="ray")).run({"x": 1})


def test_bad_options_are_engine_errors() -> None:
    with pytest.raises(EngineError, match='"native" or "ray"'):
        DaftEngine(runner="spark")  # type: ignore[arg-type]
    with pytest.raises(EngineError, match="address"):
        DaftEngine(address="ray://127.0.0.1:10001")
    with pytest.raises(EngineError, match="batch_size must be a positive int"):
        DaftEngine(batch_size=0)


def test_an_item_that_cannot_be_pickled_fails_alone(engine: DaftEngine) -> None:
    @node(output_name="y")
    def name(x: Any) -> str:
        return type(x).__name__

    results = Pipeline([name], engine=engine).map(
        {"x": [1, threading.Lock(), 3]}, map_over="x", on_error="collect"
    )
    assert results[0] == {"y": "int"}
    assert results[2] == {"y": "int"}
    assert "cannot be pickled" in results[1].exception.__notes__[0]


# --- Daft's behaviours that DaftEngine relies on or works around ------------------------


def test_daft_turns_a_tuple_into_a_struct_and_a_dict_into_a_struct() -> None:
    frame = daft.from_pydict({"pair": [(1, "a")], "mapping": [{"k": 1}]})
    schema = {field.name: str(field.dtype) for field in frame.schema()}
    assert schema["pair"].startswith("Struct")
    got = frame.to_pydict()
    assert not isinstance(got["pair"][0], tuple)  # why values travel pickled


def test_daft_loses_a_udf_exception_s_type() -> None:
    @daft.func(return_dtype=daft.DataType.int64())
    def boom(x: int) -> int:
        raise KeyError(x)

    with pytest.raises(Exception) as info:
        daft.from_pydict({"x": [1]}).select(boom(daft.col("x"))).collect()
    assert not isinstance(info.value, KeyError)
    assert type(info.value).__name__ == "DaftCoreException"  # why errors travel as values


_ROWS = Peak()


async def _slow_row(x: int) -> int:  # module level: Daft pickles it by reference
    with _ROWS:
        await asyncio.sleep(0.01)
    return x


def test_daft_max_concurrency_does_not_bound_async_rows() -> None:
    slow = daft.func(_slow_row, return_dtype=daft.DataType.int64(), max_concurrency=1)
    daft.from_pydict({"x": list(range(200))}).select(slow(daft.col("x"))).collect()
    assert _ROWS.peak > 1  # why plait's own limits hold node calls on Daft


def test_batch_nodes_share_batch_calls_within_a_daft_batch() -> None:
    sizes: list[int] = []

    @node(output_name="vec", batch_size=8)
    def embed(text: list[str]) -> list[int]:
        sizes.append(len(text))
        if "boom" in text:
            raise ValueError("bad batch")
        return [len(t) for t in text]

    @node(output_name="score")
    async def score(vec: int, k: int) -> int:
        return vec * k

    pipeline = Pipeline([embed, score]).bind(k=2)
    texts = ["a" * i for i in range(30)]
    want = pipeline.map({"text": texts}, map_over="text")
    sizes.clear()
    engine = DaftEngine(batch_size=16)  # rows per Daft batch: two batch calls of 8 each
    assert pipeline.with_engine(engine).map({"text": texts}, map_over="text") == want
    assert sorted(sizes) == [6, 8, 8, 8]
    results = pipeline.with_engine(engine).map(
        {"text": ["x", "boom", *texts[:14]]}, map_over="text", on_error="collect"
    )
    failed = [r.index for r in results if isinstance(r, ItemError)]
    assert failed == list(range(8))  # the first batch of 8 failed as a whole
    assert results[8:] == want[6:14]
    assert "batch call of node 'embed'" in results[0].exception.__notes__[0]


def test_declared_resources_are_the_stage_s_request() -> None:
    @node(output_name="y", resources={"cpus": 2, "gpus": 0.5})
    def embed(x: int) -> int:
        return x + 1

    @node(output_name="z", resources={"cpus": 1})
    def after(y: int) -> int:
        return 2 * y

    pipeline = Pipeline([embed, after])
    shown = io.StringIO()
    with redirect_stdout(shown):
        got = pipeline.with_engine(DaftEngine(show_plan=True)).map({"x": [1, 2]}, map_over="x")
    assert got == pipeline.map({"x": [1, 2]}, map_over="x")  # LocalEngine reads none of it
    assert "Resource request = { num_cpus = 2, num_gpus = 0.5 }" in shown.getvalue()

    greedy = node(lambda x: x, output_name="q", name="greedy", resources={"gpus": 1.5})
    with pytest.raises(EngineError, match="node 'greedy' asks for 1.5 GPUs"):
        Pipeline([greedy], engine=DaftEngine()).run({"x": 1})


# --- a node that declares resources: a stage of its own ---------------------------------


def staged(calls: list[str] | None = None, broken: set[int] | None = None) -> Pipeline:
    """a -> heavy (resources: a stage of its own) -> c, an error possible in each stage;
    ``calls`` records each call, ``broken`` the items whose ``c`` fails (a crash)."""
    seen = [] if calls is None else calls
    crash = set() if broken is None else broken

    @node(output_name="y")
    def a(x: int) -> int:
        seen.append("a")
        if x == 3:
            raise ValueError(f"bad x {x}")
        return x + 1

    @node(output_name="z", resources={"cpus": 1, "gpus": 1})
    def heavy(y: int) -> int:
        seen.append("heavy")
        if y == 6:
            raise KeyError(y)
        return 10 * y

    @node(output_name="w")
    async def c(z: int, y: int, k: int = 1) -> int:
        seen.append("c")
        await asyncio.sleep(0)
        if z == 80 or y - 1 in crash:
            raise TypeError(f"bad z {z}")
        return k * z + y

    return Pipeline([a, heavy, c], name="staged")


def same_outcomes(got: list[Any], want: list[Any]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        if not isinstance(b, ItemError):
            assert a == b
            continue
        assert isinstance(a, ItemError)
        assert (a.index, a.inputs) == (b.index, b.inputs)
        assert type(a.exception) is type(b.exception)
        assert str(a.exception) == str(b.exception)
        assert a.exception.__notes__ == b.exception.__notes__
        assert a.traceback.splitlines()[-1] == b.traceback.splitlines()[-1]


def test_a_node_with_resources_is_a_stage_of_its_own() -> None:
    pipeline = staged()
    inputs = {"x": range(10)}
    want = pipeline.map(inputs, map_over="x", on_error="collect")
    assert [r.index for r in want if isinstance(r, ItemError)] == [3, 5, 7]  # one per stage
    shown = io.StringIO()
    with redirect_stdout(shown):
        got = pipeline.with_engine(DaftEngine(show_plan=True)).map(
            inputs, map_over="x", on_error="collect"
        )
    same_outcomes(got, want)
    plan = shown.getvalue()
    stages = [line for line in plan.splitlines() if line.startswith("* Project:") and "[" in line]
    assert [line.split("plait[")[1].split("]")[0] for line in stages] == ["c", "heavy", "a"]
    requests = plan.split("== Physical Plan ==")[0].split("Builtin UDF plait[")[1:]
    assert [r.split("]")[0] for r in requests] == ["c", "heavy", "a"]
    assert "Resource request = { num_cpus = 1, num_gpus = 1 }" in requests[1]
    assert "num_cpus" not in requests[0] + requests[2]  # the fused stages ask for nothing

    with pytest.raises(KeyError) as raised:
        pipeline.with_engine(DaftEngine()).map({"x": [0, 5]}, map_over="x")
    assert raised.value.__notes__ == [
        "plait: raised in node 'heavy' (→ z) called with (y=6)",
        "plait: in map item 1 with inputs (x=5)",
    ]


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def __getattr__(self, event: str) -> Any:
        if not event.startswith("on_"):
            raise AttributeError(event)
        return lambda ctx: self.events.append(
            (ctx.event, ctx.node, ctx.item, type(ctx.error).__name__ if ctx.error else None)
        )

    def per_item(self) -> dict[Any, list[tuple[Any, ...]]]:
        items: dict[Any, list[tuple[Any, ...]]] = {}
        for event in self.events:
            items.setdefault(event[2], []).append(event)
        return items


def test_callback_events_of_a_staged_map_are_local_ones(engine: DaftEngine) -> None:
    pipeline = staged()
    here, there = Recorder(), Recorder()
    inputs = {"x": range(10)}
    pipeline.with_callbacks([here]).map(inputs, map_over="x", on_error="collect")
    pipeline.with_callbacks([there]).with_engine(engine).map(
        inputs, map_over="x", on_error="collect"
    )
    assert (there.events[0], there.events[-1]) == (here.events[0], here.events[-1])
    assert there.per_item() == here.per_item()
    assert here.per_item()[5] == [
        ("map_item_start", None, 5, None),
        ("node_start", "a", 5, None),
        ("node_end", "a", 5, None),
        ("node_start", "heavy", 5, None),
        ("error", "heavy", 5, "KeyError"),
        ("map_item_end", None, 5, "KeyError"),
    ]


def crash_and_resume(engine: DaftEngine | LocalEngine, path: Path) -> list[Any]:
    """A map that crashes on some items, is run again, and again: each run's errors,
    calls and per-item events."""
    calls: list[str] = []
    crash = {6, 8, 9}
    cache = DiskCache(path)
    seen: list[Any] = []
    for _ in range(3):
        events = Recorder()
        pipeline = staged(calls, crash).with_cache(cache).with_callbacks([events])
        results = pipeline.with_engine(engine).map(
            {"x": range(10)}, map_over="x", on_error="collect"
        )
        seen.append(([r.index for r in results if isinstance(r, ItemError)], sorted(calls)))
        seen.append(events.per_item())
        calls.clear()
        crash.clear()  # the crash is over: a rerun computes only what is missing
    return seen


def test_a_staged_map_keeps_local_cache_keys_and_resumes(
    engine: DaftEngine, tmp_path: Path
) -> None:
    seen = crash_and_resume(engine, tmp_path / "daft")
    assert seen == crash_and_resume(LocalEngine(), tmp_path / "local")
    assert seen[0][0] == [3, 5, 6, 7, 8, 9]
    # The failures again (a of item 3, heavy of item 5), and c of items 6 to 9.
    assert seen[2] == ([3, 5, 7], ["a", "c", "c", "c", "c", "heavy"])
    cached = sorted(i for i, events in seen[3].items() if events[-1][0] == "map_item_cached")
    assert cached == [0, 1, 2, 4]
    assert seen[4] == ([3, 5, 7], ["a", "c", "heavy"])  # the failures; nothing else

    # Keys downstream of another stage are LocalEngine's: its cache serves Daft whole.
    calls: list[str] = []
    on_daft = staged(calls).with_cache(DiskCache(tmp_path / "local")).with_engine(engine)
    on_daft.map({"x": [0, 1, 2, 4, 6, 8, 9]}, map_over="x")
    assert calls == []


def test_batch_nodes_deps_limits_and_nested_maps_inside_stages(engine: DaftEngine) -> None:
    peak = Peak()
    sizes: list[int] = []
    opened: list[str] = []

    def client() -> Iterator[str]:
        opened.append("open")
        yield "client"
        opened.append("closed")

    @node(output_name="vec", batch_size=4)
    def embed(text: list[str]) -> list[int]:
        sizes.append(len(text))
        return [len(t) for t in text]

    @node(output_name="score", resources={"cpus": 1}, max_concurrent=2)
    async def score(vec: int, http: str = Dep(client, scope="item")) -> str:
        with peak:
            await asyncio.sleep(0.01)
        return f"{http}:{vec}"

    @node(output_name="word")
    def tag(letter: str, score: str) -> str:
        return f"{score}/{letter}"

    inner = Pipeline([tag], name="inner").as_node(map_over="letter")
    pipeline = Pipeline([embed, score, inner])
    texts = ["a" * i for i in range(10)]
    inputs = {"text": texts, "letter": [["p", "q"]] * 10}
    want = pipeline.map(inputs, map_over=["text", "letter"])
    sizes.clear()
    opened.clear()
    got = pipeline.with_engine(engine).map(inputs, map_over=["text", "letter"])
    assert got == want
    assert want[3] == {"vec": 3, "score": "client:3", "word": ["client:3/p", "client:3/q"]}
    assert sorted(sizes) == [2, 4, 4]  # the batch stage's rows share batch calls
    assert peak.peak == 2  # the node's limit holds across the rows of its stage
    assert opened.count("open") == opened.count("closed") == 10  # one per item, torn down


def test_a_value_that_cannot_go_to_the_next_stage_fails_its_item(engine: DaftEngine) -> None:
    @node(output_name="y")
    def make(x: int) -> Any:
        return threading.Lock() if x == 1 else x

    @node(output_name="z", resources={"cpus": 1})
    def use(y: Any) -> str:
        return type(y).__name__

    results = Pipeline([make, use], engine=engine).map(
        {"x": [0, 1, 2]}, map_over="x", on_error="collect"
    )
    assert results[0] == {"y": 0, "z": "int"}
    assert results[2] == {"y": 2, "z": "int"}
    assert isinstance(results[1], ItemError)
    assert (
        "output 'y' (a lock) of map item 1 cannot be pickled" in (results[1].exception.__notes__[0])
    )


def test_a_node_s_concurrency_is_the_number_of_its_stage_s_instances() -> None:
    @node(output_name="y")
    def a(x: int) -> int:
        return x + 1

    @node(output_name="pid", resources={"cpus": 1, "concurrency": 2})
    def heavy(y: int) -> int:
        time.sleep(0.005)
        return os.getpid()

    @node(output_name="z")
    def c(pid: int, y: int) -> int:
        return y * 2

    pipeline = Pipeline([a, heavy, c])
    shown = io.StringIO()
    engine = DaftEngine(use_process=True, batch_size=10, show_plan=True)
    with redirect_stdout(shown):
        got = pipeline.with_engine(engine).map({"x": range(60)}, map_over="x")
    assert [r["z"] for r in got] == [2 * (x + 1) for x in range(60)]
    pids = {r["pid"] for r in got}
    assert len(pids) == 2  # two instances of heavy's stage, in Daft's worker processes
    assert os.getpid() not in pids
    assert "concurrency = 2" in shown.getvalue()
    # Stages in this process are one instance each: the request cannot hold there.
    here = pipeline.with_engine(DaftEngine()).map({"x": range(20)}, map_over="x")
    assert {r["pid"] for r in here} == {os.getpid()}


def test_a_run_is_staged_too(engine: DaftEngine, tmp_path: Path) -> None:
    pipeline = staged()
    shown = io.StringIO()
    with redirect_stdout(shown):
        got = pipeline.with_engine(DaftEngine(show_plan=True)).run({"x": 1})
    assert got == pipeline.run({"x": 1}) == {"y": 2, "z": 20, "w": 22}
    assert "Builtin UDF plait[heavy]" in shown.getvalue()
    for x, error in [(1, None), (3, ValueError), (5, KeyError), (7, TypeError)]:
        here, there = Recorder(), Recorder()
        outcomes = []
        for which, recorder in [(LocalEngine(), here), (engine, there)]:
            on = pipeline.with_callbacks([recorder]).with_engine(which)
            try:
                outcomes.append(on.run({"x": x}))
            except Exception as exc:
                outcomes.append((type(exc), str(exc), exc.__notes__))
        assert outcomes[0] == outcomes[1]
        assert error is None or outcomes[0][0] is error
        assert there.events == here.events
        assert there.events[0][0] == "pipeline_start"

    cache = DiskCache(tmp_path / "cache")
    pipeline.with_cache(cache).run({"x": 2})  # on LocalEngine
    calls: list[str] = []
    cached = Recorder()
    again = staged(calls).with_cache(cache).with_callbacks([cached]).with_engine(engine)
    assert again.run({"x": 2}) == {"y": 3, "z": 30, "w": 33}
    assert calls == []  # the same keys in every stage
    assert [e[0] for e in cached.events].count("node_cached") == 3


def test_events_of_batch_nodes_in_a_staged_map(engine: DaftEngine) -> None:
    @node(output_name="vec", batch_size=4)
    def embed(text: list[str]) -> list[int]:
        if "boom" in text:
            raise ValueError("bad batch")
        return [len(t) for t in text]

    @node(output_name="score", resources={"cpus": 1})
    def score(vec: int) -> int:
        return vec * 2

    @node(output_name="top", batch_size=3)
    def top(score: list[int]) -> list[int]:
        return [s + 1 for s in score]

    pipeline = Pipeline([embed, score, top])
    texts = ["x", "boom", *("a" * i for i in range(10))]
    here, there = Recorder(), Recorder()
    want = pipeline.with_callbacks([here]).map({"text": texts}, map_over="text", on_error="collect")
    got = (
        pipeline.with_callbacks([there])
        .with_engine(engine)
        .map({"text": texts}, map_over="text", on_error="collect")
    )
    # A failed batch call's error is one exception for its items (notes name them).
    assert [r if isinstance(r, dict) else (r.index, str(r.exception)) for r in got] == [
        r if isinstance(r, dict) else (r.index, str(r.exception)) for r in want
    ]
    assert [type(outcome) for outcome in got[:5]] == [ItemError] * 4 + [dict]
    mine, theirs = here.per_item(), there.per_item()
    assert {i: e for i, e in theirs.items() if i is not None} == {
        i: e for i, e in mine.items() if i is not None
    }
    # The batch calls' own events (no item) are all there; items of two batch calls
    # may start in another order than on LocalEngine.
    assert sorted(theirs[None], key=str) == sorted(mine[None], key=str)


def test_a_key_made_of_values_from_an_earlier_stage(engine: DaftEngine, tmp_path: Path) -> None:
    calls: list[str] = []

    @node(output_name="u", cache=False)
    def fresh(x: int) -> int:
        calls.append("fresh")
        return x + 1

    @node(output_name="k")
    def keyed(u: int) -> int:
        calls.append("keyed")
        return 2 * u

    @node(output_name="h", resources={"cpus": 1})
    def heavy(k: int) -> int:
        calls.append("heavy")
        return 3 * k

    @node(output_name="w")
    def last(h: int) -> int:
        calls.append("last")
        return h + 1

    # The keys of heavy and last are made of keyed's code and fresh's value (not
    # cached: a leaf), which rows carry to their stages although no node there reads it.
    pipeline = Pipeline([fresh, keyed, heavy, last]).with_cache(DiskCache(tmp_path))
    want = pipeline.map({"x": range(5)}, map_over="x", output_name="w")
    calls.clear()
    on_daft = pipeline.with_engine(engine)
    assert on_daft.map({"x": range(5)}, map_over="x", output_name="w") == want
    assert sorted(set(calls)) == ["fresh"]  # LocalEngine's keys: everything else cached


class Versioned:
    """A dep whose cache key is its version (a model, a prompt set)."""

    def __init__(self, version: str) -> None:
        self.version = version

    def __cache_key__(self) -> str:
        return self.version


VERSION = ["v1"]


def versioned() -> Versioned:
    return Versioned(VERSION[0])


def test_a_dep_s_cache_key_reaches_the_keys_of_later_stages(
    engine: DaftEngine, tmp_path: Path
) -> None:
    calls: list[str] = []

    @node(output_name="k")
    def keyed(x: int, model: Versioned = Dep(versioned, scope="item")) -> str:
        calls.append("keyed")
        return f"{model.version}:{x}"

    @node(output_name="h", resources={"cpus": 1})
    def heavy(k: str) -> str:  # its key is made of keyed's, the dep's key among them
        calls.append("heavy")
        return k + "!"

    pipeline = Pipeline([keyed, heavy]).with_cache(DiskCache(tmp_path))
    items = {"x": range(3)}
    VERSION[0] = "v1"
    try:
        want = pipeline.map(items, map_over="x")
        calls.clear()
        on_daft = pipeline.with_engine(engine)
        assert on_daft.map(items, map_over="x") == want
        assert calls == []  # LocalEngine's keys: everything cached
        VERSION[0] = "v2"
        assert on_daft.map(items, map_over="x") == [
            {"k": f"v2:{x}", "h": f"v2:{x}!"} for x in range(3)
        ]
        assert sorted(set(calls)) == ["heavy", "keyed"]
    finally:
        VERSION[0] = "v1"
