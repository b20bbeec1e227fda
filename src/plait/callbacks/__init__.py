"""Callbacks: observe runs, nodes and map items (progress bars, logs, traces)."""

from plait.callbacks.base import EVENTS, Callback, CallbackContext

__all__ = ["EVENTS", "Callback", "CallbackContext"]
