"""examples/session_cells.py runs end to end as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_session_cells_example() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(ROOT / "examples" / "session_cells.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[1] == "[2] value=42"
    assert lines[2].startswith("[3] value=None stdout='slept without freezing the loop\\n'")
    assert int(lines[2].rsplit("=", 1)[1]) >= 10  # about 30 ticks of 10 ms in 0.3 s
    assert lines[3] == "[4] value=82"
    assert '  File "<cell-5>", line 2, in ratio' in lines
    assert lines[-1] == (
        "[6] TimeoutError('the cell did not finish within its timeout of 0.2 s'), n kept: True"
    )
