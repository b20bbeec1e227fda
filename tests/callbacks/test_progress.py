"""ProgressCallback: plain lines off a terminal, rich bars on one."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from dataclasses import dataclass

import pytest
from rich.console import Console

from plait.callbacks import CallbackContext, ProgressCallback, _progress_stats
from tests.callbacks.events import Map, N, Run, Source, map_, nodes, run


@dataclass
class Clock:
    """Fake time: one second passes with each finished map item or run node."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, ctx: CallbackContext) -> None:
        if ctx.event.startswith("map_item") or ctx.item is None:
            self.now += 1.0

    on_map_item_end = on_map_item_cached = on_node_end = on_node_cached = tick


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(_progress_stats, "clock", clock)
    return clock


def plain(interval: float = 10.0) -> tuple[ProgressCallback, io.StringIO]:
    out = io.StringIO()
    return ProgressCallback(file=out, plain_interval=interval), out


def test_off_a_terminal_it_writes_a_line_every_interval_and_at_the_end(clock: Clock) -> None:
    progress, out = plain(interval=5.0)
    src = Source(clock, progress)
    spec = Map("scrape", 20, nodes("fetch"), cached={0, 1}, failing={7: "fetch"}, concurrency=1)
    src.play(map_(src, spec))
    assert out.getvalue().splitlines() == [
        "plait: map 'scrape' 5/20 items (25.0%), 0.6 items/s, ETA 25.0s, 2 cached",
        "plait: map 'scrape' 10/20 items (50.0%), 0.8 items/s, ETA 12.5s, 2 cached, 1 failed",
        "plait: map 'scrape' 15/20 items (75.0%), 0.9 items/s, ETA 5.8s, 2 cached, 1 failed",
        "plait: map 'scrape' 20/20 items (100.0%), 0.9 items/s, ETA 0.0s, 2 cached, 1 failed",
        "plait: map 'scrape' 20/20 items (100.0%), done in 20.0s, 0.9 items/s, 2 cached, 1 failed",
    ]


def test_an_unknown_total_is_a_counter_without_eta(clock: Clock) -> None:
    progress, out = plain(interval=3.0)
    src = Source(clock, progress)
    src.play(map_(src, Map("stream", 4, nodes("fetch"), total_known=False)))
    assert out.getvalue().splitlines() == [
        "plait: map 'stream' 3 items, 1.0 items/s",
        "plait: map 'stream' 4 items, done in 4.0s, 1.0 items/s",
    ]


def test_runs_report_nodes_and_failures(clock: Clock) -> None:
    progress, out = plain(interval=60.0)
    src = Source(clock, progress)
    src.play(run(src, Run("etl", [N("load", cached=True), N("save", error=OSError("full"))])))
    assert out.getvalue().splitlines() == [
        "plait: pipeline 'etl' 2 nodes, failed (OSError) in 1.0s, 1 cached, 1 failed",
    ]


def test_a_nested_map_reports_under_its_path_but_maps_inside_map_items_do_not(
    clock: Clock,
) -> None:
    progress, out = plain(interval=60.0)
    src = Source(clock, progress)
    per_doc = Map("per_doc", 3, nodes("read"))
    per_page = Map("per_page", 2, nodes("ocr"))
    book = Map("book", 2, [N("split", inner=per_page)])
    corpus = Run("corpus", [N("docs", inner=per_doc), N("pages", inner=book)])
    src.play(run(src, corpus))
    assert out.getvalue().splitlines() == [
        "plait: map 'corpus/docs/per_doc' 3/3 items (100.0%), done in 3.0s, 1.0 items/s",
        "plait: map 'corpus/pages/book' 2/2 items (100.0%), done in 6.0s, 0.3 items/s",
        "plait: pipeline 'corpus' 2 nodes, done in 11.0s",
    ]


def test_live_scopes_each_get_a_line(clock: Clock) -> None:
    progress, out = plain(interval=2.0)
    src = Source(clock, progress)
    src.play(run(src, Run("etl", nodes("a", "b", "c"))), map_(src, Map("m", 2, nodes("x"))))
    assert out.getvalue().splitlines()[:2] == [  # one tick, a line each
        "plait: pipeline 'etl' 2 nodes",
        "plait: map 'm' 0/2 items (0.0%)",
    ]


# -- on a terminal ---------------------------------------------------------------------


def terminal() -> tuple[ProgressCallback, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=150, color_system=None)
    return ProgressCallback(console=console, refresh_per_second=50), out


def screen(progress: ProgressCallback) -> list[str]:
    """The display as it would be drawn now, one line per bar."""
    live = progress._display.progress if progress._display else None
    assert live is not None, "no live display"
    out = io.StringIO()
    Console(file=out, width=150, color_system=None).print(live.get_renderable())
    return out.getvalue().splitlines()


def test_on_a_terminal_bars_show_counts_and_nest_under_their_parent(clock: Clock) -> None:
    progress, out = terminal()
    src = Source(clock, progress)
    keep = run(src, Run("later", nodes("x")))
    next(keep)  # a top-level run that is still going: the display stays live
    per_doc = Map("per_doc", 4, nodes("read"), cached={2})
    per_page = Map("per_page", 3, nodes("ocr"))
    book = Map("book", 2, [N("split", inner=per_page)], failing={1: "split"}, concurrency=1)
    corpus = Run("corpus", [N("docs", inner=per_doc), N("pages", inner=book)])
    steps = run(src, corpus)
    for _ in range(30):  # into the first book item's inner map
        next(steps)
    lines = screen(progress)
    starts = [
        "pipeline later ",
        "pipeline corpus ",
        "  └ map docs/per_doc ",
        "  └ map pages/book ",
        "    └ map split/per_page ",
    ]
    assert len(lines) == len(starts), lines
    assert all(line.startswith(start) for line, start in zip(lines, starts, strict=True)), lines
    assert "4/4 items" in lines[2]
    assert "(1 cached)" in lines[2]
    assert "0/2 items" in lines[3]
    assert "ETA" not in lines[3]
    src.play(steps)
    lines = screen(progress)
    assert len(lines) == 4  # the map inside a map item is gone, the others stay
    assert "2/2 items" in lines[3]
    assert "(1 failed)" in lines[3]
    assert "2 nodes" in lines[1]
    assert "failed" not in lines[1]
    src.play(run(src, Run("etl", [N("load"), N("save", error=OSError("disk full"))])))
    assert "2 nodes" in screen(progress)[-1]
    assert "(1 failed) ✗ OSError" in screen(progress)[-1]
    src.play(keep)
    assert progress._display is not None
    assert progress._display.progress is None
    final = out.getvalue()
    assert "pipeline later" in final
    assert "map docs/per_doc" in final


def test_on_a_terminal_from_another_thread(clock: Clock) -> None:
    progress, out = terminal()
    src = Source(clock, progress)
    src.play_in_thread(map_(src, Map("scrape", 50, nodes("fetch"), concurrency=8)))
    assert "50/50 items" in out.getvalue()


@pytest.mark.parametrize("transient", [True, False])
def test_transient_clears_the_display_at_the_end(transient: bool) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    progress = ProgressCallback(console=console, transient=transient)
    src = Source(progress)
    src.play(map_(src, Map("scrape", 5, nodes("fetch"))))
    assert "5/5 items" in out.getvalue()
    erased = out.getvalue().endswith("\x1b[1A\x1b[2K")  # cursor up, erase the line
    assert erased == transient


def test_without_rich_plain_lines_work_and_a_terminal_says_what_to_install() -> None:
    code = (
        "import io, sys; sys.modules['rich'] = None\n"
        "from plait import Pipeline, node\n"
        "from plait.callbacks import ProgressCallback\n"
        "out = io.StringIO()\n"
        "pipeline = Pipeline([node(lambda x: x, output_name='y')], name='p',\n"
        "                    callbacks=[ProgressCallback(file=out)])\n"
        "pipeline.map(inputs={'x': [1, 2]}, map_over='x')\n"
        "print(out.getvalue().splitlines()[0])\n"
        "class Tty(io.StringIO):\n"
        "    def isatty(self): return True\n"
        "try:\n    ProgressCallback(file=Tty())\n"
        "except ImportError as e:\n    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    line, error = result.stdout.splitlines()
    assert line.startswith("plait: map 'p' 2/2 items (100.0%), done in")
    assert error.startswith("ProgressCallback draws bars on a terminal with rich")
    assert "pip install 'plait[progress]'" in error


def test_one_instance_serves_runs_in_several_threads_at_once() -> None:
    progress, out = plain(interval=0.0)  # a line per event: as much contention as possible
    src = Source(progress)
    threads = [
        threading.Thread(target=src.play, args=(map_(src, Map(name, 300, nodes("x"))),))
        for name in ("a", "b", "c")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    finals = [line for line in out.getvalue().splitlines() if "done in" in line]
    assert sorted(line.split(" items")[0] for line in finals) == [
        f"plait: map '{name}' 300/300" for name in "abc"
    ]
    assert not progress._scopes


@pytest.mark.parametrize("on_terminal", [True, False])
def test_an_aborted_map_closes_the_scopes_it_cut_short(clock: Clock, on_terminal: bool) -> None:
    progress, out = terminal() if on_terminal else plain(interval=60.0)
    src = Source(clock, progress)
    inner = Map("sub", 3, nodes("y"))
    spec = Map("scrape", 10, [N("x", inner=inner)], failing={2: "x"}, abort=True, concurrency=3)
    src.play(map_(src, spec))
    started = {scope for event, scope, *_ in src.log if event == "on_map_start"}
    ended = {scope for event, scope, *_ in src.log if event == "on_map_end"}
    assert started - ended  # sub-maps still running when the map failed: no end event
    assert not progress._scopes
    if on_terminal:
        assert progress._display is not None
        assert progress._display.progress is None
        assert "✗ ValueError" in out.getvalue()
    else:
        assert out.getvalue().splitlines() == [
            "plait: map 'scrape' 1/10 items (10.0%), failed (ValueError) in 1.0s, 1.0 items/s, "
            "1 failed"
        ]
