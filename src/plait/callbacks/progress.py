"""ProgressCallback: progress bars on a terminal or in Jupyter, plain lines in logs and CI."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from importlib.util import find_spec
from typing import IO

try:
    from rich.console import Console
    from rich.progress import TaskID

    from plait.callbacks import _progress_rich
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "ProgressCallback draws with rich, which is not installed: pip install 'plait[progress]'"
    ) from exc

from plait.callbacks import _progress_stats
from plait.callbacks._progress_stats import ScopeStats
from plait.callbacks.base import Callback, CallbackContext


@dataclass(slots=True)
class _Entry:
    stats: ScopeStats
    parent_id: int | None
    top: bool  # no parent this callback saw: a top-level run, or a scope only it observes
    order: tuple[int, ...]  # sorts a bar under its parent's
    task: TaskID | None = None  # its bar, on a live display


class ProgressCallback(Callback):
    """Show how far runs and maps have got.

    On a terminal or in Jupyter (with ipywidgets): a live rich display with a bar
    per top-level run (nodes done) and per map (items done/total, rate, ETA, cached
    and failed counts); maps of nested pipelines show under their parent's bar,
    those inside map items only while they run. Elsewhere (a log file, CI): a plain
    line per top-level run or map at most every ``plain_interval`` seconds while it
    progresses, and one when it ends::

        plait: map 'scrape' 700/10000 items (7.0%), 12.3 items/s, ETA 12m34s, 3 cached, 1 failed

    Args:
        file: where to write; stderr by default.
        console: a ``rich.console.Console`` to draw on instead of ``file``.
        refresh_per_second: redraws per second of the live display.
        plain_interval: seconds between plain progress lines.
        transient: clear the live display when the last scope ends.
    """

    def __init__(
        self,
        *,
        file: IO[str] | None = None,
        console: Console | None = None,
        refresh_per_second: float = 10.0,
        plain_interval: float = 10.0,
        transient: bool = False,
    ) -> None:
        if console is None:
            console = Console(file=file) if file is not None else Console(stderr=True)
        self.console = console
        self.plain_interval = plain_interval
        # rich draws in Jupyter through ipywidgets; without it a live display shows nothing
        live = console.is_terminal or (console.is_jupyter and find_spec("ipywidgets") is not None)
        self._display = (
            _progress_rich.RichDisplay(console, refresh_per_second, transient) if live else None
        )
        self._lock = threading.RLock()
        self._scopes: dict[int, _Entry] = {}
        self._count = 0  # numbers scopes for the display order
        self._next_line = 0.0

    # -- scopes ----------------------------------------------------------------------

    def on_pipeline_start(self, ctx: CallbackContext) -> None:
        self._start(ctx, "pipeline")

    def on_nested_pipeline_start(self, ctx: CallbackContext) -> None:
        self._start(ctx, "nested pipeline")

    def on_map_start(self, ctx: CallbackContext) -> None:
        self._start(ctx, "map")

    def on_pipeline_end(self, ctx: CallbackContext) -> None:
        self._end(ctx)

    def on_nested_pipeline_end(self, ctx: CallbackContext) -> None:
        self._end(ctx)

    def on_map_end(self, ctx: CallbackContext) -> None:
        self._end(ctx)

    # -- progress --------------------------------------------------------------------

    def on_map_item_end(self, ctx: CallbackContext) -> None:
        self._advance(ctx, failed=ctx.error is not None)

    def on_map_item_cached(self, ctx: CallbackContext) -> None:
        self._advance(ctx, cached=True)

    def on_node_end(self, ctx: CallbackContext) -> None:
        self._advance(ctx, node=True)

    def on_node_cached(self, ctx: CallbackContext) -> None:
        self._advance(ctx, node=True, cached=True)

    def on_error(self, ctx: CallbackContext) -> None:
        if ctx.node is not None:
            self._advance(ctx, node=True, failed=True)

    # -- bookkeeping -----------------------------------------------------------------

    def _start(self, ctx: CallbackContext, kind: str) -> None:
        with self._lock:
            parent = self._scopes.get(ctx.parent_id) if ctx.parent_id is not None else None
            # a start event with an item index is a nested run inside that map item
            inside_map = ctx.item is not None or (
                parent is not None and (parent.stats.is_map or parent.stats.inside_map)
            )
            stats = ScopeStats(kind, ctx.path, ctx.total, inside_map)
            self._count += 1
            order = (self._count,) if parent is None else (*parent.order, self._count)
            entry = _Entry(stats, ctx.parent_id, parent is None, order)
            self._scopes[ctx.scope_id] = entry
            if len(self._scopes) == 1:
                self._next_line = _progress_stats.clock() + self.plain_interval
            if self._display is not None and (stats.is_map or entry.top):
                entry.task = self._display.add(stats, order)

    def _advance(
        self,
        ctx: CallbackContext,
        *,
        node: bool = False,
        cached: bool = False,
        failed: bool = False,
    ) -> None:
        """One more item of a map, or node of a run, finished."""
        with self._lock:
            entry = self._scopes.get(ctx.scope_id)
            if entry is None or (node and entry.stats.is_map):  # a map counts items, not nodes
                return
            stats = entry.stats
            stats.done += 1
            stats.cached += cached
            stats.failed += failed
            if self._display is None:
                self._maybe_print()
            elif entry.task is not None:
                self._display.update(entry.task, stats)

    def _end(self, ctx: CallbackContext) -> None:
        with self._lock:
            entry = self._scopes.get(ctx.scope_id)
            if entry is None:
                return
            for scope_id in self._descendants(ctx.scope_id):  # aborted, no end event of their own
                self._finish(scope_id, ctx.error)
            self._finish(ctx.scope_id, ctx.error)
            if not self._scopes and self._display is not None:
                self._display.close()

    def _finish(self, scope_id: int, error: BaseException | None) -> None:
        entry = self._scopes.pop(scope_id)
        stats = entry.stats
        stats.ended, stats.error = _progress_stats.clock(), error
        if self._display is None:
            if self._reported(entry):
                self._write(stats.line())
        elif entry.task is not None:
            self._display.finish(entry.task, stats, remove=stats.inside_map)

    def _descendants(self, scope_id: int) -> list[int]:
        """Live scopes under ``scope_id``, deepest first."""
        found: list[int] = []
        for child_id, child in list(self._scopes.items()):
            if child.parent_id == scope_id:
                found[:0] = [*self._descendants(child_id), child_id]
        return found

    def _reported(self, entry: _Entry) -> bool:
        """Plain lines are for top-level runs and maps not inside a map item."""
        stats = entry.stats
        return not stats.inside_map and (stats.is_map or entry.top)

    def _maybe_print(self) -> None:
        now = _progress_stats.clock()
        if now < self._next_line:
            return
        self._next_line = now + self.plain_interval
        for entry in sorted(self._scopes.values(), key=lambda entry: entry.order):
            if self._reported(entry):
                self._write(entry.stats.line())

    def _write(self, line: str) -> None:
        file = self.console.file
        file.write(line + "\n")
        file.flush()
