"""Runs anywhere: scripts, threads, inside a running loop, nested, Ctrl-C."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import plait
from plait import LocalEngine, Pipeline, RunningLoopWarning, bridge, node, run_sync

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


@node(output_name="y")
def sync_double(x):
    return 2 * x


@node(output_name="z")
async def async_inc(y):
    await asyncio.sleep(0.001)
    return y + 1


PIPE = Pipeline([sync_double, async_inc])


def test_run_from_plain_sync_code() -> None:
    assert PIPE.run(inputs={"x": 1}) == {"y": 2, "z": 3}


def test_run_from_many_threads_at_once() -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: PIPE.run(inputs={"x": i})["z"], range(64)))
    assert results == [2 * i + 1 for i in range(64)]


def test_run_inside_a_running_loop_works_and_warns_once() -> None:
    async def main() -> list[dict[str, Any]]:
        with pytest.warns(RunningLoopWarning, match=r"await pipeline.arun\(\.\.\.\)") as record:
            first = PIPE.run(inputs={"x": 1})
        assert record[0].filename == __file__
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            second = PIPE.run(inputs={"x": 2})  # no second warning
        return [first, second]

    assert asyncio.run(main()) == [{"y": 2, "z": 3}, {"y": 4, "z": 5}]


def test_all_sync_pipeline_inside_a_running_loop_does_not_warn() -> None:
    async def main() -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return Pipeline([sync_double]).run(inputs={"x": 1})

    assert asyncio.run(main()) == {"y": 2}


def test_running_loop_is_not_blocked_forever_by_its_own_tasks() -> None:
    # The caller's loop is paused while run() waits, but nothing deadlocks.
    async def main() -> dict[str, Any]:
        ticker = asyncio.create_task(asyncio.sleep(0.01))
        with pytest.warns(RunningLoopWarning):
            result = PIPE.run(inputs={"x": 1})
        await ticker
        return result

    assert asyncio.run(main()) == {"y": 2, "z": 3}


@node(output_name="seen")
def read_var_sync():
    return request_id.get()


@node(output_name="seen_async")
async def read_var_async():
    return request_id.get()


CTX_PIPE = Pipeline([read_var_sync, read_var_async])


def test_contextvars_visible_from_a_script() -> None:
    token = request_id.set("script")
    try:
        assert CTX_PIPE.run() == {"seen": "script", "seen_async": "script"}
    finally:
        request_id.reset(token)


def test_contextvars_visible_inside_a_running_loop_both_forms() -> None:
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        request_id.set("in-loop")
        with pytest.warns(RunningLoopWarning):
            via_run = CTX_PIPE.run()
        return via_run, await CTX_PIPE.arun()

    expected = {"seen": "in-loop", "seen_async": "in-loop"}
    assert asyncio.run(main()) == (expected, expected)


def test_contextvars_visible_from_threads() -> None:
    def in_thread(i: int) -> dict[str, Any]:
        request_id.set(f"thread-{i}")
        return CTX_PIPE.run()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(in_thread, range(4)))
    assert [r["seen_async"] for r in results] == [f"thread-{i}" for i in range(4)]


def test_nodes_cannot_change_the_callers_context() -> None:
    @node(output_name="o")
    async def setter():
        request_id.set("changed by node")

    Pipeline([setter]).run()
    assert request_id.get() == "unset"


class LoopBoundClient:
    """Stands in for an httpx/aiohttp client: only usable on the loop that made it."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.lock = asyncio.Lock()

    async def get(self) -> str:
        if asyncio.get_running_loop() is not self.loop:
            raise RuntimeError("client used on a different event loop")
        async with self.lock:
            await asyncio.sleep(0)
        return "ok"


_client: LoopBoundClient | None = None


@node(output_name="response")
async def call_client():
    global _client
    if _client is None:
        _client = LoopBoundClient()
    return await _client.get()


def test_loop_bound_objects_survive_successive_runs_in_one_thread() -> None:
    global _client
    _client = None
    pipe = Pipeline([call_client])
    assert [pipe.run()["response"] for _ in range(3)] == ["ok"] * 3


def test_loop_bound_objects_survive_successive_runs_inside_a_running_loop() -> None:
    global _client
    _client = None
    pipe = Pipeline([call_client])

    async def main() -> list[str]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RunningLoopWarning)
            return [pipe.run()["response"] for _ in range(3)]

    assert asyncio.run(main()) == ["ok"] * 3


def test_loop_bound_objects_survive_successive_runs_in_a_worker_thread() -> None:
    def worker() -> list[str]:
        global _client
        _client = None
        pipe = Pipeline([call_client])
        return [pipe.run()["response"] for _ in range(3)]

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(worker).result() == ["ok"] * 3


def test_a_finished_threads_loop_is_closed_without_leaving_a_dummy_thread() -> None:
    # The thread's loop is closed as its locals are cleared, after threading has
    # forgotten the thread: a threading.current_thread() call there (Runner.close()
    # starting a Thread to join the default executor) registered a _DummyThread that
    # stayed in threading.enumerate() for good; Python 3.13 then printed "Exception
    # ignored in _DeleteDummyThreadOnDel.__del__" at interpreter exit.
    import gc

    loops: list[asyncio.AbstractEventLoop] = []
    # Threads that foreign code started (Daft's, in earlier tests) are dummies too.
    before = {t for t in threading.enumerate() if isinstance(t, threading._DummyThread)}

    async def work() -> int:
        loops.append(asyncio.get_running_loop())
        return await asyncio.to_thread(sum, [1, 2])  # the loop's default executor

    def worker() -> None:
        assert run_sync(work()) == 3

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    gc.collect()
    assert loops[0].is_closed()
    dummies = {t for t in threading.enumerate() if isinstance(t, threading._DummyThread)}
    assert not dummies - before


def test_the_main_threads_loop_closes_silently_at_exit() -> None:
    # Runner.close() at exit started a Thread to join the default executor, which
    # Python 3.12 refuses then ("can't create new thread at interpreter shutdown").
    script = "import asyncio, plait; print(plait.run_sync(asyncio.to_thread(sum, [1, 2])))"
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", script], capture_output=True, text=True, timeout=30
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "3\n", "")


def test_work_that_touched_the_blocked_callers_loop_leaves_no_stale_fd_there() -> None:
    # Issue 14 item 22: in Jupyter, a sync run() whose node used an aiohttp session of
    # the cell's loop failed ("attached to a different loop") after registering a
    # writer on that loop for a socket it then closed; the next socket given that fd
    # number never saw its writer fire (httpx: ConnectTimeout in the next cell).
    import socket

    data = b"x" * 20_000_000  # more than a socket buffer: sendall must wait to write
    fds: list[int] = []

    async def main() -> None:
        outer = asyncio.get_running_loop()

        @node(output_name="sent")
        async def send_on_the_callers_loop(data):
            a, b = socket.socketpair()
            a.setblocking(False)
            fds.append(a.fileno())
            try:
                await outer.sock_sendall(a, data)  # a method of the blocked loop
            finally:
                a.close()
                b.close()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RunningLoopWarning)
            with pytest.raises(RuntimeError, match="attached to a different loop"):
                Pipeline([send_on_the_callers_loop]).run(inputs={"data": data})
        assert fds[0] not in outer._selector.get_map()  # type: ignore[attr-defined]

        a, b = socket.socketpair()  # likely the same fd numbers again
        a.setblocking(False)
        with a, b:
            reader = asyncio.ensure_future(asyncio.to_thread(_read_all, b, len(data)))
            await asyncio.wait_for(outer.sock_sendall(a, data), 10)
            assert await reader == len(data)

    asyncio.run(main())


def _read_all(sock: Any, size: int) -> int:
    got = 0
    while got < size:
        got += len(sock.recv(1 << 20))
    return got


# --- nesting -----------------------------------------------------------------


INNER = Pipeline([sync_double, async_inc], name="inner")


def test_await_other_arun_inside_an_async_node() -> None:
    @node(output_name="outer")
    async def subgraph(start):
        result = await INNER.arun(inputs={"x": start})
        return result["z"] * 10

    assert Pipeline([subgraph]).run(inputs={"start": 1}) == {"outer": 30}


def test_run_inside_a_sync_node() -> None:
    @node(output_name="outer")
    def subgraph(start):
        return INNER.run(inputs={"x": start})["z"]

    @node(output_name="other")
    async def sibling():
        return 1

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunningLoopWarning)
        assert Pipeline([subgraph, sibling]).run(inputs={"start": 1}) == {"outer": 3, "other": 1}


def test_run_inside_a_node_of_a_run_made_inside_a_running_loop() -> None:
    # The outer run goes to the portal loop; the inner run() is made on the
    # portal loop itself, which must not deadlock.
    @node(output_name="outer")
    async def subgraph(start):
        return INNER.run(inputs={"x": start})["z"]

    async def main() -> dict[str, Any]:
        return Pipeline([subgraph]).run(inputs={"start": 1})

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunningLoopWarning)
        assert asyncio.run(main()) == {"outer": 3}


def test_three_levels_of_sync_run() -> None:
    @node(output_name="middle")
    async def middle(x):
        return INNER.run(inputs={"x": x})["z"]

    middle_pipe = Pipeline([middle])

    @node(output_name="top")
    async def top(x):
        return middle_pipe.run(inputs={"x": x})["middle"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunningLoopWarning)
        assert Pipeline([top]).run(inputs={"x": 1}) == {"top": 3}


def test_threaded_node_can_call_run() -> None:
    @node(output_name="outer")
    def subgraph(start):
        return INNER.run(inputs={"x": start})["z"]

    with LocalEngine(node_executor="threaded") as engine, warnings.catch_warnings():
        warnings.simplefilter("error")  # a worker thread has no loop: no warning
        assert Pipeline([subgraph], engine=engine).run(inputs={"start": 2}) == {"outer": 5}


# --- run_sync -----------------------------------------------------------------


def test_run_sync_returns_the_result() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert run_sync(answer()) == 42
    assert plait.run_sync is run_sync


def test_run_sync_timeout_cancels() -> None:
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    start = time.perf_counter()
    with pytest.raises(
        TimeoutError,
        match=r"^run_sync\(\): .*forever\(\) did not finish within "
        r"timeout=0\.05 s and was cancelled$",
    ):
        run_sync(forever(), timeout=0.05)
    assert time.perf_counter() - start < 1
    assert cancelled.is_set()


def test_run_sync_timeout_names_an_awaitable_by_type_and_keeps_the_works_own_timeout() -> None:
    class Slow:
        def __await__(self) -> Any:
            return asyncio.sleep(10).__await__()

    with pytest.raises(TimeoutError, match=r"Slow did not finish within timeout=0\.05 s"):
        run_sync(Slow(), timeout=0.05)

    async def gives_up() -> None:
        raise TimeoutError("the server did not answer")

    with pytest.raises(TimeoutError, match="^the server did not answer$"):
        run_sync(gives_up(), timeout=5)


def test_a_bare_run_sync_in_a_running_loop_warns_at_the_callers_line() -> None:
    async def main() -> None:
        line = sys._getframe().f_lineno + 2
        with pytest.warns(RunningLoopWarning) as record:
            run_sync(asyncio.sleep(0))
        assert (record[0].filename, record[0].lineno) == (__file__, line)

    asyncio.run(main())


def test_run_sync_of_something_not_awaitable_says_what_to_pass() -> None:
    with pytest.raises(TypeError) as info:
        run_sync(len)  # type: ignore[arg-type]
    assert str(info.value) == (
        "run_sync() needs an awaitable, got builtin_function_or_method; pass a coroutine "
        "(the result of calling an async function), a task or a future"
    )

    async def fetch() -> None:
        pass

    with pytest.raises(TypeError, match=r"got function; call it: run_sync\(fetch\(\.\.\.\)\)$"):
        run_sync(fetch)  # type: ignore[arg-type]


def test_a_cancelled_error_raised_by_the_work_stays_a_cancelled_error() -> None:
    async def gives_up() -> None:
        raise asyncio.CancelledError("the work's own")

    try:  # not pytest.raises: a KeyboardInterrupt here would stop the whole session
        run_sync(gives_up())
    except BaseException as exc:
        raised: BaseException | None = exc
    else:
        raised = None
    assert type(raised) is asyncio.CancelledError
    assert str(raised) == "the work's own"
    with ThreadPoolExecutor(1) as pool, pytest.raises(asyncio.CancelledError):
        pool.submit(run_sync, gives_up()).result(5)


def test_run_sync_timeout_inside_a_running_loop() -> None:
    async def main() -> None:
        with pytest.warns(RunningLoopWarning), pytest.raises(TimeoutError):
            run_sync(asyncio.sleep(10), timeout=0.05)

    asyncio.run(main())


# --- Ctrl-C, in real subprocesses -------------------------------------------------

SCRIPT = """
import asyncio, sys, time
from pathlib import Path
from plait import Pipeline, node

marker = Path(sys.argv[1])

@node(output_name="a")
async def waits():
    print("started", flush=True)
    await asyncio.sleep(3)
    marker.write_text("written after Ctrl-C")

@node(output_name="b")
def blocks_{mode}():
    if "{mode}" == "sync":
        print("started", flush=True)
        time.sleep(3)
        marker.write_text("written after Ctrl-C")

pipe = Pipeline([waits] if "{mode}" == "async" else [blocks_{mode}])
try:
    pipe.run()
except KeyboardInterrupt:
    print("interrupted", flush=True)
    time.sleep(0.5)  # give any leftover work the chance to misbehave
    raise SystemExit(130)
"""


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_ctrl_c_cancels_the_run(tmp_path: Path, mode: str) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT.format(mode=mode)))
    marker = tmp_path / "marker.txt"
    proc = subprocess.Popen(
        [sys.executable, "-X", "dev", str(script), str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    start = time.perf_counter()
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert "interrupted" in out, err
    assert proc.returncode == 130
    assert time.perf_counter() - start < 2.5  # interrupted, not run to the end
    assert not marker.exists()
    assert "Task was destroyed" not in err
    assert "never retrieved" not in err


CLEANUP_ORDER_SCRIPT = """
import asyncio, warnings
from plait import run_sync

warnings.simplefilter("ignore")

async def work():
    try:
        print("started", flush=True)
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        await asyncio.sleep(0.2)  # cleanup that itself awaits
        print("cleanup finished", flush=True)
        raise

async def in_a_running_loop():
    run_sync(work())

try:
    if "{where}" == "script":
        run_sync(work())
    else:
        asyncio.run(in_a_running_loop())
except KeyboardInterrupt:
    print("caller saw KeyboardInterrupt", flush=True)
    raise SystemExit(130)
"""


@pytest.mark.parametrize("where", ["script", "running loop"])
def test_ctrl_c_finishes_the_works_cleanup_before_the_caller_sees_it(
    tmp_path: Path, where: str
) -> None:
    script = tmp_path / "script.py"
    script.write_text(CLEANUP_ORDER_SCRIPT.format(where=where))
    proc = subprocess.Popen(
        [sys.executable, "-X", "dev", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert out.splitlines() == ["cleanup finished", "caller saw KeyboardInterrupt"], err
    assert proc.returncode == 130


IN_LOOP_SCRIPT = """
import asyncio, sys, time, warnings
from pathlib import Path
from plait import Pipeline, node

warnings.simplefilter("ignore")
marker = Path(sys.argv[1])

@node(output_name="a")
async def waits():
    print("started", flush=True)
    await asyncio.sleep(3)
    marker.write_text("written after Ctrl-C")

async def main():
    Pipeline([waits]).run()  # sync run inside asyncio.run: blocks the caller's loop

try:
    asyncio.run(main())
except KeyboardInterrupt:
    print("interrupted", flush=True)
    time.sleep(0.5)
    raise SystemExit(130)
"""


def test_one_ctrl_c_cancels_a_sync_run_made_inside_asyncio_run(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(IN_LOOP_SCRIPT)
    marker = tmp_path / "marker.txt"
    proc = subprocess.Popen(
        [sys.executable, "-X", "dev", str(script), str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert "interrupted" in out, err
    assert proc.returncode == 130
    assert not marker.exists()
    assert "Task was destroyed" not in err


def _run_in_child(queue: Any) -> None:
    # Runs in a forked child: the parent's thread loop and portal must not be reused.
    queue.put(PIPE.run(inputs={"x": 20}))

    async def in_loop() -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RunningLoopWarning)
            return PIPE.run(inputs={"x": 30})

    queue.put(asyncio.run(in_loop()))


# Forking with plait's loop threads alive is the point; Python 3.12+ warns about any fork
# of a multi-threaded process.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_gets_its_own_loops() -> None:
    import multiprocessing

    PIPE.run(inputs={"x": 1})  # the parent's thread loop exists

    async def use_portal() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RunningLoopWarning)
            PIPE.run(inputs={"x": 1})  # and so does the portal

    asyncio.run(use_portal())
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_run_in_child, args=(queue,))
    child.start()
    results = [queue.get(timeout=10), queue.get(timeout=10)]
    child.join(10)
    assert child.exitcode == 0
    assert results == [{"y": 40, "z": 41}, {"y": 60, "z": 61}]
    assert PIPE.run(inputs={"x": 2}) == {"y": 4, "z": 5}  # the parent is unaffected


# --- run_sync: any awaitable, anywhere ------------------------------------------------


class Answer:
    """An awaitable that is not a coroutine."""

    def __await__(self) -> Any:
        return asyncio.sleep(0, result=42).__await__()


def test_run_sync_takes_any_awaitable() -> None:
    assert run_sync(Answer()) == 42
    assert run_sync(asyncio.sleep(0, result=1)) == 1


def test_run_sync_rejects_what_is_not_awaitable() -> None:
    async def forgot_to_call() -> None:
        pass

    with pytest.raises(TypeError, match=r"call it: run_sync\(forgot_to_call\(\.\.\.\)\)"):
        run_sync(forgot_to_call)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs an awaitable, got int"):
        run_sync(3)  # type: ignore[arg-type]


def test_run_sync_from_a_worker_thread_sees_its_contextvars() -> None:
    async def read() -> str:
        await asyncio.sleep(0)
        return request_id.get()

    def work() -> str:
        request_id.set("worker")
        return run_sync(read())

    with ThreadPoolExecutor(2) as pool:
        assert pool.submit(work).result(10) == "worker"
    token = request_id.set("script")
    try:
        assert run_sync(read()) == "script"
    finally:
        request_id.reset(token)


def test_run_sync_timeout_runs_the_works_finally_everywhere() -> None:
    cleaned: list[str] = []

    async def forever(where: str) -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append(where)

    with pytest.raises(TimeoutError):
        run_sync(forever("script"), timeout=0.05)

    async def main() -> None:
        with pytest.warns(RunningLoopWarning), pytest.raises(TimeoutError):
            run_sync(forever("running loop"), timeout=0.05)

    asyncio.run(main())
    with ThreadPoolExecutor(1) as pool, pytest.raises(TimeoutError):
        pool.submit(lambda: run_sync(forever("thread"), timeout=0.05)).result(10)
    assert cleaned == ["script", "running loop", "thread"]


def test_run_sync_inside_a_running_loop_sees_contextvars() -> None:
    async def read() -> str:
        return request_id.get()

    async def main() -> str:
        request_id.set("in loop")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RunningLoopWarning)
            return run_sync(read())

    assert asyncio.run(main()) == "in loop"


# --- syncify ------------------------------------------------------------------------


async def fetch(url: str, *, retries: int = 0) -> str:
    """Fetch a url (pretend)."""
    await asyncio.sleep(0)
    return f"{url} {retries} {request_id.get()}"


def test_syncify_makes_a_sync_function() -> None:
    sync_fetch = plait.syncify(fetch)
    assert sync_fetch.__name__ == "fetch"
    assert sync_fetch.__doc__ == "Fetch a url (pretend)."
    assert sync_fetch.__wrapped__ is fetch  # type: ignore[attr-defined]
    token = request_id.set("ctx")
    try:
        assert sync_fetch("u", retries=2) == "u 2 ctx"
    finally:
        request_id.reset(token)

    async def main() -> str:
        with pytest.warns(RunningLoopWarning) as record:
            result = sync_fetch("v")
        assert record[0].filename == __file__
        return result

    assert asyncio.run(main()) == "v 0 unset"


def test_syncify_rejects_a_sync_function() -> None:
    def already_sync() -> None:
        pass

    with pytest.raises(TypeError, match="takes an async function .* got a sync function"):
        plait.syncify(already_sync)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got int"):
        plait.syncify(3)  # type: ignore[arg-type]


# --- delegate_to --------------------------------------------------------------------


@pytest.fixture
def loop_thread() -> Any:
    with bridge.LoopThread("test-delegate") as owner:
        yield owner


def test_delegate_to_runs_the_work_on_that_loop_and_blocks_only_this_thread(
    loop_thread: bridge.LoopThread,
) -> None:
    loop = loop_thread.loop
    beats: list[float] = []
    stop = threading.Event()

    async def heartbeat() -> None:
        while not stop.is_set():
            beats.append(time.perf_counter())
            await asyncio.sleep(0.01)

    async def make_queue() -> asyncio.Queue[str]:
        return asyncio.Queue()

    queue = asyncio.run_coroutine_threadsafe(make_queue(), loop).result(5)
    ticker = asyncio.run_coroutine_threadsafe(heartbeat(), loop)

    async def get_item() -> tuple[str, str, bool]:
        item = await queue.get()  # bound to `loop`: only usable there
        return item, request_id.get(), asyncio.get_running_loop() is loop

    def sync_cell() -> tuple[str, str, bool]:
        request_id.set("cell")
        loop.call_later(0.2, queue.put_nowait, "item")
        with bridge.delegate_to(loop):
            return run_sync(get_item())

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(sync_cell).result(10) == ("item", "cell", True)
    stop.set()
    ticker.result(5)
    assert max(b - a for a, b in itertools.pairwise(beats)) < 0.1
    assert len(beats) >= 10


def test_delegate_to_timeout_and_cancel_stop_the_work(loop_thread: bridge.LoopThread) -> None:
    loop = loop_thread.loop
    cleaned: list[str] = []

    started = threading.Event()

    async def forever(tag: str) -> None:
        try:
            started.set()
            await asyncio.sleep(10)
        finally:
            cleaned.append(tag)

    def timed_out() -> None:
        with bridge.delegate_to(loop):
            run_sync(forever("timeout"), timeout=0.05)

    def cancelled(box: list[bridge.Delegation]) -> None:
        with bridge.delegate_to(loop) as delegation:
            box.append(delegation)
            run_sync(forever("cancel"))

    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(TimeoutError):
            pool.submit(timed_out).result(5)
        started.clear()
        box: list[bridge.Delegation] = []
        job = pool.submit(cancelled, box)
        assert started.wait(5)  # the work is running on the loop: cancel that
        box[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            job.result(5)
    assert cleaned == ["timeout", "cancel"]


def test_giving_up_before_the_loop_starts_the_work_leaves_no_unawaited_coroutine(
    loop_thread: bridge.LoopThread,
) -> None:
    loop = loop_thread.loop
    busy, release = threading.Event(), threading.Event()

    def block() -> None:
        busy.set()
        release.wait(5)

    async def work() -> None:
        raise AssertionError("never started")

    loop.call_soon_threadsafe(block)
    assert busy.wait(5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(asyncio.CancelledError):  # the caller gives up at once
            bridge.loops._run_on(loop, work(), contextvars.copy_context(), lambda: True)
        release.set()
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)  # start() ran
        gc.collect()
    assert [str(w.message) for w in caught] == []


def test_delegate_to_is_for_other_threads_and_running_loops() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with (
            pytest.raises(RuntimeError, match="thread running that loop"),
            bridge.delegate_to(loop),
        ):
            pass

    asyncio.run(main())
    stopped = asyncio.new_event_loop()
    try:
        with bridge.delegate_to(stopped), pytest.raises(RuntimeError, match="is not running"):
            run_sync(asyncio.sleep(0))
    finally:
        stopped.close()
    assert run_sync(asyncio.sleep(0, result=1)) == 1  # the block is over: usual rules again


RUN_SYNC_CTRL_C = """
import asyncio, sys, time
from pathlib import Path
from plait import run_sync

marker = Path(sys.argv[1])

async def work():
    try:
        print("started", flush=True)
        await asyncio.sleep(3)
    finally:
        marker.write_text("finally ran")

try:
    run_sync(work())
except KeyboardInterrupt:
    print("interrupted", flush=True)
    raise SystemExit(130)
"""


def test_ctrl_c_cancels_run_sync_cleanly(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(RUN_SYNC_CTRL_C)
    marker = tmp_path / "marker.txt"
    proc = subprocess.Popen(
        [sys.executable, "-X", "dev", str(script), str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert "interrupted" in out, err
    assert proc.returncode == 130
    assert marker.read_text() == "finally ran"
    assert "Task was destroyed" not in err
