"""DaftEngine: a pipeline's runs and maps as Daft queries, locally or on Ray.

A map becomes a DataFrame of items (their index and their pickled mapped
values) and one UDF stage that runs the pipeline's plan on each row through
plait's own scheduler (:mod:`plait.engine.daft.stage`); a plan with nodes that
declare resources is cut into a stage per such node (:mod:`plait.engine.daft.split`),
a row going from one to the next (:mod:`plait.engine.daft.staged`). The driver reads the
query's partitions as Daft produces them, replays each item's callback events,
and yields its outcome; a stream of unknown length is cut into windows of
``window`` items, one query each, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import os
import uuid
from collections.abc import AsyncGenerator, Generator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from plait.engine.base import Engine, Finished, ItemError, MapMode, OnError, Outcome, PipelineView
from plait.engine.daft.split import Segment, requested, split, whole
from plait.engine.local import observe
from plait.engine.local.calls import unpicklable_note
from plait.engine.local.engine import LocalEngine
from plait.engine.local.items import ItemRunner
from plait.engine.local.plan import Plan
from plait.engine.request import MapSpec, annotate_item
from plait.errors import EngineError

if TYPE_CHECKING:
    from plait.cache.stores import CacheStore
    from plait.engine.daft.stage import OneRun, Work
    from plait.engine.daft.staged import Staged
    from plait.engine.daft.watch import Ledger

Runner = Literal["native", "ray"]
#: What a map's stages get: its token, its pickled work (or b"": live in this
#: process) and the ledger of the rows they run (None: Daft's UDF processes on Ray).
Sent = tuple[str, bytes, "Ledger | None"]


class DaftEngine(Engine):
    """Runs pipelines as Daft queries: Daft's native runner here, or its Ray runner.

    Args:
        runner: ``"native"`` (Daft's multithreaded runner in this process) or
            ``"ray"`` (Daft on a Ray cluster: ``address``, or a local Ray).
        address: the Ray cluster's address (``runner="ray"`` only).
        use_process: run stages in worker processes of their own (the native
            runner; Ray's always are). Default False: stages run on Daft's threads
            in this process, where a ``MemoryCache`` and live objects are shared;
            True spreads CPU-bound sync nodes over processes.
        concurrency: with ``use_process``, the number of worker processes a stage
            of sync nodes runs in (Daft's ``max_concurrency``). Default: Daft decides.
        batch_size: rows per UDF call and per partition read back (the unit of
            streaming).
        window: items per query when a map's length is not known or is larger:
            the memory bound of a stream.
        show_plan: print Daft's plan of each query before it runs.
        progress: show Daft's own progress bar (off by default: use plait's
            ``ProgressCallback``).
        cache: a cache store for every pipeline run on this engine without one.
        callbacks: callbacks for every run and map on this engine.

    Daft's runner is process-wide: the first query sets it, and an engine asking
    for another one afterwards is an :class:`~plait.EngineError`.
    """

    def __init__(
        self,
        runner: Runner = "native",
        address: str | None = None,
        *,
        use_process: bool = False,
        concurrency: int | None = None,
        batch_size: int = 1024,
        window: int = 100_000,
        show_plan: bool = False,
        progress: bool = False,
        cache: CacheStore | None = None,
        callbacks: Sequence[object] = (),
    ) -> None:
        if importlib.util.find_spec("daft") is None:
            raise EngineError(
                "DaftEngine needs Daft, which is not installed: pip install 'plait[daft]'"
            )
        if runner not in ("native", "ray"):
            raise EngineError(f'DaftEngine runner must be "native" or "ray", got {runner!r}')
        if address is not None and runner != "ray":
            raise EngineError('DaftEngine(address=...) is the Ray cluster\'s: use runner="ray"')
        sizes = [("batch_size", batch_size), ("window", window)]
        if concurrency is not None:
            sizes.append(("concurrency", concurrency))
        for option, value in sizes:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise EngineError(f"DaftEngine {option} must be a positive int, got {value!r}")
        self.runner = runner
        self.address = address
        self.use_process = bool(use_process)
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.window = window
        self.show_plan = show_plan
        self.progress = progress
        #: Plans, routes, cache and callbacks resolve as on a LocalEngine of these.
        self._planner = LocalEngine(cache=cache, callbacks=callbacks)

    @property
    def cache(self) -> CacheStore | None:
        return self._planner.cache

    @property
    def callbacks(self) -> tuple[object, ...]:
        return self._planner.callbacks

    # --- the two entry points ---------------------------------------------------------

    async def arun(
        self,
        pipeline: PipelineView,
        inputs: Mapping[str, Any],
        output_name: tuple[str, ...] | None = None,
    ) -> dict[str, Any]:
        """Run ``pipeline`` once, as a one-row Daft query; see :meth:`plait.Engine.arun`."""
        from plait.callbacks.remote import Replayer
        from plait.engine.daft.stage import OneRun, encode

        plan = self._planner.route(pipeline.graph, output_name, inputs).plan
        services = observe.resolve(pipeline, self._planner)
        shipped = None if services is None else services.for_worker(keep_cache=self._in_process)
        scope = None if services is None else services.scope
        replayer = None if scope is None else Replayer(scope)
        run = OneRun(plan, dict(inputs), shipped)
        work: OneRun | Staged = run
        segments = split(plan, keyed=shipped is not None and shipped.cache is not None)
        if len(segments) > 1:  # nodes with resources: a stage each
            from plait.engine.daft.staged import Staged

            work = Staged(run, segments)
            if self._in_process:
                work.attach_local_runtime()
        with self._shipped(work) as sent:
            rows = self._query(work, plan, sent, [(0, encode(()))], False)
            try:
                async for _, result, formatted, events in rows:
                    if replayer is not None:
                        replayer.replay(events)
                    if formatted is not None:
                        raise result
                    outputs: dict[str, Any] = result
                    return outputs
            finally:  # closed here, not when the loop shuts down (its threads gone)
                await rows.aclose()
        raise EngineError("plait: the Daft query of a run returned no row")  # pragma: no cover

    async def aimap(
        self,
        pipeline: PipelineView,
        inputs: Mapping[str, Any],
        map_over: tuple[str, ...],
        *,
        map_mode: MapMode = "zip",
        output_name: tuple[str, ...] | None = None,
        on_error: OnError = "raise",
        ordered: bool = False,
    ) -> AsyncGenerator[Finished, None]:
        """Run ``pipeline`` once per item as Daft queries; see :meth:`plait.Engine.aimap`.

        Leaving early stops reading the query; Daft cannot cancel it, so its stages
        skip the rows they have not started, and the batches already running finish
        (at most one per Daft thread or worker). A worker that dies is a
        :class:`~plait.WorkerDiedError` naming the items it had in flight.
        """
        spec = MapSpec.of(inputs, map_over, map_mode)
        route = self._planner.route(pipeline.graph, output_name, inputs)
        runner = ItemRunner(route, inputs, spec.names, None)
        services = observe.resolve(pipeline, self._planner)
        if services is not None:
            runner.observe(services)
        stream = self._outcomes(runner, spec, on_error, ordered)
        if services is not None and services.scope is not None:
            stream = observe.observed_map(services, spec.size_hint(), stream, inline=False)
        try:
            async for finished in stream:
                yield finished
        finally:
            await stream.aclose()

    # --- maps -------------------------------------------------------------------------

    async def _outcomes(
        self, runner: ItemRunner, spec: MapSpec, on_error: OnError, ordered: bool
    ) -> AsyncGenerator[Finished, None]:
        """The items' outcomes as they finish, a query per window of items."""
        worker = runner.for_worker(keep_cache=self._in_process)
        work: ItemRunner | Staged = worker
        services = worker.services
        segments = split(runner.plan, keyed=services is not None and services.cache is not None)
        if len(segments) > 1:  # nodes with resources: a stage each
            from plait.engine.daft.staged import Staged

            work = Staged(worker, segments)
        if self._in_process:
            work.attach_local_runtime()  # limits shared by every row in this process
        order = _Order(ordered)
        numbered = enumerate(spec.items())
        # A map of known length is one query (or windows of `window` items); a stream
        # starts with a small one, so its first results come soon, and doubles.
        size = min(self.window, spec.size_hint() or self.batch_size)
        replayer = runner.replayer()
        with self._shipped(work) as sent:  # once per map, whatever the number of windows
            while window := list(itertools.islice(numbered, size)):
                size = min(self.window, 2 * size)
                items = dict(window)
                rows, unsent = _encode_items(runner, window)
                for index, exc in unsent:  # never sent: fails here, in its place
                    if on_error == "raise":
                        raise exc
                    failed = ItemError.of(exc, index, runner.inputs(items[index]))
                    if finished := order.put(index, failed):
                        yield finished
                replies = self._query(work, runner.plan, sent, rows, True)
                try:
                    async for index, result, formatted, events in replies:
                        if replayer is not None:
                            replayer.replay(events)
                        outcome: Outcome = result
                        if formatted is not None:
                            if on_error == "raise":
                                raise result
                            inputs = runner.inputs(items[index])
                            outcome = ItemError.of(result, index, inputs, formatted)
                        if finished := order.put(index, outcome):
                            yield finished
                finally:
                    await replies.aclose()

    @property
    def _in_process(self) -> bool:
        """Stages run in this process: the live work is used, and a MemoryCache shared."""
        return self.runner == "native" and not self.use_process

    # --- queries ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _shipped(self, work: Work) -> Iterator[Sent]:
        """``work``'s token, what its stages load it from (registered live in this
        process, nothing pickled; or pickled once to ship), and the map's ledger of the
        rows its stages run (:mod:`plait.engine.daft.watch`)."""
        from plait.engine.daft import stage, watch

        token = uuid.uuid4().hex
        if self._in_process:
            stage.register(token, work)
        else:
            self._use_runner()  # the Ray ledger needs Ray
        try:
            with watch.ledger(self.runner, self.use_process, token) as ledger:
                yield token, b"" if self._in_process else stage.encode(work), ledger
        finally:
            stage.unregister(token)

    async def _query(
        self,
        work: Work,
        plan: Plan,
        sent: Sent,
        rows: list[tuple[int, bytes]],
        annotate: bool,
    ) -> AsyncGenerator[tuple[int, Any, str | None, list[Any]], None]:
        """Run ``rows`` (index, pickled item) through ``work`` (``sent``: see
        :meth:`_shipped`) as one Daft query; each row's decoded reply as Daft produces it.

        A worker that died is a :class:`~plait.WorkerDiedError` naming the rows it had
        in flight, raised once the query ended (its other rows skipped: moments)."""
        if not rows:
            return
        import daft

        from plait.engine.daft import stage, watch

        self._use_runner()
        ledger = sent[2]
        df = daft.from_pydict({"index": [i for i, _ in rows], "item": [b for _, b in rows]})
        query = df.into_batches(self.batch_size)
        stages = self._stages(plan, work)
        if len(stages) == 1:
            udf = stages[0](*sent, annotate)
            query = query.select(udf(query["index"], query["item"]).alias("reply"))
        else:  # a row goes from stage to stage as bytes (plait.engine.daft.staged)
            column = "item"
            for number, stage_class in enumerate(stages):
                state = stage_class(*sent, annotate, number)(query["index"], query[column])
                column = "reply" if number == len(stages) - 1 else f"stage{number}"
                query = query.select("index", state.alias(column))
            query = query.select("reply")
        if self.show_plan:
            query.explain(show_all=True)
        partitions = _partitions(query)  # runs nothing until its first next()
        # Rows not returned yet: without a ledger, those a dead UDF process may have had.
        unreturned = {index for index, _ in rows} if ledger is None else set()
        stopped = False  # the ledger skips rows from here on: drain, then raise
        ended = False
        try:
            while (part := await asyncio.to_thread(next, partitions, None)) is not None:
                for blob in part.column("reply").to_pylist():
                    stopped = stopped or blob == watch.SKIPPED
                    if not stopped:
                        reply = stage.decode(blob)
                        unreturned.discard(reply[0])
                        yield reply
            ended = True
        except Exception as exc:
            ended = True
            died = watch.died(ledger, exc, unreturned, run=not annotate)
            if died is None:
                raise
            raise died from exc
        finally:
            if not ended and ledger is not None:  # left early: the rest of the map is skipped
                ledger.close()
            await asyncio.to_thread(partitions.close)
        if stopped:
            raise watch.died(ledger, None, unreturned, run=not annotate) or EngineError(
                "plait: a Daft stage skipped rows, yet its ledger names no dead worker"
            )

    def _stages(self, plan: Plan, work: Work) -> list[Any]:
        """The ``daft.cls`` classes of the query's stages, in order: one for the whole
        plan, or one per segment of a map's plan with nodes that declare resources."""
        import daft

        from plait.engine.daft import stage, staged

        if isinstance(work, staged.Staged):
            kinds: tuple[type, type, type] = (
                staged.BatchedSegment,
                staged.LoopSegment,
                staged.InlineSegment,
            )
            segments: Sequence[Segment] = work.segments
        else:
            kinds = (stage.BatchedStage, stage.LoopStage, stage.InlineStage)
            segments = (whole(plan),)
        classes = []
        for segment in segments:
            part = segment.plan
            options = self._options(segment, plan)
            if part.batched and not isinstance(work, stage.OneRun):  # rows share batch calls
                kind = kinds[0]
            elif part.needs_loop:  # rows as tasks on one loop (Daft's max_concurrency does
                kind = kinds[1]  # not bound them)
            else:
                kind = kinds[2]
                if self.use_process:  # Daft runs a sync stage given max_concurrency in processes
                    options.setdefault("max_concurrency", self.concurrency)
            classes.append(daft.cls(kind, **options))
        return classes

    def _options(self, segment: Segment, plan: Plan) -> dict[str, Any]:
        """``daft.cls`` options of ``segment``'s stage: its name, its request, and the
        instances of it a node's ``concurrency`` asks for (Daft runs those in worker
        processes, which a stage in this process cannot be: there it is ignored)."""
        options: dict[str, Any] = {
            "use_process": self.use_process,
            "name_override": segment.name,
            **requested(segment, plan.steps),
        }
        resources = segment.resources
        if resources is not None and resources.concurrency and not self._in_process:
            options["max_concurrency"] = resources.concurrency
        return options

    def _use_runner(self) -> None:
        """Set Daft's runner to this engine's, or refuse when another one is set."""
        import daft
        from daft.runners import _get_runner

        if not self.progress:
            os.environ.setdefault("DAFT_PROGRESS_BAR", "0")
        current: Any = _get_runner()
        if current is None:
            if self.runner == "ray":
                daft.set_runner_ray(address=self.address, noop_if_initialized=True)
            else:
                daft.set_runner_native()
            return
        if current.name != self.runner:
            raise EngineError(
                f'this DaftEngine asks for Daft\'s "{self.runner}" runner, but this process '
                f'already runs Daft on its "{current.name}" runner, and Daft\'s runner is set '
                f'once per process. Use DaftEngine(runner="{current.name}"), or run the other '
                "one in a process of its own"
            )

    def __repr__(self) -> str:
        options = [f"runner={self.runner!r}"]
        if self.address is not None:
            options.append(f"address={self.address!r}")
        if self.use_process:
            options.append("use_process=True")
        return f"DaftEngine({', '.join(options)})"


def _partitions(query: Any) -> Generator[Any, None, None]:
    """The query's results as Arrow record batches, as Daft produces them (on either
    runner: ``iter_partitions`` gives Ray object references on Ray)."""
    yield from query.to_arrow_iter()


class _Order:
    """Hands outcomes on as they come, or in input order (``ordered``)."""

    def __init__(self, ordered: bool) -> None:
        self.ordered = ordered
        self.waiting: dict[int, Outcome] = {}
        self.next = 0

    def put(self, index: int, outcome: Outcome) -> Finished:
        if not self.ordered:
            return [(index, outcome)]
        self.waiting[index] = outcome
        ready = []
        while self.next in self.waiting:
            ready.append((self.next, self.waiting.pop(self.next)))
            self.next += 1
        return ready


def _encode_items(
    runner: ItemRunner, window: list[tuple[int, tuple[Any, ...]]]
) -> tuple[list[tuple[int, bytes]], list[tuple[int, BaseException]]]:
    """The items pickled, and the errors (with notes) of those that cannot be."""
    from plait.engine.daft.stage import encode

    rows: list[tuple[int, bytes]] = []
    unsent: list[tuple[int, BaseException]] = []
    for index, item in window:
        try:
            rows.append((index, encode(item)))
        except Exception as exc:
            inputs = runner.inputs(item)
            exc.add_note(unpicklable_note(inputs, f"map item {index}", "input"))
            annotate_item(exc, index, inputs)
            unsent.append((index, exc))
    return rows, unsent
