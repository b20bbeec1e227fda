"""Sync node calls on executors: threads, processes, anything else."""

from __future__ import annotations

import contextvars
import hashlib
import pickle
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import Future as JobFuture
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from plait.engine.local.plan import Step


def submit_call(
    executor: Executor, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> JobFuture[Any]:
    """Submit one call of ``step`` to ``executor``.

    A thread pool runs the function in a copy of the caller's context (its
    contextvars are visible). A process pool pickles with plain pickle, which
    cannot carry closures or lambdas: the node goes cloudpickled instead (once per
    step here, unpickled once per worker there). Other executors (loky, dask)
    cloudpickle the node by themselves.
    """
    if isinstance(executor, ThreadPoolExecutor):
        return executor.submit(contextvars.copy_context().run, step.func, *args, **kwargs)
    if not isinstance(executor, ProcessPoolExecutor):
        return executor.submit(step.node, *args, **kwargs)
    if step.payload is None:
        blob = cloudpickle.dumps(step.node)
        step.payload = (blob, hashlib.blake2b(blob, digest_size=16).hexdigest())
    blob, digest = step.payload
    return executor.submit(call_pickled, digest, blob, args, kwargs)


_NODES: dict[str, Any] = {}  # in a worker: digest -> unpickled node


def call_pickled(digest: str, blob: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """In a worker process: call the node carried by ``blob``."""
    node = _NODES.get(digest)
    if node is None:
        node = pickle.loads(blob)
        if len(_NODES) >= 256:
            _NODES.pop(next(iter(_NODES)))
        _NODES[digest] = node
    return node(*args, **kwargs)
