"""The public surface is what it claims: everything in plait.__all__ exists, is
documented and reports module "plait" (the anyio/httpx habit)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import plait

PUBLIC = [name for name in plait.__all__ if not name.startswith("__")]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_is_importable_documented_and_reports_plait(name: str) -> None:
    value = getattr(plait, name)
    assert (value.__doc__ or "").strip(), f"plait.{name} has no docstring"
    assert value.__module__ == "plait", f"plait.{name}.__module__ is {value.__module__!r}"


def test_all_is_sorted_and_complete() -> None:
    assert plait.__all__ == sorted(plait.__all__)
    assert len(set(plait.__all__)) == len(plait.__all__)
    for name in ("Engine", "LocalEngine", "AsyncSession", "KernelClient", "DiskCache"):
        assert name in plait.__all__


def test_heavy_names_load_lazily() -> None:
    code = (
        "import sys, plait\n"
        "heavy = ['diskcache', 'sqlite3', 'plait.session', 'plait.kernel', 'plait.cache.stores']\n"
        "print([m for m in heavy if m in sys.modules])\n"
        "plait.AsyncSession, plait.KernelClient, plait.DiskCache\n"
        "print([m for m in heavy if m not in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["[]", "[]"]


def test_engine_internals_are_not_public_names() -> None:
    for internal in ("Route", "ItemRunner", "Plan", "bridge_internal"):
        assert internal not in plait.__all__
