"""Rows through several Daft stages, one per segment of the plan (a map's items,
or a run's one row).

When a plan has nodes that declare resources (:mod:`plait.engine.daft.split`),
its query chains one ``daft.cls`` stage per segment. Between two stages a row is
a :class:`Carry` as bytes: its item, the values later segments, their cache keys
or the outputs read, the cache hits so far and the callback events recorded so
far. A row that fails becomes its final reply at once and passes through the
later stages unchanged; the last stage turns a carry into the same reply a
single stage gives, so the driver reads both alike.

Each segment runs with the whole plan's cache setup and item events: cache keys
of a node downstream of another stage are those of ``LocalEngine`` (the values its
key is made of travel with the row), the item's start event comes from the first
stage, its end (or cached) event from the last, or from the stage that failed.

Every stage records its batches in the map's ledger as a single stage does
(:mod:`plait.engine.daft.watch`): once the ledger skips rows (a worker died, or the
map is over) it skips them in every later stage too, so a skipped row never
reaches a stage that would read it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AbstractContextManager
from functools import partial
from time import perf_counter
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import daft
from daft import DataType, Series

from plait.bridge import block_on, ensure_loop, loop_optional
from plait.callbacks.remote import Event, recording
from plait.engine.context import ENCLOSING, Enclosing
from plait.engine.daft.split import Segment
from plait.engine.daft.stage import decode, encode, encode_reply, failure, load_work
from plait.engine.daft.watch import Ledger, aguarded, guarded
from plait.engine.local.batches import MapBatches
from plait.engine.local.calls import unpicklable_note
from plait.engine.local.controls import NodeRuntime, worker_runtime
from plait.engine.local.hooks import NodeHooks
from plait.engine.local.inline import run_inline
from plait.engine.local.resources import run_with_deps
from plait.engine.local.scheduler import run_plan
from plait.engine.local.signatures import DepKey

if TYPE_CHECKING:
    from plait.engine.local.dep_scope import DepScope
    from plait.engine.local.observe import Services
    from plait.engine.local.plan import Plan
    from plait.engine.local.signatures import CacheSetup

#: The first byte of a row between stages: still running, or its final reply.
LIVE, DONE = b"\x00", b"\x01"


class Carry(NamedTuple):
    """A row between two stages."""

    item: tuple[Any, ...]
    #: The values of the previous segment's ``carried`` slots.
    values: tuple[Any, ...]
    hits: int
    #: Seconds the item has run so far, in the stages before.
    elapsed: float
    events: list[Event]


class Frame(Protocol):
    """What a row's stages run in: a map's :class:`ItemRunner` (a row is an item), or
    a :class:`~plait.engine.daft.stage.OneRun` (the row is the run)."""

    plan: Plan
    services: Services | None
    setup: CacheSetup | None
    shared: DepScope | None
    owner: object | None

    @property
    def lean(self) -> bool: ...
    def values(self, item: tuple[Any, ...]) -> list[Any]: ...
    def inputs(self, item: tuple[Any, ...]) -> dict[str, Any]: ...
    def attach_local_runtime(self) -> None: ...
    def node_item(self, index: int) -> int | None: ...
    def item_enclosing(self, index: int) -> Enclosing: ...
    def item_started(self, index: int) -> None: ...
    def item_ended(
        self,
        index: int,
        hooks: NodeHooks | None,
        duration: float,
        error: BaseException | None = None,
    ) -> None: ...


class Staged:
    """A map's :class:`ItemRunner` (or a run's ``OneRun``) with its plan cut into
    segments: the work every stage of its queries loads (segment ``number`` runs in
    stage ``number``)."""

    def __init__(self, runner: Frame, segments: Sequence[Segment]) -> None:
        self.runner = runner
        self.segments = tuple(segments)
        #: Each segment's node limits in this process (:meth:`attach_local_runtime`).
        self.runtimes: tuple[NodeRuntime | None, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        return {"runner": self.runner, "segments": self.segments, "runtimes": ()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def attach_local_runtime(self) -> None:
        """Node limits and the cache setup of this process (limits do not span processes)."""
        self.runner.attach_local_runtime()
        self.runtimes = tuple(worker_runtime(segment.plan) for segment in self.segments)

    def inputs(self, item: tuple[Any, ...]) -> dict[str, Any]:
        return self.runner.inputs(item)

    def recording(self) -> AbstractContextManager[list[Event]]:
        """Where a row's events are recorded: nowhere without callbacks (no cost)."""
        services = self.runner.services
        return _UNRECORDED if services is None or services.scope is None else recording()

    def run_blocking(self, number: int, index: int, carry: Carry) -> Carry | dict[str, Any]:
        """:meth:`arun` to completion on this thread; plain calls when it is only that."""
        segment = self.segments[number]
        if not (segment.route.inline and self.runner.lean):
            result: Carry | dict[str, Any] = block_on(self.arun(number, index, carry))
            return result
        values = self._values(number, carry)
        run_inline(segment.plan, values)
        return self._passed(number, carry, values, None, carry.elapsed)

    @loop_optional
    async def arun(
        self, number: int, index: int, carry: Carry, batches: MapBatches | None = None
    ) -> Carry | dict[str, Any]:
        """Run segment ``number`` of item ``index``: what the next stage takes, or the
        item's outputs after the last segment."""
        segment, runner = self.segments[number], self.runner
        if not segment.route.inline:
            await ensure_loop()
        values = self._values(number, carry)
        hooks = self._hooks(index, segment, carry)
        if number == 0:
            runner.item_started(index)
        start = perf_counter()
        batch = None
        if batches is not None:
            batches.enter(index)
            batch = batches.item(index)
        token = ENCLOSING.set(runner.item_enclosing(index))
        try:
            run = partial(run_plan, segment.route, values, self.runtimes[number], hooks, batch)
            await run_with_deps(segment.plan, values, run, runner.shared, runner.owner)
        except BaseException as exc:
            runner.item_ended(index, hooks, carry.elapsed + perf_counter() - start, exc)
            raise
        finally:
            ENCLOSING.reset(token)
            if batches is not None:
                batches.leave(index)
        elapsed = carry.elapsed + perf_counter() - start
        if number == len(self.segments) - 1:
            runner.item_ended(index, hooks, elapsed)
        return self._passed(number, carry, values, hooks, elapsed)

    def _values(self, number: int, carry: Carry) -> list[Any]:
        """The item's values as segment ``number`` starts: its inputs, and what the
        segments before computed."""
        values = self.runner.values(carry.item)
        if number:
            for slot, value in zip(self.segments[number - 1].carried, carry.values, strict=True):
                values[slot] = value
        return values

    def _passed(
        self, number: int, carry: Carry, values: list[Any], hooks: NodeHooks | None, elapsed: float
    ) -> Carry | dict[str, Any]:
        """What segment ``number`` passes on: the outputs after the last one."""
        if number == len(self.segments) - 1:
            return self.runner.plan.outputs(values)
        deps = self.runner.plan.dep_slots  # a dep goes on as its key (it may not pickle)
        return Carry(
            carry.item,
            tuple(
                DepKey(values[slot]) if slot in deps else values[slot]
                for slot in self.segments[number].carried
            ),
            0 if hooks is None else hooks.hits,
            elapsed,
            [],
        )

    def _hooks(self, index: int, segment: Segment, carry: Carry) -> NodeHooks | None:
        """The whole plan's hooks for item ``index``, continuing from ``carry``."""
        runner = self.runner
        if runner.services is None:
            return None
        scope = runner.services.scope
        hooks = _SegmentHooks(runner.plan, scope, runner.setup, runner.node_item(index))
        hooks.offset = segment.start
        hooks.hits = carry.hits
        return hooks

    def batches(self, number: int) -> MapBatches:
        """Batch calls shared by the rows of one Daft batch at segment ``number``."""
        segment, services = self.segments[number], self.runner.services
        scope = None if services is None else services.scope
        return MapBatches(segment.plan, segment.route, self.runtimes[number], scope)

    def carried_names(self, number: int) -> dict[int, str]:
        """The output name of each slot segment ``number`` carries on."""
        names = {
            slot: name
            for step in self.runner.plan.steps
            for slot, name in zip(step.out_slots, step.node.outputs, strict=True)
        }
        return {slot: names[slot] for slot in self.segments[number].carried}


class _Unrecorded:
    """A row's events where none are emitted: an empty list."""

    __slots__ = ()

    def __enter__(self) -> list[Event]:
        return []

    def __exit__(self, *exc: object) -> None:
        return None


_UNRECORDED = _Unrecorded()


class _SegmentHooks(NodeHooks):
    """The whole plan's hooks, called by the scheduler of a segment's plan, whose step
    ``i`` is the whole plan's step ``offset + i``."""

    __slots__ = ("offset",)
    offset: int

    def before(self, index: int, values: Sequence[Any]) -> Any:
        return super().before(index + self.offset, values)

    def after(self, index: int, result: Any) -> None:
        super().after(index + self.offset, result)

    def failed(self, index: int, exc: BaseException) -> None:
        super().failed(index + self.offset, exc)


def run_row_blocking(staged: Staged, number: int, index: int, blob: bytes, annotate: bool) -> bytes:
    """One row through segment ``number``, to completion on this thread (see :func:`run_row`)."""
    carry = _carry(staged, number, blob)
    if isinstance(carry, bytes):
        return carry
    with staged.recording() as events:
        try:
            result = staged.run_blocking(number, index, carry)
        except Exception as exc:
            return _failed(staged, number, index, carry, exc, annotate, events)
    return _onward(staged, number, index, carry, result, events, annotate)


async def run_row(
    staged: Staged,
    number: int,
    index: int,
    blob: bytes,
    annotate: bool,
    batches: MapBatches | None = None,
) -> bytes:
    """One row through segment ``number``: what the next stage reads (``LIVE`` or
    ``DONE`` and bytes), or, from the last stage, the row's encoded reply."""
    carry = _carry(staged, number, blob)
    if isinstance(carry, bytes):
        return carry
    with staged.recording() as events:
        try:
            result = await staged.arun(number, index, carry, batches)
        except Exception as exc:
            return _failed(staged, number, index, carry, exc, annotate, events)
    return _onward(staged, number, index, carry, result, events, annotate)


def _carry(staged: Staged, number: int, blob: bytes) -> Carry | bytes:
    """The row segment ``number`` reads from ``blob``; bytes for a row that failed in an
    earlier stage, whose reply passes through."""
    if number == 0:
        return Carry(decode(blob), (), 0, 0.0, [])
    if blob[:1] == DONE:
        return blob[1:] if number == len(staged.segments) - 1 else blob
    carry: Carry = decode(blob[1:])
    return carry


def _failed(
    staged: Staged,
    number: int,
    index: int,
    carry: Carry,
    exc: Exception,
    annotate: bool,
    events: list[Event],
) -> bytes:
    """The row's final reply for ``exc``, marked for the later stages to pass on."""
    error, formatted = failure(staged, index, carry.item, exc, annotate)
    reply = encode_reply(staged, (index, error, formatted, carry.events + events))
    return reply if number == len(staged.segments) - 1 else DONE + reply


def _onward(
    staged: Staged,
    number: int,
    index: int,
    carry: Carry,
    result: Carry | dict[str, Any],
    events: list[Event],
    annotate: bool,
) -> bytes:
    """What segment ``number`` hands on for a row that ran it: the next stage's row, or
    (after the last segment) its reply."""
    if not isinstance(result, Carry):
        return encode_reply(staged, (index, result, None, carry.events + events))
    onward = result._replace(events=carry.events + events)
    try:
        return LIVE + encode(onward)
    except Exception as exc:  # a value that cannot travel to the next stage: the item fails
        parts = dict(zip(staged.carried_names(number).values(), onward.values, strict=True))
        exc.add_note(unpicklable_note(parts, f"map item {index}", "output"))
        return _failed(staged, number, index, carry, exc, annotate, events)


async def _run_together(
    staged: Staged, number: int, indices: list[int], blobs: list[bytes]
) -> list[bytes]:
    batches = staged.batches(number)
    pairs = zip(indices, blobs, strict=True)
    rows = [run_row(staged, number, i, blob, True, batches) for i, blob in pairs]
    return list(await asyncio.gather(*rows))


# --- the stage classes of a segment (wrapped by daft.cls per query) -----------------


class InlineSegment:
    """A segment of plain sync calls, a batch of rows at a time on a Daft thread."""

    def __init__(
        self, token: str, shipped: bytes, ledger: Ledger | None, annotate: bool, number: int
    ) -> None:
        self.staged = _staged(token, shipped)
        self.ledger = ledger
        self.annotate = annotate
        self.number = number

    @daft.method.batch(return_dtype=DataType.binary())
    def __call__(self, index: Series, row: Series) -> Sequence[bytes]:
        staged, number, annotate, rows = self.staged, self.number, self.annotate, index.to_pylist()
        return guarded(
            self.ledger,
            rows,
            lambda: [
                run_row_blocking(staged, number, i, blob, annotate)
                for i, blob in zip(rows, row.to_pylist(), strict=True)
            ],
        )


class BatchedSegment:
    """A segment with batch nodes: a batch of rows together on one loop, sharing the
    batch nodes' calls."""

    def __init__(
        self, token: str, shipped: bytes, ledger: Ledger | None, annotate: bool, number: int
    ) -> None:
        self.staged = _staged(token, shipped)
        self.ledger = ledger
        self.number = number

    @daft.method.batch(return_dtype=DataType.binary())
    def __call__(self, index: Series, row: Series) -> Sequence[bytes]:
        rows = index.to_pylist()
        return guarded(
            self.ledger,
            rows,
            lambda: block_on(_run_together(self.staged, self.number, rows, row.to_pylist())),
        )


class LoopSegment:
    """A segment that needs an event loop: every row a task on Daft's loop."""

    def __init__(
        self, token: str, shipped: bytes, ledger: Ledger | None, annotate: bool, number: int
    ) -> None:
        self.staged = _staged(token, shipped)
        self.ledger = ledger
        self.annotate = annotate
        self.number = number

    @daft.method(return_dtype=DataType.binary())
    async def __call__(self, index: int, row: bytes) -> bytes:
        reply = run_row(self.staged, self.number, index, row, self.annotate)
        return await aguarded(self.ledger, index, reply)


def _staged(token: str, shipped: bytes) -> Staged:
    work = load_work(token, shipped)
    assert isinstance(work, Staged)
    return work
