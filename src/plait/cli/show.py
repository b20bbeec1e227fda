"""``plait show MODULE:PIPELINE``: the pipeline's picture as text, Mermaid, DOT or SVG."""

from __future__ import annotations

import argparse
from typing import Any

from plait.cli.failure import UsageError
from plait.cli.target import add_target_options, load_pipeline

FORMATS = ("text", "mermaid", "dot", "svg")

DESCRIPTION = """\
Print a pipeline's picture: text (inputs, nodes in the order they run, outputs),
Mermaid (for Markdown and GitHub), Graphviz DOT, or SVG (drawn with Graphviz: pip
install 'plait[viz]' and Graphviz's dot program)."""

EPILOG = """\
examples:
  plait show shop:pipeline
  plait show shop:pipeline --format svg --orient LR > pipeline.svg
  plait show pipelines/etl.py:daily --format mermaid --depth all --output report"""


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "show",
        help="print a pipeline's picture: text, mermaid, dot or svg",
        description=DESCRIPTION,
        epilog=EPILOG,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_options(parser, "show only the nodes this output needs")
    parser.add_argument("--format", "-f", choices=FORMATS, default="text", help="default: text")
    parser.add_argument(
        "--depth",
        type=_depth,
        default=1,
        metavar="N",
        help="levels of nested pipelines to expand (default 1; 0: none; all)",
    )
    parser.add_argument(
        "--orient", default="TB", help="TB (top to bottom, the default), LR, BT or RL"
    )
    parser.set_defaults(handler=show)


def _depth(text: str) -> int | None:
    if text == "all":
        return None
    try:
        depth = int(text)
    except ValueError:
        depth = -1
    if depth < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'all', got {text!r}")
    return depth


def show(args: argparse.Namespace) -> int:
    from plait import viz

    pipeline = load_pipeline(args.target)
    options: dict[str, Any] = {
        "output_name": args.output or None,
        "depth": args.depth,
        "orient": args.orient,
    }
    try:
        picture = viz.figure(pipeline, **options)  # checks the options once, up front
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.format == "text":
        print(viz.to_text(picture), end="")
    elif args.format == "mermaid":
        print(viz.to_mermaid(picture), end="")
    elif args.format == "dot":
        print(viz.to_dot(picture), end="")
    else:
        try:
            drawing = pipeline.visualize(format="svg", **options)
        except ImportError as exc:
            raise UsageError(f"--format svg: {exc}") from None
        print(drawing.pipe(encoding="utf-8"), end="")
    return 0
