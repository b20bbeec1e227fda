"""Setting deps up and tearing them down: the :class:`DepScope` of one run or map item.

Kept apart from :mod:`plait.deps` (which only declares and discovers deps) so that
``import plait`` does not load it: a run loads it when its plan has deps.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, Final, TypeVar

from plait.deps import Dep, DepKind
from plait.errors import DepError, MissingInputsError

T = TypeVar("T")

_PENDING: Final = 0
_DONE: Final = 1
_FAILED: Final = 2


class _Setup:
    """One dep in one scope: pending (a task runs it), done (a value) or failed."""

    __slots__ = ("dep", "error", "state", "task", "teardown", "value")

    def __init__(self, dep: Dep[Any]) -> None:
        self.dep = dep
        self.state = _PENDING
        self.value: Any = None
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        self.teardown: (
            Generator[Any, Any, Any]
            | AsyncGenerator[Any, Any]
            | AbstractContextManager[Any]
            | AbstractAsyncContextManager[Any]
            | None
        ) = None

    def fail(self, error: BaseException) -> None:
        self.state = _FAILED
        self.error = error

    def result(self) -> Any:
        if self.state == _FAILED:
            assert self.error is not None
            raise self.error
        return self.value


class DepScope:
    """The deps of one run (or one map item), set up once each and torn down at the end.

    ``inputs`` are the pipeline inputs by name: dep function parameters that are
    not deps are looked up there. With a ``parent`` this is an item scope:
    run-scoped deps are taken from (and created in) the outermost scope, so all
    items share them; item-scoped deps live here. Without a parent, item-scoped
    deps live in this scope too (a plain run is a single item). Process-scoped deps
    come from this process's instances (:func:`~plait.engine.local.process_deps.process_instance`),
    kept for ``owner`` (an engine) and torn down when it releases them, not by this scope.

    Use it from one event loop (or, when every dep is sync, from plain code
    driving the coroutines inline: nothing suspends then)::

        async with DepScope({"base_url": url}) as scope:
            values = await scope.resolve([Dep(make_client)])
    """

    def __init__(
        self,
        inputs: Mapping[str, Any],
        parent: DepScope | None = None,
        *,
        owner: object | None = None,
        making: Dep[Any] | None = None,
    ) -> None:
        self.inputs = inputs
        self.parent = parent
        #: What process-scoped deps taken here are kept for (an engine; None: the process).
        self.owner: object | None = parent.owner if parent is not None else owner
        #: The process-scoped dep this scope sets up itself (a process instance's own scope).
        self._making = making
        self._root: DepScope = parent._root if parent is not None else self
        self._setups: dict[Dep[Any], _Setup] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished: list[_Setup] = []  # set-up deps with a teardown, in completion order
        self._closed = False

    async def resolve(self, deps: Iterable[Dep[Any]]) -> dict[Dep[Any], Any]:
        """The value of each dep (and of the deps it needs), setting up those not yet set up.

        Each dep is set up once per scope, however many tasks ask at once; a
        failed setup raises the same error to every caller, without retrying.
        Deps that do not depend on each other are set up concurrently. When every
        dep involved is sync this returns without suspending.
        """
        setups: dict[Dep[Any], _Setup] = {}
        for dep in deps:
            setup = setups[dep] = self._get(dep)
            if setup.state == _FAILED:
                setup.result()  # raises
        pending = [s for s in setups.values() if s.state == _PENDING]
        if pending:
            await _wait_for(pending)
        return {dep: setup.result() for dep, setup in setups.items()}

    def _get(self, dep: Dep[Any]) -> _Setup:
        owner = self._root if dep.scope == "run" else self
        if owner._closed:
            raise DepError(f"cannot use {dep!r}: its scope is already closed (torn down)")
        setup = owner._setups.get(dep)
        if setup is None:
            setup = owner._start(dep)
        return setup

    def _start(self, dep: Dep[Any]) -> _Setup:
        """Set ``dep`` up here: synchronously when possible, else in a task."""
        setup = self._setups[dep] = _Setup(dep)
        try:
            if dep.scope == "process" and dep is not self._making:
                from plait.engine.local.process_deps import process_instance

                self._finish(setup, process_instance(dep, self.inputs, self.owner), None)
                return setup
            self._check_inputs(dep)
            subs = {name: self._get(sub) for name, sub in dep.deps.items()}
            waiting = []
            for sub in subs.values():
                if sub.state == _FAILED:
                    sub.result()  # raises
                if sub.state == _PENDING:
                    waiting.append(sub)
            if waiting:
                self._spawn(setup, self._setup_async(setup, subs, waiting), None)
                return setup
            # Calling an async function only makes its coroutine: no code runs yet.
            result = self._call(dep, subs)
            if not self._enter_now(setup, result):
                self._spawn(setup, self._enter_later(setup, result), result)
        except BaseException as exc:
            setup.fail(exc)
        return setup

    def _spawn(self, setup: _Setup, coro: Coroutine[Any, Any, None], called: object) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            if inspect.iscoroutine(called):
                called.close()
            raise DepError(
                f"{setup.dep!r} is async and needs an event loop, but its scope is being "
                "resolved without one"
            ) from None
        task = loop.create_task(coro, name=f"plait: set up {setup.dep!r}")
        setup.task = task
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, setup, called))

    def _task_done(self, setup: _Setup, called: object, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if setup.state == _PENDING:  # cancelled before it started
            setup.fail(asyncio.CancelledError())
            if inspect.iscoroutine(called):
                called.close()

    async def _setup_async(
        self, setup: _Setup, subs: Mapping[str, _Setup], waiting: list[_Setup]
    ) -> None:
        """Wait for the deps ``setup`` needs, then set it up."""
        try:
            await _wait_for(waiting)
            result = self._call(setup.dep, subs)
            if self._enter_now(setup, result):
                return
        except BaseException as exc:
            setup.fail(exc)
            if not isinstance(exc, Exception):
                raise
            return
        await self._enter_later(setup, result)

    def _enter_now(self, setup: _Setup, result: Any) -> bool:
        """Get the value from what the dep function returned, if that needs no awaiting."""
        dep = setup.dep
        wraps_generator = dep.inner_kind is DepKind.GEN
        wraps_async_generator = dep.inner_kind is DepKind.AGEN
        if dep.kind is DepKind.GEN or (wraps_generator and isinstance(result, Generator)):
            self._finish(setup, _enter_generator(dep, result), result)
        elif wraps_generator and isinstance(result, AbstractContextManager):
            self._finish(setup, _noted_call(dep, result.__enter__), result)  # @contextmanager
        elif (
            dep.kind in (DepKind.ASYNC, DepKind.AGEN)
            or inspect.isawaitable(result)
            # an async generator under a decorator (@asynccontextmanager, say)
            or (wraps_async_generator and isinstance(result, AsyncGenerator))
            or (wraps_async_generator and isinstance(result, AbstractAsyncContextManager))
        ):
            return False
        else:
            self._finish(setup, result, None)
        return True

    async def _enter_later(self, setup: _Setup, result: Any) -> None:
        """Await the value from what the dep function returned (coroutine, async generator ...)."""
        dep = setup.dep
        try:
            if isinstance(result, AsyncGenerator):
                self._finish(setup, await _enter_async_generator(dep, result), result)
            elif isinstance(result, AbstractAsyncContextManager) and not inspect.isawaitable(
                result
            ):
                self._finish(setup, await _noted(dep, result.__aenter__()), result)
            else:
                self._finish(setup, await _noted(dep, result), None)
        except BaseException as exc:
            setup.fail(exc)
            if not isinstance(exc, Exception):
                raise

    def _finish(self, setup: _Setup, value: Any, teardown: Any) -> None:
        setup.value = value
        setup.state = _DONE
        if teardown is not None:
            setup.teardown = teardown
            self._finished.append(setup)

    def _call(self, dep: Dep[Any], subs: Mapping[str, _Setup]) -> Any:
        args, kwargs = dep.arguments({n: s.value for n, s in subs.items()}, self.inputs)
        try:
            return dep.func(*args, **kwargs)
        except Exception as exc:
            exc.add_note(f"plait: raised while setting up {dep!r}")
            raise

    def _check_inputs(self, dep: Dep[Any]) -> None:
        missing = [p for p in dep.params if p not in self.inputs and p not in dep.defaults]
        if not missing:
            return
        names = ", ".join(repr(p) for p in missing)
        given = ", ".join(f"{p!r}: ..." for p in missing)
        what = "a parameter" if len(missing) == 1 else "parameters"
        raise MissingInputsError(
            f"{dep!r} needs {names}, {what} of {dep.name}(), but no such pipeline input was "
            f"given. Pass it as a pipeline input: inputs={{{given}}}",
            {p: (repr(dep),) for p in missing},
        )

    async def aclose(self, exc: BaseException | None = None) -> None:
        """Tear down every dep set up in this scope, in reverse order of setup.

        Setups still in flight are cancelled and waited for first. The code after
        a generator dep's ``yield`` runs whether the run succeeded, failed or was
        cancelled (as with pytest fixtures; the run's error is not thrown into it).
        ``exc`` (the run's error, or ``CancelledError``) is passed to the
        ``__exit__`` of context-manager deps. Every teardown runs even if some
        fail; then the first error
        is raised with a note for each other one (a ``BaseException`` such as
        ``CancelledError`` is raised in preference to an ``Exception``). A
        second call does nothing. Sync teardowns never suspend.
        """
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        if self._tasks:
            tasks = set(self._tasks)
            for task in tasks:
                task.cancel()
            pending: set[asyncio.Task[None]] = tasks
            while pending:
                try:
                    _, pending = await asyncio.wait(pending)
                except asyncio.CancelledError as cancelled:  # finish the wait, re-raise later
                    errors.append(cancelled)
        while self._finished:
            setup = self._finished.pop()
            error = await _teardown(setup, exc)
            if error is not None:
                errors.append(error)
        if errors:
            first = next((e for e in errors if not isinstance(e, Exception)), errors[0])
            for other in errors:
                if other is not first:
                    first.add_note(f"plait: also raised during teardown: {_describe(other)}")
            raise first

    async def __aenter__(self) -> DepScope:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose(exc)


async def _wait_for(setups: list[_Setup]) -> None:
    """Wait until every setup is done; raise a failure as soon as one is known."""
    pending = {s.task for s in setups if s.state == _PENDING and s.task is not None}
    while True:
        for setup in setups:
            if setup.state == _FAILED:
                setup.result()  # raises
        if not pending:
            return
        # asyncio.wait does not cancel the tasks when this caller is cancelled:
        # other callers may be waiting for the same setup.
        _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)


def _noted_call(dep: Dep[Any], func: Callable[[], T]) -> T:
    try:
        return func()
    except Exception as exc:
        exc.add_note(f"plait: raised while setting up {dep!r}")
        raise


async def _noted(dep: Dep[Any], awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except Exception as exc:
        exc.add_note(f"plait: raised while setting up {dep!r}")
        raise


def _enter_generator(dep: Dep[Any], gen: Iterator[Any]) -> Any:
    try:
        return next(gen)
    except StopIteration:
        raise DepError(_no_yield(dep)) from None
    except Exception as exc:
        exc.add_note(f"plait: raised while setting up {dep!r}")
        raise


async def _enter_async_generator(dep: Dep[Any], agen: AsyncIterator[Any]) -> Any:
    try:
        return await agen.__anext__()
    except StopAsyncIteration:
        raise DepError(_no_yield(dep)) from None
    except Exception as exc:
        exc.add_note(f"plait: raised while setting up {dep!r}")
        raise


async def _teardown(setup: _Setup, exc: BaseException | None) -> BaseException | None:
    """Resume the dep's generator past its yield; the error it raised, if any."""
    gen = setup.teardown
    setup.teardown = None
    exc_info = (None, None, None) if exc is None else (type(exc), exc, exc.__traceback__)
    try:
        # The code after a generator's yield always runs, as with pytest fixtures:
        # the run's error is not thrown in, so `yield client; client.close()` closes.
        if isinstance(gen, Generator):
            next(gen)
        elif isinstance(gen, AsyncGenerator):
            await gen.__anext__()
        elif isinstance(gen, AbstractContextManager):
            gen.__exit__(*exc_info)
            return None  # a context manager's protocol is its own: no "yielded twice" check
        else:
            assert isinstance(gen, AbstractAsyncContextManager)
            await gen.__aexit__(*exc_info)
            return None
    except (StopIteration, StopAsyncIteration):
        return None
    except BaseException as error:
        if error is exc or (
            isinstance(exc, StopIteration | StopAsyncIteration) and error.__cause__ is exc
        ):
            return None  # the run's own error, passed through (or wrapped by PEP 479)
        if not isinstance(error, asyncio.CancelledError):
            error.add_note(f"plait: raised while tearing down {setup.dep!r}")
        return error
    twice = DepError(
        f"{setup.dep!r}: {setup.dep.name}() yielded more than once; a dep generator must "
        "yield exactly once (the code after its yield is the teardown)"
    )
    try:
        if isinstance(gen, Generator):
            gen.close()
        else:
            await gen.aclose()
    except BaseException as close_error:
        twice.add_note(f"closing it raised {_describe(close_error)}")
    return twice


def _no_yield(dep: Dep[Any]) -> str:
    return (
        f"{dep!r}: {dep.name}() finished without yielding; a dep generator must yield the "
        "resource exactly once (the code after its yield is the teardown)"
    )


def _describe(error: BaseException) -> str:
    notes = [n for n in getattr(error, "__notes__", ()) if n.startswith("plait: raised while")]
    where = f" ({notes[0].removeprefix('plait: raised while ')})" if notes else ""
    return f"{type(error).__name__}: {error}{where}"
