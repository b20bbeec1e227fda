"""Caching of node results: fingerprints of values and code, and the stores results live in.

The stores and fingerprints load on first use, so ``import plait`` does not import
diskcache or SQLite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait._lazy import lazy_attributes
from plait.cache.miss import MISS

if TYPE_CHECKING:
    from plait.cache.fingerprint import fingerprint_code, fingerprint_value
    from plait.cache.stores import CacheStore, DiskCache, MemoryCache

__all__ = [
    "MISS",
    "CacheStore",
    "DiskCache",
    "MemoryCache",
    "fingerprint_code",
    "fingerprint_value",
]

__getattr__ = lazy_attributes(
    __name__,
    {
        "CacheStore": "plait.cache.stores",
        "DiskCache": "plait.cache.stores",
        "MemoryCache": "plait.cache.stores",
        "fingerprint_code": "plait.cache.fingerprint",
        "fingerprint_value": "plait.cache.fingerprint",
    },
)
