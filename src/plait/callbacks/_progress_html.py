"""ProgressCallback in Jupyter: an HTML table updated in place through a display handle.

No ipywidgets: the output is ordinary display data, so the final state stays in a saved
notebook (and in one nbclient executes).
"""

from __future__ import annotations

import html
import sys
from typing import Any

from plait.callbacks import _progress_stats
from plait.callbacks._progress_stats import ScopeStats, duration


def in_jupyter() -> bool:
    """A Jupyter kernel runs this process (IPython is imported only when it already is)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _row(stats: ScopeStats, order: tuple[int, ...]) -> str:
    depth = len(order) - 1
    name = "/".join(stats.path[-2:]) if depth else stats.path[0]
    indent = "&nbsp;&nbsp;" * depth + "└ " if depth else ""
    total = stats.total if stats.total is not None else max(stats.done, 1)
    bar = f'<progress value="{stats.done}" max="{total}" style="width:12em"></progress>'
    rate, eta = stats.rate(), stats.eta()
    speed = [f"{rate:.1f} {stats.unit}/s"] if rate is not None and stats.is_map else []
    if eta is not None:
        speed.append(f"ETA {duration(eta)}")
    counts = stats.counts()
    state = ""
    if stats.error is not None:
        state = f' <b style="color:#c00">✗ {html.escape(type(stats.error).__name__)}</b>'
    elif stats.ended is not None:
        state = " ✓"
    cells = [
        f"{indent}{stats.kind} <b>{html.escape(name)}</b>",
        bar,
        stats.amount(),
        ", ".join(speed),
        duration(stats.elapsed()),
        (f"({counts})" if counts else "") + state,
    ]
    return "<tr>" + "".join(f'<td style="text-align:left">{cell}</td>' for cell in cells) + "</tr>"


class HtmlDisplay:
    """Bars as an HTML table in one notebook output, redrawn at most ``refresh_per_second``."""

    def __init__(self, refresh_per_second: float) -> None:
        self.interval = 1.0 / refresh_per_second
        self.handle: Any = None  # IPython's DisplayHandle while a scope is live
        self.bars: dict[int, tuple[ScopeStats, tuple[int, ...]]] = {}
        self.next_id = 0
        self.next_draw = 0.0

    def bundle(self) -> dict[str, str]:
        bars = sorted(self.bars.values(), key=lambda bar: bar[1])
        rows = "".join(_row(stats, order) for stats, order in bars)
        return {
            "text/html": f'<table class="plait-progress">{rows}</table>',
            "text/plain": "\n".join(stats.line() for stats, _ in bars),
        }

    def draw(self, force: bool = False) -> None:
        now = _progress_stats.clock()
        if not force and now < self.next_draw:
            return
        self.next_draw = now + self.interval
        from IPython.display import display

        if self.handle is None:
            self.handle = display(self.bundle(), raw=True, display_id=True)  # type: ignore[no-untyped-call]
        else:
            self.handle.update(self.bundle(), raw=True)

    def add(self, stats: ScopeStats, order: tuple[int, ...]) -> int:
        self.next_id += 1
        self.bars[self.next_id] = (stats, order)
        self.draw(force=self.handle is None)
        return self.next_id

    def update(self, task: int, stats: ScopeStats) -> None:
        self.draw()

    def finish(self, task: int, stats: ScopeStats, remove: bool) -> None:
        """The scope ended: drop its bar (inside a map item), or keep it with its final counts."""
        if remove:
            self.bars.pop(task, None)
        self.draw()

    def close(self) -> None:
        """No scope is live: draw the final state, which the notebook keeps."""
        if self.handle is not None:
            self.draw(force=True)
        self.handle = None
        self.bars.clear()
