"""DaftEngine: pipelines as Daft queries (extra ``plait[daft]``)."""

from plait.engine.daft.engine import DaftEngine

__all__ = ["DaftEngine"]
