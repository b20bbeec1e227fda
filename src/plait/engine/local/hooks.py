"""What a run does around each node when it has a cache or callbacks.

The scheduler takes a :class:`NodeHooks` only when a cache or a callback is in
effect; without them it runs exactly as before, with no hashing and no event
objects. One ``NodeHooks`` serves one run, or one item of a map.
"""

from __future__ import annotations

from collections.abc import Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

from plait.cache.miss import MISS
from plait.cache.storing import STORING

if TYPE_CHECKING:
    from plait.callbacks.dispatch import Scope
    from plait.engine.local.plan import Plan, Step
    from plait.engine.local.signatures import CacheSetup


_NEVER_WRITTEN: dict[int, float] = {}


class NodeHooks:
    """Cache lookups and stores, and node events, for one run or map item."""

    __slots__ = (
        "cones",
        "get",
        "hits",
        "item",
        "keys",
        "leaves",
        "prefixes",
        "scope",
        "setup",
        "started",
        "steps",
    )

    def __init__(
        self, plan: Plan, scope: Scope | None, setup: CacheSetup | None, item: int | None = None
    ) -> None:
        self.steps = plan.steps
        self.scope = scope
        self.setup = setup
        self.item = item
        self.keys: dict[int, str] = {}  # misses whose result is to be stored
        #: When each step started (read for events only: without a scope, never written).
        self.started: dict[int, float] = _NEVER_WRITTEN if scope is None else {}
        self.hits = 0
        if setup is None:
            self.prefixes = None
            return
        cones = setup.cones
        #: Each step's key prefix and cone, and the store's get, bound once: a hit is
        #: the hot path.
        self.prefixes = cones.prefixes
        self.cones = cones.of_step
        self.get = setup.cache.get
        #: The leaves' part of the keys of each cone, for this run (None: not yet).
        self.leaves: list[str | None] = [None] * len(cones.leaves)

    def next_item(self, item: int) -> None:
        """Serve map item ``item`` now (a sequential map's previous item has ended)."""
        self.item = item
        self.hits = 0
        if self.prefixes is not None:
            self.leaves = [None] * len(self.leaves)

    @property
    def all_cached(self) -> bool:
        """True when every node of the run came from the cache."""
        return self.hits == len(self.steps)

    def before(self, index: int, values: Sequence[Any]) -> Any:
        """Step ``index`` is ready: its cached result, or MISS (then it is starting)."""
        prefixes = self.prefixes
        if prefixes is not None and (prefix := prefixes[index]) is not None:
            # Its key: the prefix of its cone, then its leaves' part (once per cone).
            setup = self.setup
            assert setup is not None
            cone = self.cones[index]
            leaves = self.leaves[cone]
            if leaves is None:
                leaves = self.leaves[cone] = setup.leaves(cone, values)
            key = prefix + leaves if leaves else setup.key_by_value(index, values)
            if key is not None:
                found = self.get(key)
                if found is not MISS:
                    self.hits += 1
                    if self.scope is not None:
                        self.scope.emit("on_node_cached", node=self._name(index), item=self.item)
                    return found
                self.keys[index] = key
        if self.scope is not None:
            self.started[index] = perf_counter()
            self.scope.emit("on_node_start", node=self._name(index), item=self.item)
        return MISS

    def after(self, index: int, result: Any) -> None:
        """Step ``index`` returned ``result`` (stored in the run's values already)."""
        key = self.keys.pop(index, None)
        if key is not None:
            assert self.setup is not None
            token = STORING.set((self.steps[index].node.name, self.item))  # for its warnings
            try:
                self.setup.cache.set(key, result)
            finally:
                STORING.reset(token)
        if self.scope is not None:
            self.scope.emit(
                "on_node_end",
                node=self._name(index),
                item=self.item,
                duration=perf_counter() - self.started.pop(index, perf_counter()),
            )

    def failed(self, index: int, exc: BaseException) -> None:
        """Step ``index`` raised ``exc``."""
        self.keys.pop(index, None)
        if self.scope is not None:
            self.scope.emit(
                "on_error",
                node=self._name(index),
                item=self.item,
                error=exc,
                duration=perf_counter() - self.started.pop(index, perf_counter()),
            )

    def retry(self, step: Step, attempt: int, exc: BaseException, delay: float) -> None:
        """A controlled step's attempt failed and is retried after ``delay`` seconds."""
        if self.scope is not None:
            self.scope.emit(
                "on_node_retry",
                node=step.node.name,
                item=self.item,
                error=exc,
                attempt=attempt,
                delay=delay,
            )

    def _name(self, index: int) -> str:
        return self.steps[index].node.name
