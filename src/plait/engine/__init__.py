"""Engines orchestrate runs; executors only execute."""

from plait.engine.engine import Engine

__all__ = ["Engine"]
