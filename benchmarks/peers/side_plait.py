"""plait's side of ``make bench-peers``: the workloads of :mod:`common` as pipelines."""

from __future__ import annotations

from typing import Any

import common

import plait
from plait import LocalEngine, MemoryCache, Pipeline, node


def chain_nodes(funcs: list[Any]) -> list[Any]:
    return [node(fn, output_name=f"v{i + 1}") for i, fn in enumerate(funcs)]


def sync_chain() -> float:
    pipeline = Pipeline(chain_nodes(common.chain_functions(common.CHAIN)))
    return common.timed(lambda: pipeline.run({"v0": 0}), number=100)


def async_fanout() -> float:
    nodes = [node(common.nap, output_name=f"s{i}", name=f"s{i}") for i in range(common.FANOUT)]
    pipeline = Pipeline(nodes)
    return common.atimed(pipeline.arun)


def three() -> list[Any]:
    return [
        node(common.fa, output_name="a"),
        node(common.fb, output_name="b"),
        node(common.fc, output_name="c"),
    ]


def seq_map() -> float:
    pipeline = Pipeline(three())
    inputs = {"x": range(common.MAP_ITEMS)}
    return common.timed(lambda: pipeline.map(inputs, map_over="x"))


def async_map() -> float:
    engine = LocalEngine(map_executor="async", max_concurrent=common.LIMIT)
    pipeline = Pipeline([node(common.nap_item, output_name="y")], engine=engine)
    inputs = {"x": range(common.ASYNC_ITEMS)}
    return common.atimed(lambda: pipeline.amap(inputs, map_over="x"), repeats=5)


def process_map() -> float:
    inputs = {"x": range(common.CPU_ITEMS)}
    sequential = Pipeline([node(common.spin, output_name="y")])
    with LocalEngine(map_executor="parallel", max_workers=common.WORKERS) as engine:
        parallel = Pipeline([node(common.spin, output_name="y")], engine=engine)
        par = common.timed(lambda: parallel.map(inputs, map_over="x"), repeats=3)
    seq = common.timed(lambda: sequential.map(inputs, map_over="x"), repeats=3)
    return seq / par


def _build(n: int) -> float:
    nodes = chain_nodes(common.chain_functions(n))
    return common.timed(lambda: Pipeline(nodes))


def build_1k() -> float:
    return _build(common.BUILD_SIZES[0])


def build_10k() -> float:
    return _build(common.BUILD_SIZES[1])


def cached_chain() -> float:
    pipeline = Pipeline(chain_nodes(common.chain_functions(common.CHAIN)), cache=MemoryCache())
    pipeline.run({"v0": 0})
    return common.timed(lambda: pipeline.run({"v0": 0}), number=20)


def cached_map() -> float:
    pipeline = Pipeline(three(), cache=MemoryCache())
    inputs = {"x": range(common.CACHED_ITEMS)}
    pipeline.map(inputs, map_over="x")
    return common.timed(lambda: pipeline.map(inputs, map_over="x"))


if __name__ == "__main__":
    common.main(globals(), "plait", plait.__version__)
