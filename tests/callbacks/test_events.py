"""The hand-built event sequences follow the documented order (else the tests mean little)."""

from __future__ import annotations

from collections import defaultdict

from tests.callbacks.events import Map, N, Run, Source, map_, nodes, run


def check_order(log: list[tuple[str, int, str | None, int | None]]) -> None:
    """Each scope starts first and ends last; each item and node runs start → end once."""
    by_scope: dict[int, list[str]] = defaultdict(list)
    for event, scope, _, _ in log:
        by_scope[scope].append(event)
    for events in by_scope.values():
        assert events[0].endswith("_start")
        assert events[0] != "on_map_item_start"
        assert events[-1] == events[0].replace("_start", "_end")
        assert events.count(events[0]) == 1
        assert events.count(events[-1]) == 1
    open_: set[tuple[int, str | None, int | None]] = set()
    for event, scope, node, item in log:
        key = (scope, node, item)
        if event in ("on_map_item_start", "on_node_start"):
            assert key not in open_
            open_.add(key)
        elif event in ("on_map_item_end", "on_map_item_cached", "on_node_end", "on_error"):
            if event != "on_error" or node is not None:
                open_.remove(key)
        elif event == "on_node_retry":
            assert key in open_


def test_a_map_with_nested_runs_cache_hits_retries_and_a_failure() -> None:
    src = Source()
    inner = Run("parse_doc", nodes("tokenize", "count"))
    spec = Map("scrape", 6, [N("fetch", retries=1), N("parse", inner=inner)], {1}, {3: "fetch"})
    src.play(map_(src, spec))
    check_order(src.log)
    events = [event for event, *_ in src.log]
    assert events[0] == "on_map_start"
    assert events[-1] == "on_map_end"
    assert events.count("on_nested_pipeline_start") == 4  # items 0, 2, 4, 5
    assert events.count("on_map_item_cached") == 1
    assert events.count("on_error") == 1
    finished = [item for event, _, _, item in src.log if event == "on_map_item_end"]
    assert finished != sorted(finished)  # items finish out of order


def test_interleaved_runs_and_a_map_inside_a_run() -> None:
    src = Source()
    per_doc = Map("per_doc", 4, nodes("read", "embed"))
    corpus = Run("corpus", [N("docs", inner=per_doc), N("index")])
    failing = Run("etl", [N("load"), N("save", error=OSError("disk full"))])
    src.play(run(src, corpus), run(src, failing))
    check_order(src.log)
    scopes = {scope for _, scope, _, _ in src.log}
    assert len(scopes) == 3
