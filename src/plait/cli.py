"""The ``plait`` command: ``plait kernel`` (the kernel process) and ``plait repl`` (a console)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(prog="plait", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "kernel",
        help="serve the kernel protocol (JSON lines) on stdin/stdout",
        description="Serve the plait kernel protocol on stdin/stdout; see docs/kernel.md.",
    )
    commands.add_parser(
        "repl",
        help="an interactive console with top-level await, running in a kernel",
        description=(
            "An interactive console whose cells run in a plait kernel subprocess: top-level "
            "await, the last value printed, Ctrl-C interrupts the running cell, Ctrl-D exits."
        ),
    )
    args = parser.parse_args(argv)
    if args.command == "kernel":
        from plait.kernel.server import serve

        return serve()
    from plait.kernel.repl import run_repl

    return run_repl()
