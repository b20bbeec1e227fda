"""A map on the local engine: items through the scheduler, a bounded window in flight.

How items run is decided once (:class:`~plait.engine.local.plan.Route`): a
sequential map of an inline plan runs its items as plain calls, never
suspending, so from sync code it needs no event loop; every other map runs
items as tasks on the loop (``"sequential"``, ``"async"``, and a thread pool's
map of a plan that needs a loop or has batch nodes: ``Route.items_on_loop``, its
plain sync nodes then go to the pool) or as jobs on the map executor (chunks of
items on a thread or process pool, any other ``Executor``). The window bounds
items in flight plus finished items waiting to be yielded in order, so streaming
a million items keeps memory flat.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from plait.bridge import ensure_loop, loop_optional, portal
from plait.engine.base import Consecutive, Finished, ItemError, OnError, Outcome
from plait.engine.context import ENCLOSING, Enclosing
from plait.engine.local.async_executor import AsyncExecutor
from plait.engine.local.batches import largest_batch
from plait.engine.local.clusters import ClusterExecutor, ClusterLauncher
from plait.engine.local.executors import worker_count
from plait.engine.local.hooks import NodeHooks
from plait.engine.local.inflight import InFlight
from plait.engine.local.inline import run_inline
from plait.engine.local.items import ItemRunner
from plait.engine.local.launchers import (
    Chunk,
    ExecutorLauncher,
    Launcher,
    TaskLauncher,
    ThreadChunkLauncher,
)
from plait.engine.local.observe import observed_map
from plait.engine.local.processes import ProcessLauncher
from plait.engine.local.resources import around_map, map_scope
from plait.engine.request import MapSpec, OneInputItems, annotate_item

if TYPE_CHECKING:
    from plait.engine.local.engine import LocalEngine


def map_items(
    engine: LocalEngine, runner: ItemRunner, spec: MapSpec, on_error: OnError, ordered: bool
) -> AsyncIterator[Finished]:
    """The stream of a map's finished items, with its deps and events around it."""
    depth = ENCLOSING.get().map_depth + 1
    plan = runner.plan
    inline = runner.route.map_inline
    stream: AsyncGenerator[Finished, None]
    if inline:
        runner.enclosing = Enclosing(engine.nested_engine(depth, 1), depth, 1)
        items = _inline_items if plan.deps else _lean_items
        stream = items(runner, spec, on_error)
    else:
        stream = _scheduled_items(engine, runner, spec, depth, on_error, ordered)
    if plan.deps:
        runner.shared = map_scope(plan, runner.base, spec.names, runner.owner)
        if runner.shared is not None:
            stream = around_map(runner.shared, plan, stream, inline)
    services = runner.services
    if services is not None and services.scope is not None:
        stream = observed_map(services, spec.size_hint(), stream, inline)
    return stream


@loop_optional
async def _inline_items(
    runner: ItemRunner, spec: MapSpec, on_error: OnError
) -> AsyncGenerator[Finished, None]:
    """Items one after another as plain calls: this never suspends."""
    for index, item in enumerate(spec.items()):
        outcome: Outcome
        try:
            outcome = await runner.arun(index, item)
        except Exception as exc:
            inputs = runner.inputs(item)
            annotate_item(exc, index, inputs)
            if on_error == "raise":
                raise
            outcome = ItemError.of(exc, index, inputs)
        yield [(index, outcome)]


@loop_optional
async def _lean_items(
    runner: ItemRunner, spec: MapSpec, on_error: OnError
) -> AsyncGenerator[Finished, None]:
    """:func:`_inline_items` of a plan without deps: the hot loop of a sequential map,
    written out (no call per item beyond the nodes' own, and the cache and callback
    hooks when the map has them; the twin of :meth:`ItemRunner.arun`).

    Items run in one copy of the caller's context, made when the map starts, that
    holds the enclosing run its items share (:meth:`ItemRunner.shared_enclosing`):
    entering it costs less than setting and resetting that per item, and the
    consumer's code between items keeps its own context. (With callbacks, each item
    sets its own there, which names the item.)
    """
    plan = runner.plan
    base, slots = runner.base, runner.slots
    one = slots[0] if len(slots) == 1 else -1
    services = runner.services
    events = services is not None and services.scope is not None
    # Only a cache: one set of hooks, passed from item to item (they run one at a time).
    hooks = None if events or runner.setup is None else NodeHooks(plan, None, runner.setup, -1)
    on_loop = portal.usable()  # the same for the whole map: it never asks for a loop
    items_context = contextvars.copy_context()
    items_context.run(ENCLOSING.set, runner.shared_enclosing())
    enter = items_context.run
    for index, item in enumerate(spec.items()):
        if one >= 0:
            values = base.copy()
            values[one] = item[0]
        else:
            values = runner.values(item)
        outcome: Outcome
        try:
            # With hooks, through the portal as run_plan calls it: a node may await.
            if events:  # the item's own enclosing record (it names the item) and events
                enter(ENCLOSING.set, runner.item_enclosing(index))
                await runner.observed(index, partial(portal.acall, enter, run_inline, plan, values))
            elif hooks is not None:  # only a cache
                hooks.next_item(index)
                if on_loop:
                    pending = portal.call(enter, run_inline, plan, values, hooks)
                    if type(pending) is portal.Suspended:
                        await pending.finish()
                else:  # the portal would make a plain call: made here, cheaper
                    enter(run_inline, plan, values, hooks)
            else:
                enter(plan.plain, values)
            outcome = plan.outputs(values)
        except Exception as exc:
            inputs = runner.inputs(item)
            annotate_item(exc, index, inputs)
            if on_error == "raise":
                raise
            outcome = ItemError.of(exc, index, inputs)
        yield [(index, outcome)]


@loop_optional
async def _scheduled_items(
    engine: LocalEngine,
    runner: ItemRunner,
    spec: MapSpec,
    depth: int,
    on_error: OnError,
    ordered: bool,
) -> AsyncGenerator[Finished, None]:
    """Items as tasks on the loop or jobs on the map executor; lists of ``(index,
    outcome)`` as they finish.

    At most ``window`` items are in flight or waiting to be yielded in order. On
    the first failure (``on_error="raise"``), or when the consumer stops early,
    everything in flight is cancelled and awaited before this returns.
    """
    await ensure_loop()
    launcher, window = _launcher(engine, runner, spec, on_error)
    # Room for two whole batches (a sequential map of a plan with batch nodes too): one
    # fills while the items of the other finish.
    window = max(window, 2 * largest_batch(runner.plan))
    # Nested maps share the budget: see LocalEngine.nested_engine.
    runner.enclosing = Enclosing(engine.nested_engine(depth, window), depth, window)
    inflight: InFlight[Chunk] = InFlight(asyncio.get_running_loop())
    items, one_input = spec.items_and_values()
    launched = 0  # items launched so far: the index of the next one
    waiting: dict[int, Outcome] = {}  # finished, not yet yielded (ordered mode)
    running = 0  # items in flight
    next_index = 0
    exhausted = False
    # Batch queues are told when the items taking finished ones' room have started;
    # only tasks on this loop start when launched (an executor may hold them back).
    batches = runner.batches if isinstance(launcher, TaskLauncher) else None
    # An AsyncExecutor starts each item on its own loop as soon as it is submitted:
    # its queues wait for the end of each round of submissions, or the first item
    # could go alone before the next one was submitted.
    submitting = runner.batches if _on_async_executor(launcher) else None
    try:
        while True:
            if submitting is not None:
                submitting.launching = True
            while not exhausted and running + len(waiting) < window:
                size = launcher.chunk_size  # a cluster's launcher adapts it
                room = window - running - len(waiting)
                if room < size and running:  # a whole chunk once more items finish
                    break
                values: Sequence[tuple[Any, ...]]
                if size == 1:  # items one by one (tasks): the common case, written out
                    item = next(items, None)
                    values = [] if item is None else [item]
                elif one_input is not None:  # no tuple per item: the values themselves
                    values = OneInputItems(list(itertools.islice(one_input, min(size, room))))
                else:
                    values = list(itertools.islice(items, min(size, room)))
                if not values:
                    exhausted = True
                    break
                launcher.launch(inflight, (launched, values))
                launched += len(values)
                running += len(values)
            if batches is not None:
                batches.supply(not exhausted)
            if submitting is not None:
                submitting.launched()
            if not inflight:
                return
            await inflight.wait_any()
            finished: list[tuple[int, Outcome]] = []  # as pairs, for one yield
            unsorted = False  # chunks that finished together may come out of order
            while (done := inflight.pop_done()) is not None:
                future, chunk = done
                first, values = chunk
                running -= len(values)
                results, clean = launcher.results(future, chunk)
                if clean and (
                    not ordered or (len(results) == len(values) and first == next_index)
                ):  # every item's outputs, in order: the results are the entries
                    if ordered:
                        next_index += len(results)
                    if isinstance(results, Consecutive):  # a chunk's outputs, as they came
                        if finished:  # those before it first (in ordered mode, they are)
                            yield _in_index_order(finished, unsorted)
                            finished, unsorted = [], False
                        yield results
                    else:
                        if finished and first < finished[-1][0]:
                            unsorted = True
                        finished += results  # type: ignore[arg-type]
                else:
                    for result in results:
                        index = result[0]
                        outcome: Outcome
                        if len(result) == 2:
                            outcome = result[1]
                        else:
                            _, exc, formatted = result
                            inputs = runner.inputs(values[index - first])
                            if formatted is None:  # raised here, not in another process
                                annotate_item(exc, index, inputs)
                            if on_error == "raise":
                                raise exc
                            outcome = ItemError.of(exc, index, inputs, formatted)
                        if ordered:
                            waiting[index] = outcome
                        else:
                            unsorted = unsorted or bool(finished and index < finished[-1][0])
                            finished.append((index, outcome))
                while next_index in waiting:
                    finished.append((next_index, waiting.pop(next_index)))
                    next_index += 1
            if finished:
                yield _in_index_order(finished, unsorted)
    except BaseException:
        await launcher.before_cancel(inflight)
        await inflight.cancel_all()
        await launcher.abort()
        raise
    finally:
        launcher.close()


def _in_index_order(finished: list[tuple[int, Outcome]], unsorted: bool) -> Finished:
    """``finished``, sorted by index if ``unsorted`` says it may not be (a
    :data:`Finished` is in index order)."""
    if unsorted:
        finished.sort(key=itemgetter(0))
    return finished


def _on_async_executor(launcher: Launcher) -> bool:
    return isinstance(launcher, ExecutorLauncher) and isinstance(launcher.executor, AsyncExecutor)


def _launcher(
    engine: LocalEngine, runner: ItemRunner, spec: MapSpec, on_error: OnError
) -> tuple[Launcher, int]:
    """How this map's items start, and how many may be in flight."""
    executor = engine.map_pool()
    if executor is None:
        return TaskLauncher(runner), engine.map_window(None)
    if runner.route.items_on_loop:  # on this loop; plain sync nodes on the pool's threads
        return TaskLauncher(runner), engine.map_window(executor)
    if isinstance(executor, ProcessPoolExecutor):
        workers = worker_count(executor, engine.max_workers)
        launcher = ProcessLauncher(
            runner,
            executor,
            workers,
            stop_on_error=on_error == "raise",
            size_hint=spec.size_hint(),
            on_abort=engine.discard_map_pool if engine.owns_map_pool() else None,
        )
        return launcher, 2 * workers * launcher.chunk_size
    if isinstance(executor, ClusterExecutor):
        cluster = ClusterLauncher(
            runner, executor, stop_on_error=on_error == "raise", size_hint=spec.size_hint()
        )
        return cluster, cluster.window
    if isinstance(executor, ThreadPoolExecutor) and not runner.plan.batched:
        # Chunks of items per thread job; never for batch nodes, whose items must wait
        # together (a thread runs its chunk's items one after another).
        workers = worker_count(executor, engine.max_workers)
        threads = ThreadChunkLauncher(
            runner, executor, workers, stop_on_error=on_error == "raise", size_hint=spec.size_hint()
        )
        return threads, 2 * workers * threads.chunk_size
    jobs = ExecutorLauncher(runner, executor)  # chunks of a batch on other processes
    return jobs, engine.map_window(executor) * jobs.chunk_size
