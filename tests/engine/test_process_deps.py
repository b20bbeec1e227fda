"""Process-scoped deps: once per process (main and each worker), kept across runs and
maps, torn down when the engines holding them close or the process exits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plait import DepDefinitionError, DepError, LocalEngine, Pipeline, node
from plait.deps import Dep
from plait.engine.local import process_deps

pytestmark = pytest.mark.timeout(120)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def counted(path: Path, wait_for: int = 1) -> Pipeline:
    """A pipeline whose process-scoped "model" writes a line to ``path`` when it is made
    ("up <pid>") and when it is torn down ("down <pid>"). Each item waits until
    ``wait_for`` models exist, so that many workers take part (an event, not a sleep)."""

    def load_model(model_name: str = "small") -> Iterator[dict[str, Any]]:
        with path.open("a") as file:
            file.write(f"up {os.getpid()} {model_name}\n")
        yield {"name": model_name, "pid": os.getpid()}
        with path.open("a") as file:
            file.write(f"down {os.getpid()} {model_name}\n")

    @node(output_name="y")
    def predict(x: int, model: dict[str, Any] = Dep(load_model, scope="process")) -> Any:
        deadline = time.monotonic() + 60
        while sum(line.startswith("up") for line in lines(path)) < wait_for:
            assert time.monotonic() < deadline, "the other worker never made its model"
            time.sleep(0.01)
        return (x, model["name"], model["pid"])

    return Pipeline([predict])


def test_parallel_map_makes_one_per_worker_and_a_kept_engine_reuses_them(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    pipeline = counted(log, wait_for=2)
    with LocalEngine(map_executor="parallel", max_workers=2) as engine:
        first = pipeline.with_engine(engine).map(inputs={"x": range(1000)}, map_over="x")
        second = pipeline.with_engine(engine).map(inputs={"x": range(1000)}, map_over="x")
        made = lines(log)
    ups = [line for line in made if line.startswith("up")]
    assert len(ups) == 2, made
    assert len({line.split()[1] for line in ups}) == 2, made
    assert not any(line.startswith("down") for line in made)  # kept while the pool lives
    worker_pids = {line.split()[1] for line in ups}
    assert [o["y"][0] for o in first] == list(range(1000))
    assert {str(o["y"][2]) for o in first + second} == worker_pids
    assert str(os.getpid()) not in worker_pids
    # Closing the engine stops its workers, whose exit tears their models down.
    downs = sorted(line.split()[1] for line in lines(log) if line.startswith("down"))
    assert downs == sorted(worker_pids)


def test_threaded_map_makes_one_and_close_tears_it_down(tmp_path: Path) -> None:
    log = tmp_path / "log"
    pipeline = counted(log)
    with LocalEngine(map_executor="threaded", max_workers=4) as engine:
        on = pipeline.with_engine(engine)
        first = on.map(inputs={"x": range(1000)}, map_over="x")
        second = on.map(inputs={"x": range(10)}, map_over="x")
        assert on.run(inputs={"x": 5}) == {"y": (5, "small", os.getpid())}
        assert lines(log) == [f"up {os.getpid()} small"]
    assert [o["y"] for o in first] == [(x, "small", os.getpid()) for x in range(1000)]
    assert len(second) == 10
    assert lines(log) == [f"up {os.getpid()} small", f"down {os.getpid()} small"]


def test_one_instance_per_value_of_its_inputs(tmp_path: Path) -> None:
    log = tmp_path / "log"
    pipeline = counted(log)
    with LocalEngine() as engine:
        on = pipeline.with_engine(engine)
        for name in ("small", "large", "small", "large"):
            assert on.run(inputs={"x": 1, "model_name": name})["y"][1] == name
        on.map(inputs={"x": [1, 2], "model_name": ["small", "large"]}, map_over=["x", "model_name"])
    pid = os.getpid()
    assert lines(log) == [
        f"up {pid} small",
        f"up {pid} large",
        f"down {pid} large",  # newest first
        f"down {pid} small",
    ]


def test_engines_share_an_instance_until_the_last_one_closes(tmp_path: Path) -> None:
    log = tmp_path / "log"
    pipeline = counted(log)
    first, second = LocalEngine(), LocalEngine(map_executor="async")
    pipeline.with_engine(first).run(inputs={"x": 1})
    pipeline.with_engine(second).map(inputs={"x": [1, 2]}, map_over="x")
    first.close()
    assert len(lines(log)) == 1  # the second engine still holds it
    second.close()
    assert [line.split()[0] for line in lines(log)] == ["up", "down"]
    third = LocalEngine()
    pipeline.with_engine(third).run(inputs={"x": 1})  # a new one: the old one is gone
    third.close()
    assert [line.split()[0] for line in lines(log)] == ["up", "down", "up", "down"]


made: list[str] = []


def make_tokenizer() -> Iterator[str]:
    made.append("tokenizer")
    yield "tok"
    made.append("tokenizer down")


def make_model(tokenizer: str = Dep(make_tokenizer, scope="process")) -> Iterator[str]:
    made.append("model")
    yield f"model+{tokenizer}"
    made.append("model down")


def make_session(model: str = Dep(make_model, scope="process")) -> Iterator[str]:
    made.append("session")
    yield f"session({model})"
    made.append("session down")


def test_process_deps_of_process_deps_and_run_deps_on_them() -> None:
    made.clear()

    @node(output_name="y")
    def use(
        x: int,
        session: str = Dep(make_session),  # per run, on the process-wide model
        tokenizer: str = Dep(make_tokenizer, scope="process"),
    ) -> str:
        return f"{x} {session} {tokenizer}"

    with LocalEngine(map_executor="threaded", max_workers=4) as engine:
        pipeline = Pipeline([use], engine=engine)
        assert pipeline.run(inputs={"x": 1}) == {"y": "1 session(model+tok) tok"}
        assert pipeline.map(inputs={"x": range(50)}, map_over="x")[49] == {
            "y": "49 session(model+tok) tok"
        }
        assert made == ["tokenizer", "model"] + ["session", "session down"] * 2
    assert made[-2:] == ["model down", "tokenizer down"]  # dependents first


def test_process_scope_definition_errors() -> None:
    async def load_async() -> str:
        return "client"

    with pytest.raises(
        DepDefinitionError,
        match=r"Dep\(load_async, scope='process'\) is async, but a process-scoped resource "
        r"outlives every event loop .* or make it Dep\(\.\.\., scope='run'\)",
    ):
        Dep(load_async, scope="process")

    def per_run() -> str:
        return "conn"

    def kept(conn: str = Dep(per_run)) -> str:
        return conn

    with pytest.raises(
        DepDefinitionError,
        match=r"Dep\(kept, scope='process'\) is process-scoped but its parameter 'conn' is "
        r"Dep\(per_run\): a resource kept for the process cannot use one made per run\. "
        r"Make it Dep\(kept, scope='run'\), or give per_run scope='process'\.",
    ):
        Dep(kept, scope="process")
    assert Dep(kept).deps == {"conn": Dep(per_run)}


def test_a_failed_setup_is_raised_with_a_note_and_tried_again(tmp_path: Path) -> None:
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("model server not ready")
        return "model"

    @node(output_name="y")
    def use(model: str = Dep(flaky, scope="process")) -> str:
        return model

    with LocalEngine() as engine:
        pipeline = Pipeline([use], engine=engine)
        with pytest.raises(ConnectionError) as info:
            pipeline.run(inputs={})
        assert "plait: raised while setting up Dep(flaky, scope='process')" in info.value.__notes__
        assert pipeline.run(inputs={}) == {"y": "model"}
        assert pipeline.run(inputs={}) == {"y": "model"}
    assert len(attempts) == 2


def test_an_input_that_cannot_be_fingerprinted_is_named() -> None:
    import threading

    def load(settings: object) -> str:
        return "model"

    @node(output_name="y")
    def use(model: str = Dep(load, scope="process")) -> str:
        return model

    with LocalEngine() as engine, pytest.raises(DepError) as info:
        Pipeline([use], engine=engine).run(inputs={"settings": {"lock": threading.Lock()}})
    message = str(info.value)
    assert "Dep(load, scope='process') takes the pipeline input 'settings'" in message
    assert "at ['lock'] (type _thread.lock)" in message
    assert "kept once per value of its inputs" in message


def test_process_instance_is_what_an_engine_calls(tmp_path: Path) -> None:
    log = tmp_path / "log"

    def load(name: str) -> Iterator[str]:
        log.open("a").write(f"up {name}\n")
        yield name.upper()
        log.open("a").write(f"down {name}\n")

    dep = Dep(load, scope="process")
    owner = object.__new__(type("Owner", (), {}))
    assert process_deps.process_instance(dep, {"name": "a", "other": 1}, owner) == "A"
    assert process_deps.process_instance(dep, {"name": "a"}, owner) == "A"  # others ignored
    assert lines(log) == ["up a"]
    process_deps.release(owner)
    assert lines(log) == ["up a", "down a"]
    with pytest.raises(DepError, match=r"Dep\(load\) is not process-scoped"):
        process_deps.process_instance(Dep(load), {"name": "a"})


def test_instances_left_are_torn_down_when_the_process_exits(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        from plait import Pipeline, node
        from plait.deps import Dep

        def load():
            print("up", flush=True)
            yield "model"
            print("down", flush=True)

        @node(output_name="y")
        def use(x, model=Dep(load, scope="process")):
            return x

        if __name__ == "__main__":
            pipeline = Pipeline([use])   # the default engine, never closed
            pipeline.run(inputs={"x": 1})
            pipeline.map(inputs={"x": range(3)}, map_over="x")
            print("exiting", flush=True)
        """
    )
    path = tmp_path / "job.py"
    path.write_text(script)
    done = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["up", "exiting", "down"]
    assert done.stderr == ""


def test_node_calls_on_a_process_pool_use_the_worker_s_instance(tmp_path: Path) -> None:
    log = tmp_path / "log"
    pipeline = counted(log)
    with LocalEngine(node_executor="parallel", max_workers=2) as engine:
        got = [
            pipeline.with_engine(engine).run(inputs={"x": x, "model_name": "m"})["y"]
            for x in range(20)
        ]
        made = [line.split()[1] for line in lines(log) if line.startswith("up")]
    assert len(made) == len(set(made)), made  # one per process
    assert str(os.getpid()) in made  # the run sets its deps up here first
    assert [x for x, _, _ in got] == list(range(20))
    assert {str(pid) for _, _, pid in got} == set(made) - {str(os.getpid())}
    downs = sorted(line.split()[1] for line in lines(log) if line.startswith("down"))
    assert downs == sorted(made)  # the workers' at their exit, this one at close
