"""Process-scoped deps: one instance per process (and per value of its inputs), kept.

``Dep(load_model, scope="process")`` is set up the first time a run in this process
needs it, then reused by every later item, map and run here: once in the main
process, once in each process-pool, Ray or Dask worker. :func:`process_instance` is
the whole interface, for any engine: "this process's instance of ``dep`` for these
inputs, made now if there is none". An instance is kept for its owners (the engines
whose runs asked for it) and torn down when the last of them calls :func:`release`
(``LocalEngine.close``); one asked for without an owner (as items in a worker
process do) stays until the process exits. At exit every instance left is torn down,
in reverse order of creation, in the main process and in ``multiprocessing`` workers
alike (through ``multiprocessing.util.Finalize``, which their exit runs).

Instances are told apart by the dep function's name and code fingerprint (the same in
every map: a closure or a ``__main__`` function shipped anew with each map is still
the same dep) and the fingerprints of the pipeline inputs that it and the deps it
needs take (``Dep(load_model)`` with ``model="small"`` and with ``model="large"`` are
two instances). Creating one holds a lock of its own, so
threads asking at once wait for the one that makes it; a failed setup is not kept
and the next request tries again.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from plait.bridge import drive_inline
from plait.deps import Dep, all_deps
from plait.engine.local.dep_scope import DepScope
from plait.errors import DepError, Unfingerprintable

#: (the dep's identity, ((input name, fingerprint), ...)) identifies an instance.
Key = tuple[object, tuple[tuple[str, bytes], ...]]


class _Instance:
    """One process-wide instance: its value and the scope that tears it down."""

    __slots__ = ("lock", "owners", "pinned", "scope", "value")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scope: DepScope | None = None  # set once the instance is made
        self.value: Any = None
        self.owners: weakref.WeakSet[Any] = weakref.WeakSet()
        self.pinned = False  # asked for without an owner: kept until the process exits


_instances: dict[Key, _Instance] = {}
_made: list[tuple[Key, _Instance]] = []  # in order of setup: torn down in reverse
#: (dep identity, id(instance)) -> the inputs it was made with, to send it by reference.
_origins: dict[tuple[object, int], dict[str, Any]] = {}
_lock = threading.Lock()
_exit_hook: object | None = None  # the multiprocessing finalizer, once registered


def process_instance(dep: Dep[Any], inputs: Mapping[str, Any], owner: object | None = None) -> Any:
    """This process's instance of the process-scoped ``dep`` for ``inputs``, set up now
    if there is none yet (with the process-scoped deps it needs).

    ``inputs`` are pipeline inputs by name (extra ones are ignored). ``owner`` (an
    engine) keeps the instance until ``release(owner)``; without one it stays until
    the process exits. Raises the setup's own error (with plait's note), and
    :class:`~plait.errors.DepError` when an input it takes cannot be fingerprinted.
    """
    if dep.scope != "process":
        raise DepError(f"{dep!r} is not process-scoped; only Dep(..., scope='process') is kept")
    taken = _inputs_taken(dep, inputs)
    key = (_identity(dep), _fingerprints(dep, taken))
    with _lock:
        instance = _instances.get(key)
        if instance is None:
            instance = _instances[key] = _Instance()
    with instance.lock:
        if instance.scope is None:  # not made yet, or its last setup failed
            _make(instance, key, dep, taken, owner)
        if owner is None:
            instance.pinned = True
        else:
            instance.owners.add(owner)
        return instance.value


def release(owner: object) -> None:
    """Drop ``owner``'s hold on its instances; tear down, newest first, those no one
    else holds. Raises the first teardown error, with a note for each other one."""
    with _lock:
        dropped = []
        for key, instance in reversed(_made):
            if owner in instance.owners:
                instance.owners.discard(owner)
                if not instance.owners and not instance.pinned:
                    dropped.append(instance)
                    _instances.pop(key, None)
                    _origins.pop((key[0], id(instance.value)), None)
        _made[:] = [(key, kept) for key, kept in _made if kept not in dropped]
    _tear_down(dropped)


def close_all() -> None:
    """Tear down every instance of this process, newest first (at exit)."""
    with _lock:
        dropped = [instance for _, instance in reversed(_made)]
        _instances.clear()
        _made.clear()
        _origins.clear()
    _tear_down(dropped)


class InWorker:
    """A process-scoped dep's instance sent to another process by reference: the node
    parameter that takes it (the node goes too) and the inputs it was made with."""

    __slots__ = ("param", "taken")

    def __init__(self, param: str, taken: dict[str, Any]) -> None:
        self.param = param
        self.taken = taken

    def __reduce__(self) -> tuple[Any, ...]:
        return (InWorker, (self.param, self.taken))


def by_reference(
    deps: Mapping[str, Dep[Any]],
    positional: Sequence[str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments of a call about to go to another process, each instance of a
    process-scoped dep in them (by parameter: ``deps``) replaced by an :class:`InWorker`,
    so the worker uses its own instead of a pickled copy of this one."""
    sent_args, sent_kwargs = list(args), dict(kwargs)

    def reference(param: str, dep: Dep[Any], value: Any) -> Any:
        taken = _origins.get((_identity(dep), id(value)))
        return value if taken is None else InWorker(param, taken)

    for param, dep in deps.items():
        if dep.scope != "process":
            continue
        if param in sent_kwargs:
            sent_kwargs[param] = reference(param, dep, sent_kwargs[param])
        elif param in positional and positional.index(param) < len(sent_args):
            at = positional.index(param)
            sent_args[at] = reference(param, dep, sent_args[at])
    return tuple(sent_args), sent_kwargs


def with_instances(
    deps: Mapping[str, Dep[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """In the worker: each :class:`InWorker` among the arguments of a call of a node
    whose deps are ``deps``, as this process's instance."""

    def own(value: Any) -> Any:
        if not isinstance(value, InWorker):
            return value
        return process_instance(deps[value.param], value.taken)

    return tuple(own(a) for a in args), {k: own(v) for k, v in kwargs.items()}


def _make(
    instance: _Instance, key: Key, dep: Dep[Any], taken: Mapping[str, Any], owner: object
) -> None:
    """Set ``dep`` up in a scope of its own (the process-scoped deps it needs come from
    this module, so each is one instance too)."""
    scope = DepScope(taken, owner=owner, making=dep)
    try:
        value = drive_inline(scope.resolve([dep]))[dep]  # sync: it never suspends
    except BaseException as exc:
        drive_inline(scope.aclose(exc))
        raise  # the instance stays unmade: the next request tries again
    instance.value, instance.scope = value, scope
    with _lock:
        _instances.setdefault(key, instance)  # made again after a release raced with it
        _made.append((key, instance))
        _origins[(key[0], id(value))] = dict(taken)
    _at_exit()


def _tear_down(instances: list[_Instance]) -> None:
    errors: list[BaseException] = []
    for instance in instances:
        with instance.lock:  # a request racing with this one makes a new instance
            scope, instance.scope, instance.value = instance.scope, None, None
        assert scope is not None  # only made ones are listed
        try:
            drive_inline(scope.aclose())
        except BaseException as exc:
            errors.append(exc)
    if errors:
        first = errors[0]
        for other in errors[1:]:
            first.add_note(f"plait: also raised during teardown: {type(other).__name__}: {other}")
        raise first


def _identity(dep: Dep[Any]) -> object:
    """The dep function's qualified name and code fingerprint: equal for the copies of
    one function that each map ships to a worker (the Dep itself when its code cannot
    be fingerprinted). Memoized on the Dep."""
    found: object = dep.__dict__.get("_process_identity")
    if found is None:
        from plait.cache.fingerprint import fingerprint_code, qualified_name, text

        try:
            found = text(qualified_name(dep.func)) + fingerprint_code(dep.func)
        except Unfingerprintable:
            found = dep
        dep.__dict__["_process_identity"] = found
    return found


def _inputs_taken(dep: Dep[Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline inputs ``dep`` and the deps it needs take, by name, sorted."""
    names = sorted({p for d in all_deps([dep]) for p in d.params if p in inputs})
    return {name: inputs[name] for name in names}


def _fingerprints(dep: Dep[Any], taken: Mapping[str, Any]) -> tuple[tuple[str, bytes], ...]:
    if not taken:
        return ()
    from plait.cache.fingerprint import fingerprint_value

    found = []
    for name, value in taken.items():
        try:
            found.append((name, fingerprint_value(value)))
        except Unfingerprintable as exc:
            at = " → ".join(exc.path)
            raise DepError(
                f"{dep!r} takes the pipeline input {name!r}, but plait cannot fingerprint "
                f"its value{' at ' + at if at else ''} (type {exc.type_name}). A "
                "process-scoped resource is kept once per value of its inputs, told apart by "
                "their fingerprints: pass a value plait can fingerprint (a str, a number, a "
                "tuple, a dataclass, an object with __cache_key__()), or make it "
                "Dep(..., scope='run')."
            ) from None
    return tuple(found)


def _at_exit() -> None:
    """Tear every instance down when this process exits: ``multiprocessing`` runs its
    finalizers at the exit of the main process (through ``atexit``) and of its
    workers (whose exit skips ``atexit``)."""
    global _exit_hook
    if _exit_hook is None:
        from multiprocessing import util

        _exit_hook = util.Finalize(None, close_all, exitpriority=10)


def _forget_in_child() -> None:
    """A forked child starts with no instances: those copied from its parent are the
    parent's to tear down, and the child makes its own."""
    global _exit_hook, _lock
    _instances.clear()
    _made.clear()
    _origins.clear()
    _lock = threading.Lock()
    _exit_hook = None


os.register_at_fork(after_in_child=_forget_in_child)
