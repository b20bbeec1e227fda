"""Dep and DepScope: declaration, once-per-scope setup, concurrency, teardown, item scopes."""

# No `from __future__ import annotations` here: annotations are real objects, and
# the string-annotation path is exercised with explicit string annotations.

import asyncio
import contextlib
import functools
import gc
import pickle
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import pytest

from plait.bridge import drive_inline
from plait.deps import Dep, DepKind, all_deps, find_deps
from plait.engine.local.dep_scope import DepScope
from plait.errors import DepDefinitionError, DepError, InputError, MissingInputsError

if TYPE_CHECKING:
    from decimal import Decimal  # not defined at run time: string annotations must cope


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---------------------------------------------------------------- module-level dep functions


def make_config() -> dict[str, str]:
    return {"url": "db://local"}


def make_conn(config: Annotated[dict[str, str], Dep(make_config)]) -> str:
    return "conn:" + config["url"]


def uses_undefined_type(conn: "Annotated[Decimal, Dep(make_conn)]") -> str:
    return conn


def cycle_a(b: "Annotated[int, Dep(cycle_b)]") -> int:
    return b


def cycle_b(a: "Annotated[int, Dep(cycle_a)]") -> int:
    return a


def needs_missing(x: "Annotated[int, Dep(not_defined_anywhere)]") -> int:  # noqa: F821
    return x


# ------------------------------------------------------------------------------ declaration


def test_find_deps_by_default_and_by_annotated() -> None:
    def node_fn(
        path: str,
        config: dict[str, str] = Dep(make_config),
        conn: Annotated[str, Dep(make_conn)] = "unused",
        plain: Annotated[int, "metadata"] = 1,
    ) -> None: ...

    assert find_deps(node_fn) == {"config": Dep(make_config), "conn": Dep(make_conn)}
    assert find_deps(lambda x, y=1: None) == {}


def test_find_deps_in_string_annotation_with_an_undefined_type() -> None:
    assert find_deps(uses_undefined_type) == {"conn": Dep(make_conn)}
    assert Dep(uses_undefined_type).deps == {"conn": Dep(make_conn)}


def test_dep_given_both_ways_must_agree() -> None:
    def same(c: Annotated[str, Dep(make_conn)] = Dep(make_conn)) -> None: ...

    assert find_deps(same) == {"c": Dep(make_conn)}

    def conflicting(c: Annotated[str, Dep(make_conn)] = Dep(make_config)) -> None: ...

    with pytest.raises(DepDefinitionError, match=r"'c' is declared as Dep\(make_conn\) in its "):
        find_deps(conflicting)

    def two(c: Annotated[str, Dep(make_conn), Dep(make_config)]) -> None: ...

    with pytest.raises(DepDefinitionError, match=r"'c' has 2 Deps in its Annotated metadata"):
        find_deps(two)


def test_dep_equality_hash_and_repr() -> None:
    assert Dep(make_conn) == Dep(make_conn)
    assert hash(Dep(make_conn)) == hash(Dep(make_conn))
    assert Dep(make_conn) != Dep(make_config)
    assert Dep(make_config) != Dep(make_config, scope="item")
    assert len({Dep(make_conn), Dep(make_conn), Dep(make_config)}) == 2
    assert repr(Dep(make_conn)) == "Dep(make_conn)"
    assert repr(Dep(make_config, scope="item")) == "Dep(make_config, scope='item')"


def test_dep_params_deps_defaults_and_is_async() -> None:
    async def make_client(base_url: str, retries: int = 5, conn: str = Dep(make_conn)) -> str:
        return base_url

    dep = Dep(make_client)
    assert dep.params == ("base_url", "retries")
    assert dict(dep.defaults) == {"retries": 5}
    assert dict(dep.deps) == {"conn": Dep(make_conn)}
    assert dep.is_async
    assert not Dep(make_conn).is_async

    def on_top(client: str = Dep(make_client)) -> str:
        return client

    assert Dep(on_top).is_async  # needs the loop through the dep it uses


def test_dep_name_kind_and_inner_kind() -> None:
    def gen() -> Iterator[int]:
        yield 1

    async def agen() -> AsyncIterator[int]:
        yield 1

    async def coro() -> int:
        return 1

    kinds = {
        f: (Dep(f).kind, Dep(f).inner_kind)
        for f in (make_config, coro, gen, agen, contextlib.contextmanager(gen))
    }
    assert list(kinds.values()) == [
        (DepKind.SYNC, DepKind.SYNC),
        (DepKind.ASYNC, DepKind.ASYNC),
        (DepKind.GEN, DepKind.GEN),
        (DepKind.AGEN, DepKind.AGEN),
        (DepKind.SYNC, DepKind.GEN),  # a generator under @contextmanager
    ]
    assert Dep(functools.partial(make_conn)).name == "make_conn"


def test_dep_arguments_take_deps_then_inputs_then_defaults() -> None:
    def make(a: int, /, b: int = 2, *, c: int = 3, conn: str = Dep(make_conn)) -> None: ...

    dep = Dep(make)
    assert dep.arguments({"conn": "x"}, {"a": 1, "c": 30, "conn": "ignored"}) == (
        [1],
        {"c": 30, "conn": "x"},
    )

    # A positional-only parameter keeps its place: its default is passed.
    def pos(a: int = 1, b: int = 2, /) -> None: ...

    assert Dep(pos).arguments({}, {"b": 20}) == ([1, 20], {})


def test_dep_survives_pickling() -> None:
    dep = pickle.loads(pickle.dumps(Dep(make_conn)))
    assert dep == Dep(make_conn)
    assert (dep.name, dep.kind, dep.inner_kind) == ("make_conn", DepKind.SYNC, DepKind.SYNC)
    assert dep.deps == {"config": Dep(make_config)}


def test_dep_definition_errors() -> None:
    with pytest.raises(DepDefinitionError, match=r"Dep\(\) needs a function .* got int: 3"):
        Dep(3)  # type: ignore[call-overload]
    with pytest.raises(DepDefinitionError, match=r"scope must be 'run' .*, 'item' .* or 'process'"):
        Dep(make_config, scope="request")  # type: ignore[call-overload]
    with pytest.raises(DepDefinitionError, match=r"takes \*args, but .* wired by name"):
        Dep(lambda *args: None)
    with pytest.raises(DepDefinitionError, match=r"takes \*\*options"):
        Dep(lambda **options: None)
    assert issubclass(DepDefinitionError, TypeError)


def test_run_scoped_dep_cannot_use_an_item_scoped_one() -> None:
    def make_tx() -> str:
        return "tx"

    def make_pool(tx: str = Dep(make_tx, scope="item")) -> str:
        return tx

    with pytest.raises(
        DepDefinitionError,
        match=r"Dep\(make_pool\) is run-scoped but its parameter 'tx' is "
        r"Dep\(make_tx, scope='item'\).*Make it Dep\(make_pool, scope='item'\)",
    ):
        Dep(make_pool)
    assert Dep(make_pool, scope="item").deps == {"tx": Dep(make_tx, scope="item")}


def test_cycle_among_deps_is_an_error() -> None:
    with pytest.raises(DepDefinitionError, match=r"cycle: cycle_a -> cycle_b -> cycle_a"):
        Dep(cycle_a)


def test_undefined_dep_function_in_an_annotation_is_an_error() -> None:
    with pytest.raises(
        DepDefinitionError,
        match=r"cannot evaluate Dep\(not_defined_anywhere\) in the annotation of parameter 'x'",
    ):
        Dep(needs_missing)


def test_all_deps_lists_each_dep_once_after_the_deps_it_needs() -> None:
    def make_cache(conn: str = Dep(make_conn)) -> str:
        return conn

    order = all_deps([Dep(make_cache), Dep(make_conn), Dep(make_config)])
    assert order == [Dep(make_config), Dep(make_conn), Dep(make_cache)]
    assert all_deps([]) == []


# ------------------------------------------------------------------------- kinds of deps


def test_sync_async_generator_and_async_generator_deps() -> None:
    events: list[str] = []

    def plain() -> str:
        return "plain"

    async def coroutine() -> str:
        await asyncio.sleep(0)
        return "coroutine"

    def generator() -> Iterator[str]:
        events.append("gen up")
        yield "generator"
        events.append("gen down")

    async def async_generator() -> AsyncIterator[str]:
        await asyncio.sleep(0)
        events.append("agen up")
        yield "async generator"
        await asyncio.sleep(0)
        events.append("agen down")

    deps = [Dep(plain), Dep(coroutine), Dep(generator), Dep(async_generator)]

    async def main() -> None:
        scope = DepScope({})
        values = await scope.resolve(deps)
        assert [values[d] for d in deps] == ["plain", "coroutine", "generator", "async generator"]
        assert events == ["gen up", "agen up"]
        await scope.aclose()
        assert events == ["gen up", "agen up", "agen down", "gen down"]

    run(main())


def test_partials_and_callable_objects_are_dep_functions() -> None:
    class Factory:
        async def __call__(self, prefix: str) -> str:
            return prefix + "!"

    def join(a: str, b: str) -> str:
        return a + b

    class Settings:
        def __init__(self, prefix: str) -> None:
            self.prefix = prefix

        def upper(self, b: str) -> str:
            return self.prefix.upper() + b

    settings = Settings("x")
    made, joined = Dep(Factory()), Dep(functools.partial(join, "A"))
    built, method = Dep(Settings), Dep(settings.upper)
    assert (made.params, made.is_async) == (("prefix",), True)
    assert (joined.params, joined.is_async) == (("b",), False)
    assert (built.params, method.params) == (("prefix",), ("b",))
    assert method == Dep(settings.upper)  # a new bound method object, the same resource

    async def main() -> dict[Dep[Any], Any]:
        async with DepScope({"prefix": "hi", "b": "B"}) as scope:
            return await scope.resolve([made, joined, built, method])

    values = run(main())
    assert (values[made], values[joined], values[method]) == ("hi!", "AB", "XB")
    assert isinstance(values[built], Settings)
    assert values[built].prefix == "hi"


def test_contextmanager_and_decorated_generator_deps() -> None:
    events: list[str] = []

    @contextlib.contextmanager
    def make_file() -> Iterator[str]:
        events.append("file open")
        try:
            yield "file"
        except ValueError:
            events.append("file saw ValueError")
            raise
        finally:
            events.append("file closed")

    @contextlib.asynccontextmanager
    async def make_session() -> AsyncIterator[str]:
        await asyncio.sleep(0)
        yield "session"
        events.append("session closed")

    def logged(func: Any) -> Any:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            events.append("logged")
            return func(*args, **kwargs)

        return wrapper

    @logged
    def make_lock() -> Iterator[str]:
        yield "lock"
        events.append("lock released")

    file, session, lock = Dep(make_file), Dep(make_session), Dep(make_lock)
    assert (file.is_async, session.is_async, lock.is_async) == (False, True, False)

    scope = DepScope({})
    assert drive_inline(scope.resolve([file, lock])) == {file: "file", lock: "lock"}
    drive_inline(scope.aclose(ValueError("run failed")))
    assert events == ["file open", "logged", "lock released", "file saw ValueError", "file closed"]

    async def main() -> Any:
        async with DepScope({}) as scope:
            return (await scope.resolve([session]))[session]

    assert run(main()) == "session"
    assert events[-1] == "session closed"


def test_generator_that_does_not_yield_or_yields_twice() -> None:
    def no_yield() -> Iterator[int]:
        return
        yield

    async def agen_no_yield() -> AsyncIterator[int]:
        return
        yield

    def twice() -> Iterator[int]:
        yield 1
        yield 2

    async def agen_twice() -> AsyncIterator[int]:
        yield 1
        yield 2

    async def main() -> None:
        scope = DepScope({})
        with pytest.raises(DepError, match=r"Dep\(no_yield\): no_yield\(\) finished without"):
            await scope.resolve([Dep(no_yield)])
        with pytest.raises(DepError, match=r"agen_no_yield\(\) finished without yielding"):
            await scope.resolve([Dep(agen_no_yield)])
        await scope.aclose()

        scope = DepScope({})
        await scope.resolve([Dep(twice)])
        with pytest.raises(DepError, match=r"twice\(\) yielded more than once; .* exactly once"):
            await scope.aclose()

        scope = DepScope({})
        await scope.resolve([Dep(agen_twice)])
        with pytest.raises(DepError, match=r"agen_twice\(\) yielded more than once"):
            await scope.aclose()

    run(main())


# ------------------------------------------------------------------- once per scope, concurrency


def test_dep_asked_for_by_50_concurrent_tasks_is_set_up_once() -> None:
    calls = 0

    async def make_client() -> object:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return object()

    dep = Dep(make_client)

    async def main() -> None:
        scope = DepScope({})
        results = await asyncio.gather(*(scope.resolve([dep]) for _ in range(50)))
        assert calls == 1
        assert len({id(r[dep]) for r in results}) == 1
        assert (await scope.resolve([dep]))[dep] is results[0][dep]
        assert calls == 1
        await scope.aclose()

    run(main())


def test_failed_setup_is_raised_to_every_waiter_and_not_retried() -> None:
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        raise ConnectionError("db down")

    dep = Dep(flaky)

    async def main() -> None:
        scope = DepScope({})
        results = await asyncio.gather(
            *(scope.resolve([dep]) for _ in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, ConnectionError) for r in results)
        assert len({id(r) for r in results}) == 1
        with pytest.raises(ConnectionError):
            await scope.resolve([dep])
        assert calls == 1
        assert "plait: raised while setting up Dep(flaky)" in results[0].__notes__
        await scope.aclose()

    run(main())


def test_errors_of_sync_and_generator_deps_name_the_dep() -> None:
    def broken() -> int:
        raise KeyError("token")

    def broken_gen() -> Iterator[int]:
        raise ValueError("bad")
        yield 1

    scope = DepScope({})
    with pytest.raises(KeyError) as info:
        drive_inline(scope.resolve([Dep(broken)]))
    assert info.value.__notes__ == ["plait: raised while setting up Dep(broken)"]
    with pytest.raises(ValueError, match="bad") as info2:
        drive_inline(scope.resolve([Dep(broken_gen)]))
    assert info2.value.__notes__ == ["plait: raised while setting up Dep(broken_gen)"]
    drive_inline(scope.aclose())


def test_independent_deps_are_set_up_concurrently() -> None:
    # Each set-up waits for the other to have started: one after the other, the first
    # would time out (no timing bound to hold on a busy machine).
    a_started, b_started = asyncio.Event(), asyncio.Event()

    async def slow_a() -> str:
        a_started.set()
        await asyncio.wait_for(b_started.wait(), 5)
        return "a"

    async def slow_b() -> AsyncIterator[str]:
        b_started.set()
        await asyncio.wait_for(a_started.wait(), 5)
        yield "b"

    async def main() -> None:
        scope = DepScope({})
        values = await scope.resolve([Dep(slow_a), Dep(slow_b)])
        assert values == {Dep(slow_a): "a", Dep(slow_b): "b"}
        await scope.aclose()

    run(main())


def test_independent_deps_are_set_up_concurrently_without_timing() -> None:
    a_started, b_started = asyncio.Event(), asyncio.Event()

    async def make_a() -> str:
        a_started.set()
        await b_started.wait()  # only finishes if make_b runs meanwhile
        return "a"

    async def make_b() -> str:
        b_started.set()
        await a_started.wait()
        return "b"

    async def main() -> dict[Dep[Any], Any]:
        async with asyncio.timeout(5), DepScope({}) as scope:
            return await scope.resolve([Dep(make_a), Dep(make_b)])

    assert run(main()) == {Dep(make_a): "a", Dep(make_b): "b"}


def test_dep_of_dep_and_a_shared_sub_dep_set_up_once() -> None:
    calls: list[str] = []

    async def make_settings(env: str) -> dict[str, str]:
        calls.append("settings")
        await asyncio.sleep(0.01)
        return {"env": env}

    def make_db(settings: dict[str, str] = Dep(make_settings)) -> str:
        calls.append("db")
        return "db-" + settings["env"]

    async def make_cache(settings: Annotated[dict[str, str], Dep(make_settings)]) -> str:
        calls.append("cache")
        return "cache-" + settings["env"]

    async def main() -> None:
        scope = DepScope({"env": "prod"})
        values = await scope.resolve([Dep(make_db), Dep(make_cache)])
        assert values == {Dep(make_db): "db-prod", Dep(make_cache): "cache-prod"}
        assert calls.count("settings") == 1
        assert calls[0] == "settings"
        await scope.aclose()

    run(main())


def test_dep_parameters_come_from_inputs_with_defaults_and_positional_only() -> None:
    def make_client(base_url: str, /, retries: int = 3, *, timeout: float = 1.0) -> tuple[Any, ...]:
        return (base_url, retries, timeout)

    scope = DepScope({"base_url": "http://x", "timeout": 9.0, "unrelated": 1})
    values = drive_inline(scope.resolve([Dep(make_client)]))
    assert values[Dep(make_client)] == ("http://x", 3, 9.0)


def test_missing_input_for_a_dep_parameter() -> None:
    def make_client(base_url: str, token: str, timeout: float = 1.0) -> str:
        return base_url

    def make_api(client: str = Dep(make_client)) -> str:
        return client

    scope = DepScope({"token": "t"})
    with pytest.raises(MissingInputsError) as info:
        drive_inline(scope.resolve([Dep(make_api)]))
    message = str(info.value)
    assert message == (
        "Dep(make_client) needs 'base_url', a parameter of make_client(), but no such "
        "pipeline input was given. Pass it as a pipeline input: inputs={'base_url': ...}"
    )
    assert info.value.missing == {"base_url": ("Dep(make_client)",)}
    assert isinstance(info.value, InputError)

    scope = DepScope({})
    with pytest.raises(MissingInputsError, match=r"needs 'base_url', 'token', parameters of"):
        drive_inline(scope.resolve([Dep(make_client)]))


# --------------------------------------------------------------------------------- teardown


def test_teardown_runs_in_reverse_order_of_setup() -> None:
    events: list[str] = []

    def make_config() -> Iterator[str]:
        events.append("config up")
        yield "config"
        events.append("config down")

    async def make_pool(config: str = Dep(make_config)) -> AsyncIterator[str]:
        events.append("pool up")
        yield "pool"
        events.append("pool down")

    def make_session(pool: str = Dep(make_pool)) -> Iterator[str]:
        events.append("session up")
        yield "session"
        events.append("session down")

    def make_logger() -> Iterator[str]:
        events.append("logger up")
        yield "logger"
        events.append("logger down")

    async def main() -> None:
        scope = DepScope({})
        await scope.resolve([Dep(make_logger)])
        await scope.resolve([Dep(make_session)])
        await scope.aclose()
        await scope.aclose()  # idempotent

    run(main())
    assert events == [
        "logger up",
        "config up",
        "pool up",
        "session up",
        "session down",
        "pool down",
        "config down",
        "logger down",
    ]


def test_teardown_on_failure_runs_and_a_context_manager_sees_the_exception() -> None:
    seen: list[str] = []

    @contextlib.contextmanager
    def make_tx() -> Iterator[str]:
        try:
            yield "tx"
        except ValueError as exc:
            seen.append(f"rollback: {exc}")
            raise
        else:
            seen.append("commit")

    async def make_conn() -> AsyncIterator[str]:
        yield "conn"
        seen.append("conn closed")  # no try/finally needed: teardown code always runs

    async def main() -> None:
        async with DepScope({}) as scope:
            await scope.resolve([Dep(make_conn)])
            await scope.resolve([Dep(make_tx)])
            raise ValueError("node failed")

    with pytest.raises(ValueError, match="node failed"):
        run(main())
    assert seen == ["rollback: node failed", "conn closed"]


def test_a_dep_cannot_suppress_the_run_error() -> None:
    def swallow() -> Iterator[int]:
        with contextlib.suppress(ValueError):
            yield 1

    scope = DepScope({})
    drive_inline(scope.resolve([Dep(swallow)]))
    drive_inline(scope.aclose(ValueError("run failed")))  # no error of its own, none raised


def test_teardown_on_cancellation_of_a_task_using_the_deps() -> None:
    seen: list[str] = []

    async def make_conn() -> AsyncIterator[str]:
        yield "conn"
        seen.append("conn closed")

    async def main() -> None:
        scope = DepScope({})
        started = asyncio.Event()

        async def work() -> None:
            await scope.resolve([Dep(make_conn)])
            started.set()
            await asyncio.sleep(10)

        task = asyncio.create_task(work())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as info:
            await task
        await scope.aclose(info.value)

    run(main())
    assert seen == ["conn closed"]


def test_teardown_when_resolve_was_cancelled_mid_way() -> None:
    seen: list[str] = []

    async def make_fast() -> AsyncIterator[str]:
        try:
            yield "fast"
        finally:
            seen.append("fast torn down")

    async def make_slow() -> AsyncIterator[str]:
        try:
            await asyncio.sleep(10)
            yield "slow"
        finally:
            seen.append("slow setup cancelled")

    async def main() -> None:
        scope = DepScope({})
        task = asyncio.create_task(scope.resolve([Dep(make_fast), Dep(make_slow)]))
        for _ in range(5):
            await asyncio.sleep(0)  # let both setups start; fast one completes
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as info:
            await task
        assert seen == []  # the slow setup still runs: it belongs to the scope
        await scope.aclose(info.value)
        with pytest.raises(
            DepError, match=r"cannot use Dep\(make_fast\): its scope is already closed"
        ):
            await scope.resolve([Dep(make_fast)])

    run(main())
    assert seen == ["slow setup cancelled", "fast torn down"]


def test_every_teardown_runs_and_the_first_error_is_raised_with_the_others_noted() -> None:
    events: list[str] = []

    def first() -> Iterator[int]:
        yield 1
        events.append("first down")
        raise RuntimeError("first failed")

    async def second() -> AsyncIterator[int]:
        yield 2
        events.append("second down")

    def third() -> Iterator[int]:
        yield 3
        events.append("third down")
        raise OSError("third failed")

    async def main() -> None:
        scope = DepScope({})
        await scope.resolve([Dep(first)])
        await scope.resolve([Dep(second)])
        await scope.resolve([Dep(third)])
        await scope.aclose()

    with pytest.raises(OSError, match="third failed") as info:
        run(main())
    assert events == ["third down", "second down", "first down"]
    assert info.value.__notes__ == [
        "plait: raised while tearing down Dep(third)",
        "plait: also raised during teardown: RuntimeError: first failed (tearing down Dep(first))",
    ]


def test_a_cancelled_aclose_still_runs_every_teardown_then_reraises() -> None:
    events: list[str] = []
    in_teardown = asyncio.Event()

    def make_first() -> Iterator[int]:
        yield 1
        events.append("first down")

    async def make_slow_down() -> AsyncIterator[int]:
        yield 2
        in_teardown.set()
        try:
            await asyncio.sleep(10)
        finally:
            events.append("slow down interrupted")

    def make_last() -> Iterator[int]:
        yield 3
        events.append("last down")

    async def main() -> None:
        scope = DepScope({})
        for dep in (Dep(make_first), Dep(make_slow_down), Dep(make_last)):
            await scope.resolve([dep])
        closing = asyncio.create_task(scope.aclose())
        await in_teardown.wait()
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing

    run(main())
    assert events == ["last down", "slow down interrupted", "first down"]


def test_sync_function_returning_a_coroutine_is_awaited_and_closed_if_never_started() -> None:
    async def connect(url: str) -> str:
        await asyncio.sleep(0)
        return "connected to " + url

    def make_conn(url: str) -> Any:  # not async def, but returns a coroutine
        return connect(url)

    dep = Dep(make_conn)
    assert not dep.is_async  # it cannot be known before calling it

    async def main() -> None:
        async with DepScope({"url": "db"}) as scope:
            assert (await scope.resolve([dep]))[dep] == "connected to db"

        scope = DepScope({"url": "db"})
        resolving = asyncio.create_task(scope.resolve([dep]))
        await asyncio.sleep(0)  # resolve has started the setup task, which has not run yet
        await scope.aclose()
        with pytest.raises(asyncio.CancelledError):
            await resolving

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would fail here
        run(main())
        gc.collect()


def test_item_dep_that_fails_fails_only_its_item() -> None:
    def make_tx(item: int) -> int:
        if item == 1:
            raise LookupError(f"no row {item}")
        return item

    dep = Dep(make_tx, scope="item")

    async def main() -> None:
        root = DepScope({})
        items = [DepScope({"item": i}, parent=root) for i in range(3)]
        results = await asyncio.gather(*(s.resolve([dep]) for s in items), return_exceptions=True)
        assert results[0] == {dep: 0}
        assert results[2] == {dep: 2}
        assert isinstance(results[1], LookupError)
        assert results[1].__notes__ == ["plait: raised while setting up Dep(make_tx, scope='item')"]
        for scope in [*items, root]:
            await scope.aclose()

    run(main())


# ------------------------------------------------------------------------------ item scopes


def test_item_scopes_share_run_deps_and_own_item_deps() -> None:
    events: list[str] = []

    async def make_pool(dsn: str) -> AsyncIterator[dict[str, str]]:
        events.append("pool up")
        yield {"dsn": dsn}
        events.append("pool down")

    def make_tx(
        item: int, pool: Annotated[dict[str, str], Dep(make_pool)]
    ) -> Iterator[tuple[str, int]]:
        events.append(f"tx {item} up")
        yield (pool["dsn"], item)
        events.append(f"tx {item} down")

    pool, tx = Dep(make_pool), Dep(make_tx, scope="item")

    async def main() -> None:
        run_scope = DepScope({"dsn": "pg://db"})
        items = [DepScope({"dsn": "pg://db", "item": i}, parent=run_scope) for i in range(2)]
        values = await asyncio.gather(*(s.resolve([pool, tx]) for s in items))
        assert values[0][pool] is values[1][pool]
        assert [v[tx] for v in values] == [("pg://db", 0), ("pg://db", 1)]
        assert events.count("pool up") == 1
        for item_scope in items:
            await item_scope.aclose()
        assert "pool down" not in events
        await run_scope.aclose()

    run(main())
    assert events[-3:] == ["tx 0 down", "tx 1 down", "pool down"]


def test_item_scoped_dep_in_a_scope_without_parent_lives_there() -> None:
    def make_buffer() -> list[int]:
        return []

    dep = Dep(make_buffer, scope="item")
    scope = DepScope({})
    first = drive_inline(scope.resolve([dep]))[dep]
    assert drive_inline(scope.resolve([dep]))[dep] is first


# --------------------------------------------------------------------- no event loop needed


def test_all_sync_resolve_and_aclose_never_suspend() -> None:
    events: list[str] = []

    def make_config(env: str) -> dict[str, str]:
        return {"env": env}

    def make_conn(config: dict[str, str] = Dep(make_config)) -> Iterator[str]:
        events.append("up")
        try:
            yield "conn-" + config["env"]
        finally:
            events.append("down")

    def make_tx(conn: Annotated[str, Dep(make_conn)]) -> Iterator[str]:
        yield conn + "/tx"
        events.append("tx down")

    run_scope = DepScope({"env": "dev"})
    item_scope = DepScope({"env": "dev"}, parent=run_scope)
    tx = Dep(make_tx, scope="item")
    assert not tx.is_async
    values = drive_inline(item_scope.resolve([tx, Dep(make_conn)]))
    assert values == {tx: "conn-dev/tx", Dep(make_conn): "conn-dev"}
    drive_inline(item_scope.aclose())
    drive_inline(run_scope.aclose(ValueError("failed run")))
    assert events == ["up", "tx down", "down"]


def test_an_async_dep_without_an_event_loop_is_a_clear_error() -> None:
    async def make_client() -> int:
        return 1

    scope = DepScope({})
    with pytest.raises(DepError, match=r"Dep\(make_client\) is async and needs an event loop"):
        drive_inline(scope.resolve([Dep(make_client)]))
