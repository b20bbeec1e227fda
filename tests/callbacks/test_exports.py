"""plait.callbacks exports the built-ins without importing rich or OpenTelemetry up front."""

from __future__ import annotations

import subprocess
import sys

import pytest

import plait.callbacks


def test_importing_the_package_loads_neither_rich_nor_opentelemetry() -> None:
    code = (
        "import sys, plait, plait.callbacks\n"
        "print(sorted(m for m in ('rich', 'opentelemetry') if m in sys.modules))\n"
        "from plait.callbacks import LoggingCallback\n"
        "print(sorted(m for m in ('rich', 'opentelemetry') if m in sys.modules))\n"
        "from plait.callbacks import ProgressCallback, TracingCallback\n"
        "print(sorted(m for m in ('rich', 'opentelemetry') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    # rich loads when a ProgressCallback draws on a terminal, not on import
    assert result.stdout.splitlines() == ["[]", "[]", "['opentelemetry']"]


def test_the_built_ins_are_exported() -> None:
    from plait.callbacks.log import LoggingCallback
    from plait.callbacks.progress import ProgressCallback
    from plait.callbacks.tracing import TracingCallback

    assert plait.callbacks.LoggingCallback is LoggingCallback
    assert plait.callbacks.ProgressCallback is ProgressCallback
    assert plait.callbacks.TracingCallback is TracingCallback
    assert set(plait.callbacks.__all__) <= set(dir(plait.callbacks))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Progress'"):
        _ = plait.callbacks.Progress
