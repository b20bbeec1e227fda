"""Engine: how a pipeline's nodes are executed."""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import Executor
from types import TracebackType
from typing import Any

from plait.engine import executors
from plait.engine.plan import Plan
from plait.engine.scheduler import run_plan
from plait.errors import EngineError


class Engine:
    """Orchestrates runs: the scheduler plus the executor sync nodes run on.

    Args:
        node_executor: where sync nodes run. ``"sequential"`` (default) calls them
            inline on the event loop, one at a time; ``"threaded"`` runs them on a
            thread pool the engine owns, so independent blocking nodes overlap; an
            ``concurrent.futures.Executor`` instance is used as given and never shut
            down by the engine. Async nodes always run as tasks on the event loop.
        max_workers: size of executors the engine creates (default: ``os.cpu_count()``).

    An engine creates its executors lazily and keeps them across runs; :meth:`close`
    (or ``with Engine(...) as engine:``) shuts down the ones it created.

        >>> engine = Engine(node_executor="threaded", max_workers=8)
    """

    def __init__(
        self, node_executor: str | Executor = "sequential", *, max_workers: int | None = None
    ) -> None:
        self._node_spec = executors.check_spec(node_executor, "node_executor")
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
            raise EngineError(f"max_workers must be a positive int, got {max_workers!r}")
        self._max_workers = max_workers
        self._node_executor: Executor | None = (
            self._node_spec if isinstance(self._node_spec, Executor) else None
        )
        self._owned: list[Executor] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def node_executor(self) -> str | Executor:
        """The node executor as given: an alias or an Executor instance."""
        return self._node_spec

    @property
    def max_workers(self) -> int | None:
        return self._max_workers

    @property
    def inline(self) -> bool:
        """True when sync nodes are plain calls on the event loop."""
        return self._node_spec == "sequential"

    def node_pool(self) -> Executor | None:
        """The executor for sync nodes, created on first use; None when inline."""
        if self._node_executor is not None or self.inline:
            return self._node_executor
        with self._lock:
            if self._closed:
                raise EngineError("this Engine is closed; create a new one to run pipelines")
            if self._node_executor is None:
                assert isinstance(self._node_spec, str)
                pool = executors.create(self._node_spec, self._max_workers)
                if pool is not None:
                    self._owned.append(pool)
                    weakref.finalize(self, pool.shutdown, wait=False)
                self._node_executor = pool
        return self._node_executor

    async def arun_plan(self, plan: Plan, values: list[Any]) -> None:
        """Run a compiled plan, writing results into ``values``."""
        await run_plan(plan, values, self.node_pool())

    def close(self) -> None:
        """Shut down the executors this engine created (waiting for their jobs)."""
        with self._lock:
            self._closed = True
            owned, self._owned = self._owned, []
            if self._node_executor in owned:
                self._node_executor = None
        for pool in owned:
            pool.shutdown(wait=True)

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        workers = f", max_workers={self._max_workers}" if self._max_workers else ""
        return f"Engine(node_executor={self._node_spec!r}{workers})"
