"""What ProgressCallback knows of one run or map, and how it says it in words."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

#: The clock progress is measured with (a module attribute so tests can move time).
clock = time.monotonic


@dataclass(slots=True)
class ScopeStats:
    """Counts for one run (nodes) or map (items), updated as events arrive."""

    kind: str  # "pipeline", "nested pipeline" or "map"
    path: tuple[str, ...]
    total: int | None = None  # a map's item count, when known
    inside_map: bool = False  # run for a map item: one of possibly thousands
    done: int = 0  # items finished (or a run's nodes), failed and cached included
    cached: int = 0
    failed: int = 0
    started: float = field(default_factory=lambda: clock())
    ended: float | None = None
    error: BaseException | None = None

    @property
    def is_map(self) -> bool:
        return self.kind == "map"

    @property
    def unit(self) -> str:
        return "items" if self.is_map else "nodes"

    def amount(self) -> str:
        """``"700/10000 items"``, ``"7 items"``, ``"1 node"``."""
        if self.total is not None:
            return f"{self.done}/{self.total} {self.unit}"
        return f"{self.done} {self.unit[:-1] if self.done == 1 else self.unit}"

    def elapsed(self) -> float:
        return (clock() if self.ended is None else self.ended) - self.started

    def rate(self) -> float | None:
        """Items (or nodes) per second, cache hits left out: they say nothing of speed."""
        elapsed = self.elapsed()
        computed = self.done - self.cached
        return computed / elapsed if computed > 0 and elapsed > 0 else None

    def eta(self) -> float | None:
        """Seconds left at the current rate, when the total is known."""
        rate = self.rate()
        if self.total is None or rate is None or self.ended is not None:
            return None
        return max(0, self.total - self.done) / rate

    def counts(self) -> str:
        """``"3 cached, 1 failed"`` (only the non-zero ones)."""
        parts = [f"{self.cached} cached"] if self.cached else []
        if self.failed:
            parts.append(f"{self.failed} failed")
        return ", ".join(parts)

    def line(self) -> str:
        """One plain-text progress line."""
        name = f"plait: {self.kind} '{'/'.join(self.path)}'"
        if self.total is not None:
            percent = 100.0 * self.done / self.total if self.total else 100.0
            parts = [f"{name} {self.amount()} ({percent:.1f}%)"]
        else:
            parts = [f"{name} {self.amount()}"]
        if self.ended is not None:
            state = "done" if self.error is None else f"failed ({type(self.error).__name__})"
            parts.append(f"{state} in {duration(self.elapsed())}")
        rate = self.rate()
        if rate is not None and self.is_map:
            parts.append(f"{rate:.1f} {self.unit}/s")
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {duration(eta)}")
        if self.counts():
            parts.append(self.counts())
        return ", ".join(parts)


def duration(seconds: float) -> str:
    """``"4.2s"``, ``"12m34s"``, ``"3h05m"``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
