"""A module of pipelines in a scratch directory, as ``plait run`` users write them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PIPES = """
import json
from plait import Pipeline, node

@node(output_name="price")
def price(item, quantity=1):
    return {"apple": 0.5, "pear": 0.75}[item] * quantity

@node(output_name="label")
def label(price, currency="EUR"):
    return f"{price:.2f} {currency}"

@node(output_name="parsed")
def parse(blob):
    return json.loads(blob)

@node(output_name="thing")
def thing(x):
    return object()

shop = Pipeline([price, label], name="shop")
broken = Pipeline([parse])
opaque = Pipeline([thing])
not_a_pipeline = 42
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The current directory holds ``orders.py``; sys.path and sys.modules are restored."""
    (tmp_path / "orders.py").write_text(PIPES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    sys.modules.pop("orders", None)
