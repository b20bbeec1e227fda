"""The raw-Python lower bound of every workload (``make bench-peers``)."""

from __future__ import annotations

import platform

import common

sync_chain = common.raw_sync_chain
async_fanout = common.raw_async_fanout
seq_map = common.raw_seq_map
async_map = common.raw_async_map
process_map = common.raw_process_map
build_1k = common.raw_build_1k
build_10k = common.raw_build_10k
cached_chain = common.raw_cached_chain
cached_map = common.raw_cached_map

if __name__ == "__main__":
    common.main(globals(), "raw Python", platform.python_version())
