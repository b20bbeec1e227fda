"""KernelClient: start a kernel subprocess and run cells in it, from sync or async code.

One class with both APIs: ``execute`` / ``await aexecute`` (the same pattern as
``pipeline.run`` / ``arun``), ``with KernelClient() as k`` / ``async with
KernelClient() as k``. The sync methods never touch an event loop, so they work
in a script, a worker thread, and inside a running loop (which they block while
they wait, like any sync call).

A reader thread per kernel routes the kernel's messages to the request they
answer; callbacks (``on_stream``, ``on_result``, ``on_input``) run in the thread
that called ``execute``, or on the loop that awaits ``aexecute``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any, Literal

from plait.errors import PlaitError
from plait.kernel.protocol import (
    Message,
    MessageWriter,
    ProtocolError,
    decode,
    encode,
    message,
)

StreamCallback = Callable[[str, str], None]
"""``on_stream(name, text)``: ``name`` is ``"stdout"`` or ``"stderr"``."""
InputCallback = Callable[[str], "str | Awaitable[str]"]
"""``on_input(prompt) -> str``: answers ``input()`` in a cell; raise EOFError for end of input."""

#: After a Ctrl-C in ``execute``, how long to wait for the interrupted cell's reply.
_INTERRUPT_WAIT_SECONDS = 2.0
_STDERR_TAIL_LINES = 40
_SIGNAL_CHECK_SECONDS = 0.2
#: A kernel whose client was garbage-collected is killed if it has not exited after this.
_ABANDONED_KILL_SECONDS = 10.0


class KernelDiedError(PlaitError, RuntimeError):
    """The kernel process exited or was killed; its namespace is lost.

    ``returncode`` is the process's (negative: killed by a signal), ``exit_status``
    and ``signal`` split it, ``stderr`` holds the last lines the kernel wrote to its
    own stderr (a crash's traceback, for example). ``restart()`` starts a fresh kernel.
    """

    def __init__(self, pid: int, returncode: int, stderr: str, *, shut_down: bool = False) -> None:
        self.pid = pid
        self.returncode = returncode
        self.exit_status: int | None = returncode if returncode >= 0 else None
        self.signal: int | None = -returncode if returncode < 0 else None
        self.stderr = stderr
        self.shut_down = shut_down
        if shut_down:
            how = "was shut down"
        elif self.signal is not None:
            how = f"died: killed by signal {_signal_name(self.signal)}"
        else:
            how = f"died: exited with status {returncode}"
        text = (
            f"the kernel (pid {pid}) {how}. Its namespace is lost: call restart() "
            "to start a fresh kernel (with an empty namespace)."
        )
        if stderr.strip():
            text += "\nlast lines of the kernel's stderr:\n" + stderr.rstrip()
        super().__init__(text)


class CellError(PlaitError, RuntimeError):
    """A cell raised; raised by ``ExecuteReply.raise_for_error``. The kernel lives on."""

    def __init__(self, reply: ExecuteReply) -> None:
        self.reply = reply
        tb = "\n".join(reply.traceback)
        super().__init__(f"the cell raised {reply.ename}: {reply.evalue}\n{tb}".rstrip())


@dataclass
class ExecuteReply:
    """The outcome of one cell.

    ``status`` is ``"ok"``, ``"error"`` (the cell raised; ``ename``, ``evalue``,
    ``traceback`` say what) or ``"aborted"`` (an interrupt or shutdown came
    before it started). ``result`` is the repr of the trailing expression's value
    (``None`` if there was none or it was ``None``); ``stdout`` and ``stderr``
    collect the cell's streamed output.
    """

    status: Literal["ok", "error", "aborted"]
    execution_count: int | None = None
    result: str | None = None
    stdout: str = ""
    stderr: str = ""
    ename: str | None = None
    evalue: str | None = None
    traceback: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def raise_for_error(self) -> ExecuteReply:
        """Raise CellError if the cell raised, RuntimeError if it was aborted; else return self."""
        if self.status == "error":
            raise CellError(self)
        if self.status == "aborted":
            raise RuntimeError("the cell was aborted (an interrupt or shutdown came first)")
        return self


_Item = Message | KernelDiedError
_Sink = Callable[[_Item], None]


class _Connection:
    """One kernel process: its pipes, the reader threads, and the requests awaiting answers."""

    def __init__(self, proc: subprocess.Popen[bytes], on_stray: StreamCallback | None) -> None:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        self.proc = proc
        self.writer = MessageWriter(proc.stdin.fileno())
        self.on_stray = on_stray
        self.ready = threading.Event()
        self.info: dict[str, Any] = {}
        self.closing = False
        self.returncode: int | None = None
        self._sinks: dict[str, _Sink] = {}
        self._lock = threading.Lock()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self._stderr_thread = threading.Thread(
            target=self._read_stderr, args=(proc.stderr,), name="plait-kernel-stderr", daemon=True
        )
        self._reader = threading.Thread(
            target=self._read, args=(proc.stdout,), name="plait-kernel-client", daemon=True
        )
        self._stderr_thread.start()
        self._reader.start()

    def died_error(self) -> KernelDiedError:
        assert self.returncode is not None
        return KernelDiedError(
            self.proc.pid,
            self.returncode,
            "".join(self._stderr_tail),
            shut_down=self.closing and self.returncode == 0,
        )

    def request(self, msg: Message, sink: _Sink) -> None:
        """Send ``msg``; everything answering it goes to ``sink`` until forget()."""
        with self._lock:
            if self.returncode is not None:
                raise self.died_error()
            self._sinks[msg["id"]] = sink
        self.send(msg)

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._sinks.pop(request_id, None)

    def send(self, msg: Message) -> None:
        try:
            self.writer.send(msg)
        except OSError:  # the kernel is gone; the reader reports how it ended
            self._reader.join()
            raise self.died_error() from None

    def close(self) -> None:
        self._reader.join()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def _read(self, stream: IO[bytes]) -> None:
        _block_sigint()
        try:
            for line in stream:
                if line.strip():
                    self._route(line)
        finally:
            self.returncode = self.proc.wait()
            self._stderr_thread.join(timeout=1.0)
            with self._lock:
                sinks, self._sinks = list(self._sinks.values()), {}
            for sink in sinks:
                sink(self.died_error())
            self.ready.set()

    def _route(self, line: bytes) -> None:
        try:
            msg = decode(line)
        except ProtocolError as exc:  # never expected: cells cannot reach the protocol fd
            self._stderr_tail.append(f"[plait client] {exc}\n")
            return
        if msg["type"] == "kernel_ready":
            self.info = msg["content"]
            self.ready.set()
            return
        with self._lock:
            sink = self._sinks.get(msg["parent_id"] or "")
        if sink is not None:
            sink(msg)
        elif msg["type"] == "stream" and self.on_stray is not None:
            self.on_stray(msg["content"]["name"], msg["content"]["text"])

    def _read_stderr(self, stream: IO[bytes]) -> None:
        _block_sigint()
        for line in stream:
            self._stderr_tail.append(line.decode("utf-8", "replace"))


class _ReplyBuilder:
    """Folds the messages answering one execute_request into an ExecuteReply."""

    def __init__(self, on_stream: StreamCallback | None, on_result: Callable[[str], None] | None):
        self.on_stream = on_stream
        self.on_result = on_result
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.result: str | None = None
        self.error: dict[str, Any] = {}

    def handle(self, msg: Message) -> ExecuteReply | None:
        """Take one message (not input_request); the reply once execute_reply arrives."""
        kind, content = msg["type"], msg["content"]
        if kind == "stream":
            name, text = content["name"], content["text"]
            (self.stderr if name == "stderr" else self.stdout).append(text)
            if self.on_stream is not None:
                self.on_stream(name, text)
        elif kind == "execute_result":
            self.result = content["repr"]
            if self.on_result is not None:
                self.on_result(content["repr"])
        elif kind == "error":
            self.error = content
        elif kind == "execute_reply":
            return ExecuteReply(
                status=content["status"],
                execution_count=content.get("execution_count"),
                result=self.result,
                stdout="".join(self.stdout),
                stderr="".join(self.stderr),
                ename=self.error.get("ename", content.get("ename")),
                evalue=self.error.get("evalue", content.get("evalue")),
                traceback=list(self.error.get("traceback", [])),
            )
        return None


class KernelClient:
    """A plait kernel in a subprocess (``python -m plait kernel``) and the calls to drive it.

    >>> with KernelClient() as kernel:                      # doctest: +SKIP
    ...     kernel.execute("import asyncio; x = await asyncio.sleep(0, 42)")
    ...     kernel.execute("x + 1").result
    '43'

    ``python``: the interpreter to run the kernel with (default: this one);
    ``cwd``/``env``: for the subprocess; ``on_input``: default answer to
    ``input()`` in cells (without one, ``input()`` raises EOFError);
    ``on_stray_output(name, text)``: output that belongs to no running request
    (a background thread or task of an earlier cell), dropped without it.
    """

    def __init__(
        self,
        *,
        python: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        on_input: InputCallback | None = None,
        on_stray_output: StreamCallback | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.python = python or sys.executable
        self.cwd = cwd
        self.env = env
        self.on_input = on_input
        self.on_stray_output = on_stray_output
        self.startup_timeout = startup_timeout
        self._conn: _Connection | None = None
        self._lock = threading.RLock()

    # --- state -------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The kernel process id, or None before start()."""
        return self._conn.proc.pid if self._conn is not None else None

    @property
    def is_alive(self) -> bool:
        return self._conn is not None and self._conn.returncode is None

    @property
    def kernel_info(self) -> dict[str, Any]:
        """The kernel_ready content: protocol_version, pid, python, plait_version."""
        return dict(self._conn.info) if self._conn is not None else {}

    def _connection(self) -> _Connection:
        conn = self._conn
        if conn is None:
            raise RuntimeError(
                "the kernel is not started: call start() or use `with KernelClient() as kernel`"
            )
        if conn.returncode is not None:
            raise conn.died_error()
        return conn

    # --- sync API ----------------------------------------------------------

    def start(self) -> KernelClient:
        """Start the kernel and wait until it is ready; a no-op if it is running."""
        with self._lock:
            if self.is_alive:
                return self
            if self._conn is not None:
                self._conn.close()
            proc = subprocess.Popen(
                [self.python, "-m", "plait", "kernel"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.cwd,
                env=_kernel_env(self.env),
                # Its own session: a terminal's Ctrl-C reaches it only as interrupt().
                start_new_session=True,
            )
            conn = self._conn = _Connection(proc, self.on_stray_output)
            # A client dropped without shutdown(): ask the kernel to exit.
            weakref.finalize(self, _abandon, proc)
            if not conn.ready.wait(self.startup_timeout):
                proc.kill()
                conn.close()
                raise TimeoutError(
                    f"the kernel did not start within {self.startup_timeout} s "
                    f"(command: {self.python} -m plait kernel)"
                )
            if conn.returncode is not None:
                error = conn.died_error()
                error.add_note(f"It ended while starting: {self.python} -m plait kernel")
                raise error
            return self

    def execute(
        self,
        code: str,
        *,
        on_stream: StreamCallback | None = None,
        on_result: Callable[[str], None] | None = None,
        on_input: Callable[[str], str] | None = None,
        timeout: float | None = None,
    ) -> ExecuteReply:
        """Run ``code`` as one cell and return its ExecuteReply (errors are in the reply).

        Callbacks run in this thread as messages arrive. ``timeout`` (seconds) is
        enforced by the kernel: the cell is interrupted and fails with TimeoutError.
        Raises KernelDiedError if the kernel dies. Ctrl-C (KeyboardInterrupt) here
        interrupts the cell, waits briefly for its reply, and re-raises.
        """
        conn = self._connection()
        request = _execute_request(code, timeout)
        items: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        builder = _ReplyBuilder(on_stream, on_result)
        answer = on_input or self.on_input
        conn.request(request, items.put)
        try:
            while True:
                item = _get(items)
                if isinstance(item, KernelDiedError):
                    raise item
                if item["type"] == "input_request":
                    try:
                        value = _ask_sync(answer, item)
                    except BaseException:
                        conn.send(_input_reply(item, None))  # the cell sees EOFError
                        raise
                    conn.send(_input_reply(item, value))
                elif (reply := builder.handle(item)) is not None:
                    return reply
        except KeyboardInterrupt:
            with contextlib.suppress(KernelDiedError):
                self.interrupt()
            _drain_until_reply(items, time.monotonic() + _INTERRUPT_WAIT_SECONDS)
            raise
        finally:
            conn.forget(request["id"])

    def interrupt(self) -> None:
        """Interrupt the running cell and abort queued ones; returns at once.

        The kernel keeps its namespace. (SIGINT to the kernel process interrupts
        the running cell the same way, without aborting queued ones.)
        """
        conn = self._connection()
        conn.send(message("interrupt_request"))

    def restart(self) -> KernelClient:
        """Shut the kernel down (or clean up a dead one) and start a fresh one.

        The namespace is lost: the new kernel starts empty.
        """
        with self._lock:
            self.shutdown()
            return self.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask the kernel to exit; kill it if it has not after ``timeout`` seconds.

        Queued cells are aborted and the running one is interrupted. A no-op if
        not started; safe to call on a dead kernel.
        """
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            conn.closing = True
            if conn.returncode is None:
                with contextlib.suppress(KernelDiedError):
                    conn.send(message("shutdown_request"))
            try:
                conn.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                conn.proc.kill()
                conn.proc.wait()
            conn.close()

    def __enter__(self) -> KernelClient:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "alive" if self.is_alive else ("dead" if self._conn else "not started")
        return f"<KernelClient pid={self.pid} {state}>"

    # --- async API ---------------------------------------------------------

    async def astart(self) -> KernelClient:
        """``start()`` without blocking the event loop."""
        return await asyncio.to_thread(self.start)

    async def aexecute(
        self,
        code: str,
        *,
        on_stream: StreamCallback | None = None,
        on_result: Callable[[str], None] | None = None,
        on_input: InputCallback | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  (enforced by the kernel)
    ) -> ExecuteReply:
        """``execute()`` for async code; ``on_input`` may be async.

        Callbacks run on this loop. Cancelling the await interrupts the cell.
        """
        conn = self._connection()
        loop = asyncio.get_running_loop()
        request = _execute_request(code, timeout)
        items: asyncio.Queue[_Item] = asyncio.Queue()
        builder = _ReplyBuilder(on_stream, on_result)
        answer = on_input or self.on_input

        def sink(item: _Item) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(items.put_nowait, item)

        conn.request(request, sink)
        try:
            while True:
                item = await items.get()
                if isinstance(item, KernelDiedError):
                    raise item
                if item["type"] == "input_request":
                    try:
                        value = await _ask_async(answer, item)
                    except BaseException:
                        conn.send(_input_reply(item, None))  # the cell sees EOFError
                        raise
                    conn.send(_input_reply(item, value))
                elif (reply := builder.handle(item)) is not None:
                    return reply
        except asyncio.CancelledError:
            with contextlib.suppress(RuntimeError):
                self.interrupt()
            raise
        finally:
            conn.forget(request["id"])

    async def arestart(self) -> KernelClient:
        """``restart()`` without blocking the event loop."""
        return await asyncio.to_thread(self.restart)

    async def ashutdown(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """``shutdown()`` without blocking the event loop."""
        await asyncio.to_thread(self.shutdown, timeout)

    async def __aenter__(self) -> KernelClient:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.ashutdown()


def _abandon(proc: subprocess.Popen[bytes]) -> None:
    """A KernelClient was garbage-collected without shutdown(): shut its kernel down.

    A shutdown_request (the end of input alone would let queued cells finish), the
    end of input, and a kill if the kernel has not exited after
    :data:`_ABANDONED_KILL_SECONDS` (a cell holding the GIL in C code cannot be
    interrupted).
    """
    if proc.stdin is None:
        return
    with contextlib.suppress(OSError, ValueError):
        fd = proc.stdin.fileno()
        os.set_blocking(fd, False)  # never wait on a kernel that reads nothing
        os.write(fd, encode(message("shutdown_request")))
    with contextlib.suppress(OSError):
        proc.stdin.close()
    with contextlib.suppress(RuntimeError):  # at interpreter exit: no new threads
        threading.Thread(target=_kill_if_stuck, args=(proc,), daemon=True).start()


def _kill_if_stuck(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(_ABANDONED_KILL_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()


#: The directory holding this plait package (src/ in a checkout, site-packages installed).
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _kernel_env(env: dict[str, str] | None) -> dict[str, str]:
    """The kernel's environment, with this plait importable (it may come from sys.path)."""
    result = dict(os.environ if env is None else env)
    package_root = _PACKAGE_ROOT
    paths = [package_root, *filter(None, result.get("PYTHONPATH", "").split(os.pathsep))]
    result["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return result


def _execute_request(code: str, timeout: float | None) -> Message:
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    return message("execute_request", {"code": code, "timeout": timeout})


def _input_reply(request: Message, value: str | None) -> Message:
    content: dict[str, Any] = {"value": value} if value is not None else {"eof": True}
    return message("input_reply", content, parent_id=request["id"])


def _ask_sync(answer: InputCallback | None, request: Message) -> str | None:
    """The callback's answer to an input_request; None means end of input."""
    if answer is None:
        return None
    try:
        value = answer(request["content"].get("prompt", ""))
    except EOFError:
        return None
    if inspect.isawaitable(value):
        raise TypeError("an async on_input callback needs aexecute(); execute() takes a sync one")
    return str(value)


async def _ask_async(answer: InputCallback | None, request: Message) -> str | None:
    if answer is None:
        return None
    try:
        value = answer(request["content"].get("prompt", ""))
        if inspect.isawaitable(value):
            value = await value
    except EOFError:
        return None
    return str(value)


def _get(items: queue.SimpleQueue[_Item]) -> _Item:
    """The next item; wakes up now and then so that a Ctrl-C is never left waiting.

    (A SIGINT that arrives just before a blocking wait starts would otherwise be
    handled only when the wait ends.)
    """
    while True:
        try:
            return items.get(timeout=_SIGNAL_CHECK_SECONDS)
        except queue.Empty:
            continue


def _drain_until_reply(items: queue.SimpleQueue[_Item], deadline: float) -> None:
    """Wait for the execute_reply (or the kernel's death) until ``deadline``."""
    while (left := deadline - time.monotonic()) > 0:
        try:
            item = items.get(timeout=left)
        except queue.Empty:
            return
        if isinstance(item, KernelDiedError) or item["type"] == "execute_reply":
            return


def _block_sigint() -> None:
    """In the client's threads: leave Ctrl-C (SIGINT) to the host's main thread.

    A SIGINT that lands on another thread does not interrupt the main thread's
    blocking call (a console's read of the next line, say).
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name} ({number})"
    except ValueError:
        return str(number)
