"""Run the Python code blocks of a markdown page as a reader would, and check their output comments.

A page's blocks run in order in one namespace, with top-level ``await`` on one event
loop per page. An expression statement followed by a comment holding a Python literal,
on its own next line or at the end of its line, states its value::

    pipeline.run(inputs={"x": 1})
    # {'y': 2}
    result.value, result.ok   # (3, True)
    print(total)              # 42   (a print states what it prints)

and the block fails when the value differs. Other comments (``# -> [...]``, ``# fine``)
are prose. A block that only illustrates is marked ``<!-- skip: next -->`` before it;
``<!-- invisible-code-block: python -->`` comments hold setup a reader does not need
to see (a stand-in server, say).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser, SkipParser

_RUNNER = "__docs_runner__"
_CHECK = "__docs_check__"


@dataclass(frozen=True, slots=True)
class Expected:
    """What a block says an expression gives: its repr, or what a print writes."""

    text: str
    line: int

    def check(self, value: object, printed: bool) -> None:
        actual = str(value) if printed else repr(value)
        wanted = self.text if printed else repr(ast.literal_eval(self.text))
        if actual != wanted:
            raise AssertionError(
                f"line {self.line} says {'it prints' if printed else 'the value is'}\n"
                f"  {wanted}\nbut it is\n  {actual}"
            )


def _literal(text: str) -> str | None:
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return text


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """Comment text by line number, and whether the comment is the whole line."""
    found: dict[int, tuple[str, bool]] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            whole = not token.line[: token.start[1]].strip()
            found[token.start[0]] = (token.string[1:].strip(), whole)
    return found


def _expected(statement: ast.stmt, comments: dict[int, tuple[str, bool]]) -> str | None:
    """The literal a comment after this expression statement states, if any."""
    end = statement.end_lineno or statement.lineno
    trailing = comments.get(end)
    if trailing is not None and not trailing[1] and _literal(trailing[0]) is not None:
        return trailing[0]
    lines: list[str] = []
    line = end + 1
    while line in comments and comments[line][1]:
        lines.append(comments[line][0])
        line += 1
    for count in range(len(lines), 0, -1):  # the longest run of comment lines that is a literal
        text = _literal(" ".join(lines[:count]))
        if text is not None:
            return text
    return None


class _Checks(ast.NodeTransformer):
    """Wrap each top-level expression that states its value in a call that checks it."""

    def __init__(self, comments: dict[int, tuple[str, bool]], offset: int) -> None:
        self.comments = comments
        self.offset = offset
        self.expected: list[Expected] = []

    def visit_Module(self, module: ast.Module) -> ast.Module:
        for statement in module.body:
            if not isinstance(statement, ast.Expr):
                continue
            text = _expected(statement, self.comments)
            if text is None:
                continue
            value, printed = statement.value, False
            if (
                isinstance(value, ast.Call)
                and isinstance(value.func, ast.Name)
                and value.func.id == "print"
                and len(value.args) == 1
                and not value.keywords
            ):
                value, printed = value.args[0], True
            index = len(self.expected)
            self.expected.append(Expected(text, statement.lineno + self.offset))
            statement.value = ast.Call(
                func=ast.Name(_CHECK, ast.Load()),
                args=[ast.Constant(index), value, ast.Constant(printed)],
                keywords=[],
            )
        return ast.fix_missing_locations(module)


def run_block(source: str, namespace: dict[str, Any], filename: str, first_line: int) -> None:
    """Run one block in ``namespace``; line numbers in errors are the page's."""
    tree = ast.parse(source)
    checks = _Checks(_comments(source), first_line - 1)
    tree = checks.visit(tree)
    ast.increment_lineno(tree, first_line - 1)
    namespace[_CHECK] = lambda index, value, printed: checks.expected[index].check(value, printed)
    code = compile(tree, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if code.co_flags & inspect.CO_COROUTINE:
        runner = namespace.get(_RUNNER)
        if runner is None:
            runner = namespace[_RUNNER] = asyncio.Runner()
        runner.run(eval(code, namespace))
    else:
        exec(code, namespace)


def _evaluate(example: Example) -> None:
    # the fence's first line is the one before the code
    run_block(example.parsed, example.namespace, str(example.path), example.line + 1)


PARSER = CodeBlockParser(language="python", evaluator=_evaluate)
SYBIL = Sybil(parsers=[PARSER, SkipParser()])


def run_page(path: Path) -> None:
    """Run every block of ``path`` in order; close the page's event loop afterwards."""
    document = SYBIL.parse(path)
    document.namespace["__name__"] = "__main__"
    try:
        for example in document:
            try:
                example.evaluate()
            except BaseException as exc:
                exc.add_note(f"in the code block at {path}:{example.line}")
                raise
    finally:
        runner = document.namespace.get(_RUNNER)
        if runner is not None:
            runner.close()
