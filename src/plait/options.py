"""Per-node controls: retries, timeout, concurrency and rate limits, executor."""

from __future__ import annotations

import inspect
import math
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from typing import Any

from plait.errors import NodeDefinitionError

#: Seconds before retry ``n``: a base that doubles, ``fn(attempt)`` or ``fn(attempt, exc)``.
Backoff = float | Callable[[int], float] | Callable[[int, BaseException], float]

#: Aliases accepted for ``@node(executor=...)``.
NODE_EXECUTOR_ALIASES = ("sequential", "threaded", "parallel")

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*\.?\d*)\s*([a-z]+)\s*$")
_PERIODS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` call starts in any window of ``period`` seconds.

    ``"20/s"`` is ``RateLimit(20, 1.0)``: up to 20 calls may start at once, and the
    21st waits until the first is a full second old. A fractional count (``"2.5/s"``,
    ``rate_limit=0.5``) spaces single starts evenly: ``RateLimit(1, 0.4)``.
    """

    count: int
    period: float

    def __str__(self) -> str:
        """``20/s``, ``100/min``, ``1000/h``, ``5/10s``: as it is written in ``rate_limit``."""
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.period, f"{self.period:g}s")
        return f"{self.count}/{unit}"


@dataclass(frozen=True, slots=True)
class Resources:
    """What one call of a node needs where it runs (``@node(resources={"gpus": 1})``).

    A placement request, read by engines that place work: ``DaftEngine`` makes the
    node a stage of its own and asks Daft for them. ``concurrency`` is the number of
    instances of that stage (each holding its CPUs and GPUs), where stages run in
    worker processes. ``LocalEngine`` runs every node where its executor says and
    reads none of it.
    """

    cpus: float | None = None
    gpus: float | None = None
    concurrency: int | None = None

    def __str__(self) -> str:
        given = (("cpus", self.cpus), ("gpus", self.gpus), ("concurrency", self.concurrency))
        return ", ".join(f"{name}={value:g}" for name, value in given if value is not None)


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """How a node's calls are made. The defaults make a plain call.

    Attributes:
        executor: where a sync node runs: ``"sequential"`` (inline), ``"threaded"``
            (the engine's thread pool) or an Executor; None follows the engine.
        max_concurrent: most calls of this node in flight at once, across one run or map.
        retries: extra attempts after a failure whose type is in ``retry_on``.
        retry_on: exception types that are retried.
        backoff: base delay in seconds before retry ``n`` (doubling each time, with
            jitter), or a function ``(attempt) -> seconds`` or ``(attempt, exc) -> seconds``
            that sees the exception being retried.
        max_backoff: the longest wait before a retry, whatever asks for more (None: no cap).
        retry_after: wait at least what the server asked for when the exception carries
            an HTTP response with ``Retry-After`` or ``retry-after-ms`` (httpx, the
            openai SDK, aiohttp, requests); see :func:`server_delay`.
        timeout: seconds one attempt may take.
        rate_limit: most call starts in any window of its period, across one run or map.
        resources: what one call needs where it runs (CPUs, GPUs), for engines that
            place work; not a control (a node with only resources is a plain call).
    """

    executor: str | Executor | None = None
    max_concurrent: int | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    backoff: Backoff = 0.1
    max_backoff: float | None = 60.0
    retry_after: bool = True
    timeout: float | None = None
    rate_limit: RateLimit | None = None
    resources: Resources | None = None

    @property
    def controlled(self) -> bool:
        """True when calls need more than a plain call (a task, a slot, a retry loop)."""
        if self.resources is not None:
            return replace(self, resources=None) != _PLAIN
        return self != _PLAIN

    def delay(self, attempt: int, exc: BaseException, jitter: float) -> float:
        """Seconds to wait before retry ``attempt`` (1-based) after ``exc``; ``jitter``
        in [0, 1). At least the server's ``Retry-After`` (with ``retry_after``), at most
        ``max_backoff``."""
        backoff = self.backoff
        if not callable(backoff):
            wait = float(backoff * 2 ** (attempt - 1) * (0.5 + jitter))
        elif _takes_error(backoff):
            wait = float(backoff(attempt, exc))  # type: ignore[call-arg]
        else:
            wait = float(backoff(attempt))  # type: ignore[call-arg]
        if self.retry_after:
            asked = server_delay(exc)
            if asked is not None:
                wait = max(wait, asked)
        wait = max(0.0, wait)
        return wait if self.max_backoff is None else min(wait, self.max_backoff)


def server_delay(exc: BaseException) -> float | None:
    """Seconds an HTTP error's response asks to wait: ``retry-after-ms``, or
    ``Retry-After`` in seconds or as an HTTP date; None when it asks nothing.

    Finds the headers on ``exc.response.headers`` (httpx ``HTTPStatusError``, the
    openai SDK's ``APIStatusError``/``RateLimitError``, requests) or ``exc.headers``
    (aiohttp ``ClientResponseError``).
    """
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or getattr(exc, "headers", None)
    if headers is None or not hasattr(headers, "get"):
        return None
    millis = _header(headers, "retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    text = _header(headers, "retry-after")
    if text is None:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _header(headers: Any, name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict is case-sensitive
        value = headers.get(name.title())
    return None if value is None else str(value).strip()


def _takes_error(backoff: Callable[..., float]) -> bool:
    """True for a backoff function of two parameters ``(attempt, exc)``."""
    try:
        inspect.signature(backoff).bind(1, None)
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): called with the attempt only
        return False
    try:
        inspect.signature(backoff).bind(1)
    except TypeError:
        return True
    return False


_PLAIN = NodeOptions()


def make_options(node_name: str, **given: Any) -> NodeOptions:
    """Validate ``@node(...)`` control arguments; errors name the node."""
    return NodeOptions(
        executor=_check_executor(node_name, given["executor"]),
        max_concurrent=_check_max_concurrent(node_name, given["max_concurrent"]),
        retries=_check_retries(node_name, given["retries"]),
        retry_on=_check_retry_on(node_name, given["retry_on"]),
        backoff=_check_backoff(node_name, given["backoff"]),
        max_backoff=_check_max_backoff(node_name, given.get("max_backoff", 60.0)),
        retry_after=_check_flag(node_name, "retry_after", given.get("retry_after", True)),
        timeout=_check_timeout(node_name, given["timeout"]),
        rate_limit=parse_rate(node_name, given["rate_limit"]),
        resources=_check_resources(node_name, given.get("resources")),
    )


def _check_resources(node_name: str, resources: object) -> Resources | None:
    """``{"cpus": 2, "gpus": 1}`` (or a :class:`Resources`) checked; None for None."""
    if resources is None or isinstance(resources, Resources):
        return resources
    known = ("cpus", "gpus", "concurrency")
    if not isinstance(resources, Mapping) or not set(resources) <= set(known):
        raise NodeDefinitionError(
            f"node {node_name!r}: resources must be a dict with keys among "
            f"{', '.join(repr(k) for k in known)}, such as {{'gpus': 1}}; got {resources!r}"
        )
    for key, value in resources.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise NodeDefinitionError(
                f"node {node_name!r}: resources[{key!r}] must be a number > 0, got {value!r}"
            )
    cpus, gpus, concurrency = (resources.get(key) for key in known)
    if concurrency is not None and not float(concurrency).is_integer():
        raise NodeDefinitionError(
            f"node {node_name!r}: resources['concurrency'] is a number of stage instances, "
            f"a whole number; got {concurrency!r}"
        )
    return Resources(
        None if cpus is None else float(cpus),
        None if gpus is None else float(gpus),
        None if concurrency is None else int(concurrency),
    )


def parse_rate(node_name: str, rate: object) -> RateLimit | None:
    """``"20/s"``, ``"100/min"``, ``"5/10s"``, ``"1000/h"`` or calls per second -> a
    :class:`RateLimit` (a number ``r`` means ``"r/s"``)."""
    if rate is None:
        return None
    if isinstance(rate, (int, float)) and _is_number(rate) and rate > 0:
        return _rate_limit(float(rate), 1.0)
    limit = _parse_rate_text(rate) if isinstance(rate, str) else None
    if limit is None:
        raise NodeDefinitionError(
            f"node {node_name!r}: rate_limit must look like '20/s', '100/min', '5/10s' or "
            f"'1000/h', or be calls per second > 0; got {rate!r}"
        )
    return limit


def _parse_rate_text(rate: str) -> RateLimit | None:
    """The limit ``"count/[multiple]unit"`` states, or None when it does not parse."""
    match = _RATE.match(rate.lower())
    if not match:
        return None
    count, multiple, unit = match.groups()
    period = _PERIODS.get(unit.rstrip("s") if unit not in _PERIODS else unit)
    if period is None or float(count) <= 0 or (multiple and float(multiple) <= 0):
        return None
    return _rate_limit(float(count), period * (float(multiple) if multiple else 1.0))


def _rate_limit(count: float, period: float) -> RateLimit:
    """``count`` starts per ``period``; a fractional count as evenly spaced single starts."""
    if count.is_integer():
        return RateLimit(int(count), period)
    return RateLimit(1, period / count)


def _check_executor(node_name: str, executor: str | Executor | None) -> str | Executor | None:
    if executor is None or isinstance(executor, Executor) or executor in NODE_EXECUTOR_ALIASES:
        return executor
    raise NodeDefinitionError(
        f"node {node_name!r}: executor must be one of "
        f"{', '.join(repr(a) for a in NODE_EXECUTOR_ALIASES)} or a "
        f"concurrent.futures.Executor, got {executor!r}"
    )


def _check_max_concurrent(node_name: str, max_concurrent: int | None) -> int | None:
    if max_concurrent is not None:
        _positive_int(node_name, "max_concurrent", max_concurrent)
    return max_concurrent


def _check_retries(node_name: str, retries: Any) -> int:
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise NodeDefinitionError(
            f"node {node_name!r}: retries must be an int >= 0, got {retries!r}"
        )
    return retries


def _check_retry_on(node_name: str, given: Any) -> tuple[type[BaseException], ...]:
    retry_on = given if isinstance(given, tuple) else (given,)
    if not retry_on or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
    ):
        raise NodeDefinitionError(
            f"node {node_name!r}: retry_on must be an exception class or a tuple of them, "
            f"got {given!r}"
        )
    return retry_on


def _check_backoff(node_name: str, backoff: Backoff) -> Backoff:
    if not callable(backoff) and not (_is_number(backoff) and backoff >= 0):
        raise NodeDefinitionError(
            f"node {node_name!r}: backoff must be seconds >= 0 or a function "
            f"(attempt) -> seconds or (attempt, exc) -> seconds, got {backoff!r}"
        )
    return backoff


def _check_max_backoff(node_name: str, max_backoff: Any) -> float | None:
    if max_backoff is None:
        return None
    if not (_is_number(max_backoff) and max_backoff >= 0):
        raise NodeDefinitionError(
            f"node {node_name!r}: max_backoff must be seconds >= 0 or None, got {max_backoff!r}"
        )
    return float(max_backoff)


def _check_flag(node_name: str, option: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise NodeDefinitionError(
            f"node {node_name!r}: {option} must be True or False, got {value!r}"
        )
    return value


def _check_timeout(node_name: str, timeout: Any) -> float | None:
    if timeout is None:
        return None
    if not (_is_number(timeout) and timeout > 0):
        raise NodeDefinitionError(
            f"node {node_name!r}: timeout must be seconds > 0, got {timeout!r}"
        )
    return float(timeout)


def _positive_int(node_name: str, option: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise NodeDefinitionError(
            f"node {node_name!r}: {option} must be an int >= 1, got {value!r}"
        )


def _is_number(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
