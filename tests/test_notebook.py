"""examples/notebook.ipynb runs on a real Jupyter kernel (nbclient + ipykernel), cell by cell."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "notebook.ipynb"


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The notebook executed, saved and read back: each tagged cell's outputs."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=60, kernel_name="python3").execute()
    saved = tmp_path_factory.mktemp("nb") / "executed.ipynb"
    nbformat.write(notebook, saved)
    outputs = {}
    for cell in nbformat.read(saved, as_version=4).cells:
        for tag in cell.metadata.get("tags", []):
            outputs[tag] = cell.get("outputs", [])
    return outputs


def result(outputs: list[dict[str, Any]]) -> str:
    (value,) = [
        out["data"]["text/plain"] for out in outputs if out["output_type"] == "execute_result"
    ]
    return str(value)


def stderr(outputs: list[dict[str, Any]]) -> str:
    return "".join(
        out["text"] for out in outputs if out["output_type"] == "stream" and out["name"] == "stderr"
    )


@pytest.mark.timeout(120)
def test_sync_run_in_the_running_loop_warns_once(executed: dict[str, Any]) -> None:
    assert result(executed["run"]) == "{'doubled': 2, 'total': 3}"
    assert stderr(executed["run"]).count("RunningLoopWarning") == 1
    assert executed["setup"] == []


@pytest.mark.timeout(120)
def test_arun_map_batch_async_executor_and_parallel(executed: dict[str, Any]) -> None:
    assert result(executed["arun"]) == "{'doubled': 4, 'total': 5}"
    assert result(executed["map"]) == str([2 * x + 1 for x in range(20)])
    assert result(executed["batch"]) == "['A', 'B', 'C']"
    assert result(executed["async-executor"]) == "['X', 'Y']"
    assert result(executed["parallel"]) == "[0, 1, 4, 9, 16, 25]"
    for tag in ("arun", "map", "batch", "async-executor", "parallel"):
        assert stderr(executed[tag]) == "", tag


@pytest.mark.timeout(120)
def test_progress_keeps_its_final_state_in_the_saved_notebook(executed: dict[str, Any]) -> None:
    outputs = executed["progress"]
    assert result(outputs) == "30"
    (display,) = [out for out in outputs if out["output_type"] == "display_data"]
    html = display["data"]["text/html"]
    assert '<progress value="30" max="30"' in html
    assert "map <b>demo</b>" in html
    assert "30/30 items" in html
    assert display["data"]["text/plain"].startswith("plait: map 'demo' 30/30 items (100.0%), done")


@pytest.mark.timeout(120)
def test_a_pipeline_displays_as_its_picture(executed: dict[str, Any]) -> None:
    (shown,) = [out for out in executed["picture"] if out["output_type"] == "execute_result"]
    svg = shown["data"]["image/svg+xml"]
    assert svg.lstrip().startswith(("<?xml", "<svg"))
    for name in ("double", "add_one", "doubled", "total"):  # its nodes and values, drawn
        assert name in svg
    assert shown["data"]["text/plain"].startswith("Pipeline(")
