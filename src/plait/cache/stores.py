"""Cache stores: where plait keeps node results, keyed by a hex string.

A store has two methods, :meth:`CacheStore.get` (the value or :data:`MISS`) and
:meth:`CacheStore.set`. ``None`` is a value like any other, which is why a miss is the
:data:`MISS` sentinel. Two stores ship with plait: :class:`MemoryCache` (a dict in this
process) and :class:`DiskCache` (a directory shared by threads and processes).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import pickle
import sqlite3
import stat
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Final, Protocol, runtime_checkable

import cloudpickle  # type: ignore[import-untyped]
import diskcache  # type: ignore[import-untyped]

from plait._text import short_repr
from plait.cache.storing import storing_label
from plait.errors import CacheError, CacheWarning

__all__ = ["MISS", "CacheStore", "DiskCache", "MemoryCache"]


from plait.cache.miss import MISS


@runtime_checkable
class CacheStore(Protocol):
    """Where results are kept. Keys are hex strings; values are any Python objects.

    ``get`` must return :data:`MISS` for a key it does not hold (or cannot read), and
    neither method should raise for a bad entry: a cache that fails only costs a
    recomputation. Both may be called from several threads at once.

    Optionally, a class attribute ``process_safe = True`` says that the store pickles
    into worker processes and they share it (as :class:`DiskCache` does); without it
    items run in worker processes do not use the cache.
    """

    def get(self, key: str) -> Any:
        """The value stored under ``key``, or :data:`MISS`."""
        ...

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        ...


class _Entries(dict[str, Any]):
    """A dict whose missing keys read as :data:`MISS`: a lookup is one call in C."""

    __slots__ = ()

    def __missing__(self, key: str) -> Any:
        return MISS


class MemoryCache:
    """Results in a dict of this process; thread-safe.

    With ``max_entries`` the least recently used entries are dropped beyond that many.
    Values are kept as they are, not copied: mutating a result mutates the cached one.
    ``get(key)`` gives the value stored under ``key`` (then the most recently used) or
    :data:`MISS`.

    >>> cache = MemoryCache(max_entries=2)
    >>> cache.set("a", None)
    >>> cache.get("a"), cache.get("b")
    (None, MISS)
    """

    __slots__ = ("_data", "_lock", "_lru", "_max_entries", "get")

    #: Whether worker processes can share this store (they cannot: it is in this process).
    process_safe: ClassVar[bool] = False

    def __init__(self, max_entries: int | None = None) -> None:
        if max_entries is not None and (
            isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1
        ):
            raise CacheError(
                f"MemoryCache(max_entries={max_entries!r}): give a positive int, or None for "
                "no limit"
            )
        self._max_entries = max_entries
        # Unbounded: a plain dict, whose single get and set are atomic, so no lock (a
        # lock would make a write ~5x slower), and ``get`` is the dict's own lookup: a
        # cached node's hit costs no Python call. Bounded: an OrderedDict under a lock.
        self._data = _Entries()
        self._lru: OrderedDict[str, Any] | None = None if max_entries is None else OrderedDict()
        self._lock = threading.Lock()
        self.get: Callable[[str], Any] = (
            self._data.__getitem__ if max_entries is None else self._get_recent
        )

    @property
    def max_entries(self) -> int | None:
        """How many entries are kept at most (None: no limit)."""
        return self._max_entries

    def _get_recent(self, key: str) -> Any:
        """``get`` of a bounded cache: the entry read becomes the most recently used."""
        assert self._lru is not None
        with self._lock:
            value = self._lru.get(key, MISS)
            if value is not MISS:
                self._lru.move_to_end(key)
            return value

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key``; beyond ``max_entries`` drop the least recently used."""
        lru = self._lru
        if lru is None:
            self._data[key] = value
            return
        with self._lock:
            lru[key] = value
            lru.move_to_end(key)
            if self._max_entries is not None and len(lru) > self._max_entries:
                lru.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data if self._lru is None else self._lru)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._data.clear()
            if self._lru is not None:
                self._lru.clear()

    def __reduce__(self) -> Any:
        raise TypeError(
            "a MemoryCache lives in one process and cannot be pickled; to share a cache "
            "with worker processes use plait.cache.DiskCache(path)"
        )

    def __repr__(self) -> str:
        limit = "" if self.max_entries is None else f"max_entries={self.max_entries}, "
        return f"MemoryCache({limit}entries={len(self)})"


#: Seconds a writer waits for the sqlite lock another thread or process holds.
SQLITE_TIMEOUT: Final = 60.0

#: diskcache settings of every :class:`DiskCache` (they are stored in the directory too).
DISKCACHE_SETTINGS: Final[dict[str, Any]] = {
    # Never drop results on our own: no eviction policy and no culling pass on each
    # write (which would also cost a query per set). ``size_limit`` only matters to a
    # policy, so with 'none' the directory grows until clear() or deletion.
    "eviction_policy": "none",
    "cull_limit": 0,
    "statistics": False,  # hit counters would turn every read into a write transaction
    "tag_index": False,
    # diskcache's defaults, stated because correctness depends on them: WAL lets readers
    # run beside one writer, and synchronous=NORMAL under WAL keeps every committed entry
    # through a crash of the process (not necessarily through a power loss).
    "sqlite_journal_mode": "wal",
    "sqlite_synchronous": 1,
}


class _Connections:
    """The sqlite connections one cache opened, in every thread, with the thread each
    belongs to; kept apart from the cache so a finalizer can close them."""

    __slots__ = ("generation", "lock", "opened")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.opened: list[tuple[sqlite3.Connection, weakref.ref[threading.Thread]]] = []
        #: Bumped by close(): a thread's connection of an older generation is closed.
        self.generation = 0

    def add(self, con: sqlite3.Connection) -> int:
        """Record a new connection of this thread; close those of finished threads."""
        finished: list[tuple[sqlite3.Connection, Any]] = []
        with self.lock:
            alive: list[tuple[sqlite3.Connection, weakref.ref[threading.Thread]]] = []
            for entry in self.opened:
                thread = entry[1]()
                (alive if thread is not None and thread.is_alive() else finished).append(entry)
            alive.append((con, weakref.ref(threading.current_thread())))
            self.opened = alive
            generation = self.generation
        _close_all(finished)
        return generation

    def close(self) -> None:
        with self.lock:
            opened, self.opened = self.opened, []
            self.generation += 1
        _close_all(opened)


def _close_all(opened: list[tuple[sqlite3.Connection, Any]]) -> None:
    for con, _ in opened:
        with contextlib.suppress(sqlite3.Error):
            con.close()


class _Cache(diskcache.Cache):  # type: ignore[misc]
    """A diskcache.Cache that can close every connection it opened.

    diskcache keeps one sqlite connection per thread (in a ``threading.local``) and
    its ``close()`` closes the calling thread's only: the connections of other
    threads (an engine's worker threads, the bridge's loop thread) were closed by
    nobody, and Python 3.13 warns when one is garbage-collected (``ResourceWarning:
    unclosed database``). Here each connection is recorded with its thread, opened
    with ``check_same_thread=False`` so that another thread may close it (each is
    still used by its own thread only); :meth:`close` closes them all, a new
    connection closes those of finished threads, and a finalizer closes what is
    left when the cache is garbage-collected. A thread whose connection was closed
    by :meth:`close` opens a new one when it uses the cache again.
    """

    def __init__(self, directory: str, **settings: Any) -> None:
        self._connections = connections = _Connections()
        self._pid = os.getpid()
        weakref.finalize(self, connections.close)
        super().__init__(directory, **settings)

    @property
    def _con(self) -> sqlite3.Connection:
        local = self._local
        con: sqlite3.Connection | None = getattr(local, "con", None)
        if (
            con is None
            or local.generation != self._connections.generation
            or local.pid != os.getpid()
        ):
            con = self._connect()
        return con

    def _connect(self) -> sqlite3.Connection:
        """A new connection for this thread, set up as diskcache sets up its own."""
        pid = os.getpid()
        if pid != self._pid:  # a forked child: the parent's connections are not ours
            self._pid, self._connections.opened = pid, []
        con = sqlite3.connect(
            os.path.join(self._directory, diskcache.core.DBNAME),
            timeout=self._timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        local = self._local
        local.con, local.pid = con, pid
        local.generation = self._connections.add(con)
        # Some pragmas are per connection: apply the ones stored in the Settings table
        # (which does not exist yet while the cache is being created).
        try:
            settings = con.execute("SELECT key, value FROM Settings").fetchall()
        except sqlite3.OperationalError:
            pass
        else:
            for key, value in settings:
                if key.startswith("sqlite_"):
                    self.reset(key, value, update=False)
        return con

    def close(self) -> None:
        """Close every connection of this cache, in every thread."""
        self._connections.close()
        with contextlib.suppress(AttributeError):
            del self._local.con


class DiskCache:
    """Results in a directory, shared by threads and by several processes.

    Built on `diskcache <https://grantjenks.com/docs/diskcache/>`_: a sqlite index (WAL
    mode) plus one file per large value. A write is one sqlite transaction (a B-tree
    insert, flat in practice as the cache grows), atomic (a reader or a crashed writer
    never leaves half an entry), and safe with concurrent writers in other threads and
    processes. Nothing is ever evicted: the directory grows until :meth:`clear` or until
    you delete it.

    Values are pickled with cloudpickle (so lambdas and closures inside results work).
    An entry that cannot be unpickled (corrupt, or its class is gone) is a miss: plait
    warns with :class:`~plait.errors.CacheWarning`, deletes it and recomputes. A value
    that cannot be pickled is not stored, with a warning; the run goes on.

    **Cache files are pickles, and loading a pickle can run arbitrary code: only point
    plait at directories you trust.** A new directory is created private (mode 0o700);
    an existing one that other users can access is used with a warning.

    A DiskCache pickles as its path, so one sent to a worker process reopens the same
    directory there and the workers' results land in the same cache.

    :meth:`close` (or ``with DiskCache(path) as cache:``) closes the sqlite connections
    of every thread that used it; a closed cache reopens lazily if used again.
    """

    __slots__ = ("_cache", "_path")

    #: Whether worker processes can share this store (they can: it pickles as its path).
    process_safe: ClassVar[bool] = True

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        # diskcache expands ~ and $VARS itself; expand them here too, so the directory
        # checked for privacy is the one diskcache opens.
        expanded = os.path.expandvars(os.path.expanduser(os.fspath(directory)))
        path = pathlib.Path(expanded).absolute()
        self._path = path
        _private_directory(path)
        try:
            self._cache = _Cache(str(path), timeout=SQLITE_TIMEOUT, **DISKCACHE_SETTINGS)
        except (OSError, sqlite3.Error, diskcache.Timeout) as error:
            raise CacheError(
                f"cannot open a cache in directory '{path}': {error or type(error).__name__}. "
                "Give DiskCache a directory you can write to that holds nothing but a plait "
                "cache (or an empty one)."
            ) from error

    @property
    def directory(self) -> pathlib.Path:
        """The absolute path of the cache directory."""
        return self._path

    def get(self, key: str) -> Any:
        """The value stored under ``key``, or :data:`MISS` (also for an unreadable entry)."""
        try:
            data = self._cache.get(key, MISS)
            if data is MISS:
                return MISS
            if type(data) is not bytes:
                raise TypeError(f"it holds a {type(data).__name__}, not pickled bytes")
            return pickle.loads(data)
        except (sqlite3.Error, diskcache.Timeout) as error:  # the index: busy or broken
            _warn(f"cannot read cache entry {key} in '{self._path}' ({_reason(error)})")
            return MISS
        except Exception as error:  # unpickling can raise anything a __setstate__ raises
            self._discard(key)
            _warn(
                f"cache entry {key} in '{self._path}' cannot be loaded and was deleted; "
                f"recomputing ({_reason(error)})"
            )
            return MISS

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key``; warn instead of raising if it cannot be stored."""
        try:
            data = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # pickling can raise anything a __reduce__ raises
            _warn(
                f"{storing_label()}result {short_repr(value)} (type {type(value).__qualname__}) "
                f"cannot be pickled, so it was not cached under {key} ({_reason(error)})"
            )
            return
        try:
            self._cache.set(key, data)
        except (OSError, sqlite3.Error, diskcache.Timeout) as error:
            _warn(f"cannot write cache entry {key} in '{self._path}' ({_reason(error)})")

    def _discard(self, key: str) -> None:
        # Another process may have replaced the entry meanwhile; deleting its good value
        # only costs that process's result one recomputation.
        with contextlib.suppress(OSError, sqlite3.Error, diskcache.Timeout):
            self._cache.delete(key)

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        """Delete every entry (the directory stays)."""
        self._cache.clear(retry=True)

    def close(self) -> None:
        """Close the connections this cache opened, in every thread.

        Closing twice is fine. A closed cache is not dead: used again, it opens new
        connections (close it again when done). ``with DiskCache(path) as cache:``
        closes it at the end of the block; a cache garbage-collected unclosed closes
        its connections then.
        """
        self._cache.close()

    def __enter__(self) -> DiskCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[type[DiskCache], tuple[str]]:
        return DiskCache, (str(self._path),)

    def __repr__(self) -> str:
        return f"DiskCache('{self._path}')"


def _private_directory(path: pathlib.Path) -> None:
    """Create ``path`` with mode 0o700, or check that an existing one is private."""
    try:
        os.makedirs(path, mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise CacheError(
                f"cache directory '{path}' is an existing file, not a directory; give "
                "DiskCache the path of a directory (it is created if missing)"
            ) from None
    except OSError as error:
        raise CacheError(
            f"cannot create cache directory '{path}': {error.strerror or error}. Choose a "
            "path you can write to, or create the directory first (mkdir -m 700 ...)."
        ) from error
    else:
        os.chmod(path, 0o700)  # makedirs' mode is filtered by the umask
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        _warn(
            f"cache directory '{path}' is accessible by other users (mode {mode:#o}). Its "
            "files are pickles that plait loads, so whoever can write there can run code "
            f"as you; run `chmod 700 '{path}'` or choose a private directory",
            stacklevel=4,
        )


def _reason(error: BaseException) -> str:
    message = str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _warn(message: str, stacklevel: int = 3) -> None:
    warnings.warn(message, CacheWarning, stacklevel=stacklevel)
