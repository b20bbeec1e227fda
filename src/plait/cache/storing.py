"""What the engine is storing in a cache right now, so that a store's warning can name it."""

from __future__ import annotations

from contextvars import ContextVar

#: Set by the engine around ``CacheStore.set``: the node's name and the map item (or
#: None). A store only reads it to say, in a warning, whose result it could not keep.
STORING: ContextVar[tuple[str, int | None] | None] = ContextVar("plait_storing", default=None)


def storing_label() -> str:
    """``"node 'fetch' (map item 3): "`` while the engine stores a result; else ``""``."""
    what = STORING.get()
    if what is None:
        return ""
    name, item = what
    return f"node {name!r}: " if item is None else f"node {name!r} (map item {item}): "
