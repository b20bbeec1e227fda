"""In-process execution of code cells with top-level await: see docs/session.md."""

from plait.session.session import AsyncSession, CellResult

__all__ = ["AsyncSession", "CellResult"]
