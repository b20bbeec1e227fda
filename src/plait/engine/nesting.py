"""Which engine a pipeline without its own engine runs on, and the nested-map budget.

A pipeline given an engine always runs on it. One without runs on the engine of
the run that calls it (a nested pipeline, or ``await other.arun()`` inside a
node), found through a contextvar, so nesting never multiplies executors. Maps
share one concurrency budget: a map nested inside an item of a map of N
concurrent items gets ⌊√N⌋ of them, and maps nested deeper run their items one
after another. Top-level work uses the default engine.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plait.cache.stores import CacheStore
    from plait.callbacks.dispatch import Scope
    from plait.engine.engine import Engine


@dataclass(frozen=True, slots=True)
class Enclosing:
    """The run or map item the current code runs in."""

    engine: Engine | None = None
    map_depth: int = 0  # how many maps enclose this code
    map_width: int = 1  # items in flight in the innermost enclosing map
    #: The enclosing run's (or map's) callbacks scope, inherited by nested runs.
    scope: Scope | None = None
    #: The enclosing run's cache, used by nested pipelines that have none.
    cache: CacheStore | None = None
    #: The map item this code runs in, when it runs in one.
    item: int | None = None


ENCLOSING: ContextVar[Enclosing] = ContextVar(
    "plait_enclosing",
    default=Enclosing(),  # noqa: B039 - a frozen dataclass, not mutable
)


def nested_engine(default: Engine) -> Engine:
    """The engine for a pipeline with no engine of its own, called from here."""
    here = ENCLOSING.get()
    if here.engine is None:
        return default
    if here.map_depth == 0:
        return here.engine
    if here.map_depth == 1:
        return here.engine.scaled(math.isqrt(here.map_width))
    return here.engine.scaled(1)
