"""Functions compiled from generated source, for the hot paths of a plan."""

from __future__ import annotations

from typing import Any


def make_function(name: str, lines: list[str], namespace: dict[str, Any], filename: str) -> Any:
    """The function ``name`` that ``lines`` define, with ``namespace`` as its globals;
    tracebacks through it name ``filename``."""
    exec(compile("\n".join(lines), filename, "exec"), namespace)
    return namespace[name]
