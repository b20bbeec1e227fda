"""Every example runs end to end as a real subprocess."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

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
