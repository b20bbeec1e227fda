"""The callback protocol: the events a run emits and the context each one carries.

A callback is any object implementing some of the methods named in
:data:`EVENTS`; subclassing :class:`Callback` is optional and only documents
them. Each method receives one :class:`CallbackContext`. Methods a callback does
not define are never called, and a run without callbacks builds no context at
all.

Callbacks are called one at a time (never concurrently), in the process that
started the run, in this order:

* a run: ``on_pipeline_start``, then per node ``on_node_start`` →
  (``on_node_retry``)* → ``on_node_end``, or ``on_node_cached`` instead of both
  for a cache hit, then ``on_pipeline_end``;
* a nested pipeline (``Pipeline.as_node``) emits ``on_nested_pipeline_start``
  and ``on_nested_pipeline_end`` instead of the pipeline events, with a
  ``path`` one level deeper;
* a map: ``on_map_start``, then per item ``on_map_item_start`` → its nodes'
  events → ``on_map_item_end``, or ``on_map_item_cached`` in its place when
  every node of the item was a cache hit, then ``on_map_end``. Items finish in any order;
  the events of one item are always in this order, also when the item ran on a
  thread or in a worker process (whose events are replayed in the parent when
  the item completes);
* a batch node in a map: each item has its own node events (``on_node_start``
  when it reaches the node, ``on_node_end`` when the batch call serving it
  returned), and each batch call emits ``on_batch_start`` and ``on_batch_end``
  with ``items``, the map items it serves; a retry of a batch call is one
  ``on_node_retry`` with ``items`` set;
* a failure: ``on_error`` for the node that raised, in place of its
  ``on_node_end``, then the end event of each scope it aborted (the item's
  ``on_map_item_end``, the run's or map's end), with ``ctx.error`` set.

A callback that raises does not break the run: the first failure of each
callback is logged (logger ``plait.callbacks``) and later ones are ignored. A
callback with ``raise_errors = True`` fails the run instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

#: Every callback method name, in the order of a run's life.
EVENTS: Final = (
    "on_pipeline_start",
    "on_nested_pipeline_start",
    "on_map_start",
    "on_map_item_start",
    "on_node_start",
    "on_node_retry",
    "on_node_cached",
    "on_batch_start",
    "on_batch_end",
    "on_node_end",
    "on_error",
    "on_map_item_cached",
    "on_map_item_end",
    "on_map_end",
    "on_nested_pipeline_end",
    "on_pipeline_end",
)


@dataclass(slots=True)
class CallbackContext:
    """What one event is about.

    Attributes:
        event: the method being called, without ``on_`` (``"node_end"``).
        pipeline: the name of the pipeline the event belongs to (``"pipeline"``
            when it has none).
        path: where that pipeline sits: the names from the top-level pipeline down,
            a nested pipeline adding the name of the node that runs it and its own
            name (``("corpus", "docs", "per_doc")``). ``len(path)`` grows by two per
            nesting level.
        scope_id: identifies the run or map the event belongs to: the start and end
            events of one run share it, as do its nodes' events and its items'.
        parent_id: the ``scope_id`` of the run or map this one is nested in, or None
            at the top level.
        node: the node's name, for node events (and ``on_error`` raised in a node).
        item: the map item's index, for item events and for node events inside a
            map item; on the start and end events of a pipeline or map nested in a
            map item, that enclosing item (None otherwise).
        items: for batch events (and a batch call's ``on_node_retry``), the indices of
            the map items one batch call serves.
        total: for map events, how many items the map has when that is known.
        duration: seconds, on end events (``*_end``, ``on_map_item_cached``).
        error: the exception, on ``on_error`` and on end events of scopes it aborted.
        attempt: on ``on_node_retry``, the attempt that failed (1 for the first call).
        delay: on ``on_node_retry``, the seconds waited before the next attempt.
        state: this callback's own dict for this scope, shared by every event of one
            run or map (a progress bar keeps its task id here, say).
    """

    event: str
    pipeline: str
    path: tuple[str, ...]
    scope_id: int
    parent_id: int | None = None
    node: str | None = None
    item: int | None = None
    items: tuple[int, ...] | None = None
    total: int | None = None
    duration: float | None = None
    error: BaseException | None = None
    attempt: int | None = None
    delay: float | None = None
    state: dict[str, Any] = field(default_factory=dict)


class Callback:
    """Optional base class for callbacks: every method does nothing.

    Override the ones you need; the dispatcher skips methods a subclass does not
    override, so unused events cost nothing.

        >>> class Timings(Callback):
        ...     def on_node_end(self, ctx):
        ...         print(f"{ctx.node}: {ctx.duration:.3f} s")
    """

    #: When True, an exception raised by this callback fails the run.
    raise_errors: bool = False

    def on_pipeline_start(self, ctx: CallbackContext) -> None:
        """A top-level run starts."""

    def on_pipeline_end(self, ctx: CallbackContext) -> None:
        """A top-level run ends (``ctx.error`` set if it failed)."""

    def on_nested_pipeline_start(self, ctx: CallbackContext) -> None:
        """A nested pipeline's run starts."""

    def on_nested_pipeline_end(self, ctx: CallbackContext) -> None:
        """A nested pipeline's run ends."""

    def on_node_start(self, ctx: CallbackContext) -> None:
        """A node is called."""

    def on_node_end(self, ctx: CallbackContext) -> None:
        """A node returned (``ctx.duration`` set)."""

    def on_node_cached(self, ctx: CallbackContext) -> None:
        """A node's result came from the cache; it did not run."""

    def on_node_retry(self, ctx: CallbackContext) -> None:
        """A node's attempt failed and will be retried after ``ctx.delay`` seconds."""

    def on_batch_start(self, ctx: CallbackContext) -> None:
        """A batch call of a node starts, for the map items ``ctx.items``."""

    def on_batch_end(self, ctx: CallbackContext) -> None:
        """A batch call of a node returned (``ctx.duration``) or raised (``ctx.error``)."""

    def on_error(self, ctx: CallbackContext) -> None:
        """A node (or map item) raised ``ctx.error``."""

    def on_map_start(self, ctx: CallbackContext) -> None:
        """A map starts (``ctx.total`` items when known)."""

    def on_map_end(self, ctx: CallbackContext) -> None:
        """A map ends."""

    def on_map_item_start(self, ctx: CallbackContext) -> None:
        """A map item starts."""

    def on_map_item_end(self, ctx: CallbackContext) -> None:
        """A map item finished (``ctx.error`` set if it failed)."""

    def on_map_item_cached(self, ctx: CallbackContext) -> None:
        """A map item finished and every node of it was a cache hit (instead of
        ``on_map_item_end``)."""
