"""Callbacks: observe runs, nodes and map items (progress bars, logs, traces).

The built-in callbacks load on first use, so importing this package imports
neither rich nor OpenTelemetry.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from plait.callbacks.base import EVENTS, Callback, CallbackContext

if TYPE_CHECKING:
    from plait.callbacks.log import LoggingCallback
    from plait.callbacks.progress import ProgressCallback
    from plait.callbacks.tracing import TracingCallback

__all__ = [
    "EVENTS",
    "Callback",
    "CallbackContext",
    "LoggingCallback",
    "ProgressCallback",
    "TracingCallback",
]

_LAZY = {
    "LoggingCallback": "plait.callbacks.log",
    "ProgressCallback": "plait.callbacks.progress",
    "TracingCallback": "plait.callbacks.tracing",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
