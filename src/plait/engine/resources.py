"""Per-run resources: set a plan's deps up before its nodes run, tear them down after.

A run (or one map item) gets a :class:`~plait.deps.DepScope`; its deps' values are
written into the run's slots, then the nodes run, then the deps are torn down in
reverse order of setup, also when a node failed or the run was cancelled. A map
sets its run-scoped deps up once, before its first item, in a scope its items'
scopes take them from.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from plait import bridge
from plait.deps import all_deps
from plait.engine.plan import Plan
from plait.errors import InputError

T = TypeVar("T")

if TYPE_CHECKING:
    from plait.dep_scope import DepScope


async def run_with_deps(
    plan: Plan,
    values: list[Any],
    run: Callable[[], Awaitable[None]],
    parent: DepScope | None = None,
) -> None:
    """``await run()`` with ``plan``'s deps (if any) set up in ``values`` around it."""
    if not plan.deps:
        await run()
        return
    from plait.dep_scope import DepScope  # loaded by the first run with deps

    scope = DepScope(plan.input_values(values), parent)
    try:
        resolved = await scope.resolve(dep for dep, _ in plan.deps)
        for dep, slot in plan.deps:
            values[slot] = resolved[dep]
        await run()
    except BaseException as exc:
        await scope.aclose(exc)
        raise
    await scope.aclose()


def run_inline_with_deps(
    plan: Plan, values: list[Any], run: Callable[[], None], parent: DepScope | None = None
) -> None:
    """:func:`run_with_deps` for a plan that runs without an event loop (all sync)."""
    if not plan.deps:
        run()
        return
    from plait.dep_scope import DepScope

    scope = DepScope(plan.input_values(values), parent)
    try:
        resolved = bridge.drive_inline(scope.resolve(dep for dep, _ in plan.deps))
        for dep, slot in plan.deps:
            values[slot] = resolved[dep]
        run()
    except BaseException as exc:
        bridge.drive_inline(scope.aclose(exc))
        raise
    bridge.drive_inline(scope.aclose())


def map_scope(plan: Plan, base: list[Any], mapped: Collection[str]) -> DepScope | None:
    """The scope a map's items share their run-scoped deps through, or None without
    any. Raises InputError before work starts if a run-scoped dep takes a mapped input."""
    shared = [dep for dep, _ in plan.deps if dep.scope == "run"]
    if not shared:
        return None
    for dep in all_deps(shared):  # run-scoped deps only use run-scoped ones (see Dep)
        for param in dep.params:
            if param in mapped:
                raise InputError(
                    f"{dep!r} takes {param!r}, which this map goes over, so it differs per "
                    f"item: declare it Dep(..., scope='item') to set it up once per item"
                )
    from plait.dep_scope import DepScope

    inputs = {name: value for name, value in plan.input_values(base).items() if name not in mapped}
    return DepScope(inputs)


async def setup_shared(scope: DepScope, plan: Plan) -> None:
    """Set the map's run-scoped deps up (on the map's loop, before its first item)."""
    await scope.resolve(dep for dep, _ in plan.deps if dep.scope == "run")


async def around_map(
    scope: DepScope, plan: Plan, batches: AsyncGenerator[T, None]
) -> AsyncGenerator[T, None]:
    """A map's stream of batches with its run-scoped deps set up before and torn down after."""
    try:
        await setup_shared(scope, plan)
        async for batch in batches:
            yield batch
    except BaseException as exc:
        await batches.aclose()
        await scope.aclose(None if isinstance(exc, GeneratorExit) else exc)
        raise
    await scope.aclose()


def around_inline_map(scope: DepScope, plan: Plan, items: Iterator[T]) -> Iterator[T]:
    """:func:`around_map` for a map that runs as plain calls (every dep is sync)."""
    try:
        bridge.drive_inline(setup_shared(scope, plan))
        yield from items
    except BaseException as exc:
        bridge.drive_inline(scope.aclose(None if isinstance(exc, GeneratorExit) else exc))
        raise
    bridge.drive_inline(scope.aclose())
