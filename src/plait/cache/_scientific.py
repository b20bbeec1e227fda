"""Fingerprints of numpy and pandas values.

Imported only when such a value is fingerprinted; numpy and pandas are taken from
``sys.modules`` (a value of their types means they are imported already), so plait
never imports them itself.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from typing import Any

from plait.cache.fingerprint import Encoder, Failure, qualified_name, step, text

_u64 = struct.Struct("<Q").pack


def encode(enc: Encoder, h: hashlib.blake2b, value: Any, library: str) -> None:
    """Feed a numpy or pandas value into ``h``."""
    if library == "numpy":
        _numpy(enc, h, value)
    else:
        _pandas(enc, h, value)


# ---- numpy ----------------------------------------------------------------------------


def _numpy(enc: Encoder, h: hashlib.blake2b, value: Any) -> None:
    np = sys.modules["numpy"]
    if type(value) is np.ndarray:
        array(enc, h, b"n", value)
    elif isinstance(value, np.generic):
        array(enc, h, b"g", np.asarray(value))
    elif isinstance(value, np.dtype):
        h.update(b"y" + text(repr(value)))
    elif isinstance(value, np.ndarray):
        raise Failure(
            value, "ndarray subclasses (masked arrays, matrices ...) carry state plait cannot read"
        )
    else:
        raise Failure(value)


def array(enc: Encoder, h: hashlib.blake2b, tag: bytes, value: Any) -> None:
    """dtype, shape, then the raw bytes (or each element, for object dtypes)."""
    np = sys.modules["numpy"]
    h.update(tag + text(repr(value.dtype)) + _u64(value.ndim))
    h.update(b"".join(_u64(n) for n in value.shape))
    if value.dtype.hasobject:
        enc.sequence(h, b"l", value, value.reshape(-1).tolist())
        return
    data = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
    h.update(_u64(data.nbytes))
    h.update(data)


# ---- pandas -----------------------------------------------------------------------------


def _pandas(enc: Encoder, h: hashlib.blake2b, value: Any) -> None:
    pd = sys.modules["pandas"]
    if isinstance(value, pd.DataFrame):
        enc.enter(value)
        h.update(b"PD" + text(qualified_name(type(value))) + _u64(value.shape[1]))
        _part(enc, h, value.columns, ".columns", _index)
        _part(enc, h, value.index, ".index", _index)
        for i, label in enumerate(value.columns):
            _part(enc, h, value.iloc[:, i], f"[{label!r}]", _values)
        _part(enc, h, dict(value.attrs), ".attrs", Encoder.feed)
        enc.leave(value)
    elif isinstance(value, pd.Series):
        enc.enter(value)
        h.update(b"PS" + text(qualified_name(type(value))))
        _part(enc, h, value.name, ".name", Encoder.feed)
        _part(enc, h, value.index, ".index", _index)
        _part(enc, h, value, ".values", _values)
        _part(enc, h, dict(value.attrs), ".attrs", Encoder.feed)
        enc.leave(value)
    elif isinstance(value, pd.Index):
        _index(enc, h, value)
    elif value is pd.NaT:
        h.update(b"PN")
    elif value is pd.NA:
        h.update(b"PA")
    elif isinstance(value, pd.Timestamp):
        h.update(b"PT" + text(value.unit) + text(str(value.tz)))
        array(enc, h, b"g", sys.modules["numpy"].asarray(value.asm8))
    elif isinstance(value, pd.Timedelta):
        h.update(b"PL" + text(value.unit))
        array(enc, h, b"g", sys.modules["numpy"].asarray(value.asm8))
    else:
        raise Failure(value)


def _part(enc: Encoder, h: hashlib.blake2b, value: Any, where: str, how: Any) -> None:
    try:
        how(enc, h, value)
    except Failure as fail:
        raise step(fail, where) from None


def _index(enc: Encoder, h: hashlib.blake2b, value: Any) -> None:
    pd = sys.modules["pandas"]
    h.update(b"PX" + text(qualified_name(type(value))))
    enc.feed(h, list(value.names))
    if isinstance(value, pd.RangeIndex):
        h.update(b"r")
        enc.feed(h, range(value.start, value.stop, value.step))
    elif isinstance(value, pd.MultiIndex):
        h.update(b"M" + _u64(value.nlevels))
        for level in range(value.nlevels):
            _values(enc, h, value.get_level_values(level))
    else:
        _values(enc, h, value)


def _values(enc: Encoder, h: hashlib.blake2b, value: Any) -> None:
    """The values of a Series or Index, with their dtype.

    numpy-backed dtypes hash their raw bytes; object columns element by element (so
    ``1`` and ``"1"`` differ, which pandas' own hashing does not guarantee); float
    and complex extension dtypes (nullable ``Float64``, sparse) their missing mask and
    the raw bytes of the rest (``hash_pandas_object`` equates ``-0.0`` and ``0.0``);
    other extension dtypes (categorical, nullable integers, string, tz-aware ...) via
    ``hash_pandas_object``, 64 bits per element with a fixed key, stable across processes.
    """
    np = sys.modules["numpy"]
    pd = sys.modules["pandas"]
    dtype = value.dtype
    h.update(b"v" + text(type(dtype).__name__) + text(str(dtype)) + _u64(len(value)))
    if isinstance(dtype, np.dtype):
        if dtype.hasobject:
            items = value.tolist()
            enc.sequence(h, b"l", items, items)
        else:
            array(enc, h, b"n", value.to_numpy())
        return
    inner = _float_dtype(dtype)
    if inner is not None:  # exact bits: hash_pandas_object equates -0.0 and 0.0
        array(enc, h, b"m", np.asarray(value.isna(), dtype=bool))
        array(enc, h, b"n", value.to_numpy(dtype=inner, na_value=0))
        return
    if isinstance(dtype, pd.CategoricalDtype):  # unused categories and order count too
        _index(enc, h, dtype.categories)
        h.update(b"o" if dtype.ordered else b"u")
    hashes = pd.util.hash_pandas_object(value, index=False).to_numpy()
    array(enc, h, b"h", hashes)


def _float_dtype(dtype: Any) -> Any:
    """The numpy float or complex dtype under an extension dtype (nullable, sparse, arrow)."""
    np = sys.modules["numpy"]
    for attr in ("numpy_dtype", "subtype"):
        inner = getattr(dtype, attr, None)
        if isinstance(inner, np.dtype) and inner.kind in "fc":
            return inner
    return None
