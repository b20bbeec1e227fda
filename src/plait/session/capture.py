"""Per-cell routing of ``sys.stdout``, ``sys.stderr`` and ``input()``.

While any session is in use, ``sys.stdout`` and ``sys.stderr`` are proxies and
``builtins.input`` is a wrapper. Each looks up the context variable
:data:`current_cell`: code running for a cell (and every task or thread that
copied that cell's context) writes to that cell's :class:`CellIO`; everything
else goes to the real stream (or the real ``input``), unchanged.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import sys
import threading
import weakref
from collections.abc import Callable
from contextvars import Context, ContextVar, copy_context
from typing import Any, TextIO

StreamCallback = Callable[[str, str], None]

#: The I/O of the cell whose code is running in this context.
current_cell: ContextVar[CellIO | None] = ContextVar("plait_session_cell", default=None)


#: How long streamed output ending in a partial line waits for the line's end.
LINE_WAIT_SECONDS = 0.05


class CellIO:
    """Where one cell's output goes, and how its ``input()`` is answered.

    Writes are buffered for the cell's result while the cell runs and are also
    passed to ``on_stream`` on the event loop's thread (consecutive writes
    coalesced), in the context this was created in. After the cell ended,
    writes from tasks it left running still go to its ``on_stream`` (or to the
    real stream if it has none), never to a later cell.
    """

    def __init__(
        self,
        execution_count: int,
        loop: asyncio.AbstractEventLoop,
        on_stream: StreamCallback | None,
        read_input: Callable[[str], str],
        tasks: weakref.WeakSet[asyncio.Task[Any]] | None = None,
    ) -> None:
        self.execution_count = execution_count
        self.read_input = read_input
        # on_stream runs in the context of whoever created this (the caller of
        # run_cell), never in the cell's: its own prints must not loop back in.
        self._host_context = copy_context()
        #: Where tasks created in this cell's context are recorded (by the session).
        self.tasks = tasks
        self._loop = loop
        self._on_stream = on_stream
        self._lock = threading.Lock()
        self._open = True
        self._buffers: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._pending: list[tuple[str, str]] = []
        self._flush_scheduled = False
        self._held = False  # a partial line waits for its end (see _flush_lines)

    def host_context(self) -> Context:
        """A copy of the context this was created in (the run_cell caller's)."""
        return self._host_context.copy()

    def write(self, name: str, text: str) -> None:
        with self._lock:
            if self._open:
                self._buffers[name].append(text)
            elif self._on_stream is None:
                _real_stream(name).write(text)
                return
            if self._on_stream is None:
                return
            self._pending.append((name, text))
            if self._flush_scheduled and not (self._held and text.endswith("\n")):
                return
            self._flush_scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._flush_lines)
        except RuntimeError:  # the loop is closed: deliver here and now
            self.flush()

    def _flush_lines(self) -> None:
        """The flush writes ask for: a partial last line (``print`` writes its text,
        then its newline) waits up to :data:`LINE_WAIT_SECONDS` for the rest, so a
        line reaches ``on_stream`` whole."""
        with self._lock:
            tail = self._pending[-1][1] if self._pending else ""
            if tail and not tail.endswith("\n") and not self._held:
                self._held = True
                self._loop.call_later(LINE_WAIT_SECONDS, self.flush)
                return
        self.flush()

    def flush(self) -> None:
        """Deliver pending writes to ``on_stream`` (call on the loop's thread)."""
        with self._lock:
            pending, self._pending = self._pending, []
            self._flush_scheduled = self._held = False
        if not pending or self._on_stream is None:
            return
        chunks: list[tuple[str, list[str]]] = []
        for name, text in pending:
            if chunks and chunks[-1][0] == name:
                chunks[-1][1].append(text)
            else:
                chunks.append((name, [text]))
        for name, texts in chunks:
            try:
                self.host_context().run(self._on_stream, name, "".join(texts))
            except Exception as exc:  # the host's bug: report it, keep the cell going
                self._loop.call_exception_handler(
                    {"message": "an AsyncSession on_stream callback failed", "exception": exc}
                )

    def close(self) -> tuple[str, str]:
        """End the cell: deliver what is pending and return its (stdout, stderr)."""
        with self._lock:
            self._open = False
            buffers, self._buffers = self._buffers, {"stdout": [], "stderr": []}
        self.flush()
        return "".join(buffers["stdout"]), "".join(buffers["stderr"])


class StreamProxy:
    """Stands in for ``sys.stdout``/``sys.stderr``; routes each write by context.

    ``channel`` is ``"stdout"`` or ``"stderr"``, ``target`` the stream it stands in
    front of (where writes outside any cell go). A host that needs to do more with a
    cell's writes (the kernel keeps them in order with bytes written to fd 1) overrides
    :meth:`write_to_cell`. Other attributes are the target's.
    """

    def __init__(self, channel: str, target: TextIO) -> None:
        self._channel = channel
        self._target = target

    @property
    def channel(self) -> str:
        """``"stdout"`` or ``"stderr"``."""
        return self._channel

    @property
    def target(self) -> TextIO:
        """The stream this proxy stands in front of."""
        return self._target

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        cell = current_cell.get()
        if cell is None:
            return self._target.write(text)
        self.write_to_cell(cell, text)
        return len(text)

    def write_to_cell(self, cell: CellIO, text: str) -> None:
        """Deliver a write made for ``cell`` (the default: into the cell's output)."""
        cell.write(self._channel, text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if current_cell.get() is None:
            self._target.flush()

    def isatty(self) -> bool:
        return current_cell.get() is None and self._target.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def unwrap(stream: Any) -> Any:
    """The stream under a :class:`StreamProxy` (``stream`` itself if it is none)."""
    return stream.target if isinstance(stream, StreamProxy) else stream


def _routed_input(prompt: object = "") -> str:
    cell = current_cell.get()
    if cell is None:
        return _saved_input(prompt)
    return cell.read_input(str(prompt))


_install_lock = threading.Lock()
_users = 0
_saved_input: Callable[[object], str] = builtins.input


def acquire() -> None:
    """Count one more user of the routing and make sure it is installed."""
    global _users
    with _install_lock:
        _users += 1
    ensure_installed()


def ensure_installed() -> None:
    """Install the proxies and the input wrapper, on top of whatever is there now.

    Called before every cell: a host (pytest's capture, a notebook) may have
    replaced ``sys.stdout`` since the last one.
    """
    global _saved_input
    with _install_lock:
        if not isinstance(sys.stdout, StreamProxy):
            sys.stdout = StreamProxy("stdout", sys.stdout)
        if not isinstance(sys.stderr, StreamProxy):
            sys.stderr = StreamProxy("stderr", sys.stderr)
        if builtins.input is not _routed_input:
            _saved_input = builtins.input
            builtins.input = _routed_input


def release() -> None:
    """One user fewer; the last one puts back what the proxies stand in front of."""
    global _users
    with _install_lock:
        _users = max(_users - 1, 0)
        if _users:
            return
        sys.stdout = unwrap(sys.stdout)
        sys.stderr = unwrap(sys.stderr)
        if builtins.input is _routed_input:
            builtins.input = _saved_input  # type: ignore[assignment]


def _real_stream(name: str) -> TextIO:
    """The stream a proxy writes to for code outside any cell."""
    stream: TextIO = unwrap(sys.stdout if name == "stdout" else sys.stderr)
    return stream


def write_real(name: str, text: str) -> None:
    """Write to the real stdout/stderr, bypassing the routing."""
    stream = _real_stream(name)
    stream.write(text)
    with contextlib.suppress(Exception):
        stream.flush()
