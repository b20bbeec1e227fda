"""A figure as plain text: inputs, nodes in the order they run, outputs."""

from __future__ import annotations

from plait.viz.figure import Box, Cluster, Figure

#: How each kind of input box is described.
INPUT_WORDS = {
    "input": "required",
    "optional": "optional",
    "bound": "bound",
    "port": "from outside",
}


def to_text(figure: Figure) -> str:
    """The text of ``figure``, nested pipelines indented under their node."""
    lines = [f"Pipeline {figure.top.title!r}"]
    _cluster_body(figure.top, lines, "")
    outputs = [box.title for box in figure.top.boxes if box.kind == "output"]
    lines.append(f"outputs: {', '.join(outputs)}")
    return "\n".join(lines) + "\n"


def _cluster_body(cluster: Cluster, lines: list[str], indent: str) -> None:
    inputs = [box for box in cluster.boxes if box.kind in INPUT_WORDS]
    if inputs:
        lines.append(f"{indent}inputs:")
        width = max(len(_input(box)) for box in inputs)
        for box in inputs:
            words = ", ".join((INPUT_WORDS[box.kind], *(box.details if box.kind == "port" else ())))
            lines.append(f"{indent}  {_input(box):<{width}}  {words}")
    lines.append(f"{indent}nodes:")
    for item in cluster.items:
        if isinstance(item, Cluster):
            lines.append(f"{indent}  {item.title}{_details(item.details)}")
            _cluster_body(item, lines, indent + "    ")
        elif item.kind in ("sync", "async", "pipeline"):
            lines.append(f"{indent}  {item.signature}{_details(item.details)}")


def _details(details: tuple[str, ...]) -> str:
    return f"  [{', '.join(details)}]" if details else ""


def _input(box: Box) -> str:
    """An input's name, with its default or bound value."""
    return box.title if box.kind == "port" else " ".join((box.title, *box.details))
