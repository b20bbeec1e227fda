"""Cache keys of a run's nodes: what a node computes, from what.

A cached node's key has two parts. Its *cone* is fixed per plan: the node's code
fingerprint, outputs and parameter names and, recursively, the cones of the cached
nodes it reads from, down to the *leaves*, the values that enter that part of the
graph: pipeline inputs, defaults, deps, and outputs of nodes that are not cached,
each by name. A run (or map item) adds the fingerprints of its leaves' values. So a
hit hashes each input value once per run and never an upstream result, and a node's
key is a string join, not a hash of its own.

Per-run resources (deps) count as ``d`` unless they define ``__cache_key__``. When a
leaf cannot be fingerprinted, a node is keyed by the fingerprints of its own
arguments' values instead; when those cannot be either, it is not cached, with a
warning: never a wrong hit.
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
_KEY_VERSION = b"plait-node-3"  # 3: a cone per plan, then the leaves' fingerprints

#: A leaf value's part of a key (:func:`_part`): an input, default or upstream value
#: (``v`` and its fingerprint; a small int or short string as it is), or a dep (``d``,
#: or its value's part when it has a ``__cache_key__``).
_VALUE, _DEP = range(2)

#: The nodes of each plan already warned about: a plan's runs say why a node is not
#: cached once, not on every run.
_warned: weakref.WeakKeyDictionary[Plan, set[str]] = weakref.WeakKeyDictionary()
_warned_lock = threading.Lock()


class CacheSetup:
    """What every run (or map item) of one plan shares: the store, each step's cone
    (:class:`Cones`), and the fingerprints of leaves whose values do not vary."""

    __slots__ = ("cache", "cones", "fixed", "per_item", "plan")

    def __init__(self, plan: Plan, cache: CacheStore, varying: Collection[int] = ()) -> None:
        self.plan = plan
        self.cache = cache
        #: Parts of leaves that do not vary, by slot, fingerprinted once.
        self.fixed: dict[int, bytes] = {}
        self.cones = cones = self._cones()
        #: Per slot, whether its part is fingerprinted per run (or item): the map's
        #: mapped inputs, deps and node outputs; other leaves' parts are kept in ``fixed``.
        per_item = set(varying) | plan.dep_slots | cones.outputs
        self.per_item = [slot in per_item for slot in range(len(plan.template))]

    def _cones(self) -> Cones:
        """The plan's cones, current: kept across its runs while their code guard holds
        (one check per run, not a code walk per node), rebuilt when it fails."""
        plan = self.plan
        cones = _plan_cones.get(plan)
        if cones is None or not cones.guard.still():
            cones = Cones(plan, [self.start(step) for step in plan.steps])
            with _plan_cones_lock:
                _plan_cones[plan] = cones
        if not cones.volatile:
            return cones
        # Some code read something mutable: walk it again, for this run.
        starts: list[tuple[hashlib.blake2b | None, Guard | None]]
        starts = [(start, _ALWAYS) for start in cones.starts]
        for index in cones.volatile:
            starts[index] = self.start(plan.steps[index])
        return Cones(plan, starts)

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

    def part(self, slot: int, values: Sequence[Any]) -> bytes:
        """A leaf's part of a key: see :data:`_VALUE`; raises Unfingerprintable."""
        if self.per_item[slot]:
            return _part(self.cones.kinds[slot], values[slot])
        fixed = self.fixed.get(slot)
        if fixed is None:
            fixed = self.fixed.setdefault(slot, _part(_VALUE, values[slot]))
        return fixed

    def leaves(self, cone: int, values: Sequence[Any]) -> str:
        """The leaves' part of the keys of cone ``cone`` (see :class:`Cones`): the hex of its
        only leaf's fingerprint, or a digest of them all; "" when one cannot be
        fingerprinted (keys then come from :meth:`key_by_value`)."""
        part = self.part
        try:
            single = self.cones.single[cone]
            if single >= 0:
                return part(single, values).hex()
            parts = [part(slot, values) for slot in self.cones.leaves[cone]]
        except Unfingerprintable:
            return ""
        h = hashlib.blake2b(b"leaves", digest_size=20)
        for each in parts:
            h.update(bytes((len(each),)) + each)
        return h.hexdigest()

    def key_by_value(self, index: int, values: Sequence[Any]) -> str | None:
        """Step ``index``'s key from its own arguments' values (a leaf of its cone could not
        be fingerprinted), or None, with a warning, when they cannot be either."""
        start = self.cones.starts[index]
        assert start is not None
        h = start.copy()
        h.update(b"by value")
        kinds = self.cones.kinds
        step = self.plan.steps[index]
        for _, slot in step.arg_slots:
            try:
                part = _part(kinds[slot], values[slot])
            except Unfingerprintable:
                named = _named(step, kinds, values)
                self.warn(step.node.name, f"an input cannot be fingerprinted ({named})")
                return None
            h.update(bytes((len(part),)) + part)
        return h.hexdigest()

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


class DepKey:
    """A dep's part of cache keys, taken where the dep was set up, to stand in for the
    dep in its slot where it is not (a later Daft stage: :mod:`plait.engine.daft.staged`)."""

    __slots__ = ("error", "part")

    def __init__(self, dep: object) -> None:
        self.part: bytes | None = None
        self.error: Unfingerprintable | None = None
        try:
            self.part = _part(_DEP, dep)
        except Unfingerprintable as exc:
            self.error = exc


def _part(kind: int, value: Any) -> bytes:
    if kind == _DEP:
        if type(value) is DepKey:
            if value.part is None:
                assert value.error is not None
                raise value.error
            return value.part
        if not hasattr(value, "__cache_key__"):
            return b"d"  # which resource, not its value
    cls = type(value)
    # Small ints and short strings, the usual map items, enter keys as they are: no hash.
    if cls is int and _INT_MIN <= value <= _INT_MAX:
        return b"n" + int.to_bytes(value, 8, "little", signed=True)
    if cls is str and len(value) <= _SHORT:
        return b"t" + str.encode(value, "utf-8", "surrogatepass")
    return b"v" + fingerprint_value(value)


_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_SHORT = 32


def _named(step: Step, kinds: Sequence[int], values: Sequence[Any]) -> Unfingerprintable | None:
    """The error of the first argument of ``step`` that cannot be fingerprinted, its path
    starting at the parameter's name."""
    for param, slot in step.arg_slots:
        if kinds[slot] == _DEP and not hasattr(values[slot], "__cache_key__"):
            continue  # a dep without a key is not fingerprinted
        try:
            fingerprint_value(values[slot], where=f"input {param!r}")
        except Unfingerprintable as exc:
            return exc
    return None


class Cones:
    """Each step's cone in one plan: its key prefix (the hex digest of its code and of
    its upstream cones, with each leaf by name) and its leaves' slots.

    Built from the steps' key starts (:meth:`CacheSetup.start`) and kept across the
    plan's runs with one merged guard over every code walk they came from; with
    ``volatile`` steps, it is built again for every run.
    """

    __slots__ = (
        "guard",
        "kinds",
        "leaves",
        "of_step",
        "outputs",
        "prefixes",
        "single",
        "starts",
        "volatile",
    )

    def __init__(
        self, plan: Plan, starts: list[tuple[hashlib.blake2b | None, Guard | None]]
    ) -> None:
        self.starts = [start for start, _ in starts]
        guards = [g for _, g in starts if g is not None and g is not _ALWAYS]
        self.volatile = tuple(i for i, (_, guard) in enumerate(starts) if guard is None)
        self.guard = Guard.merged(guards)
        names = _leaf_names(plan)
        self.kinds = [_DEP if slot in plan.dep_slots else _VALUE for slot in range(len(names))]
        self.outputs = frozenset(s for step in plan.steps for s in step.out_slots)
        producer = {
            slot: (index, position.to_bytes(2, "little"))
            for index, step in enumerate(plan.steps)
            for position, slot in enumerate(step.out_slots)
        }
        digests: list[bytes | None] = []
        cone_leaves: list[dict[bytes, int]] = []  # each step's leaves: name -> slot
        for index, step in enumerate(plan.steps):
            start = self.starts[index]
            leaves: dict[bytes, int] = {}
            if start is None:
                digests.append(None)
                cone_leaves.append(leaves)
                continue
            h = start.copy()
            for param, slot in step.arg_slots:
                upstream, position = producer.get(slot, (-1, b""))
                if upstream >= 0 and digests[upstream] is not None:
                    part = b"u" + digests[upstream] + position  # type: ignore[operator]
                    leaves.update(cone_leaves[upstream])
                else:
                    name = names[slot] or _unnamed(plan, step, param, slot)
                    part = b"l" + name
                    leaves[name] = slot
                h.update(len(part).to_bytes(4, "little") + part)
            digests.append(h.digest())
            cone_leaves.append(leaves)
        self.prefixes = [None if d is None else d.hex() for d in digests]
        # Steps with the same leaves share their part of a key, computed once per run.
        distinct: dict[tuple[int, ...], int] = {}
        self.of_step: list[int] = []
        for leaves in cone_leaves:
            slots = tuple(leaves[name] for name in sorted(leaves))
            self.of_step.append(distinct.setdefault(slots, len(distinct)))
        self.leaves = list(distinct)
        #: Each cone's only leaf, or -1: most steps read one mapped input.
        self.single = [slots[0] if len(slots) == 1 else -1 for slots in self.leaves]


def _leaf_names(plan: Plan) -> list[bytes | None]:
    """What names each slot's value as a leaf of a cone: ``i:`` and a pipeline input's
    name, ``o:`` and an output's name; None for defaults and deps, named after the
    parameter that reads them (see :class:`Cones`)."""
    names: list[bytes | None] = [None] * len(plan.template)
    for name, slot in plan.input_slots:
        names[slot] = b"i:" + name.encode()
    for step in plan.steps:
        for name, slot in zip(step.node.outputs, step.out_slots, strict=True):
            names[slot] = b"o:" + name.encode()
    return names


def _unnamed(plan: Plan, step: Step, param: str, slot: int) -> bytes:
    """The leaf name of a default or a dep. A default is named as the input it stands
    for, so that a run giving that input an equal value shares entries with one that
    does not; two defaults of one name in one cone can share it, as each node's code
    fingerprint covers its own defaults. A dep is named after the parameter reading it."""
    if slot in plan.dep_slots:
        return f"d:{step.node.name}.{param}".encode()
    return b"i:" + param.encode()


#: The guard of a step that is not cached: nothing to prove.
_ALWAYS: Final = Guard([])
_plan_cones: weakref.WeakKeyDictionary[Plan, Cones] = weakref.WeakKeyDictionary()
_plan_cones_lock = threading.Lock()
