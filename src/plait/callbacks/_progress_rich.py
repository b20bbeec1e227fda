"""The live display of ProgressCallback: one rich Progress, bars ordered as a tree."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from plait.callbacks._progress_stats import ScopeStats, duration


def _stats(task: Task) -> ScopeStats:
    stats: ScopeStats = task.fields["stats"]
    return stats


class _CountColumn(ProgressColumn):
    """``700/10000 items`` or ``12 nodes``."""

    def render(self, task: Task) -> Text:
        return Text(_stats(task).amount(), style="progress.download")


class _RateColumn(ProgressColumn):
    """Items per second (cache hits left out) and the time left."""

    def render(self, task: Task) -> Text:
        stats = _stats(task)
        rate, eta = stats.rate(), stats.eta()
        parts = [f"{rate:.1f} {stats.unit}/s"] if rate is not None and stats.is_map else []
        if eta is not None:
            parts.append(f"ETA {duration(eta)}")
        return Text(", ".join(parts), style="progress.remaining")


class _CountsColumn(ProgressColumn):
    """``(12 cached, 1 failed)``, red when something failed, and the error that ended it."""

    def render(self, task: Task) -> Text:
        stats = _stats(task)
        counts = stats.counts()
        text = Text(f"({counts})" if counts else "", style="red" if stats.failed else "dim")
        if stats.error is not None:
            text.append(f" ✗ {type(stats.error).__name__}", style="bold red")
        return text


class _TreeProgress(Progress):
    """A Progress that shows each bar under its parent's rather than in creation order."""

    def get_renderables(self) -> Iterable[RenderableType]:
        tasks = sorted(self.tasks, key=lambda task: task.fields["order"])
        yield self.make_tasks_table(tasks)


class RichDisplay:
    """Bars on a live rich display; started with the first bar, stopped after the last."""

    def __init__(self, console: Console, refresh_per_second: float, transient: bool) -> None:
        self.console = console
        self.refresh_per_second = refresh_per_second
        self.transient = transient
        self.progress: Progress | None = None

    def add(self, stats: ScopeStats, order: tuple[int, ...]) -> int:
        """A new bar for ``stats``, placed by ``order`` (its parent's order plus one number)."""
        if self.progress is None:
            self.progress = _TreeProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                _CountColumn(),
                _RateColumn(),
                TimeElapsedColumn(),
                _CountsColumn(),
                console=self.console,
                refresh_per_second=self.refresh_per_second,
                transient=self.transient,
            )
            self.progress.start()
        depth = (len(stats.path) - 1) // 2
        name = "/".join(stats.path[-2:]) if depth else stats.path[0]
        indent = "  " * depth + "└ " if depth else ""
        description = f"{indent}{stats.kind} [bold]{escape(name)}[/]"
        return self.progress.add_task(description, total=stats.total, stats=stats, order=order)

    def update(self, task: int, stats: ScopeStats) -> None:
        if self.progress is not None:
            self.progress.update(TaskID(task), completed=stats.done)

    def finish(self, task: int, stats: ScopeStats, remove: bool) -> None:
        """The scope ended: drop its bar, or leave it full (its final counts) on screen."""
        if self.progress is None:
            return
        task_id = TaskID(task)
        if remove:
            self.progress.remove_task(task_id)
        else:
            total = stats.done if stats.total is None else stats.total
            self.progress.update(task_id, total=total, completed=stats.done)
            self.progress.stop_task(task_id)

    def close(self) -> None:
        """No scope is live: stop the display (a new one starts with the next scope)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
