"""MemoryCache and DiskCache: hits, misses, eviction, private directories, bad entries,
and several real processes writing one DiskCache."""

from __future__ import annotations

import contextlib
import gc
import os
import pathlib
import pickle
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cloudpickle
import diskcache
import pytest

import plait
from plait.cache import MISS, CacheStore, DiskCache, MemoryCache
from plait.errors import CacheError, CacheWarning

SRC = str(pathlib.Path(plait.__file__).resolve().parents[1])


def python(code: str, *args: str) -> subprocess.Popen[str]:
    """A fresh interpreter running ``code`` with this plait importable; pipes for all three."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """Wait for ``proc``; its stdout, or a failure showing its stderr."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{err}"
    return out


@contextmanager
def no_warnings() -> Iterator[None]:
    """A block in which any warning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.fixture
def disk(tmp_path: pathlib.Path) -> Any:
    with DiskCache(tmp_path / "cache") as cache:
        yield cache


# ---- MISS and the protocol ---------------------------------------------------------------


def test_miss_is_a_named_singleton_through_pickle() -> None:
    assert repr(MISS) == "MISS"
    assert str(MISS) == "MISS"
    assert MISS is not None
    assert pickle.loads(pickle.dumps(MISS)) is MISS
    assert cloudpickle.loads(cloudpickle.dumps(MISS)) is MISS


def test_both_stores_satisfy_the_protocol(tmp_path: pathlib.Path) -> None:
    assert isinstance(MemoryCache(), CacheStore)
    with DiskCache(tmp_path) as cache:
        assert isinstance(cache, CacheStore)
        assert cache.process_safe  # worker processes may share it
    assert not MemoryCache().process_safe
    assert not isinstance({}, CacheStore)


# ---- behaviour shared by both stores -------------------------------------------------------


@pytest.fixture(params=["memory", "disk"])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Any:
    if request.param == "memory":
        yield MemoryCache()
    else:
        with DiskCache(tmp_path / "store") as cache:
            yield cache


def test_get_set_and_none_is_a_hit(store: Any) -> None:
    assert store.get("k") is MISS
    store.set("k", None)
    assert store.get("k") is None
    store.set("other", {"a": [1, 2.5, "x"]})
    assert store.get("other") == {"a": [1, 2.5, "x"]}
    assert store.get("missing") is MISS
    assert len(store) == 2


def test_set_overwrites(store: Any) -> None:
    store.set("k", 1)
    store.set("k", "two")
    assert store.get("k") == "two"
    assert len(store) == 1


def test_clear(store: Any) -> None:
    for i in range(5):
        store.set(f"k{i}", i)
    store.clear()
    assert len(store) == 0
    assert store.get("k0") is MISS
    store.set("k0", 0)
    assert store.get("k0") == 0


def test_threads_share_a_store(store: Any) -> None:
    def work(t: int) -> None:
        for i in range(100):
            store.set(f"{t}-{i}", (t, i))
            assert store.get(f"{t}-{i}") == (t, i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store) == 400
    assert all(store.get(f"{t}-{i}") == (t, i) for t in range(4) for i in range(100))


# ---- MemoryCache -----------------------------------------------------------------------------


def test_memory_keeps_the_object_itself() -> None:
    cache = MemoryCache()
    value = [1, 2]
    cache.set("k", value)
    assert cache.get("k") is value


def test_memory_lru_drops_the_least_recently_used() -> None:
    cache = MemoryCache(max_entries=3)
    for key in "abc":
        cache.set(key, key)
    assert cache.get("a") == "a"  # now b is the least recently used
    cache.set("d", "d")
    assert cache.get("b") is MISS
    assert [cache.get(k) for k in "acd"] == ["a", "c", "d"]
    cache.set("c", "C")  # overwriting counts as a use
    cache.set("e", "e")
    assert cache.get("a") is MISS
    assert [cache.get(k) for k in "cde"] == ["C", "d", "e"]
    assert len(cache) == 3


def test_memory_lru_under_threads_stays_bounded() -> None:
    cache = MemoryCache(max_entries=10)

    def work(t: int) -> None:
        for i in range(500):
            cache.set(f"{t}-{i}", i)
            cache.get(f"{t}-{i // 2}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 10


def test_memory_cannot_be_pickled() -> None:
    with pytest.raises(TypeError, match=r"lives in one process .* use plait\.cache\.DiskCache"):
        pickle.dumps(MemoryCache())
    with pytest.raises(TypeError, match="lives in one process"):
        cloudpickle.dumps(MemoryCache(max_entries=3))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_memory_max_entries_must_be_positive(bad: Any) -> None:
    with pytest.raises(CacheError, match=r"max_entries=.*positive int, or None"):
        MemoryCache(max_entries=bad)


def test_memory_repr() -> None:
    cache = MemoryCache(max_entries=5)
    cache.set("a", 1)
    assert repr(cache) == "MemoryCache(max_entries=5, entries=1)"
    assert repr(MemoryCache()) == "MemoryCache(entries=0)"


# ---- DiskCache: the directory ------------------------------------------------------------------


def test_disk_creates_a_private_directory(tmp_path: pathlib.Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "a" / "b" / "cache"
        with no_warnings(), DiskCache(path) as cache:
            cache.set("k", 1)
    finally:
        os.umask(old)
    assert path.is_dir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert cache.directory == path
    assert repr(cache) == f"DiskCache('{path}')"


def test_disk_existing_private_directory_gives_no_warning(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cache"
    path.mkdir(mode=0o700)
    with no_warnings(), DiskCache(path):
        pass


def test_disk_warns_about_a_shared_directory_but_uses_it(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "shared"
    path.mkdir()
    path.chmod(0o755)
    with pytest.warns(CacheWarning, match=r"accessible by other users \(mode 0o755\)") as record:
        cache = DiskCache(path)
    message = str(record[0].message)
    assert f"chmod 700 '{path}'" in message
    assert "pickles" in message
    assert record[0].filename == __file__  # points at the caller
    with cache:
        cache.set("k", "v")
        assert cache.get("k") == "v"
    assert stat.S_IMODE(path.stat().st_mode) == 0o755  # left as the user set it


def test_disk_directory_that_is_a_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "file"
    path.write_text("not a directory")
    with pytest.raises(CacheError, match="is an existing file, not a directory") as info:
        DiskCache(path)
    assert str(path) in str(info.value)


def test_disk_directory_that_cannot_be_created(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "cache"
    with pytest.raises(CacheError, match="cannot create cache directory") as info:
        DiskCache(path)
    assert str(path) in str(info.value)
    assert "Choose a path you can write to" in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_disk_directory_without_write_permission(tmp_path: pathlib.Path) -> None:
    parent = tmp_path / "locked"
    parent.mkdir(mode=0o500)
    try:
        with pytest.raises(CacheError, match="cannot create cache directory"):
            DiskCache(parent / "cache")
    finally:
        parent.chmod(0o700)


def test_disk_directory_holding_something_else(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cache"
    path.mkdir(mode=0o700)
    (path / "cache.db").write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(CacheError, match="cannot open a cache in directory") as info:
        DiskCache(path)
    assert str(path) in str(info.value)


def test_disk_expands_the_user_and_variables(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PLAIT_TEST_CACHE_NAME", "named")
    with DiskCache("~/cache") as cache:
        assert cache.directory == tmp_path / "cache"
    with DiskCache("~/$PLAIT_TEST_CACHE_NAME") as cache:
        cache.set("k", 1)
        assert cache.directory == tmp_path / "named"
    assert (tmp_path / "named" / "cache.db").exists()  # the directory diskcache opened
    assert stat.S_IMODE((tmp_path / "named").stat().st_mode) == 0o700


def test_disk_foreign_pickled_entry_is_a_miss(disk: DiskCache) -> None:
    raw = diskcache.Cache(str(disk.directory))
    raw.set("k6", ["pickled", "by", "diskcache"])  # diskcache's own pickle mode
    with pytest.warns(CacheWarning, match="holds a list, not pickled bytes"):
        assert disk.get("k6") is MISS
    assert raw.get("k6") is None
    raw.close()


# ---- DiskCache: values -----------------------------------------------------------------------


def test_disk_entries_persist_and_closures_load(tmp_path: pathlib.Path) -> None:
    offset = 10
    with DiskCache(tmp_path) as cache:
        cache.set("f", lambda x: x + offset)
        cache.set("big", b"x" * 200_000)  # kept in a file of its own, not in sqlite
        cache.set("none", None)
    with DiskCache(tmp_path) as again:
        assert again.get("f")(1) == 11
        assert again.get("big") == b"x" * 200_000
        assert again.get("none") is None
        assert len(again) == 3


def test_disk_unpicklable_value_warns_and_is_not_stored(disk: DiskCache) -> None:
    with pytest.warns(CacheWarning, match="cannot be pickled") as record:
        disk.set("k1", {"lock": threading.Lock()})
    message = str(record[0].message)
    assert "not cached under k1" in message
    assert "cannot pickle '_thread.lock' object" in message
    assert disk.get("k1") is MISS
    assert len(disk) == 0


def test_disk_corrupt_small_entry_is_a_miss_and_deleted(disk: DiskCache) -> None:
    raw = diskcache.Cache(str(disk.directory))
    raw.set("k2", b"\x80\x05 definitely not a pickle")
    disk.set("good", 1)
    with pytest.warns(CacheWarning) as record:
        assert disk.get("k2") is MISS
    assert len(record) == 1
    message = str(record[0].message)
    assert "cache entry k2" in message
    assert "cannot be loaded and was deleted" in message
    assert "UnpicklingError" in message
    assert raw.get("k2") is None  # deleted, so the next read is a quiet miss
    with no_warnings():
        assert disk.get("k2") is MISS
        assert disk.get("good") == 1
    raw.close()


def test_disk_corrupt_file_on_disk_is_a_miss(disk: DiskCache) -> None:
    disk.set("k3", list(range(50_000)))  # large: pickled bytes live in a file
    files = list(disk.directory.rglob("*.val"))
    assert len(files) == 1
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])  # truncated, as a full disk might leave it
    with pytest.warns(CacheWarning, match="cache entry k3 .* cannot be loaded") as record:
        assert disk.get("k3") is MISS
    assert len(record) == 1
    assert len(disk) == 0
    assert not files[0].exists()


def test_disk_entry_of_a_class_that_is_gone(
    disk: DiskCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("plait_test_gone_module")
    exec("class Point:\n    def __init__(self, x):\n        self.x = x\n", module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    disk.set("k4", module.Point(3))
    assert disk.get("k4").x == 3
    monkeypatch.delitem(sys.modules, module.__name__)
    with pytest.warns(CacheWarning, match="ModuleNotFoundError.*plait_test_gone_module"):
        assert disk.get("k4") is MISS


def test_disk_entry_written_as_something_else(disk: DiskCache) -> None:
    raw = diskcache.Cache(str(disk.directory))
    raw.set("k5", 42)  # not the pickled bytes DiskCache stores
    with pytest.warns(CacheWarning, match="holds a int, not pickled bytes"):
        assert disk.get("k5") is MISS
    raw.close()


def test_disk_settings_never_evict(disk: DiskCache) -> None:
    raw = diskcache.Cache(str(disk.directory))
    assert raw.eviction_policy == "none"
    assert raw.cull_limit == 0
    assert raw.sqlite_journal_mode == "wal"
    raw.close()


# ---- DiskCache across processes ------------------------------------------------------------

WRITER = """
import os, sys
from plait.cache import DiskCache

writer, distinct, shared = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cache = DiskCache(sys.argv[4])
print("ready", flush=True)
sys.stdin.readline()  # the parent starts both writers at once
for i in range(distinct):
    payload = bytes([i % 256]) * 40_000 if i % 50 == 0 else i  # some values go to files
    cache.set(f"w{writer}-{i}", (writer, i, payload))
    if i % 5 == 0:
        j = i // 5 % shared
        cache.set(f"shared-{j}", ("shared", j, writer))
print(os.getpid(), flush=True)
"""


def test_two_processes_write_one_cache_at_once(tmp_path: pathlib.Path) -> None:
    distinct, shared = 500, 20
    path = tmp_path / "cache"
    DiskCache(path).close()
    procs = [python(WRITER, str(w), str(distinct), str(shared), str(path)) for w in (0, 1)]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        finish(proc)
    with no_warnings(), DiskCache(path) as cache:
        assert len(cache) == 2 * distinct + shared
        for w in (0, 1):
            for i in range(distinct):
                payload = bytes([i % 256]) * 40_000 if i % 50 == 0 else i
                assert cache.get(f"w{w}-{i}") == (w, i, payload)
        for j in range(shared):
            value = cache.get(f"shared-{j}")
            assert value[:2] == ("shared", j)
            assert value[2] in (0, 1)


CHILD_OF_PICKLE = """
import os, pickle, sys
cache = pickle.loads(sys.stdin.buffer.read())
cache.set("from-child", {"pid": os.getpid()})
print(cache.directory)
"""


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps])
def test_pickled_disk_cache_writes_to_the_same_directory(disk: DiskCache, dumps: Any) -> None:
    disk.set("from-parent", 1)
    blob = dumps(disk)
    assert len(blob) < 500  # the path, not the entries
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_OF_PICKLE],
        input=blob,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == str(disk.directory)
    value = disk.get("from-child")
    assert isinstance(value, dict)
    assert value["pid"] != os.getpid()
    assert len(disk) == 2


def test_pickled_disk_cache_in_this_process(disk: DiskCache) -> None:
    disk.set("k", [1])
    copy = pickle.loads(pickle.dumps(disk))
    assert isinstance(copy, DiskCache)
    assert copy is not disk
    assert copy.directory == disk.directory
    assert copy.get("k") == [1]
    copy.close()


ENDLESS_WRITER = """
import sys
from plait.cache import DiskCache

cache = DiskCache(sys.argv[1])
i = 0
while True:
    payload = bytes([i % 256]) * 50_000 if i % 3 == 0 else i
    cache.set(f"k{i}", (i, payload))
    i += 1
    if i == 300:
        print("written", flush=True)
"""


def test_writer_killed_mid_writes_leaves_a_readable_cache(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cache"
    proc = python(ENDLESS_WRITER, str(path))
    assert proc.stdout is not None
    assert proc.stdout.readline() == "written\n", proc.stderr and proc.stderr.read()
    proc.send_signal(signal.SIGKILL)  # while it keeps writing
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with no_warnings(), DiskCache(path) as cache:
        present = 0
        i = 0
        while (value := cache.get(f"k{i}")) is not MISS:
            assert value == (i, bytes([i % 256]) * 50_000 if i % 3 == 0 else i)
            present += 1
            i += 1
        assert present >= 300
        assert len(cache) == present  # nothing beyond the first gap, nothing half-written
        cache.set("after", "the cache still takes writes")
        assert cache.get("after") == "the cache still takes writes"


# ---- DiskCache: closing what it opens -------------------------------------------------------


def open_databases(path: pathlib.Path) -> int:
    """How many sqlite connections of this process hold the cache at ``path`` open."""
    index = str((path / "cache.db").resolve())
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == index
    return count


@contextmanager
def no_unclosed_databases() -> Iterator[None]:
    """Fail if a sqlite connection is garbage-collected unclosed in the block or at its end.

    Python 3.13 warns (ResourceWarning: unclosed database), from a finalizer, where
    only the unraisable hook sees it; older versions say nothing, hence the fd counts
    beside this.
    """
    unraisable: list[Any] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
            gc.collect()
    finally:
        sys.unraisablehook = old_hook
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    messages += [repr(u.exc_value) for u in unraisable]
    assert not messages, messages


def use_in_threads(cache: DiskCache, n: int) -> None:
    """Read and write ``cache`` from ``n`` short-lived threads, one after another."""
    for i in range(n):
        thread = threading.Thread(target=lambda i=i: (cache.set(f"t{i}", i), cache.get(f"t{i}")))
        thread.start()
        thread.join()


def test_close_closes_the_connections_of_every_thread(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cache"
    with no_unclosed_databases():
        cache = DiskCache(path)
        cache.set("main", 1)
        use_in_threads(cache, 3)
        assert open_databases(path) >= 1
        cache.close()
        assert open_databases(path) == 0
        del cache
    assert open_databases(path) == 0


def test_closing_is_idempotent_and_a_closed_cache_reopens_lazily(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cache"
    with no_unclosed_databases():
        with DiskCache(path) as cache:
            cache.set("k", [1])
        assert open_databases(path) == 0
        cache.close()  # again: nothing to do
        assert cache.get("k") == [1]  # used again: reopened
        use_in_threads(cache, 2)
        assert cache.get("t1") == 1
        cache.close()
        cache.close()
        assert open_databases(path) == 0


def test_connections_of_finished_threads_do_not_pile_up(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cache"
    with no_unclosed_databases(), DiskCache(path) as cache:
        use_in_threads(cache, 20)
        # This thread's, the last thread's, and one that sqlite keeps for reuse (it
        # defers closing a file other connections of the process have locks on).
        assert open_databases(path) <= 3
    assert open_databases(path) == 0


def test_a_cache_dropped_without_close_closes_its_connections(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cache"
    with no_unclosed_databases():
        cache = DiskCache(path)
        use_in_threads(cache, 2)
        cache.set("k", 1)
        del cache
        gc.collect()
        assert open_databases(path) == 0


def test_a_threaded_pipeline_run_leaves_no_connection_open(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cache"

    @plait.node(output_name="doubled")
    def double(x: int) -> int:
        return 2 * x

    @plait.node(output_name="tripled")
    def triple(x: int) -> int:
        return 3 * x

    with no_unclosed_databases():
        with DiskCache(path) as cache:
            engine = plait.LocalEngine(node_executor="threaded")
            pipeline = plait.Pipeline([double, triple], cache=cache, engine=engine)
            assert pipeline.run(inputs={"x": 2}) == {"doubled": 4, "tripled": 6}
            assert pipeline.run(inputs={"x": 2}) == {"doubled": 4, "tripled": 6}
        assert open_databases(path) == 0
