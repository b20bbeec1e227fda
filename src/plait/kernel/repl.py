"""``plait repl``: an interactive console whose cells run in a kernel subprocess.

The console (this process) reads lines, decides when a cell is complete the way
Python's own REPL does (with top-level ``await`` allowed), and sends each cell
to a :class:`KernelClient`. Ctrl-C while a cell runs interrupts it in the
kernel; three Ctrl-C presses during one cell restart an unresponsive kernel.
"""

from __future__ import annotations

import ast
import code
import contextlib
import os
import signal
import sys
from types import FrameType

from plait.kernel.client import KernelClient, KernelDiedError
from plait.kernel.protocol import plait_version

HISTORY_FILE = "~/.plait_history"
_HISTORY_LENGTH = 1000
#: Ctrl-C presses during one cell after which the kernel is killed and restarted.
_PRESSES_TO_RESTART = 3


class KernelConsole(code.InteractiveConsole):
    """An InteractiveConsole that runs complete cells in a kernel instead of in-process."""

    def __init__(self, client: KernelClient) -> None:
        super().__init__(filename="<stdin>")
        self.compile.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        self.client = client
        self._presses = 0
        self._reading_input = False

    def runsource(self, source: str, filename: str = "<input>", symbol: str = "single") -> bool:
        """Run ``source`` if it is a complete cell; True means "more input needed"."""
        try:
            if self.compile(source, filename, symbol) is None:
                return True
        except (OverflowError, SyntaxError, ValueError):
            pass  # complete but invalid: the kernel reports the error like any other
        self.run_cell(source)
        return False

    def run_cell(self, source: str) -> None:
        """Run one cell in the kernel, printing its output, value and error."""
        self._presses = 0
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            reply = self.client.execute(
                source,
                on_stream=_write_stream,
                on_result=lambda text: _write_stream("stdout", text + "\n"),
                on_input=self._read_input,
            )
        except KernelDiedError as exc:
            _write_stream("stderr", f"{exc}\n")
            self.client.restart()
            _write_stream("stderr", "Started a fresh kernel: the namespace is empty.\n")
            return
        finally:
            signal.signal(signal.SIGINT, previous)
        if reply.status == "error":
            _write_stream("stderr", "\n".join(reply.traceback) + "\n")

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self._reading_input:
            raise KeyboardInterrupt
        self._presses += 1
        if self._presses >= _PRESSES_TO_RESTART and self.client.pid is not None:
            _write_stream("stderr", "\nThe kernel does not respond to interrupts: killing it.\n")
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.client.pid, signal.SIGKILL)
            return
        with contextlib.suppress(KernelDiedError):
            self.client.interrupt()

    def _read_input(self, prompt: str) -> str:
        """Answer ``input()`` in a cell from this terminal."""
        self._reading_input = True
        try:
            return input(prompt)
        except KeyboardInterrupt:
            with contextlib.suppress(KernelDiedError):
                self.client.interrupt()
            return ""
        finally:
            self._reading_input = False


def _write_stream(name: str, text: str) -> None:
    stream = sys.stderr if name == "stderr" else sys.stdout
    stream.write(text)
    stream.flush()


def _setup_history() -> None:
    """Line editing and ~/.plait_history, if readline is available (best effort)."""
    try:
        import readline
    except ImportError:
        return
    path = os.path.expanduser(HISTORY_FILE)
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(_HISTORY_LENGTH)

    def save() -> None:
        with contextlib.suppress(OSError):
            readline.write_history_file(path)

    import atexit

    atexit.register(save)


def run_repl() -> int:
    """Run the console until Ctrl-D; return the exit status."""
    _setup_history()
    with KernelClient(on_stray_output=_write_stream) as client:
        info = client.kernel_info
        banner = (
            f"plait {plait_version()} repl, kernel pid {client.pid} "
            f"(Python {info.get('python', '?')}).\n"
            "Top-level await works. Ctrl-C interrupts the running cell; Ctrl-D exits."
        )
        KernelConsole(client).interact(banner=banner, exitmsg="")
    return 0
