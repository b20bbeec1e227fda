"""What the session and kernel modules import from the rest of plait."""

from __future__ import annotations

import ast
import importlib.metadata
import pathlib

import pytest

import plait.kernel.protocol
from plait.kernel import KernelClient
from plait.session import capture

SRC = pathlib.Path(plait.kernel.protocol.__file__).resolve().parents[1]
MODULES = sorted(
    [*(SRC / "session").glob("*.py"), *(SRC / "kernel").glob("*.py"), *(SRC / "cli").glob("*.py")]
)


def plait_imports(tree: ast.Module) -> tuple[set[str], list[str]]:
    """Names bound to plait modules, and private names imported from plait modules."""
    modules: set[str] = set()
    private: list[str] = []
    for stmt in ast.walk(tree):
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if alias.name == "plait" or alias.name.startswith("plait."):
                    modules.add(alias.asname or alias.name.partition(".")[0])
        elif isinstance(stmt, ast.ImportFrom) and (stmt.module or "").startswith("plait"):
            for alias in stmt.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    private.append(f"from {stmt.module} import {alias.name}")
                modules.add(alias.asname or alias.name)  # a module or a name: checked alike
    return modules, private


@pytest.mark.parametrize("path", MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_private_names_of_other_plait_modules(path: pathlib.Path) -> None:
    tree = ast.parse(path.read_text())
    modules, private = plait_imports(tree)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            private.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    assert not private, f"{path.name} uses private names of other modules: {private}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_kernel_does_not_import_the_package_top(path: pathlib.Path) -> None:
    """``import plait`` (for ``__version__`` or ``__file__``) would tie the kernel to
    whatever the package's ``__init__`` imports."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(alias.name != "plait" for alias in node.names), path.name
        if isinstance(node, ast.ImportFrom) and node.module == "plait":
            for alias in node.names:  # submodules only (``from plait import bridge``)
                name = alias.name
                assert (SRC / f"{name}.py").exists() or (SRC / name).is_dir(), name


def test_plait_version_comes_from_the_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    from plait.kernel.protocol import plait_version

    assert plait_version() == importlib.metadata.version("plait")

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    plait_version.cache_clear()
    monkeypatch.setattr(importlib.metadata, "version", missing)
    try:
        assert plait_version() == "unknown"  # run from a source tree, not installed
    finally:
        plait_version.cache_clear()


def test_kernel_ready_reports_the_version() -> None:
    with KernelClient() as kernel:
        assert kernel.kernel_info["plait_version"] == importlib.metadata.version("plait")


def test_stream_proxy_public_api() -> None:
    class Sink:
        def __init__(self) -> None:
            self.written: list[str] = []

        def write(self, text: str) -> int:
            self.written.append(text)
            return len(text)

        def isatty(self) -> bool:
            return False

    sink = Sink()
    proxy = capture.StreamProxy("stdout", sink)  # type: ignore[arg-type]
    assert proxy.channel == "stdout"
    assert proxy.target is sink
    assert capture.unwrap(proxy) is sink
    assert capture.unwrap(sink) is sink
    assert proxy.write("outside a cell") == len("outside a cell")
    assert sink.written == ["outside a cell"]

    delivered: list[tuple[str, str]] = []

    class Custom(capture.StreamProxy):
        def write_to_cell(self, cell: capture.CellIO, text: str) -> None:
            delivered.append((self.channel, text))

    custom = Custom("stderr", sink)  # type: ignore[arg-type]
    token = capture.current_cell.set(object())  # type: ignore[arg-type]
    try:
        assert custom.write("in a cell") == len("in a cell")
    finally:
        capture.current_cell.reset(token)
    assert delivered == [("stderr", "in a cell")]
    assert sink.written == ["outside a cell"]
