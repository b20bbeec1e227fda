"""The README and every docs page: their Python blocks run, and the values they state are right."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs_blocks import run_block, run_page

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_code_blocks_run_and_state_their_values(page: Path) -> None:
    run_page(page)


def test_a_wrong_stated_value_fails_naming_the_line() -> None:
    source = "x = 2\nx * 3\n# 7\n"
    with pytest.raises(AssertionError, match=r"line 11 says the value is\n  7\nbut it is\n  6"):
        run_block(source, {}, "page.md", first_line=10)


def test_stated_values_at_the_end_of_a_line_or_printed_are_checked() -> None:
    run_block("1 + 1   # 2\nprint(6 * 7)  # 42\n", {}, "page.md", first_line=1)
    with pytest.raises(AssertionError, match="it prints"):
        run_block("print(5)\n# 6\n", {}, "page.md", first_line=1)


def test_prose_comments_are_not_checked_and_await_works() -> None:
    namespace: dict[str, object] = {}
    source = "import asyncio\nawait asyncio.sleep(0, 1)   # -> one\n# fine, says nothing\n"
    run_block(source, namespace, "page.md", first_line=1)
    run_block("await asyncio.sleep(0, 4)\n# 4\n", namespace, "page.md", first_line=1)
    namespace["__docs_runner__"].close()  # type: ignore[attr-defined]


def test_a_page_runs_hidden_setup_and_skips_marked_blocks(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- invisible-code-block: python\nbase = 40\n-->\n\n"
        "```python\nbase + 2\n# 42\n```\n\n"
        "<!-- skip: next -->\n```python\nraise RuntimeError('an illustration')\n```\n\n"
        "```python\nbase\n# 41\n```\n"
    )
    with pytest.raises(AssertionError, match="line 16 says the value is\n  41\nbut it is\n  40"):
        run_page(page)
