"""daglite's side of ``make bench-peers``: task futures chained with ``.then``, maps with
``.product(...).then(...)``, evaluated with ``evaluate``."""

from __future__ import annotations

import tempfile
from importlib.metadata import version
from typing import Any

import common
from common import Unsupported
from daglite import evaluate, task
from daglite.cache.store import FileCacheStore
from daglite.plugins.builtin.cache import CachePlugin
from daglite.settings import DagliteSettings, set_global_settings


def chain_future(n: int, **options: Any) -> Any:
    tasks = [task(fn, **options) for fn in common.chain_functions(n)]
    future = tasks[0](v0=0)
    for step in tasks[1:]:
        future = future.then(step)
    return future


def sync_chain() -> float:
    future = chain_future(common.CHAIN)
    return common.timed(lambda: evaluate(future), number=5)


def async_fanout() -> float:
    params = ", ".join(f"s{i}" for i in range(common.FANOUT))
    namespace: dict[str, Any] = {}
    exec(f"def collect({params}):\n    return None\n", namespace)
    nap = task(common.nap_item)
    collect = task(namespace["collect"])

    def run() -> Any:
        return evaluate(collect(**{f"s{i}": nap(x=i) for i in range(common.FANOUT)}))

    return common.timed(run)


def three_future(**options: Any) -> Any:
    items = list(range(common.MAP_ITEMS if not options else common.CACHED_ITEMS))
    a, b, c = (task(fn, **options) for fn in (common.fa, common.fb, common.fc))
    return a.product(x=items).then(b).then(c)


def seq_map() -> float:
    future = three_future()
    return common.timed(lambda: evaluate(future), repeats=5)


def async_map() -> float:
    raise Unsupported("async tasks of a map all run at once: no concurrency limit")


def process_map() -> float:
    items = list(range(common.CPU_ITEMS))
    set_global_settings(DagliteSettings(max_parallel_processes=common.WORKERS))
    sequential = task(common.spin)
    parallel = task(common.spin, backend_name="multiprocessing")
    par = common.timed(lambda: evaluate(parallel.product(x=items)), repeats=3)
    return common.timed(lambda: evaluate(sequential.product(x=items)), repeats=3) / par


def _build(n: int) -> float:
    return common.timed(lambda: chain_future(n), repeats=3)


def build_1k() -> float:
    return _build(common.BUILD_SIZES[0])


def build_10k() -> float:
    return _build(common.BUILD_SIZES[1])


def cached_chain() -> float:  # its cache: a FileCacheStore, through its CachePlugin
    with tempfile.TemporaryDirectory() as tmp:
        plugins = [CachePlugin(store=FileCacheStore(tmp))]
        future = chain_future(common.CHAIN, cache=True)
        evaluate(future, plugins=plugins)
        return common.timed(lambda: evaluate(future, plugins=plugins))


def cached_map() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        plugins = [CachePlugin(store=FileCacheStore(tmp))]
        future = three_future(cache=True)
        evaluate(future, plugins=plugins)
        return common.timed(lambda: evaluate(future, plugins=plugins), repeats=5)


if __name__ == "__main__":
    common.main(globals(), "daglite", version("daglite"))
