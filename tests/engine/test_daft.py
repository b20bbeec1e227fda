"""DaftEngine beyond the parity suite: limits, cache, runs, plans, runner conflicts,
and the Daft behaviours it relies on or works around (pinned, so that a Daft upgrade
that changes them is caught)."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator
from contextlib import redirect_stdout
from typing import Any

import pytest

from plait import (
    DaftEngine,
    Dep,
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
