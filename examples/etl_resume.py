"""An ETL map with a DiskCache, killed half way with SIGKILL and run again: it resumes.

The first run is a child process that extracts, transforms and loads 40 records
(50 ms each), and is killed once at least 10 are done. The second run, with the
same cache directory, takes the finished records from the cache and computes only
the rest.

python examples/etl_resume.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from plait import DiskCache, Pipeline, node

RECORDS = 40


@node(output_name="record")
def extract(line: str) -> dict[str, object]:
    return json.loads(line)


@node(output_name="row")
def transform(record: dict[str, object], log: str) -> tuple[object, ...]:
    time.sleep(0.05)  # the slow part: an API call, a model, a parser
    with open(log, "a") as file:  # what was really computed, for this example to count
        file.write(f"{record['id']}\n")
    return (record["id"], str(record["name"]).title())


def pipeline(workdir: Path) -> Pipeline:
    return Pipeline([extract, transform], name="etl", cache=DiskCache(workdir / "cache"))


def run(workdir: Path) -> list[dict[str, object]]:
    lines = [json.dumps({"id": i, "name": f"user {i}"}) for i in range(RECORDS)]
    log = str(workdir / "computed.log")
    return pipeline(workdir).map(inputs={"line": lines, "log": log}, map_over="line")


def computed(workdir: Path) -> int:
    log = workdir / "computed.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        child = subprocess.Popen([sys.executable, __file__, "--run", tmp])
        deadline = time.monotonic() + 30
        while computed(workdir) < 10 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        child.kill()  # SIGKILL: no cleanup, no chance to save anything more
        child.wait()
        first = computed(workdir)
        print(f"first run: killed after {first} of {RECORDS} records")

        start = time.perf_counter()
        rows = run(workdir)
        again = computed(workdir) - first
        print(f"second run: {RECORDS - again} records from the cache, {again} computed,")
        print(f"  in {time.perf_counter() - start:.2f} s (all {RECORDS} would take ~2 s)")
        assert [row["row"] for row in rows] == [(i, f"User {i}") for i in range(RECORDS)]
        assert again <= RECORDS - first + 1  # the record in flight at the kill may run twice
        print(f"resumed: {len(rows)} rows, in order")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--run"]:
        run(Path(sys.argv[2]))
    else:
        main()
