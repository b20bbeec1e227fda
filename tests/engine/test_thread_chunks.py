"""A thread pool map sends chunks of items per job: each item still runs in its own
context, fails alone, and a failure stops the chunks already running."""

from __future__ import annotations

import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from plait import LocalEngine, Pipeline, node
from plait.engine.base import ItemError
from plait.engine.local.launchers import chunk_size

SEEN: contextvars.ContextVar[int | None] = contextvars.ContextVar("seen", default=None)


class Boom(Exception):
    pass


def test_chunks_are_about_four_per_worker_within_bounds() -> None:
    assert chunk_size(100_000, 2) == 256
    assert chunk_size(1000, 2) == 125
    assert chunk_size(10, 4) == 1
    assert chunk_size(None, 4) == 16  # a stream of unknown length


@pytest.mark.parametrize("instance", [False, True])
def test_items_of_a_chunk_each_see_their_own_copy_of_the_callers_context(instance: bool) -> None:
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")

    @node(output_name="y")
    def leak(x: int) -> tuple[int | None, str, int]:
        before = SEEN.get()
        SEEN.set(x)  # must not reach the next item of the chunk
        return before, marker.get(), threading.get_ident()

    pool = ThreadPoolExecutor(2) if instance else None
    engine = LocalEngine(map_executor=pool or "threaded", max_workers=2)
    marker.set("caller")
    try:
        results = Pipeline([leak], engine=engine).map({"x": range(400)}, map_over="x")
    finally:
        engine.close()
        if pool is not None:
            pool.shutdown()
    assert [r["y"][:2] for r in results] == [(None, "caller")] * 400
    assert threading.get_ident() not in {r["y"][2] for r in results}
    assert SEEN.get() is None


def test_failed_items_keep_their_place_and_the_rest_of_their_chunk_runs() -> None:
    ran: list[int] = []

    @node(output_name="y")
    def every_tenth_fails(x: int) -> int:
        ran.append(x)
        if x % 10 == 3:
            raise Boom(f"item {x}")
        return x

    with LocalEngine(map_executor="threaded", max_workers=2) as engine:
        results = Pipeline([every_tenth_fails], engine=engine).map(
            {"x": range(200)}, map_over="x", on_error="collect"
        )
    assert sorted(ran) == list(range(200))
    for x, result in enumerate(results):
        if x % 10 == 3:
            assert isinstance(result, ItemError)
            assert result.index == x
            assert result.exception.__notes__[-1] == f"plait: in map item {x} with inputs (x={x})"
        else:
            assert result == {"y": x}


def test_a_failure_stops_its_chunk_and_the_chunks_running_beside_it() -> None:
    ran: list[int] = []

    @node(output_name="y")
    def slow(x: int) -> int:
        ran.append(x)
        if x == 0:
            raise Boom("first item")
        time.sleep(0.01)
        return x

    with (
        LocalEngine(map_executor="threaded", max_workers=2) as engine,
        pytest.raises(Boom, match="first item") as info,
    ):
        Pipeline([slow], engine=engine).map({"x": range(400)}, map_over="x")
    # Chunks of 50: item 0 ends its own chunk at once; the chunk beside it (items 50 to
    # 99, 10 ms each) stops before its next item once the failure is seen, far short of
    # its end; the queued chunks never start.
    assert 1 not in ran
    assert len(ran) < 30, ran
    assert info.value.__notes__[-1] == "plait: in map item 0 with inputs (x=0)"


def test_stopping_a_threaded_imap_early_stops_the_running_chunks() -> None:
    ran: list[int] = []

    @node(output_name="y")
    def slow(x: int) -> int:
        ran.append(x)
        time.sleep(0.002 if x < 8 else 0.03)
        return x

    with LocalEngine(map_executor="threaded", max_workers=2) as engine:
        stream = Pipeline([slow], engine=engine).imap({"x": range(80)}, map_over="x")
        for index, _ in stream:  # chunks of 10: the first arrives whole
            assert index < 10
            break
        stream.close()
        count = len(ran)
    assert count < 20, ran  # the chunk beside the first stopped early, none started after
    time.sleep(0.05)
    assert len(ran) == count


@pytest.mark.parametrize("instance", [False, True])
def test_a_threaded_map_of_a_plan_with_a_batch_node_forms_full_batches(instance: bool) -> None:
    # 400 items would make chunks of 50 per thread job; a chunk's items run one after
    # another, so a batch node there would wait for items that cannot come. Its items
    # run together instead, and every batch is full.
    sizes: list[int] = []

    @node(output_name="y")
    def plus_one(x: int) -> int:
        return x + 1

    @node(output_name="z", batch_size=8)
    def doubled(y: list[int]) -> list[int]:
        sizes.append(len(y))
        return [v * 2 for v in y]

    pool = ThreadPoolExecutor(2) if instance else None
    engine = LocalEngine(map_executor=pool or "threaded", max_workers=2)
    outcome: list[object] = []
    worker = threading.Thread(
        target=lambda: outcome.append(
            Pipeline([plus_one, doubled], engine=engine).map({"x": range(400)}, map_over="x")
        ),
        daemon=True,
    )
    try:
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), "the map hangs"
    finally:
        engine.close()
        if pool is not None:
            pool.shutdown()
    assert outcome == [[{"y": x + 1, "z": 2 * (x + 1)} for x in range(400)]]
    assert sizes == [8] * 50
