"""``batch`` / ``abatch``: call one function on many items, bounded, in input order.

Both are :meth:`Pipeline.map <plait.Pipeline.map>` over a one-node pipeline made
from the function, with the controls as node options and an ``"async"`` map
executor: the same machinery, limits and error notes as any map. Pipelines are
cached per function and options (a small LRU), so a call costs one map.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any, NamedTuple, TypeVar

from plait import bridge
from plait._inspect import is_async_callable
from plait.engine.base import ItemError, Outcome
from plait.engine.local import LocalEngine
from plait.node import Node
from plait.options import Backoff
from plait.pipeline import Pipeline

T = TypeVar("T")

_CACHE_SIZE = 32
_cache: OrderedDict[Hashable, Pipeline] = OrderedDict()
_cache_lock = threading.Lock()


def batch(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    max_concurrent: int = 10,
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    backoff: Backoff = 0.1,
    max_backoff: float | None = 60.0,
    rate_limit: str | float | None = None,
    timeout: float | None = None,
    return_exceptions: bool = False,
) -> list[Any]:
    """``[fn(item) for item in items]``, at most ``max_concurrent`` calls at once.

    ``fn`` is sync or ``async def`` and takes the item as its one argument (other
    parameters need defaults). Async calls run as tasks on an event loop, sync
    ones on threads (``max_concurrent`` of them). Results come back in input
    order. Works from sync code anywhere, like :meth:`Pipeline.run
    <plait.Pipeline.run>`; from async code use :func:`abatch`.

    Args:
        max_concurrent: most calls in flight at once.
        retries: extra attempts for a call that raised one of ``retry_on``.
        retry_on: the exceptions worth retrying (default: every Exception). Name
            them for calls that must not run twice: a connection error may come
            after the server received the request, so retrying it can repeat work.
        backoff: seconds before the first retry, doubling each time (with jitter),
            or a function ``(attempt) -> seconds`` or ``(attempt, exc) -> seconds``.
            A server's ``Retry-After`` on the exception's response is honoured.
        max_backoff: the longest wait before a retry (None: no cap).
        rate_limit: most call starts in any window of the period: ``"20/s"``,
            ``"100/min"`` or a number per second (see ``rate_limit`` of :func:`~plait.node`).
        timeout: seconds one attempt may take; an async call is cancelled, a sync
            one is abandoned on its thread (it cannot be stopped).
        return_exceptions: put a failed item's exception in its place in the
            results instead of raising it (and cancelling the rest).

    The first failure is raised with notes naming the item's index and value.

        >>> answers = plait.batch(ask_llm, prompts, max_concurrent=8, retries=2)  # doctest: +SKIP
    """
    pipeline = _pipeline(
        fn, max_concurrent, _Retries(retries, retry_on, backoff, max_backoff), rate_limit, timeout
    )
    outcomes = bridge.block_on(
        pipeline.amap({"item": items}, map_over="item", on_error=_on_error(return_exceptions)),
        stacklevel=3,
    )
    return _results(outcomes)


async def abatch(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    max_concurrent: int = 10,
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    backoff: Backoff = 0.1,
    max_backoff: float | None = 60.0,
    rate_limit: str | float | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - per call, not for the whole batch
    return_exceptions: bool = False,
) -> list[Any]:
    """The async form of :func:`batch`, on the running loop: ``await plait.abatch(fn, items)``."""
    pipeline = _pipeline(
        fn, max_concurrent, _Retries(retries, retry_on, backoff, max_backoff), rate_limit, timeout
    )
    outcomes = await pipeline.amap(
        {"item": items}, map_over="item", on_error=_on_error(return_exceptions)
    )
    return _results(outcomes)


def _on_error(return_exceptions: bool) -> Any:
    return "collect" if return_exceptions else "raise"


def _results(outcomes: list[Outcome]) -> list[Any]:
    return [o.exception if isinstance(o, ItemError) else o["result"] for o in outcomes]


class _Retries(NamedTuple):
    """The retry controls of a batch call (hashable: part of the pipeline cache key; a
    tuple hashes and compares in C, a dataclass in Python on every call)."""

    retries: int
    retry_on: type[BaseException] | tuple[type[BaseException], ...]
    backoff: Backoff
    max_backoff: float | None


def _pipeline(
    fn: Callable[[Any], Any],
    max_concurrent: int,
    retries: _Retries,
    rate_limit: str | float | None,
    timeout: float | None,
) -> Pipeline:
    """The one-node pipeline mapping ``fn``, from the cache when ``fn`` is hashable."""
    key: Hashable = (fn, max_concurrent, retries, rate_limit, timeout)
    try:
        with _cache_lock:
            pipeline = _cache.get(key)
            if pipeline is not None:
                _cache.move_to_end(key)
                return pipeline
    except TypeError:  # an unhashable callable: build it each time
        return _build(fn, max_concurrent, retries, rate_limit, timeout)
    pipeline = _build(fn, max_concurrent, retries, rate_limit, timeout)
    with _cache_lock:
        _cache[key] = pipeline
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return pipeline


def _build(
    fn: Callable[[Any], Any],
    max_concurrent: int,
    retries: _Retries,
    rate_limit: str | float | None,
    timeout: float | None,
) -> Pipeline:
    is_async = _check_fn(fn)
    call: Callable[[Any], Any]
    if is_async:
        # ``fn`` itself, seen as taking ``item``: called with no frame of plait's between
        # (an ``async def`` wrapper would cost a coroutine per item, about 8% of a no-op).
        call = functools.partial(fn)
        call.__signature__ = _ITEM_ONLY  # type: ignore[attr-defined]
    else:

        def call(item: Any) -> Any:
            result = fn(item)
            if inspect.iscoroutine(result):
                result.close()
                raise TypeError(
                    f"batch(): {_name(fn)} returned a coroutine; pass the async function "
                    "itself, or functools.partial(async_fn, ...) to fix other arguments "
                    "(a lambda returning a coroutine looks like a sync function)"
                )
            return result

    step = Node(
        call,
        name=_name(fn),
        output_name="result",
        executor=None if is_async else "threaded",
        retries=retries.retries,
        retry_on=retries.retry_on,
        backoff=retries.backoff,
        max_backoff=retries.max_backoff,
        rate_limit=rate_limit,
        timeout=timeout,
    )
    engine = LocalEngine(
        map_executor="async",
        max_concurrent=max_concurrent,
        max_workers=None if is_async else max_concurrent,
    )
    return Pipeline([step], engine=engine, name=f"batch({_name(fn)})")


#: What a node made by ``batch`` takes: the item, named ``item`` in its notes.
_ITEM_ONLY = inspect.Signature([inspect.Parameter("item", inspect.Parameter.POSITIONAL_ONLY)])


def _check_fn(fn: object) -> bool:
    """True for an async ``fn``; a clear TypeError unless it takes the item as one argument."""
    if not callable(fn):
        raise TypeError(
            f"batch() needs a function to call on each item, got {type(fn).__name__}: {fn!r}"
        )
    if inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"batch(): {_name(fn)} is an async generator function; pass a function that "
            "returns one result per item"
        )
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins: nothing to check
        return is_async_callable(fn)
    try:
        signature.bind(None)
    except TypeError:
        bare = signature.replace(
            parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
            return_annotation=signature.empty,
        )
        raise TypeError(
            f"batch() calls fn with one argument, the item, but {_name(fn)}{bare} cannot "
            "be called that way; give its other parameters defaults, or fix them with "
            "functools.partial(fn, other=...)"
        ) from None
    return is_async_callable(fn)


def _name(fn: object) -> str:
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) and name.isidentifier() else "fn"
