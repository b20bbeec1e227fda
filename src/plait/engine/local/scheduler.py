"""The one scheduler: runs a compiled plan as a dataflow on the current event loop.

Every node starts the moment its own inputs are ready. Async nodes run as tasks
on the loop; sync nodes run inline (a plain call) or, when the engine has a node
executor, as jobs on it. A run owns everything it starts: when a node fails or
the caller is cancelled, every in-flight task is cancelled and every executor
job is cancelled or waited for before the exception propagates.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from plait.bridge import portal
from plait.cache.miss import MISS
from plait.engine.local.calls import submit_call
from plait.engine.local.controls import NodeRuntime, call_controlled, timed_on_threads
from plait.engine.local.hooks import NodeHooks
from plait.engine.local.inflight import InFlight
from plait.engine.local.inline import annotate, call_step, run_inline, store_result
from plait.engine.local.plan import Plan, Route, Step
from plait.errors import NodeDefinitionError, OutputArityError

if TYPE_CHECKING:
    from plait.engine.local.batches import ItemBatches


def run_plan(
    route: Route,
    values: list[Any],
    runtime: NodeRuntime | None = None,
    hooks: NodeHooks | None = None,
    batch: ItemBatches | None = None,
) -> Awaitable[None]:
    """Run every step of ``route``'s plan, writing results into ``values``: await what
    this returns (the coroutine of the way the plan runs, with no frame around it).

    An inline route (no async or controlled node, no executor, no limit) runs
    the steps as plain calls in topological order; this then suspends only while
    a sync node awaits through the greenlet portal (:mod:`plait.bridge.portal`).
    Otherwise the dataflow scheduler runs them: async nodes as tasks, plain sync
    nodes inline or on ``route.executor``, sync nodes on threads with at most
    ``route.limit`` nodes in flight (the ``"async"`` node executor). ``runtime``
    holds the limits and executors of controlled nodes and is required when the
    plan has any. ``hooks`` (a cache or callbacks in effect) are called around
    each node; a cache hit skips the call. ``batch`` (a map item's, when the plan
    has batch nodes and its route is not inline) takes the calls of batch steps.
    """
    plan = route.plan
    if route.inline:
        return _run_inline_route(plan, values, hooks)
    if plan.lone is not None and hooks is None and batch is None:
        return _await_lone(plan.lone, values)  # one async call (a batch item): no dataflow
    if plan.has_controls and runtime is None:
        raise AssertionError("a plan with controlled nodes needs a NodeRuntime")
    return _Dataflow(plan, values, route.executor, runtime, route.limit, hooks, batch).run()


async def _run_inline_route(plan: Plan, values: list[Any], hooks: NodeHooks | None) -> None:
    """The plan's steps as plain calls, through the portal: a node may await
    (``run_sync``) without blocking the loop."""
    pending = portal.call(run_inline, plan, values, hooks)
    if type(pending) is portal.Suspended:
        await pending.finish()


async def _await_lone(step: Step, values: list[Any]) -> None:
    """A plan of one plain async step, awaited here as the dataflow would await it."""
    try:
        result = await call_step(step, values)
    except Exception as exc:
        annotate(exc, step, values)
        raise
    store_result(step, values, result)


class _Dataflow:
    """State of one run of a plan that has async nodes or an executor."""

    __slots__ = (
        "batch",
        "deferred",
        "executor",
        "failing",
        "hits",
        "hooks",
        "inflight",
        "launched",
        "limit",
        "plan",
        "remaining",
        "runtime",
        "values",
    )

    def __init__(
        self,
        plan: Plan,
        values: list[Any],
        executor: Executor | None,
        runtime: NodeRuntime | None,
        limit: int | None = None,
        hooks: NodeHooks | None = None,
        batch: ItemBatches | None = None,
    ) -> None:
        self.plan = plan
        self.hooks = hooks
        self.batch = batch
        self.hits: deque[int] = deque()  # cache hits, released by run() (no recursion)
        self.failing: int | None = None  # the step whose exception ends the run
        self.limit = limit
        self.values = values
        self.executor = executor
        self.runtime = runtime
        self.remaining = list(plan.indegree)
        self.inflight: InFlight[int] = InFlight(asyncio.get_running_loop())
        self.launched = False  # tasks created since the loop last ran
        self.deferred: list[int] = []  # ready async steps, not yet started

    async def run(self) -> None:
        inline: deque[int] = deque()  # ready plain sync steps
        for index in self.plan.roots:
            self._ready(index, inline)
        try:
            while True:
                while self.hits:
                    self._release(self.plan.steps[self.hits.popleft()], inline)
                if self.deferred:
                    if len(self.deferred) == 1 and not inline and not self.inflight:
                        await self._await_only(inline)
                        continue
                    self._start_deferred()
                if inline:
                    await self._run_inline(inline)
                    continue
                if not self.inflight:
                    return
                await self.inflight.wait_any()
                self.launched = False
                self._finish_done(inline)
        except BaseException as exc:
            if self.hooks is not None and self.failing is not None:
                self.hooks.failed(self.failing, exc)
            await self.inflight.cancel_all()
            raise

    async def _await_only(self, inline: deque[int]) -> None:
        """The one deferred step is the only work there is: await it here, without a task,
        and so on while each step readies just one more (a chain of async nodes)."""
        deferred, steps, inflight = self.deferred, self.plan.steps, self.inflight
        while True:
            index = deferred.pop()
            step = steps[index]
            try:
                result = await self._coroutine(index, step)
            except Exception as exc:
                if not self._batched(step):
                    annotate(exc, step, self.values)
                self.failing = index
                raise
            self._finish(index, result, inline)
            if len(deferred) != 1 or inline or inflight or self.hits:
                return

    def _start_deferred(self) -> None:
        """Start ready async steps as tasks (as many as the limit leaves room for)."""
        deferred, inflight, steps = self.deferred, self.inflight, self.plan.steps
        room = len(deferred) if self.limit is None else self.limit - len(inflight)
        if room > 0:
            for index in deferred[:room]:
                coro = self._coroutine(index, steps[index])
                inflight.start_task(coro, index, f"plait node {steps[index].node.name}")
            del deferred[:room]
            self.launched = True

    async def _run_inline(self, inline: deque[int]) -> None:
        """Call ready sync steps on the loop, through the portal."""
        if self.launched:
            # Let freshly created tasks reach their first await (send
            # their request, say) before this call blocks the loop.
            self.launched = False
            await asyncio.sleep(0)
        pending = portal.call(self._call_inline, inline)
        if type(pending) is portal.Suspended:
            await pending.finish()

    def _finish_done(self, inline: deque[int]) -> None:
        """Take the results of every task and job that has finished."""
        steps = self.plan.steps
        while (done := self.inflight.pop_done()) is not None:
            future, index = done
            try:
                result = future.result()
            except BaseException as exc:
                if not self._batched(steps[index]):
                    annotate(exc, steps[index], self.values, worker_thread=self._on_thread(index))
                self.failing = index
                raise
            self._finish(index, result, inline)

    def _on_thread(self, index: int) -> bool:
        """Whether step ``index`` (a task or job that finished) ran on another thread."""
        step = self.plan.steps[index]
        if step.is_async:
            return False
        if step.controlled:
            assert self.runtime is not None
            return self.runtime.executors[index] is not None or timed_on_threads(step)
        return True  # a job on the executor, or to_thread under the limit

    def _call_inline(self, inline: deque[int]) -> None:
        """Call ready sync steps in turn until one readies an async or controlled step.

        One portal call (a greenlet switch there and back) per burst, not per step.
        """
        steps, values = self.plan.steps, self.values
        while True:
            index = inline.popleft()
            try:
                result = call_step(steps[index], values)
            except BaseException:
                self.failing = index
                raise
            self._finish(index, result, inline)
            if not inline or self.deferred or self.launched or self.hits:
                return

    def _ready(self, index: int, inline: deque[int]) -> None:
        step = self.plan.steps[index]
        hooks = self.hooks
        if hooks is not None:
            cached = hooks.before(index, self.values)
            if cached is not MISS:
                store_result(step, self.values, cached)
                self.hits.append(index)
                if self.batch is not None:
                    self.batch.passed(index)
                return
        batched = self.batch is not None and step.node.batching is not None
        if step.controlled and not batched:
            assert self.runtime is not None
            on_retry = None if hooks is None else hooks.retry
            coro = call_controlled(step, index, self.values, self.runtime, on_retry)
            self.inflight.start_task(coro, index, f"plait node {step.node.name}")
            self.launched = True
        elif step.is_async or self.limit is not None or batched:
            self.deferred.append(index)  # started (or awaited) by run()
        elif self.executor is not None:
            self._submit(index, step)
        else:
            inline.append(index)

    def _batched(self, step: Step) -> bool:
        """Whether this item's calls of ``step`` go into its map's batch calls (whose
        errors carry a note naming the node and the batch's items instead)."""
        return self.batch is not None and step.node.batching is not None

    def _coroutine(self, index: int, step: Step) -> Any:
        """The awaitable for a deferred step: the async call, a sync call on a thread, or
        this item's share of a batch call."""
        batch = self.batch
        if batch is not None and step.node.batching is not None:
            return batch.submit(index, self.values)
        if step.is_async:
            return call_step(step, self.values)  # errors creating the coroutine are annotated
        return asyncio.to_thread(step.func, *step.args(self.values), **step.kwargs(self.values))

    def _finish(self, index: int, result: Any, inline: deque[int]) -> None:
        """Step ``index`` returned ``result``: store it and release its successors."""
        step = self.plan.steps[index]
        try:
            store_result(step, self.values, result)
        except (OutputArityError, NodeDefinitionError):
            self.failing = index
            raise
        if self.hooks is not None:
            self.hooks.after(index, result)
        self._release(step, inline)

    def _release(self, step: Step, inline: deque[int]) -> None:
        remaining = self.remaining
        for succ in step.successors:
            remaining[succ] -= 1
            if remaining[succ] == 0:
                self._ready(succ, inline)

    def _submit(self, index: int, step: Step) -> None:
        assert self.executor is not None
        values = self.values
        args, kwargs = step.args(values), step.kwargs(values)
        try:
            job = submit_call(self.executor, step, args, kwargs)
        except Exception as exc:
            annotate(exc, step, values)
            self.failing = index
            raise
        self.inflight.add_job(job, index)
