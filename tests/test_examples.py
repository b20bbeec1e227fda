"""Every example runs end to end as a real subprocess."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SLOW_STEP = re.compile(r"Executing <.*> took \d+\.\d+ seconds")


def run_example(name: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    # -X dev turns on asyncio's debug mode, which logs any loop step slower than
    # 0.1 s: on a loaded 2-core machine the openai SDK's first request can be one.
    # That is a timing note, not a warning or error; anything else fails the test.
    stderr = [line for line in proc.stderr.splitlines() if not SLOW_STEP.fullmatch(line)]
    assert stderr == []
    return proc.stdout


def test_demo() -> None:
    out = run_example("demo.py")
    assert "Ada     19.50 EUR" in out
    assert "Grace    3.00 EUR" in out
    assert "the second run took all 5 nodes from the cache" in out
    labels = ("run() (concurrent)", "await arun()", "sequential engine", "threaded engine")
    for label in (*labels, "DiskCache, second run", "plait.batch: 9 GETs"):
        assert label in out
    assert "Selected output only: {'users': [{'id': 1, 'name': 'Ada'}" in out


def test_llm_fanout() -> None:
    out = run_example("llm_fanout.py")
    assert "200 answers (1400 words)" in out
    assert ", 0 answered twice" in out
    assert "every retry after a 429 waited >= Retry-After: True" in out
    assert "second run: 200 answers" in out
    assert "0 new requests (all from the cache)" in out
    assert "map 'llm' 200/200 items (100.0%)" in out


def test_etl_resume() -> None:
    out = run_example("etl_resume.py")
    killed = re.search(r"killed after (\d+) of 40 records", out)
    second = re.search(r"(\d+) records from the cache, (\d+) computed", out)
    assert killed is not None, out
    assert second is not None, out
    first, (cached, computed) = int(killed[1]), map(int, second.groups())
    assert first >= 10
    assert cached + computed == 40
    assert cached >= first - 1  # at most the record in flight at the kill runs again
    assert "resumed: 40 rows, in order" in out


def test_nested_map() -> None:
    out = run_example("nested_map.py")
    assert (
        "one corpus: {'counts': [4, 2, 3], 'longests': ['quick', 'jumps', 'lazy'], 'total': 9}"
        in out
    )
    assert "corpus 1: [2, 4] words per document, 6 in all" in out


def test_dep_http_client() -> None:
    out = run_example("dep_http_client.py")
    assert "Ada spent 19.50 EUR\none run, three requests: 1 client set up\n" in out
    assert "['Ada spent 19.50 EUR', 'Grace spent 3.00 EUR']" in out
    assert "after a map of two items: 2 clients set up in all" in out


def test_batch_in_loop() -> None:
    out = run_example("batch_in_loop.py")
    assert "['W0', 'W1', 'W2', 'W3', 'W4', 'W5', 'W6', 'W7', 'W8', 'W9']" in out
    assert "warned: ['RunningLoopWarning']" in out
    assert "in async code, await the async form: ['W0', 'W1', 'W2']" in out


def test_kernel_client() -> None:
    out = run_example("kernel_client.py")
    assert out.splitlines() == [
        "[stdout] thinking",
        "result: 42",
        "error: ZeroDivisionError division by zero",
        "timed out: TimeoutError - namespace kept: x = 41",
        "kernel died with exit status 3",
        "restarted, fresh namespace: False",
    ]
