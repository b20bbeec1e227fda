"""LoggingCallback: runs, maps, nodes, retries and errors as stdlib ``logging`` records."""

from __future__ import annotations

import logging
import threading
from typing import Any

from plait._text import spans
from plait.callbacks.base import Callback, CallbackContext


class LoggingCallback(Callback):
    """Log what a run does through :mod:`logging`.

    Runs, nested runs and maps (start, end with duration, a map's item counts) log
    at ``level``; so do node ends and cache hits outside map items. Inside map
    items, where there may be thousands, everything but retries and errors logs at
    DEBUG, and so do the batch calls of batch nodes. Retries log at WARNING,
    failures at ERROR with the traceback (once per exception, however many scopes
    it ends). Each message names the pipeline's
    path (``corpus/docs/per_doc``), the node, and the item index when there is one.

        >>> pipeline.with_callbacks([LoggingCallback("myapp.pipeline")]).map(...)
    """

    def __init__(self, logger: logging.Logger | str = "plait", level: int = logging.INFO) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level
        self._live = 0  # scopes started and not ended
        self._mapped: set[int] = set()  # live maps and scopes inside map items
        self._traced: dict[int, BaseException] = {}  # exceptions logged with a traceback
        self._lock = threading.Lock()  # one instance may serve runs in several threads

    # -- runs and maps ---------------------------------------------------------------

    def on_pipeline_start(self, ctx: CallbackContext) -> None:
        self._start(ctx, "pipeline started")

    def on_nested_pipeline_start(self, ctx: CallbackContext) -> None:
        self._start(ctx, "nested pipeline started")

    def on_pipeline_end(self, ctx: CallbackContext) -> None:
        self._end(ctx, "pipeline")

    def on_nested_pipeline_end(self, ctx: CallbackContext) -> None:
        self._end(ctx, "nested pipeline")

    def on_map_start(self, ctx: CallbackContext) -> None:
        ctx.state.update(done=0, cached=0, failed=0)
        total = "?" if ctx.total is None else ctx.total
        self._start(ctx, "map started: %s items", total, is_map=True)

    def on_map_end(self, ctx: CallbackContext) -> None:
        state = ctx.state
        counts = (state.get("done", 0), state.get("cached", 0), state.get("failed", 0))
        total = "?" if ctx.total is None else ctx.total
        self._end(
            ctx, "map", ": %s/%s items (%s cached, %s failed)", (counts[0], total, *counts[1:])
        )

    # -- items -----------------------------------------------------------------------

    def on_map_item_start(self, ctx: CallbackContext) -> None:
        self._log(logging.DEBUG, ctx, "item started")

    def on_map_item_end(self, ctx: CallbackContext) -> None:
        ctx.state["done"] = ctx.state.get("done", 0) + 1
        if ctx.error is not None:
            ctx.state["failed"] = ctx.state.get("failed", 0) + 1
            self._log(logging.DEBUG, ctx, "item failed after %.3fs: %r", ctx.duration, ctx.error)
        else:
            self._log(logging.DEBUG, ctx, "item done in %.3fs", ctx.duration)

    def on_map_item_cached(self, ctx: CallbackContext) -> None:
        ctx.state["done"] = ctx.state.get("done", 0) + 1
        ctx.state["cached"] = ctx.state.get("cached", 0) + 1
        self._log(logging.DEBUG, ctx, "item cached")

    # -- nodes -----------------------------------------------------------------------

    def on_node_start(self, ctx: CallbackContext) -> None:
        self._log(logging.DEBUG, ctx, "node started")

    def on_node_end(self, ctx: CallbackContext) -> None:
        self._log(self._detail(ctx), ctx, "node done in %.3fs", ctx.duration)

    def on_node_cached(self, ctx: CallbackContext) -> None:
        self._log(self._detail(ctx), ctx, "node cached")

    def on_node_retry(self, ctx: CallbackContext) -> None:
        self._log(
            logging.WARNING,
            ctx,
            "attempt %s failed (%r); retrying in %.2fs",
            ctx.attempt,
            ctx.error,
            ctx.delay,
        )

    def on_batch_end(self, ctx: CallbackContext) -> None:
        # Its items' errors are logged by on_error; a batch that served them, at DEBUG.
        items = ctx.items or ()
        outcome = "done" if ctx.error is None else "failed"
        message = f"batch call of %d items {outcome} in %.3fs (items %s)"
        self._log(logging.DEBUG, ctx, message, len(items), ctx.duration, spans(items))

    def on_error(self, ctx: CallbackContext) -> None:
        error = ctx.error
        if error is None:
            return
        with self._lock:
            seen = id(error) in self._traced
            self._traced[id(error)] = error
        if seen:
            self._log(logging.ERROR, ctx, "raised %r (traceback above)", error)
        else:
            self._log(logging.ERROR, ctx, "raised %r", error, exc_info=error)

    # -- helpers ---------------------------------------------------------------------

    def _detail(self, ctx: CallbackContext) -> int:
        """Per-node events inside map items log at DEBUG, elsewhere at ``level``."""
        return logging.DEBUG if ctx.item is not None else self.level

    def _start(self, ctx: CallbackContext, message: str, *args: Any, is_map: bool = False) -> None:
        with self._lock:
            self._live += 1
            inside = ctx.item is not None or ctx.parent_id in self._mapped
            if inside or is_map:
                self._mapped.add(ctx.scope_id)
        ctx.state["level"] = logging.DEBUG if inside else self.level
        self._log(ctx.state["level"], ctx, message, *args)

    def _end(
        self, ctx: CallbackContext, kind: str, extra: str = "", args: tuple[Any, ...] = ()
    ) -> None:
        if ctx.error is None:
            level = ctx.state.get("level", self.level)
            self._log(level, ctx, f"{kind} done in %.3fs{extra}", ctx.duration, *args)
        else:
            message = f"{kind} failed after %.3fs{extra}: %r"
            self._log(logging.ERROR, ctx, message, ctx.duration, *args, ctx.error)
        with self._lock:
            self._mapped.discard(ctx.scope_id)
            self._live = max(0, self._live - 1)
            if not self._live:
                self._traced.clear()  # ids are only unique while the exceptions are alive

    def _log(
        self,
        level: int,
        ctx: CallbackContext,
        message: str,
        *args: Any,
        exc_info: BaseException | None = None,
    ) -> None:
        logger = self.logger
        if not logger.isEnabledFor(level):
            return
        where = "/".join(ctx.path)
        if ctx.node is not None:
            where = f"{where}:{ctx.node}"
        if ctx.item is not None:
            where = f"{where}[{ctx.item}]"
        logger.log(level, "plait %s: " + message, where, *args, exc_info=exc_info)
