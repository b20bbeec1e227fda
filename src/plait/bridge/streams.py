"""Iterate an async iterator from sync code: ``for item in iterate(stream)``.

A stream of a :func:`~plait.bridge.inline.loop_optional` async generator is
stepped without any event loop, one item per step, for as long as it does not
ask for a loop. From then on (or from the start, for any other stream) each
item is one :func:`~plait.bridge.block_on` call: between calls the stream rests
at its ``yield``, so nothing runs ahead of what the caller has taken, and
leaving the loop early (``break``, an exception, garbage collection) closes the
stream there, on its loop, which cancels what it has in flight.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, TypeVar

from plait.bridge.inline import is_loop_optional, resume, start_inline
from plait.bridge.loops import block_on

T = TypeVar("T")


def iterate(stream: AsyncIterator[T], *, stacklevel: int = 3) -> Iterator[T]:
    """Yield ``stream``'s items in sync code, wherever that code runs (see :func:`block_on`).

    ``stacklevel`` places a ``RunningLoopWarning`` as in :func:`block_on`; the default
    names the code iterating this generator (one more per generator in between)."""
    pending: Awaitable[T] | None = None
    try:
        if is_loop_optional(stream):
            ctx = contextvars.copy_context()
            while True:
                step = stream.__anext__()
                try:
                    done, item = start_inline(step, ctx)
                except StopAsyncIteration:
                    return
                if not done:  # it needs a loop from here on
                    pending = resume(step)
                    break
                yield item
        while True:
            next_item: Awaitable[Any] = pending if pending is not None else anext(stream)
            pending = None
            try:
                item = block_on(next_item, stacklevel=stacklevel)
            except StopAsyncIteration:
                return
            yield item
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            block_on(aclose(), stacklevel=stacklevel)
