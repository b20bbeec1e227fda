"""Engines orchestrate runs; executors only execute.

:class:`Engine` is the interface (:mod:`plait.engine.base`); :mod:`plait.engine.request`
holds the checks every request passes before an engine sees it;
:mod:`plait.engine.context` what code inside a run sees of it; :mod:`plait.engine.local`
is the engine that runs on this machine.
"""

from plait.engine.base import Engine, ItemError, Outcome
from plait.engine.local import AsyncExecutor, LocalEngine

__all__ = ["AsyncExecutor", "Engine", "ItemError", "LocalEngine", "Outcome"]
