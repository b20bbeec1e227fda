"""A Dep: one httpx.AsyncClient per run, shared by every node that asks, closed afterwards.

Three async nodes fetch users, orders and prices from a small JSON API on
127.0.0.1 (the one ``demo.py`` serves) through the same client; a sync node joins
them. A map sets the client up once for all its items.

python examples/dep_http_client.py
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from demo import local_api
from plait import Dep, LocalEngine, Pipeline, node

SETUPS: list[str] = []


async def make_client(address: str) -> AsyncIterator[httpx.AsyncClient]:
    """The dep: its parameter `address` is a pipeline input; code after `yield` is teardown."""
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        SETUPS.append("client")
        yield client


@node(output_name="users")
async def users(client: httpx.AsyncClient = Dep(make_client)) -> Any:
    return (await client.get("/users")).json()


@node(output_name="orders")
async def orders(client: httpx.AsyncClient = Dep(make_client)) -> Any:
    return (await client.get("/orders")).json()


@node(output_name="prices")
async def prices(client: httpx.AsyncClient = Dep(make_client)) -> Any:
    return (await client.get("/prices")).json()


@node(output_name="spent")
def spent(user_id: int, users: Any, orders: Any, prices: Any) -> str:
    name = next(user["name"] for user in users if user["id"] == user_id)
    amount = sum(o["qty"] * prices[o["sku"]] for o in orders if o["user"] == user_id)
    return f"{name} spent {amount:.2f} EUR"


pipeline = Pipeline([users, orders, prices, spent], name="shop")


def main() -> None:
    with local_api() as address:
        print(pipeline.run(inputs={"address": address, "user_id": 1})["spent"])
        print(f"one run, three requests: {len(SETUPS)} client set up")
        mapped = pipeline.with_engine(LocalEngine(map_executor="async"))
        results = mapped.map(inputs={"address": address, "user_id": [1, 2]}, map_over="user_id")
        print([result["spent"] for result in results])
        print(f"after a map of two items: {len(SETUPS)} clients set up in all")


if __name__ == "__main__":
    main()
