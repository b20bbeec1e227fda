"""One map item as one run of the plan: :class:`ItemRunner`, here and in workers.

Each item is one run of the same scheduler with the item's mapped values
written into a copy of the plan's slots (broadcast inputs are written once).
The runner goes with the map wherever its items run: on the loop, on a thread,
or pickled to a worker process (:meth:`ItemRunner.for_worker`).
"""

from __future__ import annotations

import asyncio
import copy
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from functools import partial
from operator import itemgetter
from time import perf_counter
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from plait.bridge import block_on, ensure_loop, loop_optional
from plait.callbacks.remote import Event, Replayer, portable, recording
from plait.engine.base import Consecutive
from plait.engine.context import ENCLOSING, TOP, Enclosing
from plait.engine.local.batches import MapBatches
from plait.engine.local.controls import NodeRuntime, worker_runtime
from plait.engine.local.hooks import NodeHooks
from plait.engine.local.inflight import InFlight
from plait.engine.local.inline import (
    COMPILE_AFTER,
    ItemsRun,
    annotate,
    call_step,
    compile_items,
    returned_coroutine,
    store_result,
)
from plait.engine.local.plan import Route
from plait.engine.local.resources import run_with_deps
from plait.engine.local.scheduler import run_plan
from plait.engine.request import OneInputItems, annotate_item

if TYPE_CHECKING:
    from plait.engine.local.dep_scope import DepScope
    from plait.engine.local.observe import Services
    from plait.engine.local.signatures import CacheSetup

#: One item's result: (index, outputs) or (index, exception, formatted traceback or None).
Result = tuple[int, dict[str, Any]] | tuple[int, BaseException, str | None]
#: An item that failed: (index, exception, its traceback formatted where it was raised,
#: or None when that was this process).
Failure = tuple[int, BaseException, str | None]
#: What a worker sends back for a chunk of consecutive items: the outputs of each item
#: in order (None for one that failed or did not run: after a failure with
#: ``stop_on_error``), the failures (each names its item), and the events the items
#: emitted. Columnar, so a chunk that did not fail carries no index per item.
Reply = tuple[list[dict[str, Any] | None], list[Failure], list[Event]]


def reply_results(first: int, reply: Reply) -> tuple[Sequence[Result], bool]:
    """A reply's results (``first`` is its first item's index) in index order, and True
    when none of its items failed: then they are the outputs as they came
    (:class:`~plait.engine.base.Consecutive`), without a pair per item."""
    outputs, failures, _ = reply
    if not failures:
        return Consecutive(first, outputs), True  # type: ignore[arg-type,return-value]
    results: list[Result] = [(i, out) for i, out in enumerate(outputs, first) if out is not None]
    results += failures
    results.sort(key=itemgetter(0))
    return results, False


class ItemRunner:
    """Turns one item's mapped values into a finished run of the plan."""

    __slots__ = (
        "_items_run",
        "_items_seen",
        "_shared_enclosing",
        "base",
        "batches",
        "enclosing",
        "names",
        "owner",
        "plan",
        "route",
        "runtime",
        "services",
        "setup",
        "shared",
        "slots",
    )

    def __init__(
        self,
        route: Route,
        given: Mapping[str, Any],
        names: Sequence[str],
        runtime: NodeRuntime | None,
    ) -> None:
        self.route = route
        self.plan = plan = route.plan
        self.names = tuple(names)
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
        #: The map's run-scoped deps, set up once for all items.
        self.shared: DepScope | None = None
        #: What keeps the process-scoped deps items take (the engine; None in a worker).
        self.owner: object | None = None
        #: The map's batch calls, when the plan has batch nodes (see :meth:`batch`).
        self.batches: MapBatches | None = None
        #: (enclosing, the record its items share): see :meth:`shared_enclosing`.
        self._shared_enclosing: tuple[Enclosing, Enclosing] | None = None
        #: Items run so far as plain calls in a worker, and their compiled loop.
        self._items_seen = 0
        self._items_run: ItemsRun | None = None

    @property
    def lean(self) -> bool:
        """True when an inline item is a plain run: no cache, callbacks or deps."""
        return self.services is None and not self.plan.deps

    def observe(self, services: Services) -> None:
        """Run items with this map's cache and callbacks."""
        self.services = services
        self.setup = services.setup(self.plan, varying=[s for s in self.slots if s >= 0])

    def batch(self) -> None:
        """Group this map's items into batch calls at its batch nodes (call it once the
        runner has its services): items then run as tasks on one event loop."""
        scope = self.services.scope if self.services is not None else None
        self.batches = MapBatches(self.plan, self.route, self.runtime, scope)

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

    def compiled_items(self, count: int) -> ItemsRun | None:
        """The map's items compiled as plain calls (:func:`compile_items`), once this
        runner is about to have run :data:`COMPILE_AFTER` of them (``count`` more now);
        None before."""
        if self._items_run is None:
            self._items_seen += count
            if self._items_seen >= COMPILE_AFTER:
                self._items_run = compile_items(self.plan, self.slots)
        return self._items_run

    def inputs(self, item: tuple[Any, ...]) -> dict[str, Any]:
        return dict(zip(self.names, item, strict=True))

    def run_plain(self, index: int, item: tuple[Any, ...]) -> dict[str, Any]:
        """Run item ``index`` as plain calls; only for lean items of an inline route."""
        values = self.values(item)
        plan = self.plan
        enclosing = self.enclosing
        token = ENCLOSING.set(enclosing) if enclosing else None
        try:
            plan.plain(values)
        finally:
            if token is not None:
                ENCLOSING.reset(token)
        return plan.outputs(values)

    @loop_optional
    async def arun(self, index: int, item: tuple[Any, ...]) -> dict[str, Any]:
        """Run item ``index``: on this event loop, or without one when its route is inline."""
        if not self.route.inline:
            await ensure_loop()
        values = self.values(item)
        plan = self.plan
        batches = self.batches
        if batches is None and self.lean:  # the item's run and nothing around it
            token = ENCLOSING.set(self.enclosing or TOP)  # what item_enclosing gives then
            try:
                await run_plan(self.route, values, self.runtime)
            finally:
                ENCLOSING.reset(token)
            return plan.outputs(values)
        if batches is not None:
            batches.enter(index)
        batch = None if batches is None else batches.item(index)
        token = ENCLOSING.set(self.item_enclosing(index))
        try:
            if self.lean:
                await run_plan(self.route, values, self.runtime, None, batch)
            elif plan.deps:

                async def with_deps(hooks: NodeHooks | None) -> None:
                    run = partial(run_plan, self.route, values, self.runtime, hooks, batch)
                    await run_with_deps(plan, values, run, self.shared, self.owner)

                await self.observed(index, with_deps)
            else:
                run = partial(run_plan, self.route, values, self.runtime, batch=batch)
                await self.observed(index, run)
        finally:
            ENCLOSING.reset(token)
            if batches is not None:
                batches.leave(index)
        return plan.outputs(values)

    def task(self) -> Callable[[int, tuple[Any, ...]], Coroutine[Any, Any, dict[str, Any]]]:
        """What runs an item as a task on the map's loop: :meth:`arun`, or for a lean map
        of one plain async call (a ``batch``), that call with nothing around it."""
        if self.batches is None and self.lean and self.plan.lone is not None:
            return self._lone_call if self._lone_takes_item() else self._lone_task
        return self.arun

    def _lone_takes_item(self) -> bool:
        """True when the lone step's one argument is the map's one input and its one
        output is the one selected: then an item is ``{name: await func(value)}``."""
        step = self.plan.lone
        assert step is not None
        outputs = self.plan.output_slots
        return (
            self.slots == (step.single,)
            and step.single >= 0
            and not step.unpacks
            and len(outputs) == 1
            and outputs[0][1] == step.out_slots[0]
        )

    async def _lone_call(self, index: int, item: tuple[Any, ...]) -> dict[str, Any]:
        """:meth:`_lone_task` when :meth:`_lone_takes_item`: the item's value goes to the
        call as it is, with no list of the plan's values (made only for an error's note)."""
        step = self.plan.lone
        assert step is not None
        ENCLOSING.set(self.enclosing or TOP)
        try:
            result = await step.func(item[0])
        except Exception as exc:
            annotate(exc, step, self.values(item))
            raise
        if type(result) is CoroutineType:  # as store_result refuses it
            raise returned_coroutine(step, self.values(item), result)
        return {self.plan.output_slots[0][0]: result}

    async def _lone_task(self, index: int, item: tuple[Any, ...]) -> dict[str, Any]:
        """:meth:`arun` of a lean item whose plan is one plain async call, run as a task:
        the task's own context holds the enclosing record (nothing to reset), and the
        step is awaited here as ``run_plan`` would await it."""
        step = self.plan.lone
        assert step is not None
        values = self.values(item)
        ENCLOSING.set(self.enclosing or TOP)
        try:
            result = await call_step(step, values)
        except Exception as exc:
            annotate(exc, step, values)
            raise
        store_result(step, values, result)
        return self.plan.outputs(values)

    def run_blocking(self, index: int, item: tuple[Any, ...]) -> dict[str, Any]:
        """Run item ``index`` to completion in a worker (a thread or a process)."""
        if self.route.inline and self.lean:
            return self.run_plain(index, item)
        return block_on(self.arun(index, item))

    def shared_enclosing(self) -> Enclosing:
        """What code inside every item of this map sees as its enclosing run: the map's
        engine and budget, its cache and callbacks."""
        services = self.services
        outer = self.enclosing or TOP
        if services is None:
            return outer
        shared = self._shared_enclosing
        if shared is None or shared[0] is not outer:
            record = outer._replace(scope=services.scope, cache=services.cache)
            shared = self._shared_enclosing = (outer, record)
        return shared[1]

    def item_enclosing(self, index: int) -> Enclosing:
        """What code inside item ``index`` sees as its enclosing run: the record all
        items share, with the item's index when callbacks observe it (nested runs'
        events name it)."""
        shared = self.shared_enclosing()
        if shared.scope is None:
            return shared
        return shared._replace(item=index)

    async def observed(
        self, index: int, run: Callable[[NodeHooks | None], Awaitable[None]]
    ) -> None:
        """``await run(hooks)`` for item ``index``, between its start and end events."""
        hooks, start = self._item_start(index)
        try:
            await run(hooks)
        except BaseException as exc:
            self._item_end(index, hooks, start, exc)
            raise
        self._item_end(index, hooks, start)

    def _item_start(self, index: int) -> tuple[NodeHooks | None, float]:
        services = self.services
        if services is None:
            return None, 0.0
        self.item_started(index)
        return services.hooks(self.plan, self.setup, index), perf_counter()

    def _item_end(
        self, index: int, hooks: NodeHooks | None, start: float, error: BaseException | None = None
    ) -> None:
        self.item_ended(index, hooks, perf_counter() - start, error)

    def node_item(self, index: int) -> int:
        """The item node events of item ``index`` name: itself."""
        return index

    def item_started(self, index: int) -> None:
        """Emit item ``index``'s start event (when callbacks are in effect)."""
        scope = self.services.scope if self.services is not None else None
        if scope is not None:
            scope.emit("on_map_item_start", item=index)

    def item_ended(
        self,
        index: int,
        hooks: NodeHooks | None,
        duration: float,
        error: BaseException | None = None,
    ) -> None:
        """Emit item ``index``'s end event: cached when ``hooks`` found every node in the
        cache, else ended (with ``error``, if it failed)."""
        scope = self.services.scope if self.services is not None else None
        if scope is None or hooks is None:
            return
        if error is None and hooks.all_cached:
            scope.emit("on_map_item_cached", item=index, duration=duration)
        else:
            scope.emit("on_map_item_end", item=index, duration=duration, error=error)

    def replayer(self) -> Replayer | None:
        """What replays, here, the events items of this map emit in other processes."""
        scope = self.services.scope if self.services is not None else None
        return None if scope is None else Replayer(scope)

    def for_worker(self, *, keep_cache: bool = False) -> ItemRunner:
        """A copy to ship to another process: no executors, no limits of this process;
        events are recorded there and replayed here (:mod:`plait.callbacks.remote`).
        ``keep_cache``: the copy runs in this process after all (Daft's native
        runner), so any cache store goes with it."""
        clone = copy.copy(self)
        clone.route = Route.in_worker(self.plan)
        clone.runtime = None
        clone.enclosing = None  # a worker process is its own top level
        clone._shared_enclosing = None
        clone._items_seen, clone._items_run = 0, None  # compiled there: code is not sent
        clone.setup = None  # rebuilt there by attach_local_runtime
        clone.shared = None  # resources do not cross processes: each item sets its own up
        clone.owner = None  # process-scoped deps there are the worker's, kept until it exits
        clone.batches = None  # each chunk of items batches on its own (run_items)
        if self.services is not None:
            clone.services = self.services.for_worker(keep_cache=keep_cache)
        return clone

    def attach_local_runtime(self) -> None:
        """In a worker process: node limits of its own (limits do not span processes),
        and the cache setup of this process."""
        self.runtime = worker_runtime(self.plan)
        if self.services is not None and self.setup is None:
            self.observe(self.services)


def run_items(
    runner: ItemRunner, first: int, items: Sequence[tuple[Any, ...]], *, stop_on_error: bool
) -> Reply:
    """Run consecutive items in a worker process; exceptions come back as values with
    their tracebacks, events as a list to replay. Items of a plan with batch nodes run
    together, as tasks on one loop, so that they share batch calls."""
    outputs: list[dict[str, Any] | None] = []
    failures: list[Failure] = []
    with recording() as events:
        if runner.plan.batched:
            numbered = list(enumerate(items, first))
            outputs = [None] * len(items)
            block_on(run_together(runner, numbered, outputs, failures, stop_on_error))
        elif runner.route.inline and runner.lean and runner.enclosing is None:
            _run_plain_items(runner, first, items, outputs, failures, stop_on_error)
        else:
            for index, item in enumerate(items, first):
                try:
                    outputs.append(runner.run_blocking(index, item))
                except Exception as exc:
                    outputs.append(None)
                    failures.append(failure(runner, index, item, exc))
                    if stop_on_error:
                        break
    return outputs, failures, events


def _run_plain_items(
    runner: ItemRunner,
    first: int,
    items: Sequence[tuple[Any, ...]],
    outputs: list[dict[str, Any] | None],
    failures: list[Failure],
    stop_on_error: bool,
) -> None:
    """:func:`run_items`' loop for lean items of an inline route: each item the plan's
    plain calls. Chunks of small items make this a worker's hot path: once the map
    has run :data:`COMPILE_AFTER` items here, they run through code compiled for it
    (:func:`compile_items`), before that in this loop."""

    def fail(index: int, item: tuple[Any, ...], exc: Exception) -> bool:
        failures.append(failure(runner, index, item, exc))
        return stop_on_error

    compiled = runner.compiled_items(len(items))
    if compiled is not None:
        if len(runner.slots) == 1:  # the loop of a map over one input takes its values
            values = items.values if isinstance(items, OneInputItems) else [v for (v,) in items]
            compiled(values, first, runner.base, outputs, fail)
        else:
            compiled(items, first, runner.base, outputs, fail)
        return
    plan = runner.plan
    for index, item in enumerate(items, first):
        values = runner.values(item)
        try:
            plan.plain(values)
        except Exception as exc:
            outputs.append(None)
            if fail(index, item, exc):
                break
            continue
        outputs.append(plan.outputs(values))


def failure(runner: ItemRunner, index: int, item: tuple[Any, ...], exc: Exception) -> Failure:
    """Item ``index`` raised ``exc`` in a worker: its failure, to send back as a value."""
    annotate_item(exc, index, runner.inputs(item))
    return (index, portable(exc), "".join(traceback.format_exception(exc)))


async def run_together(
    runner: ItemRunner,
    items: Sequence[tuple[int, tuple[Any, ...]]],
    outputs: list[dict[str, Any] | None],
    failures: list[Failure],
    stop_on_error: bool,
) -> None:
    """Run the items ``(index, item)`` as tasks on this loop, sharing their batch calls;
    as they finish, each one's outputs go to its place in ``outputs`` (the place of
    the item in ``items``), its failure to ``failures``."""
    together = copy.copy(runner)
    together.batch()
    inflight: InFlight[int] = InFlight(asyncio.get_running_loop())
    for place, (index, item) in enumerate(items):
        inflight.start_task(together.arun(index, item), place)
    try:
        while inflight:
            await inflight.wait_any()
            while (done := inflight.pop_done()) is not None:
                future, place = done
                try:
                    outputs[place] = future.result()
                except Exception as exc:
                    index, item = items[place]
                    failures.append(failure(runner, index, item, exc))
                    if stop_on_error:
                        return
    finally:
        await inflight.cancel_all()


def run_elsewhere(runner: ItemRunner, first: int, items: Sequence[tuple[Any, ...]]) -> Reply:
    """Consecutive items (one, unless the plan has batch nodes) on another executor's
    worker, with node limits of its own."""
    if runner.runtime is None:
        runner.attach_local_runtime()
    return run_items(runner, first, items, stop_on_error=True)
