"""Sync node calls on executors: threads, processes, anything else."""

from __future__ import annotations

import contextvars
import hashlib
import inspect
import pickle
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import Future as JobFuture
from multiprocessing.reduction import ForkingPickler
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from plait.engine.local.plan import Step


def submit_call(
    executor: Executor, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> JobFuture[Any]:
    """Submit one call of ``step`` to ``executor``.

    A thread pool runs the function in a copy of the caller's context (its
    contextvars are visible). A process pool pickles with plain pickle, which
    cannot carry closures or lambdas: the node goes cloudpickled instead (once per
    step here, unpickled once per worker there). Other executors (loky, dask)
    cloudpickle the node by themselves.
    """
    if isinstance(executor, ThreadPoolExecutor):
        return executor.submit(contextvars.copy_context().run, step.func, *args, **kwargs)
    elsewhere = isinstance(executor, ProcessPoolExecutor) or getattr(
        executor, "other_processes", False
    )
    if step.sends_deps and elsewhere:  # each worker process uses its own instances
        from plait.engine.local.process_deps import by_reference

        args, kwargs = by_reference(step.node.deps, step.node.positional, args, kwargs)
        if not isinstance(executor, ProcessPoolExecutor):
            return executor.submit(call_with_instances, step.node, *args, **kwargs)
    if not isinstance(executor, ProcessPoolExecutor):
        return executor.submit(step.node.call_item, *args, **kwargs)
    if step.payload is None:
        blob = cloudpickle.dumps(step.node)
        step.payload = (blob, hashlib.blake2b(blob, digest_size=16).hexdigest())
    blob, digest = step.payload
    named = dict(zip(step.node.positional, args, strict=False)) | kwargs
    sent = Sent((args, kwargs), named, f"node {step.node.name!r}", "input")
    return executor.submit(call_pickled, digest, blob, sent)


class Sent:
    """Pickles as ``value``; if that fails, the error says which part, of what.

    Going to a worker, a process pool pickles a job's arguments on its own thread,
    and coming back the job's result: a value that cannot be pickled (a lock, a
    generator) fails there with a bare ``TypeError``. Wrapped in ``Sent``, the
    failure carries a note naming the node and the input or output (``parts``,
    by name). It arrives as the plain value, pickled once.
    """

    def __init__(self, value: Any, parts: dict[str, Any], where: str, role: str) -> None:
        self.value = value
        self.parts = parts
        self.where = where
        self.role = role

    def __reduce__(self) -> tuple[Any, ...]:
        try:
            return (pickle.loads, (bytes(ForkingPickler.dumps(self.value)),))
        except Exception as exc:
            exc.add_note(unpicklable_note(self.parts, self.where, self.role))
            raise


def unpicklable_note(parts: dict[str, Any], where: str, role: str) -> str:
    """``plait: ...`` naming which of ``parts`` cannot be pickled (all, if none alone)."""
    culprits = [name for name, value in parts.items() if not _picklable(value)] or list(parts)
    shown = ", ".join(f"{name!r} (a {type(parts[name]).__qualname__})" for name in culprits)
    way = "send it to" if role == "input" else "send it back from"
    hint = ""
    if any(inspect.isgenerator(parts[name]) for name in culprits):
        hint = "; a generator cannot be pickled: return a list"
    plural = "s" if len(culprits) > 1 else ""
    return (
        f"plait: {role}{plural} {shown} of {where} cannot be pickled to {way} a worker process"
        f"{hint}"
    )


def _picklable(value: Any) -> bool:
    try:
        ForkingPickler.dumps(value)
    except Exception:
        return False
    return True


def output_parts(outputs: tuple[str, ...], result: Any) -> dict[str, Any]:
    """A node's result by output name (as far as its shape allows)."""
    if len(outputs) > 1 and isinstance(result, tuple) and len(result) == len(outputs):
        return dict(zip(outputs, result, strict=True))
    return {outputs[0] if len(outputs) == 1 else "result": result}


_NODES: dict[str, Any] = {}  # in a worker: digest -> unpickled node


def call_pickled(digest: str, blob: bytes, sent: Any) -> Any:
    """In a worker process: call the node carried by ``blob`` with the arguments sent
    (``(args, kwargs)``, pickled as a :class:`Sent`)."""
    node = _NODES.get(digest)
    if node is None:
        node = pickle.loads(blob)
        if len(_NODES) >= 256:
            _NODES.pop(next(iter(_NODES)))
        _NODES[digest] = node
    args, kwargs = sent
    result = call_with_instances(node, *args, **kwargs)
    return Sent(result, output_parts(node.outputs, result), f"node {node.name!r}", "output")


def call_with_instances(node: Any, *args: Any, **kwargs: Any) -> Any:
    """In a worker: call ``node``, with this process's instance of each process-scoped
    dep sent by reference (:class:`~plait.engine.local.process_deps.InWorker`)."""
    if node.deps and any(dep.scope == "process" for dep in node.deps.values()):
        from plait.engine.local.process_deps import with_instances

        args, kwargs = with_instances(node.deps, args, kwargs)
    return node.call_item(*args, **kwargs)
