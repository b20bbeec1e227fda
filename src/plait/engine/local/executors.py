"""Executors: the workers an engine runs sync nodes and map items on.

An executor only runs callables (``submit`` returns a ``Future``); it knows
nothing of pipelines. A string alias makes the engine create, own and shut down
the executor; an ``Executor`` instance is used as given and left open.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from plait._text import did_you_mean, quoted
from plait.errors import EngineError

#: Aliases accepted for ``Engine(node_executor=...)``.
NODE_EXECUTORS = ("sequential", "async", "threaded", "parallel")
#: Aliases accepted for ``Engine(map_executor=...)``.
MAP_EXECUTORS = ("sequential", "async", "threaded", "parallel")

ExecutorSpec = str | Executor


def check_spec(spec: object, option: str, aliases: tuple[str, ...]) -> ExecutorSpec:
    """Validate an executor option: a known alias or an Executor instance."""
    if isinstance(spec, Executor):
        return spec
    if isinstance(spec, str) and spec in aliases:
        return spec
    if isinstance(spec, str):
        raise EngineError(
            f"unknown {option} {spec!r}.{did_you_mean(spec, aliases)} "
            f"Use one of {quoted(aliases)} or a concurrent.futures.Executor instance."
        )
    raise EngineError(
        f"{option} must be one of {quoted(aliases)} or a "
        f"concurrent.futures.Executor instance, got {type(spec).__name__}: {spec!r}"
    )


def create(spec: str, max_workers: int | None, role: str) -> Executor | None:
    """The executor an alias stands for; None means "no executor" (inline or tasks)."""
    if spec in ("sequential", "async"):
        return None
    if spec == "threaded":
        return ThreadPoolExecutor(max_workers=default_workers(max_workers), thread_name_prefix=role)
    if spec == "parallel":
        # spawn, not fork: forking a process that runs threads (plait's portal, thread
        # pools, the user's) can deadlock the child on a lock held at fork time.
        return ProcessPoolExecutor(
            max_workers=default_workers(max_workers),
            mp_context=multiprocessing.get_context("spawn"),
        )
    raise AssertionError(f"unchecked executor alias {spec!r}")


def default_workers(max_workers: int | None) -> int:
    """``max_workers`` or the machine's CPU count."""
    return max_workers or os.cpu_count() or 1


def worker_count(executor: Executor, fallback: int | None) -> int:
    """How many jobs ``executor`` runs at once, as far as it tells."""
    count = getattr(executor, "_max_workers", None)
    return count if isinstance(count, int) and count > 0 else default_workers(fallback)


def terminate_pool(executor: ProcessPoolExecutor) -> None:
    """Stop a process pool now: terminate its workers; the pool fails their jobs."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(5)
    executor.shutdown(wait=False)
