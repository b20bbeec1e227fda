"""Print what Ray logged, after a Ray test run failed: ``python tools/ray_logs.py DIR``.

``make test-ray`` gives each run its own Ray temp directory (``RAY_TMPDIR``). A
driver whose raylet or GCS died exits at once with status 1 and prints nothing
(Ray's ``QuickExit``), so pytest reports nothing either: the reason is only in
these logs. Prints the last lines of each log of the raylet, the GCS, Ray's agents
and the drivers, and every error or fatal line of the workers' logs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

#: The logs whose last lines are printed whole.
TAILED = (
    "raylet.out",
    "raylet.err",
    "gcs_server.out",
    "gcs_server.err",
    "dashboard_agent.log",
    "runtime_env_agent.log",
    "python-core-driver-*.log",
)
#: Lines a log of Ray's C++ core writes for an error or a fatal condition.
SEVERE = re.compile(r"^\[[^\]]* [EF] \d+ \d+\]")
TAIL = 30


def report(temp_dir: Path) -> None:
    sessions = sorted(temp_dir.glob("ray/session_2*"))
    if not sessions:
        print(f"no Ray session in {temp_dir}")
    for session in sessions:
        logs = session / "logs"
        print(f"===== Ray session {session.name}")
        for pattern in TAILED:
            for log in sorted(logs.glob(pattern)):
                lines = log.read_text(errors="replace").splitlines()
                if lines:
                    print(f"--- {log.name} (last {min(TAIL, len(lines))} of {len(lines)} lines)")
                    print("\n".join(lines[-TAIL:]))
        for log in sorted(logs.glob("python-core-worker-*.log")):
            lines = log.read_text(errors="replace").splitlines()
            severe = [line for line in lines if SEVERE.match(line)]
            if severe:
                print(f"--- {log.name} (errors)")
                print("\n".join(severe[-TAIL:]))


if __name__ == "__main__":
    report(Path(sys.argv[1]))
