"""Real loop-bound clients (httpx, aiohttp) against a real server on 127.0.0.1.

A client belongs to the event loop it was made on (or first used on). Wherever
plait runs a map's items, a client from a ``Dep`` or a module global must only
ever be used on its own loop: no hang, no "attached to a different loop".
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import httpx
import pytest

from plait import AsyncExecutor, Dep, EngineError, LocalEngine, Pipeline, node, run_sync
from plait.bridge.loops import describe_loop
from plait.errors import RunningLoopWarning
from tests.local_server import local_server

ITEMS = 200


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with local_server() as base:
        yield base


async def httpx_client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url) as client:
        yield client


async def aiohttp_session(base_url: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url) as session:
        yield session


async def get(client: httpx.AsyncClient | aiohttp.ClientSession, path: str) -> str:
    if isinstance(client, httpx.AsyncClient):
        response = await client.get(path)
        response.raise_for_status()
        return response.text
    async with client.get(path) as answer:
        answer.raise_for_status()
        return await answer.text()


@node(output_name="page")
async def fetch_httpx(n: int, client: httpx.AsyncClient = Dep(httpx_client)) -> str:
    return await get(client, f"/echo/{n}")


@node(output_name="page")
async def fetch_aiohttp(n: int, client: aiohttp.ClientSession = Dep(aiohttp_session)) -> str:
    return await get(client, f"/echo/{n}")


FETCH = {"httpx": fetch_httpx, "aiohttp": fetch_aiohttp}


@node(output_name="length")
def measure(page: str) -> tuple[int, str]:
    return len(page), threading.current_thread().name


def check(results: list[dict[str, Any]], items: int = ITEMS) -> set[str]:
    """The pages are right; the names of the threads the sync node ran on."""
    assert [r["page"] for r in results] == [str(n) for n in range(items)]
    assert [r["length"][0] for r in results] == [len(str(n)) for n in range(items)]
    return {r["length"][1] for r in results}


def engine_for(kind: str, pool: ThreadPoolExecutor) -> LocalEngine:
    if kind == "instance":
        return LocalEngine(map_executor=pool)
    return LocalEngine(map_executor=kind, max_workers=4, max_concurrent=8)


@pytest.mark.parametrize("kind", ["threaded", "instance", "async", "sequential"])
@pytest.mark.parametrize("client", ["httpx", "aiohttp"])
def test_a_run_scoped_dep_client_works_on_every_in_process_map_executor(
    url: str, client: str, kind: str
) -> None:
    # The dep is set up once, on the map's loop; items run on that loop (also with a
    # thread pool: Route.items_on_loop), and only the plain sync node goes to threads.
    with (
        ThreadPoolExecutor(max_workers=4, thread_name_prefix="mine") as pool,
        engine_for(kind, pool) as engine,
    ):
        pipe = Pipeline([FETCH[client], measure], engine=engine)
        inputs = {"n": range(ITEMS), "base_url": url}
        threads = check(pipe.map(inputs, map_over="n"))
        if kind in ("threaded", "instance"):
            assert engine.route(pipe.graph, None, inputs).items_on_loop
            # The sync node ran on the map's pool, never on the caller's thread. (How
            # many of its threads it used depends on timing: a free one is reused.)
            prefix = "mine" if kind == "instance" else "plait-map"
            assert all(name.startswith(prefix) for name in threads), threads
        # The async form, from a loop of the caller's: the same results.
        check(asyncio.run(pipe.amap(inputs, map_over="n")))


_clients: dict[str, Any] = {}


@node(output_name="page")
async def fetch_global(n: int, base_url: str, client: str) -> str:
    """A node using a module-global client, created on first use."""
    if client not in _clients:
        if client == "httpx":
            _clients[client] = httpx.AsyncClient(base_url=base_url)
        else:
            _clients[client] = aiohttp.ClientSession(base_url)
    return await get(_clients[client], f"/echo/{n}")


@pytest.mark.parametrize("client", ["httpx", "aiohttp"])
def test_a_module_global_client_works_across_threaded_maps(url: str, client: str) -> None:
    # Before: each worker thread ran items on its own loop, so the first one to use the
    # client owned it and the others hung (httpx) or failed (aiohttp).
    with LocalEngine(map_executor="threaded", max_workers=4) as engine:
        pipe = Pipeline([fetch_global, measure], engine=engine)
        inputs = {"n": range(ITEMS), "base_url": url, "client": client}
        try:
            for _ in range(2):  # the second map uses the client the first one made
                check(pipe.map(inputs, map_over="n"))
        finally:
            made = _clients.pop(client)
            run_sync(made.aclose() if client == "httpx" else made.close())


@pytest.mark.parametrize("client", ["httpx", "aiohttp"])
def test_a_client_made_on_the_callers_loop_works_in_a_threaded_amap(url: str, client: str) -> None:
    async def main() -> None:
        _clients[client] = (
            httpx.AsyncClient(base_url=url) if client == "httpx" else aiohttp.ClientSession(url)
        )
        try:
            with LocalEngine(map_executor="threaded", max_workers=4) as engine:
                pipe = Pipeline([fetch_global, measure], engine=engine)
                inputs = {"n": range(ITEMS), "base_url": url, "client": client}
                check(await pipe.amap(inputs, map_over="n"))
        finally:
            made = _clients.pop(client)
            await (made.aclose() if client == "httpx" else made.close())

    asyncio.run(main())


def test_controlled_sync_nodes_of_items_on_the_loop_run_on_the_pool(url: str) -> None:
    @node(output_name="length", retries=1)
    def measured(page: str) -> tuple[int, str]:
        return len(page), threading.current_thread().name

    with LocalEngine(map_executor="threaded", max_workers=4) as engine:
        pipe = Pipeline([fetch_httpx, measured], engine=engine)
        threads = check(pipe.map({"n": range(40), "base_url": url}, map_over="n"), 40)
    assert all(name.startswith("plait-map") for name in threads)


def test_an_async_executor_map_with_a_shared_async_dep_is_an_error_before_work() -> None:
    made = []

    async def client(base_url: str) -> AsyncIterator[str]:
        made.append(base_url)
        yield base_url

    @node(output_name="page")
    async def fetch(n: int, c: str = Dep(client)) -> str:
        return c

    with AsyncExecutor(max_concurrent=4) as executor:
        pipe = Pipeline([fetch], engine=LocalEngine(map_executor=executor))
        with pytest.raises(EngineError, match=r"runs map items on its own event loop.*scope="):
            pipe.map({"n": range(3), "base_url": "u"}, map_over="n")
    assert made == []


def test_an_async_executor_map_with_an_item_scoped_client_works(url: str) -> None:
    @node(output_name="page")
    async def fetch(n: int, client: httpx.AsyncClient = Dep(httpx_client, scope="item")) -> str:
        return await get(client, f"/echo/{n}")

    with AsyncExecutor(max_concurrent=8) as executor:
        pipe = Pipeline([fetch], engine=LocalEngine(map_executor=executor))
        results = pipe.map({"n": range(40), "base_url": url}, map_over="n")
    assert [r["page"] for r in results] == [str(n) for n in range(40)]


# --- one client across sync and async calls (a notebook) ----------------------------------


@node(output_name="page")
async def fetch_shared(n: int) -> str:
    return await get(_clients["shared"], f"/echo/{n}")


def test_a_client_first_used_by_run_in_a_running_loop_fails_in_arun_with_a_note(url: str) -> None:
    # A notebook: pipeline.run() in one cell (inside the running loop: on plait's portal
    # loop), `await pipeline.arun()` in the next (on the notebook's loop).
    async def notebook() -> None:
        _clients["shared"] = httpx.AsyncClient(base_url=url)
        pipe = Pipeline([fetch_shared])
        try:
            with pytest.warns(RunningLoopWarning):
                assert pipe.run({"n": 1}) == {"page": "1"}  # binds the client to the portal
            with pytest.raises(RuntimeError, match="different event loop") as caught:
                await pipe.arun({"n": 2})
        finally:
            del _clients["shared"]  # bound to two loops now: nothing can close it cleanly
        notes = "\n".join(caught.value.__notes__)
        assert "plait: node 'fetch_shared' ran on the event loop running in thread" in notes
        assert "the caller's own" in notes
        assert "through a Dep" in notes
        assert "docs/notebooks.md" in notes

    asyncio.run(notebook())


def test_a_client_of_the_callers_loop_used_by_run_in_that_loop_names_the_portal(url: str) -> None:
    async def notebook() -> None:
        # Bound to this loop; no connection kept for the portal loop to trip over.
        _clients["shared"] = aiohttp.ClientSession(
            url, connector=aiohttp.TCPConnector(force_close=True)
        )
        pipe = Pipeline([fetch_shared])
        try:
            assert await pipe.arun({"n": 1}) == {"page": "1"}
            with (
                pytest.warns(RunningLoopWarning),
                pytest.raises(RuntimeError, match="attached to a different loop") as caught,
            ):
                pipe.run({"n": 2})
        finally:
            await _clients.pop("shared").close()
        notes = "\n".join(caught.value.__notes__)
        assert "plait: node 'fetch_shared' ran on plait's portal loop, a background thread" in notes
        assert "through a Dep" in notes

    asyncio.run(notebook())


async def dep_client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url) as client:
        yield client


@node(output_name="page")
async def fetch_with_dep(n: int, client: httpx.AsyncClient = Dep(dep_client)) -> str:
    return await get(client, f"/echo/{n}")


@pytest.mark.parametrize("client", ["httpx", "aiohttp"])
def test_a_dep_client_works_across_sync_and_async_calls_in_a_running_loop(
    url: str, client: str
) -> None:
    # The pattern docs/notebooks.md recommends: each run sets its client up on its loop.
    fetch = fetch_with_dep if client == "httpx" else fetch_aiohttp

    async def notebook() -> None:
        pipe = Pipeline([fetch])
        inputs = {"base_url": url}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RunningLoopWarning)
            assert pipe.run({**inputs, "n": 1}) == {"page": "1"}
            assert await pipe.arun({**inputs, "n": 2}) == {"page": "2"}
            assert pipe.map({**inputs, "n": range(20)}, map_over="n")[-1] == {"page": "19"}
            results = await pipe.amap({**inputs, "n": range(20)}, map_over="n")
            assert results[-1] == {"page": "19"}

    asyncio.run(notebook())


def test_describe_loop_names_the_loop_work_runs_on() -> None:
    assert "own event loop of this thread" in describe_loop(sync=True)  # a script
    assert describe_loop() == "no event loop (plain calls)"
    assert "worker thread of an executor" in describe_loop(worker_thread=True)

    async def on_a_worker_threads_loop() -> str:
        return describe_loop()

    async def caller() -> tuple[str, str, str]:
        nested = await asyncio.to_thread(lambda: run_sync(on_a_worker_threads_loop()))
        return describe_loop(), describe_loop(sync=True), nested

    here, sync_here, worker = asyncio.run(caller())
    assert "running in thread 'MainThread', the caller's own" in here
    assert sync_here.startswith("plait's portal loop, a background thread")  # run_sync here
    assert "own event loop of worker thread 'asyncio_" in worker

    with ThreadPoolExecutor(1, thread_name_prefix="helper") as pool:
        assert "worker thread 'helper_0'" in pool.submit(describe_loop, sync=True).result()

    async def portal_side() -> str:
        return describe_loop()

    async def caller_loop() -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RunningLoopWarning)
            return run_sync(portal_side())

    assert asyncio.run(caller_loop()).startswith("plait's portal loop, a background thread")
