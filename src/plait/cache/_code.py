"""Code fingerprints: what a callable computes, stable across processes and runs.

A function's fingerprint covers its code object (bytecode, constants, names; never
line numbers or file names), its defaults, and the values it reads from outside: its
closure cells and the globals its code reads. Functions and classes from the user's
own modules are walked in turn; library functions and callables that their module and
qualified name identify (``json.dumps``, ``numpy.sum``, ``operator.add``) count by
that name; modules by name. Every other value read from outside (a global, a closure
variable, a class attribute) follows one rule, :meth:`_Walk.by_value` (docs/cache.md,
"Values read from outside"): immutable values by value, ``__cache_key__`` objects by
their key, mutable ones and objects without a fingerprint by their type only. The
walk collects every reachable user function and class once and hashes the sorted set
of their digests, so recursive helpers terminate and the result does not depend on
the order they were met in.

Only the digest of a code object is memoized (code objects are immutable); the walk
over globals is redone on every call, so a helper redefined in a notebook is seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import functools
import os
import pathlib
import sys
import sysconfig
import threading
import types
import uuid
import weakref
from typing import Any, Final

from plait._text import quoted
from plait.cache.fingerprint import (
    Encoder,
    Failure,
    instance_state,
    is_user_class,
    new_hash,
    qualified_name,
    step,
    text,
)
from plait.node import Node

_SALT: Final = text(f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}")

_BUILTINS: Final = (
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    types.WrapperDescriptorType,
    types.MethodWrapperType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
)
_SCALARS: Final = frozenset({int, float, str, bytes, bool, complex, type(None)})
_MAX_CONSTANT_ITEMS: Final = 64
# Class attributes that do not change what the class computes (or change with lines).
_SKIP: Final = frozenset(
    {
        "__module__",
        "__qualname__",
        "__doc__",
        "__dict__",
        "__weakref__",
        "__firstlineno__",
        "__static_attributes__",
        "__annotations__",
        "__slotnames__",
        "__abstractmethods__",
        "_abc_impl",
        "__orig_bases__",
        "__parameters__",
    }
)

_codes: weakref.WeakKeyDictionary[types.CodeType, tuple[bytes, frozenset[str]]] = (
    weakref.WeakKeyDictionary()
)
_codes_lock = threading.Lock()


def code_digest(code: types.CodeType) -> tuple[bytes, frozenset[str]]:
    """The digest of a code object and every name it (or nested code) reads; memoized."""
    with _codes_lock:
        known = _codes.get(code)
    if known is not None:
        return known
    h = new_hash()
    h.update(b"K" + _SALT + text(code.co_name))
    for number in (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount):
        h.update(number.to_bytes(4, "little"))
    h.update(code.co_flags.to_bytes(8, "little"))
    for blob in (code.co_code, code.co_exceptiontable):
        h.update(len(blob).to_bytes(8, "little") + blob)
    for group in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        h.update(len(group).to_bytes(8, "little") + b"".join(text(name) for name in group))
    names = set(code.co_names)
    h.update(len(code.co_consts).to_bytes(8, "little"))
    constants = Encoder()
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            inner, inner_names = code_digest(const)
            h.update(b"k" + inner)
            names |= inner_names
        else:
            constants.feed(h, const)
    result = (h.digest(), frozenset(names))
    with _codes_lock:
        _codes[code] = result
    return result


def digest(func: Any) -> bytes:
    """:func:`plait.cache.fingerprint.fingerprint_code` without the error translation."""
    return guarded_digest(func)[0]


def guarded_digest(func: Any) -> tuple[bytes, Guard | None]:
    """The digest of ``func`` and the :class:`Guard` that proves it current (None: redo
    the walk every time).

    A finished walk is remembered with a guard: every attribute, global, closure
    cell and class member it read, by identity. While all of them are still the
    same objects the digest cannot have changed, so later calls only check the
    guard. A walk that hashed a mutable value (a list default, a dict in a
    closure) or called ``__cache_key__`` has no guard and is redone every time.
    """
    while isinstance(func, Node):
        func = func.func
    try:
        known = _digests.get(func)
    except TypeError:  # not weakly referable or not hashable: no memo
        return _Walk().run(func), None
    if known is not None and known[1].still():
        return known
    walk = _Walk()
    result = walk.run(func)
    if walk.guard is None:
        return result, None
    guard = Guard(walk.guard)
    with contextlib.suppress(TypeError):
        _digests[func] = (result, guard)
    return result, guard


#: Digests of callables with the guard that proves them current (see :func:`guarded_digest`).
_digests: weakref.WeakKeyDictionary[Any, tuple[bytes, Guard]] = weakref.WeakKeyDictionary()
_ABSENT: Final = object()


class Guard:
    """What one or more code walks read, by identity, and the working directory (which
    modules count as the user's): while all of it is unchanged, so are their digests.

    Guards of several functions merge into one (:meth:`merged`) that checks what they
    share once: a plan checks one guard per run, not one per node.
    """

    __slots__ = ("attrs", "cells", "cwd", "items", "names")

    def __init__(self, reads: list[tuple[Any, ...]]) -> None:
        kinds: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]] = {
            "attr": {},
            "item": {},
            "cell": {},
            "names": {},
        }
        conflict = False
        for kind, *entry in reads:
            where = (id(entry[0]), *entry[1:-1])  # the object read and the name read
            known = kinds[kind].setdefault(where, tuple(entry))
            same = known[-1] is entry[-1] or (kind == "names" and known[-1] == entry[-1])
            if not same:
                conflict = True  # two walks read different objects there: one is stale
        self.attrs = tuple(kinds["attr"].values())
        self.items = tuple(kinds["item"].values())
        self.cells = tuple(kinds["cell"].values())
        self.names = tuple(kinds["names"].values())
        self.cwd = "" if conflict else os.getcwd()  # "": never holds

    @classmethod
    def merged(cls, guards: list[Guard]) -> Guard:
        """One guard that holds while every one of ``guards`` does."""
        reads: list[tuple[Any, ...]] = []
        for guard in guards:
            reads += [("attr", *entry) for entry in guard.attrs]
            reads += [("item", *entry) for entry in guard.items]
            reads += [("cell", *entry) for entry in guard.cells]
            reads += [("names", *entry) for entry in guard.names]
        merged = cls(reads)
        if any(guard.cwd != merged.cwd for guard in guards):
            merged.cwd = ""  # read under another directory: never holds
        return merged

    def still(self) -> bool:
        """Whether everything read is still the object it was."""
        if os.getcwd() != self.cwd:
            return False
        for obj, name, value in self.attrs:
            if getattr(obj, name, _ABSENT) is not value:
                return False
        for mapping, key, value in self.items:
            if mapping.get(key, _ABSENT) is not value:
                return False
        for cell, value in self.cells:
            try:
                contents = cell.cell_contents
            except ValueError:
                contents = _ABSENT
            if contents is not value:
                return False
        return all(tuple(cls.__dict__) == order for cls, order in self.names)


class _Walk:
    """One code fingerprint: the user functions and classes reachable from a root."""

    def __init__(self) -> None:
        self.enc = Encoder(self)
        self.seen: dict[int, object] = {}  # keeps each visited object alive during the walk
        self.pending: list[Any] = []
        #: What the walk read, by identity; None once it read something mutable.
        self.guard: list[tuple[Any, ...]] | None = []

    def read(self, *entry: Any) -> None:
        if self.guard is not None:
            self.guard.append(entry)

    def run(self, root: Any) -> bytes:
        head = self.ref(root)
        parts = []
        while self.pending:
            parts.append(self.local(self.pending.pop()))
        parts.sort()
        h = new_hash()
        h.update(b"W" + _SALT + head + b"".join(parts))
        return h.digest()

    def visit(self, obj: Any) -> None:
        if id(obj) not in self.seen:
            self.seen[id(obj)] = obj
            self.pending.append(obj)

    def value(self, value: object, where: str) -> bytes:
        if self.guard is not None and not _immutable(value):
            self.guard = None  # it may change in place: no memo
        try:
            return self.enc.digest(value)
        except Failure as fail:
            raise step(fail, where) from None

    # ---- references: what a callable is, queueing user code for its own digest ----

    def ref(self, obj: Any) -> bytes:
        """Identify a callable; user functions and classes join the walk."""
        while isinstance(obj, Node):
            obj = obj.func
        if isinstance(obj, types.FunctionType):
            return self.function_ref(obj)
        if isinstance(obj, types.MethodType):
            owner = self.value(obj.__self__, f"{qualified_name(obj.__func__)}.__self__")
            return b"M" + self.ref(obj.__func__) + owner
        if isinstance(obj, functools.partial):
            return self.partial_ref(obj)
        if isinstance(obj, _BUILTINS):
            return self.builtin_ref(obj)
        if isinstance(obj, type):
            return self.class_ref(obj)
        return self.object_ref(obj)

    def function_ref(self, func: types.FunctionType) -> bytes:
        """Library functions by name; the user's (and closures a library made) by content."""
        if not is_user_module(func.__module__) and _named(func):
            return b"n" + text(qualified_name(func))
        self.visit(func)
        return b"F" + code_digest(func.__code__)[0] + _captured_constants(func)

    def partial_ref(self, obj: functools.partial[Any]) -> bytes:
        name = f"partial({qualified_name(obj.func)})"
        args = self.value(obj.args, f"{name}.args")
        return b"P" + self.ref(obj.func) + args + self.value(obj.keywords, f"{name}.keywords")

    def builtin_ref(self, obj: Any) -> bytes:
        """A builtin function or method by name, and the object it is bound to."""
        out = b"B" + text(qualified_name(obj))
        bound = getattr(obj, "__self__", None)
        if bound is not None and not isinstance(bound, (types.ModuleType, type)):
            out += self.value(bound, f"{qualified_name(obj)}.__self__")
        return out

    def class_ref(self, cls: type) -> bytes:
        if is_user_module(cls.__module__):
            self.visit(cls)
            return b"Y" + text(qualified_name(cls))
        return b"N" + text(qualified_name(cls))

    def object_ref(self, obj: Any) -> bytes:
        """A callable object: by ``__cache_key__``, by name, or by its (user) class."""
        cls = type(obj)
        if getattr(cls, "__cache_key__", None) is not None:
            self.guard = None  # the key may change at any time
            key = self.value(obj.__cache_key__(), ".__cache_key__()")
            return b"K" + text(qualified_name(cls)) + key
        if not callable(obj):
            raise Failure(obj, "it is not callable")
        if not is_user_class(cls):
            return self.library_object_ref(obj)
        state = instance_state(obj)
        if state:
            raise Failure(obj, f"it is a callable object with instance state ({quoted(state)})")
        return b"O" + self.ref(cls)

    def library_object_ref(self, obj: Any) -> bytes:
        """A callable object of a library class: a wrapper of user code, or a named one."""
        try:
            wrapped = getattr(obj, "__wrapped__", None)  # lru_cache and similar wrappers
        except Exception:  # a proxy object may raise anything from __getattr__
            wrapped = None
        if isinstance(wrapped, types.FunctionType) and is_user_module(wrapped.__module__):
            return b"w" + text(qualified_name(type(obj))) + self.ref(wrapped)
        if _named(obj):  # a library's module-level callable (numpy.sum, a ufunc)
            return b"n" + text(qualified_name(obj))
        raise Failure(obj, "it is a callable object whose state plait cannot read")

    def outside_ref(self, value: Any, modules: list[types.ModuleType], where: str) -> bytes:
        """A value code reads from outside itself: a global, a closure variable, an
        attribute of a user module or a base class. Code as :meth:`ref` names it, modules
        by name, anything else as :meth:`by_value` says."""
        while isinstance(value, Node):
            value = value.func
        if isinstance(value, (types.FunctionType, type)):
            return self.ref(value)
        if isinstance(value, types.ModuleType):
            if is_user_module(value.__name__):
                modules.append(value)  # its attributes the code names count too
            return b"m" + text(value.__name__)
        return self.by_value(value, where)

    def by_value(self, value: Any, where: str) -> bytes:
        """The rule for a value code reads from outside (see :meth:`outside_ref`) that is
        not a function, class or module: one rule for globals, closure variables and
        class attributes.

        Immutable values (numbers, strings, tuples, frozen dataclasses, enums ...) count
        by value, objects with ``__cache_key__`` by their key, callables as :meth:`ref`
        names them (``numpy.sum``), anything else by its type only: functions often
        mutate state they close over or share with their module (a counter, a memo
        dict, a list of results), and hashing that would make every run a miss; and an
        object without a fingerprint (a logger, a client) must not make every function
        reading it uncacheable.
        """
        if _is_constant(value):  # the common case, cheaply
            return b"v" + self.enc.digest(value)
        if _immutable(value):
            try:
                return b"v" + Encoder(self).digest(value)  # fresh: this may fail halfway
            except Failure:
                pass
        elif _has_cache_key(value):
            self.guard = None  # the key may change at any time
            try:
                return b"K" + Encoder(self).digest(value)
            except Failure as fail:
                raise step(fail, where) from None
        elif callable(value):
            depth, active = self.enc.depth, set(self.enc.active)
            try:
                return b"r" + self.ref(value)
            except Failure:  # e.g. a bound method of an object plait cannot read
                self.enc.depth, self.enc.active = depth, active
        return b"o" + text(qualified_name(type(value)))

    # ---- local digests of the user functions and classes met -----------------------

    def local(self, obj: Any) -> bytes:
        if isinstance(obj, types.FunctionType):
            return self.function(obj)
        return self.klass(obj)

    def function(self, func: types.FunctionType) -> bytes:
        code = func.__code__
        own, names = code_digest(code)
        name = qualified_name(func)
        read = self.read
        read("attr", func, "__code__", code)
        read("attr", func, "__defaults__", func.__defaults__)
        read("attr", func, "__kwdefaults__", func.__kwdefaults__)
        h = new_hash()
        h.update(b"f" + own)
        h.update(self.value(func.__defaults__, f"default values of {name}"))
        h.update(self.value(func.__kwdefaults__, f"keyword-only defaults of {name}"))
        modules: list[types.ModuleType] = []
        for var, cell in zip(code.co_freevars, func.__closure__ or (), strict=True):
            try:
                contents = cell.cell_contents
            except ValueError:  # a cell not assigned yet
                read("cell", cell, _ABSENT)
                h.update(text(var) + b"-")
                continue
            read("cell", cell, contents)
            where = f"closure variable {var!r} of {name}"
            h.update(text(var) + self.outside_ref(contents, modules, where))
        namespace = func.__globals__
        ordered = sorted(names)
        for global_name in ordered:
            found = namespace.get(global_name, _ABSENT)
            read("item", namespace, global_name, found)
            if found is not _ABSENT:
                where = f"global {global_name!r} of {name}"
                h.update(b"g" + text(global_name) + self.outside_ref(found, modules, where))
        done: set[str] = set()
        while modules:  # ``import helpers; helpers.clean(x)``: look the names up there too
            module = modules.pop()
            if module.__name__ in done:
                continue
            done.add(module.__name__)
            members = vars(module)
            for attr in ordered:
                member = members.get(attr, _ABSENT)
                read("item", members, attr, member)
                if member is not _ABSENT:
                    h.update(b"a" + text(module.__name__) + text(attr))
                    where = f"{module.__name__}.{attr}"
                    h.update(self.outside_ref(member, modules, where))
        return h.digest()

    def klass(self, cls: type) -> bytes:
        h = new_hash()
        h.update(b"c" + text(qualified_name(cls)))
        self.read("attr", cls, "__bases__", cls.__bases__)
        self.read("names", cls, tuple(cls.__dict__))
        for member_name, member in cls.__dict__.items():
            self.read("item", cls.__dict__, member_name, member)
        for base in cls.__bases__:
            h.update(self.outside_ref(base, [], f"base of {qualified_name(cls)}"))
        if type(cls) is not type:
            h.update(b"M" + self.outside_ref(type(cls), [], f"metaclass of {qualified_name(cls)}"))
        members = vars(cls)
        for name in sorted(members):
            if name not in _SKIP:
                h.update(text(name) + self.member(members[name], f"{qualified_name(cls)}.{name}"))
        return h.digest()

    def member(self, attr: Any, where: str) -> bytes:
        if isinstance(attr, types.FunctionType):
            return self.ref(attr)
        if isinstance(attr, staticmethod):
            return b"s" + self.ref(attr.__func__)
        if isinstance(attr, classmethod):
            return b"k" + self.ref(attr.__func__)
        if isinstance(attr, property):
            parts = (attr.fget, attr.fset, attr.fdel)
            return b"p" + b"".join(b"-" if f is None else self.ref(f) for f in parts)
        if isinstance(attr, functools.cached_property):
            return b"q" + self.ref(attr.func)
        if isinstance(attr, type):
            return self.outside_ref(attr, [], where)
        return self.by_value(attr, where)


def _is_constant(value: object) -> bool:
    """A module-level constant that counts by value: a builtin scalar or a small tuple of them."""
    cls = type(value)
    if cls in _SCALARS:
        return True
    if cls is tuple or cls is frozenset:
        items: Any = value
        return len(items) <= _MAX_CONSTANT_ITEMS and all(type(x) in _SCALARS for x in items)
    return False


def _has_cache_key(value: object) -> bool:
    """Whether ``value`` says what identifies it (an instance with ``__cache_key__``)."""
    return getattr(type(value), "__cache_key__", None) is not None and not isinstance(value, type)


def _captured_constants(func: types.FunctionType) -> bytes:
    """The closure cells and defaults of ``func`` that are plain constants.

    A reference to a function names its code; its full digest joins the walk's sorted
    set. Adding these tells apart closures of one code where they are referenced, so
    ``(add(1), add(2))`` and ``(add(2), add(1))`` differ. Other captured values are
    covered by the set only.
    """
    values: list[object] = []
    for cell in func.__closure__ or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # a cell not assigned yet
            values.append(_Unset)
    values.extend(func.__defaults__ or ())
    values.extend(sorted((func.__kwdefaults__ or {}).items()))  # (name, value) pairs
    if not values:
        return b""
    h = new_hash()
    encoder = Encoder()
    for value in values:
        if value is _Unset:
            h.update(b"-")
        elif _is_constant(value):
            h.update(b"v" + encoder.digest(value))
        else:
            h.update(b"?")
    return h.digest()


class _Unset:
    """Marks a closure cell not assigned yet."""


def _named(obj: object) -> bool:
    """Whether ``obj`` is what its ``__module__`` and ``__qualname__`` name, so that name
    identifies it (not a closure or an instance a library made at run time)."""
    try:
        module = sys.modules.get(getattr(obj, "__module__", None) or "")
        qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
        if module is None or not isinstance(qualname, str) or "<locals>" in qualname:
            return False
        found: object = module
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:  # any attribute lookup of a foreign object may raise
        return False
    return found is obj


_IMMUTABLE: Final = frozenset(
    {
        *_SCALARS,
        type(...),
        range,
        decimal.Decimal,
        fractions.Fraction,
        dt.datetime,
        dt.date,
        dt.time,
        dt.timedelta,
        dt.timezone,
        uuid.UUID,
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
        pathlib.PosixPath,
        pathlib.WindowsPath,
    }
)
_MAX_IMMUTABLE_ITEMS: Final = 100_000


def _immutable(value: object) -> bool:
    """Whether ``value`` cannot change in place: immutable leaves in tuples, frozensets
    and frozen dataclasses, checked up to :data:`_MAX_IMMUTABLE_ITEMS` items."""
    stack = [value]
    budget = _MAX_IMMUTABLE_ITEMS
    while stack:
        item = stack.pop()
        budget -= 1
        if budget < 0:
            return False
        cls = type(item)
        if cls in _IMMUTABLE or isinstance(item, (enum.Enum, type, types.FunctionType)):
            continue
        if isinstance(item, _BUILTINS):
            continue
        if isinstance(item, (tuple, frozenset)):
            if getattr(item, "__dict__", None):  # a subclass holding mutable attributes
                return False
            stack.extend(item)
            continue
        if dataclasses.is_dataclass(item) and cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            stack.extend(getattr(item, f.name, None) for f in dataclasses.fields(item))
            continue
        if callable(item) and _named(item):  # numpy.sum, a ufunc
            continue
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(item, numpy.generic):  # numpy.float64(0.5)
            continue
        return False
    return True


# ---- which modules are the user's ------------------------------------------------------

_user_modules: dict[str, bool] = {}
_user_cwd: list[str] = [""]  # the working directory _user_modules was computed for


def is_user_module(name: str | None) -> bool:
    """Whether code from module ``name`` is the user's own (walked) or a library's (named).

    The user's: ``__main__``, modules of unknown origin, and modules whose file lies under
    the working directory or the main script's directory, outside site-packages and the
    standard library. plait itself is never walked.
    """
    if name is None or name == "__main__":
        return True
    try:
        cwd = os.getcwd()
    except OSError:  # the working directory was removed
        cwd = ""
    if cwd != _user_cwd[0]:
        _user_modules.clear()
        _user_cwd[0] = cwd
    known = _user_modules.get(name)
    if known is None:
        known = _user_modules[name] = _classify(name, cwd)
    return known


def _classify(name: str, cwd: str) -> bool:
    if name == "plait" or name.startswith("plait."):
        return False
    module = sys.modules.get(name)
    if module is None:
        return True
    file = getattr(module, "__file__", None)
    if not file:
        origin = getattr(getattr(module, "__spec__", None), "origin", None)
        return name not in sys.builtin_module_names and origin not in ("built-in", "frozen")
    path = os.path.realpath(file)
    parts = pathlib.PurePath(path).parts
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    if any(_under(path, lib) for lib in _library_dirs()):
        return False
    roots = [cwd] if cwd else []
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file:
        roots.append(os.path.dirname(os.path.realpath(main_file)))
    return any(_under(path, os.path.realpath(root)) for root in roots)


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple({os.path.realpath(paths[key]) for key in ("stdlib", "platstdlib") if key in paths})


def _under(path: str, root: str) -> bool:
    return path.startswith(root.rstrip(os.sep) + os.sep)
