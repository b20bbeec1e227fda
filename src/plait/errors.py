"""Exceptions and warnings raised by plait.

plait's own errors subclass :class:`PlaitError` and, where natural, a builtin
(``ValueError``, ``TypeError``) so ordinary ``except`` clauses keep working.
Exceptions raised by user code are never wrapped: they propagate with their own
type and carry a note (``BaseException.add_note``) naming the node that raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class PlaitError(Exception):
    """Base class for every error plait raises itself."""


class NodeDefinitionError(PlaitError, TypeError):
    """A function cannot become a node (``*args``, bad ``output_name`` ...)."""


class GraphError(PlaitError, ValueError):
    """The nodes given to a :class:`~plait.Pipeline` do not form a valid graph."""


class DuplicateOutputError(GraphError):
    """Two nodes produce the same output name."""


class DuplicateNodeNameError(GraphError):
    """Two nodes share one name; names identify nodes in errors and results.

    Only names given with ``name=`` can clash: nodes sharing a name taken from their
    function are told apart by their outputs (``fetch[a]``, ``fetch[b]``).
    """


class CycleError(GraphError):
    """The graph has a cycle; :attr:`cycle` lists the node names along it."""

    def __init__(self, message: str, cycle: Sequence[str]) -> None:
        super().__init__(message)
        self.cycle: tuple[str, ...] = tuple(cycle)


class InputError(PlaitError, ValueError):
    """The arguments of a run or bind (inputs, output_name) do not fit the pipeline."""


class MissingInputsError(InputError, TypeError):
    """Required inputs were not given; :attr:`missing` maps each to the nodes needing it."""

    def __init__(self, message: str, missing: dict[str, tuple[str, ...]]) -> None:
        super().__init__(message)
        self.missing = missing


class UnknownOutputError(PlaitError, ValueError):
    """An output name that no node of the pipeline produces."""


class OutputArityError(PlaitError, TypeError):
    """A node with a tuple ``output_name`` did not return a tuple of that length."""


class BatchLengthError(PlaitError, ValueError):
    """A node's batch function returned a different number of results than it was given
    items (for a node with several outputs: for one of its outputs)."""


class EngineError(PlaitError, ValueError):
    """An engine or executor was configured wrongly."""


class DepDefinitionError(PlaitError, TypeError):
    """A :class:`~plait.deps.Dep` cannot be made as written (``*args``, a cycle ...)."""


class DepError(PlaitError, RuntimeError):
    """A dep did not follow the protocol when run (a generator that did not yield exactly once)."""


class PlaitWarning(UserWarning):
    """Base class for warnings plait emits."""


class UnusedInputWarning(PlaitWarning):
    """An input was given that no node of the pipeline uses (often a typo)."""


class IteratorInputWarning(PlaitWarning):
    """An iterator was given as an input that more than one call consumes: the first
    exhausts it, the others see it empty."""


class RunningLoopWarning(PlaitWarning, RuntimeWarning):
    """A sync entry point was called inside a running event loop and blocks it."""


class CacheError(PlaitError, ValueError):
    """A cache store was configured wrongly or cannot be opened."""


class Unfingerprintable(PlaitError, TypeError):
    """A value or callable cannot be fingerprinted, so a result depending on it cannot be cached.

    :attr:`type_name` is the qualified name of the offending type and :attr:`path`
    the steps from the top-level value down to it (``["['model']", ".weights"]``).
    """

    def __init__(self, message: str, *, type_name: str, path: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.path: tuple[str, ...] = tuple(path)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (to or from a worker process) with its keyword-only fields.
        return (_unfingerprintable, (str(self), self.type_name, self.path), self.__dict__)


def _unfingerprintable(message: str, type_name: str, path: tuple[str, ...]) -> Unfingerprintable:
    return Unfingerprintable(message, type_name=type_name, path=path)


class CacheWarning(PlaitWarning):
    """A cache entry could not be read or written; plait recomputes instead."""


class WorkerDiedError(PlaitError, RuntimeError):
    """A process-pool worker died (killed, crashed, out of memory) while running items."""
