"""The ``plait`` command: run and show pipelines, look after caches, start kernels.

Built on argparse: the commands need subcommands, repeated options and plain help,
which argparse has, and plait's core stays free of a CLI dependency.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from plait.cli import cache, run, show
from plait.cli.failure import FAILED, INTERRUPTED, USAGE, UsageError, as_usage_error, report_failure

DESCRIPTION = """\
plait: an async-first pipeline engine.

Run a pipeline, print its picture, look after a cache directory, or start a kernel
or an interactive console. A pipeline is named MODULE:NAME, a module importable
from the current directory (shop:pipeline, pipelines.etl:daily), or
path/to/file.py:NAME."""

EPILOG = "Run 'plait COMMAND --help' for a command's options."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """A usage error in one line (argparse prints the whole usage first)."""
        self.exit(USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """The command line's parser."""
    from plait.kernel.protocol import plait_version

    top = _Parser(
        prog="plait",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"plait {plait_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--traceback", action="store_true", help="on a failure, show plait's frames too"
    )
    commands = top.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    run.add_parser(commands, common)
    show.add_parser(commands, common)
    cache.add_parser(commands)
    kernel = commands.add_parser(
        "kernel",
        help="serve the kernel protocol (JSON lines) on stdin/stdout",
        description="Serve the plait kernel protocol on stdin/stdout; see docs/kernel.md.",
    )
    kernel.set_defaults(handler=_kernel)
    repl = commands.add_parser(
        "repl",
        help="an interactive console with top-level await, running in a kernel",
        description=(
            "An interactive console whose cells run in a plait kernel subprocess: top-level "
            "await, the last value printed, Ctrl-C interrupts the running cell, Ctrl-D exits."
        ),
    )
    repl.set_defaults(handler=_repl)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = parser().parse_args(argv)
    prog = " ".join(filter(None, ("plait", args.command, getattr(args, "action", None))))
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            status: int = args.handler(args)
            return status
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:
        usage = as_usage_error(exc)
        if usage is not None:
            print(f"{prog}: error: {usage}", file=sys.stderr)
            return USAGE
        report_failure(exc, full=getattr(args, "traceback", False))
        return FAILED


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    print(f"plait: {category.__name__}: {message}", file=sys.stderr if file is None else file)


def _kernel(args: Any) -> int:
    from plait.kernel.server import serve

    return serve()


def _repl(args: Any) -> int:
    from plait.kernel.repl import run_repl

    return run_repl()
