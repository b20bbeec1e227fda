"""TracingCallback: OpenTelemetry spans for runs, maps, map items and nodes."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.trace import Span, Status, StatusCode, Tracer
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "TracingCallback needs the OpenTelemetry API, which is not installed: "
        "pip install 'plait[otel]'"
    ) from exc

from plait.callbacks.base import Callback, CallbackContext


@dataclass(slots=True)
class _Scope:
    """The open spans of one run or map."""

    span: Span
    path: tuple[str, ...]
    parent_id: int | None
    items: dict[int, Span] = field(default_factory=dict)
    nodes: dict[tuple[int | None, str], Span] = field(default_factory=dict)


class TracingCallback(Callback):
    """Record runs as OpenTelemetry spans.

    One span per run, nested run and map, one per map item and one per node, each
    under its parent: a node under its item (or run), an item under its map, a
    nested pipeline or map under the node that runs it. A top-level run's span is
    a child of the span current when it starts. Cache hits are zero-length spans
    with ``plait.cached=True``; retries are span events; failures are recorded on
    each span they end (``record_exception`` and status ERROR).

    Parents are set explicitly, never taken from the current context, so spans are
    right however threads and processes interleave.

    Args:
        tracer: the tracer to use; ``trace.get_tracer("plait")`` by default.
    """

    def __init__(self, tracer: Tracer | None = None) -> None:
        self.tracer = tracer if tracer is not None else trace.get_tracer("plait")
        self._scopes: dict[int, _Scope] = {}
        self._lock = threading.Lock()

    # -- runs and maps ---------------------------------------------------------------

    def on_pipeline_start(self, ctx: CallbackContext) -> None:
        self._open(ctx, f"pipeline {ctx.pipeline}")

    def on_nested_pipeline_start(self, ctx: CallbackContext) -> None:
        self._open(ctx, f"pipeline {ctx.pipeline}")

    def on_map_start(self, ctx: CallbackContext) -> None:
        extra = {} if ctx.total is None else {"plait.total": ctx.total}
        self._open(ctx, f"map {ctx.pipeline}", extra)

    def on_pipeline_end(self, ctx: CallbackContext) -> None:
        self._close(ctx)

    def on_nested_pipeline_end(self, ctx: CallbackContext) -> None:
        self._close(ctx)

    def on_map_end(self, ctx: CallbackContext) -> None:
        self._close(ctx)

    # -- items -----------------------------------------------------------------------

    def on_map_item_start(self, ctx: CallbackContext) -> None:
        with self._lock:
            scope = self._scopes.get(ctx.scope_id)
            if scope is not None and ctx.item is not None:
                scope.items[ctx.item] = self._span(f"item {ctx.pipeline}", scope.span, ctx)

    def on_map_item_end(self, ctx: CallbackContext) -> None:
        with self._lock:
            scope = self._scopes.get(ctx.scope_id)
            span = scope.items.pop(ctx.item, None) if scope and ctx.item is not None else None
            if span is not None:
                _end(span, ctx.error)

    def on_map_item_cached(self, ctx: CallbackContext) -> None:
        with self._lock:
            scope = self._scopes.get(ctx.scope_id)
            if scope is None or ctx.item is None:
                return
            span = scope.items.pop(ctx.item, None)
            if span is None:
                self._instant(f"item {ctx.pipeline}", scope.span, ctx)
            else:
                span.set_attribute("plait.cached", True)
                span.end()

    # -- nodes -----------------------------------------------------------------------

    def on_node_start(self, ctx: CallbackContext) -> None:
        with self._lock:
            scope = self._scopes.get(ctx.scope_id)
            if scope is not None and ctx.node is not None:
                span = self._span(f"node {ctx.node}", self._node_parent(scope, ctx), ctx)
                scope.nodes[ctx.item, ctx.node] = span

    def on_node_end(self, ctx: CallbackContext) -> None:
        with self._lock:
            span = self._pop_node(ctx)
            if span is not None:
                span.end()

    def on_node_cached(self, ctx: CallbackContext) -> None:
        with self._lock:
            scope = self._scopes.get(ctx.scope_id)
            if scope is not None and ctx.node is not None:
                self._instant(f"node {ctx.node}", self._node_parent(scope, ctx), ctx)

    def on_node_retry(self, ctx: CallbackContext) -> None:
        with self._lock:
            scope = self._scopes.get(ctx.scope_id)
            span = scope.nodes.get((ctx.item, ctx.node)) if scope and ctx.node else None
            if span is None:
                return
            attributes: dict[str, Any] = {"plait.attempt": ctx.attempt or 0}
            attributes["plait.delay"] = ctx.delay or 0.0
            if ctx.error is not None:
                attributes["exception.type"] = type(ctx.error).__qualname__
                attributes["exception.message"] = str(ctx.error)
            span.add_event("retry", attributes)

    def on_error(self, ctx: CallbackContext) -> None:
        # A node's span ends here; an item's or a scope's ends (and records the
        # error) with the end event that follows.
        with self._lock:
            span = self._pop_node(ctx)
            if span is not None:
                _end(span, ctx.error)

    # -- helpers ---------------------------------------------------------------------

    def _open(self, ctx: CallbackContext, name: str, extra: dict[str, Any] | None = None) -> None:
        with self._lock:
            parent = self._scope_parent(ctx)
            span = self._span(name, parent, ctx, extra)
            self._scopes[ctx.scope_id] = _Scope(span, ctx.path, ctx.parent_id)

    def _close(self, ctx: CallbackContext) -> None:
        with self._lock:
            scope = self._scopes.pop(ctx.scope_id, None)
            if scope is None:
                return
            for child in self._descendants(ctx.scope_id):  # aborted: no end event of their own
                _end_scope(self._scopes.pop(child), None, aborted=True)
            _end_scope(scope, ctx.error)

    def _descendants(self, scope_id: int) -> list[int]:
        """Open scopes under ``scope_id``, deepest first."""
        found: list[int] = []
        for child_id, child in list(self._scopes.items()):
            if child.parent_id == scope_id:
                found[:0] = [*self._descendants(child_id), child_id]
        return found

    def _scope_parent(self, ctx: CallbackContext) -> Span | None:
        """The span a run or map belongs under: the node running it when the path tells."""
        parent = self._scopes.get(ctx.parent_id) if ctx.parent_id is not None else None
        if parent is None:
            return None
        depth = len(parent.path)
        if len(ctx.path) == depth + 2 and ctx.path[:depth] == parent.path:
            via = ctx.path[depth]
            span = parent.nodes.get((ctx.item, via))
            if span is None and ctx.item is None:  # a map emits no item: unique name?
                matches = [s for (_, name), s in parent.nodes.items() if name == via]
                span = matches[0] if len(matches) == 1 else None
            if span is not None:
                return span
        if ctx.item is not None and ctx.item in parent.items:
            return parent.items[ctx.item]
        return parent.span

    def _node_parent(self, scope: _Scope, ctx: CallbackContext) -> Span:
        return scope.items.get(ctx.item, scope.span) if ctx.item is not None else scope.span

    def _pop_node(self, ctx: CallbackContext) -> Span | None:
        scope = self._scopes.get(ctx.scope_id)
        if scope is None or ctx.node is None:
            return None
        return scope.nodes.pop((ctx.item, ctx.node), None)

    def _span(
        self,
        name: str,
        parent: Span | None,
        ctx: CallbackContext,
        extra: dict[str, Any] | None = None,
        start_time: int | None = None,
    ) -> Span:
        attributes: dict[str, Any] = {
            "plait.pipeline": ctx.pipeline,
            "plait.path": "/".join(ctx.path),
        }
        if ctx.node is not None:
            attributes["plait.node"] = ctx.node
        if ctx.item is not None:
            attributes["plait.item"] = ctx.item
        attributes.update(extra or {})
        # None means the current context: only for top-level runs (and scopes whose
        # parent this callback never saw), so a caller's own span can enclose the run.
        context = None if parent is None else trace.set_span_in_context(parent)
        return self.tracer.start_span(
            name, context=context, attributes=attributes, start_time=start_time
        )

    def _instant(self, name: str, parent: Span, ctx: CallbackContext) -> None:
        """A zero-length span for a cache hit."""
        now = time.time_ns()
        span = self._span(name, parent, ctx, {"plait.cached": True}, start_time=now)
        span.end(end_time=now)


def _end_scope(scope: _Scope, error: BaseException | None, *, aborted: bool = False) -> None:
    """End a scope's span, and those of its items and nodes still open (cut short)."""
    for span in [*scope.nodes.values(), *scope.items.values()]:
        _abort(span)
    if aborted:
        _abort(scope.span)
    else:
        _end(scope.span, error)


def _abort(span: Span) -> None:
    span.set_attribute("plait.aborted", True)
    span.end()


def _end(span: Span, error: BaseException | None) -> None:
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()
