"""Per-run resources: set a plan's deps up before its nodes run, tear them down after.

A run (or one map item) gets a :class:`~plait.deps.DepScope`; its deps' values are
written into the run's slots, then the nodes run, then the deps are torn down in
reverse order of setup, also when a node failed or the run was cancelled. A map
sets its run-scoped deps up once, before its first item, in a scope its items'
scopes take them from.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any, TypeVar

from plait.bridge import ensure_loop, loop_optional
from plait.engine.local.plan import Plan

T = TypeVar("T")

if TYPE_CHECKING:
    from plait.engine.local.dep_scope import DepScope


async def run_with_deps(
    plan: Plan,
    values: list[Any],
    run: Callable[[], Awaitable[None]],
    parent: DepScope | None = None,
    owner: object | None = None,
) -> None:
    """``await run()`` with ``plan``'s deps (if any) set up in ``values`` around it.
    ``owner`` (the engine) keeps the process-scoped ones (see :mod:`.process_deps`)."""
    if not plan.deps:
        await run()
        return
    from plait.engine.local.dep_scope import DepScope  # loaded by the first run with deps

    scope = DepScope(plan.input_values(values), parent, owner=owner)
    try:
        resolved = await scope.resolve(dep for dep, _ in plan.deps)
        for dep, slot in plan.deps:
            values[slot] = resolved[dep]
        await run()
    except BaseException as exc:
        await scope.aclose(exc)
        raise
    await scope.aclose()


def map_scope(
    plan: Plan, base: list[Any], mapped: Collection[str], owner: object | None
) -> DepScope | None:
    """The scope a map's items share their run-scoped deps through, or None without any
    (the pipeline has checked that no run-scoped dep takes a mapped input)."""
    if not any(dep.scope == "run" for dep, _ in plan.deps):
        return None
    from plait.engine.local.dep_scope import DepScope

    inputs = {name: value for name, value in plan.input_values(base).items() if name not in mapped}
    return DepScope(inputs, owner=owner)


async def setup_shared(scope: DepScope, plan: Plan) -> None:
    """Set the map's run-scoped deps up (on the map's loop, before its first item)."""
    await scope.resolve(dep for dep, _ in plan.deps if dep.scope == "run")


@loop_optional
async def around_map(
    scope: DepScope, plan: Plan, items: AsyncGenerator[T, None], inline: bool
) -> AsyncGenerator[T, None]:
    """A map's stream of items with its run-scoped deps set up before and torn down after.
    ``inline``: the stream (and every dep) never needs an event loop."""
    if not inline:
        await ensure_loop()
    try:
        await setup_shared(scope, plan)
        async for item in items:
            yield item
    except BaseException as exc:
        await items.aclose()
        await scope.aclose(None if isinstance(exc, GeneratorExit) else exc)
        raise
    await scope.aclose()
