"""Splitting a cell into steps: which statements run on the loop, the trailing value."""

from __future__ import annotations

import linecache

import pytest

from plait.session.compile import compile_cell


def plan(source: str) -> list[tuple[bool, int, bool]]:
    """(on_loop, number of statements, has_value) for each step of the cell."""
    cell = compile_cell(source, "<cell-test>")
    return [(step.on_loop, len(step.codes), step.has_value) for step in cell.steps]


def test_runs_of_blocking_and_awaiting_statements_become_steps() -> None:
    source = "import time\nx = 1\nawait a()\ny = await b()\ntime.sleep(1)\nx + y"
    assert plan(source) == [(False, 2, False), (True, 2, False), (False, 2, True)]


def test_an_awaiting_trailing_expression_joins_the_loop_step() -> None:
    assert plan("x = 1\nawait a()\nawait b()") == [(False, 1, False), (True, 2, True)]


def test_a_trailing_semicolon_hides_the_value_and_statements_have_none() -> None:
    assert plan("x = 1\nx;") == [(False, 2, False)]
    assert plan("x = 1") == [(False, 1, False)]
    assert plan("") == []


def test_awaits_in_decorators_and_defaults_count_but_not_in_function_bodies() -> None:
    assert plan("async def f():\n    await g()") == [(False, 1, False)]
    assert plan("@deco(await g())\ndef f(): pass") == [(True, 1, False)]
    assert plan("def f(x=[await g()]): pass") == [(True, 1, False)]


def test_calls_that_need_the_running_loop_run_on_it() -> None:
    assert plan("t = asyncio.create_task(f())") == [(True, 1, False)]
    assert plan("for i in range(3):\n    create_task(f(i))") == [(True, 1, False)]
    assert plan("loop = asyncio.get_running_loop()") == [(True, 1, False)]
    # A function that creates tasks when called later: defining it is plain code.
    assert plan("def start():\n    asyncio.create_task(f())") == [(False, 1, False)]


def test_simple_statements_using_unsafe_asyncio_methods_run_on_the_loop() -> None:
    assert plan("event.set()") == [(True, 1, True)]
    assert plan("queue.put_nowait(1)") == [(True, 1, True)]
    assert plan("task.cancel()") == [(True, 1, True)]
    # Arguments: a ContextVar or a key-value client; compound: may block for long.
    assert plan("var.set(1)") == [(False, 1, True)]
    assert plan("while True:\n    event.set()") == [(False, 1, False)]


def test_future_imports_hold_for_later_cells() -> None:
    flags = compile_cell("from __future__ import annotations", "<cell-f1>").future_flags
    assert flags
    assert compile_cell("x = 1", "<cell-f2>", flags).future_flags == flags


def test_the_source_is_registered_for_tracebacks() -> None:
    compile_cell("a = 1\nb = 2\n", "<cell-lines>")
    assert linecache.getline("<cell-lines>", 2) == "b = 2\n"


def test_syntax_errors_name_the_cell_and_line() -> None:
    with pytest.raises(SyntaxError) as info:
        compile_cell("ok = 1\nreturn 5", "<cell-bad>")
    assert (info.value.filename, info.value.lineno) == ("<cell-bad>", 2)
