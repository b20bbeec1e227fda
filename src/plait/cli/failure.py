"""How the command reports what went wrong: a usage error in one line (exit status 2),
a failure with the user's own traceback frames and plait's notes (exit status 1)."""

from __future__ import annotations

import pathlib
import sys
import sysconfig
import traceback
import types
from typing import Literal, TextIO

from plait.errors import InputError, MissingInputsError, UnknownOutputError

FAILED = 1
USAGE = 2
INTERRUPTED = 130

PLAIT_DIR = pathlib.Path(__file__).resolve().parents[1]
STDLIB_DIR = pathlib.Path(sysconfig.get_paths()["stdlib"]).resolve()


class UsageError(Exception):
    """A mistake in the command's arguments, said in one line that names what to fix."""


def as_usage_error(exc: BaseException) -> UsageError | None:
    """The usage error ``exc`` is when plait refused the request before any node ran
    (a missing or misspelled input, an unknown output); None for a failure of the run.

    Errors raised while the run is under way carry plait's notes (``plait: raised in
    node ...``); the checks made before it starts add none.
    """
    if not isinstance(exc, InputError | UnknownOutputError):
        return None
    if any(str(note).startswith("plait:") for note in getattr(exc, "__notes__", ())):
        return None
    if isinstance(exc, MissingInputsError):
        needs = ", ".join(
            f"{name!r} (for node{'s' if len(nodes) > 1 else ''} {', '.join(map(repr, nodes))})"
            for name, nodes in exc.missing.items()
        )
        return UsageError(
            f"missing required input{'s' if len(exc.missing) > 1 else ''} {needs}: "
            "pass --input NAME=VALUE or --inputs FILE.json"
        )
    return UsageError(" ".join(str(exc).split("\n")))


def report_failure(exc: BaseException, *, full: bool, file: TextIO | None = None) -> None:
    """Print ``exc`` with its notes; unless ``full``, without plait's frames and the
    standard library frames plait called."""
    out = sys.stderr if file is None else file
    hidden = 0 if full else _trim_chain(exc, set())
    traceback.print_exception(exc, file=out)
    if hidden:
        frames = "frame" if hidden == 1 else "frames"
        print(f"({hidden} {frames} of plait's machinery hidden; --traceback shows them)", file=out)


def _trim_chain(exc: BaseException, seen: set[int]) -> int:
    if id(exc) in seen:
        return 0
    seen.add(id(exc))
    trimmed, hidden = _trim(exc.__traceback__)
    exc.__traceback__ = trimmed
    for linked in (exc.__cause__, exc.__context__):
        if linked is not None:
            hidden += _trim_chain(linked, seen)
    for inner in getattr(exc, "exceptions", ()):  # an ExceptionGroup's members
        hidden += _trim_chain(inner, seen)
    return hidden


def _trim(tb: types.TracebackType | None) -> tuple[types.TracebackType | None, int]:
    """The frames of ``tb`` worth showing, and how many were left out.

    plait's own frames go; a standard-library frame stays only when the user's code
    called it (``json.loads`` in a node), not when plait did (asyncio, threads).
    """
    kept: list[types.TracebackType] = []
    total = 0
    caller: Literal["plait", "user"] = "plait"  # the command itself is plait's code
    while tb is not None:
        total += 1
        where = _where(tb.tb_frame.f_code.co_filename)
        if where == "user":
            caller = "user"
            kept.append(tb)
        elif where == "plait":
            caller = "plait"
        elif caller == "user":
            kept.append(tb)
        tb = tb.tb_next
    rebuilt = None
    for old in reversed(kept):
        rebuilt = types.TracebackType(rebuilt, old.tb_frame, old.tb_lasti, old.tb_lineno)
    return rebuilt, total - len(kept)


def _where(filename: str) -> Literal["plait", "stdlib", "user"]:
    if filename.startswith("<frozen "):
        return "stdlib"
    if filename.startswith("<"):  # <string>, <stdin>: code the user typed
        return "user"
    path = pathlib.Path(filename).resolve()
    if path.is_relative_to(PLAIT_DIR):
        return "plait"
    installed = {"site-packages", "dist-packages"}.intersection(path.parts)
    if path.is_relative_to(STDLIB_DIR) and not installed:
        return "stdlib"
    return "user"
