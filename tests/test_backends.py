"""The backend conformance suite, and what only LocalBackend promises.

Every backend runs the first part (the `backend` fixture is parametrised over
all of them), so a new backend is done when it passes here. The second part
checks LocalBackend's own claims: conditional writes are safe between threads
and processes, writes leave no temporary files, and store URLs resolve.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from seaweed import REGION, SeaweedFS

from modelfs.backends import (
    Backend,
    ByteRange,
    LocalBackend,
    MemoryBackend,
    RetryingBackend,
    open_backend,
)
from modelfs.backends.s3 import S3Backend
from modelfs.errors import (
    AlreadyExistsError,
    BackendError,
    ConflictError,
    NotFoundError,
    StoreNotFoundError,
)

BLOB = bytes(range(256)) * 40  # 10240 bytes, each offset's value predictable


# reads


def test_get_returns_the_whole_blob(backend: Backend) -> None:
    backend.put("packs/ab/blob", BLOB)
    assert backend.get("packs/ab/blob") == BLOB


@pytest.mark.parametrize(("start", "length"), [(0, 1), (1000, 500), (len(BLOB) - 7, 7), (5, 0)])
def test_get_of_a_byte_range_returns_exactly_those_bytes(
    backend: Backend, start: int, length: int
) -> None:
    backend.put("blob", BLOB)
    assert backend.get("blob", ByteRange(start, length)) == BLOB[start : start + length]


def test_get_of_a_range_past_the_end_is_short_not_an_error(backend: Backend) -> None:
    backend.put("blob", BLOB)
    assert backend.get("blob", ByteRange(len(BLOB) - 10, 100)) == BLOB[-10:]
    assert backend.get("blob", ByteRange(len(BLOB) + 5, 10)) == b""


def test_byte_range_rejects_negative_start_or_length() -> None:
    with pytest.raises(ValueError, match="invalid byte range"):
        ByteRange(-1, 10)
    with pytest.raises(ValueError, match="invalid byte range"):
        ByteRange(0, -1)


def test_get_with_etag_returns_the_blob_and_the_etag_put_returned(backend: Backend) -> None:
    etag = backend.put("blob", BLOB)
    assert backend.get_with_etag("blob") == (BLOB, etag)


def test_etag_changes_when_the_content_does(backend: Backend) -> None:
    first = backend.put("blob", b"one")
    second = backend.put("blob", b"two")
    assert first != second
    assert backend.get_with_etag("blob")[1] == second


def test_head_reports_the_size(backend: Backend) -> None:
    backend.put("index/x", BLOB)
    backend.put("empty", b"")
    assert (backend.head("index/x").key, backend.head("index/x").size) == ("index/x", len(BLOB))
    assert backend.head("empty").size == 0


def test_change_token_changes_when_a_blob_is_replaced(backend: Backend) -> None:
    backend.put("refs/a~", b"one")
    first = backend.head("refs/a~").token
    assert first and backend.head("refs/a~").token == first  # stable while unchanged
    backend.put("refs/a~", b"two")
    assert backend.head("refs/a~").token != first
    listed = {i.key: i for i in backend.list_info("refs/")}
    assert listed["refs/a~"] == backend.head("refs/a~")


def test_put_accepts_bytearray_and_memoryview(backend: Backend) -> None:
    backend.put("a", bytearray(b"from a bytearray"))
    backend.put("b", memoryview(BLOB)[10:20])
    assert backend.get("a") == b"from a bytearray"
    assert backend.get("b") == BLOB[10:20]


# missing keys: always NotFoundError, never None


def test_missing_key_raises_not_found_from_every_read(backend: Backend) -> None:
    for read in (
        lambda: backend.get("nope"),
        lambda: backend.get("nope", ByteRange(0, 10)),
        lambda: backend.get_with_etag("nope"),
        lambda: backend.head("nope"),
        lambda: backend.get("no/such/dir/blob"),
    ):
        with pytest.raises(NotFoundError):
            read()


def test_put_if_match_on_a_missing_key_raises_not_found_and_creates_nothing(
    backend: Backend,
) -> None:
    with pytest.raises(NotFoundError):
        backend.put_if_match("nope", b"data", "some-etag")
    assert list(backend.list()) == []


def test_a_key_that_is_only_a_prefix_of_other_keys_is_missing(backend: Backend) -> None:
    # LocalBackend keeps "refs/a/b" as a file inside a directory "refs/a".
    backend.put("refs/a/b", b"x")
    with pytest.raises(NotFoundError):
        backend.get("refs/a")
    with pytest.raises(NotFoundError):
        backend.head("refs/a")
    with pytest.raises(NotFoundError):
        backend.put_if_match("refs/a", b"y", "etag")
    backend.delete("refs/a")
    assert backend.get("refs/a/b") == b"x"


# writes


def test_put_replaces_the_whole_blob(backend: Backend) -> None:
    backend.put("blob", BLOB)
    backend.put("blob", b"short")
    assert backend.get("blob") == b"short"
    assert backend.head("blob").size == 5


def test_concurrent_readers_see_the_old_or_the_new_blob_never_a_mix(backend: Backend) -> None:
    old, new = b"o" * (256 << 10), b"n" * (300 << 10)
    backend.put("blob", old)
    readers = 2
    reads = [0] * readers
    mixes: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read(r: int) -> None:
        try:
            while not stop.is_set():
                data = backend.get("blob")
                if data not in (old, new):
                    mixes.append(f"reader {r} got {len(data)} bytes, neither blob")
                reads[r] += 1
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=read, args=(r,)) for r in range(readers)]
    for t in threads:
        t.start()
    at_start = list(reads)
    puts, deadline = 0, time.monotonic() + 60

    def every_reader_read_meanwhile() -> bool:
        return all(n - s >= 5 for n, s in zip(reads, at_start, strict=True))

    try:
        # Keep replacing it until each reader has read while it was being replaced:
        # a reader that never ran, or died, must not let the test pass.
        while all(t.is_alive() for t in threads) and time.monotonic() < deadline:
            if puts >= 40 and every_reader_read_meanwhile():
                break
            backend.put("blob", new if puts % 2 == 0 else old)
            puts += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, f"a reader died: {errors!r}"
    assert not mixes, mixes[:3]
    assert every_reader_read_meanwhile(), f"readers read {reads} times, {at_start} before the puts"


def test_put_if_absent_creates_a_new_blob(backend: Backend) -> None:
    etag = backend.put_if_absent("manifests/ab/m", b"manifest")
    assert backend.get_with_etag("manifests/ab/m") == (b"manifest", etag)


def test_put_if_absent_on_an_existing_key_raises_and_keeps_the_old_blob(
    backend: Backend,
) -> None:
    backend.put("blob", b"original")
    with pytest.raises(AlreadyExistsError):
        backend.put_if_absent("blob", b"intruder")
    assert backend.get("blob") == b"original"


def test_put_if_match_with_the_current_etag_replaces(backend: Backend) -> None:
    etag = backend.put("ref", b"v1")
    new_etag = backend.put_if_match("ref", b"v2", etag)
    assert backend.get_with_etag("ref") == (b"v2", new_etag)


def test_put_if_match_with_a_stale_etag_raises_conflict_and_changes_nothing(
    backend: Backend,
) -> None:
    stale = backend.put("ref", b"v1")
    current = backend.put("ref", b"v2 by someone else")
    with pytest.raises(ConflictError):
        backend.put_if_match("ref", b"v3", stale)
    assert backend.get_with_etag("ref") == (b"v2 by someone else", current)


def test_compare_and_swap_increments_from_many_threads_lose_no_update(
    backend: Backend,
) -> None:
    backend.put("counter", b"0")
    threads, per_thread = 6, 15

    def increment() -> None:
        for _ in range(per_thread):
            while True:
                data, etag = backend.get_with_etag("counter")
                try:
                    backend.put_if_match("counter", str(int(data) + 1).encode(), etag)
                    break
                except ConflictError:
                    continue

    workers = [threading.Thread(target=increment) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert int(backend.get("counter")) == threads * per_thread


# listing and deleting


def test_list_returns_keys_with_the_prefix_in_sorted_order(backend: Backend) -> None:
    keys = [
        "packs/ab/2",
        "packs/ab/1",
        "packs/b0/3",
        "packs-old",
        "index/x",
        "packsx/1",
        "a-b",
        "a/b",
    ]
    for k in keys:
        backend.put(k, b"x")
    assert list(backend.list()) == sorted(keys)
    assert list(backend.list("packs/")) == ["packs/ab/1", "packs/ab/2", "packs/b0/3"]
    assert list(backend.list("packs")) == [
        "packs-old",
        "packs/ab/1",
        "packs/ab/2",
        "packs/b0/3",
        "packsx/1",
    ]
    assert list(backend.list("packs/ab/")) == ["packs/ab/1", "packs/ab/2"]
    assert list(backend.list("packs/a")) == ["packs/ab/1", "packs/ab/2"]
    assert list(backend.list("nothing/")) == []


def test_list_does_not_show_deleted_keys(backend: Backend) -> None:
    backend.put("index/1", b"x")
    backend.put("index/2", b"x")
    backend.delete("index/1")
    assert list(backend.list("index/")) == ["index/2"]


def test_delete_removes_the_blob_and_is_idempotent(backend: Backend) -> None:
    backend.put("blob", b"x")
    backend.delete("blob")
    with pytest.raises(NotFoundError):
        backend.get("blob")
    backend.delete("blob")
    backend.delete("never/existed")


def test_a_deleted_key_can_be_created_again_with_put_if_absent(backend: Backend) -> None:
    backend.put("blob", b"old")
    backend.delete("blob")
    backend.put_if_absent("blob", b"new")
    assert backend.get("blob") == b"new"


# keys


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs",
        "trailing/",
        "a//b",
        "..",
        "a/../b",
        ".",
        "a/./b",
        ".hidden",
        "dir/.hidden",
        "nul\0byte",
    ],
)
def test_invalid_keys_are_rejected_by_every_call(backend: Backend, key: str) -> None:
    calls = [
        lambda: backend.get(key),
        lambda: backend.get_with_etag(key),
        lambda: backend.head(key),
        lambda: backend.put(key, b"x"),
        lambda: backend.put_if_absent(key, b"x"),
        lambda: backend.put_if_match(key, b"x", "etag"),
        lambda: backend.delete(key),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="invalid blob key"):
            call()
    assert list(backend.list()) == []


def test_keys_with_dots_tildes_and_percents_inside_names_are_fine(backend: Backend) -> None:
    keys = ["refs/model.safetensors~", "refs/a%2Eb~", "x-y_z.1"]
    for k in keys:
        backend.put(k, k.encode())
    assert [backend.get(k) for k in keys] == [k.encode() for k in keys]
    assert list(backend.list()) == sorted(keys)


def _key_of_length(length: int) -> str:
    """A key of exactly length bytes, of 200-byte components (each backend takes 255)."""
    parts: list[str] = []
    while length > 201:
        parts.append("k" * 200)
        length -= 201
    return "/".join([*parts, "k" * length])


def test_a_key_of_max_key_bytes_is_held_and_one_byte_longer_is_refused(backend: Backend) -> None:
    limit = backend.max_key_bytes
    if limit is None:  # no limit: a key of 10 KiB is as good as any
        key = _key_of_length(10_240)
        backend.put(key, b"long")
        assert backend.get(key) == b"long" and list(backend.list()) == [key]
        return
    key = _key_of_length(limit)
    assert len(key) == limit
    backend.put_if_absent(key, b"at the limit")
    assert backend.get(key) == b"at the limit" and backend.head(key).size == 12
    assert list(backend.list(key[:-1])) == [key]
    backend.delete(key)
    # The limit is where the keys go, not modelfs' own: the backend itself refuses past it.
    with pytest.raises(BackendError):
        backend.put(_key_of_length(limit + 1), b"one byte over")
    assert list(backend.list()) == []


def test_a_local_backends_key_limit_is_path_max_less_its_root_directory(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "blobs", create=True)
    path_max = os.pathconf(tmp_path, "PC_PATH_MAX")
    # ROOT/KEY, and PATH_MAX counts the terminating NUL.
    assert backend.max_key_bytes == path_max - len(os.fsencode(tmp_path / "blobs")) - 2
    assert backend.key_limit_reason == (
        f"the filesystem's PATH_MAX of {path_max:,} less the store directory's path"
    )
    deeper = LocalBackend(tmp_path / "blobs" / ("é" * 100), create=True)
    assert deeper.max_key_bytes == backend.max_key_bytes - 201  # bytes, not characters


def test_an_s3_backends_key_limit_is_1024_bytes_less_its_prefix(
    seaweedfs: SeaweedFS, s3_bucket: str
) -> None:
    def backend(prefix: str) -> S3Backend:
        return S3Backend(
            s3_bucket, prefix, endpoint_url=seaweedfs.endpoint, region_name=REGION,
            aws_access_key_id=seaweedfs.access_key, aws_secret_access_key=seaweedfs.secret_key,
        )  # fmt: skip

    with backend("0123456789abcdef") as b:  # as the tests' stores are
        assert b.max_key_bytes == 1024 - 17
        assert b.key_limit_reason == "S3's 1,024 less the store's prefix"
    with backend("models/é") as b:
        assert b.max_key_bytes == 1024 - len("models/é/".encode()) == 1014
    with backend("") as b:
        assert b.max_key_bytes == 1024 and b.key_limit_reason == "S3's limit on an object key"


def test_the_retrying_wrapper_passes_the_inner_backends_key_limit_through(
    tmp_path: Path,
) -> None:
    local = LocalBackend(tmp_path / "blobs", create=True)
    wrapped = RetryingBackend(local)
    assert wrapped.max_key_bytes == local.max_key_bytes is not None
    assert wrapped.key_limit_reason == local.key_limit_reason
    assert RetryingBackend(MemoryBackend()).max_key_bytes is None
    assert MemoryBackend().max_key_bytes is None


# LocalBackend only


def test_local_put_leaves_no_temporary_file_behind(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "store", create=True)
    backend.put("a/b", b"x" * 100_000)
    backend.put_if_absent("c", b"y")
    backend.put_if_match("c", b"z", backend.get_with_etag("c")[1])
    with pytest.raises(AlreadyExistsError):
        backend.put_if_absent("c", b"again")
    assert os.listdir(tmp_path / "store" / ".tmp") == []


def test_local_put_that_fails_raises_backend_error_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    backend = LocalBackend(tmp_path / "store", create=True)
    backend.put("a", b"a blob")
    backend.put("dir/b", b"another")
    with pytest.raises(BackendError):
        backend.put("a/under-a-blob", b"x")  # "a" is a file, so not a directory
    with pytest.raises(BackendError):
        backend.put("dir", b"x")  # "dir" is a directory on disk
    assert os.listdir(tmp_path / "store" / ".tmp") == []
    assert backend.get("a") == b"a blob"
    assert list(backend.list()) == ["a", "dir/b"]


def test_local_list_hides_its_own_temporary_and_lock_files(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "store", create=True)
    etag = backend.put("ref", b"1")
    backend.put_if_match("ref", b"2", etag)
    (tmp_path / "store" / ".tmp" / "stray").write_bytes(b"left by a crash")
    assert list(backend.list()) == ["ref"]


def test_local_blobs_persist_across_backend_instances(tmp_path: Path) -> None:
    LocalBackend(tmp_path / "store", create=True).put("packs/ab/p", BLOB)
    assert LocalBackend(tmp_path / "store").get("packs/ab/p") == BLOB


_CAS_WORKER = """
import sys
from modelfs.backends import LocalBackend
from modelfs.errors import ConflictError

backend = LocalBackend(sys.argv[1])
for _ in range(int(sys.argv[2])):
    while True:
        data, etag = backend.get_with_etag("counter")
        try:
            backend.put_if_match("counter", str(int(data) + 1).encode(), etag)
            break
        except ConflictError:
            pass
"""


def test_local_compare_and_swap_increments_from_several_processes_lose_no_update(
    tmp_path: Path,
) -> None:
    root = tmp_path / "store"
    backend = LocalBackend(root, create=True)
    backend.put("counter", b"0")
    processes, per_process, threads, per_thread = 3, 30, 4, 10

    def increment_in_this_process() -> None:
        for _ in range(per_thread):
            while True:
                data, etag = backend.get_with_etag("counter")
                try:
                    backend.put_if_match("counter", str(int(data) + 1).encode(), etag)
                    break
                except ConflictError:
                    pass

    children = [
        subprocess.Popen([sys.executable, "-c", _CAS_WORKER, str(root), str(per_process)])
        for _ in range(processes)
    ]
    local = [threading.Thread(target=increment_in_this_process) for _ in range(threads)]
    for t in local:
        t.start()
    for t in local:
        t.join()
    assert [c.wait(timeout=120) for c in children] == [0] * processes
    assert int(backend.get("counter")) == processes * per_process + threads * per_thread


# store URLs


def test_open_backend_accepts_a_plain_path(tmp_path: Path) -> None:
    LocalBackend(tmp_path / "store", create=True).put("config", b"c")
    backend = open_backend(str(tmp_path / "store"))
    assert isinstance(backend, LocalBackend)
    assert backend.get("config") == b"c"
    assert open_backend(tmp_path / "store").get("config") == b"c"  # os.PathLike too


def test_open_backend_accepts_a_file_url_with_percent_escapes(tmp_path: Path) -> None:
    root = tmp_path / "my store"
    LocalBackend(root, create=True).put("config", b"c")
    url = "file://" + str(root).replace(" ", "%20")
    assert open_backend(url).get("config") == b"c"
    assert open_backend("file://localhost" + str(root).replace(" ", "%20")).get("config") == b"c"


def test_open_backend_takes_a_plain_path_literally(tmp_path: Path) -> None:
    root = tmp_path / "a%20b"
    LocalBackend(root, create=True).put("config", b"c")
    assert open_backend(str(root)).get("config") == b"c"


def test_open_backend_of_a_missing_directory_raises_store_not_found(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="no store"):
        open_backend(str(tmp_path / "missing"))
    with pytest.raises(StoreNotFoundError, match="no store"):
        open_backend(f"file://{tmp_path}/missing")
    (tmp_path / "a-file").write_bytes(b"not a directory")
    with pytest.raises(StoreNotFoundError):
        open_backend(str(tmp_path / "a-file"))
    assert not (tmp_path / "missing").exists()


def test_open_backend_with_create_makes_the_directory(tmp_path: Path) -> None:
    backend = open_backend(str(tmp_path / "new" / "store"), create=True)
    backend.put("config", b"c")
    assert (tmp_path / "new" / "store" / "config").read_bytes() == b"c"


@pytest.mark.parametrize("url", ["ftp://example.com/store", "gopher://x/y", "http://example.com/"])
def test_open_backend_rejects_an_unsupported_scheme_with_a_clear_error(url: str) -> None:
    with pytest.raises(StoreNotFoundError, match="unsupported store URL"):
        open_backend(url)


def test_open_backend_rejects_a_file_url_naming_a_remote_host() -> None:
    with pytest.raises(StoreNotFoundError, match="remote host"):
        open_backend("file://fileserver/srv/store")
