"""Deps in pipelines: set up once per run or map, torn down after, also on failure."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import pytest

from plait import GraphError, InputError, LocalEngine, MissingInputsError, Pipeline, node
from plait.cache.stores import MemoryCache
from plait.deps import Dep

log: list[str] = []
calls: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    log.clear()
    calls.clear()


class Client:
    """Bound to the loop it was made on, as httpx's and aiohttp's clients are (the real
    ones, under every map executor: tests/engine/test_clients.py)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.closed = False
        self.loop = asyncio.get_running_loop()

    def get(self, path: str) -> str:
        assert not self.closed, "used after teardown"
        assert asyncio.get_running_loop() is self.loop, "used on another event loop"
        return f"{self.base_url}/{path}"


async def make_client(base_url: str) -> AsyncIterator[Client]:
    calls["client"] += 1
    await asyncio.sleep(0.01)  # a real race window for concurrent requests
    client = Client(base_url)
    log.append("client up")
    yield client
    client.closed = True
    log.append("client down")


def make_counter() -> Iterator[Counter[str]]:
    log.append("counter up")
    yield Counter()
    log.append("counter down")


@node(output_name="page")
async def fetch(path: str, client: Client = Dep(make_client)) -> str:
    await asyncio.sleep(0)
    return client.get(path)


@node(output_name="size")
def size(page: str, seen: Annotated[Counter[str], Dep(make_counter, scope="item")]) -> int:
    seen[page] += 1
    return len(page)


def test_run_sets_deps_up_before_and_down_after() -> None:
    p = Pipeline([fetch, size])
    assert p.input_names == ("path", "base_url")
    assert p.run(inputs={"path": "a", "base_url": "http://x"}) == {"page": "http://x/a", "size": 10}
    assert sorted(log[:2]) == ["client up", "counter up"]
    assert sorted(log[2:]) == ["client down", "counter down"]


def test_a_dep_requested_by_50_concurrent_nodes_runs_once() -> None:
    nodes = [
        node(fetch.func, output_name=f"page{i}", name=f"fetch{i}")  # same function, same dep
        for i in range(50)
    ]
    result = Pipeline(nodes).run(inputs={"path": "p", "base_url": "u"})
    assert len(result) == 50
    assert calls["client"] == 1
    assert log == ["client up", "client down"]


def test_teardown_runs_when_a_node_fails() -> None:
    @node(output_name="out")
    def boom(page):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        Pipeline([fetch, boom]).run(inputs={"path": "a", "base_url": "u"})
    assert log == ["client up", "client down"]


def test_teardown_runs_when_the_run_is_cancelled() -> None:
    @node(output_name="out")
    async def hang(page):
        log.append("hanging")
        await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(Pipeline([fetch, hang]).arun({"path": "a", "base_url": "u"}))
        while "hanging" not in log:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert log == ["client up", "hanging", "client down"]


def test_sync_deps_run_without_an_event_loop() -> None:
    @node(output_name="n")
    def count(word, seen=Dep(make_counter)):
        seen[word] += 1
        return seen[word]

    p = Pipeline([count])
    assert LocalEngine().route(p.graph, None, {"word": "a"}).inline  # no event loop
    assert p.run(inputs={"word": "a"}) == {"n": 1}
    assert log == ["counter up", "counter down"]


@pytest.mark.parametrize("map_executor", ["sequential", "async", "threaded"])
def test_map_shares_run_deps_and_sets_item_deps_up_per_item(map_executor: str) -> None:
    p = Pipeline([fetch, size], engine=LocalEngine(map_executor=map_executor))
    results = p.map(inputs={"path": ["a", "bb", "c"], "base_url": "u"}, map_over="path")
    assert [r["size"] for r in results] == [3, 4, 3]
    assert calls["client"] == 1
    assert log.count("client up") == log.count("client down") == 1
    assert log.count("counter up") == log.count("counter down") == 3
    assert log[-1] == "client down"  # the map's dep outlives every item


def test_map_in_worker_processes_sets_deps_up_per_item() -> None:
    with LocalEngine(map_executor="parallel", max_workers=2) as engine:
        p = Pipeline([fetch, size], engine=engine)
        results = p.map(inputs={"path": ["a", "b"], "base_url": "u"}, map_over="path")
    assert [r["page"] for r in results] == ["u/a", "u/b"]


def test_stopping_a_stream_early_tears_the_map_deps_down() -> None:
    p = Pipeline([fetch], engine=LocalEngine(map_executor="async"))
    stream = p.imap(inputs={"path": ["a", "b", "c"], "base_url": "u"}, map_over="path")
    next(stream)
    stream.close()
    assert log == ["client up", "client down"]


def test_run_scoped_dep_of_a_mapped_input_is_an_error_before_work() -> None:
    with pytest.raises(InputError, match=r"scope='item'"):
        Pipeline([fetch]).map(inputs={"path": ["a"], "base_url": ["u"]}, map_over="base_url")
    assert calls["client"] == 0


def test_missing_dep_input_names_the_node_and_the_dep() -> None:
    with pytest.raises(MissingInputsError, match=r"'base_url'.*Dep\(make_client\)"):
        Pipeline([fetch]).run(inputs={"path": "a"})


def test_dep_parameter_produced_by_a_node_is_a_graph_error() -> None:
    @node(output_name="base_url")
    def url():
        return "u"

    with pytest.raises(GraphError, match="must be pipeline inputs or other deps"):
        Pipeline([url, fetch])


class Keyed:
    def __init__(self, version: int) -> None:
        self.version = version

    def __cache_key__(self) -> Any:
        return self.version


VERSION = {"model": 1}


def make_model() -> Keyed:
    return Keyed(VERSION["model"])


@node(output_name="answer")
def answer(question, client=Dep(make_client), model=Dep(make_model)):
    calls["answer"] += 1
    return f"{question}@{model.version}"


def test_deps_are_not_in_the_cache_key_unless_they_define_cache_key() -> None:
    p = Pipeline([answer], cache=MemoryCache())
    inputs = {"question": "q", "base_url": "u"}
    assert p.run(inputs=inputs) == p.run(inputs=inputs) == {"answer": "q@1"}
    assert calls["answer"] == 1  # a new Client each run, still a hit
    VERSION["model"] = 2
    try:
        assert p.run(inputs=inputs) == {"answer": "q@2"}
    finally:
        VERSION["model"] = 1
    assert calls["answer"] == 2
