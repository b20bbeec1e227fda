"""``plait run MODULE:PIPELINE``: run or map a pipeline and print its outputs."""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any

from plait.cli.failure import UsageError
from plait.cli.target import add_target_options, check_inputs, load_pipeline, read_inputs

HELP = "run a pipeline (or map it over inputs) and print its outputs"

DESCRIPTION = """\
Import a pipeline, run it (or map it over the inputs named by --map-over) and print
its outputs: one NAME = VALUE line each, or a JSON object with --json. A map prints
one line (or one JSON object in a list) per item, in input order.

Each VALUE is read as JSON when it parses as JSON (3, 2.5, true, null, "text",
[1, 2], {"a": 1}) and as text otherwise (--input name=Ada gives "Ada").

Exit status: 0 when the run succeeds, 1 when a node fails (its error and plait's
notes on stderr), 2 for a usage error (bad arguments, a missing or misspelled
input, an unknown output)."""

EPILOG = """\
examples:
  plait run shop:pipeline --input user_id=3
  plait run pipelines/etl.py:daily --inputs params.json --cache ~/.cache/etl --progress
  plait run shop:pipeline --input 'user_id=[1, 2, 3]' --map-over user_id \\
      --map-executor async --max-concurrent 50 --output report --json"""


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "run",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_options(parser, "print only this output and run only the nodes it needs")
    parser.add_argument(
        "--input",
        "-i",
        dest="input",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an input (repeat for more); overrides --inputs",
    )
    parser.add_argument(
        "--inputs", metavar="FILE.json", help="inputs from a JSON object of name to value"
    )
    parser.add_argument(
        "--map-over",
        action="append",
        default=[],
        metavar="NAME",
        help="map over this input, a JSON list (repeat for more)",
    )
    parser.add_argument(
        "--map-mode",
        choices=("zip", "product"),
        default="zip",
        help="pair mapped inputs item by item (zip, the default) or run every combination",
    )
    parser.add_argument(
        "--node-executor",
        metavar="NAME",
        help="where sync nodes run: sequential, threaded, async or parallel",
    )
    parser.add_argument(
        "--map-executor",
        metavar="NAME",
        help="how map items run: sequential, threaded, async or parallel",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        metavar="N",
        help="most items (async map) or nodes in flight at once (default 10)",
    )
    parser.add_argument("--cache", metavar="DIR", help="cache node results in this directory")
    parser.add_argument("--progress", action="store_true", help="show progress on stderr")
    parser.add_argument("--json", action="store_true", help="print the outputs as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.target)
    inputs = read_inputs(args.input, args.inputs)
    check_inputs(pipeline, inputs, args.map_over)
    outputs = args.output or None
    with contextlib.ExitStack() as stack:
        engine = _engine(args)
        if engine is not None:
            pipeline = pipeline.with_engine(stack.enter_context(engine))
        if args.cache is not None:
            pipeline = pipeline.with_cache(stack.enter_context(_cache(args.cache)))
        if args.progress:
            pipeline = pipeline.with_callbacks([*pipeline.callbacks, _progress()])
        if args.map_over:
            items = pipeline.map(
                inputs, map_over=args.map_over, map_mode=args.map_mode, output_name=outputs
            )
            print(_json_items(items) if args.json else "\n".join(_text_item(i) for i in items))
        else:
            result = pipeline.run(inputs, output_name=outputs)
            print(_json(result) if args.json else _text(result))
    return 0


def _engine(args: argparse.Namespace) -> Any:
    """A LocalEngine as the options ask, or None to keep the pipeline's own."""
    asked = {
        "node_executor": args.node_executor,
        "map_executor": args.map_executor,
        "max_concurrent": args.max_concurrent,
    }
    given = {key: value for key, value in asked.items() if value is not None}
    if not given:
        return None
    from plait.engine.local import LocalEngine
    from plait.errors import EngineError

    try:
        return LocalEngine(**given)
    except EngineError as exc:
        raise UsageError(str(exc)) from None


def _cache(directory: str) -> Any:
    from plait.cache.stores import DiskCache
    from plait.errors import CacheError

    try:
        return DiskCache(directory)
    except CacheError as exc:
        raise UsageError(f"--cache {directory}: {exc}") from None


def _progress() -> Any:
    try:
        from plait.callbacks.progress import ProgressCallback
    except ImportError as exc:
        raise UsageError(f"--progress: {exc}") from None
    return ProgressCallback()


def _text(outputs: dict[str, Any]) -> str:
    return "\n".join(f"{name} = {value!r}" for name, value in outputs.items())


def _text_item(item: Any) -> str:
    return repr(item)


def _json(outputs: dict[str, Any]) -> str:
    for name, value in outputs.items():
        try:
            json.dumps(value, default=_json_default)
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"output {name!r} cannot be written as JSON ({exc}); leave out --json, or "
                "choose the outputs to print with --output"
            ) from None
    return json.dumps(outputs, default=_json_default)


def _json_items(items: list[Any]) -> str:
    return "[" + ", ".join(_json(item) for item in items) + "]"


def _json_default(value: Any) -> Any:
    """JSON for what json leaves out: sets as lists, NumPy values by ``tolist()``."""
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"a {type(value).__name__} is not JSON")
