"""fingerprint_value, fingerprint_code and cache_key: equal exactly when they should be,
stable across processes, and precise errors for what cannot be fingerprinted."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import functools
import importlib
import itertools
import json
import math
import operator
import os
import pathlib
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import uuid
import zoneinfo
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pydantic
import pytest

import plait
from plait import MemoryCache, Pipeline, node
from plait.cache import fingerprint_code, fingerprint_value
from plait.cache.fingerprint import MAX_DEPTH, cache_key
from plait.errors import Unfingerprintable

SRC = str(pathlib.Path(plait.__file__).resolve().parents[1])
ROOT = str(pathlib.Path(__file__).resolve().parents[2])

fp = fingerprint_value


def all_distinct(values: list[Any]) -> bool:
    digests = [fp(v) for v in values]
    return len(set(digests)) == len(digests)


# ---- values: what counts as equal ----------------------------------------------------------


def test_digest_is_bytes_of_fixed_size() -> None:
    assert isinstance(fp(1), bytes)
    assert len(fp(1)) == len(fp({"a": [1, 2]})) == 16


def test_numbers_of_different_types_differ() -> None:
    assert all_distinct(
        [1, 1.0, True, "1", b"1", 1 + 0j, decimal.Decimal(1), fractions.Fraction(1)]
    )
    assert all_distinct([0, 0.0, -0.0, False, None, "", b"", (), [], {}, set(), frozenset()])


def test_equal_values_agree() -> None:
    assert fp(10**30) == fp(10**30)
    assert fp(-5) != fp(5)
    assert fp(float("nan")) == fp(float("nan"))
    assert fp(0.1 + 0.2) != fp(0.3)
    assert fp("héllo") == fp("h" + "éllo")
    assert fp(decimal.Decimal("1.10")) != fp(decimal.Decimal("1.1"))  # exponents differ


def test_sequences_keep_order_type_and_boundaries() -> None:
    assert fp((1, 2)) != fp((2, 1))
    assert fp((1,)) != fp([1])
    assert fp(["ab", "c"]) != fp(["a", "bc"])
    assert fp([[1], 2]) != fp([1, [2]])
    assert fp(range(3)) != fp([0, 1, 2])


def test_dicts_are_order_free() -> None:
    assert fp({"a": 1, "b": 2}) == fp({"b": 2, "a": 1})
    assert fp({"a": "b"}) != fp({"b": "a"})
    assert fp({"a": 1}) != fp({"a": 1.0})
    assert fp({1: "x"}) != fp({"1": "x"})
    ordered = collections.OrderedDict
    assert fp(ordered(a=1, b=2)) != fp(ordered(b=2, a=1))  # OrderedDict equality is ordered
    assert fp(ordered(a=1)) != fp({"a": 1})


def test_sets_are_order_free() -> None:
    words = [f"w{i}" for i in range(50)]
    backwards = set()
    for word in words[::-1]:  # another insertion history, often another iteration order
        backwards.add(word)
    assert fp(set(words)) == fp(backwards)
    assert fp({1, 2}) != fp({1, 3})
    assert fp({1, 2}) != fp(frozenset({1, 2}))
    assert fp({frozenset({1}), frozenset({2})}) == fp({frozenset({2}), frozenset({1})})


def test_nested_containers() -> None:
    def build(inner: int) -> Any:
        return [{"a": (1, {inner, 9}), "b": [None, {"c": b"x"}]}, frozenset({("k", inner)})]

    assert fp(build(2)) == fp(build(2))
    assert fp(build(2)) != fp(build(3))


def test_shared_references_are_not_cycles() -> None:
    item = [1, 2]
    assert fp([item, item]) == fp([[1, 2], [1, 2]])


def test_builtin_subclasses_carry_their_type() -> None:
    point = collections.namedtuple("point", "x y")
    assert fp(point(1, 2)) == fp(point(1, 2))
    assert fp(point(1, 2)) != fp((1, 2))
    assert fp(collections.defaultdict(list, a=[1])) != fp({"a": [1]})
    assert fp(collections.defaultdict(list)) != fp(collections.defaultdict(set))


def test_stdlib_values() -> None:
    moment = dt.datetime(2024, 5, 1, 12, 30)
    assert fp(moment) == fp(dt.datetime(2024, 5, 1, 12, 30))
    assert all_distinct(
        [
            moment,
            moment.replace(tzinfo=dt.UTC),
            moment.replace(tzinfo=dt.timezone(dt.timedelta(hours=2))),
            moment.date(),
            moment.time(),
            dt.timedelta(days=1),
            dt.timedelta(seconds=86400 - 1),
        ]
    )
    assert fp(pathlib.PurePosixPath("a/b")) != fp(pathlib.PureWindowsPath("a/b"))
    assert fp(pathlib.Path("a/b")) == fp(pathlib.Path("a") / "b")
    assert fp(uuid.UUID(int=1)) == fp(uuid.UUID(int=1)) != fp(uuid.UUID(int=2))


class Color(enum.Enum):
    RED = 1
    BLUE = 2


class Shade(enum.Enum):
    RED = 1


def test_times_with_and_without_a_timezone_differ() -> None:
    utc, plus_one = dt.UTC, dt.timezone(dt.timedelta(hours=1))
    assert fp(dt.time(12)) != fp(dt.time(12, tzinfo=utc))
    assert all_distinct(
        [
            dt.time(12),
            dt.time(12, tzinfo=utc),
            dt.time(12, tzinfo=plus_one),
            dt.time(12, tzinfo=zoneinfo.ZoneInfo("UTC")),
            dt.time(12, fold=1),
            dt.time(12, 0, 0, 1),
        ]
    )
    assert all_distinct(
        [
            dt.datetime(2024, 1, 1, 12),
            dt.datetime(2024, 1, 1, 12, tzinfo=utc),
            dt.datetime(2024, 1, 1, 12, tzinfo=zoneinfo.ZoneInfo("UTC")),
            dt.datetime(2024, 1, 1, 13, tzinfo=plus_one),  # the same instant as 12:00 UTC
        ]
    )
    same_utc = dt.timezone(dt.timedelta(0), "UTC")
    assert fp(dt.time(12, tzinfo=utc)) == fp(dt.time(12, tzinfo=same_utc))


class A:
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        depth: int

        def scaled(self, x: int) -> int:
            return x * self.depth

    class Mode(enum.Enum):
        FAST = 1


class B:
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        depth: int

        def scaled(self, x: int) -> int:
            return x * self.depth

    class Mode(enum.Enum):
        FAST = 1


def test_nested_classes_of_one_name_differ_as_values() -> None:
    assert A.Cfg.__name__ == B.Cfg.__name__
    assert fp(A.Cfg(1)) != fp(B.Cfg(1))
    assert fp(A.Mode.FAST) != fp(B.Mode.FAST)
    assert fp([A.Cfg(1)]) != fp([B.Cfg(1)])


def test_nested_classes_of_one_name_differ_as_code_references() -> None:
    def make(cls: Any) -> Callable[[int], Any]:
        return lambda x: cls(x)

    assert fingerprint_code(A.Cfg) != fingerprint_code(B.Cfg)
    assert fingerprint_code(make(A.Cfg)) != fingerprint_code(make(B.Cfg))
    assert fingerprint_code(make(A.Cfg)) == fingerprint_code(make(A.Cfg))
    assert fingerprint_code(A.Cfg(2).scaled) != fingerprint_code(B.Cfg(2).scaled)
    # The plain functions have one code and compute the same thing: one fingerprint.
    assert fingerprint_code(A.Cfg.scaled) == fingerprint_code(B.Cfg.scaled)
    assert fingerprint_code(make(A.Mode)) != fingerprint_code(make(B.Mode))


def test_enums() -> None:
    assert fp(Color.RED) == fp(Color.RED)
    assert all_distinct([Color.RED, Color.BLUE, Shade.RED, 1])


@dataclasses.dataclass(frozen=True)
class Settings:
    depth: int
    names: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class OtherSettings:
    depth: int
    names: tuple[str, ...] = ()


@dataclasses.dataclass
class Lazy:
    x: int
    derived: int = dataclasses.field(init=False)


def test_dataclasses() -> None:
    assert fp(Settings(3, ("a",))) == fp(Settings(3, ("a",)))
    assert fp(Settings(3, ("a",))) != fp(Settings(4, ("a",)))
    assert fp(Settings(3)) != fp(OtherSettings(3))  # the class counts, not only the fields
    unset = Lazy(1)
    assert fp(unset) == fp(Lazy(1))  # a field never set is not an error
    done = Lazy(1)
    done.derived = 2
    assert fp(done) != fp(unset)


class Model(pydantic.BaseModel):
    name: str
    sizes: list[int] = []


class OtherModel(pydantic.BaseModel):
    name: str
    sizes: list[int] = []


class Open(pydantic.BaseModel, extra="allow"):
    name: str


def test_pydantic_models() -> None:
    assert fp(Model(name="a", sizes=[1])) == fp(Model(name="a", sizes=[1]))
    assert fp(Model(name="a", sizes=[1])) != fp(Model(name="a", sizes=[2]))
    assert fp(Model(name="a")) != fp(OtherModel(name="a"))
    assert fp(Open(name="a", more=1)) != fp(Open(name="a", more=2))  # extra fields count


def test_numpy_arrays() -> None:
    values = np.arange(6, dtype=np.int64)
    assert fp(values) == fp(np.arange(6, dtype=np.int64))
    assert all_distinct(
        [
            values,
            values.astype(np.int32),  # dtype matters
            values.astype(np.float64),
            values.reshape(2, 3),  # same bytes, other shape
            values.reshape(3, 2),
            values[::-1].copy(),
            np.arange(7, dtype=np.int64),
        ]
    )
    grid = np.arange(12).reshape(3, 4)
    assert fp(grid[:, ::2]) == fp(np.ascontiguousarray(grid[:, ::2]))  # views: their values
    assert fp(grid.T) == fp(grid.T.copy())
    assert fp(grid.T) != fp(grid)


NAN = float("nan")
NEG_NAN = -NAN
#: A quiet NaN with another payload (bits 0x7ff8000000000001).
PAYLOAD_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000001))[0]


def test_nan_signs_and_payloads_differ() -> None:
    assert math.copysign(1, NEG_NAN) == -1.0  # the values behave differently
    assert all_distinct([NAN, NEG_NAN, PAYLOAD_NAN, 0.0, -0.0, math.inf, -math.inf])
    assert fp(NAN) == fp(float("nan"))  # the same bits agree
    assert fp(struct.unpack("<d", struct.pack("<d", NEG_NAN))[0]) == fp(NEG_NAN)
    assert fp([NAN]) != fp([NEG_NAN])
    assert all_distinct(
        [complex(NAN, 0), complex(NEG_NAN, 0), complex(0, NAN), complex(0, NEG_NAN)]
    )
    assert all_distinct([complex(0.0, 0.0), complex(-0.0, 0.0), complex(0.0, -0.0)])
    assert fp(decimal.Decimal("NaN")) != fp(decimal.Decimal("-NaN"))


def test_nan_signs_differ_in_numpy_and_pandas() -> None:
    for dtype in ("f2", "f4", "f8", "c8", "c16"):
        assert fp(np.array([NAN], dtype=dtype)) != fp(np.array([NEG_NAN], dtype=dtype)), dtype
        assert fp(np.array([0.0], dtype=dtype)) != fp(np.array([-0.0], dtype=dtype)), dtype
        scalar = np.dtype(dtype).type
        assert fp(scalar(NAN)) != fp(scalar(NEG_NAN)), dtype
    assert fp(np.array([PAYLOAD_NAN])) != fp(np.array([NAN]))
    assert fp(np.array([NAN], dtype=object)) != fp(np.array([NEG_NAN], dtype=object))
    assert fp(pd.Series([NAN])) != fp(pd.Series([NEG_NAN]))
    assert fp(pd.Index([NAN])) != fp(pd.Index([NEG_NAN]))
    # Nullable and sparse floats: pandas' own hashing equates -0.0 and 0.0.
    for dtype in ("Float64", "Float32", "Sparse[float64]"):
        assert fp(pd.Series([-0.0, 1.0], dtype=dtype)) != fp(pd.Series([0.0, 1.0], dtype=dtype))
        assert fp(pd.Series([-0.0, 1.0], dtype=dtype)) == fp(pd.Series([-0.0, 1.0], dtype=dtype))
    nan = pd.arrays.FloatingArray(np.array([NAN, 1.0]), np.array([False, False]))
    neg = pd.arrays.FloatingArray(np.array([NEG_NAN, 1.0]), np.array([False, False]))
    missing = pd.arrays.FloatingArray(np.array([NAN, 1.0]), np.array([True, False]))
    assert all_distinct([pd.Series(nan), pd.Series(neg), pd.Series(missing)])


def test_negative_nan_never_gets_the_cached_result_of_nan() -> None:
    @node(output_name="sign")
    def sign(x: float) -> float:
        return math.copysign(1, x)

    pipeline = Pipeline([sign], cache=MemoryCache())
    assert pipeline.run(inputs={"x": NAN}) == {"sign": 1.0}
    assert pipeline.run(inputs={"x": NEG_NAN}) == {"sign": -1.0}
    assert pipeline.run(inputs={"x": complex(NEG_NAN, 0).real}) == {"sign": -1.0}


def test_numpy_scalars_dtypes_and_object_arrays() -> None:
    assert all_distinct([np.float64(1.0), np.float32(1.0), np.int64(1), 1.0, 1])
    assert fp(np.dtype("f8")) != fp(np.dtype("f4"))
    assert fp(np.array([1, "a"], dtype=object)) == fp(np.array([1, "a"], dtype=object))
    assert fp(np.array([1, "a"], dtype=object)) != fp(np.array(["1", "a"], dtype=object))
    with pytest.raises(Unfingerprintable, match="ndarray subclasses"):
        fp(np.ma.array([1, 2], mask=[0, 1]))


def frame(**changes: Any) -> pd.DataFrame:
    data = {"a": [1, 2, 3], "b": ["x", "y", "z"], "c": [0.5, 1.5, np.nan]}
    data.update(changes)
    return pd.DataFrame(data)


def test_pandas_frames() -> None:
    assert fp(frame()) == fp(frame())
    assert all_distinct(
        [
            frame(),
            frame(a=[1, 2, 4]),
            frame(b=["x", "y", "Z"]),
            frame(a=[1.0, 2.0, 3.0]),  # dtype
            frame(b=[1, 2, 3]).astype({"b": object}),
            frame(b=["1", "2", "3"]),  # 1 and "1" differ in object columns
            frame()[["b", "a", "c"]],  # column order
            frame().set_axis([10, 11, 12]),  # index
            frame().rename(columns={"a": "A"}),
            frame(b=pd.Categorical(["x", "y", "z"])),
        ]
    )
    assert fp(frame()["a"]) != fp(frame()["a"].rename("other"))
    assert fp(frame()["a"]) != fp(frame()["a"].to_numpy())


def test_pandas_extension_types_and_scalars() -> None:
    assert fp(pd.Series([1, None], dtype="Int64")) == fp(pd.Series([1, None], dtype="Int64"))
    assert fp(pd.Series([1, None], dtype="Int64")) != fp(pd.Series([1, 2], dtype="Int64"))
    stamps = pd.Series(pd.date_range("2024-01-01", periods=3, tz="UTC"))
    assert fp(stamps) != fp(stamps.dt.tz_convert("Europe/Paris"))
    assert fp(pd.Timestamp("2024-01-01")) != fp(pd.Timestamp("2024-01-02"))
    assert all_distinct([pd.NA, pd.NaT, None, float("nan")])


class Client:
    """A stand-in for an object holding a connection: only its settings matter."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()

    def __cache_key__(self) -> Any:
        return ("client", self.url)


class BadKey:
    def __cache_key__(self) -> Any:
        return threading.Lock()


class Opaque:
    """Holds something that cannot be fingerprinted, under a plain attribute."""

    def __init__(self) -> None:
        self.x = 1
        self.inner = Plain(2, "b")
        self.inner.guard = threading.Lock()


class Plain:
    """A plain class: its instances count by their type and their state."""

    def __init__(self, threshold: int, name: str, _private: float = 0.5) -> None:
        self.threshold = threshold
        self.name = name
        self._private = _private


class PlainTwin:
    def __init__(self, threshold: int, name: str, _private: float = 0.5) -> None:
        self.threshold = threshold
        self.name = name
        self._private = _private


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a: Any, b: Any = None) -> None:
        self.a = a
        if b is not None:
            self.b = b


class SlottedChild(Slotted):
    __slots__ = ("c",)

    def __init__(self, a: Any, c: Any) -> None:
        super().__init__(a)
        self.c = c


class Empty:
    pass


class OwnThread(threading.Thread):
    """A user class on a library base: the base may hold state plait cannot see."""


def test_cache_key_method() -> None:
    assert fp(Client("http://a")) == fp(Client("http://a"))
    assert fp(Client("http://a")) != fp(Client("http://b"))
    assert fp(Client("http://a")) != fp(("client", "http://a"))  # the class counts too
    assert fp({"c": Client("x")}) == fp({"c": Client("x")})
    with pytest.raises(Unfingerprintable) as info:
        fp({"k": BadKey()}, where="input 'k'")
    assert info.value.path == ("input 'k'", "['k']", ".__cache_key__()")


def test_unfingerprintable_names_the_path() -> None:
    value = {"model": {"layers": [1, threading.Lock()]}}
    with pytest.raises(Unfingerprintable) as info:
        fp(value, where="input 'config'")
    error = info.value
    assert error.type_name == "_thread.lock"
    assert error.path == ("input 'config'", "['model']", "['layers']", "[1]")
    message = str(error)
    assert "at input 'config' → ['model'] → ['layers'] → [1]" in message
    assert "type _thread.lock" in message
    assert "never falls back to repr() or pickle" in message
    assert "@node(cache=False)" in message
    assert "Define __cache_key__() on _thread.lock" not in message  # not the user's class


@dataclasses.dataclass
class Holder:
    conn: Any


def test_unfingerprintable_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        with pytest.raises(Unfingerprintable, match=r"type socket\.socket\) at \.conn"):
            fp(Holder(sock))


def test_plain_objects_count_by_type_and_state() -> None:
    assert fp(Plain(3, "a")) == fp(Plain(3, "a"))
    assert all_distinct(
        [
            Plain(3, "a"),
            Plain(4, "a"),
            Plain(3, "b"),
            Plain(3, "a", _private=0.7),  # attributes starting with _ count too
            PlainTwin(3, "a"),  # another class with the same state
            {"threshold": 3, "name": "a", "_private": 0.5},
            Empty(),
        ]
    )
    later = Plain(3, "a")
    del later.name
    later.name = "a"  # set in another order: the same state
    assert fp(later) == fp(Plain(3, "a"))
    added = Plain(3, "a")
    added.extra = None  # type: ignore[attr-defined]
    assert fp(added) != fp(Plain(3, "a"))
    assert fp(Empty()) == fp(Empty())
    assert fp([Plain(1, "x"), {"k": Plain(2, "y")}]) == fp([Plain(1, "x"), {"k": Plain(2, "y")}])
    assert fp(Plain(1, Plain(2, "inner"))) != fp(Plain(1, Plain(2, "other")))  # type: ignore[arg-type]


def test_slotted_objects_count_by_their_slots() -> None:
    assert fp(Slotted(1, 2)) == fp(Slotted(1, 2))
    assert all_distinct([Slotted(1, 2), Slotted(1, 3), Slotted(1), SlottedChild(1, 2)])
    assert fp(SlottedChild(1, [2])) == fp(SlottedChild(1, [2]))


def test_plain_objects_fingerprint_alike_in_another_process() -> None:
    code = (
        "from tests.cache.test_fingerprint import Plain, Slotted\n"
        "from plait.cache.fingerprint import fingerprint_value as fp\n"
        "print(fp([Plain(3, 'a'), Slotted(1, (2.5, None))]).hex())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert done.stdout.strip() == fp([Plain(3, "a"), Slotted(1, (2.5, None))]).hex()


def test_a_plain_object_holding_something_unfingerprintable_names_the_path() -> None:
    with pytest.raises(Unfingerprintable) as info:
        fp([Opaque()], where="input 'config'")
    error = info.value
    assert error.type_name == "_thread.lock"
    assert error.path == ("input 'config'", "[0]", ".inner", ".guard")
    message = str(error)
    assert "at input 'config' → [0] → .inner → .guard" in message
    # The advice names the innermost plain class holding it.
    assert f"Define __cache_key__() on {__name__}.Plain, which holds it" in message


def test_objects_of_library_classes_and_cycles_stay_unfingerprintable() -> None:
    with pytest.raises(Unfingerprintable, match=r"type tests\.cache\.test_fingerprint\.OwnThread"):
        fp(OwnThread())
    looped = Plain(1, "a")
    looped.name = looped  # type: ignore[assignment]
    with pytest.raises(Unfingerprintable, match="contains itself") as info:
        fp(looped)
    assert "which holds it" not in str(info.value)


@pytest.mark.parametrize(
    "value",
    [(x for x in ()), iter([1]), memoryview(b"x"), object(), threading.Event()],
    ids=["generator", "iterator", "memoryview", "object", "event"],
)
def test_other_objects_are_unfingerprintable(value: Any) -> None:
    with pytest.raises(Unfingerprintable, match="not one plait can fingerprint"):
        fp(value)


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def test_depth_limit() -> None:
    assert fp(nested(MAX_DEPTH - 1)) == fp(nested(MAX_DEPTH - 1))
    with pytest.raises(
        Unfingerprintable, match=f"nested more than {MAX_DEPTH} levels deep"
    ) as info:
        fp(nested(MAX_DEPTH + 5), where="input 'tree'")
    message = str(info.value)
    assert "Define __cache_key__" not in message  # the shape is the problem, not the type
    assert message.endswith("Opt the node out of caching with @node(cache=False).")


def levels(n: int, make: Callable[[Any], Any] = lambda inner: [inner]) -> Any:
    """``n`` containers nested in one another (``make`` wraps one level)."""
    value: Any = 0
    for _ in range(n):
        value = make(value)
    return value


def test_depth_limit_exactly_at_its_boundary() -> None:
    assert isinstance(fp(levels(MAX_DEPTH)), bytes)  # MAX_DEPTH levels: allowed
    with pytest.raises(Unfingerprintable, match=f"nested more than {MAX_DEPTH} levels deep"):
        fp(levels(MAX_DEPTH + 1))
    for make in (tuple_of, dict_of, frozenset_of):
        assert isinstance(fp(levels(MAX_DEPTH, make)), bytes)
        with pytest.raises(Unfingerprintable, match="levels deep"):
            fp(levels(MAX_DEPTH + 1, make))


def tuple_of(inner: Any) -> Any:
    return (inner,)


def dict_of(inner: Any) -> Any:
    return {"k": inner}


def frozenset_of(inner: Any) -> Any:
    return frozenset([inner])


def test_depth_limit_after_sibling_containers() -> None:
    """Leaving a container gives its level back: siblings never add up."""
    siblings: list[Any] = [[], (), {}, {1}, frozenset([2]), [[[]]], Settings(1, ("a",))]
    # The outer list is one level, so the last item may have MAX_DEPTH - 1.
    assert isinstance(fp([*siblings, levels(MAX_DEPTH - 1)]), bytes)
    assert isinstance(fp({"s": siblings, "deep": levels(MAX_DEPTH - 1)}), bytes)
    assert isinstance(fp((levels(MAX_DEPTH - 1), levels(MAX_DEPTH - 1))), bytes)
    assert isinstance(fp(frozenset([levels(MAX_DEPTH - 1, tuple_of), ()])), bytes)
    # Siblings at every level of a deep value.
    wide = levels(MAX_DEPTH - 1, lambda inner: [[], {}, (1,), inner])
    assert isinstance(fp(wide), bytes)
    with pytest.raises(Unfingerprintable, match="levels deep"):
        fp([*siblings, levels(MAX_DEPTH)])
    with pytest.raises(Unfingerprintable, match="levels deep"):
        fp(levels(MAX_DEPTH, lambda inner: [[], {}, (1,), inner]))
    # A failed attempt elsewhere leaves no level behind either.
    failing = {"lock": threading.Lock()}
    with pytest.raises(Unfingerprintable):
        fp([failing, levels(MAX_DEPTH - 1)])
    assert isinstance(fp([levels(MAX_DEPTH - 1)]), bytes)


def test_cycles() -> None:
    loop: list[Any] = [1]
    loop.append({"back": loop})
    with pytest.raises(Unfingerprintable, match="contains itself") as info:
        fp(loop)
    assert info.value.path == ("[1]", "['back']")


def test_recursion_error_on_a_deep_stack_becomes_unfingerprintable() -> None:
    def descend(n: int) -> bytes:
        return fp(nested(MAX_DEPTH - 1)) if n == 0 else descend(n - 1)

    room = sys.getrecursionlimit() - len(_stack()) - 20
    with pytest.raises(Unfingerprintable, match="nested too deeply to walk"):
        descend(room - 50)


def _stack() -> list[Any]:
    frames = []
    frame = sys._getframe()
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back  # type: ignore[assignment]
    return frames


def test_cache_key() -> None:
    key = cache_key(b"ab", b"c")
    assert len(key) == 32
    assert int(key, 16) >= 0
    assert key == cache_key(b"ab", b"c")
    assert key != cache_key(b"a", b"bc")  # part boundaries count
    assert key != cache_key(b"c", b"ab")  # and their order


# ---- stable across processes -------------------------------------------------------------


def samples() -> dict[str, Any]:
    """Values whose fingerprints must not depend on the process or PYTHONHASHSEED."""
    return {
        "scalars": [1, 1.5, "s", b"b", None, True, 2**70],
        "dict": {f"k{i}": i for i in range(30)},
        "set": {f"e{i}" for i in range(30)},
        "frozensets": frozenset({frozenset({"a", "b"}), ("t", 1)}),
        "dataclass": Settings(2, ("x", "y")),
        "model": Model(name="m", sizes=[1, 2]),
        "enum": Color.BLUE,
        "when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "array": np.arange(12, dtype=np.float32).reshape(3, 4),
        "frame": frame(b=pd.Categorical(["x", "y", "x"])),
        "key": Client("http://x"),
    }


def code_samples() -> dict[str, Callable[..., Any]]:
    return {"add": _adder(3), "uses_helpers": _uses_helpers, "lambda": lambda x: {x: 1}}


def _adder(n: int) -> Callable[[int], int]:
    def add(x: int) -> int:
        return x + n

    return add


def _helper(x: str) -> str:
    return x.strip().lower()


def _uses_helpers(xs: list[str], sep: str = ",") -> str:
    return sep.join(sorted({_helper(x) for x in xs})) + json.dumps(math.pi)


def hexes() -> dict[str, str]:
    values = {name: fp(value).hex() for name, value in samples().items()}
    code = {f"code {n}": fingerprint_code(f).hex() for n, f in code_samples().items()}
    return values | code


def test_stable_across_processes_and_hash_seeds() -> None:
    here = hexes()
    script = (
        "import json; from tests.cache.test_fingerprint import hexes; print(json.dumps(hexes()))"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, ROOT]), "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == here


# ---- code ---------------------------------------------------------------------------------


def test_same_code_same_fingerprint() -> None:
    assert fingerprint_code(_uses_helpers) == fingerprint_code(_uses_helpers)
    assert fingerprint_code(_adder(1)) == fingerprint_code(_adder(1))
    assert fingerprint_code(node(_uses_helpers)) == fingerprint_code(_uses_helpers)


def compiled(source: str, name: str = "f", **namespace: Any) -> Any:
    exec(textwrap.dedent(source), namespace)
    return namespace[name]


def test_code_ignores_line_numbers_but_not_the_body() -> None:
    source = "def f(x):\n    return x + 1\n"
    first = compiled(source)
    assert fingerprint_code(first) == fingerprint_code(compiled("\n\n\n" + source))
    assert fingerprint_code(first) != fingerprint_code(compiled(source.replace("1", "2")))
    assert fingerprint_code(first) != fingerprint_code(compiled(source.replace("x", "y")))


def test_defaults_count() -> None:
    source = "def f(x, k={k!r}, *, m={m!r}):\n    return x + k + m\n"
    base = fingerprint_code(compiled(source.format(k=1, m=2)))
    assert base == fingerprint_code(compiled(source.format(k=1, m=2)))
    assert base != fingerprint_code(compiled(source.format(k=5, m=2)))
    assert base != fingerprint_code(compiled(source.format(k=1, m=5)))
    assert base != fingerprint_code(compiled(source.format(k=1.0, m=2)))


def test_closure_values_count() -> None:
    assert fingerprint_code(_adder(1)) != fingerprint_code(_adder(2))

    def make(config: Any) -> Callable[[], Any]:
        return lambda: config["depth"]

    frozen = fingerprint_code(make((("depth", 1),)))
    assert frozen == fingerprint_code(make((("depth", 1),)))
    assert frozen != fingerprint_code(make((("depth", 2),)))  # immutable: by value
    assert fingerprint_code(make(Settings(1))) != fingerprint_code(make(Settings(2)))


def test_closure_variables_follow_the_rule_of_globals() -> None:
    """Mutable closure variables count by type, as mutable globals do: a node that
    appends to a list it closes over keeps its key."""

    def make(state: Any) -> Callable[[int], int]:
        def step(x: int) -> int:
            state.append(x) if isinstance(state, list) else None
            return x

        return step

    log: list[int] = []
    step = make(log)
    before = fingerprint_code(step)
    step(1)
    log.append(2)
    assert fingerprint_code(step) == before  # mutated in place: same key
    assert fingerprint_code(make([9, 9])) == before  # another list: same type
    assert fingerprint_code(make({})) != before  # another type
    # Objects without a fingerprint count by type too, as globals do (no error).
    with_lock = fingerprint_code(make(threading.Lock()))
    assert with_lock == fingerprint_code(make(threading.Lock()))
    assert with_lock != before

    # The same shared rule: a closure and a global over the same values agree on what
    # counts (by type for the list, by value for the tuple).
    namespace: dict[str, Any] = {"STATE": [1]}
    exec("def uses_global(x):\n    return STATE, x\n", namespace)
    first = fingerprint_code(namespace["uses_global"])
    namespace["STATE"].append(2)
    assert fingerprint_code(namespace["uses_global"]) == first


def test_objects_with_a_cache_key_count_by_their_key_in_closures_and_globals() -> None:
    class Scorer:
        def __init__(self, weight: int) -> None:
            self.weight = weight

        def __cache_key__(self) -> tuple[int]:
            return (self.weight,)

    scorer = Scorer(2)

    def score(x: int) -> int:
        return scorer.weight * x

    before = fingerprint_code(score)
    scorer.weight = 3
    assert fingerprint_code(score) != before
    namespace: dict[str, Any] = {"SCORER": Scorer(2)}
    exec("def uses_global(x):\n    return SCORER.weight * x\n", namespace)
    first = fingerprint_code(namespace["uses_global"])
    namespace["SCORER"].weight = 5
    assert fingerprint_code(namespace["uses_global"]) != first


def test_closures_of_one_code_in_swapped_positions_differ() -> None:
    one, two = _adder(1), _adder(2)
    source = "def f(x, ops=OPS):\n    return ops[0](ops[1](x))\n"
    forward = fingerprint_code(compiled(source, OPS=(one, two)))
    assert forward == fingerprint_code(compiled(source, OPS=(_adder(1), _adder(2))))
    assert forward != fingerprint_code(compiled(source, OPS=(two, one)))


def test_partials_and_methods() -> None:
    def power(x: int, k: int) -> int:
        return x**k

    assert fingerprint_code(functools.partial(power, k=2)) == fingerprint_code(
        functools.partial(power, k=2)
    )
    assert fingerprint_code(functools.partial(power, k=2)) != fingerprint_code(
        functools.partial(power, k=3)
    )
    assert fingerprint_code(Settings(1).__eq__) != fingerprint_code(Settings(2).__eq__)


def test_builtin_and_stdlib_calls_are_fine() -> None:
    def uses_stdlib(xs: list[float]) -> str:
        total = math.fsum(xs) + len(xs) + sum(itertools.accumulate(xs))
        return json.dumps({"t": total, "p": os.path.join("a", "b")}) + str(operator.add(1, 2))

    first = fingerprint_code(uses_stdlib)
    assert first == fingerprint_code(uses_stdlib)
    assert fingerprint_code(len) != fingerprint_code(abs)
    assert fingerprint_code(json.dumps) != fingerprint_code(json.loads)
    assert fingerprint_code(np.sum) != fingerprint_code(np.mean)
    assert fingerprint_code(np.add) != fingerprint_code(np.multiply)


def test_mutual_recursion_terminates() -> None:
    namespace: dict[str, Any] = {}
    exec(
        "def even(n):\n    return n == 0 or odd(n - 1)\n"
        "def odd(n):\n    return n != 0 and even(n - 1)\n",
        namespace,
    )
    assert fingerprint_code(namespace["even"]) == fingerprint_code(namespace["even"])
    assert fingerprint_code(namespace["even"]) != fingerprint_code(namespace["odd"])


def test_unfingerprintable_default_names_it() -> None:
    lock = threading.Lock()

    def guarded(x: int, lock: Any = lock) -> int:
        return x

    with pytest.raises(Unfingerprintable, match="default values of .*guarded"):
        fingerprint_code(guarded)


# ---- code in the user's own modules, edited and reloaded -------------------------------------

_counter = itertools.count()


@pytest.fixture
def user_module(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Any]]:
    """``write(source, name=...)`` (re)writes a module in a project directory and (re)imports it.

    The working directory is the project, so plait treats the module as the user's own.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # an edit within a second must show
    prefix = f"plait_fp_user{next(_counter)}_"
    names: list[str] = []

    def write(source: str, name: str = "pipeline_steps") -> Any:
        name = prefix + name
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source).replace("PREFIX_", prefix))
        importlib.invalidate_caches()
        if name in sys.modules:
            return importlib.reload(sys.modules[name])
        names.append(name)
        return importlib.import_module(name)

    yield write
    for name in names:
        sys.modules.pop(name, None)


STEPS = """
import collections
import dataclasses
import json
import logging
import operator
import threading

import numpy as np

import PREFIX_helpers

log = logging.getLogger(__name__)
LOCK = threading.Lock()
THRESHOLD = 3
OPTIONS = {"scale": 2, "names": ("a", "b")}
LIMITS = (1, ("low", 0.5), np.float32(0.5))
AGGREGATE = np.sum
COMBINE = operator.add
calls = collections.Counter()  # state the function mutates: counts by type only
results = []


@dataclasses.dataclass(frozen=True)
class Settings:
    depth: int


SETTINGS = Settings(depth=2)


class Scaler:
    factor = 10

    def apply(self, x):
        return x * self.factor


def helper(x):
    return x * OPTIONS["scale"]


def unrelated(x):
    return x - 1


def step(x):
    log.debug("step")
    calls["step"] += 1
    with LOCK:
        y = COMBINE(helper(x), float(AGGREGATE([THRESHOLD])))
    y += LIMITS[1][1] + SETTINGS.depth
    results.append(y)
    return Scaler().apply(y) + PREFIX_helpers.clean(x) + len(json.dumps(x))
"""

HELPERS = """
def clean(x):
    return x + 0
"""


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("return x * OPTIONS", "return x * 2 * OPTIONS"),  # a called helper's body
        ("THRESHOLD = 3", "THRESHOLD = 4"),  # a module-level constant
        ('("low", 0.5)', '("low", 0.25)'),  # a nested tuple
        ("np.float32(0.5)", "np.float32(0.25)"),  # a numpy scalar in it
        ("depth=2", "depth=3"),  # a frozen dataclass instance
        ("factor = 10", "factor = 11"),  # a class attribute of a class it uses
        ("return x * self.factor", "return x * self.factor + 1"),  # a method
        ("np.sum", "np.mean"),  # which library function a global names
        ("operator.add", "operator.mul"),
    ],
)
def test_editing_what_a_function_uses_changes_it(
    user_module: Callable[..., Any], old: str, new: str
) -> None:
    user_module(HELPERS, "helpers")
    module = user_module(STEPS)
    before = fingerprint_code(module.step)
    assert fingerprint_code(user_module(STEPS).step) == before  # reloading alone changes nothing
    assert old in STEPS
    edited = user_module(STEPS.replace(old, new))
    assert fingerprint_code(edited.step) != before


def test_state_a_function_mutates_does_not_change_it(user_module: Callable[..., Any]) -> None:
    user_module(HELPERS, "helpers")
    module = user_module(STEPS)
    before = fingerprint_code(module.step)
    module.step(1)
    module.step(2)
    assert module.calls["step"] == 2
    assert len(module.results) == 2
    assert fingerprint_code(module.step) == before  # else every run would be a miss


def test_editing_an_uncalled_function_changes_nothing(user_module: Callable[..., Any]) -> None:
    user_module(HELPERS, "helpers")
    before = fingerprint_code(user_module(STEPS).step)
    edited = user_module(STEPS.replace("return x - 1", "return x - 2"))
    assert fingerprint_code(edited.step) == before


def test_editing_a_helper_in_another_user_module(user_module: Callable[..., Any]) -> None:
    user_module(HELPERS, "helpers")
    module = user_module(STEPS)
    before = fingerprint_code(module.step)
    user_module(HELPERS.replace("x + 0", "x + 1"), "helpers")  # reached as helpers.clean
    assert fingerprint_code(module.step) != before


def test_editing_a_helper_imported_by_name(user_module: Callable[..., Any]) -> None:
    user_module(HELPERS, "helpers")
    uses = "from PREFIX_helpers import clean\n\ndef step(x):\n    return clean(x)\n"
    module = user_module(uses, "uses")
    before = fingerprint_code(module.step)
    user_module(HELPERS.replace("x + 0", "x + 1"), "helpers")
    module = user_module(uses, "uses")  # the new clean is bound on re-import
    assert fingerprint_code(module.step) != before


def test_cached_helpers_are_walked(user_module: Callable[..., Any]) -> None:
    source = """
    import functools

    @functools.lru_cache(maxsize=None)
    def table(n):
        return list(range(n))

    def step(n):
        return table(n)[-1]
    """
    before = fingerprint_code(user_module(source).step)
    after = fingerprint_code(user_module(source.replace("range(n)", "range(n + 1)")).step)
    assert before != after


def test_remembered_code_digest_follows_every_change_it_depends_on() -> None:
    namespace: dict[str, Any] = {}
    exec(
        "SCALE = 2\n"
        "def helper(x):\n    return x * SCALE\n"
        "def outer(x, bias=(1, 2)):\n    return helper(x) + bias[0]\n",
        namespace,
    )
    outer = namespace["outer"]
    first = fingerprint_code(outer)
    assert fingerprint_code(outer) == first  # remembered, guard still holds
    exec("def helper(x):\n    return x * SCALE + 1\n", namespace)  # a notebook redefinition
    second = fingerprint_code(outer)
    assert second != first
    namespace["SCALE"] = 3  # a constant it reads through the helper
    third = fingerprint_code(outer)
    assert third not in (first, second)
    outer.__defaults__ = ((5, 6),)
    assert fingerprint_code(outer) != third


def test_mutable_defaults_are_rehashed_every_time() -> None:
    def uses_settings(x, settings={"mode": "a"}):  # noqa: B006
        return settings["mode"], x

    before = fingerprint_code(uses_settings)
    uses_settings.__defaults__[0]["mode"] = "b"  # type: ignore[index]
    assert fingerprint_code(uses_settings) != before


def test_a_node_appending_to_a_list_it_closes_over_hits_the_cache() -> None:
    calls: list[int] = []
    seen: dict[str, int] = {}

    @node(output_name="doubled")
    def double(x: int) -> int:
        calls.append(x)
        seen[str(x)] = seen.get(str(x), 0) + 1
        return 2 * x

    pipeline = Pipeline([double], cache=MemoryCache())
    assert pipeline.run(inputs={"x": 3}) == {"doubled": 6}
    assert pipeline.run(inputs={"x": 3}) == {"doubled": 6}
    assert calls == [3]  # the second run was a hit
    assert pipeline.run(inputs={"x": 4}) == {"doubled": 8}
    assert calls == [3, 4]


def test_unfingerprintable_pickles_with_its_fields() -> None:
    import pickle

    with pytest.raises(Unfingerprintable) as info:
        fingerprint_value({"k": threading.Lock()})
    info.value.add_note("a note")
    copy = pickle.loads(pickle.dumps(info.value))
    assert (str(copy), copy.type_name, copy.path) == (
        str(info.value),
        info.value.type_name,
        info.value.path,
    )
    assert copy.__notes__ == ["a note"]
