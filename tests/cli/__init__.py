"""Tests of the plait command; :func:`plait` runs it in this process."""

from __future__ import annotations

import pytest

from plait.cli import main


def plait(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``plait ARGS``: its exit status, stdout and stderr."""
    status = main(args)
    out, err = capsys.readouterr()
    return status, out, err
