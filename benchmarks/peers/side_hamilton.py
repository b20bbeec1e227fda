"""Apache Hamilton's side of ``make bench-peers``: functions in a module (each named after
the output it makes), a ``driver.Builder`` driver; maps are its dynamic execution
(``Parallelizable`` / ``Collect``); async runs use its ``async_driver``."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import types
from importlib.metadata import version
from typing import Any

import common
from common import Unsupported
from hamilton import async_driver, driver
from hamilton.execution import executors


def module(source: str, name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__["asyncio"] = asyncio
    exec("from hamilton.htypes import Collect, Parallelizable\n" + source, mod.__dict__)
    sys.modules[name] = mod  # Hamilton reads the module's functions through its import
    return mod


def chain_module(n: int) -> types.ModuleType:
    source = "\n".join(f"def v{i + 1}(v{i}: int) -> int:\n    return v{i} + 1\n" for i in range(n))
    return module(source, f"chain{n}")


def sync_chain() -> float:
    dr = driver.Builder().with_modules(chain_module(common.CHAIN)).build()
    out = [f"v{common.CHAIN}"]
    return common.timed(lambda: dr.execute(out, inputs={"v0": 0}), number=20)


def async_fanout() -> float:
    source = "\n".join(
        f"async def s{i}() -> int:\n    await asyncio.sleep({common.SLEEP})\n    return {i}\n"
        for i in range(common.FANOUT)
    )
    mod = module(source, "fanout")
    outputs = [f"s{i}" for i in range(common.FANOUT)]

    async def main() -> float:
        dr = await async_driver.Builder().with_modules(mod).build()

        async def run() -> Any:
            return await dr.execute(outputs)

        await run()
        samples = []
        for _ in range(7):
            start = asyncio.get_running_loop().time()
            await run()
            samples.append(asyncio.get_running_loop().time() - start)
        return sorted(samples)[len(samples) // 2]

    return asyncio.run(main())


MAP_SOURCE = """
def item(xs: list) -> Parallelizable[int]:
    for x in xs:
        yield x

def a(item: int) -> int:
    return item + 1

def b(a: int) -> int:
    return a * 2

def c(b: int) -> int:
    return b - 3

def cs(c: Collect[int]) -> list:
    return list(c)
"""


def map_driver(remote: Any, **cache: Any) -> Any:
    builder = (
        driver.Builder()
        .enable_dynamic_execution(allow_experimental_mode=True)
        .with_modules(module(MAP_SOURCE, "three"))
        .with_local_executor(executors.SynchronousLocalTaskExecutor())
        .with_remote_executor(remote)
    )
    if cache:
        builder = builder.with_cache(**cache)
    return builder.build()


def seq_map() -> float:
    dr = map_driver(executors.SynchronousLocalTaskExecutor())
    inputs = {"xs": list(range(common.MAP_ITEMS))}
    return common.timed(lambda: dr.execute(["cs"], inputs=inputs), repeats=3)


def async_map() -> float:
    raise Unsupported("its async driver has no Parallelizable/Collect map and no concurrency limit")


SPIN_SOURCE = """
def item(xs: list) -> Parallelizable[int]:
    for x in xs:
        yield x

def y(item: int) -> int:
    return spin(item)

def ys(y: Collect[int]) -> list:
    return list(y)
"""


def process_map() -> float:
    def build(remote: Any) -> Any:
        mod = module(SPIN_SOURCE, "spin_map")
        mod.__dict__["spin"] = common.spin
        return (
            driver.Builder()
            .enable_dynamic_execution(allow_experimental_mode=True)
            .with_modules(mod)
            .with_local_executor(executors.SynchronousLocalTaskExecutor())
            .with_remote_executor(remote)
            .build()
        )

    inputs = {"xs": list(range(common.CPU_ITEMS))}
    sequential = build(executors.SynchronousLocalTaskExecutor())
    parallel = build(executors.MultiProcessingExecutor(max_tasks=common.WORKERS))
    par = common.timed(lambda: parallel.execute(["ys"], inputs=inputs), repeats=3)
    return common.timed(lambda: sequential.execute(["ys"], inputs=inputs), repeats=3) / par


def _build(n: int) -> float:
    mod = chain_module(n)
    return common.timed(lambda: driver.Builder().with_modules(mod).build(), repeats=3)


def build_1k() -> float:
    return _build(common.BUILD_SIZES[0])


def build_10k() -> float:
    return _build(common.BUILD_SIZES[1])


def cached_chain() -> float:  # its cache keeps results on disk (a SQLite index and files)
    with tempfile.TemporaryDirectory() as tmp:
        dr = driver.Builder().with_modules(chain_module(common.CHAIN)).with_cache(path=tmp).build()
        out = [f"v{common.CHAIN}"]
        dr.execute(out, inputs={"v0": 0})
        return common.timed(lambda: dr.execute(out, inputs={"v0": 0}), repeats=5)


def cached_map() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        dr = map_driver(executors.SynchronousLocalTaskExecutor(), path=tmp)
        inputs = {"xs": list(range(common.CACHED_ITEMS))}
        dr.execute(["cs"], inputs=inputs)
        return common.timed(lambda: dr.execute(["cs"], inputs=inputs), repeats=3)


if __name__ == "__main__":
    common.main(globals(), "Apache Hamilton", version("apache-hamilton"))
