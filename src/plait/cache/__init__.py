"""Caching of node results: fingerprints of values and code, and the stores results live in."""

from plait.cache.fingerprint import fingerprint_code, fingerprint_value
from plait.cache.stores import MISS, CacheStore, DiskCache, MemoryCache

__all__ = [
    "MISS",
    "CacheStore",
    "DiskCache",
    "MemoryCache",
    "fingerprint_code",
    "fingerprint_value",
]
