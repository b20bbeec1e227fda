"""RayExecutor: a ``concurrent.futures.Executor`` over Ray tasks.

Ray is imported on first use, and started then unless it already runs in this
process. As a map executor, a map ships its pipeline once and its items in chunks
(:mod:`plait.engine.local.clusters`); as a node executor, each call is a task.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from plait.engine.local.clusters import ClusterExecutor, reraise, run_shipped_chunk


class RayExecutor(ClusterExecutor):
    """Runs each submitted call as a Ray task.

    Args:
        address: the cluster to connect to (``"auto"``, ``"ray://head:10001"``);
            None starts a local Ray unless one runs in this process already.
        init_kwargs: more arguments for ``ray.init`` (``runtime_env``,
            ``num_cpus`` ...). A local Ray this executor starts has its dashboard
            off unless ``include_dashboard`` says otherwise.
        ray_options: options for every task (``num_cpus``, ``resources``,
            ``runtime_env``, ``max_retries`` ...). Tasks are not retried unless
            ``max_retries`` says so: a chunk of map items that ran halfway would
            run its items again.

    Ray is started on the first :meth:`submit` (or map), not here. :meth:`shutdown`
    stops Ray if this executor started it. ``cancel()`` on a future cancels its
    task: one still queued never runs, a running one is interrupted
    (``ray.cancel``). A map's chunks are the exception: a map that fails or is left
    early waits for the chunks it has in flight (two per worker, four in a small
    map), as cancelling them can abort Ray's driver.

        >>> engine = LocalEngine(map_executor=RayExecutor(init_kwargs={"num_cpus": 4}))
    """

    backend = "Ray"
    round_trip = 0.003  # submit to result on a local Ray: 1.5-3 ms

    def __init__(
        self,
        address: str | None = None,
        init_kwargs: Mapping[str, Any] | None = None,
        ray_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.address = address
        self.init_kwargs = dict(init_kwargs or {})
        self.ray_options = dict(ray_options or {})
        self._remote: Any = None
        self._waiter: _Waiter
        self._chunks: Any = None  # the task that runs a chunk of a map's items
        self._started = False  # this executor called ray.init

    def _ray(self) -> Any:
        """The ray module, with Ray running and this executor's tasks defined."""
        ray = importlib.import_module("ray")
        if self._remote is not None:
            return ray
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._remote is None:
                if not ray.is_initialized():
                    kwargs = dict(self.init_kwargs)
                    if self.address is None:
                        kwargs.setdefault("include_dashboard", False)
                    ray.init(address=self.address, **kwargs)
                    self._started = True
                options = {"max_retries": 0, **self.ray_options}
                self._waiter = _Waiter(ray)
                self._chunks = ray.remote(run_shipped_chunk).options(**options)
                self._remote = ray.remote(_call).options(**options)
        return ray

    def _start(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._ray()
        if fn is run_shipped_chunk:  # a map's chunk: a task of its own (no function to send)
            return self._chunks.remote(*args, **kwargs)
        return self._remote.remote(fn, *args, **kwargs)

    def _when_done(self, task: Any, settle: Callable[[Callable[[], Any]], None]) -> None:
        self._waiter.add(task, settle)

    def _cancel(self, task: Any) -> None:
        importlib.import_module("ray").cancel(task)

    def _cancellable(self, fn: Callable[..., Any]) -> bool:
        # A map's chunks are not cancelled: a failed or abandoned map waits for those in
        # flight (two per worker, four in a small map). Ray's driver aborts when a task
        # is cancelled while its reply is being taken in, a race in its task manager
        # ("Tried to complete task that was not pending", Ray 2.60; ray-project/ray#54798
        # fixed another path of it): a map of short chunks cancelled after a failure hit
        # it within seconds. A node's call, long as a rule, still is cancelled.
        return fn is not run_shipped_chunk

    def _unwrap(self, error: BaseException) -> BaseException | None:
        exceptions = importlib.import_module("ray.exceptions")
        if isinstance(error, exceptions.TaskCancelledError):
            return None
        cause = getattr(error, "cause", None)
        if isinstance(error, exceptions.RayTaskError) and isinstance(cause, BaseException):
            return cause  # the call's own exception, not Ray's wrapper of it
        return super()._unwrap(error)

    def _stop(self) -> None:
        if self._started:
            importlib.import_module("ray").shutdown()

    def _count_cpus(self) -> int:
        ray = self._ray()
        per_task = float(self.ray_options.get("num_cpus", 1)) or 1.0
        return max(1, int(ray.cluster_resources().get("CPU", 1) // per_task))

    def _put(self, blob: bytes) -> Any:
        return self._ray().put(blob)

    def dead_worker(self, error: BaseException) -> bool:
        exceptions = importlib.import_module("ray.exceptions")
        died = (exceptions.WorkerCrashedError, exceptions.NodeDiedError)
        return isinstance(error, died)

    def __repr__(self) -> str:
        options = [f"address={self.address!r}"] if self.address else []
        if self.init_kwargs:
            options.append(f"init_kwargs={self.init_kwargs!r}")
        if self.ray_options:
            options.append(f"ray_options={self.ray_options!r}")
        return f"RayExecutor({', '.join(options)})"


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The Ray task: one call."""
    return fn(*args, **kwargs)


#: Seconds one wait for tasks lasts at most: a task submitted during a wait is taken in
#: when one of the tasks waited for ends, or after this.
WAIT_SLICE = 0.01
#: Seconds the waiting thread stays once no task is pending (the next map's tasks
#: then need no new thread), before it ends.
LINGER = 1.0


class _Waiter:
    """Waits for an executor's Ray tasks on a thread of its own (``ray.wait``), and
    settles each one as it ends; the thread runs while tasks are pending (and
    :data:`LINGER` seconds after).

    A done-callback per task (``ObjectRef.future()``) would run each result's
    deserialization and callbacks on Ray's IO thread, contending for the GIL with
    the threads that submit: a map of 10k small items took about 10% longer.
    """

    def __init__(self, ray: Any) -> None:
        self._ray = ray
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)
        self._pending: dict[Any, Callable[[Callable[[], Any]], None]] = {}
        self._waiting = False  # the thread runs

    def add(self, task: Any, settle: Callable[[Callable[[], Any]], None]) -> None:
        """Call ``settle(outcome)`` once ``task`` has ended (``outcome`` is its ``ray.get``)."""
        with self._lock:
            self._pending[task] = settle
            self._added.notify()
            if self._waiting:
                return
            self._waiting = True
        threading.Thread(target=self._wait, name="plait-ray-waiter", daemon=True).start()

    def _wait(self) -> None:
        ray = self._ray
        while True:
            with self._lock:
                if not self._pending:
                    self._added.wait(LINGER)
                    if not self._pending:
                        self._waiting = False
                        return
                tasks = list(self._pending)
            try:
                ready, _ = ray.wait(tasks, num_returns=1, timeout=WAIT_SLICE)
            except BaseException as exc:  # Ray shut down under its tasks
                with self._lock:
                    settles = list(self._pending.values())
                    self._pending.clear()
                    self._waiting = False
                for settle in settles:
                    settle(partial(reraise, exc))
                return
            for task in ready:
                with self._lock:
                    settle = self._pending.pop(task)
                settle(partial(ray.get, task))
