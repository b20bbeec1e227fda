"""Executors seen from a real interpreter: ``python -c``, stdin, exit, a killed parent."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import plait

SRC = str(pathlib.Path(plait.__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONPATH": SRC}

# Nodes defined in __main__, run on a "parallel" map, a "parallel" node executor and
# as a nested pipeline inside both.
MAIN_NODES = """
from plait import LocalEngine, Pipeline, node

@node(output_name="y")
def sq(x):
    return x * x

@node(output_name="z", executor="parallel")
def inc(y):
    return y + 1

sub = Pipeline([sq], name="inner").as_node(output_mapping={"y": "w"})

if __name__ == "__main__":
    with LocalEngine(map_executor="parallel", max_workers=2) as engine:
        print(Pipeline([sq], engine=engine).map({"x": [1, 2, 3]}, map_over="x"))
        print(Pipeline([sub], engine=engine).map({"x": [4]}, map_over="x"))
    print(Pipeline([sq, inc]).run({"x": 3}))
    with LocalEngine(node_executor="parallel", max_workers=2) as engine:
        print(Pipeline([sub], engine=engine).run({"x": 5}))
"""
MAIN_EXPECTED = [
    "[{'y': 1}, {'y': 4}, {'y': 9}]",
    "[{'w': 16}]",
    "{'y': 9, 'z': 10}",
    "{'w': 25}",
]


@pytest.mark.parametrize("how", ["-c", "stdin"])
def test_nodes_from_main_run_on_process_pools(how: str) -> None:
    code = textwrap.dedent(MAIN_NODES)
    stdin = code if how == "stdin" else None
    args = [sys.executable, "-"] if how == "stdin" else [sys.executable, "-c", code]
    proc = subprocess.run(
        args, input=stdin, capture_output=True, text=True, timeout=120, env=ENV, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == MAIN_EXPECTED


def test_a_timed_out_sync_call_that_never_returns_does_not_block_exit() -> None:
    code = """
        import threading
        from plait import LocalEngine, Pipeline, node

        @node(output_name="y", timeout=0.5)
        def stuck(x):
            threading.Event().wait()  # never returns

        for engine in (LocalEngine(), LocalEngine(node_executor="threaded"),
                       LocalEngine(node_executor="async")):
            with engine:
                try:
                    Pipeline([stuck], engine=engine).run({"x": 1})
                except TimeoutError:
                    print("timed out", flush=True)
        print("done", flush=True)
    """
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["timed", "out"] * 3 + ["done"]
    assert time.monotonic() - start < 15  # 3 × 0.5 s of timeouts, then exit at once


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_workers_exit_when_their_parent_is_killed() -> None:
    code = """
        import time
        from plait import LocalEngine, Pipeline, node

        def slow(x):
            time.sleep(60)

        if __name__ == "__main__":
            engine = LocalEngine(map_executor="parallel", max_workers=2)
            pipe = Pipeline([node(slow, output_name="y")], engine=engine)
            for index, _ in pipe.imap({"x": range(4)}, map_over="x"):
                print(index, flush=True)
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 60
        workers: set[int] = set()
        while len(workers) < 3 and time.monotonic() < deadline:  # 2 workers + the tracker
            time.sleep(0.2)
            workers = _children(proc.pid)
        assert len(workers) >= 3, workers
        time.sleep(1.0)  # the workers are busy in their items
        workers = _children(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "worker processes outlived their killed parent"
