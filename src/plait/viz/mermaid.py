"""A figure as Mermaid flowchart text, for Markdown pages and GitHub."""

from __future__ import annotations

from plait.viz.figure import Cluster, Figure, Kind
from plait.viz.labels import joined

#: Node shapes: the text around a label.
SHAPES: dict[Kind, tuple[str, str]] = {
    "input": ("([", "])"),
    "optional": ("([", "])"),
    "bound": ("([", "])"),
    "sync": ("(", ")"),
    "async": ("(", ")"),
    "pipeline": ("[[", "]]"),
    "port": (">", "]"),
    "output": ("[/", "/]"),
}

CLASSES: dict[Kind, str] = {
    "input": "fill:#dbe9f9,stroke:#4a78b0",
    "optional": "fill:#eef4fc,stroke:#4a78b0,stroke-dasharray:4 3",
    "bound": "fill:#e6e6e6,stroke:#7a7a7a",
    "sync": "fill:#fdf0cf,stroke:#b08a2e",
    "async": "fill:#d9f2de,stroke:#3d8f52",
    "pipeline": "fill:#ede3f7,stroke:#7a56a3",
    "port": "fill:#ffffff,stroke:#7a56a3",
    "output": "fill:#f7e1e6,stroke:#a34a62",
}


#: Characters Mermaid would parse inside a label, as its entity codes ("#" first).
ENTITIES = (
    ("#", "#35;"),
    ("&", "#amp;"),
    ('"', "#quot;"),
    ("<", "#lt;"),
    (">", "#gt;"),
    ("|", "#124;"),
)


def to_mermaid(figure: Figure) -> str:
    """The Mermaid text of ``figure``."""
    ids: dict[str, str] = {}  # figure ids -> Mermaid ids (letters and digits only)
    lines = [f"flowchart {figure.orient}"]
    _cluster_body(figure.top, lines, "    ", ids)
    for edge in figure.edges:
        arrow = "-.->" if edge.dep else "-->"
        label = f"|{_text(edge.label)}|" if edge.label else ""
        lines.append(f"    {ids[edge.source]} {arrow}{label} {ids[edge.target]}")
    used = dict.fromkeys(box.kind for box in figure.top.walk())
    lines.extend(f"    classDef {kind} {CLASSES[kind]}" for kind in used)
    return "\n".join(lines) + "\n"


def _cluster_body(cluster: Cluster, lines: list[str], indent: str, ids: dict[str, str]) -> None:
    for box in cluster.boxes:
        ids[box.id] = f"n{len(ids)}"
        opening, closing = SHAPES[box.kind]
        label = _label(box.title, box.details)
        lines.append(f'{indent}{ids[box.id]}{opening}"{label}"{closing}:::{box.kind}')
    for sub in cluster.clusters:
        ids[sub.id] = f"c{len(ids)}"
        lines.append(f'{indent}subgraph {ids[sub.id]}["{_label(sub.title, sub.details)}"]')
        _cluster_body(sub, lines, indent + "    ", ids)
        lines.append(f"{indent}end")


def _label(title: str, details: tuple[str, ...]) -> str:
    text = f"<b>{_text(title)}</b>"
    for line in joined(details):
        text += f"<br/><small>{_text(line)}</small>"
    return text


def _text(text: str) -> str:
    """Text safe inside a quoted Mermaid label (entity codes for what Mermaid parses)."""
    for char, code in ENTITIES:
        text = text.replace(char, code)
    return text
