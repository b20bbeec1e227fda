"""Property tests: random DAGs of sync and async nodes agree with a plain evaluation.

A hypothesis strategy draws a random DAG (1..25 nodes; each node consumes any
subset of earlier outputs and of a few pipeline inputs, some through parameters
with defaults, some keyword-only; some nodes return 2-tuples; some are ``async
def`` with a tiny sleep so completion order varies). The node functions are
generated as source text and ``exec``-ed, so their parameter names are real and
plait reads them with ``inspect.signature`` as it would any user function.

The reference evaluates the same functions in index order (a topological order:
node ``i`` only consumes earlier nodes), passing every argument by keyword. Every
node executor (inline, an owned thread pool, a given ``ThreadPoolExecutor``)
must give the reference's outputs through ``run()`` and ``await arun()``, with the
nodes presented to ``Pipeline`` in a shuffled order; an output selection must give
the reference restricted to it and call only the nodes it needs; a node raising
``ValueError`` must surface as that very exception, annotated with the node's name.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plait import Engine, LocalEngine, Node, Pipeline, RunningLoopWarning, node
from tests.engine.test_custom_engine import logging_engine_class

INPUTS = ("x0", "x1", "x2", "x3")
MODULUS = 1_000_003
ENGINE_NAMES = ("sequential", "threaded", "instance", "delegating")

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- the random DAG ---------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str  # an earlier node's output or a pipeline input
    default: int | None  # None: no default
    kw_only: bool


@dataclass(frozen=True)
class NodeSpec:
    index: int
    params: tuple[Param, ...]  # in signature order
    outputs: tuple[str, ...]  # one name, or two for a node returning a 2-tuple
    is_async: bool
    delay: float  # seconds to sleep (async: always awaits asyncio.sleep(delay))
    fail: str | None = None  # None, or "before"/"after" the sleep: raise ValueError

    @property
    def name(self) -> str:
        return f"n{self.index}"


@dataclass(frozen=True)
class Dag:
    nodes: tuple[NodeSpec, ...]  # index order, a topological order
    order: tuple[int, ...]  # the shuffled order the pipeline is given its nodes in

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(o for spec in self.nodes for o in spec.outputs)

    def producer(self, name: str) -> int | None:
        for spec in self.nodes:
            if name in spec.outputs:
                return spec.index
        return None

    def needed_for(self, outputs: Sequence[str]) -> set[int]:
        """Indices of the nodes that must run to produce ``outputs``."""
        stack = [self.producer(o) for o in outputs]
        needed: set[int] = set()
        while stack:
            index = stack.pop()
            if index is None or index in needed:
                continue
            needed.add(index)
            stack.extend(self.producer(p.name) for p in self.nodes[index].params)
        return needed

    def descendants(self, index: int) -> set[int]:
        """Indices of the nodes that consume, directly or not, an output of node ``index``."""
        reached = {index}
        for spec in self.nodes[index + 1 :]:
            if any(self.producer(p.name) in reached for p in spec.params):
                reached.add(spec.index)
        reached.discard(index)
        return reached

    def input_params(self, among: set[int] | None = None) -> Iterator[tuple[NodeSpec, Param]]:
        """(node, parameter) for every parameter fed by a pipeline input."""
        for spec in self.nodes:
            if among is None or spec.index in among:
                for p in spec.params:
                    if p.name in INPUTS:
                        yield spec, p

    def required_inputs(self, among: set[int] | None = None) -> set[str]:
        return {p.name for _, p in self.input_params(among) if p.default is None}

    def used_inputs(self) -> set[str]:
        return {p.name for _, p in self.input_params()}


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 25) -> Dag:
    n = draw(st.integers(1, max_nodes))
    earlier: list[str] = []
    nodes = []
    for i in range(n):
        pool = earlier + list(INPUTS)
        names = draw(st.lists(st.sampled_from(pool), unique=True, max_size=6))
        params = [
            Param(
                name,
                draw(st.none() | st.integers(-50, 50)),
                draw(st.booleans()),
            )
            for name in names
        ]
        # Python's rules: positional parameters with a default come after those
        # without; keyword-only ones may come in any order.
        params.sort(key=lambda p: 2 if p.kw_only else int(p.default is not None))
        outputs = (f"v{i}a", f"v{i}b") if draw(st.booleans()) else (f"v{i}",)
        is_async = draw(st.booleans())
        delays = [0.0, 0.0, 0.0002, 0.001, 0.002] if is_async else [0.0, 0.0, 0.0, 0.0002]
        delay = draw(st.sampled_from(delays))
        nodes.append(NodeSpec(i, tuple(params), outputs, is_async, delay))
        earlier.extend(outputs)
    order = draw(st.permutations(range(n)))
    return Dag(tuple(nodes), tuple(order))


@st.composite
def dags_with_inputs(draw: st.DrawFn) -> tuple[Dag, dict[str, int]]:
    """A DAG and inputs for a full run: every required input, some optional ones."""
    dag = draw(dags())
    return dag, draw(inputs_for(dag, dag.required_inputs()))


def inputs_for(dag: Dag, required: set[str]) -> st.SearchStrategy[dict[str, int]]:
    """Values for ``required`` and for a random subset of the DAG's other inputs."""
    optional = sorted(dag.used_inputs() - required)
    values = st.integers(-(10**6), 10**6)
    return st.fixed_dictionaries(
        dict.fromkeys(sorted(required), values),
        optional=dict.fromkeys(optional, values),
    )


# --- building the nodes -----------------------------------------------------------


class Recorder:
    """Thread-safe log of node calls, and how many are running right now."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[str] = []
        self.active = 0

    def enter(self, name: str) -> None:
        with self.lock:
            self.calls.append(name)
            self.active += 1

    def exit(self) -> None:
        with self.lock:
            self.active -= 1

    def reset(self) -> None:
        """Forget the calls; ``active`` stays true, so a call outliving its run shows."""
        with self.lock:
            self.calls.clear()

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(self.calls)


def mix(index: int, args: tuple[int, ...]) -> int:
    """Deterministic and sensitive to which argument went to which parameter."""
    return (sum((k + 7) * a for k, a in enumerate(args)) * 31 + index) % MODULUS


def source_of(spec: NodeSpec) -> str:
    """The ``def`` of node ``spec``, with its real parameter names."""
    positional = [p for p in spec.params if not p.kw_only]
    keyword = [p for p in spec.params if p.kw_only]

    def param(p: Param) -> str:
        return p.name if p.default is None else f"{p.name}={p.default!r}"

    parts = [param(p) for p in positional]
    if keyword:
        parts.append("*")
        parts.extend(param(p) for p in keyword)
    args = "".join(f"{p.name}, " for p in spec.params)
    result = "(value, value + 1)" if len(spec.outputs) == 2 else "value"
    fail = f"raise ValueError('boom from {spec.name}')"
    if spec.is_async:
        wait = f"await asyncio.sleep({spec.delay!r})"
    elif spec.delay:
        wait = f"time.sleep({spec.delay!r})"
    else:
        wait = "pass"
    lines = [
        f"{'async def' if spec.is_async else 'def'} {spec.name}({', '.join(parts)}):",
        f"    _rec.enter({spec.name!r})",
        "    try:",
        f"        {fail if spec.fail == 'before' else 'pass'}",
        f"        {wait}",
        f"        {fail if spec.fail == 'after' else 'pass'}",
        f"        value = _mix({spec.index}, ({args}))",
        f"        return {result}",
        "    finally:",
        "        _rec.exit()",
    ]
    return "\n".join(lines) + "\n"


def build(dag: Dag, rec: Recorder) -> tuple[list[Callable[..., Any]], list[Node[..., Any]]]:
    """The plain functions, in index order, and their nodes in the DAG's shuffled order."""
    funcs = []
    for spec in dag.nodes:
        namespace: dict[str, Any] = {"asyncio": asyncio, "time": time, "_rec": rec, "_mix": mix}
        exec(source_of(spec), namespace)
        funcs.append(namespace[spec.name])
    nodes = []
    for i in dag.order:
        spec = dag.nodes[i]
        output_name = spec.outputs[0] if len(spec.outputs) == 1 else spec.outputs
        nodes.append(node(funcs[i], output_name=output_name, name=spec.name))
    return funcs, nodes


def reference(
    dag: Dag,
    funcs: Sequence[Callable[..., Any]],
    inputs: Mapping[str, int],
    only: set[int] | None = None,
) -> dict[str, Any]:
    """Every output, by evaluating the functions one at a time in index order."""

    async def evaluate() -> dict[str, Any]:
        values: dict[str, Any] = {}
        for spec in dag.nodes:
            if only is not None and spec.index not in only:
                continue
            kwargs = {}
            for p in spec.params:
                if p.name in values:
                    kwargs[p.name] = values[p.name]
                elif p.name in inputs:
                    kwargs[p.name] = inputs[p.name]
                else:  # an input nobody gave: the parameter's default
                    assert p.default is not None, f"{p.name} is required"
            result = funcs[spec.index](**kwargs)
            if spec.is_async:
                result = await result
            if len(spec.outputs) == 1:
                result = (result,)
            values.update(zip(spec.outputs, result, strict=True))
        return values

    return asyncio.run(evaluate())


# --- engines --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_pool() -> Iterator[ThreadPoolExecutor]:
    """One executor instance given to plait across all examples; plait must leave it open."""
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="props-pool") as pool:
        yield pool


@pytest.fixture(scope="module")
def engines(shared_pool: ThreadPoolExecutor) -> Iterator[dict[str, Engine]]:
    threaded = LocalEngine(node_executor="threaded", max_workers=4)
    try:
        yield {
            "sequential": LocalEngine(),
            "threaded": threaded,
            "instance": LocalEngine(node_executor=shared_pool),
            # A third-party engine (docs/engines.md) that delegates to the local one.
            "delegating": logging_engine_class()(LocalEngine(node_executor="threaded")),
        }
    finally:
        threaded.close()
    # Engines never shut down an executor they were given.
    assert shared_pool.submit(int, "7").result(timeout=5) == 7


def run_pipeline(
    pipeline: Pipeline, inputs: Mapping[str, int], output_name: str | list[str] | None, how: str
) -> dict[str, Any]:
    """``run()``, ``await arun()``, or ``run()`` called inside a running event loop."""
    if how == "run":
        return pipeline.run(inputs=inputs, output_name=output_name)
    if how == "arun":
        return asyncio.run(pipeline.arun(inputs=inputs, output_name=output_name))
    assert how == "run in loop"

    async def blocking_call() -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RunningLoopWarning)
            return pipeline.run(inputs=inputs, output_name=output_name)

    return asyncio.run(blocking_call())


# --- properties -----------------------------------------------------------------------


@SETTINGS
@given(case=dags_with_inputs())
def test_every_executor_matches_the_reference(
    engines: dict[str, Engine], case: tuple[Dag, dict[str, int]]
) -> None:
    dag, inputs = case
    rec = Recorder()
    funcs, nodes = build(dag, rec)
    expected = reference(dag, funcs, inputs)
    assert set(expected) == set(dag.outputs)
    everyone = Counter(spec.name for spec in dag.nodes)

    for engine_name in ENGINE_NAMES:
        pipeline = Pipeline(nodes, engine=engines[engine_name])
        assert set(pipeline.output_names) == set(dag.outputs)
        assert set(pipeline.required_inputs) == dag.required_inputs()
        # The second "run" reuses the plan the first compiled.
        for how in ("run", "arun", "run", "run in loop"):
            rec.reset()
            result = run_pipeline(pipeline, inputs, None, how)
            context = f"{engine_name} {how}"
            assert result == expected, context
            assert rec.counts() == everyone, context
            assert rec.active == 0, context


@SETTINGS
@given(dag=dags(), data=st.data())
def test_output_selection_runs_only_the_needed_nodes(
    engines: dict[str, Engine], dag: Dag, data: st.DataObject
) -> None:
    wanted = data.draw(st.lists(st.sampled_from(dag.outputs), min_size=1, max_size=4), "wanted")
    output_name: str | list[str] = (
        wanted[0] if len(wanted) == 1 and data.draw(st.booleans(), "as str") else wanted
    )
    needed = dag.needed_for(wanted)
    # Only the inputs the needed nodes require; inputs of other nodes are optional here.
    inputs = data.draw(inputs_for(dag, dag.required_inputs(needed)), "inputs")
    rec = Recorder()
    funcs, nodes = build(dag, rec)
    expected = {o: v for o, v in reference(dag, funcs, inputs, only=needed).items() if o in wanted}
    assert set(expected) == set(wanted)
    needed_calls = Counter(dag.nodes[i].name for i in needed)

    for engine_name in (*ENGINE_NAMES, "fresh threaded"):
        for how in ("run", "arun"):
            context = f"{engine_name} {how} {output_name!r}"
            rec.reset()
            if engine_name == "fresh threaded":
                with LocalEngine(node_executor="threaded", max_workers=3) as engine:
                    result = run_pipeline(Pipeline(nodes, engine=engine), inputs, output_name, how)
            else:
                pipeline = Pipeline(nodes, engine=engines[engine_name])
                result = run_pipeline(pipeline, inputs, output_name, how)
            assert result == expected, context
            assert rec.counts() == needed_calls, context
            assert rec.active == 0, context


@SETTINGS
@given(dag=dags(), data=st.data())
def test_a_failing_node_raises_its_own_error_with_a_note(
    engines: dict[str, Engine], dag: Dag, data: st.DataObject
) -> None:
    failing = data.draw(st.integers(0, len(dag.nodes) - 1), "failing node")
    where = data.draw(st.sampled_from(["before", "after"]), "raises where")
    dag = replace(
        dag,
        nodes=tuple(
            replace(spec, fail=where) if spec.index == failing else spec for spec in dag.nodes
        ),
    )
    inputs = data.draw(inputs_for(dag, dag.required_inputs()), "inputs")
    name = dag.nodes[failing].name
    downstream = {dag.nodes[i].name for i in dag.descendants(failing)}
    rec = Recorder()
    funcs, nodes = build(dag, rec)
    # Outputs that do not need the failing node are still computable.
    safe = [o for o in dag.outputs if failing not in dag.needed_for([o])]
    safe_needed = dag.needed_for(safe)
    safe_expected = {
        o: v for o, v in reference(dag, funcs, inputs, only=safe_needed).items() if o in safe
    }

    for engine_name in ENGINE_NAMES:
        pipeline = Pipeline(nodes, engine=engines[engine_name])
        for how in ("run", "arun", "run in loop"):
            context = f"{engine_name} {how}"
            rec.reset()
            with pytest.raises(ValueError) as caught:
                run_pipeline(pipeline, inputs, None, how)
            exc = caught.value
            assert type(exc) is ValueError, context
            assert str(exc) == f"boom from {name}", context
            notes = [n for n in getattr(exc, "__notes__", []) if n.startswith("plait:")]
            assert len(notes) == 1, (context, notes)
            assert f"node {name!r}" in notes[0], (context, notes)
            # Nothing the run started is still running once the error propagates.
            assert rec.active == 0, context
            counts = rec.counts()
            assert counts[name] == 1, context
            assert not downstream & set(counts), context
            assert max(counts.values()) == 1, context

        if safe:
            rec.reset()
            assert pipeline.run(inputs=inputs, output_name=safe) == safe_expected, engine_name
            assert rec.counts() == Counter(dag.nodes[i].name for i in safe_needed), engine_name


@pytest.fixture(scope="module")
def callers() -> Iterator[ThreadPoolExecutor]:
    """Threads that call ``run()`` concurrently (never the pool nodes run on)."""
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="props-caller") as pool:
        yield pool


@SETTINGS
@given(dag=dags(max_nodes=12), data=st.data())
def test_concurrent_runs_of_one_pipeline_are_independent(
    engines: dict[str, Engine], callers: ThreadPoolExecutor, dag: Dag, data: st.DataObject
) -> None:
    many_inputs = data.draw(
        st.lists(inputs_for(dag, dag.required_inputs()), min_size=2, max_size=3), "inputs"
    )
    rec = Recorder()
    funcs, nodes = build(dag, rec)
    expected = [reference(dag, funcs, inputs) for inputs in many_inputs]
    everyone = Counter({spec.name: len(many_inputs) for spec in dag.nodes})

    async def gather(pipeline: Pipeline) -> list[dict[str, Any]]:
        return await asyncio.gather(*(pipeline.arun(inputs) for inputs in many_inputs))

    for engine_name in ENGINE_NAMES:
        pipeline = Pipeline(nodes, engine=engines[engine_name])
        rec.reset()
        assert asyncio.run(gather(pipeline)) == expected, f"{engine_name} gather(arun)"
        assert rec.counts() == everyone, engine_name
        assert rec.active == 0, engine_name

        rec.reset()
        futures = [callers.submit(pipeline.run, inputs) for inputs in many_inputs]
        assert [f.result(timeout=30) for f in futures] == expected, f"{engine_name} threads"
        assert rec.counts() == everyone, engine_name
        assert rec.active == 0, engine_name
