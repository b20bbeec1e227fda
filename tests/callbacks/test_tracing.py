"""TracingCallback: span hierarchy, attributes, cache hits, retries and errors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from plait.callbacks import TracingCallback
from tests.callbacks.events import Map, N, Run, Source, map_, nodes, run


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def tracing(provider: TracerProvider) -> TracingCallback:
    return TracingCallback(provider.get_tracer("test"))


class Spans:
    """Finished spans, looked up by name and attributes, with their parents."""

    def __init__(self, spans: Sequence[ReadableSpan]) -> None:
        self.spans = list(spans)
        self.by_id = {span.context.span_id: span for span in self.spans if span.context}

    def find(self, name: str, **attributes: object) -> list[ReadableSpan]:
        return [
            span
            for span in self.spans
            if span.name == name
            and all((span.attributes or {}).get(f"plait.{k}") == v for k, v in attributes.items())
        ]

    def one(self, name: str, **attributes: object) -> ReadableSpan:
        (span,) = self.find(name, **attributes)
        return span

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        return None if span.parent is None else self.by_id.get(span.parent.span_id)

    def parent_name(self, span: ReadableSpan) -> str | None:
        parent = self.parent(span)
        return None if parent is None else parent.name


def test_a_run_with_a_retry_and_a_cache_hit(
    tracing: TracingCallback, exporter: InMemorySpanExporter
) -> None:
    src = Source(tracing)
    src.play(run(src, Run("etl", [N("load", cached=True), N("save", retries=2)])))
    spans = Spans(exporter.get_finished_spans())
    root = spans.one("pipeline etl")
    assert root.parent is None
    assert root.attributes == {"plait.pipeline": "etl", "plait.path": "etl"}
    load, save = spans.one("node load"), spans.one("node save")
    assert spans.parent(load) is root
    assert spans.parent(save) is root
    assert load.attributes is not None
    assert load.attributes["plait.cached"] is True
    assert load.start_time == load.end_time
    assert save.attributes == {"plait.pipeline": "etl", "plait.path": "etl", "plait.node": "save"}
    assert [event.name for event in save.events] == ["retry", "retry"]
    assert dict(save.events[1].attributes or {}) == {
        "plait.attempt": 2,
        "plait.delay": 0.25,
        "exception.type": "ConnectionError",
        "exception.message": "attempt 2 failed",
    }
    assert all(span.status.status_code is StatusCode.UNSET for span in spans.spans)


def test_a_map_nests_items_nodes_and_nested_runs(
    tracing: TracingCallback, exporter: InMemorySpanExporter
) -> None:
    src = Source(tracing)
    inner = Run("parse_doc", nodes("tokenize", "count"))
    spec = Map("scrape", 5, [N("fetch"), N("parse", inner=inner)], cached={1}, failing={3: "parse"})
    src.play(map_(src, spec))
    spans = Spans(exporter.get_finished_spans())
    root = spans.one("map scrape")
    assert root.attributes is not None
    assert root.attributes["plait.total"] == 5
    for i in range(5):
        item = spans.one("item scrape", item=i)
        assert spans.parent(item) is root
        for node in spans.find("node fetch", item=i) + spans.find("node parse", item=i):
            assert spans.parent(node) is item
    # a nested run sits under the node that runs it, for the same item
    for nested in spans.find("pipeline parse_doc"):
        parse = spans.parent(nested)
        assert parse is not None
        assert parse.name == "node parse"
        assert parse.attributes is not None
        assert nested.attributes is not None
        assert parse.attributes["plait.item"] == nested.attributes["plait.item"]
        assert nested.attributes["plait.path"] == "scrape/parse/parse_doc"
        assert {s.name for s in spans.spans if spans.parent(s) is nested} == {
            "node tokenize",
            "node count",
        }
    assert len(spans.find("pipeline parse_doc")) == 3  # not for items 1 (cached), 3 (failed)
    cached = spans.one("item scrape", item=1)
    assert cached.attributes is not None
    assert cached.attributes["plait.cached"] is True
    assert len(spans.find("node fetch", item=1, cached=True)) == 1


def test_errors_are_recorded_on_every_span_they_end(
    tracing: TracingCallback, exporter: InMemorySpanExporter
) -> None:
    src = Source(tracing)
    spec = Map("scrape", 4, nodes("fetch"), failing={2: "fetch"})
    src.play(map_(src, spec))
    spans = Spans(exporter.get_finished_spans())
    failed = [spans.one("node fetch", item=2), spans.one("item scrape", item=2)]
    for span in failed:
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "ValueError: bad item 2"
        (event,) = span.events
        assert event.name == "exception"
        assert event.attributes is not None
        assert event.attributes["exception.type"] == "ValueError"
    others = [span for span in spans.spans if span not in failed]
    assert all(span.status.status_code is StatusCode.UNSET for span in others)


def test_an_aborted_map_ends_the_spans_of_items_in_flight(
    tracing: TracingCallback, exporter: InMemorySpanExporter
) -> None:
    src = Source(tracing)
    failing = Map("sub", 3, nodes("y"), failing={1: "y"}, abort=True)
    slow = Map("sub", 9, nodes("y"))
    parse = N("parse", inner=lambda item: failing if item == 0 else slow)
    spec = Map("scrape", 10, [N("fetch"), parse], abort=True)
    src.play(map_(src, spec))
    starts = sum(
        event in ("on_map_start", "on_map_item_start", "on_node_start") for event, *_ in src.log
    )
    spans = Spans(exporter.get_finished_spans())
    assert len(spans.spans) == starts  # every span started was ended
    root = spans.one("map scrape")
    assert root.status.status_code is StatusCode.ERROR
    aborted = [s for s in spans.spans if (s.attributes or {}).get("plait.aborted")]
    # the other items' sub-maps were still going, with items in flight
    assert {s.name for s in aborted} == {"item scrape", "node parse", "map sub", "item sub"}
    assert len(spans.find("map sub")) == 3
    assert not tracing._scopes


@pytest.mark.parametrize(("concurrency", "tell_item"), [(1, False), (3, True)])
def test_a_nested_map_sits_under_the_node_that_runs_it(
    tracing: TracingCallback, exporter: InMemorySpanExporter, concurrency: int, tell_item: bool
) -> None:
    src = Source(tracing)
    per_page = Map("per_page", 2, nodes("ocr"), tell_item=tell_item)
    book = Map("book", 3, [N("split", inner=per_page)], concurrency=concurrency)
    corpus = Run("corpus", [N("pages", inner=book), N("index")])
    src.play(run(src, corpus))
    spans = Spans(exporter.get_finished_spans())
    assert spans.parent_name(spans.one("map book")) == "node pages"
    # by its item index if the map start tells it, else by the name of the one open node
    for inner in spans.find("map per_page"):
        split = spans.parent(inner)
        assert split is not None
        assert split.name == "node split"
        items = {spans.parent(s) for s in spans.find("item per_page") if spans.parent(s) is inner}
        assert items == {inner}


def test_a_nested_map_whose_node_is_ambiguous_sits_under_the_enclosing_map(
    tracing: TracingCallback, exporter: InMemorySpanExporter
) -> None:
    src = Source(tracing)
    per_page = Map("per_page", 2, nodes("ocr"))
    src.play(map_(src, Map("book", 3, [N("split", inner=per_page)], concurrency=3)))
    spans = Spans(exporter.get_finished_spans())
    assert {spans.parent_name(inner) for inner in spans.find("map per_page")} == {"map book"}


def test_interleaved_maps_from_another_thread_keep_their_own_hierarchy(
    tracing: TracingCallback, exporter: InMemorySpanExporter
) -> None:
    src = Source(tracing)
    src.play_in_thread(
        map_(src, Map("a", 6, nodes("x"), concurrency=4)),
        map_(src, Map("b", 6, nodes("x"), concurrency=4)),
    )
    spans = Spans(exporter.get_finished_spans())
    for name in ("a", "b"):
        root = spans.one(f"map {name}")
        for item in spans.find(f"item {name}"):
            assert spans.parent(item) is root
            children = [s for s in spans.spans if spans.parent(s) is item]
            assert [c.name for c in children] == ["node x"]


def test_a_top_level_run_joins_the_callers_span(
    tracing: TracingCallback, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    src = Source(tracing)
    with provider.get_tracer("app").start_as_current_span("request"):
        src.play(run(src, Run("etl", nodes("load"))))
    spans = Spans(exporter.get_finished_spans())
    assert spans.parent_name(spans.one("pipeline etl")) == "request"


def test_without_opentelemetry_the_error_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "import plait.callbacks\n"
        "try:\n    from plait.callbacks import TracingCallback\n"
        "except ImportError as e:\n    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert "pip install 'plait[otel]'" in result.stdout
