"""Map a compiled plan over many items, a bounded window of items in flight.

Each item is one run of the same scheduler (``run_plan``) with the item's inputs
written into a copy of the plan's slots. How items run depends on the engine's
map executor: one after another, as tasks on the loop, or as jobs on an
executor. The window bounds items in flight plus finished items waiting to be
yielded in order, so streaming a million items keeps memory flat.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import itertools
import math
import re
import traceback
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping, Sequence, Sized
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures import Future as JobFuture
from dataclasses import dataclass, field
from functools import partial
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal

from plait import bridge
from plait._text import did_you_mean, plural, quoted, short_repr
from plait.callbacks.remote import Event, Replayer, portable, recording
from plait.engine.async_executor import AsyncExecutor
from plait.engine.controls import NodeRuntime
from plait.engine.engine import Engine
from plait.engine.inflight import InFlight
from plait.engine.nesting import ENCLOSING, Enclosing
from plait.engine.plan import Plan
from plait.engine.resources import run_inline_with_deps, run_with_deps
from plait.engine.scheduler import run_inline, run_plan
from plait.errors import InputError

if TYPE_CHECKING:
    from plait.cache.signatures import CacheSetup
    from plait.dep_scope import DepScope
    from plait.engine.hooks import NodeHooks
    from plait.engine.services import Services

MapMode = Literal["zip", "product"]
OnError = Literal["raise", "collect"]


@dataclass(frozen=True, eq=False)
class ItemError:
    """A map item that failed, in its place in the results (``on_error="collect"``).

    Attributes:
        index: the item's position in the map.
        inputs: the item's mapped inputs (broadcast inputs are the same for all).
        exception: the exception the item raised (with plait's notes).
        traceback: the formatted traceback, kept as text.
    """

    index: int
    inputs: dict[str, Any]
    exception: BaseException
    traceback: str = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"ItemError(index={self.index}, inputs={short_repr(self.inputs)}, "
            f"exception={self.exception!r})"
        )


Outcome = dict[str, Any] | ItemError


@dataclass(frozen=True)
class MapSpec:
    """A validated map: which inputs vary per item and how items are formed."""

    names: tuple[str, ...]
    mode: MapMode
    on_error: OnError
    columns: tuple[Iterable[Any], ...]

    def size_hint(self) -> int | None:
        """How many items there will be, when the inputs tell."""
        sizes = [len(c) for c in self.columns if isinstance(c, Sized)]
        if self.mode == "product":
            return math.prod(sizes) if len(sizes) == len(self.columns) else None
        return sizes[0] if sizes else None

    def items(self) -> Iterator[tuple[Any, ...]]:
        """The mapped values of each item, in order."""
        if self.mode == "product":
            return itertools.product(*self.columns)
        return _strict_zip(self.names, self.columns)


def check_map(
    given: Mapping[str, Any],
    map_over: str | Sequence[str],
    map_mode: str,
    on_error: str,
    pipeline_inputs: Sequence[str],
) -> MapSpec:
    """Validate a map's arguments before any work starts."""
    names = (map_over,) if isinstance(map_over, str) else tuple(map_over)
    if not names or not all(isinstance(n, str) for n in names):
        raise InputError(f"map_over must be an input name or a list of names, got {map_over!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"map_over names {quoted(repeated)} more than once; name each input once")
    if map_mode not in ("zip", "product"):
        raise InputError(f"map_mode must be 'zip' or 'product', got {map_mode!r}")
    if on_error not in ("raise", "collect"):
        raise InputError(f"on_error must be 'raise' or 'collect', got {on_error!r}")
    for name in names:
        if name not in pipeline_inputs:
            raise InputError(
                f"map_over names {name!r}, which is not an input of this pipeline."
                f"{did_you_mean(name, pipeline_inputs)} Inputs: {quoted(pipeline_inputs)}"
            )
        if name not in given:
            raise InputError(
                f"map_over names {name!r} but inputs has no {name!r}; pass its values: "
                f"inputs={{{name!r}: [...]}}"
            )
    columns = []
    for name in names:
        values = given[name]
        try:
            iter(values)
        except TypeError:
            raise InputError(
                f"mapped input {name!r} must be iterable (a list, range, generator, array ...), "
                f"got {type(values).__name__}: {short_repr(values)}"
            ) from None
        columns.append(values)
    if map_mode == "zip" and len(names) > 1:
        lengths = {n: len(c) for n, c in zip(names, columns, strict=True) if hasattr(c, "__len__")}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{n!r} has {plural(k, 'item')}" for n, k in lengths.items())
            raise InputError(
                f"map_mode='zip' needs mapped inputs of one length: {listed}. "
                "Make them equal, or use map_mode='product' for every combination."
            )
    return MapSpec(names, map_mode, on_error, tuple(columns))  # type: ignore[arg-type]


def _strict_zip(
    names: Sequence[str], columns: Sequence[Iterable[Any]]
) -> Iterator[tuple[Any, ...]]:
    """zip(), but running out of one input before the others is an error naming both."""
    if len(columns) == 1:
        yield from zip(columns[0])
        return
    count = 0
    try:
        for row in zip(*columns, strict=True):
            yield row
            count += 1
    except ValueError as exc:
        mismatch = _ZIP_MISMATCH.match(str(exc))
        if mismatch is None:
            raise  # raised by an input's own iterator
        other = names[int(mismatch["arg"]) - 1]
        ended, more = (other, names[0]) if mismatch["how"] == "shorter" else (names[0], other)
        raise InputError(
            f"map_mode='zip' needs mapped inputs of one length: {ended!r} ended after "
            f"{plural(count, 'item')} while {more!r} had more"
        ) from None


_TOP = Enclosing()  # what code outside any run sees

_ZIP_MISMATCH = re.compile(r"zip\(\) argument (?P<arg>\d+) is (?P<how>shorter|longer) than")


class ItemRunner:
    """Turns one item's mapped values into a finished run of the plan."""

    __slots__ = (
        "base",
        "enclosing",
        "names",
        "node_pool",
        "plan",
        "runtime",
        "services",
        "setup",
        "shared",
        "slots",
    )

    def __init__(
        self,
        plan: Plan,
        given: Mapping[str, Any],
        names: Sequence[str],
        node_pool: Executor | None,
        runtime: NodeRuntime | None,
    ) -> None:
        self.plan = plan
        self.names = tuple(names)
        self.node_pool = node_pool
        self.runtime = runtime  # one set of node limits for the whole map
        #: What code inside an item sees as its enclosing engine and map budget.
        self.enclosing: Enclosing | None = None
        inputs = plan.input_index
        # Mapped inputs the selected outputs don't need have no slot: -1, skipped.
        self.slots = tuple(inputs.get(n, -1) for n in names)
        broadcast = {n: v for n, v in given.items() if n not in names}
        self.base = plan.new_values(broadcast, partial=True)
        #: The map's cache and callbacks, when any is in effect (see :meth:`observe`).
        self.services: Services | None = None
        self.setup: CacheSetup | None = None
        #: The map's run-scoped deps, set up once for all items (see :meth:`share_deps`).
        self.shared: DepScope | None = None

    def observe(self, services: Services) -> None:
        """Run items with this map's cache and callbacks."""
        self.services = services
        self.setup = services.setup(self.plan, varying=[s for s in self.slots if s >= 0])

    def values(self, item: tuple[Any, ...]) -> list[Any]:
        values = self.base.copy()
        if len(item) == 1:
            if self.slots[0] >= 0:
                values[self.slots[0]] = item[0]
            return values
        for slot, value in zip(self.slots, item, strict=True):
            if slot >= 0:
                values[slot] = value
        return values

    def inputs(self, item: tuple[Any, ...]) -> dict[str, Any]:
        return dict(zip(self.names, item, strict=True))

    def run_inline(self, index: int, item: tuple[Any, ...]) -> dict[str, Any]:
        """Run item ``index`` of a plan of sync nodes as plain calls (no event loop)."""
        values = self.values(item)
        plan = self.plan
        if self.services is None and not plan.deps:  # the plain path, kept lean
            enclosing = self.enclosing
            token = ENCLOSING.set(enclosing) if enclosing else None
            try:
                run_inline(plan, values)
            finally:
                if token is not None:
                    ENCLOSING.reset(token)
            return plan.outputs(values)
        token = ENCLOSING.set(self._enclosing(index))
        try:
            hooks, start = self._item_start(index)
            try:
                run = partial(run_inline, plan, values, hooks)
                run_inline_with_deps(plan, values, run, self.shared)
            except BaseException as exc:
                self._item_end(index, hooks, start, exc)
                raise
            self._item_end(index, hooks, start)
        finally:
            ENCLOSING.reset(token)
        return plan.outputs(values)

    async def arun(self, index: int, item: tuple[Any, ...]) -> dict[str, Any]:
        """Run item ``index`` on this event loop."""
        values = self.values(item)
        enclosing = self._enclosing(index)
        token = ENCLOSING.set(enclosing) if enclosing else None
        try:
            plan = self.plan
            if self.services is None and not plan.deps:
                await run_plan(plan, values, self.node_pool, self.runtime)
            else:
                hooks, start = self._item_start(index)
                try:
                    run = partial(run_plan, plan, values, self.node_pool, self.runtime, None, hooks)
                    await run_with_deps(plan, values, run, self.shared)
                except BaseException as exc:
                    self._item_end(index, hooks, start, exc)
                    raise
                self._item_end(index, hooks, start)
        finally:
            if token is not None:
                ENCLOSING.reset(token)
        return self.plan.outputs(values)

    def _enclosing(self, index: int) -> Enclosing:
        """What code inside item ``index`` sees as its enclosing run."""
        services = self.services
        outer = self.enclosing or _TOP
        if services is None:
            return outer
        return Enclosing(
            outer.engine, outer.map_depth, outer.map_width, services.scope, services.cache, index
        )

    def _item_start(self, index: int) -> tuple[NodeHooks | None, float]:
        services = self.services
        if services is None:
            return None, 0.0
        if services.scope is not None:
            services.scope.emit("on_map_item_start", item=index)
        return services.hooks(self.plan, self.setup, index), perf_counter()

    def _item_end(
        self, index: int, hooks: NodeHooks | None, start: float, error: BaseException | None = None
    ) -> None:
        scope = self.services.scope if self.services is not None else None
        if scope is None or hooks is None:
            return
        duration = perf_counter() - start
        if error is None and hooks.all_cached:
            scope.emit("on_map_item_cached", item=index, duration=duration)
        else:
            scope.emit("on_map_item_end", item=index, duration=duration, error=error)

    def replayer(self) -> Replayer | None:
        """What replays, here, the events items of this map emit in other processes."""
        scope = self.services.scope if self.services is not None else None
        return None if scope is None else Replayer(scope)

    def for_worker(self) -> ItemRunner:
        """A copy to ship to another process: no executors, no limits of this process;
        events are recorded there and replayed here (:mod:`plait.callbacks.remote`)."""
        clone = copy.copy(self)
        clone.node_pool = None
        clone.runtime = None
        clone.enclosing = None  # a worker process is its own top level
        clone.setup = None  # rebuilt there by attach_local_runtime
        clone.shared = None  # resources do not cross processes: each item sets its own up
        if self.services is not None:
            clone.services = self.services.for_worker()
        return clone

    def attach_local_runtime(self) -> None:
        """In a worker process: node limits of its own (limits do not span processes),
        and the cache setup of this process."""
        if self.plan.has_controls:
            self.runtime = Engine().runtime(self.plan)
        if self.services is not None and self.setup is None:
            self.observe(self.services)

    def run_blocking(self, index: int, item: tuple[Any, ...]) -> dict[str, Any]:
        """Run item ``index`` to completion in a worker (a thread or a process)."""
        if self.plan.needs_loop:
            return bridge.run_sync(self.arun(index, item))
        return self.run_inline(index, item)


def annotate_item(exc: BaseException, index: int, inputs: Mapping[str, Any]) -> None:
    """Add a note to ``exc`` naming the map item and its mapped inputs."""
    shown = ", ".join(f"{k}={short_repr(v)}" for k, v in inputs.items())
    exc.add_note(f"plait: in map item {index} with inputs ({shown})")


def item_error(
    exc: BaseException, index: int, inputs: dict[str, Any], formatted: str | None = None
) -> ItemError:
    if formatted is None:
        formatted = "".join(traceback.format_exception(exc))
    return ItemError(index, inputs, exc, formatted)


Chunk = list[tuple[int, tuple[Any, ...]]]
#: One item's result: (index, outputs) or (index, exception, formatted traceback or None).
Result = tuple[int, dict[str, Any]] | tuple[int, BaseException, str | None]


class Launcher:
    """Starts chunks of items; turns a finished chunk's future into per-item results."""

    chunk_size = 1

    def launch(self, inflight: InFlight[Chunk], chunk: Chunk) -> None:
        raise NotImplementedError

    def results(self, future: asyncio.Future[Any], chunk: Chunk) -> list[Result]:
        """A chunk of one item whose future holds its outputs or its exception."""
        ((index, _),) = chunk
        try:
            return [(index, future.result())]
        except Exception as exc:
            return [(index, exc, None)]

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

    def launch(self, inflight: InFlight[Chunk], chunk: Chunk) -> None:
        ((index, item),) = chunk
        inflight.start_task(self.runner.arun(index, item), chunk)


class ExecutorLauncher(Launcher):
    """Each item a job on an executor.

    Threads share this process: they see the caller's contextvars and the map's
    node limits. Any other executor (loky, dask ...) may run the job elsewhere, so
    each job carries a self-contained runner (pickled by that executor).
    """

    def __init__(self, runner: ItemRunner, executor: Executor) -> None:
        self.runner = runner
        self.executor = executor
        self.in_process = isinstance(executor, (ThreadPoolExecutor, AsyncExecutor))
        self.remote = None if self.in_process else runner.for_worker()
        self.replayer = None if self.in_process else runner.replayer()

    def launch(self, inflight: InFlight[Chunk], chunk: Chunk) -> None:
        ((index, item),) = chunk
        job: JobFuture[Any]
        if isinstance(self.executor, AsyncExecutor):  # its own loop runs the item's nodes
            job = self.executor.submit(self.runner.arun, index, item)
        elif self.in_process:
            ctx = contextvars.copy_context()
            job = self.executor.submit(ctx.run, self.runner.run_blocking, index, item)
        else:
            assert self.remote is not None
            job = self.executor.submit(run_elsewhere, self.remote, index, item)
        inflight.add_job(job, chunk)

    def results(self, future: asyncio.Future[Any], chunk: Chunk) -> list[Result]:
        if self.in_process:
            return super().results(future, chunk)
        try:
            reply: Reply = future.result()
            results, events = reply
        except Exception as exc:  # the executor's own failure, not the item's
            return [(chunk[0][0], exc, None)]
        if self.replayer is not None:
            self.replayer.replay(events)
        return results


def run_elsewhere(runner: ItemRunner, index: int, item: tuple[Any, ...]) -> Reply:
    """One item on another executor's worker, with node limits of its own."""
    if runner.runtime is None:
        runner.attach_local_runtime()
    return run_items(runner, index, [item], stop_on_error=True)


#: What a worker sends back: one result per item run, and the events they emitted.
Reply = tuple[list["Result"], list[Event]]


def run_items(
    runner: ItemRunner, first: int, items: Sequence[tuple[Any, ...]], *, stop_on_error: bool
) -> Reply:
    """Run consecutive items in a worker process; exceptions come back as values with
    their tracebacks, events as a list to replay."""
    results: list[Result] = []
    with recording() as events:
        for offset, item in enumerate(items):
            index = first + offset
            try:
                results.append((index, runner.run_blocking(index, item)))
            except Exception as exc:
                annotate_item(exc, index, runner.inputs(item))
                formatted = "".join(traceback.format_exception(exc))
                results.append((index, portable(exc), formatted))
                if stop_on_error:
                    break
    return results, events


async def iterate(
    runner: ItemRunner,
    items: Iterator[tuple[Any, ...]],
    launcher: Launcher,
    *,
    window: int,
    on_error: OnError,
    ordered: bool,
) -> AsyncGenerator[list[tuple[int, Outcome]], None]:
    """Run every item; yield batches of ``(index, outcome)`` as items finish.

    At most ``window`` items are in flight or waiting to be yielded in order. On
    the first failure (``on_error="raise"``), or when the consumer stops early,
    everything in flight is cancelled and awaited before this returns.
    """
    inflight: InFlight[Chunk] = InFlight(asyncio.get_running_loop())
    numbered = enumerate(items)
    size = launcher.chunk_size
    waiting: dict[int, Outcome] = {}  # finished, not yet yielded (ordered mode)
    running = 0  # items in flight
    next_index = 0
    exhausted = False
    try:
        while True:
            while not exhausted and running + len(waiting) < window:
                chunk = list(itertools.islice(numbered, min(size, window - running - len(waiting))))
                if not chunk:
                    exhausted = True
                    break
                launcher.launch(inflight, chunk)
                running += len(chunk)
            if not inflight:
                return
            await inflight.wait_any()
            batch: list[tuple[int, Outcome]] = []
            while (done := inflight.pop_done()) is not None:
                future, chunk = done
                running -= len(chunk)
                inputs = dict(chunk)
                for result in launcher.results(future, chunk):
                    index = result[0]
                    outcome: Outcome
                    if len(result) == 2:
                        outcome = result[1]
                    else:
                        _, exc, formatted = result
                        if formatted is None:  # raised here, not in another process
                            annotate_item(exc, index, runner.inputs(inputs[index]))
                        if on_error == "raise":
                            raise exc
                        outcome = item_error(exc, index, runner.inputs(inputs[index]), formatted)
                    if not ordered:
                        batch.append((index, outcome))
                        continue
                    waiting[index] = outcome
                    while next_index in waiting:
                        batch.append((next_index, waiting.pop(next_index)))
                        next_index += 1
            if batch:
                yield batch
    except BaseException:
        await launcher.before_cancel(inflight)
        await inflight.cancel_all()
        await launcher.abort()
        raise
    finally:
        launcher.close()
