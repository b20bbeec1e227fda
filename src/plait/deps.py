"""Per-run resources: a ``Dep`` is set up once per run, shared, and torn down at the end.

A node declares a resource by a parameter's default or its ``Annotated`` metadata::

    def make_client(base_url):            # base_url is a pipeline input
        client = httpx.Client(base_url=base_url)
        try:
            yield client                  # the value nodes receive
        finally:
            client.close()                # teardown, once the run is over (or failed)

    @node
    def fetch(path, client: httpx.Client = Dep(make_client)): ...

    @node
    def fetch2(path, client: Annotated[httpx.Client, Dep(make_client)]): ...

A :class:`DepScope` holds the deps of one run (or one map item): it sets each
dep up at most once, even when many tasks ask for it at the same moment, and
:meth:`DepScope.aclose` tears them down in reverse order. See ``docs/deps.md``.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
import threading
import typing
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
from types import MappingProxyType, TracebackType
from typing import Any, Final, Generic, Literal, TypeVar, overload

from plait.errors import DepDefinitionError, DepError, MissingInputsError, PlaitError

T = TypeVar("T")

Scope = Literal["run", "item"]
_SCOPES: Final = ("run", "item")

# How a dep function produces its value.
_SYNC: Final = "sync"  # a plain call
_ASYNC: Final = "async"  # async def: await the call
_GEN: Final = "gen"  # sync generator: next() once; resuming it is the teardown
_AGEN: Final = "agen"  # async generator: the same, awaited

# The dep functions whose Dep is being built in this thread: a function seen
# twice means the deps form a cycle (possible with string annotations).
_building = threading.local()


class Dep(Generic[T]):
    """A per-run resource: ``client: Client = Dep(make_client)`` or
    ``client: Annotated[Client, Dep(make_client)]``.

    ``func`` makes the resource: a plain function, an ``async def``, or a sync
    or async generator that yields the resource once (code after the ``yield``
    is its teardown). Its parameters are pipeline inputs, wired by name
    (:attr:`params`), or other deps (:attr:`deps`). ``scope="run"`` (default)
    sets it up once per run and shares it with every node and map item;
    ``scope="item"`` sets it up once per map item.

    Two ``Dep`` of the same function and scope are equal: they are the same
    resource wherever they are declared.

        >>> def make_pool(size=4):
        ...     return list(range(size))
        >>> Dep(make_pool) == Dep(make_pool), Dep(make_pool).params
        (True, ('size',))
    """

    func: Callable[..., Any]
    scope: Scope
    #: Parameters of ``func`` that are pipeline inputs, in order.
    params: tuple[str, ...]
    #: Default values of the optional :attr:`params`, by name (read-only).
    defaults: Mapping[str, Any]
    #: Parameters of ``func`` that are themselves deps, by name (read-only).
    deps: Mapping[str, Dep[Any]]
    #: Whether setting it up needs an event loop: ``func`` or a dep it uses is async.
    is_async: bool

    @overload
    def __init__(
        self: Dep[T], func: Callable[..., Coroutine[Any, Any, T]], *, scope: Scope = "run"
    ) -> None: ...
    @overload
    def __init__(
        self: Dep[T], func: Callable[..., AsyncIterator[T]], *, scope: Scope = "run"
    ) -> None: ...
    @overload
    def __init__(
        self: Dep[T], func: Callable[..., Iterator[T]], *, scope: Scope = "run"
    ) -> None: ...
    @overload
    def __init__(self: Dep[T], func: Callable[..., T], *, scope: Scope = "run") -> None: ...

    def __init__(self, func: Callable[..., Any], *, scope: Scope = "run") -> None:
        if not callable(func):
            raise DepDefinitionError(
                f"Dep() needs a function that makes the resource, got "
                f"{type(func).__name__}: {func!r}"
            )
        name = _callable_name(func)
        if scope not in _SCOPES:
            raise DepDefinitionError(
                f"Dep({name}, scope={scope!r}): scope must be 'run' (once per run, shared "
                "by every node and map item) or 'item' (once per map item)"
            )
        try:
            self._hash = hash((func, scope))
        except TypeError:
            raise DepDefinitionError(
                f"Dep({name}): the function must be hashable (deps are identified by it)"
            ) from None
        self.func = func
        self.scope = scope
        self._name = name
        self._kind = _kind_of(func, wrapped=False)
        # What a decorator wraps: a generator function under @contextmanager, say.
        self._inner_kind = _kind_of(func, wrapped=True)
        self._signature = _read_signature(func, f"Dep({name})")
        for param in self._signature.parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                stars = "*" if param.kind is param.VAR_POSITIONAL else "**"
                raise DepDefinitionError(
                    f"Dep({name}): {name}() takes {stars}{param.name}, but a dep function's "
                    "parameters are wired by name (to pipeline inputs or other deps). "
                    "Name each parameter it needs."
                )
        deps = _find_deps_guarded(func, self._signature)
        for param_name, sub in deps.items():
            if scope == "run" and sub.scope == "item":
                raise DepDefinitionError(
                    f"{self!r} is run-scoped but its parameter {param_name!r} is {sub!r}: a "
                    "resource shared by the whole run cannot use one made per map item. Make "
                    f"it Dep({name}, scope='item'), or make {sub._name} run-scoped."
                )
        self.deps = MappingProxyType(deps)
        self.params = tuple(p for p in self._signature.parameters if p not in deps)
        self.defaults = MappingProxyType(
            {
                p: self._signature.parameters[p].default
                for p in self.params
                if self._signature.parameters[p].default is not inspect.Parameter.empty
            }
        )
        self.is_async = (
            self._kind in (_ASYNC, _AGEN)
            or self._inner_kind in (_ASYNC, _AGEN)
            or any(d.is_async for d in deps.values())
        )
        # (name, positional-only, default) per parameter, for building the call.
        self._layout = tuple(
            (p.name, p.kind is p.POSITIONAL_ONLY, p.default)
            for p in self._signature.parameters.values()
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Dep):
            return NotImplemented
        return self.scope == other.scope and self.func == other.func

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        scope = "" if self.scope == "run" else f", scope={self.scope!r}"
        return f"Dep({self._name}{scope})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # A Signature may hold unpicklable annotations; it is rebuilt on load.
        del state["_signature"]
        state["deps"], state["defaults"] = dict(self.deps), dict(self.defaults)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.deps = MappingProxyType(state["deps"])
        self.defaults = MappingProxyType(state["defaults"])
        self._hash = hash((self.func, self.scope))  # hashes of str differ across processes
        self._signature = inspect.signature(self.func)

    def _arguments(
        self, values: Mapping[str, Any], inputs: Mapping[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """The call's arguments: dep values, then inputs, then (positional-only) defaults."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for name, positional, default in self._layout:
            if name in values:
                value = values[name]
            elif name in inputs:
                value = inputs[name]
            elif positional:
                value = default  # keeps later positional-only arguments in place
            else:
                continue  # the function's own default applies
            if positional:
                args.append(value)
            else:
                kwargs[name] = value
        return args, kwargs


def find_deps(func: Callable[..., Any]) -> dict[str, Dep[Any]]:
    """Parameters of ``func`` declared as deps, by default value or ``Annotated`` metadata.

    String annotations (``from __future__ import annotations``) are evaluated in
    the function's module. When an annotation names something that is not
    defined at run time (a ``TYPE_CHECKING`` import, say), only the
    ``Annotated`` metadata is evaluated, so ``Annotated[Client, Dep(f)]`` still
    works when ``Client`` is not importable.
    """
    return _find_deps_guarded(func, _read_signature(func, _callable_name(func)))


def all_deps(deps: Iterable[Dep[Any]]) -> list[Dep[Any]]:
    """``deps`` and every dep they need, each once, a dep after the deps it needs.

    For collecting what a set of deps reads from the pipeline inputs::

        inputs = {p for dep in all_deps(node_deps) for p in dep.params}
    """
    ordered: dict[Dep[Any], None] = {}
    stack: list[tuple[Dep[Any], bool]] = [(dep, False) for dep in reversed(list(deps))]
    while stack:
        dep, expanded = stack.pop()
        if dep in ordered:
            continue
        if expanded:
            ordered[dep] = None
            continue
        stack.append((dep, True))
        stack.extend(
            (sub, False) for sub in reversed(list(dep.deps.values())) if sub not in ordered
        )
    return list(ordered)


def _find_deps_guarded(
    func: Callable[..., Any], signature: inspect.Signature
) -> dict[str, Dep[Any]]:
    """find_deps, detecting dep functions that (through annotations) depend on themselves."""
    stack: list[Callable[..., Any]] | None = getattr(_building, "stack", None)
    if stack is None:
        stack = _building.stack = []
    for index, seen in enumerate(stack):
        if seen is func or seen == func:
            path = " -> ".join(_callable_name(f) for f in [*stack[index:], func])
            raise DepDefinitionError(
                f"the deps form a cycle: {path} (each needs the next as a Dep parameter). "
                "Break the cycle: a resource cannot depend on itself."
            )
    stack.append(func)
    try:
        return _find_deps(func, signature)
    finally:
        stack.pop()


def _find_deps(func: Callable[..., Any], signature: inspect.Signature) -> dict[str, Dep[Any]]:
    name = _callable_name(func)
    found: dict[str, Dep[Any]] = {}
    globalns: dict[str, Any] | None = None
    for param in signature.parameters.values():
        by_default = param.default if isinstance(param.default, Dep) else None
        by_hint: Dep[Any] | None = None
        if param.annotation is not inspect.Parameter.empty:
            annotation = param.annotation
            if isinstance(annotation, str):
                if globalns is None:
                    globalns = _globals_of(func)
                metadata = _string_metadata(annotation, globalns, name, param.name)
            else:
                metadata = _metadata(annotation)
            hinted = [m for m in metadata if isinstance(m, Dep)]
            if len(hinted) > 1:
                raise DepDefinitionError(
                    f"{name}(): parameter {param.name!r} has {len(hinted)} Deps in its "
                    f"Annotated metadata ({', '.join(map(repr, hinted))}); give it one"
                )
            by_hint = hinted[0] if hinted else None
        if by_default is not None and by_hint is not None and by_default != by_hint:
            raise DepDefinitionError(
                f"{name}(): parameter {param.name!r} is declared as {by_hint!r} in its "
                f"annotation but {by_default!r} as its default; declare it once"
            )
        dep = by_default if by_default is not None else by_hint
        if dep is None:
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise DepDefinitionError(
                f"{name}(): *{param.name} cannot be a Dep; use a named parameter"
            )
        found[param.name] = dep
    return found


def _metadata(annotation: object) -> tuple[Any, ...]:
    if typing.get_origin(annotation) is typing.Annotated:
        return tuple(getattr(annotation, "__metadata__", ()))
    return ()


def _string_metadata(
    annotation: str, globalns: dict[str, Any], func_name: str, param: str
) -> tuple[Any, ...]:
    """The ``Annotated`` metadata of a string annotation, even if its type is undefined."""
    try:
        return _metadata(eval(annotation, globalns))
    except PlaitError:
        raise
    except Exception:
        pass
    # Evaluate only the metadata of a top-level Annotated[...]: the type itself
    # may be a TYPE_CHECKING import or a forward reference.
    try:
        tree = ast.parse(annotation, mode="eval").body
    except SyntaxError:
        return ()
    if not (
        isinstance(tree, ast.Subscript)
        and _last_name(tree.value) == "Annotated"
        and isinstance(tree.slice, ast.Tuple)
    ):
        return ()
    metadata = []
    for element in tree.slice.elts[1:]:
        try:
            code = compile(ast.Expression(element), "<annotation>", "eval")
            metadata.append(eval(code, globalns))
        except PlaitError:
            raise
        except Exception as exc:
            if isinstance(element, ast.Call) and _last_name(element.func) == "Dep":
                raise DepDefinitionError(
                    f"{func_name}(): cannot evaluate {ast.unparse(element)} in the annotation "
                    f"of parameter {param!r} ({type(exc).__name__}: {exc}). A string "
                    "annotation is evaluated in the module, so the dep function must be a "
                    "module-level name defined by then; or give the Dep as the default."
                ) from exc
    return tuple(metadata)


def _last_name(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        return expr.attr
    return None


def _unwrap(func: Callable[..., Any], *, wrapped: bool) -> Any:
    """The function called: through partials, bound methods, callable objects' ``__call__``
    and, with ``wrapped``, decorators' ``__wrapped__``."""
    inner: Any = func
    while True:
        if isinstance(inner, functools.partial):
            inner = inner.func
        elif inspect.ismethod(inner):
            inner = inner.__func__
        elif wrapped and inspect.isfunction(inner) and hasattr(inner, "__wrapped__"):
            inner = inspect.unwrap(inner)
        else:
            break
    if not inspect.isroutine(inner) and not inspect.isclass(inner):
        call = getattr(type(inner), "__call__", None)  # noqa: B004 - a callable object
        if call is not None:
            inner = _unwrap(call, wrapped=wrapped)
    return inner


def _kind_of(func: Callable[..., Any], *, wrapped: bool) -> str:
    inner = _unwrap(func, wrapped=wrapped)
    if inspect.isasyncgenfunction(inner):
        return _AGEN
    if inspect.iscoroutinefunction(inner) or inspect.iscoroutinefunction(func):
        return _ASYNC
    if inspect.isgeneratorfunction(inner):
        return _GEN
    return _SYNC


def _globals_of(func: Callable[..., Any]) -> dict[str, Any]:
    inner = _unwrap(func, wrapped=True)
    if inspect.isclass(inner):
        inner = _unwrap(inner.__init__, wrapped=True)
    found = getattr(inner, "__globals__", None)
    return found if isinstance(found, dict) else {}


def _callable_name(func: Callable[..., Any]) -> str:
    inner = func
    while isinstance(inner, functools.partial):
        inner = inner.func
    name = getattr(inner, "__name__", None)
    return name if isinstance(name, str) else type(inner).__name__


def _read_signature(func: Callable[..., Any], where: str) -> inspect.Signature:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise DepDefinitionError(
            f"{where}: cannot read the parameters of {func!r} ({exc}); wrap it in a def "
            "whose parameters name what it needs"
        ) from None


# --------------------------------------------------------------------------- scopes

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
    deps live in this scope too (a plain run is a single item).

    Use it from one event loop (or, when every dep is sync, from plain code
    driving the coroutines inline: nothing suspends then)::

        async with DepScope({"base_url": url}) as scope:
            values = await scope.resolve([Dep(make_client)])
    """

    def __init__(self, inputs: Mapping[str, Any], parent: DepScope | None = None) -> None:
        self.inputs = inputs
        self.parent = parent
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
        wraps_generator = dep._inner_kind == _GEN
        wraps_async_generator = dep._inner_kind == _AGEN
        if dep._kind == _GEN or (wraps_generator and isinstance(result, Generator)):
            self._finish(setup, _enter_generator(dep, result), result)
        elif wraps_generator and isinstance(result, AbstractContextManager):
            self._finish(setup, _noted_call(dep, result.__enter__), result)  # @contextmanager
        elif (
            dep._kind in (_ASYNC, _AGEN)
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
        args, kwargs = dep._arguments({n: s.value for n, s in subs.items()}, self.inputs)
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
            f"{dep!r} needs {names}, {what} of {dep._name}(), but no such pipeline input was "
            f"given. Pass it as a pipeline input: inputs={{{given}}}",
            {p: (repr(dep),) for p in missing},
        )

    async def aclose(self, exc: BaseException | None = None) -> None:
        """Tear down every dep set up in this scope, in reverse order of setup.

        Setups still in flight are cancelled and waited for first. ``exc`` (the
        run's error, or ``CancelledError``) is thrown into generator deps at
        their ``yield``, as ``contextlib.contextmanager`` does; a dep cannot
        suppress it. Every teardown runs even if some fail; then the first error
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
        if isinstance(gen, Generator):
            if exc is None:
                next(gen)
            else:
                gen.throw(exc)
        elif isinstance(gen, AsyncGenerator):
            if exc is None:
                await gen.__anext__()
            else:
                await gen.athrow(exc)
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
        f"{setup.dep!r}: {setup.dep._name}() yielded more than once; a dep generator must "
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
        f"{dep!r}: {dep._name}() finished without yielding; a dep generator must yield the "
        "resource exactly once (the code after its yield is the teardown)"
    )


def _describe(error: BaseException) -> str:
    notes = [n for n in getattr(error, "__notes__", ()) if n.startswith("plait: raised while")]
    where = f" ({notes[0].removeprefix('plait: raised while ')})" if notes else ""
    return f"{type(error).__name__}: {error}{where}"
