"""The kernel subprocess and KernelClient, end to end with real processes.

One kernel serves the module where a test leaves it usable; tests that kill,
shut down or restart a kernel start their own.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from plait.kernel import CellError, ExecuteReply, KernelClient, KernelDiedError
from plait.kernel.protocol import decode, encode, message

#: Interrupts must stop a cell within this (the issue's bound).
INTERRUPT_BOUND = 1.0


@pytest.fixture(scope="module")
def kernel() -> Iterator[KernelClient]:
    with KernelClient() as client:
        yield client


def interrupt_when(
    kernel: KernelClient, marker: str
) -> tuple[Callable[[str, str], None], list[float]]:
    """An on_stream callback that interrupts once ``marker`` is printed; the times it did."""
    sent: list[float] = []

    def on_stream(name: str, text: str) -> None:
        if marker in text and not sent:
            kernel.interrupt()
            sent.append(time.monotonic())

    return on_stream, sent


# --- cells, namespace, values ---------------------------------------------------------


def test_namespace_persists_and_trailing_value_is_returned(kernel: KernelClient) -> None:
    first = kernel.execute("import math\nx = 41")
    assert first.ok
    assert first.result is None
    assert kernel.execute("def f():\n    return x + 1").ok
    reply = kernel.execute("f() + math.floor(0.5)")
    assert reply.status == "ok"
    assert reply.result == "42"
    assert reply.execution_count == (first.execution_count or 0) + 2
    assert kernel.execute("_").result == "42"  # the last value


def test_top_level_await_persists(kernel: KernelClient) -> None:
    assert kernel.execute("import asyncio\ny = await asyncio.sleep(0, 'awaited')").ok
    assert kernel.execute("y").result == "'awaited'"
    reply = kernel.execute("async def g():\n    return y.upper()\nawait g()")
    assert reply.result == "'AWAITED'"


def test_error_reply_and_kernel_lives_on(kernel: KernelClient) -> None:
    reply = kernel.execute("z = 1\n1 / 0")
    assert reply.status == "error"
    assert reply.ename == "ZeroDivisionError"
    assert reply.evalue == "division by zero"
    assert any("<cell-" in line for line in reply.traceback)
    assert any("1 / 0" in line for line in reply.traceback)
    with pytest.raises(CellError, match="the cell raised ZeroDivisionError: division by zero"):
        reply.raise_for_error()
    assert kernel.execute("z").result == "1"


def test_syntax_error_is_reported(kernel: KernelClient) -> None:
    reply = kernel.execute("def (:")
    assert reply.ename == "SyntaxError"
    assert kernel.execute("2 + 2").result == "4"


def test_contextvars_set_in_one_cell_are_visible_in_the_next(kernel: KernelClient) -> None:
    kernel.execute("import contextvars\ncv = contextvars.ContextVar('cv')\ncv.set('one')")
    assert kernel.execute("cv.get()").result == "'one'"
    kernel.execute("import asyncio\nawait asyncio.sleep(0)\ncv.set('two')")
    assert kernel.execute("await asyncio.sleep(0, cv.get())").result == "'two'"


def test_pipeline_run_from_a_sync_cell_while_the_loop_keeps_running(kernel: KernelClient) -> None:
    setup = """
import asyncio, time
from plait import Pipeline, node

@node(output_name="y")
async def double(x):
    await asyncio.sleep(0.01)
    return 2 * x

pipeline = Pipeline([double])
ticks = []

async def beat():
    while True:
        ticks.append(time.monotonic())
        await asyncio.sleep(0.01)

async def start():
    return asyncio.create_task(beat())

heartbeat = await start()
"""
    assert kernel.execute(setup).ok
    reply = kernel.execute(
        "before = len(ticks)\nout = pipeline.run(inputs={'x': 21})\ntime.sleep(0.2)\n"
        "(out['y'], len(ticks) - before > 5)"
    )
    assert reply.result == "(42, True)", reply.traceback
    kernel.execute("heartbeat.cancel()")


def test_batch_from_a_sync_cell(kernel: KernelClient) -> None:
    code = """
import asyncio, plait
async def square(i):
    await asyncio.sleep(0.01)
    return i * i
plait.batch(square, range(20), max_concurrent=5)
"""
    reply = kernel.execute(code)
    assert reply.result == repr([i * i for i in range(20)]), reply.traceback


# --- output ---------------------------------------------------------------------------


def test_output_keeps_write_order_across_print_fd_writes_and_subprocesses(
    kernel: KernelClient,
) -> None:
    code = f"""
import os, subprocess, sys
print("1 print")
os.write(1, b"2 fd write\\n")
subprocess.run(["echo", "3 subprocess"], check=True)
print("4 print")
subprocess.run([{sys.executable!r}, "-c", "import os; os.write(1, b'5 child fd\\\\n')"])
sys.stdout.write("6 no newline ")
os.write(1, b"7 fd\\n")
print("8 err", file=sys.stderr)
os.write(2, b"9 fd err\\n")
"""
    for _ in range(3):  # ordering must hold every time, not by luck
        events: list[tuple[str, str]] = []
        reply = kernel.execute(code, on_stream=lambda *event: events.append(event))  # noqa: B023
        assert reply.ok, reply.traceback
        assert reply.stdout == (
            "1 print\n2 fd write\n3 subprocess\n4 print\n5 child fd\n6 no newline 7 fd\n"
        )
        assert reply.stderr == "8 err\n9 fd err\n"
        assert "".join(text for name, text in events if name == "stdout") == reply.stdout
        names = [name for name, _ in events]
        assert names == sorted(names, key=["stdout", "stderr"].index)  # all stdout came first


@pytest.mark.parametrize("where", ["sync statement", "on the loop thread"])
def test_large_output_does_not_block(kernel: KernelClient, where: str) -> None:
    """More than a pipe holds, from a child the cell waits for, even on the loop thread."""
    child = "subprocess.run(['seq', '100000'], check=True)"
    if where == "sync statement":
        code = f"import subprocess\n{child}\nprint('x' * 200_000)"
    else:
        code = f"import subprocess\nasync def f():\n    {child}\nawait f()"
    reply = kernel.execute(code, timeout=20)
    assert reply.ok, reply.traceback
    expected = "".join(f"{i}\n" for i in range(1, 100_001))
    assert reply.stdout.startswith(expected)


def test_a_printed_protocol_message_is_just_text(kernel: KernelClient) -> None:
    fake = json.dumps(
        {"id": "x", "parent_id": None, "type": "execute_reply", "content": {"status": "ok"}}
    )
    code = f"import os\nprint({fake!r})\nos.write(1, {fake!r}.encode() + b'\\n')\n'done'"
    reply = kernel.execute(code)
    assert reply.ok
    assert reply.stdout == f"{fake}\n{fake}\n"
    assert reply.result == "'done'"
    assert kernel.execute("'still in sync'").result == "'still in sync'"


def test_the_kernel_stdin_is_empty_not_the_protocol(kernel: KernelClient) -> None:
    reply = kernel.execute("import os, sys\n(sys.stdin.read(), os.read(0, 100))")
    assert reply.result == "('', b'')"


def test_undecodable_bytes_are_replaced(kernel: KernelClient) -> None:
    reply = kernel.execute("import os\nos.write(1, b'bad \\xff byte\\n')\nNone")
    assert reply.stdout == "bad \ufffd byte\n"


def test_output_of_an_earlier_cells_task_goes_to_stray_output() -> None:
    stray: list[tuple[str, str]] = []
    got = threading.Event()

    def on_stray(name: str, text: str) -> None:
        stray.append((name, text))
        got.set()

    with KernelClient(on_stray_output=on_stray) as kernel:
        kernel.execute(
            "import asyncio\nevent = asyncio.Event()\n"
            "async def later():\n    await event.wait()\n    print('from the task')\n"
            "async def start():\n    return asyncio.create_task(later())\n"
            "task = await start()"
        )
        reply = kernel.execute("event.set()\nawait asyncio.sleep(0.05)\n'second'")
        assert got.wait(5)
    assert "from the task" not in reply.stdout
    assert stray == [("stdout", "from the task\n")]


# --- input ----------------------------------------------------------------------------


def test_input_round_trip(kernel: KernelClient) -> None:
    prompts: list[str] = []

    def answer(prompt: str) -> str:
        prompts.append(prompt)
        return f"answer {len(prompts)}"

    reply = kernel.execute("print('before')\nname = input('who? ')\nname", on_input=answer)
    assert reply.result == "'answer 1'"
    assert reply.stdout == "before\n"
    assert prompts == ["who? "]


def test_input_without_a_handler_raises_eof(kernel: KernelClient) -> None:
    reply = kernel.execute("input('who? ')")
    assert reply.ename == "EOFError"


def test_async_input_handler(kernel: KernelClient) -> None:
    async def answer(prompt: str) -> str:
        await asyncio.sleep(0)
        return prompt.upper()

    async def main() -> ExecuteReply:
        return await kernel.aexecute("input('quiet? ')", on_input=answer)

    assert asyncio.run(main()).result == "'QUIET? '"


# --- interrupt and timeout ---------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "import time\nprint('started')\ntime.sleep(100)",
        "print('started')\nwhile True:\n    pass",
        "import asyncio\nprint('started')\nawait asyncio.sleep(100)",
    ],
    ids=["sleep", "busy-loop", "await"],
)
def test_interrupt_stops_the_cell_within_a_second(kernel: KernelClient, code: str) -> None:
    kernel.execute("survivor = 'kept'")
    on_stream, sent = interrupt_when(kernel, "started")
    reply = kernel.execute(code, on_stream=on_stream)
    took = time.monotonic() - sent[0]
    assert reply.status == "error"
    assert reply.ename == "KeyboardInterrupt"
    assert took < INTERRUPT_BOUND
    assert kernel.execute("survivor").result == "'kept'"


@pytest.mark.parametrize("where", ["input('name: ')", "await asyncio.sleep(0, input('name: '))"])
def test_interrupt_while_the_cell_waits_for_input(kernel: KernelClient, where: str) -> None:
    kernel.execute("import asyncio\nsurvivor = 'kept'")
    sent: list[float] = []

    def answer_late(prompt: str) -> str:
        kernel.interrupt()
        sent.append(time.monotonic())
        time.sleep(0.1)  # the kernel has stopped waiting by now: this answer is dropped
        return "too late"

    reply = kernel.execute(where, on_input=answer_late)
    assert reply.ename == "KeyboardInterrupt"
    assert time.monotonic() - sent[0] < INTERRUPT_BOUND
    assert kernel.execute("survivor").result == "'kept'"


def test_a_failing_input_handler_gives_the_cell_eof(kernel: KernelClient) -> None:
    def broken(prompt: str) -> str:
        raise LookupError("no answer")

    with pytest.raises(LookupError, match="no answer"):
        kernel.execute("try:\n    input()\nexcept EOFError:\n    saw_eof = True", on_input=broken)
    assert kernel.execute("saw_eof").result == "True"


def test_sigint_to_the_kernel_process_interrupts_too(kernel: KernelClient) -> None:
    assert kernel.pid is not None
    pid = kernel.pid

    sent: list[float] = []

    def on_stream(name: str, text: str) -> None:
        if not sent:
            os.kill(pid, signal.SIGINT)
            sent.append(time.monotonic())

    reply = kernel.execute("import time\nprint('started')\ntime.sleep(100)", on_stream=on_stream)
    assert reply.ename == "KeyboardInterrupt"
    assert time.monotonic() - sent[0] < INTERRUPT_BOUND
    assert kernel.is_alive


@pytest.mark.parametrize(
    "code", ["import time\ntime.sleep(100)", "while True:\n    pass", "await asyncio.sleep(100)"]
)
def test_timeout_stops_the_cell(kernel: KernelClient, code: str) -> None:
    kernel.execute("import asyncio")
    start = time.monotonic()
    reply = kernel.execute(code, timeout=0.2)
    assert time.monotonic() - start < 0.2 + INTERRUPT_BOUND
    assert reply.ename == "TimeoutError"
    assert "timeout of 0.2 s" in (reply.evalue or "")
    assert kernel.execute("1").result == "1"


def test_interrupt_aborts_queued_cells(kernel: KernelClient) -> None:
    async def main() -> list[ExecuteReply]:
        on_stream, _ = interrupt_when(kernel, "started")
        running = asyncio.ensure_future(
            kernel.aexecute("import time\nprint('started')\ntime.sleep(100)", on_stream=on_stream)
        )
        queued = asyncio.ensure_future(kernel.aexecute("queued_ran = True"))
        return list(await asyncio.gather(running, queued))

    running, queued = asyncio.run(main())
    assert running.ename == "KeyboardInterrupt"
    assert queued.status == "aborted"
    assert kernel.execute("'queued_ran' in globals()").result == "False"
    with pytest.raises(RuntimeError, match="aborted"):
        queued.raise_for_error()


def test_execute_argument_errors(kernel: KernelClient) -> None:
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        kernel.execute("1", timeout=0)
    with pytest.raises(TypeError, match="code must be a str"):
        kernel.execute(b"1")  # type: ignore[arg-type]


# --- sync API in a running loop, async API ------------------------------------------------


def test_sync_execute_works_inside_a_running_loop(kernel: KernelClient) -> None:
    async def main() -> str | None:
        return kernel.execute("6 * 7").result

    assert asyncio.run(main()) == "42"


def test_async_api() -> None:
    async def main() -> tuple[ExecuteReply, list[str]]:
        seen: list[str] = []
        async with KernelClient() as kernel:
            await kernel.aexecute("import asyncio\nq = 3")
            reply = await kernel.aexecute(
                "print('out')\nawait asyncio.sleep(0.01)\nq * 2",
                on_stream=lambda name, text: seen.append(text),
                on_result=seen.append,
            )
            assert kernel.is_alive
            await kernel.arestart()
            after = await kernel.aexecute("q")
            assert after.ename == "NameError"
        assert kernel.pid is None  # shut down
        return reply, seen

    reply, seen = asyncio.run(main())
    assert reply.result == "6"
    assert seen == ["out\n", "6"]


def test_cancelling_aexecute_interrupts_the_cell(kernel: KernelClient) -> None:
    async def main() -> None:
        task = asyncio.ensure_future(kernel.aexecute("import time\ntime.sleep(100)"))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    start = time.monotonic()
    assert kernel.execute("'free again'").result == "'free again'"
    assert time.monotonic() - start < INTERRUPT_BOUND


# --- death, restart, shutdown ----------------------------------------------------------


def test_exit_is_reported_with_its_status_and_restart_gives_an_empty_namespace() -> None:
    with KernelClient() as kernel:
        kernel.execute("x = 1")
        first_pid = kernel.pid
        with pytest.raises(KernelDiedError) as info:
            kernel.execute("import os\nos._exit(1)")
        error = info.value
        assert (error.exit_status, error.signal, error.pid) == (1, None, first_pid)
        assert "died: exited with status 1" in str(error)
        assert "Its namespace is lost: call restart()" in str(error)
        assert not kernel.is_alive
        with pytest.raises(KernelDiedError, match="exited with status 1"):
            kernel.execute("1")
        with pytest.raises(KernelDiedError):
            kernel.interrupt()
        kernel.restart()
        assert kernel.pid != first_pid
        assert kernel.execute("x").ename == "NameError"
        assert kernel.execute("1 + 1").result == "2"


def test_segfault_is_reported_with_the_signal() -> None:
    code = (
        "import ctypes, resource\n"
        "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file\n"
        "ctypes.string_at(0)"
    )
    with KernelClient() as kernel:
        with pytest.raises(KernelDiedError) as info:
            kernel.execute(code)
        assert info.value.signal == signal.SIGSEGV
        assert info.value.exit_status is None
        assert "killed by signal SIGSEGV (11)" in str(info.value)
        assert "Segmentation fault" in info.value.stderr  # the kernel's faulthandler output
        assert "<cell-" in info.value.stderr
        kernel.restart()
        assert kernel.execute("'alive'").result == "'alive'"


def test_every_pending_execute_fails_when_the_kernel_dies() -> None:
    async def main(kernel: KernelClient) -> list[Any]:
        dying = kernel.aexecute("import os, time\ntime.sleep(0.2)\nos._exit(2)")
        queued = kernel.aexecute("'never'")
        return list(await asyncio.gather(dying, queued, return_exceptions=True))

    with KernelClient() as kernel:
        outcomes = asyncio.run(main(kernel))
    assert [type(o) for o in outcomes] == [KernelDiedError, KernelDiedError]
    assert all(o.exit_status == 2 for o in outcomes)


def test_shutdown_interrupts_the_running_cell_and_ends_the_process() -> None:
    kernel = KernelClient().start()
    proc = kernel._conn.proc  # type: ignore[union-attr]
    replies: list[ExecuteReply] = []
    worker = threading.Thread(
        target=lambda: replies.append(kernel.execute("import time\ntime.sleep(100)"))
    )
    worker.start()
    time.sleep(0.3)
    start = time.monotonic()
    kernel.shutdown()
    worker.join(5)
    assert time.monotonic() - start < 3
    assert proc.returncode == 0
    assert replies[0].ename == "KeyboardInterrupt"
    assert not kernel.is_alive
    with pytest.raises(RuntimeError, match="the kernel is not started: call start()"):
        kernel.execute("1")
    kernel.shutdown()  # a no-op now


def test_cwd_and_env_are_the_kernels(tmp_path: Path) -> None:
    env = {**os.environ, "PLAIT_KERNEL_TEST": "from the client"}
    with KernelClient(cwd=tmp_path, env=env) as kernel:
        reply = kernel.execute("import os\n(os.getcwd(), os.environ['PLAIT_KERNEL_TEST'])")
    assert reply.result == repr((str(tmp_path), "from the client"))


def test_a_kernel_that_cannot_start_says_so() -> None:
    with pytest.raises(KernelDiedError) as info:
        KernelClient(python="/bin/false").start()
    assert info.value.exit_status == 1
    assert "It ended while starting: /bin/false -m plait kernel" in info.value.__notes__


def test_ctrl_c_in_execute_interrupts_the_cell_and_is_raised(kernel: KernelClient) -> None:
    main = threading.main_thread().ident
    assert main is not None
    assert threading.current_thread() is threading.main_thread()
    timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        kernel.execute("import time\ntime.sleep(100)")
    start = time.monotonic()
    assert kernel.execute("'free'").result == "'free'"
    assert time.monotonic() - start < INTERRUPT_BOUND


def test_kernel_exits_when_the_client_goes_away() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "plait", "kernel"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    assert decode(proc.stdout.readline())["type"] == "kernel_ready"
    proc.stdin.close()
    assert proc.wait(10) == 0
    proc.stdout.close()


def test_a_client_dropped_without_shutdown_takes_its_kernel_with_it() -> None:
    kernel = KernelClient().start()
    proc = kernel._conn.proc  # type: ignore[union-attr]
    del kernel
    gc.collect()
    assert proc.wait(10) == 0


def test_raw_protocol_session() -> None:
    """The wire, as a non-Python client sees it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "plait", "kernel"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.stdout is not None
    assert proc.stdin is not None

    def send(kind: str, content: dict[str, Any] | None = None) -> str:
        msg = message(kind, content)
        proc.stdin.write(encode(msg))  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        return msg["id"]

    def receive() -> dict[str, Any]:
        return dict(decode(proc.stdout.readline()))  # type: ignore[union-attr]

    ready = receive()
    assert ready["type"] == "kernel_ready"
    assert ready["parent_id"] is None
    assert ready["content"]["protocol_version"] == 1
    assert ready["content"]["pid"] == proc.pid

    proc.stdin.write(b"this is not a message\n")  # ignored (logged on the kernel's stderr)
    request = send("execute_request", {"code": "print('hi')\n40 + 2"})
    messages = [receive()]
    while messages[-1]["type"] != "execute_reply":
        messages.append(receive())
    assert all(m["parent_id"] == request for m in messages)
    streams = [m["content"] for m in messages if m["type"] == "stream"]
    assert {s["name"] for s in streams} == {"stdout"}
    assert "".join(s["text"] for s in streams) == "hi\n"  # in one message or a few
    assert [m["type"] for m in messages[len(streams) :]] == ["execute_result", "execute_reply"]
    assert messages[-2]["content"] == {"execution_count": 1, "repr": "42"}
    assert messages[-1]["content"] == {"status": "ok", "execution_count": 1}

    request = send("execute_request", {"code": "input('name: ')"})
    asked = receive()
    assert asked["type"] == "input_request"
    assert asked["parent_id"] == request
    assert asked["content"] == {"prompt": "name: "}
    reply = message("input_reply", {"value": "ada"}, parent_id=asked["id"])
    proc.stdin.write(encode(reply))
    proc.stdin.flush()
    assert receive()["content"]["repr"] == "'ada'"
    assert receive()["type"] == "execute_reply"

    request = send("execute_request", {"code": "undefined_name"})
    error, reply_msg = receive(), receive()
    assert error["type"] == "error"
    assert error["content"]["ename"] == "NameError"
    assert isinstance(error["content"]["traceback"], list)
    assert reply_msg["content"]["status"] == "error"
    assert reply_msg["content"]["ename"] == "NameError"

    request = send("execute_request", {"code": 42})
    assert receive()["content"]["ename"] == "ProtocolError"
    assert receive()["content"]["status"] == "error"

    request = send("interrupt_request")
    assert receive() == {**receive_shape("interrupt_reply", request), "id": ANY}
    request = send("shutdown_request")
    assert receive() == {**receive_shape("shutdown_reply", request), "id": ANY}
    assert proc.wait(10) == 0
    proc.stdin.close()
    proc.stdout.close()


class _Any:
    def __eq__(self, other: object) -> bool:
        return True


ANY = _Any()


def receive_shape(kind: str, parent: str) -> dict[str, Any]:
    return {"parent_id": parent, "type": kind, "content": {}}


# --- command line -----------------------------------------------------------------------


def test_cli_help_and_usage_errors() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    ok = subprocess.run(
        [sys.executable, "-m", "plait", "--help"], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0
    assert "kernel" in ok.stdout
    assert "repl" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "plait"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    assert "required: COMMAND" in bad.stderr


# --- a client that dies, and the end of input ------------------------------------------

#: A regex that backtracks for hours inside the re module's C code, holding the GIL.
CATASTROPHIC_REGEX = "import re\nre.match(r'(a+)+$', 'a' * 40 + 'b')"

CLIENT = """
import sys
from plait.kernel import KernelClient

client = KernelClient().start()
print(client.pid, flush=True)
client.execute(sys.argv[1])
"""


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize(
    "cell",
    [CATASTROPHIC_REGEX, "import time\ntime.sleep(1000)", "while True:\n    pass"],
    ids=["regex-holding-the-gil", "sleep", "busy-loop"],
)
def test_a_sigkilled_client_takes_its_kernel_within_10_s(cell: str) -> None:
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, cell],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert client.stdout is not None
    kernel = int(client.stdout.readline())
    try:
        if "sleep" not in cell:  # the cell runs once the kernel burns CPU
            start = cpu_seconds(kernel)
            assert wait_until(lambda: cpu_seconds(kernel) > start + 0.3, 30)
        else:
            time.sleep(0.5)
        client.send_signal(signal.SIGKILL)
        client.wait()
        killed = time.monotonic()
        assert wait_until(lambda: not alive(kernel), 10.0), "the kernel outlived its client"
        assert time.monotonic() - killed < 10.0
    finally:
        if alive(kernel):
            os.kill(kernel, signal.SIGKILL)
        client.stdout.close()


def test_no_watchdog_outlives_its_kernel() -> None:
    with KernelClient() as kernel:
        pid = kernel.pid
        assert pid is not None
        children = children_of(pid)
        assert len(children) == 1  # the watchdog
    assert wait_until(lambda: not any(alive(child) for child in children), 5)


def children_of(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    found: list[int] = []
    for task in tasks.iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def test_requests_piped_into_the_kernel_all_run_then_it_exits() -> None:
    """``printf '...' | plait kernel``: the end of stdin is the end of requests."""
    requests = [
        message("execute_request", {"code": "import time\ntime.sleep(0.3)\nx = 20"}),
        message("execute_request", {"code": "print('hi')\nx * 2 + 2"}),
        message("execute_request", {"code": "input('name? ')"}),
        message("execute_request", {"code": "1 / 0"}),
        message("execute_request", {"code": "x"}),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "plait", "kernel"],
        input=b"".join(encode(r) for r in requests),
        capture_output=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    messages = [decode(line) for line in proc.stdout.splitlines()]
    assert messages[0]["type"] == "kernel_ready"
    replies = [m for m in messages if m["type"] == "execute_reply"]
    assert [r["parent_id"] for r in replies] == [r["id"] for r in requests]
    assert [r["content"]["status"] for r in replies] == ["ok", "ok", "error", "error", "ok"]
    assert replies[2]["content"]["ename"] == "EOFError"  # nobody can answer input()
    assert replies[3]["content"]["ename"] == "ZeroDivisionError"
    results = {
        m["parent_id"]: m["content"]["repr"] for m in messages if m["type"] == "execute_result"
    }
    assert results == {requests[1]["id"]: "42", requests[4]["id"]: "20"}
    streams = [m for m in messages if m["type"] == "stream"]
    assert "".join(m["content"]["text"] for m in streams) == "hi\n"


def test_piped_requests_through_a_shell_pipe() -> None:
    line = encode(message("execute_request", {"code": "6 * 7"})).decode()
    proc = subprocess.run(
        ["sh", "-c", f"printf '%s' '{line}' | {sys.executable} -m plait kernel"],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    kinds = [decode(line)["type"] for line in proc.stdout.splitlines()]
    assert kinds == ["kernel_ready", "execute_result", "execute_reply"]
    assert b'"repr":"42"' in proc.stdout


def test_end_of_input_with_nobody_reading_aborts_the_queue() -> None:
    """The client is gone (stdin ends and nobody reads stdout): queued cells are aborted,
    the running one interrupted, and the kernel exits promptly."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "plait", "kernel"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert decode(proc.stdout.readline())["type"] == "kernel_ready"
    for code in ("import time\ntime.sleep(100)", "time.sleep(100)"):
        proc.stdin.write(encode(message("execute_request", {"code": code})))
    proc.stdin.flush()
    time.sleep(0.3)
    proc.stdout.close()
    proc.stdin.close()
    start = time.monotonic()
    proc.wait(10)
    assert time.monotonic() - start < 5
