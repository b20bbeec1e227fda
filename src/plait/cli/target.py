"""What ``plait run`` and ``plait show`` are given: the pipeline and its inputs."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from plait._text import did_you_mean, quoted
from plait.cli.failure import UsageError
from plait.pipeline import Pipeline


def add_target_options(parser: argparse.ArgumentParser, outputs_help: str) -> None:
    """The options ``run`` and ``show`` share: the pipeline, and ``--output NAME ...``."""
    parser.add_argument("target", metavar="MODULE:PIPELINE", help="the pipeline")
    parser.add_argument(
        "--output",
        "-o",
        action="append",
        default=[],
        metavar="NAME",
        help=f"{outputs_help} (repeat for more)",
    )


def load_pipeline(target: str) -> Pipeline:
    """The pipeline ``MODULE:NAME`` or ``path/to/file.py:NAME`` names."""
    where, _, name = target.rpartition(":")
    if not where or not name:
        raise UsageError(
            f"{target!r} does not name a pipeline: write MODULE:NAME (a module importable "
            "from the current directory) or path/to/file.py:NAME"
        )
    module = _import(where)
    value: Any = module
    for part in name.split("."):
        if not hasattr(value, part):
            pipelines = [n for n, v in vars(module).items() if isinstance(v, Pipeline)]
            raise UsageError(
                f"{where} has no {name!r}.{did_you_mean(name, pipelines)} "
                f"Pipelines in it: {quoted(pipelines) or 'none'}"
            )
        value = getattr(value, part)
    if not isinstance(value, Pipeline):
        raise UsageError(f"{target} is a {type(value).__name__}, not a plait.Pipeline")
    return value


def _import(where: str) -> ModuleType:
    """Import a module by name (from the current directory first, as ``python -m`` does)
    or a ``.py`` file by path (its directory goes first on sys.path, so worker processes
    import its nodes by the same name)."""
    if where.endswith(".py") or os.sep in where:
        path = pathlib.Path(where)
        if not path.is_file():
            raise UsageError(f"no file {where!r}")
        directory, name = str(path.parent.resolve()), path.stem
        loaded = sys.modules.get(name)
        if loaded is not None and _file_of(loaded) != path.resolve():
            raise UsageError(
                f"{where}: a module named {name!r} is already imported from "
                f"{_file_of(loaded) or 'Python itself'}; rename the file"
            )
    else:
        directory, name = os.getcwd(), where
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(f"{exc.name}.")):
            raise UsageError(
                f"no module named {name!r} (looked in the current directory and on sys.path)"
            ) from None
        raise


def _file_of(module: ModuleType) -> pathlib.Path | None:
    file = getattr(module, "__file__", None)
    return pathlib.Path(file).resolve() if file else None


def read_inputs(pairs: Sequence[str], file: str | None) -> dict[str, Any]:
    """Inputs from ``--inputs FILE.json`` then each ``--input NAME=VALUE`` (which wins)."""
    inputs: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = json.loads(pathlib.Path(file).read_text())
        except OSError as exc:
            raise UsageError(f"--inputs {file}: cannot read it ({exc.strerror})") from None
        except ValueError as exc:
            raise UsageError(f"--inputs {file}: not JSON ({exc})") from None
        if not isinstance(loaded, dict):
            raise UsageError(
                f"--inputs {file}: holds a JSON {type(loaded).__name__}; it must be an "
                'object of input name to value, like {"x": 1}'
            )
        inputs.update(loaded)
    for pair in pairs:
        name, equals, text = pair.partition("=")
        if not equals or not name:
            raise UsageError(f"--input {pair!r}: write NAME=VALUE, like --input x=3")
        inputs[name] = parse_value(text)
    return inputs


def parse_value(text: str) -> Any:
    """``3`` → 3, ``[1, 2]`` → a list, ``true`` → True: JSON when it parses, else the
    text itself (``hello`` → ``"hello"``)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def check_inputs(pipeline: Pipeline, inputs: dict[str, Any], map_over: Sequence[str]) -> None:
    """Every input given is one the pipeline takes (plait itself only warns)."""
    graph = pipeline.graph
    for name in [*inputs, *map_over]:
        if not graph.is_input(name) and graph.producer_index(name) is None:
            raise UsageError(
                f"the pipeline has no input {name!r}.{did_you_mean(name, graph.inputs)} "
                f"Inputs: {quoted(graph.inputs) or 'none'}"
            )
