"""DiskCache with real processes: resume after kill -9, and items cached by workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from plait import LocalEngine, Pipeline, node
from plait.cache.stores import DiskCache

ITEMS = 40

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from plait import LocalEngine, Pipeline, node
    from plait.cache.stores import DiskCache

    cache_dir, items = sys.argv[1], int(sys.argv[2])

    def slow_square(x):
        # The log path is not an input: inputs are part of the cache key.
        with open(os.environ["CALL_LOG"], "a") as log:
            log.write(f"{x}\\n")
        time.sleep(0.03)
        return x * x

    pipeline = Pipeline(
        [node(slow_square, output_name="y")],
        cache=DiskCache(cache_dir),
        engine=LocalEngine(map_executor="sequential"),
    )
    results = pipeline.map(inputs={"x": range(items)}, map_over="x")
    assert [r["y"] for r in results] == [x * x for x in range(items)]
    print("done")
    """
)


def calls(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def test_killed_map_resumes_computing_only_the_missing_items(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    cache_dir, first_log, second_log = tmp_path / "cache", tmp_path / "first", tmp_path / "second"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "CALL_LOG": str(first_log)}

    job = subprocess.Popen([sys.executable, str(script), str(cache_dir), "40"], env=env)
    deadline = time.monotonic() + 30
    while len(calls(first_log)) < 15 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(job.pid, signal.SIGKILL)
    assert job.wait(timeout=10) == -signal.SIGKILL
    started_before_kill = calls(first_log)
    assert 15 <= len(started_before_kill) < ITEMS

    with DiskCache(cache_dir) as cache:
        cached = len(cache)
    # Every item that finished was stored; at most the one in flight was lost.
    assert len(started_before_kill) - 1 <= cached <= len(started_before_kill)

    done = subprocess.run(
        [sys.executable, str(script), str(cache_dir), "40"],
        env={**env, "CALL_LOG": str(second_log)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    recomputed = calls(second_log)
    assert len(recomputed) == ITEMS - cached
    assert set(recomputed) == set(range(ITEMS)) - set(started_before_kill[:cached])


def square_logged(x, log_dir):
    Path(log_dir, f"{x}-{os.getpid()}-{time.monotonic_ns()}").touch()
    return x * x


def test_items_run_in_worker_processes_write_the_shared_disk_cache(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    cache = DiskCache(tmp_path / "cache")
    with LocalEngine(map_executor="parallel", max_workers=2) as engine:
        p = Pipeline([node(square_logged, output_name="y")], cache=cache, engine=engine)
        inputs = {"x": range(6), "log_dir": str(logs)}
        first = p.map(inputs=inputs, map_over="x")
        assert len(list(logs.iterdir())) == 6
        assert p.map(inputs=inputs, map_over="x") == first
    assert len(list(logs.iterdir())) == 6  # the second map hit for every item
    # ... and the parent process sees the workers' entries too.
    assert p.with_cache(cache).run(inputs={"x": 3, "log_dir": str(logs)}) == {"y": 9}
    assert len(list(logs.iterdir())) == 6
