"""Functions compiled from generated source, for the hot paths of a plan."""

from __future__ import annotations

import functools
from types import CodeType
from typing import Any


def make_function(name: str, lines: list[str], namespace: dict[str, Any], filename: str) -> Any:
    """The function ``name`` that ``lines`` define, with ``namespace`` as its globals;
    tracebacks through it name ``filename``."""
    exec(_compiled("\n".join(lines), filename), namespace)
    return namespace[name]


@functools.lru_cache(maxsize=256)
def _compiled(source: str, filename: str) -> CodeType:
    """``source`` compiled, once per process: the same pipeline mapped again (each map
    unpickles its own plan in a worker) or plans of the same shape reuse the code
    (compiling costs 50-100 µs per node; the functions a plan calls are globals)."""
    return compile(source, filename, "exec")
