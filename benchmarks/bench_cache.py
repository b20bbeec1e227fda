"""Cache hits: a 100-node chain whose every node is a hit, on MemoryCache and DiskCache.

The cost per node of a fully cached run is set beside its lower bound in the same
process: a plain loop doing just the lookups a hit needs (one ``get`` per node of
the same 100 keys, on a dict, or on a raw ``diskcache.Cache`` followed by
``pickle.loads``, which is what a DiskCache hit must do at the least). The
uncached run of the same chain is shown too, for what the hashing costs. A fully
cached map of 1,000 items × 3 nodes is set beside the same map uncached, and on
DiskCache beside the raw store's 3,000 gets and unpickles.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import diskcache  # type: ignore[import-untyped]

from bench_core import CHAIN, chain_functions, chain_nodes
from harness import Row, measure, row
from plait import DiskCache, MemoryCache, Pipeline

ITEMS = 1_000  # items of the cached map
MAX_HIT_OVERHEAD = 1.0  # µs per node over dict.get, MemoryCache
MAX_DISK_RATIO = 1.3  # × raw diskcache get + unpickle
MAX_MAP_HIT_OVERHEAD = 2.0  # µs per item over the uncached map, MemoryCache


def raw_lookups(get: Callable[[str], object], keys: list[str], decode: bool) -> Callable[[], None]:
    """The least a cached run does: one lookup per node (and unpickling, on disk)."""

    def run() -> None:
        for key in keys:
            value = get(key)
            if decode:
                pickle.loads(value)  # type: ignore[arg-type]

    return run


def run() -> list[Row]:
    nodes = chain_nodes(chain_functions(CHAIN))
    per_node = 1e6 / CHAIN
    keys = [f"{i:040x}" for i in range(CHAIN)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        memory = MemoryCache()
        disk = DiskCache(Path(tmp, "plait"))
        raw_disk = diskcache.Cache(str(Path(tmp, "raw")))
        raw_dict = {k: i for i, k in enumerate(keys)}
        for i, k in enumerate(keys):
            raw_disk.set(k, pickle.dumps(i))
        plain = Pipeline(nodes)
        on_memory = Pipeline(nodes, cache=memory)
        on_disk = Pipeline(nodes, cache=disk)
        inputs = {"v0": 0}
        on_memory.run(inputs)  # fill the caches: every later run is all hits
        on_disk.run(inputs)
        # In memory and on disk apart: SQLite's work between runs of the in-memory
        # ones would flush the CPU caches they run from.
        uncached_s, memory_s, memory_raw_s = measure(
            lambda: plain.run(inputs),
            lambda: on_memory.run(inputs),
            raw_lookups(raw_dict.get, keys, decode=False),
            repeats=25,
            number=50,
        )
        disk_s, disk_raw_s = measure(
            lambda: on_disk.run(inputs),
            raw_lookups(raw_disk.get, keys, decode=True),
            repeats=25,
            number=5,
        )
        # A map pays the code fingerprints once, not per item: per-item hit cost.
        items = {"v0": range(ITEMS)}
        short = Pipeline(nodes[:3])
        short_memory = Pipeline(nodes[:3], cache=memory)
        short_disk = Pipeline(nodes[:3], cache=disk)
        short_memory.map(items, map_over="v0")
        short_disk.map(items, map_over="v0")
        map_keys = [f"m{i:039x}" for i in range(3 * ITEMS)]
        for i, k in enumerate(map_keys):
            raw_disk.set(k, pickle.dumps(i))
        map_plain_s, map_memory_s = measure(
            lambda: short.map(items, map_over="v0"),
            lambda: short_memory.map(items, map_over="v0"),
            repeats=11,
        )
        map_disk_s, map_raw_disk_s = measure(
            lambda: short_disk.map(items, map_over="v0"),
            raw_lookups(raw_disk.get, map_keys, decode=True),
            repeats=7,
        )
        raw_disk.close()
        disk.close()
    rows.append(
        row(
            "cache hit, 100-node chain: MemoryCache vs dict.get",
            memory_s * per_node,
            memory_raw_s * per_node,
            "µs/node",
            limit=("overhead", MAX_HIT_OVERHEAD),
        )
    )
    rows.append(
        row(
            "cache hit, 100-node chain: DiskCache vs raw diskcache get+unpickle",
            disk_s * per_node,
            disk_raw_s * per_node,
            "µs/node",
            limit=("ratio", MAX_DISK_RATIO),
        )
    )
    rows.append(
        row(
            "100-node chain, all hits on MemoryCache vs no cache",
            memory_s * per_node,
            uncached_s * per_node,
            "µs/node",
        )
    )
    per_item = 1e6 / ITEMS
    rows.append(
        row(
            f"map of {ITEMS} items × 3 nodes, all hits: MemoryCache vs no cache",
            map_memory_s * per_item,
            map_plain_s * per_item,
            "µs/item",
            limit=("overhead", MAX_MAP_HIT_OVERHEAD),
        )
    )
    rows.append(
        row(
            f"map of {ITEMS} items × 3 nodes, all hits: DiskCache vs no cache",
            map_disk_s * per_item,
            map_plain_s * per_item,
            "µs/item",
        )
    )
    rows.append(
        row(
            f"map of {ITEMS} items × 3 nodes, all hits: DiskCache vs raw get+unpickle × 3",
            map_disk_s * per_item,
            map_raw_disk_s * per_item,
            "µs/item",
            limit=("ratio", MAX_DISK_RATIO),
        )
    )
    return rows
