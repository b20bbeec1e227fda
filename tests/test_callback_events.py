"""Callback events: their order for runs, maps, nested pipelines and errors, wherever
items run, and how a failing callback is contained."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from plait import LocalEngine, Pipeline, node
from plait.cache.stores import MemoryCache
from plait.callbacks.base import EVENTS, Callback, CallbackContext


class Recorder:
    """Records (event, path, node, item, error type) for every event."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.contexts: list[CallbackContext] = []


def _record(event: str) -> Any:
    def method(self: Recorder, ctx: CallbackContext) -> None:
        error = type(ctx.error).__name__ if ctx.error is not None else None
        self.events.append((ctx.event, "/".join(ctx.path), ctx.node, ctx.item, error))
        self.contexts.append(ctx)

    return method


for _event in EVENTS:
    setattr(Recorder, _event, _record(_event))


@node(output_name="b")
def inc(a):
    return a + 1


@node(output_name="c")
async def square(b):
    await asyncio.sleep(0)
    if b == 3:
        raise ValueError("three")
    return b * b


def test_run_events_in_order() -> None:
    rec = Recorder()
    Pipeline([inc, square], callbacks=[rec], name="p").run(inputs={"a": 1})
    assert rec.events == [
        ("pipeline_start", "p", None, None, None),
        ("node_start", "p", "inc", None, None),
        ("node_end", "p", "inc", None, None),
        ("node_start", "p", "square", None, None),
        ("node_end", "p", "square", None, None),
        ("pipeline_end", "p", None, None, None),
    ]
    assert all(c.duration is not None and c.duration >= 0 for c in rec.contexts if "end" in c.event)
    assert len({c.scope_id for c in rec.contexts}) == 1


def test_cached_run_emits_node_cached_instead() -> None:
    rec = Recorder()
    p = Pipeline([inc, square], callbacks=[rec], cache=MemoryCache(), name="p")
    p.run(inputs={"a": 1})
    rec.events.clear()
    p.run(inputs={"a": 1})
    assert [e[:3] for e in rec.events] == [
        ("pipeline_start", "p", None),
        ("node_cached", "p", "inc"),
        ("node_cached", "p", "square"),
        ("pipeline_end", "p", None),
    ]


def test_error_then_end_events_carry_it() -> None:
    rec = Recorder()
    with pytest.raises(ValueError, match="three"):
        Pipeline([inc, square], callbacks=[rec], name="p").run(inputs={"a": 2})
    assert rec.events[-2:] == [
        ("error", "p", "square", None, "ValueError"),
        ("pipeline_end", "p", None, None, "ValueError"),
    ]


def test_retry_event_has_attempt_and_delay() -> None:
    rec = Recorder()
    tries = {"n": 0}

    @node(output_name="y", retries=2, backoff=0.001)
    async def flaky(x):
        tries["n"] += 1
        if tries["n"] < 3:
            raise ConnectionError("again")
        return x

    Pipeline([flaky], callbacks=[rec]).run(inputs={"x": 1})
    retries = [c for c in rec.contexts if c.event == "node_retry"]
    assert [c.attempt for c in retries] == [1, 2]
    assert all(isinstance(c.error, ConnectionError) and c.delay is not None for c in retries)
    assert [e[0] for e in rec.events] == [
        "pipeline_start",
        "node_start",
        "node_retry",
        "node_retry",
        "node_end",
        "pipeline_end",
    ]


def item_events(rec: Recorder, index: int) -> list[tuple[Any, ...]]:
    return [e[:3] for e in rec.events if e[3] == index]


@pytest.mark.parametrize("map_executor", ["sequential", "async", "threaded", "parallel"])
def test_map_events_per_item_in_order_on_every_executor(map_executor: str) -> None:
    rec = Recorder()
    engine = LocalEngine(map_executor=map_executor, max_workers=2)
    p = Pipeline([inc, square], callbacks=[rec], name="m", engine=engine)
    with engine:
        results = p.map(inputs={"a": [0, 1, 2, 4]}, map_over="a", on_error="collect")
    assert [type(r).__name__ for r in results] == ["dict", "dict", "ItemError", "dict"]
    assert rec.events[0][:1] == ("map_start",)
    assert rec.contexts[0].total == 4
    assert rec.events[-1][:1] == ("map_end",)
    ok = [
        ("map_item_start", "m", None),
        ("node_start", "m", "inc"),
        ("node_end", "m", "inc"),
        ("node_start", "m", "square"),
        ("node_end", "m", "square"),
        ("map_item_end", "m", None),
    ]
    for index in (0, 1, 3):
        assert item_events(rec, index) == ok
    assert item_events(rec, 2)[-2:] == [("error", "m", "square"), ("map_item_end", "m", None)]


def test_fully_cached_item_emits_map_item_cached() -> None:
    rec = Recorder()
    p = Pipeline([inc, square], callbacks=[rec], cache=MemoryCache(), name="m")
    p.map(inputs={"a": [0, 1]}, map_over="a")
    rec.events.clear()
    p.map(inputs={"a": [0, 1, 4]}, map_over="a")
    assert item_events(rec, 0) == [
        ("map_item_start", "m", None),
        ("node_cached", "m", "inc"),
        ("node_cached", "m", "square"),
        ("map_item_cached", "m", None),
    ]
    assert item_events(rec, 2)[-1] == ("map_item_end", "m", None)


INNER = Pipeline([node(lambda b: b * 10, output_name="d", name="times10")], name="inner")


@pytest.mark.parametrize("map_executor", ["async", "parallel"])
def test_nested_pipeline_events_are_one_level_deeper(map_executor: str) -> None:
    rec = Recorder()
    engine = LocalEngine(map_executor=map_executor, max_workers=2)
    outer = Pipeline([inc, INNER.as_node(name="sub")], callbacks=[rec], name="outer", engine=engine)
    with engine:
        outer.map(inputs={"a": [1, 2]}, map_over="a")
    for index in (0, 1):
        assert item_events(rec, index) == [
            ("map_item_start", "outer", None),
            ("node_start", "outer", "inc"),
            ("node_end", "outer", "inc"),
            ("node_start", "outer", "sub"),
            ("nested_pipeline_start", "outer/sub/inner", None),
            ("node_start", "outer/sub/inner", "times10"),
            ("node_end", "outer/sub/inner", "times10"),
            ("nested_pipeline_end", "outer/sub/inner", None),
            ("node_end", "outer", "sub"),
            ("map_item_end", "outer", None),
        ]
    outer_ids = {c.scope_id for c in rec.contexts if c.pipeline == "outer"}
    inner = [c for c in rec.contexts if c.pipeline == "inner"]
    assert len(outer_ids) == 1
    assert {c.parent_id for c in inner} == outer_ids
    assert len({c.scope_id for c in inner}) == 2  # one run per item, told apart


def test_state_is_per_callback_and_scope() -> None:
    class Timer(Callback):
        def __init__(self) -> None:
            self.counts: list[int] = []

        def on_map_item_end(self, ctx: CallbackContext) -> None:
            ctx.state["done"] = ctx.state.get("done", 0) + 1

        def on_map_end(self, ctx: CallbackContext) -> None:
            self.counts.append(ctx.state["done"])

    timer = Timer()
    p = Pipeline([inc], callbacks=[timer])
    p.map(inputs={"a": range(5)}, map_over="a")
    p.map(inputs={"a": range(3)}, map_over="a")
    assert timer.counts == [5, 3]


def test_engine_and_pipeline_callbacks_each_called_once() -> None:
    rec = Recorder()
    p = Pipeline([inc], callbacks=[rec], engine=LocalEngine(callbacks=[rec]))
    p.run(inputs={"a": 1})
    assert len(rec.events) == 4


def test_failing_callback_is_logged_once_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Callback):
        def on_node_end(self, ctx: CallbackContext) -> None:
            raise RuntimeError("callback bug")

    with caplog.at_level(logging.ERROR, logger="plait.callbacks"):
        result = Pipeline([inc, square], callbacks=[Broken()]).run(inputs={"a": 1})
    assert result["c"] == 4
    logged = [r for r in caplog.records if r.name == "plait.callbacks"]
    assert len(logged) == 1
    assert "Broken.on_node_end" in logged[0].getMessage()


def test_raise_errors_opts_in_to_failing_the_run() -> None:
    class Strict(Callback):
        raise_errors = True

        def on_node_start(self, ctx: CallbackContext) -> None:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here") as info:
        Pipeline([inc], callbacks=[Strict()]).run(inputs={"a": 1})
    assert any("Strict.on_node_start" in n for n in info.value.__notes__)


def test_callbacks_argument_errors_are_clear() -> None:
    with pytest.raises(TypeError, match=r"list of callbacks: callbacks=\[Recorder"):
        Pipeline([inc], callbacks=Recorder())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="implements none of"):
        Pipeline([inc], callbacks=[object()])


def test_progress_in_a_non_terminal_prints_plain_lines_for_a_real_map() -> None:
    import io

    from plait.callbacks import ProgressCallback

    out = io.StringIO()
    p = Pipeline([inc, square], callbacks=[ProgressCallback(file=out)], name="squares")
    p.map(inputs={"a": [0, 1, 2, 4]}, map_over="a", on_error="collect")
    text = out.getvalue()
    assert "\x1b[" not in text  # no terminal control codes off a terminal
    last = text.strip().splitlines()[-1]
    assert "squares" in last
    assert "4/4" in last
    assert "1 failed" in last


def test_logging_callback_logs_a_real_run(caplog: pytest.LogCaptureFixture) -> None:
    from plait.callbacks import LoggingCallback

    with caplog.at_level(logging.DEBUG, logger="plait"):
        Pipeline([inc, square], callbacks=[LoggingCallback()], name="p").run(inputs={"a": 1})
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "plait")
    assert "square" in text
    assert "p" in text


def test_tracing_callback_builds_a_span_tree_for_a_real_nested_map() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from plait.callbacks import TracingCallback

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = TracingCallback(provider.get_tracer("test"))
    outer = Pipeline([inc, INNER.as_node(name="sub")], callbacks=[tracing], name="outer")
    outer.map(inputs={"a": [1, 2]}, map_over="a")
    spans = {s.context.span_id: s for s in exporter.get_finished_spans()}
    by_node = [s for s in spans.values() if s.attributes.get("plait.node") == "times10"]
    assert len(by_node) == 2
    for span in by_node:  # times10 → nested run → node 'sub' → map item → map
        chain = []
        while span.parent is not None:
            span = spans[span.parent.span_id]
            chain.append(span.name)
        assert len(chain) == 4, chain
    assert all(s.end_time is not None for s in spans.values())


@pytest.mark.parametrize("map_executor", ["sequential", "async"])
def test_a_stream_stopped_early_ends_its_map_without_an_error(map_executor: str) -> None:
    rec = Recorder()
    p = Pipeline([inc], callbacks=[rec], name="m", engine=LocalEngine(map_executor=map_executor))
    stream = p.imap(inputs={"a": range(100)}, map_over="a")
    next(stream)
    stream.close()
    ends = [e for e in rec.events if e[0] == "map_end"]
    assert ends == [("map_end", "m", None, None, None)]
