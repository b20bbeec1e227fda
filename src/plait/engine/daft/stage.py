"""What runs inside Daft: a pipeline's items as one UDF stage of plait's own scheduler.

A query's stage is a ``daft.cls`` instance created once per Daft worker (a thread
pool on the native runner, an actor on Ray). It loads the shipped work once: the
map's :class:`~plait.engine.local.items.ItemRunner` (or a :class:`OneRun` for a
single run) and runs each row's item through it, so async nodes, tuple outputs,
node controls, ``Dep`` and nested pipelines behave exactly as on ``LocalEngine``.

Values cross Daft as pickled bytes (a binary column), not as Daft values: a tuple
stays a tuple, a dict a dict, and Daft's Python-object columns cost about ten
times more per row. Errors cross as values in the reply, never as Daft
exceptions (Daft turns them into ``DaftCoreException`` and loses their type).
Each reply carries the callback events its item emitted, replayed on the driver.
Stages in processes other than the driver's record the rows they start and finish
in the map's ledger (:mod:`plait.engine.daft.watch`), so that a worker that dies is
a :class:`~plait.WorkerDiedError` naming its rows.
"""

from __future__ import annotations

import collections
import pickle
import threading
import traceback
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

import cloudpickle  # type: ignore[import-untyped]
import daft
from daft import DataType, Series

from plait.callbacks.remote import Event, portable, recording
from plait.engine.context import ENCLOSING, Enclosing
from plait.engine.daft.watch import Ledger, aguarded, guarded
from plait.engine.local import observe
from plait.engine.local.controls import worker_runtime
from plait.engine.local.items import Failure, ItemRunner, run_together
from plait.engine.local.plan import Plan, Route
from plait.engine.local.resources import run_with_deps
from plait.engine.local.scheduler import run_plan
from plait.engine.request import annotate_item

if TYPE_CHECKING:
    from plait.engine.local.dep_scope import DepScope
    from plait.engine.local.hooks import NodeHooks
    from plait.engine.local.signatures import CacheSetup

#: A reply: (index, outputs, None, events) or (index, exception, traceback, events).
Reply = tuple[int, Any, str | None, list[Event]]


class Work(Protocol):
    """What a query's stages load: an :class:`ItemRunner`, a :class:`OneRun` or a
    :class:`~plait.engine.daft.staged.Staged`; it names an item's inputs (for notes)."""

    def inputs(self, item: tuple[Any, ...]) -> dict[str, Any]: ...


class RowWork(Work, Protocol):
    """Work one stage runs per row, whole (an :class:`ItemRunner`, or a :class:`OneRun`)."""

    def run_blocking(self, index: int, item: tuple[Any, ...]) -> dict[str, Any]: ...
    async def arun(self, index: int, item: tuple[Any, ...]) -> dict[str, Any]: ...


def encode(value: Any) -> bytes:
    """``value`` pickled (cloudpickle for what plain pickle cannot take: lambdas ...)."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        blob: bytes = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return blob


decode = pickle.loads


class OneRun:
    """One run of a plan (``pipeline.run`` on Daft): the work of a one-row query.

    Its events are the run's own (``on_pipeline_start`` ...), not a map's. Cut into
    stages (:class:`~plait.engine.daft.staged.Staged`), it is the row's frame as a
    map's :class:`ItemRunner` is for its items.
    """

    #: A run sets its deps up itself, and the process-scoped ones are the worker's.
    shared: DepScope | None = None
    owner: object | None = None

    def __init__(
        self,
        plan: Plan,
        inputs: dict[str, Any],
        services: observe.Services | None,
    ) -> None:
        self.plan = plan
        self.given = inputs
        self.services = services
        self.setup: CacheSetup | None = None

    @property
    def lean(self) -> bool:
        return self.services is None and not self.plan.deps

    def inputs(self, item: tuple[Any, ...]) -> dict[str, Any]:
        return {}

    def values(self, item: tuple[Any, ...]) -> list[Any]:
        return self.plan.new_values(self.given)

    def attach_local_runtime(self) -> None:
        """The cache setup of this process (:meth:`arun` makes its own limits)."""
        if self.services is not None:
            self.setup = self.services.setup(self.plan)

    def node_item(self, index: int) -> int | None:
        """The item its node events name: the enclosing map's, if any."""
        return None if self.services is None else self.services.parent_item

    def item_enclosing(self, index: int) -> Enclosing:
        services = self.services
        scope, cache = (None, None) if services is None else (services.scope, services.cache)
        return Enclosing(None, 0, 1, scope, cache)

    def item_started(self, index: int) -> None:
        """Emit the run's start event (when callbacks are in effect)."""
        services = self.services
        if services is not None and services.scope is not None:
            observe.started(services.scope, services.run_kind, item=services.parent_item)

    def item_ended(
        self,
        index: int,
        hooks: NodeHooks | None,
        duration: float,
        error: BaseException | None = None,
    ) -> None:
        """Emit the run's end event (with ``error``, if it failed)."""
        services = self.services
        if services is not None and services.scope is not None:
            kind, item = services.run_kind, services.parent_item
            observe.ended(services.scope, kind, duration, error, item=item)

    def run_blocking(self, index: int, item: tuple[Any, ...]) -> dict[str, Any]:
        from plait.bridge import block_on

        result: dict[str, Any] = block_on(self.arun(index, item))
        return result

    async def arun(self, index: int, item: tuple[Any, ...]) -> dict[str, Any]:
        plan, services = self.plan, self.services
        route = Route.in_worker(plan)
        values = self.values(item)
        runtime = worker_runtime(plan)
        token = ENCLOSING.set(self.item_enclosing(index))
        try:
            if services is None:
                await run_with_deps(plan, values, partial(run_plan, route, values, runtime))
            else:
                await observe.observed_run(services, route, values, runtime)
        finally:
            ENCLOSING.reset(token)
        return plan.outputs(values)


#: Work of the queries running in this process, by token: on the native runner in
#: the driver's own process the stage takes the live work, not a copy.
_LIVE: dict[str, Work] = {}
#: Work shipped to this process (a worker), newest last; the driver's unregister never
#: reaches it, so only the last few queries' work is kept, as clusters' runners are.
_LOADED: collections.OrderedDict[str, Work] = collections.OrderedDict()
_KEEP = 4
_lock = threading.Lock()


def register(token: str, work: Work) -> None:
    """Make ``work`` the live work of query ``token`` in this process."""
    with _lock:
        _LIVE[token] = work


def unregister(token: str) -> None:
    with _lock:
        _LIVE.pop(token, None)
        _LOADED.pop(token, None)


def load_work(token: str, shipped: bytes) -> Work:
    """The work of query ``token`` in this process: live, or loaded from ``shipped``."""
    with _lock:
        work = _LIVE.get(token) or _LOADED.get(token)
        if work is not None:
            return work
    if not shipped:
        raise RuntimeError(
            f"plait: the work of Daft query {token} is not in this process and was not "
            "shipped; DaftEngine(use_process=False) keeps stages in the driver's process"
        )
    work = decode(shipped)
    attach = getattr(work, "attach_local_runtime", None)  # a map's: limits of this process
    if attach is not None:
        attach()
    with _lock:
        work = _LOADED.setdefault(token, work)
        while len(_LOADED) > _KEEP:
            _LOADED.popitem(last=False)
        return work


def failure(
    work: Work, index: int, item: tuple[Any, ...], exc: Exception, annotate: bool
) -> tuple[BaseException, str]:
    if annotate:
        annotate_item(exc, index, work.inputs(item))
    return portable(exc), "".join(traceback.format_exception(exc))


def run_row_blocking(work: RowWork, index: int, blob: bytes, annotate: bool) -> bytes:
    """One row, to completion on this thread: its encoded reply."""
    item = decode(blob)
    with recording() as events:
        try:
            reply: Reply = (index, work.run_blocking(index, item), None, events)
        except Exception as exc:
            error, formatted = failure(work, index, item, exc, annotate)
            reply = (index, error, formatted, events)
    return encode_reply(work, reply)


async def run_row(work: RowWork, index: int, blob: bytes, annotate: bool) -> bytes:
    """One row, as a task on Daft's event loop: its encoded reply."""
    item = decode(blob)
    with recording() as events:
        try:
            reply: Reply = (index, await work.arun(index, item), None, events)
        except Exception as exc:
            error, formatted = failure(work, index, item, exc, annotate)
            reply = (index, error, formatted, events)
    return encode_reply(work, reply)


def run_rows_together(runner: ItemRunner, indices: list[int], blobs: list[bytes]) -> list[bytes]:
    """A batch of rows of a plan with batch nodes, as tasks on one loop so that they
    share batch calls: their encoded replies, in row order (the batch's events, which
    cannot be told apart per row, travel with its first reply)."""
    from plait.bridge import block_on

    items = [(index, decode(blob)) for index, blob in zip(indices, blobs, strict=True)]
    outputs: list[dict[str, Any] | None] = [None] * len(items)
    failures: list[Failure] = []
    with recording() as events:
        block_on(run_together(runner, items, outputs, failures, stop_on_error=False))
    failed = {failure[0]: failure for failure in failures}
    replies = []
    for row, (index, produced) in enumerate(zip(indices, outputs, strict=True)):
        carried = events if row == 0 else []
        if produced is not None:
            reply: Reply = (index, produced, None, carried)
        else:
            _, error, formatted = failed[index]
            reply = (index, error, formatted, carried)
        replies.append(encode_reply(runner, reply))
    return replies


def encode_reply(work: Work, reply: Reply) -> bytes:
    try:
        return encode(reply)
    except Exception as exc:  # an output that cannot travel back: the item fails
        from plait.engine.local.calls import unpicklable_note

        index, outputs, _, events = reply
        exc.add_note(unpicklable_note(outputs, f"map item {index}", "output"))
        formatted = "".join(traceback.format_exception(exc))
        return encode((index, portable(exc), formatted, events))


# --- the stage classes (wrapped by daft.cls per query): one per way rows run --------


class InlineStage:
    """Rows of a plan of plain sync calls, a batch at a time on a Daft thread."""

    def __init__(self, token: str, shipped: bytes, ledger: Ledger | None, annotate: bool) -> None:
        self.work = cast("RowWork", load_work(token, shipped))
        self.annotate = annotate
        self.ledger = ledger

    @daft.method.batch(return_dtype=DataType.binary())
    def __call__(self, index: Series, item: Series) -> Sequence[bytes]:
        work, annotate, rows = self.work, self.annotate, index.to_pylist()
        return guarded(
            self.ledger,
            rows,
            lambda: [
                run_row_blocking(work, i, blob, annotate)
                for i, blob in zip(rows, item.to_pylist(), strict=True)
            ],
        )


class BatchedStage:
    """Rows of a plan with batch nodes: a batch of rows at a time, together on one
    loop, so that items of the batch share the batch nodes' calls."""

    def __init__(self, token: str, shipped: bytes, ledger: Ledger | None, annotate: bool) -> None:
        work = load_work(token, shipped)
        assert isinstance(work, ItemRunner)
        self.runner = work
        self.ledger = ledger

    @daft.method.batch(return_dtype=DataType.binary())
    def __call__(self, index: Series, item: Series) -> Sequence[bytes]:
        rows = index.to_pylist()
        return guarded(
            self.ledger, rows, lambda: run_rows_together(self.runner, rows, item.to_pylist())
        )


class LoopStage:
    """Rows of a plan that needs an event loop: every row a task on Daft's loop."""

    def __init__(self, token: str, shipped: bytes, ledger: Ledger | None, annotate: bool) -> None:
        self.work = cast("RowWork", load_work(token, shipped))
        self.annotate = annotate
        self.ledger = ledger

    @daft.method(return_dtype=DataType.binary())
    async def __call__(self, index: int, item: bytes) -> bytes:
        return await aguarded(self.ledger, index, run_row(self.work, index, item, self.annotate))
