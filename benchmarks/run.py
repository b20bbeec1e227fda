"""Run plait's benchmarks, print one table and write ``benchmarks/results.json``.

Usage: ``python benchmarks/run.py [MODULE ...]``; with no argument every module in
:data:`MODULES` runs. Each module exposes ``run() -> list[Row]``.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import plait
from harness import Row

# Worker processes (Daft's use_process, Dask's, Ray's) unpickle the benchmarks' nodes by
# reference: they import these modules, so they need this folder on their path too.
_HERE = str(Path(__file__).resolve().parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_HERE, os.environ.get("PYTHONPATH", "")) if p
)

#: Benchmark modules by the short name the command line selects them with.
MODULES = {
    "core": "bench_core",
    "map": "bench_map",
    "cache": "bench_cache",
    "cache_store": "bench_cache_store",
    "bridge": "bench_bridge",
    "llm": "bench_llm",
    "batch": "bench_batch",
    "distributed": "bench_distributed",
    "daft": "bench_daft",
}
RESULTS = Path(__file__).with_name("results.json")
COLUMNS = ("benchmark", "plait", "lower bound", "ratio", "overhead", "target", "result")


def number(value: float) -> str:
    """``value`` to three significant digits, without an exponent."""
    if value == 0:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{digits}f}"


def with_unit(value: float, unit: str) -> str:
    """``value`` and its unit, as the table shows them."""
    return f"{number(value)}{unit}" if unit == "×" else f"{number(value)} {unit}"


def cells(item: Row) -> tuple[str, ...]:
    """One table line for ``item``."""
    overhead = item["overhead"]
    ok = item["ok"]
    return (
        item["name"],
        with_unit(item["value"], item["unit"]),
        with_unit(item["baseline"], item["unit"]),
        number(item["ratio"]),
        "" if overhead is None else f"{'+' if overhead >= 0 else '-'}{number(abs(overhead))}",
        item["target"] or "",
        "" if ok is None else "PASS" if ok else "MISS",
    )


def table(rows: list[Row]) -> str:
    """The rows as an aligned text table."""
    lines = [COLUMNS, *(cells(item) for item in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    text = []
    for line in lines:
        padded = [cell.rjust(w) for cell, w in zip(line, widths, strict=True)]
        padded[0] = line[0].ljust(widths[0])  # names left-aligned, figures right-aligned
        text.append("  ".join(padded).rstrip())
    text.insert(1, "-" * max(len(t) for t in text))
    return "\n".join(text)


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "plait": plait.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(selected: list[str]) -> int:
    """Run the ``selected`` modules (all when empty); return the exit status."""
    unknown = [name for name in selected if name not in MODULES]
    if unknown:
        choices = ", ".join(MODULES)
        print(
            f"unknown benchmark module {', '.join(unknown)}; choose from {choices}", file=sys.stderr
        )
        return 2
    rows: list[Row] = []
    for name in selected or MODULES:
        start = time.perf_counter()
        rows += importlib.import_module(MODULES[name]).run()
        print(f"ran {name} in {time.perf_counter() - start:.1f} s", flush=True)
    info = machine()
    print(f"Python {info['python']} on {info['platform']}, {info['cpu_count']} CPUs")
    print("Medians of interleaved repeats; ratio = plait / lower bound, overhead = plait - lower")
    print("bound in the row's unit; a growth row's lower bound is the raw code's own growth.")
    print(table(rows))
    RESULTS.write_text(json.dumps({"machine": info, "rows": rows}, indent=2, ensure_ascii=False))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
