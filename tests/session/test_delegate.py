"""bridge.delegate_to: sync plait calls from a worker thread run on the owner's loop."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

from plait import bridge, run_sync

T = TypeVar("T")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")


async def in_delegating_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a new thread with delegation to the running loop active."""
    loop = asyncio.get_running_loop()

    def call() -> T:
        with bridge.delegate_to(loop):
            return fn()

    return await asyncio.to_thread(call)


def test_run_sync_runs_on_the_delegated_loop_with_the_callers_contextvars() -> None:
    async def scenario() -> tuple[bool, str, int]:
        loop = asyncio.get_running_loop()
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async def probe() -> tuple[bool, str]:
            await asyncio.sleep(0.2)
            return asyncio.get_running_loop() is loop, request_id.get()

        def sync_caller() -> tuple[bool, str]:
            request_id.set("r-1")
            return run_sync(probe())

        beating = asyncio.create_task(heartbeat())
        on_loop, seen = await in_delegating_thread(sync_caller)
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
        return on_loop, seen, ticks

    on_loop, seen, ticks = asyncio.run(scenario())
    assert (on_loop, seen) == (True, "r-1")
    assert ticks >= 5  # the loop kept running while the thread waited


def test_a_timeout_cancels_the_delegated_coroutine() -> None:
    async def scenario() -> list[str]:
        events: list[str] = []

        async def slow() -> None:
            try:
                await asyncio.sleep(10)
            finally:
                events.append("cleaned up")

        def sync_caller() -> None:
            with pytest.raises(TimeoutError):
                run_sync(slow(), timeout=0.05)
            events.append("timed out")

        await in_delegating_thread(sync_caller)
        return events

    assert asyncio.run(scenario()) == ["cleaned up", "timed out"]


def test_errors_of_the_delegated_coroutine_propagate_with_their_type() -> None:
    async def fail() -> None:
        raise LookupError("missing")

    async def scenario() -> None:
        await in_delegating_thread(lambda: run_sync(fail()))

    with pytest.raises(LookupError, match="missing"):
        asyncio.run(scenario())


def test_a_sync_call_delegated_to_a_loop_that_is_not_running_raises() -> None:
    idle = asyncio.new_event_loop()
    errors: list[BaseException] = []

    async def never() -> None:
        raise AssertionError("must not run")

    def worker() -> None:
        with bridge.delegate_to(idle):
            try:
                run_sync(never())  # closed, never awaited: no RuntimeWarning
            except RuntimeError as exc:
                errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    idle.close()
    assert len(errors) == 1
    assert "the loop run_sync delegates to is not running" in str(errors[0])


def test_delegation_is_ignored_by_code_on_a_loop_in_the_same_thread() -> None:
    async def where() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def scenario() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
        outer = asyncio.get_running_loop()

        async def nested() -> asyncio.AbstractEventLoop:
            # A loop runs in this thread: the usual portal rules, not delegation
            # (waiting here for `outer` would be fine, but code on `outer` doing
            # the same would deadlock).
            with pytest.warns(Warning, match="inside a running event loop"):
                return run_sync(where())

        return outer, await in_delegating_thread(lambda: asyncio.run(nested()))

    outer, used = asyncio.run(scenario())
    assert used is not outer
    assert used.is_running()  # a portal loop, which lives on
