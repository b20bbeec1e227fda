"""Mutation score per module from mutmut's results under mutants/ (`make mutation`).

Usage: python tools/mutation_scores.py [MODULE ...]   (dotted under plait, as MODULES)
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

KILLED = {"killed", "timeout", "caught by type check", "segfault"}


def main(modules: list[str]) -> None:
    print(f"{'module':34} {'killed/checked':>14} {'survived':>8} {'no tests':>8} {'unchecked':>9}")
    for meta in sorted(Path("mutants/src").rglob("*.py.meta")):
        module = ".".join(meta.relative_to("mutants/src").with_suffix("").with_suffix("").parts)
        if modules and module not in {f"plait.{m}" for m in modules}:
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        counts = Counter(status_by_exit_code[code] for code in codes)
        checked = len(codes) - counts["not checked"]
        if checked:
            killed = sum(counts[s] for s in KILLED)
            print(
                f"{module:34} {f'{killed}/{checked}':>14} {counts['survived']:>8}"
                f" {counts['no tests']:>8} {counts['not checked']:>9}"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
