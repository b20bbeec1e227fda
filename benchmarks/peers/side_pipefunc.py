"""pipefunc's side of ``make bench-peers``: ``Pipeline.run`` for one run, ``Pipeline.map``
with mapspecs for maps, its in-memory LRU cache for the cached workloads."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from typing import Any

import common
from common import Unsupported
from pipefunc import Pipeline, pipefunc

NOT_AWAITED = (
    "async def functions are not awaited: run() returns the coroutine, and map_async() "
    "runs each function on an executor"
)


def chain(n: int, **options: Any) -> list[Any]:
    funcs = common.chain_functions(n)
    return [pipefunc(output_name=f"v{i + 1}", **options)(fn) for i, fn in enumerate(funcs)]


def sync_chain() -> float:
    pipeline = Pipeline(chain(common.CHAIN))
    out = f"v{common.CHAIN}"
    return common.timed(lambda: pipeline.run(out, kwargs={"v0": 0}), number=20)


def async_fanout() -> float:
    raise Unsupported(NOT_AWAITED)


def three(**options: Any) -> list[Any]:
    return [
        pipefunc(output_name="a", mapspec="x[i] -> a[i]", **options)(common.fa),
        pipefunc(output_name="b", mapspec="a[i] -> b[i]", **options)(common.fb),
        pipefunc(output_name="c", mapspec="b[i] -> c[i]", **options)(common.fc),
    ]


def seq_map() -> float:
    pipeline = Pipeline(three())
    inputs = {"x": list(range(common.MAP_ITEMS))}
    return common.timed(
        lambda: pipeline.map(inputs, parallel=False, storage="dict", show_progress=False),
        repeats=5,
    )


def async_map() -> float:
    raise Unsupported(NOT_AWAITED)


def process_map() -> float:
    pipeline = Pipeline([pipefunc(output_name="y", mapspec="x[i] -> y[i]")(common.spin)])
    inputs = {"x": list(range(common.CPU_ITEMS))}

    def sequential() -> object:
        return pipeline.map(inputs, parallel=False, storage="dict", show_progress=False)

    with ProcessPoolExecutor(common.WORKERS) as pool:

        def parallel() -> object:
            return pipeline.map(
                inputs, parallel=True, executor=pool, storage="dict", show_progress=False
            )

        par = common.timed(parallel, repeats=3)
    return common.timed(sequential, repeats=3) / par


def _build(n: int) -> float:
    funcs = chain(n)
    return common.timed(lambda: Pipeline(funcs), repeats=3)


def build_1k() -> float:
    return _build(common.BUILD_SIZES[0])


def build_10k() -> float:
    return _build(common.BUILD_SIZES[1])


def cached_chain() -> float:
    pipeline = Pipeline(chain(common.CHAIN, cache=True), cache_type="lru")
    out = f"v{common.CHAIN}"
    pipeline.run(out, kwargs={"v0": 0})
    return common.timed(lambda: pipeline.run(out, kwargs={"v0": 0}), number=20)


def cached_map() -> float:
    pipeline = Pipeline(three(cache=True), cache_type="lru")
    inputs = {"x": list(range(common.CACHED_ITEMS))}

    def run() -> object:
        return pipeline.map(inputs, parallel=False, storage="dict", show_progress=False)

    run()
    return common.timed(run, repeats=5)


if __name__ == "__main__":
    common.main(globals(), "pipefunc", version("pipefunc"))
