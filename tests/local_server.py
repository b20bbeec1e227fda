"""A real HTTP server on 127.0.0.1 for tests of real clients (httpx, aiohttp).

It runs on its own event loop in a daemon thread, so that tests on any loop (or
none) can call it, and clients bound to the test's loops never share its loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from plait.bridge import LoopThread


async def _echo(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("delay", "0.002")))
    return web.Response(text=request.match_info["text"])


@contextmanager
def local_server() -> Iterator[str]:
    """Serve ``GET /echo/{text}`` (answers ``text`` after ``?delay=`` seconds, default
    2 ms) on 127.0.0.1; yields the base URL."""
    app = web.Application()
    app.router.add_get("/echo/{text}", _echo)
    runner = web.AppRunner(app, access_log=None)
    with LoopThread("test-http-server") as thread:

        async def start() -> int:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port: int = runner.addresses[0][1]
            return port

        port = asyncio.run_coroutine_threadsafe(start(), thread.loop).result(10)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), thread.loop).result(10)
