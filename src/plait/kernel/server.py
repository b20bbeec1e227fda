"""The kernel process: an AsyncSession served over JSON lines on private file descriptors.

Threads of the kernel process:

* **main** runs the sync code of cells (``AsyncSession(run_blocking=...)``), so
  SIGINT can stop ``time.sleep(100)`` or ``while True: pass`` with a
  KeyboardInterrupt; between cells it waits for work, and a SIGINT there
  interrupts whatever the running cell awaits on the loop.
* **loop** runs the session's event loop: cells' async code and the request queue.
* **reader** reads requests from the protocol fd; it handles ``interrupt_request``
  at once, even while a cell holds the main thread.
* **watcher** wakes the loop when fds 1 and 2 (pipes) have output, which goes
  out as ``stream`` messages.

Beside them a forked **watchdog process** SIGKILLs the kernel if its client dies
and the kernel does not exit (a cell holding the GIL in C code stops every thread).

See docs/kernel.md for the protocol and the fd layout.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import contextlib
import faulthandler
import io
import os
import queue
import select
import signal
import stat
import sys
import threading
import traceback
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

from plait.kernel.protocol import (
    PROTOCOL_VERSION,
    Message,
    MessageWriter,
    ProtocolError,
    decode,
    message,
    plait_version,
)
from plait.session import AsyncSession, CellResult, capture

T = TypeVar("T")

#: How long shutdown waits for an interrupted cell before it exits anyway.
_SHUTDOWN_GRACE_SECONDS = 3.0
#: How long output on fds 1 and 2 waits for the loop thread before it is sent without it.
_LOOP_DRAIN_PATIENCE_SECONDS = 0.1
#: A kernel whose client is gone exits after this even if a cell blocks its shutdown.
_ORPHAN_EXIT_SECONDS = 5.0
#: ... and the watchdog process kills it after this, if a cell holds the GIL in C code.
_ORPHAN_KILL_SECONDS = 6.0
#: While queued cells finish after the end of input, how often to check for the client.
_CLIENT_CHECK_SECONDS = 0.5
#: After shutdown, threads a cell left running may hold the exit this long at most.
_EXIT_WATCHDOG_SECONDS = 5.0


def serve() -> int:
    """Serve the kernel protocol on this process's stdin/stdout; return the exit status.

    Takes over the process's standard fds (see docs/kernel.md), so call it only
    in a process made for it: ``python -m plait kernel``.
    """
    _start_watchdog()
    fds = _take_over_fds()
    return _Kernel(fds).run()


def _start_watchdog() -> None:
    """Fork a process that kills this kernel if its client dies and it does not exit.

    The kernel's own threads notice a vanished client and shut it down, but none of
    them runs while a cell holds the GIL in C code (a catastrophic regex, say): a
    separate process does not need the GIL. It watches the protocol output (fd 1,
    still the original stdout here): when the pipe or socket has no reader any more,
    the client is gone, and if this process has not ended :data:`_ORPHAN_KILL_SECONDS`
    later, the watchdog sends SIGKILL. It ends as soon as the kernel ends (the write
    end of a pipe only the kernel holds closes). Forked before any thread starts; not
    started when stdout is a file or a terminal, which no client death closes.
    """
    mode = os.fstat(1).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)) or threading.active_count() > 1:
        return
    alive_read, alive_write = os.pipe()  # non-inheritable: cells' subprocesses never hold it
    kernel = os.getpid()
    pid = os.fork()
    if pid == 0:  # the watchdog
        try:
            os.close(alive_write)
            _watchdog(kernel, alive_read)
        finally:
            os._exit(0)
    os.close(alive_read)
    # alive_write stays open until this process ends.


def _watchdog(kernel: int, alive: int) -> None:
    """In the watchdog process: wait for the client to go, then for the kernel to end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the group is the kernel's
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 2):  # hold no pipe of the client's but the one watched
        os.dup2(devnull, fd)
    os.closerange(3, alive)
    os.closerange(alive + 1, os.sysconf("SC_OPEN_MAX"))
    poller = select.poll()
    poller.register(1, 0)  # POLLERR (pipe) or POLLHUP (socket): no reader any more
    poller.register(alive, select.POLLIN)  # EOF: the kernel has ended
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if alive in ready:
            return
        if 1 in ready:
            break
    os.close(1)
    waiting = select.poll()
    waiting.register(alive, select.POLLIN)
    if not waiting.poll(int(_ORPHAN_KILL_SECONDS * 1000)) and os.getppid() == kernel:
        os.kill(kernel, signal.SIGKILL)


class _Fds:
    """The kernel's file descriptors after the takeover."""

    def __init__(self, proto_in: int, proto_out: int, diag: int) -> None:
        self.proto_in = proto_in  # requests from the client (the original stdin)
        self.proto_out = proto_out  # messages to the client (the original stdout)
        self.diag = diag  # kernel diagnostics (the original stderr)
        self.out_pipes: dict[int, str] = {}  # read end -> "stdout" / "stderr"


def _take_over_fds() -> _Fds:
    """Move the protocol to private fds; point fd 0 at /dev/null and fds 1, 2 at pipes.

    ``os.dup`` makes non-inheritable fds, so subprocesses of a cell never see the
    protocol; they inherit fds 0-2 as set here.
    """
    fds = _Fds(os.dup(0), os.dup(1), os.dup(2))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        os.set_blocking(read_end, False)
        fds.out_pipes[read_end] = name
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stdout = _text_writer(1)
    sys.stderr = _text_writer(2)
    # A crash (segfault) prints the main thread's traceback to the client's KernelDiedError.
    faulthandler.enable(_text_writer(fds.diag), all_threads=False)
    return fds


def _text_writer(fd: int) -> io.TextIOWrapper:
    writer = open(fd, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    writer.reconfigure(write_through=True, line_buffering=True)
    return writer


class _Output:
    """Routes and orders cell output: Python-level writes and the bytes written to fds 1, 2.

    The session delivers a cell's ``print`` output on the loop's thread, later
    than it was written; bytes on fds 1 and 2 arrive through pipes. To keep them
    in write order, a print first moves the pipes' pending bytes into the cell's
    output (``write``), and the pipes are otherwise drained on the loop thread
    after flushing the cells' pending output (``drain``); both hold one lock.
    """

    def __init__(
        self,
        pipes: dict[int, str],
        loop: asyncio.AbstractEventLoop,
        send: Callable[[str, str], None],
    ) -> None:
        self._pipes = pipes
        self._loop = loop
        self._send = send  # (name, text) for pipe bytes drained on the loop
        self._decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in pipes}
        self._lock = threading.Lock()
        self._poller = select.poll()
        for fd in pipes:
            self._poller.register(fd, select.POLLIN)
        self._cells: weakref.WeakSet[capture.CellIO] = weakref.WeakSet()
        self._drained = threading.Event()
        self._stopped = threading.Event()
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._watch, name="plait-kernel-output", daemon=True)

    def install(self) -> None:
        """Route sys.stdout and sys.stderr through this (after the session's own routing)."""
        capture.acquire()  # counted: the session's later acquire/release keep ours in place
        real_stdout, real_stderr = capture.unwrap(sys.stdout), capture.unwrap(sys.stderr)
        sys.stdout = _OrderedStream("stdout", real_stdout, self)
        sys.stderr = _OrderedStream("stderr", real_stderr, self)
        self._thread.start()

    def write(self, cell: capture.CellIO, name: str, text: str) -> None:
        """A cell's Python-level write: pending pipe bytes go first, into the same cell."""
        with self._lock:
            for pipe_name, pipe_text in self._take():
                cell.write(pipe_name, pipe_text)
            cell.write(name, text)
            self._cells.add(cell)

    def drain(self) -> None:
        """On the loop thread: deliver everything written so far, in order."""
        with self._lock:
            for cell in list(self._cells):
                cell.flush()
            for name, text in self._take():
                self._send(name, text)

    def stop(self) -> None:
        """After the loop stopped: deliver what is left and stop the watcher thread."""
        self._stopped.set()
        os.write(self._wake_write, b"x")
        self._thread.join()
        self.drain()

    def _take(self) -> list[tuple[str, str]]:
        """Read what the pipes hold now, without blocking (called with the lock held)."""
        taken = []
        # One syscall to learn which pipes hold bytes: this runs on every print.
        for fd, _ in self._poller.poll(0):
            name = self._pipes[fd]
            chunks = []
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            if chunks and (text := self._decoders[fd].decode(b"".join(chunks))):
                taken.append((name, text))
        return taken

    def _watch(self) -> None:
        """Watcher thread: when a pipe has bytes, have the loop drain them.

        If the loop does not get to it soon (code on the loop thread blocks, for
        example waiting for a subprocess that fills the pipe), forward the bytes
        from here: order with the cell's pending prints may suffer, but nothing
        waits forever on a full pipe.
        """
        _block_sigint()
        watched = [*self._pipes, self._wake_read]
        while True:
            readable, _, _ = select.select(watched, [], [])
            if self._stopped.is_set() or self._wake_read in readable:
                return
            self._drained.clear()
            try:
                self._loop.call_soon_threadsafe(self._drain_and_signal)
            except RuntimeError:  # the loop is closed
                return
            if not self._drained.wait(_LOOP_DRAIN_PATIENCE_SECONDS):
                with self._lock:
                    for name, text in self._take():
                        self._send(name, text)

    def _drain_and_signal(self) -> None:
        try:
            self.drain()
        finally:
            self._drained.set()


class _OrderedStream(capture.StreamProxy):
    """sys.stdout/sys.stderr in the kernel: the session's per-cell routing, kept in order."""

    def __init__(self, channel: str, target: Any, output: _Output) -> None:
        super().__init__(channel, target)
        self._output = output

    def write_to_cell(self, cell: capture.CellIO, text: str) -> None:
        self._output.write(cell, self.channel, text)


class _MainThreadJob:
    """One call to run on the main thread, with its outcome delivered to the loop."""

    PENDING, RUNNING, DONE, DROPPED = range(4)

    def __init__(self, fn: Callable[[], Any], future: asyncio.Future[Any]) -> None:
        self.fn = fn
        self.future = future
        self.state = self.PENDING
        self.lock = threading.Lock()

    def begin(self) -> bool:
        """Called by the main thread: False if the job was dropped before it started."""
        with self.lock:
            if self.state != self.PENDING:
                return False
            self.state = self.RUNNING
            return True

    def drop(self) -> bool:
        """Called by the loop: True if the job had not started and never will."""
        with self.lock:
            if self.state == self.PENDING:
                self.state = self.DROPPED
                return True
            return False

    def settle(self, ok: bool, value: Any) -> None:
        """On the loop: hand the outcome to the awaiting coroutine."""
        with self.lock:
            self.state = self.DONE
        if self.future.done():
            return
        if ok:
            self.future.set_result(value)
        else:
            self.future.set_exception(value)


class _MainThreadRunner:
    """Runs cells' sync code on the main thread; the loop awaits it as a future.

    While user code runs, SIGINT has Python's default handler (KeyboardInterrupt,
    which also lets ``asyncio.run`` or ``plait.run_sync`` inside a cell cancel
    cleanly); between jobs it has ``on_idle_sigint``.
    """

    def __init__(self, on_idle_sigint: Callable[[], None]) -> None:
        self._jobs: queue.SimpleQueue[_MainThreadJob | None] = queue.SimpleQueue()
        self._on_idle_sigint = on_idle_sigint
        self._main_ident = threading.main_thread().ident
        self._busy = False  # a job is running on the main thread

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the main thread; cancelling this interrupts it (SIGINT)."""
        job = _MainThreadJob(fn, asyncio.get_running_loop().create_future())
        self._jobs.put(job)
        try:
            result: T = await asyncio.shield(job.future)
            return result
        except asyncio.CancelledError:
            if not job.drop():
                self.interrupt_main()
                await _wait_uncancellably(job.future)
            raise

    def interrupt_main(self) -> None:
        """Send SIGINT to the main thread (from any thread)."""
        assert self._main_ident is not None
        signal.pthread_kill(self._main_ident, signal.SIGINT)

    def interrupt_job(self) -> None:
        """Send SIGINT to the main thread if it is running a job."""
        if self._busy:
            self.interrupt_main()

    def stop(self) -> None:
        """Make serve_forever return once the current job is done."""
        self._jobs.put(None)

    def serve_forever(self) -> None:
        """On the main thread: run jobs until stop()."""
        self._install_idle_handler()
        while (job := self._jobs.get()) is not None:
            if not job.begin():
                continue
            self._busy = True
            try:
                ok, value = self._call(job.fn)
            except KeyboardInterrupt as exc:  # arrived just before or after the call
                ok, value = False, exc
                self._install_idle_handler()
            self._busy = False
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                job.future.get_loop().call_soon_threadsafe(job.settle, ok, value)
            del job, value  # keep no reference to the cell's result or traceback

    def _call(self, fn: Callable[[], Any]) -> tuple[bool, Any]:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return True, fn()
        except BaseException as exc:
            return False, exc
        finally:
            self._install_idle_handler()

    def _install_idle_handler(self) -> None:
        while True:
            try:
                signal.signal(signal.SIGINT, self._idle_handler)
                return
            except KeyboardInterrupt:  # a SIGINT that came just before the switch
                continue

    def _idle_handler(self, signum: int, frame: FrameType | None) -> None:
        self._on_idle_sigint()


async def _wait_uncancellably(future: asyncio.Future[Any]) -> None:
    """Wait until ``future`` is done, whatever its outcome, even if cancelled meanwhile."""
    while not future.done():
        with contextlib.suppress(BaseException):
            await asyncio.shield(future)
    if not future.cancelled():
        future.exception()  # retrieved: no "exception was never retrieved"


class _Kernel:
    """Wires the threads, the session and the protocol together."""

    def __init__(self, fds: _Fds) -> None:
        self._fds = fds
        self._writer = MessageWriter(fds.proto_out)
        self._diag = _text_writer(fds.diag)
        self._runner = _MainThreadRunner(self._interrupt_awaiting_cell)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._run_loop, name="plait-kernel-loop", daemon=True
        )
        self._session: AsyncSession | None = None
        self._worker: asyncio.Task[None] | None = None
        self._requests: asyncio.Queue[Message | None] = asyncio.Queue()
        self._current: str | None = None  # id of the execute_request being run
        self._inputs: dict[str, concurrent.futures.Future[Message]] = {}
        self._inputs_lock = threading.Lock()
        self._input_closed = False  # stdin ended: input() in a cell gets EOFError
        self._closing = False
        self._disconnected = False
        self._stopped = threading.Event()  # serve_forever has returned
        self._output = _Output(fds.out_pipes, self._loop, self._send_pipe_output)

    # --- lifecycle ---------------------------------------------------------

    def run(self) -> int:
        """On the main thread: serve until shutdown (or the client goes away)."""
        self._output.install()
        self._loop_thread.start()
        asyncio.run_coroutine_threadsafe(self._start_session(), self._loop).result()
        reader = threading.Thread(target=self._read_requests, name="plait-kernel-reader")
        reader.daemon = True
        reader.start()
        info = {
            "protocol_version": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "plait_version": plait_version(),
        }
        self._send(message("kernel_ready", info))
        self._runner.serve_forever()
        self._stopped.set()
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join()
        self._output.stop()
        # Late writes (atexit handlers, a thread a cell left) go to the kernel's stderr.
        for fd in (1, 2):
            os.dup2(self._fds.diag, fd)
        os.close(self._fds.proto_out)
        threading.Thread(target=_exit_watchdog, daemon=True).start()
        return 0

    def _run_loop(self) -> None:
        _block_sigint()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _start_session(self) -> None:
        self._session = AsyncSession(input=self._input, run_blocking=self._runner.run_blocking)
        self._worker = self._loop.create_task(self._serve_requests())

    async def _finish(self) -> None:
        """The end of input with the client listening: run the queued cells, then stop."""
        if self._closing:
            return
        self._requests.put_nowait(None)  # after every request dispatched before the end
        if self._worker is not None:
            await asyncio.wait([self._worker])
        await self._shutdown(None)

    async def _shutdown(self, request: Message | None) -> None:
        """Abort queued cells, interrupt the running one, close the session, stop."""
        if self._closing:
            return
        self._closing = True
        self._abort_queued()
        self._requests.put_nowait(None)
        if self._current is not None:
            self.interrupt()
        if self._worker is not None:
            await asyncio.wait([self._worker], timeout=_SHUTDOWN_GRACE_SECONDS)
        assert self._session is not None
        with contextlib.suppress(Exception, TimeoutError):
            async with asyncio.timeout(_SHUTDOWN_GRACE_SECONDS):
                await self._session.aclose()
        self._output.drain()
        if request is not None:
            self._send(message("shutdown_reply", {}, parent_id=request["id"]))
        self._runner.stop()

    # --- requests ----------------------------------------------------------

    def _read_requests(self) -> None:
        """Reader thread: dispatch requests until the end of input (see :meth:`_end_of_input`)."""
        _block_sigint()
        with open(self._fds.proto_in, "rb", closefd=False) as stream:
            for line in stream:
                if not line.strip():
                    continue
                try:
                    request = decode(line)
                except ProtocolError as exc:
                    self._log(f"plait kernel: ignored a bad request line: {exc}")
                    continue
                self._dispatch(request)
        self._end_of_input()

    def _end_of_input(self) -> None:
        """Stdin is closed: no more requests.

        If the client still reads the protocol output, the queued cells run, their
        replies are sent, and the kernel exits (``printf '...' | plait kernel``); an
        ``input()`` gets EOFError. If nobody reads it (the client is gone), or the
        client goes meanwhile, queued cells are aborted and the running one is
        interrupted, as for a shutdown; if a cell blocks that, the kernel exits
        anyway after :data:`_ORPHAN_EXIT_SECONDS` (and the watchdog process kills
        it a little later if it cannot even do that).
        """
        with self._inputs_lock:
            self._input_closed = True
            waiting, self._inputs = list(self._inputs.values()), {}
        for future in waiting:
            if not future.done():
                future.set_exception(EOFError("EOF when reading a line (the client closed stdin)"))
        if not self._client_gone():
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                asyncio.run_coroutine_threadsafe(self._finish(), self._loop)
            while not self._stopped.wait(_CLIENT_CHECK_SECONDS):
                if self._client_gone():
                    break
            else:
                return
        self._schedule_shutdown(None)
        # Nobody can use this kernel any more: if a cell blocks the shutdown, exit anyway.
        if not self._stopped.wait(_ORPHAN_EXIT_SECONDS):
            self._log("plait kernel: the client is gone and the kernel is stuck; exiting")
            os._exit(1)

    def _client_gone(self) -> bool:
        """Whether nobody reads the protocol output any more (a pipe or socket without
        a reader); never for a file."""
        if self._disconnected:
            return True
        poller = select.poll()
        poller.register(self._fds.proto_out, 0)  # only POLLERR, POLLHUP, POLLNVAL come back
        return bool(poller.poll(0))

    def _dispatch(self, request: Message) -> None:
        kind = request["type"]
        if kind == "execute_request":
            with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                self._loop.call_soon_threadsafe(self._requests.put_nowait, request)
        elif kind == "input_reply":
            with self._inputs_lock:
                waiting = self._inputs.pop(request["parent_id"] or "", None)
            if waiting is not None and not waiting.done():
                waiting.set_result(request)
        elif kind == "interrupt_request":
            self.interrupt()
            self._send(message("interrupt_reply", {}, parent_id=request["id"]))
        elif kind == "shutdown_request":
            self._schedule_shutdown(request)
        else:
            self._log(f"plait kernel: ignored a {kind!r} message; clients do not send those")

    def _schedule_shutdown(self, request: Message | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            asyncio.run_coroutine_threadsafe(self._shutdown(request), self._loop)

    def interrupt(self) -> None:
        """Stop the running cell and abort the queued ones (from any thread).

        The SIGINT lands on the main thread: a KeyboardInterrupt in the cell's sync
        code there, or, if the main thread is idle, ``_interrupt_awaiting_cell``. A
        cell waiting for input gets a KeyboardInterrupt wherever it waits.
        """
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._abort_queued)
        with self._inputs_lock:
            waiting, self._inputs = list(self._inputs.values()), {}
        for future in waiting:
            if not future.done():
                future.set_exception(KeyboardInterrupt())
        self._runner.interrupt_main()

    def _interrupt_awaiting_cell(self) -> None:
        if self._session is not None:
            self._session.interrupt()

    def _abort_queued(self) -> None:
        while not self._requests.empty():
            request = self._requests.get_nowait()
            if request is None:
                self._requests.put_nowait(None)  # keep the stop marker last
                return
            reply = {"status": "aborted", "execution_count": None}
            self._send(message("execute_reply", reply, parent_id=request["id"]))

    async def _serve_requests(self) -> None:
        while (request := await self._requests.get()) is not None:
            self._current = request["id"]
            try:
                await self._execute(request)
            except Exception as exc:  # a kernel bug: say so rather than leave the client waiting
                detail = "".join(traceback.format_exception(exc))
                self._log(f"plait kernel: internal error\n{detail}")
                self._reply_error(request, "KernelError", f"internal kernel error: {exc!r}")
            finally:
                self._current = None

    async def _execute(self, request: Message) -> None:
        content = request["content"]
        code, timeout = content.get("code"), content.get("timeout")
        if not isinstance(code, str) or not (
            timeout is None or (isinstance(timeout, int | float) and timeout > 0)
        ):
            self._reply_error(
                request,
                "ProtocolError",
                "execute_request needs content {'code': str, 'timeout': positive number or null}",
            )
            return
        assert self._session is not None
        parent = request["id"]

        def on_stream(name: str, text: str) -> None:
            self._send(message("stream", {"name": name, "text": text}, parent_id=parent))

        # The session's timeout stops awaits and busy sync code; a SIGINT shortly
        # after also stops sync code blocked in a call such as time.sleep.
        backstop = None
        if timeout is not None:
            backstop = self._loop.call_later(timeout + 0.05, self._runner.interrupt_job)
        try:
            result = await self._session.run_cell(code, timeout=timeout, on_stream=on_stream)
        finally:
            if backstop is not None:
                backstop.cancel()
        self._output.drain()
        self._send_outcome(request, result)

    def _send_outcome(self, request: Message, result: CellResult) -> None:
        parent, count = request["id"], result.execution_count
        if result.error is None:
            if result.value is not None:
                content = {"execution_count": count, "repr": _safe_repr(result.value)}
                self._send(message("execute_result", content, parent_id=parent))
            reply = {"status": "ok", "execution_count": count}
            self._send(message("execute_reply", reply, parent_id=parent))
            return
        error = result.error
        tb = result.traceback or "".join(traceback.format_exception(error))
        self._reply_error(request, type(error).__name__, str(error), tb.splitlines(), count)

    def _reply_error(
        self,
        request: Message,
        ename: str,
        evalue: str,
        tb: list[str] | None = None,
        count: int | None = None,
    ) -> None:
        fields = {"ename": ename, "evalue": evalue}
        tb = tb if tb is not None else [f"{ename}: {evalue}"]
        self._send(message("error", {**fields, "traceback": tb}, parent_id=request["id"]))
        reply = {"status": "error", "execution_count": count, **fields}
        self._send(message("execute_reply", reply, parent_id=request["id"]))

    # --- input -------------------------------------------------------------

    def _input(self, prompt: str) -> str:
        """The session's input(): ask the client and wait (interrupt stops the wait)."""
        request = message("input_request", {"prompt": str(prompt)}, parent_id=self._current)
        future: concurrent.futures.Future[Message] = concurrent.futures.Future()
        with self._inputs_lock:
            if self._input_closed:
                raise EOFError("EOF when reading a line (the client closed stdin)")
            self._inputs[request["id"]] = future
        if threading.current_thread() is self._loop_thread:
            self._ask(request)
        else:  # sent by the loop thread: a SIGINT cannot cut the line short there
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._ask, request)
        return _input_value(future.result())

    def _ask(self, request: Message) -> None:
        self._output.drain()  # what the cell wrote before the prompt comes first
        self._send(request)

    # --- output ------------------------------------------------------------

    def _send_pipe_output(self, name: str, text: str) -> None:
        self._send(message("stream", {"name": name, "text": text}, parent_id=self._current))

    def _send(self, msg: Message) -> None:
        if self._disconnected:
            return
        try:
            self._writer.send(msg)
        except OSError:  # the client is gone: nobody to serve
            self._disconnected = True
            self._schedule_shutdown(None)

    def _log(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(text, file=self._diag)


def _block_sigint() -> None:
    """In a kernel thread (and the threads it starts): leave SIGINT to the main thread.

    A SIGINT sent to the process then lands on the main thread, where it
    interrupts a blocking call such as ``time.sleep``.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _input_value(reply: Message) -> str:
    value = reply["content"].get("value")
    if reply["content"].get("eof") or not isinstance(value, str):
        raise EOFError("EOF when reading a line (the client gave no input)")
    return value


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:
        return f"<repr of {type(value).__name__} object failed: {exc!r}>"


def _exit_watchdog() -> None:
    """Exit even if a thread the user started keeps the interpreter from finishing."""
    threading.Event().wait(_EXIT_WATCHDOG_SECONDS)
    os._exit(0)
