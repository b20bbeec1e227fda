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
from plait.engine import Engine
from plait.engine.async_executor import AsyncExecutor
from plait.engine.mapping import ItemError
from plait.errors import (
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
    MissingInputsError,
    NodeDefinitionError,
    OutputArityError,
    PlaitError,
    PlaitWarning,
    RunningLoopWarning,
    Unfingerprintable,
    UnknownOutputError,
    UnusedInputWarning,
)
from plait.graph import Graph
from plait.node import Node, node
from plait.pipeline import Pipeline

if TYPE_CHECKING:
    from plait.cache import CacheStore, DiskCache, MemoryCache

__version__ = "0.1.0"

__all__ = [
    "AsyncExecutor",
    "CacheError",
    "CacheStore",
    "CacheWarning",
    "Callback",
    "CallbackContext",
    "CycleError",
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
    "MemoryCache",
    "MissingInputsError",
    "Node",
    "NodeDefinitionError",
    "OutputArityError",
    "Pipeline",
    "PlaitError",
    "PlaitWarning",
    "RunningLoopWarning",
    "Unfingerprintable",
    "UnknownOutputError",
    "UnusedInputWarning",
    "__version__",
    "abatch",
    "batch",
    "node",
    "run_sync",
    "syncify",
]


# The cache stores load on first use: they import diskcache and SQLite.
__getattr__ = lazy_attributes(
    __name__, dict.fromkeys(("CacheStore", "DiskCache", "MemoryCache"), "plait.cache.stores")
)
