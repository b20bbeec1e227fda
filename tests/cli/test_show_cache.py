"""``plait show``, ``plait cache info|clear``, ``--version`` and ``--help``."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from plait import DiskCache
from plait.cli import main
from plait.cli.target import load_pipeline
from tests.cli import plait


@pytest.mark.usefixtures("workdir")
def test_show_text(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = plait(capsys, "show", "orders:shop")
    assert status == 0
    assert out == (
        "Pipeline 'shop'\n"
        "inputs:\n"
        "  item              required\n"
        "  quantity = 1      optional\n"
        "  currency = 'EUR'  optional\n"
        "nodes:\n"
        "  price(item, quantity=1) → price  [sync]\n"
        "  label(price, currency='EUR') → label  [sync]\n"
        "outputs: label\n"
    )


@pytest.mark.usefixtures("workdir")
def test_show_formats_match_the_pipeline_methods(capsys: pytest.CaptureFixture[str]) -> None:
    shop = load_pipeline("orders:shop")
    status, out, _ = plait(capsys, "show", "orders:shop", "--format", "mermaid", "--orient", "LR")
    assert (status, out) == (0, shop.to_mermaid(orient="LR"))
    status, out, _ = plait(
        capsys, "show", "orders:shop", "-f", "dot", "-o", "price", "--depth", "0"
    )
    assert (status, out) == (0, shop.to_dot(output_name="price", depth=0))
    status, out, _ = plait(capsys, "show", "orders:shop", "-f", "svg", "--depth", "all")
    assert status == 0
    titles = {g.findtext("{http://www.w3.org/2000/svg}title") for g in ET.fromstring(out).iter()}
    assert {"node:price", "node:label", "node:price->node:label"} <= titles


@pytest.mark.usefixtures("workdir")
def test_show_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = plait(capsys, "show", "orders:shop", "-o", "lable")
    assert status == 2
    assert err == (
        "plait show: error: no node produces output 'lable'. Did you mean 'label'? "
        "Available outputs: 'price', 'label'\n"
    )
    status, _, err = plait(capsys, "show", "orders:shop", "--orient", "up")
    assert (status, err) == (
        2,
        "plait show: error: orient must be one of 'TB', 'LR', 'BT', 'RL', got 'up'\n",
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["show", "orders:shop", "--depth", "-1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "plait show: error: argument --depth: expected a number >= 0 or 'all', got '-1' "
        "(see plait show --help)\n"
    )


def test_cache_info_and_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "cache"
    with DiskCache(directory) as cache:
        for key in ("a1", "b2", "c3"):
            cache.set(key, "x" * 100_000)
    status, out, _ = plait(capsys, "cache", "info", str(directory))
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"cache    {directory}"
    assert lines[1] == "entries  3"
    assert lines[2].startswith("size     ")
    assert lines[2].endswith(" KiB")
    assert float(lines[2].split()[1]) > 290  # three values of 100 kB
    status, out, _ = plait(capsys, "cache", "clear", str(directory), "--yes")
    assert (status, out) == (0, f"deleted 3 entries from {directory}\n")
    with DiskCache(directory) as cache:
        assert len(cache) == 0


def test_cache_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = plait(capsys, "cache", "info", str(tmp_path / "none"))
    assert (status, err) == (2, f"plait cache info: error: no cache directory '{tmp_path}/none'\n")
    status, _, err = plait(capsys, "cache", "clear", str(tmp_path), "--yes")
    assert status == 2
    assert (
        err == f"plait cache clear: error: '{tmp_path}' is not a plait cache: it has no cache.db\n"
    )
    assert not (tmp_path / "cache.db").exists()  # nothing was created


def test_cache_clear_asks_first(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    with DiskCache(directory) as cache:
        cache.set("k", 1)

    def clear(answer: str | None) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "plait", "cache", "clear", str(directory)]
        if answer is None:  # stdin is not a terminal: refuse rather than ask
            return subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        # a terminal that answers: script(1) gives the command a pseudo-terminal
        shell = f"printf '{answer}\\n' | script -qec '{' '.join(command)}' /dev/null"
        return subprocess.run(["sh", "-c", shell], capture_output=True, text=True)

    refused = clear(None)
    assert refused.returncode == 2
    assert (
        refused.stderr
        == "plait cache clear: error: not deleting 1 entries without asking: pass --yes\n"
    )
    declined = clear("n")
    assert declined.returncode == 1
    assert f"Delete 1 entries from {directory}? [y/N]" in declined.stdout
    assert "nothing deleted" in declined.stdout
    accepted = clear("y")
    assert accepted.returncode == 0
    assert f"deleted 1 entries from {directory}" in accepted.stdout
    with DiskCache(directory) as cache:
        assert len(cache) == 0


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"plait {importlib.metadata.version('plait')}\n"


@pytest.mark.parametrize("command", [(), ("run",), ("show",), ("cache",), ("cache", "clear")])
def test_help_is_plain_text(capsys: pytest.CaptureFixture[str], command: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: plait{''.join(' ' + c for c in command)} ")
    for markup in ("``", ":class:", ":meth:", ":func:"):
        assert markup not in out
    if not command:
        for name in ("run", "show", "cache", "kernel", "repl", "MODULE:NAME"):
            assert name in out
