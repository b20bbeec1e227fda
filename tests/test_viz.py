"""Pictures of pipelines: DOT and SVG parsed back, Mermaid, text, a PNG, Jupyter."""

from __future__ import annotations

import html
import json
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from plait import Dep, Pipeline, UnknownOutputError, node
from plait.viz import render

SVG = "{http://www.w3.org/2000/svg}"


@node(output_name="tokens")
def tokenize(text: str) -> list[str]:
    return text.split()


@node(output_name=("count", "longest"))
def count(tokens: list[str], minimum: int = 1) -> tuple[int, str]:
    return max(len(tokens), minimum), max(tokens, key=len)


@node(output_name="texts", retries=3, timeout=30, rate_limit="20/s", max_concurrent=8)
async def fetch(urls: list[str], model: str = "small") -> list[str]:
    return [f"{u} {model}" for u in urls]


@node(output_name="total")
def total(counts: list[int], scale: int = 2) -> int:
    return sum(counts) * scale


def report() -> Pipeline:
    per_doc = Pipeline([tokenize, count], name="per_doc")
    docs = per_doc.as_node(
        input_mapping={"texts": "text"},
        map_over="texts",
        output_mapping={"count": "counts"},
        name="docs",
    )
    return Pipeline([fetch, docs, total], name="report").bind(model="big")


def parse_dot(text: str) -> dict[str, Any]:
    """Graphviz's own parser reads the DOT; its JSON gives nodes, edges and clusters."""
    out = subprocess.run(
        ["dot", "-Tjson0"], input=text, capture_output=True, text=True, check=True
    ).stdout
    graph = json.loads(out)
    objects = graph["objects"]
    nodes = {o["name"]: plain(o["label"]) for o in objects if "nodes" not in o}
    clusters = {
        o["name"]: {objects[i]["name"] for i in o["nodes"]} for o in objects if "nodes" in o
    }
    edges = {
        (objects[e["tail"]]["name"], objects[e["head"]]["name"]): (
            plain(e.get("label", "")),
            e.get("style", ""),
        )
        for e in graph.get("edges", [])
    }
    return {"label": plain(graph.get("label", "")), "nodes": nodes, "clusters": clusters,
            "edges": edges, "rankdir": graph.get("rankdir", "TB")}  # fmt: skip


def plain(label: str) -> str:
    """An HTML-like label as text: lines joined by ' | '."""
    text = re.sub(r"<BR/>", " | ", label)
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def test_dot_shows_inputs_nodes_outputs_and_edges() -> None:
    dot = parse_dot(report().to_dot())
    nodes = dot["nodes"]
    assert dot["label"] == "report"
    assert nodes["in:urls"] == "urls"  # required
    assert nodes["in:model"] == "model | = 'big'"  # bound, with its value
    assert nodes["in:scale"] == "scale | = 2"  # optional, with its default
    assert nodes["in:minimum"] == "minimum | = 1"  # optional inside the nested pipeline
    assert nodes["node:fetch"] == (
        "fetch | async · max_concurrent=8 · retries=3 | timeout=30 · rate_limit=20/s"
    )
    assert nodes["node:total"] == "total | sync"
    assert nodes["out:total"] == "total"
    edges = dot["edges"]
    assert edges["in:urls", "node:fetch"] == ("", "")
    assert edges["node:fetch", "docs/in:text"] == ("texts", "")
    assert edges["docs/node:tokenize", "docs/node:count"] == ("tokens", "")
    assert edges["docs/node:count", "node:total"] == ("counts (list)", "")  # a mapped output
    assert edges["node:total", "out:total"] == ("", "")
    assert len(edges) == 10


def test_a_nested_pipeline_is_a_cluster_marked_with_what_it_maps_over() -> None:
    dot = parse_dot(report().to_dot())
    assert dot["clusters"] == {
        "cluster:docs": {"docs/in:text", "docs/in:minimum", "docs/node:tokenize", "docs/node:count"}
    }
    assert dot["nodes"]["docs/in:text"] == "texts → text | each item"
    assert dot["nodes"]["docs/node:count"] == "count | sync"
    # The cluster's own label (a subgraph's attributes are on its object).
    assert "map over texts" in report().to_dot()


def test_depth_zero_draws_a_nested_pipeline_as_one_box() -> None:
    dot = parse_dot(report().to_dot(depth=0))
    assert dot["clusters"] == {}
    assert dot["nodes"]["node:docs"] == "docs | pipeline 'per_doc' · map over texts"
    assert dot["edges"]["node:fetch", "node:docs"] == ("texts", "")
    assert dot["edges"]["node:docs", "node:total"] == ("counts", "")


def test_depth_counts_levels_of_nesting() -> None:
    inner = Pipeline([tokenize], name="inner")
    middle = Pipeline([inner.as_node(name="tok"), count], name="middle")
    outer = Pipeline([middle.as_node(name="mid")])
    assert set(parse_dot(outer.to_dot(depth=1))["clusters"]) == {"cluster:mid"}
    assert "mid/node:tok" in parse_dot(outer.to_dot(depth=1))["nodes"]
    deep = parse_dot(outer.to_dot(depth=None))
    assert set(deep["clusters"]) == {"cluster:mid", "cluster:mid/tok"}
    assert deep["clusters"]["cluster:mid/tok"] == {"mid/tok/in:text", "mid/tok/node:tokenize"}
    assert deep["edges"]["mid/tok/node:tokenize", "mid/node:count"] == ("tokens", "")


def test_output_name_draws_only_the_nodes_that_run() -> None:
    dot = parse_dot(report().to_dot(output_name="texts"))
    assert set(dot["nodes"]) == {"in:urls", "in:model", "node:fetch", "out:texts"}
    assert dot["clusters"] == {}
    with pytest.raises(UnknownOutputError, match="Did you mean 'total'"):
        report().to_dot(output_name="totl")


def test_tuple_outputs_each_get_an_edge_or_an_output() -> None:
    pipeline = Pipeline([tokenize, count])
    dot = parse_dot(pipeline.to_dot())
    assert {"out:count", "out:longest"} <= set(dot["nodes"])
    assert dot["edges"]["node:count", "out:count"] == ("", "")
    assert dot["edges"]["node:count", "out:longest"] == ("", "")
    assert "count(tokens, minimum=1) → (count, longest)" in render_text(pipeline)


def render_text(pipeline: Pipeline) -> str:
    from plait.viz import figure, to_text

    return to_text(figure(pipeline))


def test_controls_are_read_from_the_node_options() -> None:
    def client() -> object:
        return object()

    pool = ThreadPoolExecutor(1)
    pool.shutdown()

    @node(
        output_name="y",
        executor=pool,
        retry_on=(ConnectionError, TimeoutError),
        backoff=lambda attempt: 0.5,
        cache=False,
    )
    def work(x: int, session: object = Dep(client)) -> int:
        return x

    label = parse_dot(Pipeline([work]).to_dot())["nodes"]["node:work"]
    assert label.replace(" | ", " · ") == (
        "work · sync · executor=ThreadPoolExecutor · retry_on=(ConnectionError, TimeoutError)"
        " · backoff=<lambda> · cache=False · deps: session"
    )


def test_dep_inputs_are_dashed_edges() -> None:
    def client(base_url: str) -> str:
        return base_url

    @node(output_name="y")
    def get(path: str, session: str = Dep(client)) -> str:
        return session + path

    dot = parse_dot(Pipeline([get]).to_dot())
    assert dot["edges"]["in:base_url", "node:get"] == ("", "dashed")
    assert dot["edges"]["in:path", "node:get"] == ("", "")


def test_labels_are_escaped() -> None:
    @node(output_name="y", name='a "quoted" <name> & more')
    def f(x: str = "<b>&") -> str:
        return x

    dot = parse_dot(Pipeline([f]).to_dot())
    assert dot["nodes"]['node:a "quoted" <name> & more'] == 'a "quoted" <name> & more | sync'
    assert dot["nodes"]["in:x"] == "x | = '<b>&'"
    mermaid = Pipeline([f]).to_mermaid()
    assert "#quot;quoted#quot; #lt;name#gt; #amp; more" in mermaid


def test_rate_limits_read_as_they_are_written() -> None:
    from plait.options import RateLimit

    assert [str(RateLimit(20, p)) for p in (1.0, 60.0, 3600.0, 10.0, 0.4)] == [
        "20/s",
        "20/min",
        "20/h",
        "20/10s",
        "20/0.4s",
    ]


def test_orient_and_bad_arguments() -> None:
    assert parse_dot(report().to_dot(orient="LR"))["rankdir"] == "LR"
    assert report().to_mermaid(orient="LR").startswith("flowchart LR\n")
    with pytest.raises(ValueError, match="orient must be one of 'TB', 'LR', 'BT', 'RL', got 'up'"):
        report().to_dot(orient="up")
    with pytest.raises(ValueError, match="depth must be an int >= 0 .* or None .*got -1"):
        report().to_dot(depth=-1)


def test_mermaid_has_the_same_boxes_edges_and_subgraphs() -> None:
    text = report().to_mermaid()
    lines = text.splitlines()
    assert lines[0] == "flowchart TB"
    boxes = {
        (title, kind): id_
        for id_, title, kind in re.findall(r'^\s+(n\d+)\S*"<b>([^<]+)</b>.*:::(\w+)$', text, re.M)
    }
    assert len(boxes) == 11
    fetch, port = boxes["fetch", "async"], boxes["texts → text", "port"]
    count_, total_ = boxes["count", "sync"], boxes["total", "sync"]
    assert f"    {fetch} -->|texts| {port}" in lines
    assert f"    {count_} -->|counts (list)| {total_}" in lines
    assert f"    {total_} --> {boxes['total', 'output']}" in lines
    assert sum("-->" in line for line in lines) == 10
    subgraphs = [line.strip() for line in lines if line.strip().startswith("subgraph ")]
    assert len(subgraphs) == 1
    assert "map over texts" in subgraphs[0]
    inside = lines[lines.index(f"    {subgraphs[0]}") + 1 : lines.index("    end")]
    assert len(inside) == 4
    assert all(line.startswith("        n") for line in inside)
    assert "    classDef async fill:#d9f2de,stroke:#3d8f52" in lines


def test_text_lists_inputs_nodes_and_outputs() -> None:
    assert render_text(report()) == (
        "Pipeline 'report'\n"
        "inputs:\n"
        "  urls           required\n"
        "  model = 'big'  bound\n"
        "  minimum = 1    optional\n"
        "  scale = 2      optional\n"
        "nodes:\n"
        "  fetch(urls, model='small') → texts  [async, max_concurrent=8, retries=3, timeout=30,"
        " rate_limit=20/s]\n"
        "  docs  [pipeline 'per_doc', map over texts]\n"
        "    inputs:\n"
        "      texts → text  from outside, each item\n"
        "      minimum       from outside\n"
        "    nodes:\n"
        "      tokenize(text) → tokens  [sync]\n"
        "      count(tokens, minimum=1) → (count, longest)  [sync]\n"
        "  total(counts, scale=2) → total  [sync]\n"
        "outputs: total\n"
    )


# --- drawn by Graphviz ---------------------------------------------------------------


def test_the_svg_has_the_nodes_edges_and_cluster(tmp_path: Path) -> None:
    path = tmp_path / "report.svg"
    drawing = report().visualize(path)
    assert drawing.format == "svg"
    root = ET.parse(path).getroot()
    groups = {
        kind: [g.findtext(f"{SVG}title") for g in root.iter(f"{SVG}g") if g.get("class") == kind]
        for kind in ("node", "edge", "cluster")
    }
    assert groups["cluster"] == ["cluster:docs"]
    assert len(groups["node"]) == 11
    assert "node:fetch->docs/in:text" in groups["edge"]
    assert len(groups["edge"]) == 10
    texts = [t.text for t in root.iter(f"{SVG}text")]
    for shown in ("fetch", "async · max_concurrent=8 · retries=3", "= 'big'", "counts (list)"):
        assert shown in texts


def test_a_png_is_rendered(tmp_path: Path) -> None:
    path = tmp_path / "report.png"
    report().visualize(path, orient="LR")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 400  # left to right: nine boxes side by side
    assert height > 100
    assert len(data) > 10_000


def test_format_follows_the_filename_or_is_given(tmp_path: Path) -> None:
    assert report().visualize().format == "svg"
    assert report().visualize(format="png").format == "png"
    report().visualize(tmp_path / "x.pdf")
    assert (tmp_path / "x.pdf").read_bytes().startswith(b"%PDF")
    with pytest.raises(ValueError, match="format 'jpgg' is not one Graphviz renders"):
        report().visualize(format="jpgg")


def test_jupyter_shows_the_svg() -> None:
    bundle = report()._repr_mimebundle_()
    assert set(bundle) == {"image/svg+xml", "text/plain"}
    assert bundle["text/plain"].startswith("Pipeline('report', 3 nodes")
    root = ET.fromstring(bundle["image/svg+xml"])
    assert root.tag == f"{SVG}svg"
    assert report()._repr_mimebundle_(include={"text/plain"}) == {
        "text/plain": bundle["text/plain"]
    }


WITHOUT_GRAPHVIZ = """
import sys
sys.modules["graphviz"] = None  # as if not installed
from plait import Pipeline, node

@node(output_name="y")
def f(x):
    return x

pipeline = Pipeline([f])
bundle = pipeline._repr_mimebundle_()
print(sorted(bundle))
print(bundle["text/markdown"].splitlines()[0])
try:
    pipeline.visualize()
except ImportError as exc:
    print(exc)
"""


def test_without_graphviz_jupyter_shows_mermaid_and_visualize_says_what_to_install() -> None:
    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_GRAPHVIZ], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "['text/markdown', 'text/plain']"
    assert out[1] == "```mermaid"
    assert out[2] == f"{render.MISSING} The graphviz package is not installed."
    assert "pip install 'plait[viz]'" in out[2]
    assert "apt-get install graphviz" in out[2]


def test_without_dot_the_error_names_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert not render.available()
    with pytest.raises(ImportError, match="No `dot` program is on PATH"):
        report().visualize()


def test_the_pictures_in_docs_visualization_md_are_current() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "visualization.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    pipeline = namespace["pipeline"]
    (mermaid,) = re.findall(r"```mermaid\n(.*?)```", text, re.S)
    assert mermaid == pipeline.to_mermaid()
    (plain_text,) = re.findall(r"```\n(Pipeline 'report'.*?)```", text, re.S)
    assert plain_text == render_text(pipeline)
