"""Callbacks: observe runs, nodes and map items (progress bars, logs, traces).

The built-in callbacks load on first use, so importing this package imports
neither rich nor OpenTelemetry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait._lazy import lazy_attributes
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

__getattr__ = lazy_attributes(
    __name__,
    {
        "LoggingCallback": "plait.callbacks.log",
        "ProgressCallback": "plait.callbacks.progress",
        "TracingCallback": "plait.callbacks.tracing",
    },
)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
