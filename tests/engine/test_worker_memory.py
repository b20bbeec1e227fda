"""Process workers keep a warm pool, not the broadcast inputs of maps that ended."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from plait import LocalEngine, Pipeline, node

np = pytest.importorskip("numpy")

MIB = 1024 * 1024
#: A broadcast input of 120 MiB; a worker that kept it would stay that much above its baseline.
BIG_BYTES = 120 * MIB


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@node(output_name="seen")
def look(x: int, big: Any) -> tuple[int, float]:
    """Which worker ran this item, and its memory while it held ``big``."""
    assert big[x] == 1
    return os.getpid(), rss_mib(os.getpid())


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_idle_workers_return_to_their_baseline_memory_after_a_map() -> None:
    with LocalEngine(map_executor="parallel", max_workers=2) as engine:
        pipe = Pipeline([look], engine=engine)
        pipe.map({"x": range(4), "big": np.ones(8)}, map_over="x")  # warm: numpy loaded
        pool: Any = engine.map_pool()
        time.sleep(0.5)  # the warm-up map's runner is dropped too
        baseline = {pid: rss_mib(pid) for pid in pool._processes}
        for _ in range(2):  # a new array each map, as a user re-running a cell would
            big = np.ones(BIG_BYTES // 8)
            results = pipe.map({"x": range(8), "big": big}, map_over="x")
            del big
            holding = dict(r["seen"] for r in results)
            for pid, mib in holding.items():  # the map really put the array in the worker
                assert mib > baseline[pid] + BIG_BYTES / MIB / 2
            deadline = time.monotonic() + 5
            while True:
                now = {pid: rss_mib(pid) for pid in holding}
                if all(now[pid] < baseline[pid] + 30 for pid in holding):
                    break
                assert time.monotonic() < deadline, f"workers kept {now} (baseline {baseline})"
                time.sleep(0.05)
        assert set(pool._processes) == set(baseline)  # the same warm workers
