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

A DepScope (:mod:`plait.engine.local.dep_scope`) holds the deps of one run (or one
map item): it sets each dep up at most once, even when many tasks ask for it at the same moment, and
:meth:`DepScope.aclose` tears them down in reverse order. See ``docs/deps.md``.
"""

from __future__ import annotations

import ast
import functools
import inspect
import threading
import typing
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
)
from enum import Enum
from types import MappingProxyType
from typing import Any, Final, Generic, Literal, TypeVar, overload

from plait._text import callable_name
from plait.errors import DepDefinitionError, PlaitError

T = TypeVar("T")

Scope = Literal["run", "item", "process"]
_SCOPES: Final = ("run", "item", "process")
#: What each scope may take as a dep parameter: a resource lives no longer than those it uses.
_MAY_USE: Final = {
    "process": ("process",),
    "run": ("process", "run"),
    "item": ("process", "run", "item"),
}


class DepKind(Enum):
    """How a dep function produces its value (:attr:`Dep.kind`)."""

    SYNC = "sync"  # a plain call
    ASYNC = "async"  # async def: await the call
    GEN = "gen"  # sync generator: next() once; resuming it is the teardown
    AGEN = "agen"  # async generator: the same, awaited


_AWAITED: Final = (DepKind.ASYNC, DepKind.AGEN)

_LIFETIME: Final = {"process": "for the process", "run": "per run", "item": "per map item"}

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
    ``scope="item"`` sets it up once per map item; ``scope="process"`` once per
    process (per value of its inputs), on first use, kept across runs and maps,
    and torn down when the engines using it close or the process exits: a model
    loaded once per worker (:mod:`plait.engine.local.process_deps`). A
    process-scoped dep is sync and uses only process-scoped deps.

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
    #: The function's name, as messages show it.
    name: str
    #: How ``func`` produces the resource.
    kind: DepKind
    #: How the function under ``func``'s decorators produces it (a generator under
    #: ``@contextmanager``, say); :attr:`kind` otherwise.
    inner_kind: DepKind

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
        name = callable_name(func)
        if scope not in _SCOPES:
            raise DepDefinitionError(
                f"Dep({name}, scope={scope!r}): scope must be 'run' (once per run, shared "
                "by every node and map item), 'item' (once per map item) or 'process' "
                "(once per process, kept across runs and maps)"
            )
        try:
            self._hash = hash((func, scope))
        except TypeError:
            raise DepDefinitionError(
                f"Dep({name}): the function must be hashable (deps are identified by it)"
            ) from None
        self.func = func
        self.scope = scope
        self.name = name
        self.kind = _kind_of(func, wrapped=False)
        self.inner_kind = _kind_of(func, wrapped=True)
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
            if sub.scope not in _MAY_USE[scope]:
                raise DepDefinitionError(
                    f"{self!r} is {scope}-scoped but its parameter {param_name!r} is {sub!r}: "
                    f"a resource kept {_LIFETIME[scope]} cannot use one made "
                    f"{_LIFETIME[sub.scope]}. Make it Dep({name}, scope={sub.scope!r}), or "
                    f"give {sub.name} scope={scope!r}."
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
            self.kind in _AWAITED
            or self.inner_kind in _AWAITED
            or any(d.is_async for d in deps.values())
        )
        if scope == "process" and self.is_async:
            raise DepDefinitionError(
                f"{self!r} is async, but a process-scoped resource outlives every event loop "
                "(an async client belongs to the loop it was made on). Load it with a sync "
                "function or generator, or make it Dep(..., scope='run') to get one per run."
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

    def __cache_key__(self) -> tuple[str, str, str]:
        # As a node's default value: which resource, not its value (see docs/deps.md).
        func = self.func
        where = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', self.name)}"
        return ("plait.Dep", where, self.scope)

    def __repr__(self) -> str:
        scope = "" if self.scope == "run" else f", scope={self.scope!r}"
        return f"Dep({self.name}{scope})"

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

    def arguments(
        self, values: Mapping[str, Any], inputs: Mapping[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """``(args, kwargs)`` to call :attr:`func` with: each parameter takes the value of
        the dep it names (``values``), else the pipeline input (``inputs``), else its default.
        """
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


def find_deps(
    func: Callable[..., Any], signature: inspect.Signature | None = None
) -> dict[str, Dep[Any]]:
    """Parameters of ``func`` declared as deps, by default value or ``Annotated`` metadata.

    String annotations (``from __future__ import annotations``) are evaluated in
    the function's module. When an annotation names something that is not
    defined at run time (a ``TYPE_CHECKING`` import, say), only the
    ``Annotated`` metadata is evaluated, so ``Annotated[Client, Dep(f)]`` still
    works when ``Client`` is not importable.
    """
    if signature is None:  # the caller may have read it already
        signature = _read_signature(func, callable_name(func))
    if not any(
        isinstance(p.default, Dep) or p.annotation is not inspect.Parameter.empty
        for p in signature.parameters.values()
    ):
        return {}
    return _find_deps_guarded(func, signature)


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
            path = " -> ".join(callable_name(f) for f in [*stack[index:], func])
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
    name = callable_name(func)
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


def _kind_of(func: Callable[..., Any], *, wrapped: bool) -> DepKind:
    inner = _unwrap(func, wrapped=wrapped)
    if inspect.isasyncgenfunction(inner):
        return DepKind.AGEN
    if inspect.iscoroutinefunction(inner) or inspect.iscoroutinefunction(func):
        return DepKind.ASYNC
    if inspect.isgeneratorfunction(inner):
        return DepKind.GEN
    return DepKind.SYNC


def _globals_of(func: Callable[..., Any]) -> dict[str, Any]:
    inner = _unwrap(func, wrapped=True)
    if inspect.isclass(inner):
        inner = _unwrap(inner.__init__, wrapped=True)
    found = getattr(inner, "__globals__", None)
    return found if isinstance(found, dict) else {}


def _read_signature(func: Callable[..., Any], where: str) -> inspect.Signature:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise DepDefinitionError(
            f"{where}: cannot read the parameters of {func!r} ({exc}); wrap it in a def "
            "whose parameters name what it needs"
        ) from None
