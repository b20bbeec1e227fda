"""plait visualize: a pipeline drawn as text, Mermaid, SVG and PNG.

A small document pipeline: fetch pages (an async node with retries, a timeout and a
rate limit), summarise each page with a nested pipeline mapped over the pages, and
join the summaries into a report. The picture shows the inputs (required, optional
with its default, bound with its value), each node's controls, the nested pipeline
as a cluster marked with what it maps over, and the edges named after their values.

    python examples/visualize.py [OUTDIR]

writes report.svg and report.png to OUTDIR (default: a new temporary directory).
Drawing needs the extra plait[viz] and Graphviz's dot program (make install has both).
"""

from __future__ import annotations

import asyncio
import struct
import sys
import tempfile
from pathlib import Path

from plait import Pipeline, node


@node(output_name="pages", retries=3, timeout=10, rate_limit="5/s")
async def fetch(urls: list[str], user_agent: str) -> list[str]:
    await asyncio.sleep(0.01)  # stands in for HTTP requests
    return [f"text of {url} " * 3 for url in urls]


@node(output_name="words")
def split(page: str) -> list[str]:
    return page.split()


@node(output_name=("count", "first"))
def summarise(words: list[str], limit: int = 5) -> tuple[int, str]:
    return len(words), " ".join(words[:limit])


per_page = Pipeline([split, summarise], name="per_page")


@node(output_name="report")
def join(counts: list[int], firsts: list[str], title: str = "Report") -> str:
    lines = [f"{title}: {sum(counts)} words"]
    lines += [f"- {first} ({count} words)" for count, first in zip(counts, firsts, strict=True)]
    return "\n".join(lines)


pipeline = Pipeline(
    [
        fetch,
        per_page.as_node(
            input_mapping={"pages": "page"},
            output_mapping={"count": "counts", "first": "firsts"},
            map_over="pages",
            name="summaries",
        ),
        join,
    ],
    name="report",
).bind(user_agent="plait-example/1.0")


def main(outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    print(pipeline.run({"urls": ["a.html", "b.html"]})["report"])
    print()
    print(pipeline.to_mermaid(), end="")
    print()
    svg, png = outdir / "report.svg", outdir / "report.png"
    pipeline.visualize(svg)
    pipeline.visualize(png, orient="LR")
    width, height = struct.unpack(">II", png.read_bytes()[16:24])  # the PNG's IHDR
    print(f"wrote {svg} ({svg.stat().st_size} bytes)")
    print(f"wrote {png} ({width}x{height} pixels)")
    print(f"only what 'pages' needs: {pipeline.to_dot(output_name='pages').count(' -> ')} edges")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="plait-")))
