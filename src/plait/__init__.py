"""plait: an async-first pipeline engine.

Plain functions, sync or ``async def``, become nodes; their parameter names wire
them to other nodes' outputs and to pipeline inputs; a :class:`Pipeline` runs them
with automatic concurrency from a script, a thread or a running event loop.
"""

from plait.batch import abatch, batch
from plait.bridge import run_sync, syncify
from plait.engine import Engine
from plait.engine.async_executor import AsyncExecutor
from plait.engine.mapping import ItemError
from plait.errors import (
    CycleError,
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
    UnknownOutputError,
    UnusedInputWarning,
)
from plait.graph import Graph
from plait.node import Node, node
from plait.pipeline import Pipeline

__version__ = "0.1.0"

__all__ = [
    "AsyncExecutor",
    "CycleError",
    "DuplicateNodeNameError",
    "DuplicateOutputError",
    "Engine",
    "EngineError",
    "Graph",
    "GraphError",
    "InputError",
    "ItemError",
    "MissingInputsError",
    "Node",
    "NodeDefinitionError",
    "OutputArityError",
    "Pipeline",
    "PlaitError",
    "PlaitWarning",
    "RunningLoopWarning",
    "UnknownOutputError",
    "UnusedInputWarning",
    "__version__",
    "abatch",
    "batch",
    "node",
    "run_sync",
    "syncify",
]
