"""Clusters for the distributed parity suite, each started once per test session.

Ray listens on every network interface, even when told 127.0.0.1: tests that start
it run only inside a private network namespace with nothing but loopback, which
``make test-ray`` sets up (``unshare -n``) and announces with ``PLAIT_NETNS=1``.
Asked for anywhere else, the Ray fixture fails rather than skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """A Dask client of a LocalCluster of two single-threaded worker processes on
    loopback; a worker that dies fails its task at once (no retries elsewhere)."""
    dask = pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # its HTTP server: any free port
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="session")
def ray_executor() -> Iterator[Any]:
    """A RayExecutor on a local Ray with two CPUs, started inside the namespace."""
    if os.environ.get("PLAIT_NETNS") != "1":
        pytest.fail(
            "Ray tests start Ray, which listens on every network interface: run them "
            "with `make test-ray` (a private network namespace with only loopback)"
        )
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from plait import RayExecutor

    executor = RayExecutor(
        init_kwargs={"num_cpus": 2, "include_dashboard": False, "log_to_driver": False}
    )
    try:
        yield executor
    finally:
        executor.shutdown()


@pytest.fixture(scope="session")
def daft_engine() -> Iterator[Any]:
    """A DaftEngine on Daft's native runner (in this process, no server)."""
    pytest.importorskip("daft")
    from plait import DaftEngine

    with DaftEngine() as engine:
        yield engine


@pytest.fixture(scope="session")
def daft_ray_engine() -> Iterator[Any]:
    """A DaftEngine on Daft's Ray runner, on a local Ray started inside the namespace."""
    if os.environ.get("PLAIT_NETNS") != "1":
        pytest.fail(
            "Daft-on-Ray tests start Ray, which listens on every network interface: run "
            "them with `make test-ray` (a private network namespace with only loopback)"
        )
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from plait import DaftEngine

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with DaftEngine(runner="ray") as engine:
            yield engine
    finally:
        ray.shutdown()
