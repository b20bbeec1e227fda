"""``plait repl`` driven through a real pseudo-terminal, as a person would use it."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


class Terminal:
    """``python -m plait repl`` on a pty that is its controlling terminal (so ^C is SIGINT)."""

    def __init__(self, home: Path) -> None:
        master, slave = pty.openpty()
        env = {
            **os.environ,
            "HOME": str(home),
            "TERM": "dumb",
            "PYTHONPATH": os.pathsep.join(sys.path),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "plait", "repl"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.master = master
        self.pending = b""

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def read_until(self, token: str, timeout: float = 10.0) -> str:
        """Everything up to and including ``token``."""
        deadline = time.monotonic() + timeout
        wanted = token.encode()
        while wanted not in self.pending:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.master], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"{token!r} did not appear; got {self.pending!r}")
            try:
                self.pending += os.read(self.master, 4096)
            except OSError:  # EIO: the other side is gone
                raise AssertionError(f"{token!r} did not appear; got {self.pending!r}") from None
        end = self.pending.index(wanted) + len(wanted)
        out, self.pending = self.pending[:end], self.pending[end:]
        return out.decode(errors="replace").replace("\r\n", "\n")

    def run(self, line: str) -> str:
        """Send one line; the output up to the next prompt (the echoed line excluded)."""
        self.send(line + "\n")
        self.read_until(line.rsplit("\n", 1)[-1] + "\r\n")  # the echo
        return self.read_until(">>> ")[: -len(">>> ")]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(tmp_path)
    try:
        yield term
    finally:
        term.close()


def test_console_await_values_multiline_interrupt_and_input(terminal: Terminal) -> None:
    banner = terminal.read_until(">>> ")
    assert "plait" in banner
    assert "Top-level await works" in banner
    assert terminal.run("import asyncio") == ""
    assert terminal.run("x = await asyncio.sleep(0, 21)") == ""
    assert terminal.run("x * 2") == "42\n"  # the last value is printed
    assert terminal.run("None") == ""

    terminal.send("def f():\n")
    terminal.read_until("... ")
    terminal.send("    return x + 100\n")
    terminal.read_until("... ")
    terminal.send("\n")
    terminal.read_until(">>> ")
    assert terminal.run("f()") == "121\n"
    assert "ZeroDivisionError: division by zero" in terminal.run("1 / 0")

    # Ctrl-C while a cell runs interrupts it in the kernel; the namespace survives.
    terminal.send("print('sleep' + 'ing'); import time; time.sleep(100)\n")
    terminal.read_until("sleeping\r\n")
    start = time.monotonic()
    terminal.send("\x03")
    assert "KeyboardInterrupt" in terminal.read_until(">>> ")
    assert time.monotonic() - start < 2
    assert terminal.run("x") == "21\n"

    # Ctrl-C at the prompt drops the line being typed.
    terminal.send("abc")
    terminal.read_until("abc")
    time.sleep(0.2)  # readline misses a SIGINT that comes just as it echoes (CPython's race)
    terminal.send("\x03")
    assert "KeyboardInterrupt" in terminal.read_until(">>> ")
    assert terminal.run("x") == "21\n"

    # input() in a cell reads from this terminal.
    terminal.send("input('q? ')\n")
    terminal.read_until("input('q? ')\r\n")
    terminal.read_until("q? ")
    terminal.send("hello\n")
    assert terminal.read_until(">>> ").endswith("'hello'\n>>> ")

    # Ctrl-C while the cell waits for that input interrupts the cell.
    terminal.send("input('r? ')\n")
    terminal.read_until("input('r? ')\r\n")
    terminal.read_until("r? ")
    time.sleep(0.2)
    terminal.send("\x03")
    assert "KeyboardInterrupt" in terminal.read_until(">>> ")
    assert terminal.run("x") == "21\n"

    terminal.send("\x04")  # Ctrl-D
    assert terminal.proc.wait(10) == 0


def test_dead_kernel_is_restarted_and_history_is_saved(terminal: Terminal, tmp_path: Path) -> None:
    terminal.read_until(">>> ")
    assert terminal.run("x = 5") == ""
    out = terminal.run("import os; os._exit(3)")
    assert "died: exited with status 3" in out
    assert "Started a fresh kernel: the namespace is empty." in out
    assert "NameError" in terminal.run("x")

    # A cell that swallows interrupts: the third Ctrl-C kills the kernel.
    terminal.send("import time\n")
    terminal.read_until(">>> ")
    terminal.send("while True:\n")
    terminal.read_until("... ")
    terminal.send("    try: print('stubborn'); time.sleep(100)\n")
    terminal.read_until("... ")
    terminal.send("    except KeyboardInterrupt: pass\n")
    terminal.read_until("... ")
    terminal.send("\n")
    terminal.read_until("stubborn\r\n")
    # Each press waits until the last one interrupted the cell (it prints again): Linux
    # merges a signal into one still pending, so presses close together on a loaded
    # machine could reach the REPL as one.
    for _ in range(2):
        terminal.send("\x03")
        terminal.read_until("stubborn\r\n")
    terminal.send("\x03")
    out = terminal.read_until(">>> ")
    assert "The kernel does not respond to interrupts: killing it." in out
    assert "killed by signal SIGKILL" in out
    assert "Started a fresh kernel: the namespace is empty." in out
    assert terminal.run("'fresh'") == "'fresh'\n"
    terminal.send("\x04")
    assert terminal.proc.wait(10) == 0
    history = (tmp_path / ".plait_history").read_text()
    assert "x = 5" in history
    assert "'fresh'" in history
