"""Compile a cell: top-level await, the trailing expression, its source in linecache.

A cell is split into *steps*: maximal runs of top-level statements that do not
await run as plain code (on a worker thread); runs of statements that await run
as coroutines on the event loop, and so do statements that call an asyncio
function needing the running loop in their thread (``asyncio.create_task``,
``get_running_loop`` ...) or a method of an asyncio object that is not
thread-safe (``event.set()``, ``queue.put_nowait``, ``task.cancel`` ...): see
:data:`LOOP_CALLS`. A trailing expression is
compiled in ``eval`` mode so its value becomes the cell's value.
"""

from __future__ import annotations
import __future__

import ast
import inspect
import linecache
from dataclasses import dataclass
from types import CodeType

_TOP_LEVEL_AWAIT = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT

#: Calls (by function or method name) that need the running loop in the calling
#: thread: a top-level statement making one runs on the loop, not on the worker.
LOOP_CALLS = frozenset(
    {
        "create_task",
        "ensure_future",
        "gather",
        "shield",
        "get_running_loop",
        "get_event_loop",
        "Future",
        "create_future",
    }
)
#: Methods of asyncio objects that are not thread-safe. A *simple* statement
#: (not a loop, ``with``, ``try`` ...) calling one runs on the loop; so does one
#: calling ``x.set()`` without arguments (``asyncio.Event.set``; ``ContextVar.set(v)``
#: or a blocking ``client.set(key, value)`` take arguments and stay on the worker).
#: Compound statements stay on the worker: they may loop or block for long.
UNSAFE_CALLS = frozenset(
    {
        "set_result",
        "set_exception",
        "put_nowait",
        "cancel",
        "call_soon",
        "call_later",
        "call_at",
        "run_in_executor",
    }
)


@dataclass(frozen=True)
class Step:
    """Consecutive statements run the same way: on the loop or on a worker thread."""

    on_loop: bool
    codes: tuple[CodeType, ...]
    #: The last code is the trailing expression (``eval`` mode): its value is the cell's.
    has_value: bool = False


@dataclass(frozen=True)
class CompiledCell:
    filename: str
    steps: tuple[Step, ...]
    #: The ``__future__`` compiler flags in force after this cell (they persist, as in a REPL).
    future_flags: int


def compile_cell(source: str, filename: str, future_flags: int = 0) -> CompiledCell:
    """Compile ``source`` into steps; raises SyntaxError (pointing into ``filename``)."""
    register_source(filename, source)
    tree = compile(
        source, filename, "exec", ast.PyCF_ONLY_AST | _TOP_LEVEL_AWAIT | future_flags, True
    )
    assert isinstance(tree, ast.Module)
    flags = future_flags | _future_flags(tree)
    body = list(tree.body)
    last = body[-1] if body else None
    # IPython's convention: a trailing `;` hides the value.
    trailing = last if isinstance(last, ast.Expr) and not source.rstrip().endswith(";") else None
    if trailing is not None:
        body.pop()

    steps: list[Step] = []
    for stmt in body:
        code = _compile(ast.Module(body=[stmt], type_ignores=[]), filename, "exec", flags)
        _append(steps, awaits(code) or _calls_loop(stmt), code, has_value=False)
    if trailing is not None:
        code = _compile(ast.Expression(body=trailing.value), filename, "eval", flags)
        _append(steps, awaits(code) or _calls_loop(trailing), code, has_value=True)
    return CompiledCell(filename, tuple(steps), flags)


def register_source(filename: str, source: str) -> None:
    """Make the cell's lines available to tracebacks and ``inspect`` under ``filename``."""
    # mtime None: linecache.checkcache() never evicts it.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)


def _append(steps: list[Step], on_loop: bool, code: CodeType, *, has_value: bool) -> None:
    if steps and steps[-1].on_loop == on_loop:
        steps[-1] = Step(on_loop, (*steps[-1].codes, code), has_value)
    else:
        steps.append(Step(on_loop, (code,), has_value))


def _compile(tree: ast.Module | ast.Expression, filename: str, mode: str, flags: int) -> CodeType:
    code: CodeType = compile(tree, filename, mode, _TOP_LEVEL_AWAIT | flags, True)
    return code


def awaits(code: CodeType) -> bool:
    """Whether the code awaits at top level (evaluating it then returns a coroutine)."""
    return bool(code.co_flags & inspect.CO_COROUTINE)


def _calls_loop(stmt: ast.stmt) -> bool:
    """Whether the statement must run on the loop: see LOOP_CALLS and UNSAFE_CALLS.

    Only what runs when the statement runs counts, not the body of a function
    it defines.
    """
    simple = not any(isinstance(stmt, kind) for kind in _COMPOUND)
    todo: list[ast.AST] = [stmt]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in LOOP_CALLS:
                return True
            if simple and (
                name in UNSAFE_CALLS or (name == "set" and not node.args and not node.keywords)
            ):
                return True
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            # Only what runs when the def statement runs: decorators, defaults, annotations.
            todo.extend(node.decorator_list)
            todo.extend(d for d in (*node.args.defaults, *node.args.kw_defaults) if d)
        elif isinstance(node, ast.Lambda):
            todo.extend(d for d in (*node.args.defaults, *node.args.kw_defaults) if d)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return False


_COMPOUND = (
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.If,
    ast.With,
    ast.AsyncWith,
    ast.Try,
    ast.TryStar,
    ast.Match,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
)


def _future_flags(tree: ast.Module) -> int:
    flags = 0
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
            for alias in stmt.names:
                feature = getattr(__future__, alias.name, None)
                if isinstance(feature, __future__._Feature):
                    flags |= feature.compiler_flag
    return flags
