"""``plait run``: inputs, outputs, maps, engines, and what each mistake prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from plait.cli.target import parse_value
from tests.cli import plait


@pytest.mark.usefixtures("workdir")
def test_run_prints_each_output(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = plait(
        capsys, "run", "orders:shop", "--input", "item=apple", "-i", "quantity=3"
    )
    assert (status, out, err) == (0, "price = 1.5\nlabel = '1.50 EUR'\n", "")


@pytest.mark.usefixtures("workdir")
def test_run_json_and_selected_outputs(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = plait(capsys, "run", "orders:shop", "-i", "item=pear", "--json")
    assert status == 0
    assert json.loads(out) == {"price": 0.75, "label": "0.75 EUR"}
    status, out, _ = plait(capsys, "run", "orders:shop", "-i", "item=pear", "-o", "price", "--json")
    assert json.loads(out) == {"price": 0.75}


def test_inputs_from_a_file_and_the_command_line(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "in.json").write_text('{"item": "apple", "quantity": 2, "currency": "USD"}')
    args = ("run", "orders:shop", "--inputs", "in.json", "-i", "quantity=4", "-o", "label")
    status, out, _ = plait(capsys, *args)
    assert (status, out) == (0, "label = '2.00 USD'\n")


def test_a_py_path_and_a_map(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = f"{workdir / 'orders.py'}:shop"
    args = ("run", target, "-i", 'item=["apple", "pear"]', "--map-over", "item", "--json")
    status, out, _ = plait(capsys, *args)
    assert status == 0
    assert json.loads(out) == [
        {"price": 0.5, "label": "0.50 EUR"},
        {"price": 0.75, "label": "0.75 EUR"},
    ]
    status, out, _ = plait(capsys, "run", target, "-i", 'item=["pear"]', "--map-over", "item")
    assert out == "{'price': 0.75, 'label': '0.75 EUR'}\n"


def test_values_are_json_when_they_parse() -> None:
    assert parse_value("3") == 3
    assert parse_value("2.5") == 2.5
    assert parse_value("true") is True
    assert parse_value("null") is None
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value('{"a": 1}') == {"a": 1}
    assert parse_value('"3"') == "3"
    assert parse_value("Ada") == "Ada"
    assert parse_value("{") == "{"
    assert parse_value("") == ""


USAGE_ERRORS = [
    (
        ["-i", "itm=apple"],
        "the pipeline has no input 'itm'. Did you mean 'item'? "
        "Inputs: 'item', 'quantity', 'currency'",
    ),
    (
        [],
        "missing required input 'item' (for node 'price'): "
        "pass --input NAME=VALUE or --inputs FILE.json",
    ),
    (
        ["-i", "item=apple", "-o", "lable"],
        "no node produces output 'lable'. Did you mean 'label'? "
        "Available outputs: 'price', 'label'",
    ),
    (["-i", "item"], "--input 'item': write NAME=VALUE, like --input x=3"),
    (["-i", "item=apple", "-i", "price=1"], "'price' is an output of node 'price', not an input"),
    (
        ["-i", "item=apple", "--map-over", "item"],
        "mapped input 'item' is a str ('apple'); mapping over it would run one item per",
    ),
    (
        ["-i", "item=apple", "--node-executor", "fast"],
        "unknown node_executor 'fast'. Use one of 'sequential', 'async', 'threaded', 'parallel'",
    ),
    (["-i", "item=apple", "--inputs", "nope.json"], "--inputs nope.json: cannot read it"),
]


@pytest.mark.usefixtures("workdir")
@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS, ids=lambda v: str(v)[:30])
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    status, out, err = plait(capsys, "run", "orders:shop", *args)
    assert status == 2
    assert out == ""
    assert err.startswith(f"plait run: error: {message}")
    assert err.count("\n") == 1


@pytest.mark.usefixtures("workdir")
@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("orders", "'orders' does not name a pipeline: write MODULE:NAME"),
        ("pipez:shop", "no module named 'pipez' (looked in the current directory and on sys.path)"),
        ("orders:shoop", "orders has no 'shoop'. Did you mean 'shop'? Pipelines in it: 'shop', "),
        ("orders:not_a_pipeline", "orders:not_a_pipeline is a int, not a plait.Pipeline"),
        ("nowhere/orders.py:shop", "no file 'nowhere/orders.py'"),
    ],
)
def test_a_target_that_names_no_pipeline(
    capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    status, _, err = plait(capsys, "run", target)
    assert status == 2
    assert err.startswith(f"plait run: error: {message}")


def test_a_file_whose_name_is_taken_by_another_module(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "json.py").write_text("x = 1\n")
    status, _, err = plait(capsys, "run", "json.py:x")
    assert status == 2
    assert "a module named 'json' is already imported from" in err
    assert err.endswith("; rename the file\n")


@pytest.mark.usefixtures("workdir")
def test_a_failing_node_exits_1_with_its_frames_and_notes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = plait(capsys, "run", "orders:broken", "-i", "blob={")
    assert status == 1
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1].endswith('orders.py", line 15, in parse')  # the user's frame comes first
    assert "/plait/" not in err  # no plait frame
    assert "json/decoder.py" in err  # the library the node called is shown
    assert lines[-3].startswith("json.decoder.JSONDecodeError: Expecting property name")
    assert lines[-2] == "plait: raised in node 'parse' (→ parsed) called with (blob='{')"
    assert lines[-1].endswith(" of plait's machinery hidden; --traceback shows them)")


@pytest.mark.usefixtures("workdir")
def test_traceback_shows_every_frame(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = plait(capsys, "run", "orders:broken", "-i", "blob={", "--traceback")
    assert status == 1
    assert f"plait{os.sep}cli{os.sep}run.py" in err
    assert "asyncio" in err or "scheduler.py" in err
    assert "hidden" not in err


@pytest.mark.usefixtures("workdir")
def test_a_map_item_failure_names_the_item(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("run", "orders:shop", "-i", 'item=["apple", "kiwi"]', "--map-over", "item")
    status, _, err = plait(capsys, *args)
    assert status == 1
    assert "KeyError: 'kiwi'" in err
    assert "plait: in map item 1 with inputs (item='kiwi')" in err


def test_a_module_that_fails_to_import_shows_its_own_frames(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "bad.py").write_text("import json\n\nvalue = 1 / 0\n")
    status, _, err = plait(capsys, "run", "bad:pipeline")
    assert status == 1
    assert 'bad.py", line 3, in <module>' in err
    assert "importlib" not in err
    assert err.splitlines()[-2] == "ZeroDivisionError: division by zero"


@pytest.mark.usefixtures("workdir")
def test_an_output_json_cannot_encode(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = plait(capsys, "run", "orders:opaque", "-i", "x=1", "--json")
    assert status == 2
    assert err == (
        "plait run: error: output 'thing' cannot be written as JSON (a object is not JSON); "
        "leave out --json, or choose the outputs to print with --output\n"
    )


def test_engine_cache_and_progress_options(workdir: Path) -> None:
    """In a subprocess: the console script, a process pool (spawn) importing the nodes of
    a file given by path, a DiskCache, and progress lines on stderr."""
    plait_bin = Path(sys.executable).with_name("plait")
    args = [
        str(plait_bin), "run", "orders.py:shop", "-i", 'item=["apple", "pear", "apple"]',
        "--map-over", "item", "--map-executor", "parallel", "--cache", "cache", "--progress",
        "-o", "label", "--json",
    ]  # fmt: skip
    for _ in range(2):
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=workdir)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == [
            {"label": "0.50 EUR"},
            {"label": "0.75 EUR"},
            {"label": "0.50 EUR"},
        ]
        assert "plait: map 'shop' 3/3 items (100.0%)" in proc.stderr
    assert "3 cached" in proc.stderr  # the second run took every item from the cache
    assert (workdir / "cache" / "cache.db").is_file()


def test_python_dash_m_plait_and_exit_statuses(workdir: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "plait", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=workdir,
        )

    assert run("run", "orders:shop", "-i", "item=apple").returncode == 0
    failed = run("run", "orders:shop", "-i", "item=kiwi")
    assert failed.returncode == 1
    assert "KeyError: 'kiwi'" in failed.stderr
    usage = run("run", "orders:shop", "--bogus")
    assert usage.returncode == 2
    assert usage.stderr == "plait: error: unrecognized arguments: --bogus (see plait --help)\n"


def test_warnings_print_in_one_line(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shared = workdir / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    status, out, err = plait(capsys, "run", "orders:shop", "-i", "item=apple", "--cache", "shared")
    assert (status, out) == (0, "price = 0.5\nlabel = '0.50 EUR'\n")
    assert err.startswith(f"plait: CacheWarning: cache directory '{shared}' is accessible by")
    assert err.count("\n") == 1
