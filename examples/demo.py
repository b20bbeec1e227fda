"""plait demo: fan out HTTP calls to a local server, join the results, report timings.

A small JSON API runs on 127.0.0.1 in this process; each request takes 200 ms.
The pipeline fetches users, orders and prices concurrently (async nodes), joins
them (sync nodes), and prints the report. Then the same work with blocking sync
nodes shows what LocalEngine(node_executor="threaded") buys, a DiskCache makes a
second run skip every node, and plait.batch fans out more requests from sync code.

Run it with ``make demo``.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from plait import Callback, CallbackContext, DiskCache, LocalEngine, Pipeline, batch, node

LATENCY = 0.2
DATA: dict[str, Any] = {
    "/users": [{"id": 1, "name": "Ada"}, {"id": 2, "name": "Grace"}],
    "/orders": [
        {"user": 1, "sku": "tea", "qty": 3},
        {"user": 2, "sku": "coffee", "qty": 1},
        {"user": 1, "sku": "coffee", "qty": 2},
    ],
    "/prices": {"tea": 4.5, "coffee": 3.0},
}


class _Api(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(LATENCY)
        body = json.dumps(DATA[self.path]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep the demo output clean
        pass


@contextmanager
def local_api() -> Iterator[str]:
    """Serve DATA on 127.0.0.1 (a free port) for the duration of the block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


async def get_json(address: str, path: str) -> Any:
    """A tiny asyncio HTTP/1.1 GET, so the demo needs nothing beyond plait."""
    host, port = address.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    return json.loads(raw.partition(b"\r\n\r\n")[2])


# --- the pipeline: three async fetches, two sync steps ----------------------------


@node(output_name="users")
async def fetch_users(api):
    return await get_json(api, "/users")


@node(output_name="orders")
async def fetch_orders(api):
    return await get_json(api, "/orders")


@node(output_name="prices")
async def fetch_prices(api):
    return await get_json(api, "/prices")


@node(output_name="spend")
def spend_per_user(users, orders, prices):
    names = {u["id"]: u["name"] for u in users}
    spend: dict[str, float] = {}
    for order in orders:
        name = names[order["user"]]
        spend[name] = spend.get(name, 0.0) + order["qty"] * prices[order["sku"]]
    return spend


@node(output_name="report")
def format_report(spend, currency="EUR"):
    return "\n".join(
        f"  {name:<6} {total:6.2f} {currency}" for name, total in sorted(spend.items())
    )


shop = Pipeline(
    [format_report, spend_per_user, fetch_prices, fetch_orders, fetch_users], name="shop"
)


# --- the same fetches as blocking sync code -----------------------------------------


def _blocking_get(api: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{api}{path}", timeout=5) as response:
        return json.load(response)


blocking_shop = Pipeline(
    [
        node(lambda api: _blocking_get(api, "/users"), output_name="users", name="get_users"),
        node(lambda api: _blocking_get(api, "/orders"), output_name="orders", name="get_orders"),
        node(lambda api: _blocking_get(api, "/prices"), output_name="prices", name="get_prices"),
        spend_per_user,
        format_report,
    ],
    name="blocking_shop",
)


class CountCached(Callback):
    """Counts the nodes a run took from the cache."""

    def __init__(self) -> None:
        self.cached = 0

    def on_node_cached(self, ctx: CallbackContext) -> None:
        self.cached += 1


def timed(label: str, run: Any) -> Any:
    start = time.perf_counter()
    result = run()
    print(f"  {label:<44} {time.perf_counter() - start:6.3f} s")
    return result


def main() -> None:
    print(f"plait demo: 3 HTTP calls of {LATENCY * 1000:.0f} ms each to a server on 127.0.0.1\n")
    with local_api() as api:
        print(f"Pipeline: {shop}\n")
        print("Timings:")
        result = timed("async nodes, run() (concurrent)", lambda: shop.run(inputs={"api": api}))
        timed("async nodes, await arun()", lambda: asyncio.run(shop.arun(inputs={"api": api})))
        only = timed(
            "output_name='users' (runs 1 node)",
            lambda: shop.run(inputs={"api": api}, output_name="users"),
        )
        timed(
            "blocking sync nodes, sequential engine", lambda: blocking_shop.run(inputs={"api": api})
        )
        with LocalEngine(node_executor="threaded", max_workers=4) as engine:
            threaded = blocking_shop.with_engine(engine)
            timed("blocking sync nodes, threaded engine", lambda: threaded.run(inputs={"api": api}))
        with tempfile.TemporaryDirectory() as tmp, DiskCache(Path(tmp) / "cache") as cache:
            counter = CountCached()
            cached = shop.with_cache(cache).with_callbacks([counter])
            timed("with a DiskCache, first run", lambda: cached.run(inputs={"api": api}))
            timed("with a DiskCache, second run", lambda: cached.run(inputs={"api": api}))
            print(f"  (the second run took all {counter.cached} nodes from the cache)")

        async def get(path: str) -> Any:
            return await get_json(api, path)

        paths = ["/users", "/orders", "/prices"] * 3
        fetched = timed(
            f"plait.batch: {len(paths)} GETs, 3 at a time",
            lambda: batch(get, paths, max_concurrent=3),
        )
        assert fetched[2] == DATA["/prices"]
        print(f"\nSpend per user (from {len(result['orders'])} orders):")
        print(result["report"])
        print(f"\nSelected output only: {only}")


if __name__ == "__main__":
    main()
