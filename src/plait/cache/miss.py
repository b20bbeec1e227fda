"""The sentinel a cache store returns for a key it does not hold."""

from __future__ import annotations

import enum
from typing import Final, Literal


class _Miss(enum.Enum):
    """The type of :data:`MISS` (an enum, so it stays a singleton through pickle)."""

    MISS = "MISS"

    def __repr__(self) -> str:
        return "MISS"

    __str__ = __repr__


MISS: Final = _Miss.MISS
"""What a store's ``get`` returns for a key it does not hold (``None`` is a value)."""

Miss = Literal[_Miss.MISS]
