"""Fingerprints: structural digests of values that are stable across processes.

A fingerprint is a BLAKE2b digest of a canonical encoding of the value: a type tag,
then the content. It never uses ``id()``, ``hash()``, ``repr()`` or pickle, so it is
the same in every process and under every ``PYTHONHASHSEED``, and two values get one
fingerprint only when plait can read that they are equal (``1``, ``1.0`` and ``True``
differ; ``(1,)`` and ``[1]`` differ; dict items and set elements are order-free).
A value plait cannot read exactly raises :class:`~plait.errors.Unfingerprintable`.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import hashlib
import pathlib
import struct
import sys
import uuid
import zoneinfo
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from plait._text import short_repr
from plait.errors import Unfingerprintable

if TYPE_CHECKING:
    from plait.cache._code import Guard

#: Bytes per digest (BLAKE2b-128).
DIGEST_SIZE: Final = 16
#: Deepest nesting of containers a value may have.
MAX_DEPTH: Final = 200
#: Salt of :func:`cache_key`; bump it when the encoding changes so old entries miss.
KEY_VERSION: Final = b"plait-cache-2"

_blake2b = hashlib.blake2b
_u64 = struct.Struct("<Q").pack
_f64 = struct.Struct("<d").pack
_SIZES: Final = tuple(_u64(size) for size in range(64))  # the common length prefixes

# Default reason of an Unfingerprintable error.
_UNSUPPORTED = (
    "its type is not one plait can fingerprint (plait never falls back to repr() or "
    "pickle, which could give a wrong cache hit)"
)


#: Hashers already fed with the tag of a str and of an int: fingerprint_value's fast paths.
_STR: Final = _blake2b(b"s", digest_size=DIGEST_SIZE)
_INT: Final = _blake2b(b"i", digest_size=DIGEST_SIZE)


def new_hash() -> hashlib.blake2b:
    """An empty hasher of the fingerprint size."""
    return _blake2b(digest_size=DIGEST_SIZE)


def qualified_name(obj: Any) -> str:
    """``module.QualName`` of a class or function."""
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', None) or getattr(obj, '__name__', '?')}"


def text(value: str) -> bytes:
    """A length-prefixed UTF-8 encoding of ``value`` (lone surrogates kept)."""
    data = str.encode(value, "utf-8", "surrogatepass")
    return _u64(len(data)) + data


def integer(value: int) -> bytes:
    """A length-prefixed two's-complement encoding of ``value``."""
    size = (int.bit_length(value) + 8) // 8
    data = int.to_bytes(value, size, "little", signed=True)
    return (_SIZES[size] if size < 64 else _u64(size)) + data


class Failure(Exception):
    """Internal: a value cannot be fingerprinted; ``path`` grows while unwinding.

    ``structural`` failures (cycles, depth) are about the shape of the value, not its
    type, so the error does not suggest ``__cache_key__`` for the type.
    """

    def __init__(
        self,
        value: object,
        reason: str = _UNSUPPORTED,
        type_name: str = "",
        *,
        structural: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.type_name = type_name or qualified_name(type(value))
        self.module = getattr(type(value), "__module__", None)
        self.structural = structural
        self.shown = short_repr(value)
        self.path: list[str] = []  # innermost step first
        #: The innermost instance of a user class holding the value, by qualified name.
        self.holder: str | None = None

    def error(self, where: str | None) -> Unfingerprintable:
        """The public error, with ``where`` (``"input 'config'"``) heading the path."""
        steps = ([where] if where else []) + self.path[::-1]
        at = f" at {' → '.join(steps)}" if steps else ""
        if self.structural:
            advice = ""
        else:
            from plait.cache._code import is_user_module  # late: _code imports this module

            if self.module not in ("builtins", None) and is_user_module(self.module):
                advice = (
                    f"Define __cache_key__() on {self.type_name} returning a fingerprintable "
                    "value (for example a tuple of the settings that determine what it "
                    "computes), or "
                )
            elif self.holder is not None:
                advice = (
                    f"Define __cache_key__() on {self.holder}, which holds it, returning a "
                    "fingerprintable value (for example a tuple of the settings that "
                    "determine what it computes), or "
                )
            else:
                advice = (
                    "Pass a value plait can fingerprint instead (for example the settings "
                    "it is built from, or your own class with a __cache_key__() method), or "
                )
        message = (
            f"cannot fingerprint {self.shown} (type {self.type_name}){at}: {self.reason}. "
            f"{advice}{'O' if not advice else 'o'}pt the node out of caching with "
            "@node(cache=False)."
        )
        return Unfingerprintable(message, type_name=self.type_name, path=steps)


def step(fail: Failure, where: str) -> Failure:
    """Record one step of the path on the way out; returns ``fail`` to re-raise."""
    fail.path.append(where)
    return fail


Encode = Callable[["Encoder", "hashlib.blake2b", Any], None]


class Encoder:
    """Feeds the canonical encoding of values into hashers.

    ``code`` is the code walk in progress when the values belong to a function
    (defaults, partial arguments): callables met there join that walk instead of
    starting a new one, which keeps mutually referring functions finite.
    """

    __slots__ = ("active", "code", "depth")

    def __init__(self, code: Any = None) -> None:
        self.active: set[int] = set()  # ids of the containers on the current path
        self.depth = 0
        self.code = code

    def feed(self, h: hashlib.blake2b, value: object) -> None:
        """Feed ``value``'s encoding into ``h``."""
        encode = EXACT.get(type(value))
        if encode is None:
            encode = _other
        encode(self, h, value)

    def digest(self, value: object) -> bytes:
        """The digest of ``value`` alone."""
        h = new_hash()
        self.feed(h, value)
        return h.digest()

    def enter(self, value: object) -> None:
        """Start a container: guard against cycles and absurd depth."""
        if self.depth >= MAX_DEPTH:
            raise Failure(value, f"it is nested more than {MAX_DEPTH} levels deep", structural=True)
        key = id(value)  # identity only detects cycles; it never enters a digest
        if key in self.active:
            raise Failure(value, "it contains itself (a reference cycle)", structural=True)
        self.active.add(key)
        self.depth += 1

    def leave(self, value: object) -> None:
        """End a container started with :meth:`enter`."""
        self.active.discard(id(value))
        self.depth -= 1

    def sequence(self, h: hashlib.blake2b, tag: bytes, value: Any, items: Iterable[Any]) -> None:
        """An ordered container: tag, length, then each item."""
        self.enter(value)
        h.update(tag + _u64(len(value)))
        for i, item in enumerate(items):
            try:
                self.feed(h, item)
            except Failure as fail:
                raise step(fail, f"[{i}]") from None
        self.leave(value)

    def unordered(self, h: hashlib.blake2b, tag: bytes, value: Any, items: Iterable[Any]) -> None:
        """A set: tag, length, then the sorted digests of the elements."""
        self.enter(value)
        digests = []
        for item in items:
            try:
                digests.append(self.digest(item))
            except Failure as fail:
                raise step(fail, f"{{{short_repr(item)}}}") from None
        digests.sort()
        h.update(tag + _u64(len(digests)) + b"".join(digests))
        self.leave(value)

    def mapping(self, h: hashlib.blake2b, tag: bytes, value: Any, *, ordered: bool) -> None:
        """A dict: tag, length, then one digest per item (sorted unless ``ordered``)."""
        self.enter(value)
        digests = []
        for key, item in dict.items(value):
            pair = new_hash()
            try:
                self.feed(pair, key)
            except Failure as fail:
                raise step(fail, f"[key {short_repr(key)}]") from None
            try:
                self.feed(pair, item)
            except Failure as fail:
                raise step(fail, f"[{short_repr(key)}]") from None
            digests.append(pair.digest())
        if not ordered:
            digests.sort()
        h.update(tag + _u64(len(digests)) + b"".join(digests))
        self.leave(value)

    def fields(self, h: hashlib.blake2b, value: object, names: Iterable[str]) -> None:
        """Named attributes of an object, in the given order."""
        self.enter(value)
        for name in names:
            h.update(text(name))
            try:
                item = getattr(value, name)
            except AttributeError:  # a field never set (dataclass field with init=False)
                h.update(b"-")
                continue
            h.update(b"=")
            try:
                self.feed(h, item)
            except Failure as fail:
                raise step(fail, f".{name}") from None
        self.leave(value)


# ---- builtin types, dispatched on the exact type -------------------------------------


def _none(enc: Encoder, h: hashlib.blake2b, value: None) -> None:
    h.update(b"N")


def _bool(enc: Encoder, h: hashlib.blake2b, value: bool) -> None:
    h.update(b"T" if value else b"F")


def _int(enc: Encoder, h: hashlib.blake2b, value: int) -> None:
    h.update(b"i" + integer(value))


def _float(enc: Encoder, h: hashlib.blake2b, value: float) -> None:
    # The IEEE 754 bits: -0.0 and 0.0 differ, and so do NaNs of another sign or payload
    # (repr spells every NaN "nan", and math.copysign(1, -nan) is -1.0).
    h.update(b"f" + _f64(value))


def _complex(enc: Encoder, h: hashlib.blake2b, value: complex) -> None:
    h.update(b"c" + _f64(value.real) + _f64(value.imag))


def _str(enc: Encoder, h: hashlib.blake2b, value: str) -> None:
    h.update(b"s" + text(value))


def _bytes(enc: Encoder, h: hashlib.blake2b, value: bytes) -> None:
    h.update(b"b" + _u64(len(value)))
    h.update(value)


def _bytearray(enc: Encoder, h: hashlib.blake2b, value: bytearray) -> None:
    h.update(b"B" + _u64(len(value)))
    h.update(value)


def _tuple(enc: Encoder, h: hashlib.blake2b, value: tuple[Any, ...]) -> None:
    enc.sequence(h, b"t", value, tuple.__iter__(value))


def _list(enc: Encoder, h: hashlib.blake2b, value: list[Any]) -> None:
    enc.sequence(h, b"l", value, list.__iter__(value))


def _dict(enc: Encoder, h: hashlib.blake2b, value: dict[Any, Any]) -> None:
    enc.mapping(h, b"d", value, ordered=False)


def _set(enc: Encoder, h: hashlib.blake2b, value: set[Any]) -> None:
    enc.unordered(h, b"S", value, set.__iter__(value))


def _frozenset(enc: Encoder, h: hashlib.blake2b, value: frozenset[Any]) -> None:
    enc.unordered(h, b"z", value, frozenset.__iter__(value))


def _range(enc: Encoder, h: hashlib.blake2b, value: range) -> None:
    h.update(b"r" + integer(value.start) + integer(value.stop) + integer(value.step))


def _slice(enc: Encoder, h: hashlib.blake2b, value: slice) -> None:
    h.update(b"/")
    for part in (value.start, value.stop, value.step):
        enc.feed(h, part)


def _ellipsis(enc: Encoder, h: hashlib.blake2b, value: object) -> None:
    h.update(b".")


def _decimal(enc: Encoder, h: hashlib.blake2b, value: decimal.Decimal) -> None:
    # str keeps the exponent: Decimal("1.10") and Decimal("1.1") print differently.
    h.update(b"D" + text(decimal.Decimal.__str__(value)))


def _fraction(enc: Encoder, h: hashlib.blake2b, value: fractions.Fraction) -> None:
    h.update(b"Q" + integer(value.numerator) + integer(value.denominator))


def _tzinfo(enc: Encoder, h: hashlib.blake2b, tz: dt.tzinfo | None) -> None:
    if tz is None:
        h.update(b"N")
    elif type(tz) is dt.timezone:
        h.update(b"Z")
        _timedelta(enc, h, tz.utcoffset(None))
        h.update(text(tz.tzname(None)))
    elif type(tz) is zoneinfo.ZoneInfo:
        h.update(b"I" + text(tz.key))
    else:
        try:
            enc.feed(h, tz)
        except Failure as fail:
            raise step(fail, ".tzinfo") from None


def _datetime(enc: Encoder, h: hashlib.blake2b, value: dt.datetime) -> None:
    naive = dt.datetime.replace(value, tzinfo=None)
    h.update(b"W" + text(dt.datetime.isoformat(naive)) + bytes([value.fold]))
    _tzinfo(enc, h, value.tzinfo)


def _date(enc: Encoder, h: hashlib.blake2b, value: dt.date) -> None:
    h.update(b"a" + text(dt.date.isoformat(value)))


def _time(enc: Encoder, h: hashlib.blake2b, value: dt.time) -> None:
    naive = dt.time.replace(value, tzinfo=None)
    h.update(b"m" + text(dt.time.isoformat(naive)) + bytes([value.fold]))
    _tzinfo(enc, h, value.tzinfo)


def _timedelta(enc: Encoder, h: hashlib.blake2b, value: dt.timedelta | None) -> None:
    assert value is not None
    h.update(b"e" + integer(value.days) + integer(value.seconds) + integer(value.microseconds))


def _path(enc: Encoder, h: hashlib.blake2b, value: pathlib.PurePath) -> None:
    # The flavour matters: PureWindowsPath("a/b") and PurePosixPath("a/b") differ.
    h.update(b"p" + text(type(value).__name__) + text(pathlib.PurePath.__str__(value)))


def _uuid(enc: Encoder, h: hashlib.blake2b, value: uuid.UUID) -> None:
    h.update(b"u" + value.bytes)


EXACT: dict[type, Encode] = {
    type(None): _none,
    bool: _bool,
    int: _int,
    float: _float,
    complex: _complex,
    str: _str,
    bytes: _bytes,
    bytearray: _bytearray,
    tuple: _tuple,
    list: _list,
    dict: _dict,
    set: _set,
    frozenset: _frozenset,
    range: _range,
    slice: _slice,
    type(...): _ellipsis,
    decimal.Decimal: _decimal,
    fractions.Fraction: _fraction,
    dt.datetime: _datetime,
    dt.date: _date,
    dt.time: _time,
    dt.timedelta: _timedelta,
    uuid.UUID: _uuid,
    pathlib.PurePath: _path,
    pathlib.PurePosixPath: _path,
    pathlib.PureWindowsPath: _path,
    pathlib.Path: _path,
    pathlib.PosixPath: _path,
    pathlib.WindowsPath: _path,
}
"""Encoders by exact type; other types go through :func:`_other`."""


# ---- everything else ----------------------------------------------------------------


def _other(enc: Encoder, h: hashlib.blake2b, value: Any) -> None:
    """Types not in :data:`EXACT`, in order of precedence."""
    cls = type(value)
    if getattr(cls, "__cache_key__", None) is not None and not isinstance(value, type):
        h.update(b"K" + text(qualified_name(cls)))
        try:
            enc.feed(h, value.__cache_key__())
        except Failure as fail:
            raise step(fail, ".__cache_key__()") from None
        return
    module = getattr(cls, "__module__", None) or ""
    if module.partition(".")[0] in ("numpy", "pandas") and not callable(value):
        from plait.cache import _scientific  # imported only once such a value shows up

        _scientific.encode(enc, h, value, module.partition(".")[0])
        return
    if isinstance(value, enum.Enum):
        h.update(b"E" + text(qualified_name(cls)) + text(value.name))
        try:
            enc.feed(h, value.value)
        except Failure as fail:
            raise step(fail, f".{value.name}.value") from None
        return
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        h.update(b"A" + text(qualified_name(cls)))
        enc.fields(h, value, [f.name for f in dataclasses.fields(value)])
        return
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        h.update(b"P" + text(qualified_name(cls)))
        enc.fields(h, value, list(cls.model_fields))
        extra = getattr(value, "__pydantic_extra__", None)
        if extra:
            try:
                enc.feed(h, dict(extra))
            except Failure as fail:
                raise step(fail, ".__pydantic_extra__") from None
        return
    for base in cls.__mro__[1:]:
        encode = EXACT.get(base)
        if encode is not None:
            _subclass(enc, h, value, encode)
            return
    if not callable(value) and is_user_class(cls):
        h.update(b"U" + text(qualified_name(cls)))
        try:
            enc.fields(h, value, sorted(instance_state(value)))
        except Failure as fail:
            if fail.holder is None and not fail.structural:
                fail.holder = qualified_name(cls)
            raise
        return
    if callable(value):
        h.update(b"C")
        if enc.code is not None:
            h.update(enc.code.ref(value))
        else:
            from plait.cache import _code  # late: _code imports this module

            h.update(_code.digest(value))
        return
    raise Failure(value)


def is_user_class(cls: type) -> bool:
    """Whether ``cls`` and every base but ``object`` come from the user's own modules:
    its instances are fingerprinted by their state (a library's may hide theirs)."""
    from plait.cache._code import is_user_module  # late: _code imports this module

    bases = cls.__mro__[:-1]
    return bool(bases) and all(is_user_module(k.__module__) for k in bases)


def instance_state(obj: object) -> list[str]:
    """Names of the attributes an object holds itself (``__dict__`` and slots)."""
    names = list(getattr(obj, "__dict__", None) or ())
    for klass in type(obj).__mro__:
        slots = vars(klass).get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                names.append(slot)
    return names


def _subclass(enc: Encoder, h: hashlib.blake2b, value: Any, encode: Encode) -> None:
    """A subclass of a supported builtin (namedtuple, OrderedDict, str subclass ...)."""
    h.update(b"<" + text(qualified_name(type(value))))
    if isinstance(value, collections.OrderedDict):
        enc.mapping(h, b"o", value, ordered=True)  # its equality is order-sensitive
    else:
        encode(enc, h, value)
    if isinstance(value, collections.defaultdict):
        try:
            enc.feed(h, value.default_factory)
        except Failure as fail:
            raise step(fail, ".default_factory") from None
    state = getattr(value, "__dict__", None)
    if state:
        try:
            enc.feed(h, dict(state))
        except Failure as fail:
            raise step(fail, ".__dict__") from None


# ---- public API -------------------------------------------------------------------------


def fingerprint_value(value: object, *, where: str | None = None) -> bytes:
    """A digest of ``value`` that is equal only for equal values of the same types.

    Stable across processes and ``PYTHONHASHSEED``. ``where`` (e.g. ``"input 'config'"``)
    starts the path an :class:`~plait.errors.Unfingerprintable` error shows.
    """
    cls = type(value)
    if cls is str:  # fast paths: the same bytes the general encoder feeds
        h = _STR.copy()  # a copy is cheaper than a new hasher
        h.update(text(value))  # type: ignore[arg-type]
        return h.digest()
    if cls is int:
        h = _INT.copy()
        h.update(integer(value))  # type: ignore[arg-type]
        return h.digest()
    h = new_hash()
    try:
        Encoder().feed(h, value)
    except Failure as fail:
        raise fail.error(where) from None
    except RecursionError:
        deep = Failure(value, "it is nested too deeply to walk", structural=True)
        raise deep.error(where) from None
    return h.digest()


def fingerprint_code(func: Callable[..., Any], *, where: str | None = None) -> bytes:
    """A digest of what ``func`` computes: its code, defaults, closure and the user
    helpers and constants it reads. Stable across processes; see docs/cache.md."""
    return guarded_code_fingerprint(func, where=where)[0]


def guarded_code_fingerprint(
    func: Callable[..., Any], *, where: str | None = None
) -> tuple[bytes, Guard | None]:
    """:func:`fingerprint_code` and the guard that proves it current while it holds
    (None: the code read something mutable, so fingerprint it again next time)."""
    from plait.cache import _code  # late: _code imports this module

    try:
        return _code.guarded_digest(func)
    except Failure as fail:
        raise fail.error(where) from None
    except RecursionError:
        deep = Failure(func, "its helpers nest too deeply to walk", structural=True)
        raise deep.error(where) from None


def cache_key(*parts: bytes) -> str:
    """One hex key for a store from several digests (order matters)."""
    h = _blake2b(KEY_VERSION, digest_size=DIGEST_SIZE)
    for part in parts:
        h.update(_u64(len(part)) + part)
    return h.hexdigest()
