"""Every example runs end to end as a real subprocess."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SLOW_STEP = re.compile(r"Executing <.*> took \d+\.\d+ seconds")


def run_example(name: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(EXAMPLES / name), *args],
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


# What each example prints, in part: every phrase must appear.
PRINTS = {
    "demo.py": [
        "Ada     19.50 EUR",
        "Grace    3.00 EUR",
        "the second run took all 5 nodes from the cache",
        "run() (concurrent)",
        "await arun()",
        "sequential engine",
        "threaded engine",
        "DiskCache, second run",
        "plait.batch: 9 GETs",
        "Selected output only: {'users': [{'id': 1, 'name': 'Ada'}",
    ],
    "llm_fanout.py": [
        "200 answers (1400 words)",
        ", 0 answered twice",
        "every retry after a 429 waited >= Retry-After: True",
        "second run: 200 answers",
        "0 new requests (all from the cache)",
        "map 'llm' 200/200 items (100.0%)",
    ],
    "nested_map.py": [
        "one corpus: {'counts': [4, 2, 3], 'longests': ['quick', 'jumps', 'lazy'], 'total': 9}",
        "corpus 1: [2, 4] words per document, 6 in all",
    ],
    "dep_http_client.py": [
        "Ada spent 19.50 EUR\none run, three requests: 1 client set up\n",
        "['Ada spent 19.50 EUR', 'Grace spent 3.00 EUR']",
        "after a map of two items: 2 clients set up in all",
    ],
    "batch_in_loop.py": [
        "['W0', 'W1', 'W2', 'W3', 'W4', 'W5', 'W6', 'W7', 'W8', 'W9']",
        "warned: ['RunningLoopWarning']",
        "in async code, await the async form: ['W0', 'W1', 'W2']",
    ],
    "batch_embeddings.py": [
        "batch form: 400 vectors from 7 requests (largest 64 texts)",
        "single form: 400 requests",
        "same vectors, same order: True",
    ],
    "kernel_client.py": [
        "[stdout] thinking\n"
        "result: 42\n"
        "error: ZeroDivisionError division by zero\n"
        "timed out: TimeoutError - namespace kept: x = 41\n"
        "kernel died with exit status 3\n"
        "restarted, fresh namespace: False\n"
    ],
}


@pytest.mark.parametrize("name", PRINTS)
def test_example_prints_what_it_shows(name: str) -> None:
    out = run_example(name)
    missing = [phrase for phrase in PRINTS[name] if phrase not in out]
    assert missing == [], out


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


def test_visualize(tmp_path: Path) -> None:
    out = run_example("visualize.py", str(tmp_path))
    assert out.startswith("Report: 18 words\n- text of a.html text of (9 words)\n")
    assert "flowchart TB\n" in out
    assert "subgraph c7[\"<b>summaries</b><br/><small>pipeline 'per_page' · map over pages" in out
    assert "only what 'pages' needs: 3 edges" in out
    svg = ET.parse(tmp_path / "report.svg").getroot()
    clusters = [g for g in svg.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "cluster"]
    assert len(clusters) == 1
    png = (tmp_path / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    width, height = struct.unpack(">II", png[16:24])
    assert f"wrote {tmp_path / 'report.png'} ({width}x{height} pixels)" in out
    assert width > 2 * height  # drawn left to right
