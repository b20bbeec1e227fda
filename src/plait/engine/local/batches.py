"""Batch calls in a map: items that reach a batch node wait together; one call serves them.

A map of a plan with batch nodes (``plan.batched``) runs its items as tasks on one
event loop (the map's, an ``AsyncExecutor``'s, or a worker process's for a chunk of
items) and gives them one :class:`MapBatches`: a :class:`Batcher` per batch step.
An item that reaches a batch step (a cache miss) queues its values there and waits.
The queue is called as a batch when

* it holds ``batch_size`` items,
* ``max_wait`` seconds have passed since its oldest item queued, or
* nothing can add to it any more: every item that has started and not passed that
  step is queued there or done, and every item in flight is waiting in a queue, so
  none will finish and make room for a new one (checked one loop turn later, so
  that items started together all arrive first). When items in flight are still
  running (downstream, say), the queue waits for the items that will take their
  places: in a steady stream, batches stay full.

The call runs in the task of the batch's oldest item, its *leader* (no task is
created beside the items', so cancelling the map cancels its batch calls), with
the node's controls (a concurrency slot and a rate-limit start per call, retries of
the whole call, the timeout per attempt) and on the executor one call of that node
would use. The leader hands every other item its result, or a copy of the error.
A batcher is used from one event loop only.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from concurrent.futures import Executor
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final

from plait._text import short_repr, spans
from plait.batching import batch_results
from plait.bridge import portal
from plait.engine.local.calls import submit_call
from plait.engine.local.controls import NodeRuntime, await_job, call_controlled
from plait.engine.local.plan import Plan, Route, Step

if TYPE_CHECKING:
    from plait.callbacks.dispatch import Scope

#: What a queued item's future is set to when it is to lead (call) the next batch.
_LEAD: Final = object()
#: Items an error note lists with their inputs; the rest are counted.
_SHOWN = 3


def largest_batch(plan: Plan) -> int:
    """The largest ``batch_size`` of the plan's batch nodes (0 without any)."""
    sizes = [plan.steps[i].node.batching.size for i in plan.batched]  # type: ignore[union-attr]
    return max(sizes, default=0)


def chunk_size(plan: Plan, size: int) -> int:
    """``size`` rounded up to a multiple of the plan's largest batch, so that the items of
    one chunk (run together in a worker) fill whole batches."""
    largest = largest_batch(plan)
    return size if largest <= 1 else -(-size // largest) * largest


def items_route(route: Route) -> Route:
    """The route of a map's items when the plan has batch nodes: the dataflow
    scheduler, never plain inline calls, so an item can wait at a batch step."""
    if not route.inline:
        return route
    from dataclasses import replace

    return replace(route, inline=False, map_inline=False)


class MapBatches:
    """The batchers of one map (or one chunk of a map in a worker), and which of its
    items may still reach each of them."""

    __slots__ = ("batchers", "launching", "pending", "refill", "supplied", "waiting")

    def __init__(
        self,
        plan: Plan,
        route: Route,
        runtime: NodeRuntime | None,
        scope: Scope | None,
    ) -> None:
        self.batchers = {
            index: Batcher(self, plan, index, route, runtime, scope) for index in plan.batched
        }
        #: Items that started and are not done, with the batch steps each has not
        #: passed yet.
        self.pending: dict[int, set[int]] = {}
        #: Items waiting in a queue, with how many queues each waits in.
        self.waiting: dict[int, int] = {}
        #: A map feeds these batches more items as others finish (:meth:`supply`);
        #: items run together (a worker's chunk, a Daft batch) all start at once.
        self.supplied = False
        #: An item finished and the map has not yet started the ones taking its room.
        self.refill = False
        #: The map is submitting items that start on another loop at once (an
        #: ``AsyncExecutor``'s): those submitted may be about to join a queue.
        self.launching = False

    def enter(self, item: int) -> None:
        """Item ``item`` starts: until it passes them, it may reach every batch step."""
        self.pending[item] = set(self.batchers)
        for batcher in self.batchers.values():
            batcher.expected += 1

    def passed(self, item: int, step: int) -> None:
        """Item ``item`` reached batch step ``step``, or got its result from the cache."""
        steps = self.pending.get(item)
        if steps is not None and step in steps:
            steps.discard(step)
            self.batchers[step].expected -= 1
            self.settle()

    def leave(self, item: int) -> None:
        """Item ``item`` is done (finished, failed or cancelled)."""
        for step in self.pending.pop(item, ()):
            self.batchers[step].expected -= 1
        if self.supplied:
            self.refill = True  # until the map has started what takes its room
        self.settle()

    def supply(self, more: bool) -> None:
        """The map has started every item its window has room for; ``more``: items
        may still come as others finish (False once the input is exhausted).

        Called from the map's loop, which need not be the items' (an
        ``AsyncExecutor`` runs them on its own): the queues are checked on theirs.
        """
        self.supplied = more
        self.refill = False
        self._settle_soon()

    def launched(self) -> None:
        """The map has submitted a round of items to an executor whose loop starts them
        at once (``launching`` was set before): the queues may be due."""
        self.launching = False
        self._settle_soon()

    def _settle_soon(self) -> None:
        """:meth:`settle` on the queues' loop (it need not be the caller's)."""
        for batcher in self.batchers.values():
            if batcher.queue:
                batcher.queue[0].future.get_loop().call_soon_threadsafe(self.settle)
                return

    def queued(self, item: int, change: int) -> None:
        """Item ``item`` joined (``change=1``) or left (-1) a queue."""
        count = self.waiting.get(item, 0) + change
        if count > 0:
            self.waiting[item] = count
        else:
            self.waiting.pop(item, None)

    def stalled(self) -> bool:
        """Every item in flight waits in a queue: none will finish and make room, and
        the map is not about to start items in the room of those that finished."""
        return not self.refill and not self.launching and len(self.waiting) >= len(self.pending)

    def settle(self) -> None:
        """Start what is due in every queue (a plan has few batch steps)."""
        for batcher in self.batchers.values():
            batcher.check()

    def item(self, index: int) -> ItemBatches:
        """What the scheduler of item ``index`` calls at batch steps."""
        return ItemBatches(self, index)


class ItemBatches:
    """One item's view of its map's batchers (given to the item's scheduler)."""

    __slots__ = ("item", "owner")

    def __init__(self, owner: MapBatches, item: int) -> None:
        self.owner = owner
        self.item = item

    def submit(self, step: int, values: list[Any]) -> Any:
        """The coroutine of this item's call of batch step ``step``: its result."""
        return self.owner.batchers[step].submit(self.item, values)

    def passed(self, step: int) -> None:
        """This item got step ``step``'s result from the cache (any step: others are
        ignored)."""
        if step in self.owner.batchers:
            self.owner.passed(self.item, step)


class _Entry:
    __slots__ = ("arrived", "future", "item", "queued", "values")

    def __init__(self, item: int, values: list[Any], future: asyncio.Future[Any], now: float):
        self.item = item
        self.values = values
        self.future = future
        self.arrived = now
        self.queued = False


class Batcher:
    """The queue of one batch step in one map, and its batch calls."""

    __slots__ = (
        "columns",
        "executor",
        "expected",
        "idle_check",
        "index",
        "max_wait",
        "owner",
        "queue",
        "runtime",
        "scope",
        "signaled",
        "size",
        "step",
        "timer",
        "to_thread",
    )

    def __init__(
        self,
        owner: MapBatches,
        plan: Plan,
        index: int,
        route: Route,
        runtime: NodeRuntime | None,
        scope: Scope | None,
    ) -> None:
        single = plan.steps[index]
        batch_node = single.node.batch_node
        batching = single.node.batching
        assert batch_node is not None
        assert batching is not None
        self.owner = owner
        self.index = index
        self.size = batching.size
        self.max_wait = batching.max_wait
        #: The step a batch call makes: the batch form, reading the same slots.
        self.step = Step(batch_node, single.positional, single.keyword, single.out_slots)
        #: Slots that get one list per batch (every argument but deps).
        self.columns = tuple(
            dict.fromkeys(slot for _, slot in single.arg_slots if slot not in plan.dep_slots)
        )
        self.runtime = runtime
        self.scope = scope
        self.executor: Executor | None = route.executor
        self.to_thread = route.limit is not None  # the "async" node executor: sync on threads
        self.queue: deque[_Entry] = deque()
        #: Items in flight that have not passed this step (they may still queue here).
        self.expected = 0
        #: The queued item told to lead the next batch, until it takes it.
        self.signaled: _Entry | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.idle_check = False

    # --- queueing ------------------------------------------------------------------

    async def submit(self, item: int, values: list[Any]) -> Any:
        """Queue item ``item`` and return its result once a batch call has served it."""
        loop = asyncio.get_running_loop()
        entry = _Entry(item, values, loop.create_future(), loop.time())
        self._enqueue(entry)
        self.owner.passed(item, self.index)  # checks the queues
        try:
            outcome = await entry.future
        except asyncio.CancelledError:
            self._withdraw(entry)
            raise
        if outcome is not _LEAD:
            return outcome
        return await self._lead(entry)

    def check(self) -> None:
        """Start a batch if one is due; otherwise arm what will start it."""
        queue = self.queue
        if self.signaled is not None or not queue:
            return
        if len(queue) >= self.size:
            self._signal()
            return
        loop = queue[0].future.get_loop()
        if self.expected == 0 and not self.idle_check and self.owner.stalled():
            self.idle_check = True
            loop.call_soon(self._idle)
        if self.max_wait is not None and self.timer is None:
            self.timer = loop.call_at(queue[0].arrived + self.max_wait, self._waited)

    def _idle(self) -> None:
        self.idle_check = False
        if self.expected == 0 and self.owner.stalled():
            self._signal()

    def _waited(self) -> None:
        self.timer = None
        self._signal()

    def _signal(self) -> None:
        """Tell the oldest queued item to call the next batch."""
        queue = self.queue
        while queue and queue[0].future.cancelled():  # its task is withdrawing it
            self._dequeue(queue.popleft())
        if self.signaled is not None or not queue:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        entry = self.signaled = queue[0]
        entry.future.set_result(_LEAD)

    def _withdraw(self, entry: _Entry) -> None:
        """A queued item was cancelled: it leaves the queue (and its lead passes on)."""
        if entry.queued:
            self.queue.remove(entry)
            self._dequeue(entry)
        if self.signaled is entry:
            self.signaled = None
        self.owner.settle()

    def _enqueue(self, entry: _Entry, *, front: bool = False) -> None:
        if front:
            self.queue.appendleft(entry)
        else:
            self.queue.append(entry)
        entry.queued = True
        self.owner.queued(entry.item, 1)

    def _dequeue(self, entry: _Entry) -> None:
        """``entry`` was taken off the queue."""
        entry.queued = False
        self.owner.queued(entry.item, -1)

    def _take(self) -> list[_Entry]:
        """The signaled leader takes the next batch off the queue."""
        queue = self.queue
        batch: list[_Entry] = []
        while queue and len(batch) < self.size:
            entry = queue.popleft()
            self._dequeue(entry)
            if not entry.future.cancelled():  # else its task is withdrawing it
                batch.append(entry)
        self.signaled = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.check()  # the items left behind: another batch now, or later
        return batch

    # --- calling -------------------------------------------------------------------

    async def _lead(self, leader: _Entry) -> Any:
        batch = self._take()
        assert batch[0] is leader
        try:
            results = await self._call(batch)
        except asyncio.CancelledError:
            # The leader alone was cancelled: the others go back to the queue's front.
            for entry in reversed(batch[1:]):
                if not entry.future.done():
                    self._enqueue(entry, front=True)
            self.owner.settle()
            raise
        except Exception as exc:
            self._fail(batch, exc)
            raise
        for entry, result in zip(batch[1:], results[1:], strict=True):
            if not entry.future.done():
                entry.future.set_result(result)
        return results[0]

    async def _call(self, batch: list[_Entry]) -> list[Any]:
        """One batch call with the node's controls; the per-item results, checked."""
        values = list(batch[0].values)  # deps and everything else as the leader has them
        for slot in self.columns:
            values[slot] = [entry.values[slot] for entry in batch]
        scope = self.scope
        items = tuple(entry.item for entry in batch)
        node = self.step.node
        if scope is not None:
            scope.emit("on_batch_start", node=node.name, items=items)
        start = perf_counter()
        try:
            results = batch_results(node, await self._invoke(values, items), len(batch))
        except BaseException as exc:
            if scope is not None:
                scope.emit(
                    "on_batch_end",
                    node=node.name,
                    items=items,
                    duration=perf_counter() - start,
                    error=exc,
                )
            raise
        if scope is not None:
            scope.emit("on_batch_end", node=node.name, items=items, duration=perf_counter() - start)
        return results

    async def _invoke(self, values: list[Any], items: tuple[int, ...]) -> Any:
        step = self.step
        if step.controlled:
            assert self.runtime is not None
            scope = self.scope

            def retried(step: Step, attempt: int, exc: BaseException, delay: float) -> None:
                if scope is not None:
                    scope.emit(
                        "on_node_retry",
                        node=step.node.name,
                        items=items,
                        error=exc,
                        attempt=attempt,
                        delay=delay,
                    )

            return await call_controlled(step, self.index, values, self.runtime, retried)
        args, kwargs = step.args(values), step.kwargs(values)
        if step.is_async:
            return await step.func(*args, **kwargs)
        if self.executor is not None:
            job = submit_call(self.executor, step, args, kwargs)
            return await await_job(job, step, None, self.executor)
        if self.to_thread:
            return await asyncio.to_thread(step.func, *args, **kwargs)
        result = portal.call(step.func, *args, **kwargs)  # inline, as a sync node runs
        return await result.finish() if type(result) is portal.Suspended else result

    def _fail(self, batch: list[_Entry], exc: BaseException) -> None:
        """The batch call raised ``exc``: note the node and the batch's items on it; every
        other item of the batch fails with a copy (the leader raises ``exc`` itself)."""
        exc.add_note(self._note(batch))
        for entry in batch[1:]:
            if not entry.future.done():
                entry.future.set_exception(_copy_error(exc))

    def _note(self, batch: list[_Entry]) -> str:
        step = self.step
        node = step.node
        shown = []
        for entry in batch[:_SHOWN]:
            args = ", ".join(
                f"{name}={short_repr(entry.values[slot])}"
                for name, slot in step.arg_slots
                if slot in self.columns
            )
            shown.append(f"{entry.item} ({args})")
        more = len(batch) - _SHOWN
        rest = f" and {more} more: {spans(e.item for e in batch[_SHOWN:])}" if more > 0 else ""
        return (
            f"plait: raised in a batch call of node {node.name!r} (→ {', '.join(node.outputs)}) "
            f"with {len(batch)} item{'s' if len(batch) != 1 else ''}: {', '.join(shown)}{rest}"
        )


def _copy_error(exc: BaseException) -> BaseException:
    """A copy of ``exc`` with its own notes (so each item's notes stay its own); ``exc``
    itself when it cannot be copied."""
    try:
        dup = copy.copy(exc)
    except Exception:
        return exc
    if type(dup) is not type(exc):
        return exc
    if dup.__dict__ is exc.__dict__:  # tblib's pickling support (dask installs it) copies so
        dup.__dict__ = dict(exc.__dict__)
    notes = getattr(exc, "__notes__", None)
    if notes is not None:
        dup.__notes__ = list(notes)
    dup.__traceback__ = exc.__traceback__
    dup.__cause__ = exc.__cause__
    dup.__context__ = exc.__context__
    dup.__suppress_context__ = exc.__suppress_context__
    return dup
