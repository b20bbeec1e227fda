"""AsyncSession: run cells of Python code, with top-level await, in one namespace.

Each cell is compiled into steps (see :mod:`plait.session.compile`): statements
that do not await run on a worker thread, so blocking code never freezes the
event loop; statements that await run as a task on the loop. Both run in the
session's one persistent :class:`contextvars.Context`, so contextvars set in one
cell are visible in the next.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import contextvars
import ctypes
import inspect
import itertools
import os
import threading
import traceback
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from plait import bridge
from plait.session import capture
from plait.session.compile import Step, awaits, compile_cell

T = TypeVar("T")
InputHandler = Callable[[str], "str | Awaitable[str]"]
RunBlocking = Callable[[Callable[[], Any]], Awaitable[Any]]

_session_numbers = itertools.count(1)
#: How often a thread blocked on the loop wakes up so that an interrupt can reach it.
_POLL_SECONDS = 0.05
_CELL_PREFIX = "<cell-"


@dataclass(frozen=True)
class CellResult:
    """What one cell did: its value, its output and, if it failed, why."""

    execution_count: int
    value: Any
    stdout: str
    stderr: str
    error: BaseException | None
    #: The formatted traceback, starting at the cell's own frames (None if ok).
    traceback: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


class AsyncSession:
    """Run cells of code with top-level ``await`` and a persistent namespace.

    ``input`` answers ``input()`` calls made by cells (given the prompt; sync or
    async). ``run_blocking`` runs a cell's non-awaiting statements off the loop
    (default: one dedicated worker thread); it receives a no-argument callable.

    >>> session = AsyncSession()
    >>> await session.execute("import asyncio; x = await asyncio.sleep(0, 42)")
    >>> await session.execute("x + 1")
    43
    """

    def __init__(
        self,
        *,
        namespace: dict[str, Any] | None = None,
        input: InputHandler | None = None,
        run_blocking: RunBlocking | None = None,
    ) -> None:
        self.namespace: dict[str, Any] = {} if namespace is None else namespace
        self.namespace.setdefault("__name__", "__main__")
        self.namespace.setdefault("__builtins__", builtins)
        self.execution_count = 0
        self._input = input
        self._run_blocking = run_blocking
        self._number = next(_session_numbers)
        self._context = contextvars.copy_context()
        self._future_flags = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._cell_lock = asyncio.Lock()
        self._running: _CellRun | None = None
        self._tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._closing = False

    async def run_cell(
        self,
        code: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (it also interrupts worker threads)
        on_stream: Callable[[str, str], None] | None = None,
    ) -> CellResult:
        """Run one cell and report what happened; errors in the cell are in the result.

        ``on_stream(name, text)`` ("stdout" or "stderr") receives the cell's
        output as it is written, on the loop's thread. ``timeout`` (seconds)
        stops the cell like :meth:`interrupt` and reports ``TimeoutError``.
        Cells run one at a time, in call order.
        """
        loop = self._bind_loop()
        async with self._cell_lock:
            if self._closing:
                raise RuntimeError("this AsyncSession is closed; create a new one")
            capture.ensure_installed()
            self.execution_count += 1
            count = self.execution_count
            cell_io = capture.CellIO(count, loop, on_stream, self._read_input, self._tasks)
            run = _CellRun(loop)
            self._running = run
            timer = None if timeout is None else loop.call_later(timeout, run.stop, "timeout")
            driver = loop.create_task(self._run(code, count, cell_io, run, timeout))
            try:
                return await asyncio.shield(driver)
            except asyncio.CancelledError:
                # The caller was cancelled: stop the cell and wait until it has
                # really stopped, so the next cell never overlaps it.
                run.stop("interrupt")
                while not driver.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait([driver])
                raise
            finally:
                if timer is not None:
                    timer.cancel()
                self._running = None

    async def execute(self, code: str, *, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Run one cell and return its value; raise the cell's exception if it failed.

        The cell's output goes to the real stdout/stderr as it is written.
        """
        result = await self.run_cell(code, timeout=timeout, on_stream=capture.write_real)
        if result.error is not None:
            raise result.error
        return result.value

    def interrupt(self) -> None:
        """Stop the running cell, if any; safe to call from any thread.

        An awaiting statement is cancelled; a statement on the worker thread
        gets a ``KeyboardInterrupt`` at its next bytecode (a thread blocked
        inside one call, such as ``time.sleep(100)``, sees it when that returns).
        """
        run = self._running
        if run is not None:
            run.stop("interrupt")

    async def aclose(self) -> None:
        """Stop the running cell, cancel the tasks cells started, free the worker thread."""
        if self._closing:
            return
        self._closing = True  # cells still queued behind the running one will not start
        self.interrupt()
        async with self._cell_lock:
            pass  # the running cell has stopped
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for task in tasks:  # retrieved, so asyncio does not log them as never retrieved
            if not task.cancelled():
                task.exception()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        if self._loop is not None:
            _untrack_tasks(self._loop)
            capture.release()

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- running a cell -------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            if self._closing:
                raise RuntimeError("this AsyncSession is closed; create a new one")
            self._loop, self._loop_thread = loop, threading.get_ident()
            capture.acquire()
            _track_tasks(loop)
        elif self._loop is not loop:
            raise RuntimeError(
                "this AsyncSession runs on the event loop of its first cell; "
                "use it from that loop, or create one session per loop"
            )
        return loop

    def _filename(self, count: int) -> str:
        if self._number == 1:
            return f"{_CELL_PREFIX}{count}>"
        return f"{_CELL_PREFIX}{count}@{self._number}>"

    async def _run(
        self,
        code: str,
        count: int,
        cell_io: capture.CellIO,
        run: _CellRun,
        limit: float | None,
    ) -> CellResult:
        self._context.run(capture.current_cell.set, cell_io)
        value: Any = None
        error: BaseException | None = None
        try:
            cell = compile_cell(code, self._filename(count), self._future_flags)
        except Exception as exc:  # SyntaxError mostly; also ValueError (null bytes) ...
            error = exc
        else:
            self._future_flags = cell.future_flags
            for step in cell.steps:
                if run.stop_reason is not None:
                    error = KeyboardInterrupt("the cell was interrupted")
                    break
                if step.on_loop:
                    outcome = await self._loop_step(step, run)
                else:
                    outcome = await self._thread_step(step, run)
                value, error = outcome
                if error is not None:
                    break
        if error is not None:
            value = None
            error = _stop_error(error, run.stop_reason, limit)
        elif value is not None:
            self.namespace["_"] = value
        stdout, stderr = cell_io.close()
        formatted = None if error is None else _format(error)
        return CellResult(count, value, stdout, stderr, error, formatted)

    async def _loop_step(self, step: Step, run: _CellRun) -> _Outcome:
        assert self._loop is not None
        task = self._loop.create_task(self._on_loop(step), context=self._context)
        with run.lock:
            run.task = task
            if run.stop_reason is not None:
                task.cancel()
        try:
            # Not `await task`: the step must finish before the next one starts,
            # and run_cell handles its own cancellation.
            await asyncio.wait([task])
        finally:
            with run.lock:
                run.task = None
        return task.result()

    async def _on_loop(self, step: Step) -> _Outcome:
        value = None
        try:
            for code in step.codes:
                value = eval(code, self.namespace)
                if awaits(code):
                    value = await value
        except BaseException as exc:  # the cell's errors, its cancellation included
            return None, exc
        return (value if step.has_value else None), None

    async def _thread_step(self, step: Step, run: _CellRun) -> _Outcome:
        assert self._loop is not None
        loop, context = self._loop, self._context

        def call() -> _Outcome:
            thread = threading.get_ident()
            try:
                if thread == self._loop_thread:  # a run_blocking that runs it inline
                    return context.run(self._exec_step, step), None
                with run.lock:
                    if run.stop_reason is not None:
                        return None, KeyboardInterrupt("the cell was interrupted")
                    run.worker_thread = thread
                try:
                    with bridge.delegate_to(loop):
                        return context.run(self._exec_step, step), None
                finally:
                    run.disarm()
            except BaseException as exc:
                run.disarm()  # in case the interrupt landed before the finally's
                return None, exc

        run_blocking = self._run_blocking or self._default_run_blocking
        try:
            outcome: _Outcome = await run_blocking(call)
        except BaseException as exc:  # a failing custom run_blocking
            outcome = None, exc
        with run.lock:  # whatever happened in there, the thread is no target any more
            run.worker_thread = None
        return outcome

    def _exec_step(self, step: Step) -> Any:
        value = None
        for code in step.codes:
            value = eval(code, self.namespace)  # exec-mode code evaluates to None
        return value if step.has_value else None

    def _default_run_blocking(self, fn: Callable[[], T]) -> Awaitable[T]:
        assert self._loop is not None
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"plait-session-{self._number}"
            )
        return self._loop.run_in_executor(self._executor, fn)

    # --- input() ---------------------------------------------------------------

    def _read_input(self, prompt: str) -> str:
        """Answer ``input(prompt)`` called by a cell, through the host's handler."""
        if self._input is None:
            raise EOFError(
                "input() is not available: this AsyncSession has no input handler. "
                "Create it with AsyncSession(input=handler), where handler(prompt) "
                "returns the line (sync or async)"
            )
        loop = self._loop
        on_loop = threading.get_ident() == self._loop_thread
        cell = capture.current_cell.get()
        if cell is not None:  # deliver the cell's output first: the prompt follows it
            if on_loop:
                cell.flush()
            elif loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    _wait_on_loop(loop, _call(cell.flush))
        # The handler is the host's code: it runs in the context of the run_cell
        # caller, so its prints (or its own input()) are not routed into the cell.
        host = contextvars.Context() if cell is None else cell.host_context()
        answer = host.run(self._input, prompt)
        if inspect.isawaitable(answer):
            if on_loop or loop is None:
                if inspect.iscoroutine(answer):
                    answer.close()
                raise RuntimeError(
                    "input() with an async handler was called on the event loop, from a "
                    "statement that also awaits, where it cannot wait; call input() in a "
                    "statement of its own (those run on the worker thread) or give the "
                    "session a sync input handler"
                )
            answer = _wait_on_loop(loop, _await(answer), host)
        if not isinstance(answer, str):
            raise TypeError(f"the input handler returned {type(answer).__name__}, not str")
        return answer


_Outcome = tuple[Any, BaseException | None]


class _CellRun:
    """The stoppable state of the running cell, shared with interrupt() callers."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.RLock()  # re-entrant: interrupt() may come from a signal handler
        self.stop_reason: str | None = None
        self.worker_thread: int | None = None
        self.armed = False  # a KeyboardInterrupt was sent to worker_thread
        self.task: asyncio.Task[Any] | None = None

    def stop(self, reason: str) -> None:
        with self.lock:
            if self.stop_reason is None:
                self.stop_reason = reason
            if self.worker_thread is not None:
                self.armed = True
                _raise_in_thread(self.worker_thread, KeyboardInterrupt)
            elif self.task is not None:
                with contextlib.suppress(RuntimeError):  # loop closed
                    self.loop.call_soon_threadsafe(self.task.cancel)

    def disarm(self) -> None:
        """Called by the worker leaving the cell: no interrupt reaches it after this returns.

        A KeyboardInterrupt sent but not delivered yet is let in here, where it
        is harmless. (Not dropped with ``PyThreadState_SetAsyncExc(id, NULL)``:
        on CPython 3.11 that leaves the interpreter's "async exception pending"
        flag set, which slows every thread and can hang one under a profiler.)
        """
        while True:
            try:
                with self.lock:
                    self.worker_thread = None
                    armed, self.armed = self.armed, False
                if armed:
                    # An async exception is raised at the next check of the eval
                    # loop, which a backward jump makes: the first iteration.
                    for _ in range(1000):
                        pass
                return
            except KeyboardInterrupt:
                continue  # delivered just now, inside this method: already handled


def _raise_in_thread(thread: int, exc_type: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(exc_type))


def _stop_error(error: BaseException, reason: str | None, timeout: float | None) -> BaseException:
    """Report a cell stopped by interrupt() or its timeout as such, keeping where it was."""
    if reason is None or not isinstance(error, KeyboardInterrupt | asyncio.CancelledError):
        return error
    replacement: BaseException
    if reason == "timeout":
        replacement = TimeoutError(f"the cell did not finish within its timeout of {timeout:g} s")
    else:
        replacement = KeyboardInterrupt("the cell was interrupted")
    replacement.__suppress_context__ = True
    return replacement.with_traceback(error.__traceback__)


def _format(error: BaseException) -> str:
    """The traceback as Python prints it, without plait's frames (the exception is untouched)."""
    formatted = traceback.TracebackException.from_exception(error)
    seen: set[int] = set()
    todo = [formatted]
    while todo:
        exc = todo.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        exc.stack = traceback.StackSummary.from_list(_user_frames(exc.stack))
        todo.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)
        todo.extend(exc.exceptions or ())
    return "".join(formatted.format())


_PLAIT_DIRECTORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
#: Library frames that plait's machinery calls (re-raising a result, running a task).
_MACHINERY = tuple(
    os.path.dirname(module.__file__ or "") + os.sep for module in (asyncio, concurrent.futures)
)


def _user_frames(frames: traceback.StackSummary) -> list[traceback.FrameSummary]:
    """The frames from the first cell frame on, minus plait's and those plait called."""
    cells = [i for i, frame in enumerate(frames) if frame.filename.startswith(_CELL_PREFIX)]
    kept: list[traceback.FrameSummary] = []
    in_machinery = False
    for frame in frames[cells[0] if cells else 0 :]:
        if frame.filename.startswith(_PLAIT_DIRECTORY):
            in_machinery = True
        elif not (in_machinery and frame.filename.startswith(_MACHINERY)):
            in_machinery = False
            kept.append(frame)
    return kept


def _wait_on_loop(
    loop: asyncio.AbstractEventLoop,
    coro: Awaitable[T],
    context: contextvars.Context | None = None,
) -> T:
    """Run ``coro`` on ``loop`` from another thread, in a copy of ``context``; interruptible."""
    submit = asyncio.run_coroutine_threadsafe  # its task copies the context current here
    if context is None:
        future = submit(_await(coro), loop)
    else:
        future = context.run(submit, _await(coro), loop)
    try:
        while True:
            with contextlib.suppress(concurrent.futures.TimeoutError):
                return future.result(timeout=_POLL_SECONDS)
    except BaseException:
        future.cancel()
        raise


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _call(fn: Callable[[], T]) -> T:
    return fn()


# --- tracking the tasks cells start (so that aclose can cancel them) -------------------

_trackers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _TaskTracker] = (
    weakref.WeakKeyDictionary()
)
_trackers_lock = threading.Lock()


class _TaskTracker:
    """A task factory that records each task created in a cell's context with its session."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.users = 0

    def __call__(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[Any]:
        if self.previous is None:
            task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context)
        elif context is None:
            task = self.previous(loop, coro)
        else:
            task = self.previous(loop, coro, context=context)
        cell = capture.current_cell.get() if context is None else context.get(capture.current_cell)
        if cell is not None and cell.tasks is not None:
            cell.tasks.add(task)
        return task


def _track_tasks(loop: asyncio.AbstractEventLoop) -> None:
    with _trackers_lock:
        tracker = _trackers.get(loop)
        current: object = loop.get_task_factory()
        if tracker is None or current is not tracker:
            tracker = _TaskTracker(current)
            _trackers[loop] = tracker
            loop.set_task_factory(tracker)
        tracker.users += 1


def _untrack_tasks(loop: asyncio.AbstractEventLoop) -> None:
    with _trackers_lock:
        tracker = _trackers.get(loop)
        if tracker is None:
            return
        tracker.users -= 1
        if tracker.users <= 0:
            del _trackers[loop]
            current: object = loop.get_task_factory()
            if current is tracker:
                loop.set_task_factory(tracker.previous)
