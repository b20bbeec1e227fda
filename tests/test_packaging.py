"""The wheel as a user gets it: built, installed in a fresh venv without extras, used."""

from __future__ import annotations

import email.parser
import re
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

SCRIPT = """
import importlib.util
import plait
from plait import Pipeline, node

@node(output_name="y")
def double(x):
    return 2 * x

@node(output_name="z")
async def inc(y):
    return y + 1

print(Pipeline([double, inc]).run({"x": 3}))
print([name for name in ("graphviz", "rich") if importlib.util.find_spec(name)])
"""

PIPELINES = """
from plait import Pipeline, node

@node(output_name="y")
def double(x):
    return 2 * x

pipeline = Pipeline([double], name="doubler")
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (built,) = out.glob("plait-*.whl")
    return built


def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


@pytest.mark.timeout(300)
def test_the_metadata_has_urls_extras_and_a_description_whose_links_work(wheel: Path) -> None:
    meta = metadata(wheel)
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Documentation", "Repository", "Issues"}
    assert urls == PROJECT["urls"]
    assert {"viz", "progress", "otel", "ray"} <= set(meta.get_all("Provides-Extra"))
    assert meta["Description-Content-Type"] == "text/markdown"
    description = meta.get_payload()
    assert description.startswith("# plait")
    links = re.findall(r"\]\(([^)\s]+)\)", description)
    assert links  # the README links to its docs
    relative = [link for link in links if not re.match(r"https?://|#|mailto:", link)]
    assert relative == []
    repository = urls["Repository"]
    assert f"]({repository}/blob/main/docs/architecture.md)" in description


@pytest.mark.timeout(300)
def test_the_wheel_installs_alone_and_runs(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    install = [str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=240)

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=60, cwd=tmp_path, env={}
        )

    used = run(str(bin_dir / "python"), "-c", SCRIPT)
    assert used.returncode == 0, used.stderr
    assert used.stdout.splitlines() == ["{'y': 6, 'z': 7}", "[]"]  # no extras installed

    version = run(str(bin_dir / "plait"), "--version")
    assert (version.returncode, version.stdout) == (0, f"plait {PROJECT['version']}\n")
    helped = run(str(bin_dir / "plait"), "--help")
    assert helped.returncode == 0
    assert all(command in helped.stdout for command in ("run", "show", "cache", "kernel"))
    assert "``" not in helped.stdout

    (tmp_path / "doubling.py").write_text(PIPELINES)
    ran = run(str(bin_dir / "plait"), "run", "doubling:pipeline", "-i", "x=21", "--json")
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, '{"y": 42}\n', "")
    shown = run(str(bin_dir / "plait"), "show", "doubling:pipeline")
    assert shown.returncode == 0
    assert "double(x) → y  [sync]" in shown.stdout
    drawn = run(str(bin_dir / "plait"), "show", "doubling:pipeline", "--format", "svg")
    assert drawn.returncode == 2
    assert "pip install 'plait[viz]'" in drawn.stderr
