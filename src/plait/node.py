"""Nodes: a function, the inputs its parameters name, and the outputs it produces."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from types import MappingProxyType
from typing import Any, Final, Generic, ParamSpec, TypeVar, overload

from plait._inspect import is_async_callable, unwrap_partial
from plait._text import callable_name
from plait.batching import AsyncOneItem, Batching, OneItem, make_batching
from plait.deps import Dep, all_deps, find_deps
from plait.errors import NodeDefinitionError
from plait.options import Backoff, NodeOptions, Resources, make_options

P = ParamSpec("P")
R = TypeVar("R")

#: Marker for "this parameter has no default".
NO_DEFAULT: Final = inspect.Parameter.empty

OutputName = str | tuple[str, ...]


class Node(Generic[P, R]):
    """A function wired into a pipeline by its parameter names.

    Each parameter names an input: the output of another node or a pipeline
    input. A parameter with a default is optional: the default is used when
    nothing provides it. The node produces ``output_name``; a tuple
    ``output_name`` means the function returns a tuple of that length, one
    value per name.

    A node stays callable as the plain function::

        >>> @node(output_name="total")
        ... def add(a, b=1):
        ...     return a + b
        >>> add(2)
        3
        >>> add.inputs, add.outputs
        (('a', 'b'), ('total',))
    """

    func: Callable[P, R]
    name: str
    #: Whether :attr:`name` was chosen (``name=...``) rather than taken from the function.
    name_given: bool
    output_name: OutputName
    outputs: tuple[str, ...]
    is_async: bool
    cache: bool
    #: The node's batch form (``batch_size=...``), or None: see :mod:`plait.batching`.
    batching: Batching | None

    def __init__(
        self,
        func: Callable[P, R],
        *,
        output_name: OutputName | None = None,
        name: str | None = None,
        cache: bool = True,
        executor: str | Executor | None = None,
        max_concurrent: int | None = None,
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        backoff: Backoff = 0.1,
        max_backoff: float | None = 60.0,
        retry_after: bool = True,
        timeout: float | None = None,
        rate_limit: str | float | None = None,
        resources: Mapping[str, float] | Resources | None = None,
        batch_size: int | None = None,
        batch: Callable[..., Any] | None = None,
        max_wait: float | None = None,
    ) -> None:
        if isinstance(func, Node):
            func = func.func
        if not callable(func):
            raise NodeDefinitionError(
                f"node() needs a function or other callable, got {type(func).__name__}: {func!r}"
            )
        default_name = callable_name(func)
        self.func = func
        self.name = _check_name(name if name is not None else default_name)
        self.name_given = name is not None
        self.output_name, self.outputs = _check_output_name(
            output_name if output_name is not None else _default_output(default_name, self.name),
            self.name,
        )
        self.is_async = _node_is_async(func)
        self.cache = cache
        self.options = make_options(
            self.name,
            executor=executor,
            max_concurrent=max_concurrent,
            retries=retries,
            retry_on=retry_on,
            backoff=backoff,
            max_backoff=max_backoff,
            retry_after=retry_after,
            timeout=timeout,
            rate_limit=rate_limit,
            resources=resources,
        )
        signature = _signature(func, self.name)
        self._defaults, self.positional, self.keyword = _read_parameters(signature, self.name)
        #: Parameters that receive a per-run resource (:class:`~plait.Dep`), by name.
        self.deps: Mapping[str, Dep[Any]] = MappingProxyType(find_deps(func, signature))
        for param in self.deps:
            self._defaults.pop(param, None)
        #: Pipeline inputs the deps' functions take (they are set up before any node runs).
        self.dep_inputs, self.dep_defaults = _dep_inputs(self.deps.values())
        self.inputs: tuple[str, ...] = tuple(
            p for p in self.positional + self.keyword if p not in self.deps
        )
        self.batching = make_batching(
            self.name, func, batch=batch, batch_size=batch_size, max_wait=max_wait
        )
        self._one_item: OneItem | None = None
        #: The batch form as a node of its own (same name, outputs and controls): what
        #: one batch call runs, on lists; None for a node without a batch form.
        self.batch_node: Node[..., Any] | None = None
        if self.batching is not None:
            _check_batch_deps(self.name, self.deps)
            if not self.batching.separate:
                one = AsyncOneItem if self.batching.is_async else OneItem
                self._one_item = one(self, frozenset(self.deps))
            self.batch_node = Node(
                self.batching.func, output_name=self.output_name, name=self.name, cache=cache
            )
            self.batch_node.options = self.options
        #: Default values of the optional inputs, by parameter name (read-only).
        self.defaults: Mapping[str, Any] = MappingProxyType(self._defaults)
        #: Parameters without a default: something must provide them.
        self.required_inputs = tuple(p for p in self.inputs if p not in self._defaults)
        #: Parameters with a default, used when nothing provides them.
        self.optional_inputs = tuple(p for p in self.inputs if p in self._defaults)
        functools.update_wrapper(self, func, updated=())

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    @property
    def item_func(self) -> Callable[..., Any]:
        """What one item's call runs: the function, or for a node whose function is its
        batch form, that form on lists of one (:class:`~plait.batching.OneItem`)."""
        return self.func if self._one_item is None else self._one_item

    def call_item(self, *args: Any, **kwargs: Any) -> Any:
        """One item's call (:attr:`item_func`): what an executor in another process runs."""
        return self.item_func(*args, **kwargs)

    def describe(self) -> str:
        """``name(a, b=1) → y``: the node as error messages show it."""
        params = ", ".join(
            f"{p}={self.deps[p]!r}"
            if p in self.deps
            else f"{p}={self._defaults[p]!r}"
            if p in self._defaults
            else p
            for p in self.positional + self.keyword
        )
        single = isinstance(self.output_name, str)
        outs = self.outputs[0] if single else f"({', '.join(self.outputs)})"
        return f"{self.name}({params}) → {outs}"

    def renamed(self, name: str) -> Node[P, R]:
        """A copy of this node called ``name``; :attr:`name_given` stays as it was.

        :class:`~plait.Graph` uses it to tell apart nodes whose default names collide.
        """
        return self._copy(name=_check_name(name))

    def narrowed(self, outputs: tuple[str, ...]) -> Node[..., Any] | None:
        """A copy of this node that computes only ``outputs`` (some of its own, in its
        order), or None when its function cannot leave the others out.

        A function can when it has ``__plait_select__(outputs)``, returning a function
        of the same parameters that returns those outputs (one value for one name, a
        tuple for several): a nested pipeline's node runs only the inner nodes they
        need. A plan uses it for a node of which the run uses only some outputs.
        """
        select = getattr(self.func, "__plait_select__", None)
        if select is None:
            return None
        func = select(outputs)
        return self._copy(
            func=func,
            __wrapped__=func,
            output_name=outputs[0] if len(outputs) == 1 else outputs,
            outputs=outputs,
        )

    def _copy(self, **changes: Any) -> Node[Any, Any]:
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.__dict__.update(changes)
        if copy._one_item is not None:  # a batch-only node's single call is bound to it
            copy._one_item = type(copy._one_item)(copy, copy._one_item.deps)
        if copy.batch_node is not None and "name" in changes:
            copy.batch_node = copy.batch_node.renamed(copy.name)
        return copy

    def __repr__(self) -> str:
        return f"Node({self.describe()})"

    def __reduce__(self) -> str | tuple[Any, ...]:
        # A decorated module-level function is reachable by name as this Node:
        # pickle it by reference, as pickle does for plain functions. Not from
        # __main__ (a script, ``python -c``, stdin, a notebook): another process's
        # __main__ is not this one, so such a node travels by value (cloudpickle
        # pickles functions of __main__ by value).
        module: str | None = getattr(self, "__module__", None)
        qualname: str = getattr(self, "__qualname__", "")
        found = None if module == "__main__" else _lookup(module, qualname)
        if found is self:
            return qualname
        # A copy of such a Node (renamed, or node(decorated, ...)): its function is
        # reachable only through that Node, which rebuilding unwraps.
        func = found if isinstance(found, Node) and found.func is self.func else self.func
        batching = self.batching
        return (
            _rebuild,
            (func, self.output_name, self.name, self.cache, self.options, self.name_given)
            + (() if batching is None else (batching,)),
        )


def _rebuild(
    func: Callable[..., Any],
    output_name: OutputName,
    name: str,
    cache: bool,
    options: NodeOptions,
    name_given: bool = True,
    batching: Batching | None = None,
) -> Node[..., Any]:
    batch = None if batching is None or not batching.separate else batching.func
    size, wait = (None, None) if batching is None else (batching.size, batching.max_wait)
    rebuilt = Node(
        func,
        output_name=output_name,
        name=name,
        cache=cache,
        batch=batch,
        batch_size=size,
        max_wait=wait,
    )
    rebuilt.options = options
    rebuilt.name_given = name_given
    return rebuilt


@overload
def node(
    func: Callable[P, R],
    /,
    *,
    output_name: OutputName | None = None,
    name: str | None = None,
    cache: bool = True,
    **controls: Any,
) -> Node[P, R]: ...


@overload
def node(
    func: None = None,
    /,
    *,
    output_name: OutputName | None = None,
    name: str | None = None,
    cache: bool = True,
    **controls: Any,
) -> Callable[[Callable[P, R]], Node[P, R]]: ...


def node(
    func: Callable[P, R] | None = None,
    /,
    *,
    output_name: OutputName | None = None,
    name: str | None = None,
    cache: bool = True,
    **controls: Any,
) -> Node[P, R] | Callable[[Callable[P, R]], Node[P, R]]:
    """Turn a function (sync or ``async def``) into a pipeline :class:`Node`.

    Use it bare (``@node``: the output is named after the function), with options
    (``@node(output_name="y")``, ``@node(output_name=("q", "r"))`` for a function
    returning a 2-tuple), or as a call for functions you don't own
    (``node(math.sqrt, output_name="root")``).

    Args:
        output_name: the name (or tuple of names) other nodes use to consume the result.
        name: the node's name in errors and results; defaults to the function's name.
        cache: whether a pipeline cache may store this node's results. Caching
            (``Pipeline(cache=...)``) is not available yet; the flag is kept for it.
        **controls: how calls are made: ``executor``, ``max_concurrent``,
            ``retries``, ``retry_on``, ``backoff``, ``max_backoff``, ``retry_after``,
            ``timeout``, ``rate_limit``
            (see :class:`~plait.options.NodeOptions`)::

                @node(output_name="answer", retries=3, timeout=30, max_concurrent=8,
                      rate_limit="20/s")
                async def ask_llm(prompt): ...

            what one call needs where it runs, for engines that place work:
            ``resources={"cpus": 2, "gpus": 1}`` (``DaftEngine`` makes the node a stage of
            its own that asks Daft for them; ``"concurrency"``: instances of that stage);
            and whether it has a batch form: ``batch_size`` (the most items per batch
            call), ``batch`` (a batch function beside a single-item one), ``max_wait``
            (see :mod:`plait.batching` and docs/batch.md)::

                @node(output_name="vec", batch_size=64)
                def embed(text): return model.encode(text)   # a list in, a list out
    """
    if func is None:
        return lambda f: Node(f, output_name=output_name, name=name, cache=cache, **controls)
    return Node(func, output_name=output_name, name=name, cache=cache, **controls)


def _check_batch_deps(node_name: str, deps: Mapping[str, Dep[Any]]) -> None:
    """One batch call serves many items: it cannot take a resource set up per item."""
    per_item = [param for param, dep in deps.items() if dep.scope == "item"]
    if per_item:
        raise NodeDefinitionError(
            f"node {node_name!r} has a batch form, and one batch call serves many items, "
            f"but its dep parameter {per_item[0]!r} is set up per item (scope='item'): "
            "give that Dep the default scope='run'"
        )


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise NodeDefinitionError(f"a node name must be a non-empty string, got {name!r}")
    return name


def _default_output(func_name: str, node_name: str) -> str:
    """The output named after the function, when its name can be a parameter's."""
    if not func_name.isidentifier():
        raise NodeDefinitionError(
            f"node {node_name!r} needs output_name: its output would take the function's "
            f"name, {func_name!r}, which no parameter can consume; name it, e.g. "
            "node(fn, output_name='y')"
        )
    return func_name


def _check_output_name(output_name: object, node_name: str) -> tuple[OutputName, tuple[str, ...]]:
    if isinstance(output_name, str) and output_name:
        return output_name, (output_name,)
    if isinstance(output_name, tuple) and output_name:
        if not all(isinstance(n, str) and n for n in output_name):
            raise NodeDefinitionError(
                f"node {node_name!r}: every name in output_name must be a non-empty string, "
                f"got {output_name!r}"
            )
        if len(set(output_name)) != len(output_name):
            raise NodeDefinitionError(
                f"node {node_name!r}: output_name {output_name!r} repeats a name"
            )
        return output_name, output_name
    raise NodeDefinitionError(
        f"node {node_name!r}: output_name must be a non-empty string or a non-empty tuple "
        f"of strings, got {output_name!r}"
    )


def _node_is_async(func: Callable[..., Any]) -> bool:
    inner = unwrap_partial(func)
    if inspect.isasyncgenfunction(inner):
        raise NodeDefinitionError(
            f"{callable_name(func)!r} is an async generator function; a node must return "
            "its value. Collect the items in an async def that returns a list."
        )
    if inspect.isgeneratorfunction(inner):
        raise NodeDefinitionError(
            f"{callable_name(func)!r} is a generator function; a node must return its "
            "value. Collect the items in a def that returns a list: return list(gen(...))."
        )
    return is_async_callable(func)


def _signature(func: Callable[..., Any], node_name: str) -> inspect.Signature:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise NodeDefinitionError(
            f"cannot read the parameters of {node_name!r} ({exc}); wrap it in a def "
            "whose parameters name its inputs"
        ) from None


def _read_parameters(
    signature: inspect.Signature, node_name: str
) -> tuple[dict[str, Any], tuple[str, ...], tuple[str, ...]]:
    defaults: dict[str, Any] = {}
    positional: list[str] = []
    keyword: list[str] = []
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            star = "*" if param.kind is param.VAR_POSITIONAL else "**"
            raise NodeDefinitionError(
                f"node {node_name!r} has a {star}{param.name} parameter. Node inputs are wired "
                "by parameter name, so each input must be a named parameter; replace "
                f"{star}{param.name} with explicit parameters."
            )
        if param.default is not NO_DEFAULT:
            defaults[param.name] = param.default
        (keyword if param.kind is param.KEYWORD_ONLY else positional).append(param.name)
    return defaults, tuple(positional), tuple(keyword)


def _dep_inputs(deps: Iterable[Dep[Any]]) -> tuple[tuple[str, ...], Mapping[str, Any]]:
    """The pipeline inputs ``deps`` (and the deps they use) take, and their defaults."""
    needed = all_deps(deps)
    names = dict.fromkeys(p for dep in needed for p in dep.params)
    defaults = {name: value for dep in needed for name, value in dep.defaults.items()}
    return tuple(names), MappingProxyType(defaults)


def _lookup(module_name: str | None, qualname: str) -> object:
    module = sys.modules.get(module_name or "")
    obj: object = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj
