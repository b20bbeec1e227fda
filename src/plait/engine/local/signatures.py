"""Cache keys of a run's nodes: what a node computes, from what.

A node's signature hashes its code fingerprint, and per argument either the
signature of the upstream node that produced it (so a hit never needs the
upstream value hashed) or the fingerprint of the value itself (pipeline inputs,
defaults, and outputs of nodes that are not cached). Per-run resources (deps)
are left out unless they define ``__cache_key__``. Anything that cannot be
fingerprinted makes that node uncached, with a warning: never a wrong hit.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
import weakref
from collections.abc import Collection, Sequence
from typing import Any, Final

from plait.cache._code import Guard
from plait.cache.fingerprint import fingerprint_value, guarded_code_fingerprint
from plait.cache.stores import CacheStore
from plait.engine.local.plan import Plan, Step
from plait.errors import CacheWarning, Unfingerprintable

#: Bumped when the key layout changes, so old entries are never misread.
_KEY_VERSION = b"plait-node-2"  # 2: floats by their bits, closures like globals


#: How a step's argument enters its key (see :meth:`Signer.key`).
_UPSTREAM, _DEP, _VARYING, _FIXED = range(4)
#: Length and tag of an upstream part: b"u", the producer's signature (20 bytes), the
#: output's position (2 bytes).
_UPSTREAM_HEAD: Final = bytes((23,)) + b"u"


#: The nodes of each plan already warned about: a plan's runs say why a node is not
#: cached once, not on every run.
_warned: weakref.WeakKeyDictionary[Plan, set[str]] = weakref.WeakKeyDictionary()
_warned_lock = threading.Lock()


class CacheSetup:
    """What every run (or map item) of one plan shares: the store, each step's code
    fingerprint (as a hasher already fed with it), how each argument is keyed, and
    fingerprints of values that do not vary."""

    __slots__ = ("arguments", "cache", "fixed", "plan", "starts")

    def __init__(self, plan: Plan, cache: CacheStore, varying: Collection[int] = ()) -> None:
        self.plan = plan
        self.cache = cache
        self.fixed: dict[int, bytes] = {}
        self.starts = self._starts()
        self.arguments = _layout(plan, frozenset(varying))

    def _starts(self) -> list[hashlib.blake2b | None]:
        """Each step's key start, current: the plan's :class:`CodeKeys` while their guard
        holds (one check per run, not a code walk per node), rebuilt when it fails."""
        plan = self.plan
        keys = _code_keys.get(plan)
        if keys is None or not keys.guard.still():
            keys = CodeKeys(self)
            with _code_keys_lock:
                _code_keys[plan] = keys
        if not keys.volatile:
            return keys.starts
        starts = list(keys.starts)
        for index in keys.volatile:  # their code read something mutable: walk it again
            starts[index] = self.start(plan.steps[index])[0]
        return starts

    def start(self, step: Step) -> tuple[hashlib.blake2b | None, Guard | None]:
        """A hasher fed with what is fixed in the step's key: its code, outputs and
        parameter names (None when the step is not cached), and the guard proving its
        code fingerprint current (None: fingerprint it again on every run)."""
        node = step.node
        if not node.cache:
            return None, _ALWAYS
        try:
            code, guard = guarded_code_fingerprint(node.func)
            if node.batching is not None and node.batching.separate:  # both forms count
                batch_code, batch_guard = guarded_code_fingerprint(node.batching.func)
                code += batch_code
                # Either walk without a guard: the step is fingerprinted on every run.
                guard = (
                    None
                    if guard is None or batch_guard is None
                    else Guard.merged([guard, batch_guard])
                )
        except Unfingerprintable as exc:
            self.warn(node.name, f"its function cannot be fingerprinted ({exc})")
            return None, None
        known = step.key_start  # the same code as last run: reuse its hasher
        if known is not None and known[0] == code:
            return known[1], guard
        h = hashlib.blake2b(_KEY_VERSION, digest_size=20)
        for part in (
            code,
            *(o.encode() for o in node.outputs),
            b"",
            *(n.encode() for n, _ in step.arg_slots),
        ):
            h.update(len(part).to_bytes(4, "little") + part)
        step.key_start = (code, h)
        return h, guard

    def warn(self, node_name: str, why: str) -> None:
        """Warn once per node and plan (a pipeline and its selected outputs), not on every
        run, that the node is not cached."""
        with _warned_lock:
            warned = _warned.setdefault(self.plan, set())
            if node_name in warned:
                return
            warned.add(node_name)
        warnings.warn(
            f"node {node_name!r} is not cached: {why}",
            CacheWarning,
            stacklevel=2,
        )

    def signer(self) -> Signer:
        """Signatures for one run (or one map item)."""
        return Signer(self)


class Signer:
    """The signatures of one run's steps, computed as each step becomes ready."""

    __slots__ = ("arguments", "setup", "signatures", "starts")

    def __init__(self, setup: CacheSetup) -> None:
        self.setup = setup
        self.starts = setup.starts
        self.arguments = setup.arguments
        self.signatures: list[bytes | None] = [None] * len(setup.starts)

    def key(self, index: int, values: Sequence[Any]) -> str | None:
        """The cache key of step ``index`` (its inputs are in ``values``), or None."""
        start = self.starts[index]
        if start is None:
            return None
        h = start.copy()
        signatures = self.signatures
        try:
            for kind, slot, producer, position in self.arguments[index]:
                if kind == _UPSTREAM:
                    upstream = signatures[producer]
                    if upstream is not None:  # else the producer is not cached
                        h.update(_UPSTREAM_HEAD + upstream + position)
                        continue
                    part = b"v" + fingerprint_value(values[slot])
                elif kind == _VARYING:
                    part = b"v" + fingerprint_value(values[slot])
                elif kind == _FIXED:
                    fixed = self.setup.fixed
                    part = fixed.get(slot) or fixed.setdefault(
                        slot, b"v" + fingerprint_value(values[slot])
                    )
                else:  # a dep: which resource, not its value, unless it has a cache key
                    value = values[slot]
                    has_key = hasattr(value, "__cache_key__")
                    part = b"v" + fingerprint_value(value) if has_key else b"d"
                h.update(bytes((len(part),)) + part)
        except Unfingerprintable as exc:
            setup = self.setup
            step = setup.plan.steps[index]
            named = self._named(index, values) or exc
            setup.warn(step.node.name, f"an input cannot be fingerprinted ({named})")
            return None
        signature: bytes = h.digest()
        signatures[index] = signature
        return signature.hex()

    def _named(self, index: int, values: Sequence[Any]) -> Unfingerprintable | None:
        """The error of the first fingerprinted argument of step ``index`` that cannot be,
        its path starting at the parameter's name (looked for once a key has failed)."""
        step = self.setup.plan.steps[index]
        arguments = self.setup.arguments[index]
        for (param, slot), (kind, _, producer, _) in zip(step.arg_slots, arguments, strict=True):
            if kind == _UPSTREAM and self.signatures[producer] is not None:
                continue  # keyed by the producer's signature
            if kind == _DEP and not hasattr(values[slot], "__cache_key__"):
                continue  # a dep without a key is not fingerprinted
            try:
                fingerprint_value(values[slot], where=f"input {param!r}")
            except Unfingerprintable as exc:
                return exc
        return None


class CodeKeys:
    """The key starts of one plan's steps (:meth:`CacheSetup.start`), kept across its
    runs with one merged guard over every code walk they came from; ``volatile``
    steps are fingerprinted again on every run."""

    __slots__ = ("guard", "starts", "volatile")

    def __init__(self, setup: CacheSetup) -> None:
        self.starts: list[hashlib.blake2b | None] = []
        guards: list[Guard] = []
        volatile: list[int] = []
        for index, step in enumerate(setup.plan.steps):
            start, guard = setup.start(step)
            self.starts.append(start)
            if guard is None:
                volatile.append(index)
            elif guard is not _ALWAYS:
                guards.append(guard)
        self.guard = Guard.merged(guards)
        self.volatile = tuple(volatile)


#: The guard of a step that is not cached: nothing to prove.
_ALWAYS: Final = Guard([])
_code_keys: weakref.WeakKeyDictionary[Plan, CodeKeys] = weakref.WeakKeyDictionary()
_code_keys_lock = threading.Lock()


Layout = list[tuple[tuple[int, int, int, bytes], ...]]
_layouts: weakref.WeakKeyDictionary[Plan, dict[frozenset[int], Layout]] = (
    weakref.WeakKeyDictionary()
)


def _layout(plan: Plan, varying: frozenset[int]) -> Layout:
    """How each step's arguments enter its key; fixed per plan (and mapped slots)."""
    known = _layouts.setdefault(plan, {})
    layout = known.get(varying)
    if layout is not None:
        return layout
    producer = {
        slot: (index, position.to_bytes(2, "little"))
        for index, step in enumerate(plan.steps)
        for position, slot in enumerate(step.out_slots)
    }

    def argument(slot: int) -> tuple[int, int, int, bytes]:
        if slot in producer:
            return (_UPSTREAM, slot, *producer[slot])
        kind = _DEP if slot in plan.dep_slots else _VARYING if slot in varying else _FIXED
        return (kind, slot, -1, b"")

    layout = known[varying] = [
        tuple(argument(slot) for _, slot in step.arg_slots) for step in plan.steps
    ]
    return layout
