"""HyperNodes' side of ``make bench-peers``: its ``Pipeline`` on its ``SeqEngine``, the
engine its core package ships (Dask and Daft engines need extras not installed here)."""

from __future__ import annotations

import tempfile
from importlib.metadata import version
from typing import Any

import common
from common import Unsupported
from hypernodes import DiskCache, Pipeline, SeqEngine, node


def chain_nodes(funcs: list[Any]) -> list[Any]:
    return [node(output_name=f"v{i + 1}")(fn) for i, fn in enumerate(funcs)]


def sync_chain() -> float:
    pipeline = Pipeline(nodes=chain_nodes(common.chain_functions(common.CHAIN)))
    return common.timed(lambda: pipeline.run(inputs={"v0": 0}), number=20)


def async_fanout() -> float:
    nodes = [node(output_name=f"s{i}")(_renamed(common.nap, f"s{i}")) for i in range(common.FANOUT)]
    pipeline = Pipeline(nodes=nodes)
    return common.timed(lambda: pipeline.run(inputs={}), repeats=3)


def _renamed(fn: Any, name: str) -> Any:
    async def wrapper() -> None:
        await fn()

    wrapper.__name__ = wrapper.__qualname__ = name
    return wrapper


def three() -> list[Any]:
    return [
        node(output_name="a")(common.fa),
        node(output_name="b")(common.fb),
        node(output_name="c")(common.fc),
    ]


def seq_map() -> float:
    pipeline = Pipeline(nodes=three())
    inputs = {"x": list(range(common.MAP_ITEMS))}
    return common.timed(lambda: pipeline.map(inputs=inputs, map_over="x"), repeats=3)


def async_map() -> float:
    raise Unsupported("SeqEngine runs items one by one; no concurrency limit in the core package")


def process_map() -> float:
    raise Unsupported("process maps need its DaskEngine (dask, not a dependency)")


def _build(n: int) -> float:
    nodes = chain_nodes(common.chain_functions(n))
    return common.timed(lambda: Pipeline(nodes=nodes), repeats=3)


def build_1k() -> float:
    return _build(common.BUILD_SIZES[0])


def build_10k() -> float:
    return _build(common.BUILD_SIZES[1])


def cached_chain() -> float:  # DiskCache is its one cache store
    with tempfile.TemporaryDirectory() as tmp:
        engine = SeqEngine(cache=DiskCache(path=tmp))
        pipeline = Pipeline(nodes=chain_nodes(common.chain_functions(common.CHAIN)), engine=engine)
        pipeline.run(inputs={"v0": 0})
        return common.timed(lambda: pipeline.run(inputs={"v0": 0}), repeats=5)


def cached_map() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Pipeline(nodes=three(), engine=SeqEngine(cache=DiskCache(path=tmp)))
        inputs = {"x": list(range(common.CACHED_ITEMS))}
        pipeline.map(inputs=inputs, map_over="x")
        return common.timed(lambda: pipeline.map(inputs=inputs, map_over="x"), repeats=3)


if __name__ == "__main__":
    common.main(globals(), "HyperNodes", version("hypernodes"))
