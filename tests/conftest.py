"""Suite-wide guards: no asyncio error logs, and a fresh "warn once" state per test."""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Iterator

import pytest

from plait import bridge

# Daft phones home when imported unless told not to; the tests never should.
os.environ.setdefault("DO_NOT_TRACK", "1")

if "MUTANT_UNDER_TEST" in os.environ:
    # `make mutation`: mutmut wraps each function of a mutated module in more frames,
    # so deep walks (fingerprints of values 200 levels deep) need more room.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))


@pytest.fixture(autouse=True)
def no_asyncio_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail any test after which asyncio logged an error.

    That covers "Task was destroyed but it is pending", "exception was never
    retrieved" and exceptions in callbacks, on any loop plait used.
    """
    yield
    gc.collect()
    # What survived is the suite's long-lived heap (daft, ray, dask, pandas ... once
    # imported): frozen, later collections skip it. A full collection of it costs
    # about 75 ms, which after every one of ~1,400 tests was a third of the suite.
    gc.freeze()
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    errors = [r for r in records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not errors, "asyncio logged errors:\n" + "\n".join(r.getMessage() for r in errors)


@pytest.fixture(autouse=True)
def fresh_running_loop_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """The running-loop warning is once per process; give each test its own "once"."""
    monkeypatch.setattr(bridge.loops, "_warned_running_loop", False)
