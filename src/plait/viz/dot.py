"""A figure as Graphviz DOT text, with HTML-like labels (no dependency)."""

from __future__ import annotations

import html

from plait.viz.figure import Box, Cluster, Edge, Figure, Kind
from plait.viz.labels import joined

FONT = "Helvetica,Arial,sans-serif"

#: How each kind of box looks: DOT node attributes.
STYLES: dict[Kind, str] = {
    "input": 'shape=ellipse, style=filled, fillcolor="#dbe9f9", color="#4a78b0"',
    "optional": 'shape=ellipse, style="filled,dashed", fillcolor="#eef4fc", color="#4a78b0"',
    "bound": 'shape=ellipse, style=filled, fillcolor="#e6e6e6", color="#7a7a7a"',
    "sync": 'shape=box, style="rounded,filled", fillcolor="#fdf0cf", color="#b08a2e"',
    "async": 'shape=box, style="rounded,filled", fillcolor="#d9f2de", color="#3d8f52"',
    "pipeline": 'shape=box3d, style=filled, fillcolor="#ede3f7", color="#7a56a3"',
    "port": 'shape=cds, style=filled, fillcolor="#ffffff", color="#7a56a3"',
    "output": 'shape=note, style=filled, fillcolor="#f7e1e6", color="#a34a62"',
}


def to_dot(figure: Figure) -> str:
    """The DOT text of ``figure``."""
    lines = [
        "digraph {",
        f"  graph [rankdir={figure.orient}, fontname={_quote(FONT)}, fontsize=12, "
        f"labelloc=t, label=<{_label(figure.top.title, figure.top.details)}>];",
        f'  node [fontname={_quote(FONT)}, fontsize=11, margin="0.15,0.06"];',
        f'  edge [fontname={_quote(FONT)}, fontsize=9, color="#555555"];',
    ]
    _cluster_body(figure.top, lines, "  ")
    lines.extend(f"  {_edge(edge)}" for edge in figure.edges)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _cluster_body(cluster: Cluster, lines: list[str], indent: str) -> None:
    lines.extend(f"{indent}{_box(box)}" for box in cluster.boxes)
    for sub in cluster.clusters:
        lines.append(f"{indent}subgraph {_quote('cluster:' + sub.id)} {{")
        lines.append(
            f'{indent}  graph [label=<{_label(sub.title, sub.details)}>, style="rounded,dashed", '
            'color="#7a56a3", labeljust=l];'
        )
        _cluster_body(sub, lines, indent + "  ")
        lines.append(f"{indent}}}")


def _box(box: Box) -> str:
    return f"{_quote(box.id)} [label=<{_label(box.title, box.details)}>, {STYLES[box.kind]}];"


def _edge(edge: Edge) -> str:
    attributes = []
    if edge.label:
        attributes.append(f"label=<{html.escape(edge.label, quote=False)}>")
    if edge.dep:
        attributes.append("style=dashed")
    shown = f" [{', '.join(attributes)}]" if attributes else ""
    return f"{_quote(edge.source)} -> {_quote(edge.target)}{shown};"


def _label(title: str, details: tuple[str, ...]) -> str:
    """A bold title over small detail lines, as a DOT HTML-like label."""
    text = f"<B>{html.escape(title, quote=False)}</B>"
    for line in joined(details):
        text += f'<BR/><FONT POINT-SIZE="9">{html.escape(line, quote=False)}</FONT>'
    return text


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
