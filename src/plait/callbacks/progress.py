"""ProgressCallback: progress bars on a terminal or in Jupyter, plain lines in logs and CI."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Protocol

from plait.callbacks import _progress_html, _progress_stats
from plait.callbacks._progress_stats import ScopeStats
from plait.callbacks.base import Callback, CallbackContext

if TYPE_CHECKING:
    from rich.console import Console


class _Display(Protocol):
    """A live display: rich bars on a terminal, an HTML table in Jupyter."""

    def add(self, stats: ScopeStats, order: tuple[int, ...]) -> int: ...
    def update(self, task: int, stats: ScopeStats) -> None: ...
    def finish(self, task: int, stats: ScopeStats, remove: bool) -> None: ...
    def close(self) -> None: ...


@dataclass(slots=True)
class _Entry:
    stats: ScopeStats
    parent_id: int | None
    top: bool  # no parent this callback saw: a top-level run, or a scope only it observes
    order: tuple[int, ...]  # sorts a bar under its parent's
    task: int | None = None  # its bar, on a live display


class ProgressCallback(Callback):
    """Show how far runs and maps have got.

    On a terminal: a live rich display with a bar per top-level run (nodes done) and
    per map (items done/total, rate, ETA, cached and failed counts); maps of nested
    pipelines show under their parent's bar, those inside map items only while they
    run. In Jupyter: the same as an HTML table updated in place (no ipywidgets), whose
    final state stays in the saved notebook. Elsewhere (a log file, CI): a plain
    line per top-level run or map at most every ``plain_interval`` seconds while it
    progresses, and one when it ends::

        plait: map 'scrape' 700/10000 items (7.0%), 12.3 items/s, ETA 12m34s, 3 cached, 1 failed

    rich is needed (``pip install 'plait[progress]'``) only to draw on a terminal.

    Args:
        file: where to write; stderr by default (in Jupyter, the cell's output).
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
        self.plain_interval = plain_interval
        self._file: IO[str] = file if file is not None else sys.stderr
        self._display: _Display | None = None
        if console is None and file is None and _progress_html.in_jupyter():
            self._display = _progress_html.HtmlDisplay(refresh_per_second)
        elif console is not None or self._file.isatty():
            console = _console(self._file, console)
            self._file = console.file
            if console.is_terminal:
                self._display = _rich_display(console, refresh_per_second, transient)
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
        self._file.write(line + "\n")
        self._file.flush()


_NO_RICH = (
    "ProgressCallback draws bars on a terminal with rich, which is not installed: "
    "pip install 'plait[progress]' (off a terminal and in Jupyter it needs no rich)"
)


def _console(file: IO[str], console: Console | None) -> Console:
    if console is not None:
        return console
    try:
        from rich.console import Console
    except ImportError as exc:
        raise ImportError(_NO_RICH) from exc
    return Console(file=file)


def _rich_display(console: Console, refresh_per_second: float, transient: bool) -> _Display:
    from plait.callbacks._progress_rich import RichDisplay

    return RichDisplay(console, refresh_per_second, transient)
