"""plait: an async-first pipeline engine.

Plain functions, sync or ``async def``, become nodes; their parameter names wire
them to other nodes' outputs and to pipeline inputs; a :class:`Pipeline` runs them
with automatic concurrency from a script, a thread or a running event loop.
"""

from typing import TYPE_CHECKING

from plait._lazy import lazy_attributes
from plait.batch import abatch, batch
from plait.bridge import run_sync, syncify
from plait.callbacks import Callback, CallbackContext
from plait.deps import Dep
from plait.engine import AsyncExecutor, Engine, ItemError, LocalEngine
from plait.errors import (
    BatchLengthError,
    CacheError,
    CacheWarning,
    CycleError,
    DepDefinitionError,
    DepError,
    DuplicateNodeNameError,
    DuplicateOutputError,
    EngineError,
    GraphError,
    InputError,
    IteratorInputWarning,
    MissingInputsError,
    NodeDefinitionError,
    OutputArityError,
    PlaitError,
    PlaitWarning,
    RunningLoopWarning,
    Unfingerprintable,
    UnknownOutputError,
    UnusedInputWarning,
    WorkerDiedError,
)
from plait.graph import Graph
from plait.node import Node, node
from plait.pipeline import Pipeline

if TYPE_CHECKING:
    from plait.cache import CacheStore, DiskCache, MemoryCache
    from plait.engine.daft import DaftEngine
    from plait.engine.local.ray_executor import RayExecutor
    from plait.kernel import KernelClient
    from plait.session import AsyncSession

__version__ = "0.1.0"

__all__ = [
    "AsyncExecutor",
    "AsyncSession",
    "BatchLengthError",
    "CacheError",
    "CacheStore",
    "CacheWarning",
    "Callback",
    "CallbackContext",
    "CycleError",
    "DaftEngine",
    "Dep",
    "DepDefinitionError",
    "DepError",
    "DiskCache",
    "DuplicateNodeNameError",
    "DuplicateOutputError",
    "Engine",
    "EngineError",
    "Graph",
    "GraphError",
    "InputError",
    "ItemError",
    "IteratorInputWarning",
    "KernelClient",
    "LocalEngine",
    "MemoryCache",
    "MissingInputsError",
    "Node",
    "NodeDefinitionError",
    "OutputArityError",
    "Pipeline",
    "PlaitError",
    "PlaitWarning",
    "RayExecutor",
    "RunningLoopWarning",
    "Unfingerprintable",
    "UnknownOutputError",
    "UnusedInputWarning",
    "WorkerDiedError",
    "__version__",
    "abatch",
    "batch",
    "node",
    "run_sync",
    "syncify",
]


# Loaded on first use: the cache stores import diskcache and SQLite; the session
# and kernel client are for notebooks, REPLs and agents; RayExecutor and DaftEngine
# are for clusters (they import ray or daft only when they start work).
_LAZY = {
    "CacheStore": "plait.cache.stores",
    "DiskCache": "plait.cache.stores",
    "MemoryCache": "plait.cache.stores",
    "AsyncSession": "plait.session",
    "RayExecutor": "plait.engine.local.ray_executor",
    "DaftEngine": "plait.engine.daft.engine",
    "KernelClient": "plait.kernel",
}
_load = lazy_attributes(__name__, _LAZY)


def _as_plait(value: object) -> None:
    """A public name says it comes from ``plait``, where users import it (as httpx does)."""
    if getattr(value, "__module__", "").startswith("plait."):
        value.__module__ = "plait"


def __getattr__(name: str) -> object:
    value = _load(name)
    _as_plait(value)
    globals()[name] = value  # loaded once
    return value


for _name in __all__:
    if _name not in _LAZY and not _name.startswith("__"):
        _as_plait(globals()[_name])
del _name
