"""Launchers: how a map starts its items (as tasks, as executor jobs) and reads results."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures import Future as JobFuture
from typing import Any

from plait.engine.local.async_executor import AsyncExecutor
from plait.engine.local.batches import largest_batch
from plait.engine.local.inflight import InFlight
from plait.engine.local.items import (
    Failure,
    ItemRunner,
    Reply,
    Result,
    reply_results,
    run_elsewhere,
)

#: Consecutive map items: the first one's index, and each one's mapped values (a list
#: of tuples, or for a map over one input its values: ``OneInputItems``).
Chunk = tuple[int, Sequence[tuple[Any, ...]]]


def chunk_size(size_hint: int | None, workers: int, *, unknown: int = 16, most: int = 256) -> int:
    """Items per job: about four chunks per worker, so there are few round trips yet the
    work stays balanced; ``unknown`` when the map's length is not known."""
    per_worker = -(-size_hint // (workers * 4)) if size_hint else unknown
    return max(1, min(per_worker, most))


class Launcher:
    """Starts chunks of items; turns a finished chunk's future into per-item results."""

    chunk_size = 1

    def launch(self, inflight: InFlight[Chunk], chunk: Chunk) -> None:
        raise NotImplementedError

    def results(self, future: asyncio.Future[Any], chunk: Chunk) -> tuple[Sequence[Result], bool]:
        """A finished chunk's results, in index order, and True when none of them failed.
        Here: a chunk of one item whose future holds its outputs or its exception."""
        index = chunk[0]
        try:
            return [(index, future.result())], True
        except Exception as exc:
            return [(index, exc, None)], False

    async def before_cancel(self, inflight: InFlight[Chunk]) -> None:
        """Called after a failure, before everything in flight is cancelled."""

    async def abort(self) -> None:
        """Called after a failure, once everything in flight has been cancelled."""

    def close(self) -> None:
        """Called when the map ends, however it ends."""


class TaskLauncher(Launcher):
    """Each item a task on this event loop."""

    def __init__(self, runner: ItemRunner) -> None:
        self.runner = runner
        self.run = runner.task()

    def launch(self, inflight: InFlight[Chunk], chunk: Chunk) -> None:
        index, (item,) = chunk
        inflight.start_task(self.run(index, item), chunk)


class ThreadChunkLauncher(Launcher):
    """Chunks of consecutive items, each one job on a thread pool of this process.

    One job per item would cost a pool round trip per item, more than a small item's
    own work. Each item still runs in its own copy of the caller's contextvars and
    fails alone; with ``stop_on_error`` the first failure stops every running chunk
    before its next item, and so does the consumer stopping early.
    """

    def __init__(
        self,
        runner: ItemRunner,
        executor: Executor,
        workers: int,
        stop_on_error: bool,
        size_hint: int | None,
    ) -> None:
        self.runner = runner
        self.executor = executor
        self.stop_on_error = stop_on_error
        self.chunk_size = chunk_size(size_hint, workers)
        self.stopped = False

    def launch(self, inflight: InFlight[Chunk], chunk: Chunk) -> None:
        job = self.executor.submit(self._run, contextvars.copy_context(), chunk)
        inflight.add_job(job, chunk)

    def _run(self, context: contextvars.Context, chunk: Chunk) -> Reply:
        run = self.runner.run_blocking
        outputs: list[dict[str, Any] | None] = []
        failures: list[Failure] = []
        first, items = chunk
        for index, item in enumerate(items, first):
            if self.stopped:
                break
            try:
                outputs.append(context.copy().run(run, index, item))
            except Exception as exc:
                outputs.append(None)
                failures.append((index, exc, None))
                if self.stop_on_error:
                    self.stopped = True  # the chunks beside it stop now, not when the loop sees it
                    break
        return outputs, failures, []

    def results(self, future: asyncio.Future[Any], chunk: Chunk) -> tuple[Sequence[Result], bool]:
        return reply_results(chunk[0], future.result())

    async def before_cancel(self, inflight: InFlight[Chunk]) -> None:
        self.stopped = True


class ExecutorLauncher(Launcher):
    """Each item a job on an executor.

    Threads share this process: they see the caller's contextvars and the map's
    node limits. Any other executor (loky, dask ...) may run the job elsewhere, so
    each job carries a self-contained runner (pickled by that executor), and for a
    plan with batch nodes a chunk of items the size of its largest batch, run together.
    """

    def __init__(self, runner: ItemRunner, executor: Executor) -> None:
        self.runner = runner
        self.executor = executor
        self.in_process = isinstance(executor, (ThreadPoolExecutor, AsyncExecutor))
        self.remote = None if self.in_process else runner.for_worker()
        self.replayer = None if self.in_process else runner.replayer()
        if not self.in_process:
            self.chunk_size = max(1, largest_batch(runner.plan))

    def launch(self, inflight: InFlight[Chunk], chunk: Chunk) -> None:
        index, items = chunk
        job: JobFuture[Any]
        if isinstance(self.executor, AsyncExecutor):  # its own loop runs the item's nodes
            job = self.executor.submit(self.runner.arun, index, items[0])
        elif self.in_process:
            ctx = contextvars.copy_context()
            job = self.executor.submit(ctx.run, self.runner.run_blocking, index, items[0])
        else:
            assert self.remote is not None
            job = self.executor.submit(run_elsewhere, self.remote, index, items)
        inflight.add_job(job, chunk)

    def results(self, future: asyncio.Future[Any], chunk: Chunk) -> tuple[Sequence[Result], bool]:
        if self.in_process:
            return super().results(future, chunk)
        try:
            reply: Reply = future.result()
        except Exception as exc:  # the executor's own failure, not the items'
            first, items = chunk
            return [(first + offset, exc, None) for offset in range(len(items))], False
        if self.replayer is not None:
            self.replayer.replay(reply[2])
        return reply_results(chunk[0], reply)
