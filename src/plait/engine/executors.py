"""Executors: the workers an engine runs sync nodes on.

An executor only runs callables (``submit`` returns a ``Future``); it knows
nothing of pipelines. A string alias makes the engine create, own and shut down
the executor; an ``Executor`` instance is used as given and left open.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor, ThreadPoolExecutor

from plait._text import did_you_mean, quoted
from plait.errors import EngineError

#: Aliases accepted for ``Engine(node_executor=...)``.
NODE_EXECUTORS = ("sequential", "threaded")

ExecutorSpec = str | Executor


def check_spec(spec: object, option: str) -> ExecutorSpec:
    """Validate an executor option: a known alias or an Executor instance."""
    if isinstance(spec, Executor):
        return spec
    if isinstance(spec, str) and spec in NODE_EXECUTORS:
        return spec
    if isinstance(spec, str):
        raise EngineError(
            f"unknown {option} {spec!r}.{did_you_mean(spec, NODE_EXECUTORS)} "
            f"Use one of {quoted(NODE_EXECUTORS)} or a concurrent.futures.Executor instance."
        )
    raise EngineError(
        f"{option} must be one of {quoted(NODE_EXECUTORS)} or a "
        f"concurrent.futures.Executor instance, got {type(spec).__name__}: {spec!r}"
    )


def create(spec: str, max_workers: int | None) -> Executor | None:
    """The executor an alias stands for; None means "call inline"."""
    if spec == "sequential":
        return None
    if spec == "threaded":
        return ThreadPoolExecutor(
            max_workers=max_workers or os.cpu_count() or 1, thread_name_prefix="plait-node"
        )
    raise AssertionError(f"unchecked executor alias {spec!r}")
