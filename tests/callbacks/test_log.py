"""LoggingCallback: what is logged, at which level, with which context."""

from __future__ import annotations

import logging

import pytest

from plait.callbacks import LoggingCallback
from tests.callbacks.events import Map, N, Run, Source, map_, nodes, run

LOGGER = "test.plait"


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def test_a_run_logs_start_nodes_retries_and_end(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    src = Source(LoggingCallback(LOGGER))
    src.play(run(src, Run("etl", [N("load"), N("save", retries=1)])))
    assert records(caplog) == [
        (logging.INFO, "plait etl: pipeline started"),
        (logging.DEBUG, "plait etl:load: node started"),
        (logging.INFO, "plait etl:load: node done in 0.050s"),
        (logging.DEBUG, "plait etl:save: node started"),
        (
            logging.WARNING,
            "plait etl:save: attempt 1 failed (ConnectionError('attempt 1 failed')); "
            "retrying in 0.25s",
        ),
        (logging.INFO, "plait etl:save: node done in 0.050s"),
        (logging.INFO, "plait etl: pipeline done in 0.500s"),
    ]
    # lazy %-formatting: the message is built only when a handler wants it
    assert all(r.args for r in caplog.records)


def test_a_map_logs_counts_and_keeps_item_detail_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    src = Source(LoggingCallback(logging.getLogger(LOGGER)))
    inner = Run("parse_doc", nodes("tokenize"))
    spec = Map("scrape", 5, [N("fetch"), N("parse", inner=inner)], {1}, {3: "fetch"})
    src.play(map_(src, spec))
    logged = records(caplog)
    assert logged[0] == (logging.INFO, "plait scrape: map started: 5 items")
    assert logged[-1] == (
        logging.INFO,
        "plait scrape: map done in 1.000s: 5/5 items (1 cached, 1 failed)",
    )
    assert (logging.ERROR, "plait scrape:fetch[3]: raised ValueError('bad item 3')") in logged
    assert len(logged) == 3  # the rest, per item, is DEBUG


def test_debug_says_where_each_event_happened(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    src = Source(LoggingCallback(LOGGER))
    inner = Run("parse_doc", nodes("tokenize"))
    src.play(map_(src, Map("scrape", 1, [N("parse", inner=inner)])))
    assert records(caplog) == [
        (logging.INFO, "plait scrape: map started: 1 items"),
        (logging.DEBUG, "plait scrape[0]: item started"),
        (logging.DEBUG, "plait scrape:parse[0]: node started"),
        (logging.DEBUG, "plait scrape/parse/parse_doc[0]: nested pipeline started"),
        (logging.DEBUG, "plait scrape/parse/parse_doc:tokenize[0]: node started"),
        (logging.DEBUG, "plait scrape/parse/parse_doc:tokenize[0]: node done in 0.050s"),
        (logging.DEBUG, "plait scrape/parse/parse_doc[0]: nested pipeline done in 0.500s"),
        (logging.DEBUG, "plait scrape:parse[0]: node done in 0.050s"),
        (logging.DEBUG, "plait scrape[0]: item done in 0.100s"),
        (logging.INFO, "plait scrape: map done in 1.000s: 1/1 items (0 cached, 0 failed)"),
    ]


def test_a_map_inside_a_run_logs_like_a_run_but_not_inside_map_items(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    src = Source(LoggingCallback(LOGGER))
    per_page = Map("per_page", 2, nodes("ocr"))
    book = Map("book", 2, [N("split", inner=per_page)])
    src.play(run(src, Run("corpus", [N("pages", inner=book)])))
    assert [message for _, message in records(caplog)] == [
        "plait corpus: pipeline started",
        "plait corpus/pages/book: map started: 2 items",
        "plait corpus/pages/book: map done in 1.000s: 2/2 items (0 cached, 0 failed)",
        "plait corpus:pages: node done in 0.050s",
        "plait corpus: pipeline done in 0.500s",
    ]


def test_an_error_logs_its_traceback_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    src = Source(LoggingCallback(LOGGER))
    boom = KeyError("boom")
    inner = Run("inner", [N("explode", error=boom)])
    src.play(run(src, Run("outer", [N("wrap", inner=inner)])))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "plait outer/wrap/inner:explode: raised KeyError('boom')",
        "plait outer/wrap/inner: nested pipeline failed after 0.500s: KeyError('boom')",
        "plait outer:wrap: raised KeyError('boom') (traceback above)",
        "plait outer: pipeline failed after 0.500s: KeyError('boom')",
    ]
    assert [r.exc_info is not None for r in errors] == [True, False, False, False]
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[1] is boom


def test_level_sets_the_level_of_ordinary_messages(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    src = Source(LoggingCallback(LOGGER, level=logging.DEBUG))
    src.play(run(src, Run("etl", nodes("load"))))
    assert {level for level, _ in records(caplog)} == {logging.DEBUG}


def test_nothing_is_formatted_when_the_level_is_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    src = Source(LoggingCallback(LOGGER))
    src.play(run(src, Run("etl", [N("load", retries=2)])))
    assert [level for level, _ in records(caplog)] == [logging.WARNING, logging.WARNING]
