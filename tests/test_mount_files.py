"""A mounted store used with ordinary file operations, as a user's programs would.

Each test mounts a store for real (through `modelfs mount`) and checks what a
user would notice: the bytes, the listing, the errno, the store's history as
seen from another client, and what was (not) uploaded.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import sha256
from storeobjects import StoreObjects

import modelfs
from modelfs.store import codecs
from modelfs.store.addresses import resolve
from modelfs.store.format import pack_key

MiB = 1 << 20


def errno_of(fn: Callable[..., object], *args: object, **kwargs: object) -> int:
    """The errno that fn(*args) fails with (the test fails if it succeeds)."""
    try:
        fn(*args, **kwargs)
    except OSError as e:
        return e.errno
    raise AssertionError(f"{getattr(fn, '__name__', fn)}{args} succeeded")


@contextmanager
def other_client(store_url: str, tmp_path: Path) -> Iterator[modelfs.Client]:
    """The store as another program sees it: its own client and an empty cache."""
    cache = tmp_path / f"other-cache-{time.monotonic_ns()}"
    with modelfs.open_store(store_url, cache_dir=cache) as c:
        yield c


def stored_objects(store_url: str, *prefixes: str) -> set[str]:
    """Keys of every object under these prefixes of a store (packs/, index/, ...)."""
    with StoreObjects(store_url) as objects:
        return objects.keys(*(p.rstrip("/") + "/" for p in prefixes))


def store_snapshot(store_url: str) -> dict[str, tuple[object, ...]]:
    """Every object of a store with what changes when it is written."""
    with StoreObjects(store_url) as objects:
        return objects.snapshot()


def history_sizes(store_url: str, tmp_path: Path, path: str) -> list[int | None]:
    """Each version's size, oldest first; None for a deletion."""
    with other_client(store_url, tmp_path) as c:
        return [None if v.deleted else v.size for v in c.history(path)]


def read_stored(store_url: str, tmp_path: Path, path: str, version: int | None = None) -> bytes:
    with other_client(store_url, tmp_path) as c:
        return c.read(path, version=version) if version is not None else c.read(path)


# writes


def test_create_write_close_commits_a_version(store_url: str, mount_store, tmp_path: Path) -> None:
    m = mount_store(store_url)
    data = os.urandom(3 * MiB + 123)
    with open(m.path / "model.bin", "wb") as f:
        f.write(data)
    assert (m.path / "model.bin").read_bytes() == data
    with other_client(store_url, tmp_path) as c:
        assert c.read("model.bin") == data
        assert [v.size for v in c.history("model.bin")] == [len(data)]


@pytest.mark.backend_independent
def test_small_chunks_seek_back_and_rewrite(store_url: str, mount_store, tmp_path: Path) -> None:
    m = mount_store(store_url)
    expected = bytearray()
    with open(m.path / "chunks.bin", "wb", buffering=0) as f:
        for i in range(500):
            piece = bytes([i % 256]) * 7 + os.urandom(13)
            f.write(piece)
            expected += piece
        f.seek(100)
        f.write(b"REWRITTEN")
        expected[100:109] = b"REWRITTEN"
        f.seek(0, os.SEEK_END)
        f.write(b"tail")
        expected += b"tail"
    assert (m.path / "chunks.bin").read_bytes() == bytes(expected)
    assert read_stored(store_url, tmp_path, "chunks.bin") == bytes(expected)
    # One close, one version, however many writes it took.
    assert history_sizes(store_url, tmp_path, "chunks.bin") == [len(expected)]


@pytest.mark.backend_independent
def test_truncate_shrinks_and_grows_a_committed_file(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    m = mount_store(store_url)
    p = m.path / "t.bin"
    data = os.urandom(2 * MiB)
    p.write_bytes(data)
    os.truncate(p, 1000)
    assert p.stat().st_size == 1000
    assert p.read_bytes() == data[:1000]
    os.truncate(p, 5000)
    assert p.stat().st_size == 5000
    assert p.read_bytes() == data[:1000] + bytes(4000)
    assert read_stored(store_url, tmp_path, "t.bin") == data[:1000] + bytes(4000)
    assert history_sizes(store_url, tmp_path, "t.bin") == [2 * MiB, 1000, 5000]
    # ftruncate on a file open for writing: committed at close, with the writes.
    with open(p, "r+b") as f:
        f.truncate(10)
        f.seek(20)
        f.write(b"x")
    assert p.read_bytes() == data[:10] + bytes(10) + b"x"
    assert history_sizes(store_url, tmp_path, "t.bin")[-1] == 21


@pytest.mark.backend_independent
def test_append_to_a_committed_file_keeps_the_old_bytes(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    m = mount_store(store_url)
    p = m.path / "log.txt"
    p.write_bytes(b"line one\n")
    with open(p, "ab") as f:
        f.write(b"line two\n")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"line three\n")
    finally:
        os.close(fd)
    assert p.read_bytes() == b"line one\nline two\nline three\n"
    assert read_stored(store_url, tmp_path, "log.txt") == b"line one\nline two\nline three\n"


@pytest.mark.backend_independent
def test_changing_bytes_in_the_middle_keeps_the_rest(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    m = mount_store(store_url)
    p = m.path / "weights.bin"
    data = bytearray(os.urandom(5 * MiB))
    p.write_bytes(data)
    with open(p, "r+b") as f:  # no O_TRUNC
        f.seek(2 * MiB + 17)
        f.write(b"\x00\x01\x02\x03")
    data[2 * MiB + 17 : 2 * MiB + 21] = b"\x00\x01\x02\x03"
    assert sha256(p) == sha256(bytes(data))
    assert read_stored(store_url, tmp_path, "weights.bin") == bytes(data)
    assert history_sizes(store_url, tmp_path, "weights.bin") == [5 * MiB, 5 * MiB]
    # Opened for writing and closed unchanged (as `touch` does): no new version.
    open(p, "r+b").close()
    subprocess.run(["touch", str(p)], check=True)
    assert history_sizes(store_url, tmp_path, "weights.bin") == [5 * MiB, 5 * MiB]


def test_opening_a_large_model_for_writing_fetches_nothing_until_a_byte_changes(
    minilm_store: str, minilm_bytes: bytes, mount_store, tmp_path: Path
) -> None:
    m = mount_store(minilm_store)
    p = m.path / "minilm" / "model.safetensors"
    subprocess.run(["touch", str(p)], check=True)
    open(p, "r+b").close()
    with open(p, "ab") as f:
        assert f.tell() == len(minilm_bytes)  # the size is right before any copy
    assert m.stats()["bytes_fetched"] == 0
    assert history_sizes(minilm_store, tmp_path, "minilm/model.safetensors") == [len(minilm_bytes)]


def test_xattr_on_a_file_open_for_writing_commits_its_whole_content(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    m = mount_store(store_url)
    p = m.path / "weights.bin"
    data = os.urandom(3 * MiB)
    p.write_bytes(data)
    with open(p, "r+b"):  # open for writing, change no byte, only an attribute
        os.setxattr(p, "user.metric.loss", b"0.25")
    assert read_stored(store_url, tmp_path, "weights.bin") == data
    assert os.getxattr(p, "user.metric.loss") == b"0.25"


def test_empty_new_file_is_committed(store_url: str, mount_store, tmp_path: Path) -> None:
    m = mount_store(store_url)
    (m.path / "empty").touch()
    open(m.path / "empty2", "wb").close()
    assert (m.path / "empty").stat().st_size == 0
    assert (m.path / "empty2").read_bytes() == b""
    with other_client(store_url, tmp_path) as c:
        # Committed by the close itself: nobody holds the file any more.
        assert sorted(f.path for f in c.list()) == ["empty", "empty2"]
        assert c.read("empty") == b""
        assert [v.size for v in c.history("empty2")] == [0]


def test_overwrite_makes_a_new_version_and_keeps_the_old(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    m = mount_store(store_url)
    p = m.path / "ckpt.pt"
    p.write_bytes(b"epoch 1" * 1000)
    p.write_bytes(b"epoch 2!" * 500)
    assert p.read_bytes() == b"epoch 2!" * 500
    with other_client(store_url, tmp_path) as c:
        history = c.history("ckpt.pt")
        # Overwriting is one new version: no empty version from the truncation in between.
        assert [v.size for v in history] == [7000, 4000]
        assert c.read("ckpt.pt", version=history[0].version) == b"epoch 1" * 1000
        assert c.read("ckpt.pt") == b"epoch 2!" * 500


def test_fsync_commits_before_close(store_url: str, mount_store, tmp_path: Path) -> None:
    m = mount_store(store_url)
    with open(m.path / "f.bin", "wb") as f:
        f.write(b"durable")
        f.flush()
        os.fsync(f.fileno())
        assert read_stored(store_url, tmp_path, "f.bin") == b"durable"
        f.write(b" and more")
    assert read_stored(store_url, tmp_path, "f.bin") == b"durable and more"
    assert history_sizes(store_url, tmp_path, "f.bin") == [7, 16]


def test_reader_open_before_a_rewrite_keeps_reading_the_old_bytes(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    m = mount_store(store_url)
    p = m.path / "model.bin"
    old, new = os.urandom(4 * MiB), os.urandom(2 * MiB)
    p.write_bytes(old)
    with open(p, "rb", buffering=0) as reader:
        head = reader.read(64 << 10)
        p.write_bytes(new)  # same mount, same inode
        rest = reader.read()
    assert head + rest == old
    assert p.read_bytes() == new
    # A rewrite by another program on the store, seen through the mount.
    newer = os.urandom(3 * MiB)  # longer than new
    with open(p, "rb", buffering=0) as reader:
        head = reader.read(64 << 10)
        with other_client(store_url, tmp_path) as c:
            c.put("model.bin", newer)
        time.sleep(0.5)  # past the refresh interval: the mount has seen the new version
        rest = reader.read()
    assert head + rest == new
    assert p.read_bytes() == newer


def test_open_sees_a_new_version_at_once_whatever_the_refresh_interval(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    with other_client(store_url, tmp_path) as c:
        c.put("model.bin", b"small" * 1000)
    m = mount_store(store_url, "--refresh-interval", "30")
    p = m.path / "model.bin"
    assert p.stat().st_size == 5000  # the kernel now holds this size for 30 s
    with open(p, "rb") as old_reader:
        bigger = os.urandom(3 * MiB)
        with other_client(store_url, tmp_path) as c:
            c.put("model.bin", bigger)
        # Close-to-open: a new open reads the new version, all of it.
        assert p.read_bytes() == bigger
        with open(p, "rb") as f:
            assert os.fstat(f.fileno()).st_size == len(bigger)
        assert old_reader.read() == b"small" * 1000
        assert os.fstat(old_reader.fileno()).st_size == 5000


def test_new_names_from_elsewhere_open_at_once(store_url: str, mount_store, tmp_path: Path) -> None:
    m = mount_store(store_url, "--refresh-interval", "30")
    assert os.listdir(m.path) == [".modelfs"]  # scanned: the next scan is 30 s away
    with other_client(store_url, tmp_path) as c:
        c.put("runs/exp2/ckpt.pt", b"from another machine")
    assert (m.path / "runs" / "exp2" / "ckpt.pt").read_bytes() == b"from another machine"
    assert errno_of(os.stat, m.path / "runs" / "exp2" / "missing") == errno.ENOENT


def test_readers_see_old_or_new_never_a_mix(store_url: str, mount_store, tmp_path: Path) -> None:
    m = mount_store(store_url)
    p = m.path / "ckpt.bin"
    versions = [bytes([i]) * size for i, size in enumerate([2 * MiB, MiB, 3 * MiB, MiB // 2], 1)]
    p.write_bytes(versions[0])
    seen: list[int] = []  # for each read, the index of the version it returned
    mixes: list[int] = []  # the size of each read that returned no version
    errors: list[BaseException] = []
    stop = threading.Event()

    def read_loop() -> None:
        try:
            while not stop.is_set():
                data = p.read_bytes()
                if data in versions:
                    seen.append(versions.index(data))
                else:
                    mixes.append(len(data))
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    t = threading.Thread(target=read_loop)
    t.start()
    try:
        for old, new in zip(versions, versions[1:], strict=False):
            with open(p, "rb") as held:  # open across the replace: keeps the old bytes
                head = held.read(1000)
                tmp = m.path / "ckpt.bin.tmp"
                tmp.write_bytes(new)
                os.replace(tmp, p)
                time.sleep(0.3)  # past the refresh interval
                assert head + held.read() == old
    finally:
        stop.set()
        t.join()
    assert not errors, f"the reader died: {errors!r}"
    assert not mixes, f"{len(mixes)} reads saw a mix (sizes {mixes[:3]})"
    # It read across the replaces: a reader that died at once or never ran cannot pass.
    assert len(set(seen)) >= 2, f"{len(seen)} reads, all of versions {sorted(set(seen))}"
    assert p.read_bytes() == versions[-1]


# write to a temporary file, then rename (the checkpoint pattern)


def test_checkpoint_rename_uploads_nothing(store_url: str, mount_store, tmp_path: Path) -> None:
    m = mount_store(store_url)
    data = os.urandom(3 * MiB)
    with open(m.path / "ckpt.tmp", "wb") as f:
        f.write(data)
    before = stored_objects(store_url, "packs", "index")
    assert before
    os.replace(m.path / "ckpt.tmp", m.path / "ckpt")
    assert stored_objects(store_url, "packs", "index") == before
    assert (m.path / "ckpt").read_bytes() == data
    assert not (m.path / "ckpt.tmp").exists()
    assert sorted(os.listdir(m.path)) == [".modelfs", "ckpt"]
    with other_client(store_url, tmp_path) as c:
        assert [f.path for f in c.list()] == ["ckpt"]
        assert c.read("ckpt") == data


def test_rename_over_an_existing_file_keeps_its_history(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    m = mount_store(store_url)
    for epoch in range(1, 4):
        tmp = m.path / "ckpt.tmp"
        tmp.write_bytes(f"epoch {epoch}".encode() * 100)
        os.replace(tmp, m.path / "ckpt")
    assert (m.path / "ckpt").read_bytes() == b"epoch 3" * 100
    with other_client(store_url, tmp_path) as c:
        history = [v for v in c.history("ckpt") if not v.deleted]
        assert [c.read("ckpt", version=v.version) for v in history] == [
            f"epoch {e}".encode() * 100 for e in (1, 2, 3)
        ]
        assert [f.path for f in c.list()] == ["ckpt"]


def test_rename_a_file_still_open_for_writing(store_url: str, mount_store, tmp_path: Path) -> None:
    m = mount_store(store_url)
    (m.path / "ckpt").write_bytes(b"old")
    with open(m.path / "ckpt.tmp", "wb", buffering=0) as f:
        f.write(b"first half, ")
        os.replace(m.path / "ckpt.tmp", m.path / "ckpt")
        assert not (m.path / "ckpt.tmp").exists()
        f.write(b"second half")
    assert (m.path / "ckpt").read_bytes() == b"first half, second half"
    assert not (m.path / "ckpt.tmp").exists()
    with other_client(store_url, tmp_path) as c:
        assert [f.path for f in c.list()] == ["ckpt"]
        assert c.read("ckpt") == b"first half, second half"
        assert c.read("ckpt", version=c.history("ckpt")[0].version) == b"old"


def test_rename_onto_a_file_being_written_is_refused_and_loses_nothing(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    m = mount_store(store_url)
    with open(m.path / "a", "wb", buffering=0) as a, open(m.path / "b", "wb", buffering=0) as b:
        a.write(b"aaa")
        b.write(b"bbb")
        assert errno_of(os.rename, m.path / "a", m.path / "b") == errno.EBUSY
        assert (m.path / "a").exists()
        a.write(b"AAA")
    assert (m.path / "a").read_bytes() == b"aaaAAA"
    assert (m.path / "b").read_bytes() == b"bbb"
    with other_client(store_url, tmp_path) as c:
        assert c.read("a") == b"aaaAAA"


def test_rename_a_directory_with_files(store_url: str, mount_store, tmp_path: Path) -> None:
    m = mount_store(store_url)
    (m.path / "run1" / "sub").mkdir(parents=True)
    (m.path / "run1" / "empty").mkdir()
    (m.path / "run1" / "a.bin").write_bytes(b"a" * 1000)
    (m.path / "run1" / "sub" / "b.bin").write_bytes(b"b" * 2000)
    before = stored_objects(store_url, "packs", "index")
    os.rename(m.path / "run1", m.path / "run2")
    assert stored_objects(store_url, "packs", "index") == before
    assert not (m.path / "run1").exists()
    assert sorted(os.listdir(m.path / "run2")) == ["a.bin", "empty", "sub"]
    assert (m.path / "run2" / "a.bin").read_bytes() == b"a" * 1000
    assert (m.path / "run2" / "sub" / "b.bin").read_bytes() == b"b" * 2000
    with other_client(store_url, tmp_path) as c:
        assert [f.path for f in c.list()] == ["run2/a.bin", "run2/sub/b.bin"]
    # A directory with a file still being written is not renamed (EBUSY), and nothing is lost.
    with open(m.path / "run2" / "sub" / "c.bin", "wb") as f:
        f.write(b"c")
        assert errno_of(os.rename, m.path / "run2", m.path / "run3") == errno.EBUSY
    assert (m.path / "run2" / "sub" / "c.bin").read_bytes() == b"c"


# the namespace


def test_own_changes_show_at_once_while_listings_refresh(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    """A refresh that began before a change must not undo it in the mount's view."""
    with modelfs.open_store(store_url, cache_dir=tmp_path / "setup") as c:
        for i in range(150):
            c.put(f"bulk/f{i}", b"x")  # enough refs that a scan takes a while
    m = mount_store(store_url, "--refresh-interval", "0.02")
    stop = threading.Event()
    listings = [0, 0]
    errors: list[BaseException] = []

    def list_continually(n: int) -> None:
        try:
            while not stop.is_set():
                os.listdir(m.path / "bulk")
                os.stat(m.path / "bulk" / "f1")
                listings[n] += 1
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    listers = [threading.Thread(target=list_continually, args=(n,)) for n in range(2)]
    for t in listers:
        t.start()
    problems = []
    try:
        deadline = time.monotonic() + 3
        i = 0
        while time.monotonic() < deadline and len(problems) < 3:
            p = m.path / f"w{i}"
            p.write_bytes(b"data")
            if not p.exists():
                problems.append(f"{p.name} missing right after close")
                continue
            try:
                os.unlink(p)
            except FileNotFoundError:
                problems.append(f"{p.name}: unlink said ENOENT right after close")
                continue
            if p.exists():
                problems.append(f"{p.name} still there right after unlink")
            i += 1
    finally:
        stop.set()
        for t in listers:
            t.join()
    assert not errors, f"a lister died: {errors!r}"
    assert all(listings), f"listings per lister: {listings}"
    assert not problems


@pytest.mark.backend_independent
def test_mkdir_rmdir_and_their_errors(store_url: str, mount_store, tmp_path: Path) -> None:
    m = mount_store(store_url)
    os.mkdir(m.path / "runs")
    os.makedirs(m.path / "runs" / "a" / "b" / "c")
    assert (m.path / "runs" / "a" / "b" / "c").is_dir()
    assert errno_of(os.mkdir, m.path / "runs") == errno.EEXIST
    (m.path / "runs" / "a" / "f").write_bytes(b"x")
    assert errno_of(os.rmdir, m.path / "runs" / "a") == errno.ENOTEMPTY
    assert errno_of(os.rmdir, m.path / "runs" / "a" / "b") == errno.ENOTEMPTY
    assert errno_of(os.rmdir, m.path / "missing") == errno.ENOENT
    assert errno_of(os.rmdir, m.path / "runs" / "a" / "f") == errno.ENOTDIR
    os.rmdir(m.path / "runs" / "a" / "b" / "c")
    os.rmdir(m.path / "runs" / "a" / "b")
    assert sorted(os.listdir(m.path / "runs" / "a")) == ["f"]
    # Empty directories are in the store, not only in this mount.
    with other_client(store_url, tmp_path) as c:
        assert c.store.is_dir("runs")
        assert not c.store.is_dir("runs/a/b")


def test_readdir_lists_what_was_created(store_url: str, mount_store) -> None:
    m = mount_store(store_url)
    (m.path / "many").mkdir()
    names = {f"shard-{i:03d}.bin" for i in range(60)}
    for name in names:
        (m.path / "many" / name).write_bytes(name.encode())
    (m.path / "many" / "subdir").mkdir()
    assert set(os.listdir(m.path / "many")) == names | {"subdir"}
    entries = {e.name: e for e in os.scandir(m.path / "many")}
    assert entries["subdir"].is_dir() and entries["shard-007.bin"].is_file()
    assert entries["shard-007.bin"].stat().st_size == len("shard-007.bin")
    # A fresh mount (a fresh scan of the store) lists the same.
    m2 = mount_store(store_url)
    assert set(os.listdir(m2.path / "many")) == names | {"subdir"}


def test_unlink_and_rm_r(store_url: str, mount_store, tmp_path: Path) -> None:
    m = mount_store(store_url)
    (m.path / "d").mkdir()
    (m.path / "d" / "only").write_bytes(b"1")
    assert errno_of(os.unlink, m.path / "d" / "missing") == errno.ENOENT
    assert errno_of(os.unlink, m.path / "d") == errno.EISDIR
    os.unlink(m.path / "d" / "only")
    assert (m.path / "d").is_dir()  # the directory survives its last file
    assert os.listdir(m.path / "d") == []
    os.rmdir(m.path / "d")
    # rm -r of a tree of files and (empty and non-empty) directories.
    tree = m.path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "empty").mkdir()
    for rel in ("x", "a/y", "a/b/z1", "a/b/z2"):
        (tree / rel).write_bytes(rel.encode())
    proc = subprocess.run(["rm", "-r", str(tree)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not tree.exists()
    assert os.listdir(m.path) == [".modelfs"]
    with other_client(store_url, tmp_path) as c:
        assert c.list() == []
        assert not c.store.is_dir("tree")
        # Deleting keeps history: the old bytes are still there.
        assert c.read("tree/a/b/z1", version=1) == b"a/b/z1"


def test_unlink_while_open(store_url: str, mount_store, tmp_path: Path) -> None:
    m = mount_store(store_url)
    data = os.urandom(MiB)
    (m.path / "r.bin").write_bytes(data)
    with open(m.path / "r.bin", "rb") as reader:
        head = reader.read(1000)
        os.unlink(m.path / "r.bin")
        assert not (m.path / "r.bin").exists()
        time.sleep(0.3)  # past the refresh interval
        assert head + reader.read() == data  # an open handle keeps reading
        assert os.fstat(reader.fileno()).st_size == len(data)
    # A file unlinked while being written is never committed.
    with open(m.path / "w.bin", "wb") as writer:
        writer.write(b"partial")
        writer.flush()
        os.unlink(m.path / "w.bin")
        writer.write(b" more")
    assert not (m.path / "w.bin").exists()
    assert os.listdir(m.path) == [".modelfs"]
    with other_client(store_url, tmp_path) as c:
        assert c.list() == []
        assert [v.deleted for v in c.history("r.bin")] == [False, True]


def test_cp_a_and_tar_into_the_mount(store_url: str, mount_store, tmp_path: Path) -> None:
    src = tmp_path / "run"
    (src / "ckpt").mkdir(parents=True)
    (src / "ckpt" / "model.bin").write_bytes(os.urandom(300_000))
    (src / "config.json").write_text("{}")
    os.chmod(src / "config.json", 0o600)
    os.symlink("ckpt/model.bin", src / "latest")
    m = mount_store(store_url)
    # cp -a and tar keep owners: a chown to the owner a file already has must work.
    proc = subprocess.run(
        ["cp", "-a", str(src), str(m.path / "copy")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    archive = tmp_path / "run.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(tmp_path), "run"], check=True)
    (m.path / "untar").mkdir()
    proc = subprocess.run(
        ["tar", "-xf", str(archive), "-C", str(m.path / "untar")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    for copy in (m.path / "copy", m.path / "untar" / "run"):
        assert (copy / "ckpt" / "model.bin").read_bytes() == (
            src / "ckpt" / "model.bin"
        ).read_bytes()
        assert stat.S_IMODE((copy / "config.json").stat().st_mode) == 0o600
        assert os.readlink(copy / "latest") == "ckpt/model.bin"
    # A chown to anyone else is refused.
    assert errno_of(os.chown, m.path / "copy" / "config.json", 12345, -1) == errno.EPERM


@pytest.mark.backend_independent
def test_stat_sizes_modes_and_mtimes(store_url: str, mount_store) -> None:
    m = mount_store(store_url)
    before = time.time()
    fd = os.open(m.path / "f.bin", os.O_CREAT | os.O_WRONLY, 0o640)
    os.write(fd, b"x" * 12345)
    st = os.fstat(fd)
    assert st.st_size == 12345 and stat.S_ISREG(st.st_mode)
    os.close(fd)
    after = time.time()
    st = os.stat(m.path / "f.bin")
    assert st.st_size == 12345
    assert stat.S_IMODE(st.st_mode) == 0o640 and stat.S_ISREG(st.st_mode)
    assert before - 2 <= st.st_mtime <= after + 2
    assert st.st_uid == os.getuid() and st.st_nlink == 1
    (m.path / "d").mkdir()
    st = os.stat(m.path / "d")
    assert stat.S_ISDIR(st.st_mode) and st.st_mtime <= time.time() + 2
    assert stat.S_ISDIR(os.stat(m.path).st_mode)


@pytest.mark.backend_independent
def test_chmod_persists_across_remount(store_url: str, mount_store) -> None:
    m = mount_store(store_url)
    p = m.path / "run.sh"
    p.write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(p, 0o755)
    assert stat.S_IMODE(p.stat().st_mode) == 0o755
    with open(m.path / "secret", "wb") as f:  # chmod while open for writing
        f.write(b"s")
        os.chmod(m.path / "secret", 0o600)
    assert m.unmount().returncode == 0
    m2 = mount_store(store_url)
    assert stat.S_IMODE((m2.path / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((m2.path / "secret").stat().st_mode) == 0o600
    out = subprocess.run([str(m2.path / "run.sh")], capture_output=True, text=True)
    assert out.stdout == "hi\n"


@pytest.mark.backend_independent
def test_symlinks(store_url: str, mount_store) -> None:
    m = mount_store(store_url)
    (m.path / "models").mkdir()
    (m.path / "models" / "v2.bin").write_bytes(b"version two")
    os.symlink("v2.bin", m.path / "models" / "latest")
    assert os.readlink(m.path / "models" / "latest") == "v2.bin"
    assert (m.path / "models" / "latest").is_symlink()
    assert (m.path / "models" / "latest").read_bytes() == b"version two"
    assert errno_of(os.symlink, "x", m.path / "models" / "latest") == errno.EEXIST
    os.symlink("/nonexistent/target", m.path / "dangling")
    assert os.readlink(m.path / "dangling") == "/nonexistent/target"
    assert errno_of(os.readlink, m.path / "models" / "v2.bin") == errno.EINVAL
    m2 = mount_store(store_url)
    assert os.readlink(m2.path / "models" / "latest") == "v2.bin"
    assert (m2.path / "models" / "latest").read_bytes() == b"version two"


@pytest.mark.backend_independent
def test_hard_links_are_refused(store_url: str, mount_store) -> None:
    m = mount_store(store_url)
    (m.path / "a").write_bytes(b"a")
    assert errno_of(os.link, m.path / "a", m.path / "b") == errno.EPERM
    assert not (m.path / "b").exists()


@pytest.mark.backend_independent
def test_statfs(store_url: str, mount_store) -> None:
    m = mount_store(store_url)
    (m.path / "a").write_bytes(b"a" * 10000)
    s = os.statvfs(m.path)
    assert s.f_bsize > 0 and s.f_blocks > 0 and s.f_bavail > 0
    assert s.f_namemax == 255
    out = subprocess.run(["df", str(m.path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.backend_independent
def test_names_with_spaces_and_unicode(store_url: str, mount_store, tmp_path: Path) -> None:
    m = mount_store(store_url)
    names = ["my model (final).bin", "模型 权重.safetensors", "ünïcödé—name.txt", "100%.txt"]
    (m.path / "dir with spaces").mkdir()
    for name in names:
        (m.path / "dir with spaces" / name).write_bytes(name.encode())
    assert sorted(os.listdir(m.path / "dir with spaces")) == sorted(names)
    for name in names:
        assert (m.path / "dir with spaces" / name).read_bytes() == name.encode()
    with other_client(store_url, tmp_path) as c:
        assert sorted(f.path for f in c.list()) == sorted(f"dir with spaces/{n}" for n in names)


def test_names_up_to_255_bytes_work_and_longer_ones_are_refused(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    m = mount_store(store_url)
    ascii_name = "n" * 255
    utf8_name = "é" * 127 + "a"  # 255 bytes of UTF-8, 128 characters
    for name in (ascii_name, utf8_name, "~" * 85 + "." * 85 + "%" * 85):
        assert len(name.encode()) == 255
        (m.path / name).write_bytes(name.encode())
        assert (m.path / name).read_bytes() == name.encode()
    os.mkdir(m.path / "d")
    os.mkdir(m.path / "d" / utf8_name)
    (m.path / "d" / utf8_name / ascii_name).write_bytes(b"deep")
    os.rename(m.path / ascii_name, m.path / "d" / utf8_name / "renamed")
    assert sorted(os.listdir(m.path / "d" / utf8_name)) == sorted([ascii_name, "renamed"])
    with other_client(store_url, tmp_path) as c:
        assert c.read(f"d/{utf8_name}/{ascii_name}") == b"deep"
        assert c.read(f"d/{utf8_name}/renamed") == ascii_name.encode()
        assert sorted(f.path for f in c.list()) == sorted(
            [utf8_name, "~" * 85 + "." * 85 + "%" * 85, f"d/{utf8_name}/{ascii_name}",
             f"d/{utf8_name}/renamed"]
        )  # fmt: skip
    os.unlink(m.path / "d" / utf8_name / "renamed")
    assert not (m.path / "d" / utf8_name / "renamed").exists()
    # 256 bytes: ENAMETOOLONG, before anything is written.
    long = "n" * 256
    assert errno_of(open, m.path / long, "wb") == errno.ENAMETOOLONG
    assert errno_of(os.mkdir, m.path / long) == errno.ENAMETOOLONG
    (m.path / "ok").write_bytes(b"ok")
    assert errno_of(os.rename, m.path / "ok", m.path / long) == errno.ENAMETOOLONG
    assert (m.path / "ok").read_bytes() == b"ok"


def test_names_that_are_not_utf8_and_binary_attribute_values_survive_a_remount(
    store_url: str, mount_store
) -> None:
    """Linux names are bytes: any of them (but / and NUL) is a name, as is any xattr value."""
    m = mount_store(store_url, name="m")
    names = [b"\xff\xfe not utf-8", b"tab\there\nnewline", b"back\\slash", b"..dots..", b"%41"]
    for n in names:
        with open(os.path.join(os.fsencode(m.path), n), "wb") as f:
            f.write(n)
    value = b"\xff\x00\x01 binary"
    os.setxattr(os.path.join(os.fsencode(m.path), names[0]), "user.blob", value)
    assert m.unmount().returncode == 0
    again = mount_store(store_url, name="again")
    root = os.fsencode(again.path)
    assert sorted(os.listdir(root)) == sorted([*names, b".modelfs"])
    for n in names:
        with open(os.path.join(root, n), "rb") as f:
            assert f.read() == n
    assert os.getxattr(os.path.join(root, names[0]), "user.blob") == value


def test_a_path_the_store_cannot_hold_fails_at_open_not_at_close(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    """Four levels of 255-byte ASCII names: a 1,022-byte path whose key is 1,028 bytes. A
    local store holds it; S3 (1,024-byte keys, less the store's prefix) cannot."""
    m = mount_store(store_url)
    dirs = ["a" * 255, "b" * 255, "c" * 255]
    deep = m.path.joinpath(*dirs)
    deep.mkdir(parents=True)
    target = deep / ("f" * 254)
    if store_url.startswith("s3://"):
        assert errno_of(open, target, "wb") == errno.ENAMETOOLONG
        (m.path / "ok").write_bytes(b"ok")
        assert errno_of(os.rename, m.path / "ok", target) == errno.ENAMETOOLONG
        assert (m.path / "ok").read_bytes() == b"ok"
        assert "too long for this store" in m.log
    else:
        target.write_bytes(b"deep")
        assert target.read_bytes() == b"deep"
        with other_client(store_url, tmp_path) as c:
            assert c.read("/".join([*dirs, "f" * 254])) == b"deep"


@pytest.mark.backend_independent
def test_a_file_cannot_be_a_parent(store_url: str, mount_store) -> None:
    m = mount_store(store_url)
    (m.path / "ok").write_bytes(b"ok")
    assert errno_of(open, m.path / "ok" / "child", "wb") == errno.ENOTDIR
    assert errno_of(os.mkdir, m.path / "ok" / "child") == errno.ENOTDIR
    assert (m.path / "ok").read_bytes() == b"ok"


# extended attributes


def test_xattrs_are_metadata_versions_and_metrics_are_not(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    m = mount_store(store_url)
    p = m.path / "model.bin"
    data = os.urandom(2 * MiB)
    p.write_bytes(data)
    packs = stored_objects(store_url, "packs", "index")
    os.setxattr(p, "user.note", "ünïcode".encode())  # metadata: a new version
    os.setxattr(p, "user.metric.accuracy", b"0.91")  # a metric of that version: none
    assert os.getxattr(p, "user.metric.accuracy") == b"0.91"
    assert sorted(os.listxattr(p)) == ["user.metric.accuracy", "user.note"]
    assert errno_of(os.getxattr, p, "user.missing") == errno.ENODATA
    assert errno_of(os.removexattr, p, "user.missing") == errno.ENODATA
    assert errno_of(os.setxattr, p, "trusted.x", b"1") in (errno.ENOTSUP, errno.EOPNOTSUPP)
    assert errno_of(os.setxattr, p, "user.metric.accuracy", b"1", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(os.setxattr, p, "user.missing", b"1", os.XATTR_REPLACE) == errno.ENODATA
    assert stored_objects(store_url, "packs", "index") == packs  # no block uploaded
    assert p.read_bytes() == data
    with other_client(store_url, tmp_path) as c:
        history = c.history("model.bin")
        assert len(history) == 2  # the write and the set of user.note; a metric makes none
        assert len({v.content_hash for v in history}) == 1
        assert c.store.manifest("model.bin").metadata == {"user.note": "ünïcode"}
        assert resolve(c.store, "model.bin").metrics == {"accuracy": 0.91}
    assert m.unmount().returncode == 0
    m2 = mount_store(store_url)
    p2 = m2.path / "model.bin"
    assert os.getxattr(p2, "user.metric.accuracy") == b"0.91"
    os.removexattr(p2, "user.note")  # a new version, with the same content and metrics
    assert os.listxattr(p2) == ["user.metric.accuracy"]
    assert errno_of(os.getxattr, p2, "user.note") == errno.ENODATA


def test_xattr_set_while_writing_is_committed_with_the_data(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    m = mount_store(store_url)
    with open(m.path / "w.bin", "wb") as f:
        f.write(b"data")
        os.setxattr(m.path / "w.bin", "user.step", b"100")
    assert os.getxattr(m.path / "w.bin", "user.step") == b"100"
    with other_client(store_url, tmp_path) as c:
        assert c.store.manifest("w.bin").metadata == {"user.step": "100"}
        assert len(c.history("w.bin")) == 1


@pytest.mark.skipif(shutil.which("setfattr") is None, reason="setfattr (package attr) missing")
def test_setfattr_and_getfattr(store_url: str, mount_store) -> None:
    m = mount_store(store_url)
    p = m.path / "m.bin"
    p.write_bytes(b"m")
    subprocess.run(["setfattr", "-n", "user.metric.loss", "-v", "0.25", str(p)], check=True)
    out = subprocess.run(
        ["getfattr", "-d", "--absolute-names", str(p)], capture_output=True, text=True, check=True
    )
    assert 'user.metric.loss="0.25"' in out.stdout
    subprocess.run(["setfattr", "-x", "user.metric.loss", str(p)], check=True)
    out = subprocess.run(["getfattr", "-d", str(p)], capture_output=True, text=True)
    assert "user.metric.loss" not in out.stdout


# read-only mounts


def test_read_only_mount_refuses_every_write(store_url: str, mount_store, tmp_path: Path) -> None:
    with modelfs.open_store(store_url, cache_dir=tmp_path / "setup") as c:
        c.put("d/model.bin", b"weights", metadata={"user.a": "1"})
        c.store.mkdir("empty")
    before = store_snapshot(store_url)
    m = mount_store(store_url, "--read-only")
    f = m.path / "d" / "model.bin"
    attempts: dict[str, Callable[[], object]] = {
        "create": lambda: open(m.path / "new", "wb"),
        "write": lambda: open(f, "r+b"),
        "append": lambda: open(f, "ab"),
        "truncate": lambda: os.truncate(f, 0),
        "unlink": lambda: os.unlink(f),
        "rename": lambda: os.rename(f, m.path / "d" / "other"),
        "mkdir": lambda: os.mkdir(m.path / "newdir"),
        "rmdir": lambda: os.rmdir(m.path / "empty"),
        "chmod": lambda: os.chmod(f, 0o600),
        "symlink": lambda: os.symlink("model.bin", m.path / "d" / "link"),
        "setxattr": lambda: os.setxattr(f, "user.b", b"2"),
        "removexattr": lambda: os.removexattr(f, "user.a"),
        "utime": lambda: os.utime(f, (0, 0)),
    }
    got = {name: errno_of(fn) for name, fn in attempts.items()}
    assert got == dict.fromkeys(attempts, errno.EROFS)
    assert f.read_bytes() == b"weights"
    assert os.getxattr(f, "user.a") == b"1"
    assert store_snapshot(store_url) == before


# corrupted blocks


def test_corrupt_block_gives_eio_and_never_wrong_bytes(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    data = os.urandom(12 * MiB)
    with modelfs.open_store(store_url, cache_dir=tmp_path / "setup") as c:
        c.put("model.bin", data)
        blocks = c.store.manifest("model.bin").blocks
    assert len(blocks) >= 4
    bad = blocks[-2]
    with modelfs.open_store(store_url) as c:
        framed = c.store.frames_of(bad.location)  # format 5: a block of 256 KiB frames
    assert framed is not None and framed.frames is not None and len(framed.frames) >= 2
    frames = framed.frames
    k = len(frames) - 1  # damage the last frame
    flip = codecs.frame_directory_size(len(frames)) + frames.starts[k] + 10
    with StoreObjects(store_url) as objects:
        objects.flip_byte(pack_key(bad.location.pack), bad.location.offset + flip)
    m = mount_store(store_url, allow_errors=True)  # a fresh cache: every block is fetched
    with open(m.path / "model.bin", "rb", buffering=0) as f:
        damaged = bad.file_offset + k * frames.size + 1
        e = pytest.raises(OSError, os.pread, f.fileno(), 4096, damaged)
        assert e.value.errno == errno.EIO
        # The block's other frames are checked on their own, and read.
        first = bad.file_offset + 100
        assert os.pread(f.fileno(), 4096, first) == data[first : first + 4096]
        assert os.pread(f.fileno(), 4096, 0) == data[:4096]
        middle = blocks[1].file_offset
        assert os.pread(f.fileno(), 8192, middle) == data[middle : middle + 8192]
    # Reading it all fails, and what came before the bad block is right.
    got = bytearray()
    with open(m.path / "model.bin", "rb", buffering=0) as f:
        with pytest.raises(OSError) as e:
            while chunk := f.read(1 << 20):
                got += chunk
    assert e.value.errno == errno.EIO
    # Nothing from the damaged frame on (the frames before it may be served: verified).
    assert len(got) <= bad.file_offset + k * frames.size and bytes(got) == data[: len(got)]
    assert "model.bin" in m.log
    assert bad.location.block_id in m.log
    assert f"offset {bad.file_offset}" in m.log
    assert m.stats()["read_errors"] >= 1


# concurrent readers and stats


def test_concurrent_readers_get_the_right_bytes(
    minilm_store: str, minilm_bytes: bytes, mount_store
) -> None:
    m = mount_store(minilm_store, "--read-only")
    path = m.path / "minilm" / "model.safetensors"
    assert path.stat().st_size == len(minilm_bytes)
    errors: list[str] = []
    reads = [0] * 8

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with open(path, "rb", buffering=0) as f:
                for _ in range(40):
                    off = rng.randrange(len(minilm_bytes))
                    size = rng.choice([1, 4096, 100_000, 2 * MiB])
                    got = os.pread(f.fileno(), size, off)
                    if got != minilm_bytes[off : off + size]:
                        errors.append(f"thread {seed}: wrong bytes at {off}+{size}")
                    reads[seed] += 1
        except BaseException as e:  # reported below, in the test's thread
            errors.append(f"thread {seed} died: {e!r}")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert reads == [40] * 8
    stats = m.stats()
    assert stats["bytes_fetched"] > 0 and stats["read_errors"] == 0


def test_stats_command_and_file(minilm_store: str, minilm_bytes: bytes, mount_store, cli) -> None:
    m = mount_store(minilm_store, "--read-only")
    assert sha256(m.path / "minilm" / "model.safetensors") == sha256(minilm_bytes)
    stats = json.loads((m.path / ".modelfs" / "stats").read_text())
    assert stats["bytes_fetched"] >= len(minilm_bytes) * 0.9  # compressed fp32 barely shrinks
    assert stats["bytes_served"] >= len(minilm_bytes)
    assert stats["cache_hit_rate"] is not None and 0 <= stats["cache_hit_rate"] <= 1
    out = cli("stats", m.path, "--json")
    doc = json.loads(out.stdout)
    assert doc["bytes_served"] >= len(minilm_bytes)
    assert set(doc) >= {"bytes_fetched", "bytes_served", "cache_hit_rate"}
    text = cli("stats", m.path).stdout.decode()
    assert "bytes_fetched" in text and "cache_hit_rate" in text and "MiB" in text
    # at/ (every version by address) is reached by path but not listed, so that find, du
    # and rsync -a of the mount do not walk every version of every file again.
    assert os.listdir(m.path / ".modelfs") == ["stats"]
    assert os.path.isdir(m.path / ".modelfs" / "at")
    assert errno_of(open, m.path / ".modelfs" / "stats", "w") in (errno.EACCES, errno.EROFS)


# mount errors


def test_mount_errors_are_clear(store_url: str, mount_store, cli, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    proc = cli("mount", store_url, missing, check=False)
    assert proc.returncode == 1
    assert b"does not exist" in proc.stderr and b"Traceback" not in proc.stderr

    m = mount_store(store_url)
    proc = cli("mount", store_url, m.path, "--cache-dir", tmp_path / "c2", check=False)
    assert proc.returncode == 1
    assert b"busy" in proc.stderr and b"Traceback" not in proc.stderr
    assert os.listdir(m.path) == [".modelfs"]  # the first mount still works

    empty = tmp_path / "mp-nostore"
    empty.mkdir()
    proc = cli("mount", tmp_path / "no-store", empty, "--cache-dir", tmp_path / "c3", check=False)
    assert proc.returncode == 1
    assert b"no store" in proc.stderr or b"no modelfs store" in proc.stderr
    assert b"Traceback" not in proc.stderr
    assert not os.path.ismount(empty)

    plain = tmp_path / "plain"
    plain.mkdir()
    proc = cli("umount", plain, check=False)
    assert proc.returncode == 1
    assert b"not a modelfs mount" in proc.stderr and b"Traceback" not in proc.stderr
    proc = cli("stats", plain, check=False)
    assert proc.returncode == 1 and b"not a modelfs mount" in proc.stderr
