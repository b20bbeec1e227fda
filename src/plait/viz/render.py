"""Drawing DOT text with Graphviz (extra ``plait[viz]``), and what Jupyter displays."""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Container
from typing import Any

MISSING = (
    "drawing a pipeline needs Graphviz: the graphviz Python package (pip install "
    "'plait[viz]') and its `dot` program (Debian/Ubuntu: apt-get install graphviz; "
    "macOS: brew install graphviz). Without them, to_dot() and to_mermaid() give the "
    "picture as text."
)


def graphviz_module() -> Any:
    """The graphviz package, once both it and ``dot`` are installed; else ImportError."""
    try:
        import graphviz  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise ImportError(f"{MISSING} The graphviz package is not installed.") from None
    if shutil.which("dot") is None:
        raise ImportError(f"{MISSING} No `dot` program is on PATH.")
    return graphviz


def available() -> bool:
    """Whether :func:`source` can draw."""
    try:
        graphviz_module()
    except ImportError:
        return False
    return True


def source(dot: str, format: str) -> Any:
    """A ``graphviz.Source`` of ``dot`` set to render ``format`` (it displays in Jupyter)."""
    graphviz = graphviz_module()
    if format not in graphviz.FORMATS:
        raise ValueError(
            f"format {format!r} is not one Graphviz renders; use 'svg' or 'png' "
            "(or another of graphviz.FORMATS)"
        )
    return graphviz.Source(dot, format=format)


def write(drawing: Any, filename: str | os.PathLike[str]) -> pathlib.Path:
    """Render ``drawing`` (a ``graphviz.Source``) to exactly ``filename``."""
    path = pathlib.Path(filename)
    path.write_bytes(drawing.pipe())
    return path


def format_for(filename: str | os.PathLike[str] | None, format: str | None) -> str:
    """The format asked for, else the filename's suffix, else SVG."""
    if format is not None:
        return format
    suffix = pathlib.Path(filename).suffix.lstrip(".").lower() if filename is not None else ""
    return suffix or "svg"


def mimebundle(
    dot: str,
    mermaid: str,
    text: str,
    include: Container[str] | None = None,
    exclude: Container[str] | None = None,
) -> dict[str, str]:
    """What Jupyter shows: the SVG when Graphviz is there, else the Mermaid text as
    Markdown (JupyterLab 4.1+ and GitHub draw it); always a plain-text form."""
    bundle = {"text/plain": text}
    if available():
        bundle["image/svg+xml"] = source(dot, "svg").pipe(encoding="utf-8")
    else:
        bundle["text/markdown"] = f"```mermaid\n{mermaid}```\n"
    return {
        kind: value
        for kind, value in bundle.items()
        if (include is None or kind in include) and (exclude is None or kind not in exclude)
    }
