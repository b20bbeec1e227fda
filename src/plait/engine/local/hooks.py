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
    from plait.engine.local.signatures import Signer


class NodeHooks:
    """Cache lookups and stores, and node events, for one run or map item."""

    __slots__ = ("get", "hits", "item", "key", "keys", "scope", "signer", "started", "steps")

    def __init__(
        self, plan: Plan, scope: Scope | None, signer: Signer | None, item: int | None = None
    ) -> None:
        self.steps = plan.steps
        self.scope = scope
        self.signer = signer
        #: The signer's key and the store's get, bound once: a hit is the hot path.
        self.key = None if signer is None else signer.key
        self.get = None if signer is None else signer.setup.cache.get
        self.item = item
        self.keys: dict[int, str] = {}  # misses whose result is to be stored
        self.started: dict[int, float] = {}
        self.hits = 0

    @property
    def all_cached(self) -> bool:
        """True when every node of the run came from the cache."""
        return self.hits == len(self.steps)

    def before(self, index: int, values: Sequence[Any]) -> Any:
        """Step ``index`` is ready: its cached result, or MISS (then it is starting)."""
        if self.key is not None:
            key = self.key(index, values)
            if key is not None:
                found = self.get(key)  # type: ignore[misc]
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
            assert self.signer is not None
            token = STORING.set((self.steps[index].node.name, self.item))  # for its warnings
            try:
                self.signer.setup.cache.set(key, result)
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
