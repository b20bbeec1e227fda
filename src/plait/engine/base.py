"""Engine: the interface every way of running a pipeline implements.

Engines orchestrate; executors only execute. An engine takes a pipeline (what
to compute) and a request that :class:`~plait.Pipeline` has already checked,
and runs it: once (:meth:`Engine.arun`) or once per item (:meth:`Engine.aimap`).
Every public entry point (``run``, ``map``, ``imap``, their async forms, nested
pipelines, ``batch``) reaches an engine through these two methods only.
"""

from __future__ import annotations

import abc
import traceback
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

from plait._text import short_repr

if TYPE_CHECKING:
    from plait.cache.stores import CacheStore
    from plait.graph import Graph

MapMode = Literal["zip", "product"]
OnError = Literal["raise", "collect"]


class PipelineView(Protocol):
    """What an engine reads of a pipeline (:class:`plait.Pipeline` provides it)."""

    @property
    def graph(self) -> Graph: ...
    @property
    def name(self) -> str | None: ...
    @property
    def cache(self) -> CacheStore | None: ...
    @property
    def callbacks(self) -> tuple[object, ...]: ...


@dataclass(frozen=True, eq=False)
class ItemError:
    """A map item that failed, in its place in the results (``on_error="collect"``).

    Attributes:
        index: the item's position in the map.
        inputs: the item's mapped inputs (broadcast inputs are the same for all).
        exception: the exception the item raised (with plait's notes).
        traceback: the formatted traceback, kept as text.
    """

    index: int
    inputs: dict[str, Any]
    exception: BaseException
    traceback: str = field(repr=False)

    @classmethod
    def of(
        cls,
        exc: BaseException,
        index: int,
        inputs: dict[str, Any],
        formatted: str | None = None,
    ) -> ItemError:
        """The ItemError of item ``index``; its traceback formatted now unless given."""
        if formatted is None:
            formatted = "".join(traceback.format_exception(exc))
        return cls(index, inputs, exc, formatted)

    def __repr__(self) -> str:
        return (
            f"ItemError(index={self.index}, inputs={short_repr(self.inputs)}, "
            f"exception={self.exception!r})"
        )


#: What a map gives for one item: its outputs, or the ItemError it failed with.
Outcome = dict[str, Any] | ItemError


class Consecutive(Sequence[tuple[int, Outcome]]):
    """The outcomes of consecutive map items, the first of them item ``first``, read as
    their ``(index, outcome)`` pairs: a :data:`Finished` that holds no pair per item.

    A chunk of items that a worker ran arrives as its outcomes in order; pairing
    each one with its index would cost an object per item, made only to be taken
    apart again by the caller (``Pipeline.map`` takes ``outcomes`` whole).
    """

    __slots__ = ("first", "outcomes")

    def __init__(self, first: int, outcomes: list[Outcome]) -> None:
        self.first = first
        self.outcomes = outcomes

    def __len__(self) -> int:
        return len(self.outcomes)

    def __iter__(self) -> Iterator[tuple[int, Outcome]]:
        return zip(range(self.first, self.first + len(self.outcomes)), self.outcomes, strict=True)

    @overload
    def __getitem__(self, position: int) -> tuple[int, Outcome]: ...
    @overload
    def __getitem__(self, position: slice) -> list[tuple[int, Outcome]]: ...
    def __getitem__(self, position: int | slice) -> Any:
        if isinstance(position, slice):
            return list(self)[position]
        count = len(self.outcomes)
        if not -count <= position < count:
            raise IndexError(f"position {position} of {count} consecutive outcomes")
        position %= count
        return (self.first + position, self.outcomes[position])

    def __repr__(self) -> str:
        return f"Consecutive({self.first}, {self.outcomes!r})"


#: Map items that finished together, as ``(index, outcome)`` pairs in index order:
#: what :meth:`Engine.aimap` yields, a list of pairs or a :class:`Consecutive` (a
#: sequence per wake-up, not a pair per item, keeps the cost per item low from the
#: engine to the caller).
Finished = list[tuple[int, Outcome]] | Consecutive


class Engine(abc.ABC):
    """How pipelines run: subclass it and implement :meth:`arun` and :meth:`aimap`.

    Before an engine is called, the pipeline has checked the request, the same
    way for every engine: unknown outputs, missing inputs, inputs that are
    outputs, unused inputs (a warning), ``map_over`` names, ``map_mode`` and
    ``on_error`` values, iterable mapped inputs, and zip lengths where the inputs
    know them. An engine receives ``inputs`` with the pipeline's bound inputs
    merged in, and ``output_name`` as a tuple of output names or None (all).

    ``plait.LocalEngine`` runs on this machine; see docs/engines.md for writing one.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Engine:
        if cls is Engine:
            raise TypeError(
                "plait.Engine is the interface engines implement; to run pipelines on this "
                "machine use plait.LocalEngine(...) (it takes node_executor, map_executor, "
                "max_workers, max_concurrent, cache and callbacks)"
            )
        return super().__new__(cls)

    @abc.abstractmethod
    async def arun(
        self,
        pipeline: PipelineView,
        inputs: Mapping[str, Any],
        output_name: tuple[str, ...] | None = None,
    ) -> dict[str, Any]:
        """Run ``pipeline`` once on ``inputs``; return the selected outputs by name.

        A node's exception propagates with its own type, with notes naming the node.
        """

    @abc.abstractmethod
    def aimap(
        self,
        pipeline: PipelineView,
        inputs: Mapping[str, Any],
        map_over: tuple[str, ...],
        *,
        map_mode: MapMode = "zip",
        output_name: tuple[str, ...] | None = None,
        on_error: OnError = "raise",
        ordered: bool = False,
    ) -> AsyncIterator[Finished]:
        """Run ``pipeline`` once per item; as items finish, yield lists of their
        ``(index, outcome)`` pairs (:data:`Finished`): those that finished together,
        in index order, never an empty list. ``Pipeline.imap`` and ``aimap`` hand the
        pairs on one by one.

        Args:
            inputs: every input; those named in ``map_over`` are iterables of
                per-item values, the others are the same for every item.
            map_over: the mapped inputs. ``map_mode="zip"`` pairs their values
                item by item; ``"product"`` takes every combination (in
                ``itertools.product`` order). :func:`plait.engine.request.map_items`
                yields the items.
            output_name: the outputs each item returns (None: all).
            on_error: ``"raise"``: the first failing item's exception propagates,
                with a note naming the item, and the rest are cancelled;
                ``"collect"``: a failing item yields an :class:`ItemError`.
            ordered: yield in input order rather than as items finish.

        Closing the iterator early (``aclose``) cancels the items in flight.
        """

    def close(self) -> None:  # noqa: B027 - an engine without resources needs nothing
        """Release what the engine holds (worker pools, clusters); a no-op by default."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
