"""``plait cache info DIR`` and ``plait cache clear DIR``: a DiskCache directory."""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

from plait.cli.failure import FAILED, UsageError


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "cache",
        help="look at or clear a cache directory (DiskCache)",
        description="Look at or clear a cache directory made by plait.DiskCache (--cache DIR).",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    info = actions.add_parser(
        "info",
        help="how many entries the cache holds and its size on disk",
        description="Print a cache directory's path, number of entries and size on disk.",
    )
    info.add_argument("directory", metavar="DIR")
    info.set_defaults(handler=show_info)
    clear = actions.add_parser(
        "clear",
        help="delete every entry (asks first unless --yes)",
        description="Delete every entry of a cache directory; the directory stays.",
    )
    clear.add_argument("directory", metavar="DIR")
    clear.add_argument("--yes", "-y", action="store_true", help="do not ask before deleting")
    clear.set_defaults(handler=clear_cache)


def open_cache(directory: str) -> Any:
    """The DiskCache in ``directory``, which must exist and be one (never made here)."""
    from plait.cache.stores import DiskCache

    path = pathlib.Path(directory).expanduser()
    if not path.is_dir():
        raise UsageError(f"no cache directory {str(path)!r}")
    if not (path / "cache.db").is_file():
        raise UsageError(f"{str(path)!r} is not a plait cache: it has no cache.db")
    return DiskCache(path)


def show_info(args: argparse.Namespace) -> int:
    with open_cache(args.directory) as cache:
        entries = len(cache)
        size = sum(f.stat().st_size for f in cache.directory.rglob("*") if f.is_file())
        print(f"cache    {cache.directory}")
        print(f"entries  {entries}")
        print(f"size     {_size(size)}")
    return 0


def clear_cache(args: argparse.Namespace) -> int:
    with open_cache(args.directory) as cache:
        entries = len(cache)
        where = cache.directory
        if not args.yes:
            if not sys.stdin.isatty():
                raise UsageError(f"not deleting {entries} entries without asking: pass --yes")
            answer = input(f"Delete {entries} entries from {where}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return FAILED
        cache.clear()
    print(f"deleted {entries} entries from {where}")
    return 0


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    units = ("KiB", "MiB", "GiB")
    value, unit = size / 1024, 0
    while value >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    return f"{value:.1f} {units[unit]}"
