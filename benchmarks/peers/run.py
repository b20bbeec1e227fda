"""``make bench-peers``: the same workloads in plait and in its peers, each in a venv of
its own with a pinned version from the package index, beside the raw-Python lower bound.

Usage: ``python benchmarks/peers/run.py [PEER ...]`` (default: all). Venvs are made once
under ``benchmarks/peers/.venvs/``; results go to ``benchmarks/peers/results.json`` and a
Markdown table is printed (the one in docs/performance.md). Not part of ``make test``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import venv
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import WORKLOADS

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
RESULTS = HERE / "results.json"

#: peer -> (pinned requirement, side module).
PEERS: dict[str, tuple[str, str]] = {
    "hypernodes": ("hypernodes==0.4.8", "side_hypernodes.py"),
    "pipefunc": ("pipefunc==0.93.2", "side_pipefunc.py"),
    "hamilton": ("apache-hamilton==1.90.0", "side_hamilton.py"),
    "daglite": ("daglite==0.8.0", "side_daglite.py"),
}


def peer_python(name: str, requirement: str) -> Path:
    """The interpreter of ``name``'s venv, made and filled on first use."""
    where = VENVS / name
    python = where / "bin" / "python"
    stamp = where / ".installed"
    if stamp.exists() and stamp.read_text() == requirement:
        return python
    print(f"making the {name} venv ({requirement})", file=sys.stderr, flush=True)
    venv.create(where, with_pip=True, clear=True)
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement],
        check=True,
    )
    stamp.write_text(requirement)
    return python


def side(python: Path | str, script: str) -> dict[str, Any]:
    """Run one side script; its last line of output is its JSON report."""
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    done = subprocess.run(
        [str(python), str(HERE / script)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def cell(result: dict[str, Any], workload: str, raw: float | None) -> str:
    """One table cell: the figure in the workload's unit, and its ratio to the raw bound."""
    if "unsupported" in result:
        return f"— ({result['unsupported']})"
    if "error" in result:
        return f"error: {result['error']}"
    _, unit, per = WORKLOADS[workload]
    value = result["seconds"] / per if unit != "×" else result["seconds"]
    shown = f"{value:.3g} {unit}" if unit != "×" else f"{value:.2f}×"
    if raw and unit != "×":
        shown += f" ({result['seconds'] / raw:.3g}×)"
    return shown


def table(reports: list[dict[str, Any]]) -> str:
    raw = next(r for r in reports if r["peer"] == "raw Python")["results"]
    head = ["workload", *(f"{r['peer']} {r['version']}" for r in reports)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for workload, (label, _, _) in WORKLOADS.items():
        bound = raw.get(workload, {}).get("seconds")
        cells = [cell(r["results"][workload], workload, bound) for r in reports]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def main(selected: list[str]) -> int:
    unknown = [name for name in selected if name not in PEERS]
    if unknown:
        print(f"unknown peer {', '.join(unknown)}; choose from {', '.join(PEERS)}", file=sys.stderr)
        return 2
    reports = [side(sys.executable, "side_raw.py"), side(sys.executable, "side_plait.py")]
    for name in selected or PEERS:
        requirement, script = PEERS[name]
        reports.append(side(peer_python(name, requirement), script))
    machine = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load": os.getloadavg(),
    }
    RESULTS.write_text(json.dumps({"machine": machine, "reports": reports}, indent=2))
    print(f"{machine['date']}, Python {machine['python']} on {machine['platform']}, ", end="")
    print(f"{machine['cpu_count']} CPUs, load average {machine['load'][0]:.1f} at the end")
    print("Medians; in brackets: the time over the raw-Python bound of the same workload.")
    print(table(reports))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
