"""What a picture says about a node and an input: its controls, defaults and bound values."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from plait._text import callable_name, short_repr
from plait.graph import Graph
from plait.nested import INNER_DEFAULT, nesting
from plait.node import Node


def controls(item: Node[..., Any]) -> list[str]:
    """The node's controls that differ from a plain call, as ``name=value``.

    Read from the fields of :class:`~plait.options.NodeOptions`, so a control added
    there shows up in every picture without changing this function.
    """
    options = item.options
    shown = [
        f"{field.name}={format_value(getattr(options, field.name))}"
        for field in dataclasses.fields(options)
        if _differs(getattr(options, field.name), field)
    ]
    if not item.cache:
        shown.append("cache=False")
    if item.deps:
        shown.append(f"deps: {', '.join(item.deps)}")
    return shown


def _differs(value: Any, field: dataclasses.Field[Any]) -> bool:
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        return True
    try:
        return bool(value != default)
    except Exception:  # an exotic value whose == raises: show it
        return True


def format_value(value: Any) -> str:
    """A control's value as a picture shows it: ``30``, ``ConnectionError``, ``20/1s``."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, tuple | list):
        inner = ", ".join(format_value(v) for v in value)
        return inner if len(value) == 1 else f"({inner})"
    if _own(type(value), "__str__"):
        return str(value)  # a value that says how it reads (RateLimit: "20/1s")
    if callable(value) and not hasattr(value, "submit"):
        return callable_name(value)
    if _own(type(value), "__repr__"):
        return short_repr(value, brief=True)
    return type(value).__name__  # an Executor instance, say


def _own(kind: type, method: str) -> bool:
    """Whether ``kind`` defines ``method`` itself rather than inheriting object's."""
    return getattr(kind, method) is not getattr(object, method)


def value_label(value: Any) -> str:
    """A bound value or a default, kept short."""
    return short_repr(value, brief=True)


def input_default(graph: Graph, name: str) -> str | None:
    """The default of optional input ``name`` as a label, ``"default per node"`` when
    its consumers disagree, None when some consumer has none."""
    shown = set(_defaults(graph, name))
    if not shown or None in shown:
        return None
    return shown.pop() if len(shown) == 1 else "default per node"


def _defaults(graph: Graph, name: str) -> Iterable[str | None]:
    for consumer in graph.input_consumers.get(name, ()):
        item = graph[consumer]
        if name in item.inputs:
            if name not in item.defaults:
                yield None
                continue
            default = item.defaults[name]
            nested = nesting(item)
            if default is INNER_DEFAULT and nested is not None:  # the inner node's own
                yield input_default(nested.pipeline.graph, nested.inputs[name])
            else:
                yield value_label(default)
        if name in item.dep_inputs:
            yield value_label(item.dep_defaults[name]) if name in item.dep_defaults else None


def joined(details: Iterable[str], width: int = 40) -> list[str]:
    """Detail items joined with `` · `` into lines of about ``width`` characters."""
    lines: list[str] = []
    for item in details:
        if lines and len(lines[-1]) + 3 + len(item) <= width:
            lines[-1] += f" · {item}"
        else:
            lines.append(item)
    return lines
