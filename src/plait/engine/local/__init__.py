"""The local engine: runs pipelines on this machine.

:class:`LocalEngine` orchestrates; the modules here are its parts: ``plan``
(compiled plans and their routes), ``scheduler`` (the dataflow scheduler),
``controls`` (retries, timeouts, limits), ``executors`` and ``async_executor``
(where sync work runs), ``mapping``, ``items``, ``launchers`` and ``processes``
(maps), ``clusters`` and ``ray_executor`` (maps and calls on Ray and Dask),
``resources``, ``dep_scope`` and ``process_deps`` (``Dep`` setup and teardown, and
the process-scoped instances this process keeps),
``observe``, ``hooks`` and ``signatures`` (cache and callbacks around nodes).
"""

from plait.engine.local.async_executor import AsyncExecutor
from plait.engine.local.engine import LocalEngine

__all__ = ["AsyncExecutor", "LocalEngine"]
