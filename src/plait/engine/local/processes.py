"""Map items on a process pool: the pipeline shipped once per worker, items in chunks.

Functions, closures and lambdas travel with cloudpickle. Each map writes its
pickled item runner to a private temporary file once; a worker loads it on its
first chunk of that map and keeps it, so the pipeline reaches each worker once
whatever the number of chunks. Chunks of consecutive items come back as one
result per item, and plait's map orders them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import tempfile
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from plait.engine.local.inflight import InFlight
from plait.engine.local.items import ItemRunner, Reply, Result, run_items
from plait.engine.local.launchers import Chunk, Launcher
from plait.errors import WorkerDiedError


class ProcessLauncher(Launcher):
    """Submits chunks of items to a process pool."""

    def __init__(
        self,
        runner: ItemRunner,
        executor: Executor,
        workers: int,
        stop_on_error: bool,
        size_hint: int | None,
        on_abort: Callable[[], None] | None,
    ) -> None:
        self.executor = executor
        self.stop_on_error = stop_on_error
        # About four chunks per worker: few round trips, yet work stays balanced.
        per_worker = -(-size_hint // (workers * 4)) if size_hint else 16
        self.chunk_size = max(1, min(per_worker, 256))
        self.token = uuid.uuid4().hex
        self.replayer = runner.replayer()
        self.on_abort = on_abort
        self.in_flight: dict[int, int] = {}  # first item -> last item of running chunks
        self.broken = False
        # Worker processes seen so far: the pool forgets a dead one before we ask.
        self.processes: dict[int, Any] = {}
        fd, self.path = tempfile.mkstemp(prefix="plait-map-", suffix=".pkl")  # mode 0600
        with os.fdopen(fd, "wb") as file:
            cloudpickle.dump(runner.for_worker(), file)

    def launch(self, inflight: InFlight[Chunk], chunk: Chunk) -> None:
        first = chunk[0][0]
        items = [item for _, item in chunk]
        job = self.executor.submit(
            run_chunk, self.token, self.path, first, items, self.stop_on_error
        )
        inflight.add_job(job, chunk)
        self.in_flight[first] = chunk[-1][0]
        self.processes.update(getattr(self.executor, "_processes", None) or {})

    def results(self, future: asyncio.Future[Any], chunk: Chunk) -> list[Result]:
        try:
            reply: Reply = future.result()
            results, events = reply
        except BrokenProcessPool:
            self.broken = True
            spans = ", ".join(
                str(a) if a == b else f"{a}-{b}" for a, b in sorted(self.in_flight.items())
            )
            raise WorkerDiedError(
                f"a worker process died ({_exit_codes(self.processes)}) while map items {spans} "
                "were in flight; one of them was running in it when it was killed or crashed "
                "(out of memory, a segfault in an extension, os._exit). Those items are lost; "
                "a pool the engine owns is replaced on the next map."
            ) from None
        del self.in_flight[chunk[0][0]]
        if self.replayer is not None:
            self.replayer.replay(events)
        return results

    async def before_cancel(self, inflight: InFlight[Chunk]) -> None:
        # An owned pool is stopped hard, so no chunk keeps running in a worker: its
        # processes are terminated and the pool fails their jobs itself. Wait for
        # that rather than cancel the jobs meanwhile, which races with the pool's
        # own thread (concurrent.futures then raises InvalidStateError there).
        # A pool passed in is not ours to stop: its running chunks are waited for.
        if self.on_abort is not None:
            await asyncio.to_thread(self.on_abort)
        if self.on_abort is not None or self.broken:
            await inflight.settle(seconds=10)

    def close(self) -> None:
        """Remove the shipped pipeline file."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _exit_codes(processes: dict[int, Any]) -> str:
    """How the pool's workers ended, as far as already known (the pool stops the
    survivors of a broken pool itself, with SIGTERM)."""
    codes = sorted({p.exitcode for p in processes.values() if p.exitcode not in (None, 0)})
    if not codes:
        return "exit status not known yet"
    return "; ".join(_describe_exit(c) for c in codes)


def _describe_exit(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


# --- in the worker process -------------------------------------------------------

_RUNNERS: dict[str, ItemRunner] = {}


def run_chunk(
    token: str, path: str, first: int, items: list[tuple[Any, ...]], stop_on_error: bool
) -> Reply:
    """Run consecutive items in a worker (see :func:`~plait.engine.local.mapping.run_items`)."""
    runner = _RUNNERS.get(token)
    if runner is None:
        with open(path, "rb") as file:
            runner = pickle.load(file)
        runner.attach_local_runtime()
        if len(_RUNNERS) >= 4:  # keep the last few maps' pipelines
            _RUNNERS.pop(next(iter(_RUNNERS)))
        _RUNNERS[token] = runner
    return run_items(runner, first, items, stop_on_error=stop_on_error)
