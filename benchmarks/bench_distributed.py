"""Maps on Ray and Dask, each beside the same work written by hand on that backend.

(a) 10,000 trivial items through 3 sync nodes: plait's map on a ``RayExecutor`` vs
    hand-written Ray tasks, and on a Dask client vs a hand-written ``client.map``,
    both with plait's batching (chunks of 1,250 items: a quarter of each worker's
    share, all submitted at once). Dask's hand-written chunks and replies go pickled,
    as plait's do (Dask walks lists it is given or gets back item by item); a row
    beside shows plain lists.
(b) 40 CPU-bound items of ~50 ms: each backend's speed-up over a sequential loop,
    beside ``LocalEngine(map_executor="parallel")``'s.

Both clusters have 2 CPUs: ``ray.init(num_cpus=2)`` and a ``LocalCluster`` of two
single-threaded worker processes. Ray listens on every network interface even when
told 127.0.0.1, so the Ray half runs in a child process inside a private network
namespace with only loopback (``unshare -n``), which prints its rows as JSON.
Round trips (one task submitted and its result back) are measured too.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench_map import fa, fb, fc
from harness import Row, measure, row
from plait import LocalEngine, Node, Pipeline, node

ITEMS = 10_000
CHUNK = 1250  # plait's chunk here: a quarter of each worker's share (plait.engine.local.clusters)
MAX_RATIO = 1.2
CPU_ITEMS = 40
CPU_SECONDS = 0.05
CPUS = 2
REPEATS = 3
MAP_REPEATS = 31  # the 10k-item maps take 15-50 ms each: more samples for a steadier median


def chain() -> list[Node]:
    """Three trivial sync nodes."""
    return [node(fa, output_name="a"), node(fb, output_name="b"), node(fc, output_name="c")]


def by_hand(chunk: list[int]) -> list[dict[str, int]]:
    """The same functions as plain calls, building the same dicts."""
    out = []
    for x in chunk:
        a = fa(x)
        b = fb(a)
        out.append({"a": a, "b": b, "c": fc(b)})
    return out


def spin(x: int, seconds: float = CPU_SECONDS) -> int:
    """About ``seconds`` of CPU work."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return x


def cpu_pipeline() -> Pipeline:
    return Pipeline([node(spin, output_name="y")])


def chunks(xs: list[int]) -> list[list[int]]:
    return [xs[i : i + CHUNK] for i in range(0, len(xs), CHUNK)]


def by_hand_pickled(blob: bytes) -> bytes:
    """:func:`by_hand` of a pickled chunk, pickled: Dask walks lists it is given or
    gets back item by item (plait's chunks and replies travel pickled too)."""
    return pickle.dumps(by_hand(pickle.loads(blob)))


def rows_for(
    backend: str,
    executor: Any,
    hand: Callable[[list[list[int]]], list[list[dict[str, int]]]],
    round_trip: Callable[[], object],
    naive: Callable[[list[list[int]]], list[list[dict[str, int]]]] | None = None,
) -> list[Row]:
    """The rows of one backend: round trip, (a) beside ``hand`` (and ``naive``, a
    plainer hand-written version, informally), (b) speed-ups."""
    xs = list(range(ITEMS))
    pipeline = Pipeline(chain(), engine=LocalEngine(map_executor=executor))
    expected = [{"a": x + 1, "b": x + 2, "c": x + 3} for x in xs]

    def plait_map() -> None:
        assert pipeline.map({"x": xs}, map_over="x") == expected

    def hand_map() -> None:
        assert [out for part in hand(chunks(xs)) for out in part] == expected

    trip = statistics.median(
        [measure(round_trip, repeats=1, number=20, warmup=0)[0] for _ in range(5)]
    )
    plait_s, hand_s = measure(plait_map, hand_map, repeats=MAP_REPEATS)
    extra = []
    if naive is not None:

        def naive_map() -> None:
            assert [out for part in naive(chunks(xs)) for out in part] == expected

        naive_s = measure(naive_map, repeats=MAP_REPEATS)[0]
        extra.append(
            row(f"{backend}: same, vs client.map of lists", plait_s * 1e3, naive_s * 1e3, "ms")
        )
    cpu = cpu_pipeline()
    items = {"x": range(CPU_ITEMS)}
    on_backend = cpu.with_engine(LocalEngine(map_executor=executor))
    backend_s, sequential_s = measure(
        lambda: on_backend.map(items, map_over="x"),
        lambda: cpu.map(items, map_over="x"),
        repeats=REPEATS,
    )
    return [
        row(f"{backend}: round trip, one task", trip * 1e3, trip * 1e3, "ms", overhead=False),
        row(
            f"{backend}: map 10k items x 3 nodes vs by hand",
            plait_s * 1e3,
            hand_s * 1e3,
            "ms",
            limit=("ratio", MAX_RATIO),
        ),
        *extra,
        row(
            f"{backend}: 40 x 50 ms CPU, speed-up",
            sequential_s / backend_s,
            1.0,
            "×",
            overhead=False,
        ),
    ]


def ray_rows() -> list[Row]:
    """In the namespace: the Ray rows."""
    import ray

    from plait import RayExecutor

    executor = RayExecutor(
        init_kwargs={"num_cpus": CPUS, "include_dashboard": False, "log_to_driver": False}
    )
    executor.cpus()  # starts Ray
    task = ray.remote(by_hand).options(max_retries=0)
    ping = ray.remote(lambda: None)

    def hand(parts: list[list[int]]) -> list[list[dict[str, int]]]:
        return list(ray.get([task.remote(part) for part in parts]))

    try:
        return rows_for("Ray", executor, hand, lambda: ray.get(ping.remote()))
    finally:
        executor.shutdown()


def dask_rows() -> list[Row]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=CPUS,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # its HTTP server: any free port
        ) as cluster,
        Client(cluster) as client,
    ):

        def hand(parts: list[list[int]]) -> list[list[dict[str, int]]]:
            blobs = [pickle.dumps(part) for part in parts]
            replies = client.gather(client.map(by_hand_pickled, blobs, pure=False))
            return [pickle.loads(reply) for reply in replies]

        def naive(parts: list[list[int]]) -> list[list[dict[str, int]]]:
            return list(client.gather(client.map(by_hand, parts, pure=False)))

        def round_trip() -> object:
            return client.submit(spin, 0, 0.0, pure=False).result()

        return rows_for("Dask", client, hand, round_trip, naive)


def parallel_rows() -> list[Row]:
    cpu = cpu_pipeline()
    items = {"x": range(CPU_ITEMS)}
    with LocalEngine(map_executor="parallel", max_workers=CPUS) as engine:
        on_pool = cpu.with_engine(engine)
        pool_s, sequential_s = measure(
            lambda: on_pool.map(items, map_over="x"),
            lambda: cpu.map(items, map_over="x"),
            repeats=REPEATS,
        )
    return [
        row(
            "LocalEngine parallel: 40 x 50 ms CPU, speed-up",
            sequential_s / pool_s,
            1.0,
            "×",
            overhead=False,
        )
    ]


def ray_in_namespace() -> list[Row]:
    """Run :func:`ray_rows` in a child inside a private network namespace."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    script = os.path.abspath(__file__)
    command = f"{ip} link set lo up && exec {sys.executable} {script} --ray-rows"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PLAIT_NETNS": "1"}
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", command],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(script),
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the Ray benchmark failed:\n{done.stderr[-3000:]}")
    rows: list[Row] = json.loads(done.stdout.strip().splitlines()[-1])
    return rows


def run() -> list[Row]:
    return [*ray_in_namespace(), *dask_rows(), *parallel_rows()]


if __name__ == "__main__":
    if sys.argv[1:] == ["--ray-rows"]:
        if os.environ.get("PLAIT_NETNS") != "1":
            sys.exit("run through bench_distributed.run(): Ray must start in a namespace")
        print(json.dumps(ray_rows()))
    else:
        for item in run():
            print(item)
