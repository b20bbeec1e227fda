"""What code inside a run sees of the run it is in: :data:`ENCLOSING`.

A pipeline given an engine always runs on it. One without runs on the engine of
the run that calls it (a nested pipeline, or ``await other.arun()`` inside a
node), found here, so nesting never multiplies executors; top-level work uses
the default engine. A nested run also inherits the enclosing run's callbacks
scope and cache, and knows the map item it runs in. The engine writes this
record when it starts a run or a map item; the pipeline reads it.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from plait.cache.stores import CacheStore
    from plait.callbacks.dispatch import Scope
    from plait.engine.base import Engine


class Enclosing(NamedTuple):
    """The run or map item the current code runs in (a tuple: one is made per map item)."""

    #: The engine that pipelines without one of their own run on, from here.
    engine: Engine | None = None
    map_depth: int = 0  # how many maps enclose this code
    map_width: int = 1  # items in flight in the innermost enclosing map
    #: The enclosing run's (or map's) callbacks scope, inherited by nested runs.
    scope: Scope | None = None
    #: The enclosing run's cache, used by nested pipelines that have none.
    cache: CacheStore | None = None
    #: The map item this code runs in, when it runs in one.
    item: int | None = None


#: What code outside any run sees.
TOP = Enclosing()

ENCLOSING: ContextVar[Enclosing] = ContextVar("plait_enclosing", default=TOP)

#: Set by a nested pipeline's node while it runs the inner pipeline: the node's name.
NESTED_NODE: ContextVar[str | None] = ContextVar("plait_nested_node", default=None)
