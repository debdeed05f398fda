"""Names of up to 255 bytes (NAME_MAX) on every backend, through the Python API and the CLI.

A name whose percent-encoded form does not fit a key component is stored
under a shortened key (docs/FORMAT.md, Refs): the user must not notice, on
any backend, in files, directories, listings, history, scans or fsck. Paths
of up to 1,024 bytes work wherever the backend holds their keys (a local
store holds far longer keys; S3 holds 1,024 bytes with the store's prefix),
and one the backend cannot hold is refused, saying so, before anything is
written. A version-1 store keeps working and becomes version 2 when the first
such name is written into it; refs and markers of version 1 still read.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import CLI, new_store_url
from storeobjects import StoreObjects, WrappedBackend

import modelfs
from modelfs.backends import LocalBackend, MemoryBackend
from modelfs.backends.base import Data
from modelfs.errors import (
    AlreadyExistsError,
    BackendError,
    ConflictError,
    DirectoryNotEmptyError,
    NameTooLongError,
    UnsupportedFormatError,
)
from modelfs.store import Store, StoreConfig
from modelfs.store import cas as store_cas
from modelfs.store import format as store_format
from modelfs.store.paths import dir_marker_key, is_shortened_key, ref_key

ASCII = "n" * 255
WIDE = "é" * 127 + "a"  # 255 bytes, 763 once escaped
ODD = "~.% é" * 42 + "xyz"  # 255 bytes of everything that escapes
NAMES = {"ascii": ASCII, "multi-byte": WIDE, "escaped": ODD}

# The config object as modelfs of format version 1 wrote it (docs/FORMAT.md).
V1_CONFIG = (
    b'{"checksum":"xxh3-128","chunking":{"algorithm":"fastcdc2020","avg_size":1048576,'
    b'"max_size":4194304,"min_size":262144},"compression":{"codec":"zstd","level":3},'
    b'"format":"modelfs","hash":"blake3-256","pack_size":33554432,"version":1}'
)


# Paths near the 1,024-byte limit. Three 255-byte ASCII directories:
DIRS = ["a" * 255, "b" * 255, "c" * 255]
UNSHORTENED = "/".join([*DIRS, "m" * 254])  # 1,022 bytes, no name shortened: a 1,028-byte key
SHORTENED = "/".join([*DIRS, "m" * 255])  # 1,023 bytes, the file name shortened: 959
FULL = "/".join([*DIRS, "d" * 253, "xy"])  # 1,024 bytes: a 1,030-byte key
WIDE_FULL = "/".join([WIDE[:-1] + str(i) for i in range(3)] + ["é" * 100, "日" * 18 + "a"])


def _new_client(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> modelfs.Client:
    if kind == "memory":
        return modelfs.Client(Store.create(MemoryBackend()), use_disk_cache=False)
    url = new_store_url(kind, request, tmp_path)
    return modelfs.open_store(url, cache_dir=tmp_path / "cache")


@pytest.fixture(params=["file", "s3", "memory"])
def any_client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[modelfs.Client]:
    """A new store on each backend: local, SeaweedFS, and in memory."""
    c = _new_client(request.param, request, tmp_path)
    yield c
    c.close()


@pytest.fixture(params=["file", "memory"])
def roomy_client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[modelfs.Client]:
    """A new store on a backend that holds keys far longer than 1,024 bytes."""
    c = _new_client(request.param, request, tmp_path)
    yield c
    c.close()


def _objects(client: modelfs.Client) -> dict[str, tuple[int, str]]:
    """What a listing of the whole backend shows: equal before and after, nothing written."""
    return {i.key: (i.size, i.token) for i in client.store.backend.list_info()}


def test_the_names_are_255_bytes_and_need_shortened_keys() -> None:
    for name in NAMES.values():
        assert len(name.encode()) == 255
        assert is_shortened_key(ref_key(name))
    assert not is_shortened_key(ref_key(f"{ASCII}/f"))  # 255 bytes fit a directory name


@pytest.mark.parametrize("name", NAMES.values(), ids=NAMES.keys())
def test_a_255_byte_name_stores_reads_lists_and_keeps_its_history(
    any_client: modelfs.Client, name: str
) -> None:
    c = any_client
    path = f"models/{name}"
    assert c.put(path, b"first" * 1000).version == 1
    assert c.put(path, b"second" * 1000, message="again").version == 2
    c.put("models/short", b"short")
    assert c.read(path) == b"second" * 1000
    assert c.read(path, version=1) == b"first" * 1000
    with c.open(path) as f:
        assert f.path == path and f.read(6) == b"second"
    assert [v.message for v in c.history(path)] == ["", "again"]
    assert [f.path for f in c.list("models")] == sorted([path, "models/short"])
    assert [(f.path, f.version) for f in c.list(path)] == [(path, 2)]
    assert c.store.scan().files[path].version == 2
    assert not c.store.is_dir(path)
    c.delete(path)
    assert [f.path for f in c.list()] == ["models/short"]
    assert c.history(path)[-1].deleted and c.read(path, version=2) == b"second" * 1000
    report = c.store.fsck()
    assert report.ok, report
    assert report.files_checked == 2 and report.versions_checked == 3


def test_long_names_rename_into_and_out_of_long_directories(any_client: modelfs.Client) -> None:
    c = any_client
    c.put(f"{WIDE}/{ASCII}", b"weights")
    c.store.rename(f"{WIDE}/{ASCII}", f"{ODD}/{WIDE}")
    assert [f.path for f in c.list()] == [f"{ODD}/{WIDE}"]
    assert c.read(f"{ODD}/{WIDE}") == b"weights"
    assert c.history(f"{WIDE}/{ASCII}")[-1].message == f"renamed to {ODD}/{WIDE}"
    assert not c.store.is_dir(WIDE) and c.store.is_dir(ODD)
    c.store.rename(f"{ODD}/{WIDE}", "plain")
    assert [f.path for f in c.list()] == ["plain"] and c.read("plain") == b"weights"
    assert c.store.fsck().ok


@pytest.mark.parametrize("name", [ASCII, WIDE], ids=["ascii", "multi-byte"])
def test_four_levels_of_255_byte_names(any_client: modelfs.Client, name: str) -> None:
    c, store = any_client, any_client.store
    dirs = [name[:-1] + str(i) for i in range(3)]  # three directories, all different
    deep = "/".join([*dirs, name])  # 1023 bytes
    c.put(deep, b"deep")
    c.put(f"{dirs[0]}/{dirs[1]}/beside", b"beside")
    assert c.read(deep) == b"deep"
    for level in range(1, 4):
        parent = "/".join(dirs[:level])
        assert store.is_dir(parent)
        assert deep in [f.path for f in c.list(parent)]
    assert [f.path for f in c.list("/".join(dirs[:3]))] == [deep]
    assert sorted(f.path for f in c.list(dirs[0])) == sorted([deep, f"{dirs[0]}/{dirs[1]}/beside"])
    tree = store.scan()
    assert set(tree.files) == {deep, f"{dirs[0]}/{dirs[1]}/beside"}
    assert {"/".join(dirs[:i]) for i in range(1, 4)} <= tree.dirs
    assert tree.children("/".join(dirs[:3])) == ([], [name])
    assert tree.children("/".join(dirs[:2])) == ([dirs[2]], ["beside"])
    with pytest.raises(DirectoryNotEmptyError):
        store.rmdir("/".join(dirs[:3]))
    assert store.fsck().ok


def test_mkdir_rmdir_and_scan_of_four_nested_255_byte_directories(
    any_client: modelfs.Client,
) -> None:
    store = any_client.store
    dirs = [WIDE[:-1] + str(i) for i in range(4)]
    nested = ["/".join(dirs[:i]) for i in range(1, 5)]  # the deepest is 1023 bytes
    for d in nested:
        store.mkdir(d)
    tree = store.scan()
    assert set(nested) <= tree.explicit_dirs and not tree.files
    assert tree.children(nested[2]) == ([dirs[3]], [])
    assert all(store.is_dir(d) for d in nested)
    with pytest.raises(AlreadyExistsError):
        store.mkdir(nested[3])
    with pytest.raises(DirectoryNotEmptyError):
        store.rmdir(nested[2])
    store.rmdir(nested[3])
    assert not store.is_dir(nested[3]) and store.is_dir(nested[2])
    assert store.scan().explicit_dirs == set(nested[:3])
    # A file under a marked long directory; the marker outlives it.
    any_client.put(f"{nested[1]}/f", b"x")
    any_client.delete(f"{nested[1]}/f")
    assert store.is_dir(nested[1]) and store.scan().children(nested[1]) == ([dirs[2]], [])
    for d in reversed(nested[:3]):
        store.rmdir(d)
    assert store.scan().dirs == {""}
    assert store.fsck().ok


def test_a_scan_rereads_nothing_unchanged_and_sees_long_names_change(tmp_path: Path) -> None:
    gets: list[str] = []

    class CountingGets(WrappedBackend):
        def get(self, key, byte_range=None):  # type: ignore[no-untyped-def]
            gets.append(key)
            return super().get(key, byte_range)

    store = Store.create(CountingGets(MemoryBackend()))
    store.mkdir(WIDE)
    store.put(f"{WIDE}/{ASCII}", b"1")
    first = store.scan()
    assert WIDE in first.explicit_dirs and set(first.files) == {f"{WIDE}/{ASCII}"}
    gets.clear()
    again = store.scan()
    assert gets == [] and again.explicit_dirs == first.explicit_dirs
    store.put(f"{WIDE}/{ASCII}", b"22")
    store.mkdir(ODD)
    gets.clear()
    tree = store.scan()
    assert len(gets) == 2  # the changed ref and the new marker
    assert tree.files[f"{WIDE}/{ASCII}"].size == 2 and tree.explicit_dirs == {WIDE, ODD}
    store.close()


def _writes(client: modelfs.Client) -> dict[str, Callable[[str], object]]:
    """Each way of writing a new path."""
    return {
        "put": lambda p: client.put(p, b"x" * 100_000),
        "mkdir": client.store.mkdir,
        "rename": lambda p: client.store.rename("ok", p),
        "ensure_dir": client.store.ensure_dir,
    }


def test_a_256_byte_name_is_refused_with_enametoolong_and_nothing_is_written(
    client: modelfs.Client, store_objects: StoreObjects
) -> None:
    client.put("ok", b"ok")
    before = store_objects.snapshot()
    for path in ("d/" + "n" * 256, "é" * 128, "é" * 127 + "ab/d"):
        for how, write in _writes(client).items():
            with pytest.raises(NameTooLongError, match="too long: 256 bytes") as info:
                write(path)
            assert info.value.errno == errno.ENAMETOOLONG, how
    assert store_objects.snapshot() == before


def test_the_paths_near_the_limit_are_as_long_as_they_say() -> None:
    sizes = {p: len(p.encode()) for p in (UNSHORTENED, SHORTENED, FULL, WIDE_FULL)}
    assert list(sizes.values()) == [1022, 1023, 1024, 1024]
    assert [len(ref_key(p)) for p in (UNSHORTENED, SHORTENED, FULL)] == [1028, 959, 1030]
    assert not is_shortened_key(ref_key(UNSHORTENED)) and is_shortened_key(ref_key(WIDE_FULL))


def test_paths_of_up_to_1024_bytes_work_on_a_local_store_however_long_their_keys(
    roomy_client: modelfs.Client,
) -> None:
    c, store = roomy_client, roomy_client.store
    paths = [UNSHORTENED, SHORTENED, FULL]
    for p in paths:
        c.put(p, b"one " + p[-3:].encode())
        c.put(p, b"two " + p[-3:].encode(), message="again")
    for p in paths:
        assert c.read(p) == b"two " + p[-3:].encode()
        assert c.read(p, version=1) == b"one " + p[-3:].encode()
        assert [v.message for v in c.history(p)] == ["", "again"]
    for level in range(1, 4):
        assert [f.path for f in c.list("/".join(DIRS[:level]))] == sorted(paths)
    assert [f.path for f in c.list("/".join([*DIRS, "d" * 253]))] == [FULL]
    assert [(f.path, f.version) for f in c.list(FULL)] == [(FULL, 2)]
    tree = store.scan()
    assert set(tree.files) == set(paths)
    assert tree.children("/".join(DIRS)) == (["d" * 253], ["m" * 254, "m" * 255])

    moved = "/".join([*DIRS, "d" * 253, "yz"])  # 1,024 bytes too
    assert store.rename(FULL, moved).version == 1
    assert (
        c.read(moved) == b"two " + b"/xy" and c.history(FULL)[-1].message == f"renamed to {moved}"
    )
    c.store.rename(UNSHORTENED, "short")
    c.store.rename("short", UNSHORTENED)
    assert c.read(UNSHORTENED) == b"two " + b"mmm"
    c.delete(SHORTENED)
    assert c.history(SHORTENED)[-1].deleted and c.read(SHORTENED, version=2) == b"two mmm"
    assert sorted(f.path for f in c.list()) == sorted([UNSHORTENED, moved])

    parent = "/".join([*DIRS, "e" * 253])
    empty = f"{parent}/xy"  # a directory of 1,024 bytes: a 1,031-byte marker key
    store.mkdir(parent)
    store.mkdir(empty)
    assert store.is_dir(empty) and {parent, empty} <= store.scan().explicit_dirs
    with pytest.raises(AlreadyExistsError):
        store.mkdir(empty)
    with pytest.raises(DirectoryNotEmptyError):
        store.rmdir(parent)
    store.rmdir(empty)
    store.rmdir(parent)
    assert not store.is_dir(parent) and not store.scan().explicit_dirs
    report = store.fsck()
    assert report.ok, report
    assert report.files_checked == 5  # UNSHORTENED, SHORTENED, FULL, moved, short


def test_a_1024_byte_path_of_multi_byte_names_works_on_every_backend(
    any_client: modelfs.Client,
) -> None:
    c, store = any_client, any_client.store
    c.put(WIDE_FULL, b"wide")
    assert c.read(WIDE_FULL) == b"wide"
    parent = WIDE_FULL.rpartition("/")[0]
    assert [f.path for f in c.list(parent)] == [WIDE_FULL]
    assert WIDE_FULL in store.scan().files
    sibling = f"{parent}/{'日' * 18}b"
    store.rename(WIDE_FULL, sibling)
    assert [f.path for f in c.list()] == [sibling] and len(c.history(WIDE_FULL)) == 2
    store.mkdir(WIDE_FULL)  # the old file's path, as a directory now
    assert WIDE_FULL in store.scan().explicit_dirs
    store.rmdir(WIDE_FULL)
    assert store.fsck().ok


@pytest.mark.parametrize("path", [FULL + "z", WIDE_FULL + "b"], ids=["ascii", "multi-byte"])
def test_a_1025_byte_path_is_refused_by_the_path_limit_and_nothing_is_written(
    any_client: modelfs.Client, path: str
) -> None:
    any_client.put("ok", b"ok")
    before = _objects(any_client)
    for how, write in _writes(any_client).items():
        with pytest.raises(
            NameTooLongError, match="too long: 1025 bytes, longer than 1024"
        ) as info:
            write(path)
        assert info.value.errno == errno.ENAMETOOLONG, how
    assert _objects(any_client) == before
    assert [f.path for f in any_client.list()] == ["ok"]


def test_on_s3_a_path_whose_key_passes_s3s_limit_is_refused_saying_so_and_nothing_is_written(
    s3_store_url: str, cli: CLI, tmp_path: Path
) -> None:
    with (
        StoreObjects(s3_store_url) as objects,
        modelfs.open_store(s3_store_url, cache_dir=tmp_path / "cache") as c,
    ):
        assert c.store.backend.max_key_bytes == 1024 - 17  # a 16-character prefix and '/'
        c.put("ok", b"ok")
        before = objects.snapshot()
        # A ref key of 1,028 or 1,030 bytes, a marker key of 1,029 or 1,031.
        for path in (UNSHORTENED, FULL):
            for how, write in _writes(c).items():
                with pytest.raises(NameTooLongError) as info:
                    write(path)
                message = str(info.value)
                assert info.value.errno == errno.ENAMETOOLONG, how
                assert "is too long for this store: its object key would be 1,0" in message
                assert f"{s3_store_url}/ holds keys of at most 1,007" in message
                assert "(S3's 1,024 less the store's prefix)" in message
        local = tmp_path / "weights.bin"
        local.write_bytes(b"weights")
        refused = cli("put", s3_store_url, local, UNSHORTENED, check=False)
        assert refused.returncode == 1, refused.stderr
        stderr = refused.stderr.decode()
        assert "its object key would be 1,028 bytes" in stderr and "S3's 1,024" in stderr
        assert "Traceback" not in stderr
        assert objects.snapshot() == before
        assert [f.path for f in c.list()] == ["ok"]

        # A key of exactly 1,007 bytes fits; 1,008 does not.
        exact = "/".join([*DIRS, "m" * 233])
        assert len(ref_key(exact)) == 1007
        c.put(exact, b"exact")
        assert c.read(exact) == b"exact"
        with pytest.raises(NameTooLongError, match="would be 1,008 bytes"):
            c.put(exact + "m", b"over")
        # Four nested 255-byte names, each shortened, fit as a file and as a directory.
        wide = [WIDE[:-1] + str(i) for i in range(5)]
        nested = "/".join(wide[:4])
        c.put(nested, b"nested")
        c.store.mkdir("/".join([*wide[:3], wide[4]]))
        assert c.read(nested) == b"nested"
        tree = c.store.scan()
        assert set(tree.files) == {"ok", exact, nested}
        assert tree.children("/".join(wide[:3])) == ([wide[4]], [wide[3]])
        assert c.store.fsck().ok


def _deep_directory(base: Path, length: int) -> Path:
    """A directory under base whose absolute path is exactly length bytes."""
    path = str(base)
    while length - len(path) > 256:
        path += "/" + "r" * 200
    return Path(path + "/" + "r" * (length - len(path) - 1))


def test_a_local_store_deep_in_the_filesystem_holds_keys_up_to_path_max_and_refuses_longer(
    tmp_path: Path,
) -> None:
    path_max = os.pathconf(tmp_path, "PC_PATH_MAX")
    root = _deep_directory(tmp_path, path_max - 2 - 1000)  # room for keys of 1,000 bytes
    backend = LocalBackend(root, create=True)
    assert backend.max_key_bytes == 1000
    c = modelfs.Client(Store.create(backend), use_disk_cache=False)
    fits = "/".join([*DIRS, "m" * 226])  # 994 bytes, a 1,000-byte key
    c.put(fits, b"fits")
    assert c.read(fits) == b"fits" and [f.path for f in c.list(DIRS[0])] == [fits]
    c.store.mkdir("/".join([*DIRS, "e" * 225]))  # a 1,000-byte marker key
    before = _objects(c)
    over = fits + "m"
    with pytest.raises(NameTooLongError) as info:
        c.put(over, b"over")
    assert str(info.value).endswith(
        f"would be 1,001 bytes, and {backend.url} holds keys of at most 1,000 (the "
        f"filesystem's PATH_MAX of {path_max:,} less the store directory's path); use shorter "
        "names or fewer directories (a byte outside A-Z a-z 0-9 _ - takes three in a key)"
    )
    with pytest.raises(NameTooLongError, match="would be 1,001 bytes"):
        c.store.mkdir("/".join([*DIRS, "e" * 226]))
    assert _objects(c) == before
    # The limit is the filesystem's: it refuses the file of that key itself.
    with pytest.raises(BackendError, match="File name too long"):
        backend.put(ref_key(over), b"over")
    assert c.store.fsck().ok
    c.close()


def test_the_cli_puts_lists_logs_gets_and_removes_a_255_byte_name(
    cli: CLI, store_url: str, tmp_path: Path
) -> None:
    local = tmp_path / "weights.bin"
    local.write_bytes(b"weights" * 1000)
    path = f"runs/{WIDE}"
    cli("put", store_url, local, path, "-m", "long")
    cli("put", store_url, local, ASCII)
    assert cli("ls", store_url).stdout.decode().splitlines() == sorted([path, ASCII])
    listed = json.loads(cli("ls", "--json", store_url, "runs").stdout)
    assert [f["path"] for f in listed] == [path]
    assert "long" in cli("log", store_url, path).stdout.decode()
    cli("get", store_url, path, tmp_path / "got.bin")
    assert (tmp_path / "got.bin").read_bytes() == local.read_bytes()
    cli("get", store_url, ASCII, tmp_path)  # to a local file of the same 255-byte name
    assert (tmp_path / ASCII).read_bytes() == local.read_bytes()
    cli("rm", store_url, path)
    assert cli("ls", store_url).stdout.decode().splitlines() == [ASCII]
    assert "no problems found" in cli("fsck", store_url).stdout.decode()

    refused = cli("put", store_url, local, "runs/" + "é" * 127 + "ab", check=False)
    assert refused.returncode == 1
    assert "too long: 256 bytes, longer than 255 bytes" in refused.stderr.decode()
    assert "Traceback" not in refused.stderr.decode()
    assert cli("ls", store_url).stdout.decode().splitlines() == [ASCII]


# version-1 stores


def _make_version_1(objects: StoreObjects) -> None:
    objects.write("config", V1_CONFIG)


def test_a_version_1_store_opens_reads_and_writes_ordinary_names_as_before(
    store_url: str, store_objects: StoreObjects, tmp_path: Path
) -> None:
    with modelfs.open_store(store_url, cache_dir=tmp_path / "cache") as c:
        c.put("old/model.bin", b"old" * 1000)
    _make_version_1(store_objects)
    # A marker as version 1 wrote it: no path in it.
    store_objects.write(dir_marker_key("old/empty"), b"{}")
    with modelfs.open_store(store_url, cache_dir=tmp_path / "cache") as c:
        assert c.store.config.version == 1
        assert c.read("old/model.bin") == b"old" * 1000
        c.put("old/model.bin", b"new" * 1000)
        c.put("é" * 42, b"252 bytes once escaped: fits, as in version 1")
        c.store.mkdir("new-dir")
        assert c.store.is_dir("old/empty") and "old/empty" in c.store.scan().explicit_dirs
        c.store.rmdir("old/empty")
        assert c.store.fsck().ok
    assert store_objects.read("config") == V1_CONFIG  # nothing needed version 2
    assert "refs/old/model%2Ebin~" in store_objects.keys("refs/")


def test_a_version_1_store_becomes_version_2_when_a_long_name_is_first_written(
    store_url: str,
    store_objects: StoreObjects,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with modelfs.open_store(store_url, cache_dir=tmp_path / "cache") as c:
        c.put("old/model.bin", b"old" * 1000)
    _make_version_1(store_objects)
    with modelfs.open_store(store_url, cache_dir=tmp_path / "cache") as c:
        assert c.store.config.version == 1
        with caplog.at_level(logging.INFO, logger="modelfs.store.store"):
            c.put(f"old/{WIDE}", b"long")
        assert c.store.config.version == 2
        assert c.read(f"old/{WIDE}") == b"long" and c.read("old/model.bin") == b"old" * 1000
    upgraded = json.loads(store_objects.read("config"))
    assert upgraded == {**json.loads(V1_CONFIG), "version": 2}  # only the version changed
    assert any("upgraded" in r.getMessage() and "version 2" in r.getMessage()
               for r in caplog.records if r.levelno == logging.INFO)  # fmt: skip
    # A modelfs that knows only version 1 now refuses the store instead of missing the file.
    monkeypatch.setattr(store_format, "FORMAT_VERSION", 1)
    with pytest.raises(UnsupportedFormatError, match="upgrade modelfs"):
        modelfs.open_store(store_url, use_disk_cache=False)


def test_a_version_1_store_becomes_version_2_on_mkdir_of_a_long_name() -> None:
    backend = MemoryBackend()
    store = Store.create(backend, StoreConfig(version=1))
    store.mkdir("plain")
    assert json.loads(backend.get("config"))["version"] == 1
    store.mkdir(f"plain/{WIDE}")
    assert json.loads(backend.get("config"))["version"] == 2
    assert Store.open(backend).scan().explicit_dirs == {"plain", f"plain/{WIDE}"}


def test_a_long_ref_key_a_version_1_writer_made_still_reads_and_grows(
    store_url: str, store_objects: StoreObjects, tmp_path: Path
) -> None:
    path = "/".join([ASCII] * 3 + ["m" * 190])  # no name shortened: a 964-byte key
    key = ref_key(path)
    assert len(key) == 964 and not is_shortened_key(key)
    with modelfs.open_store(store_url, cache_dir=tmp_path / "cache") as c:
        c.put("short", b"v1 content")
    _make_version_1(store_objects)
    doc = json.loads(store_objects.read(ref_key("short")))
    store_objects.write(key, json.dumps({**doc, "path": path}).encode())  # as version 1 wrote it
    with modelfs.open_store(store_url, cache_dir=tmp_path / "cache") as c:
        assert c.read(path) == b"v1 content"
        assert c.put(path, b"grown").version == 2
        assert path in c.store.scan().files and path in [f.path for f in c.list(ASCII)]
        assert c.store.fsck().ok
    assert store_objects.read("config") == V1_CONFIG


# compare-and-swap that never wins


def test_a_ref_that_keeps_changing_fails_with_conflict_error_naming_the_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class AlwaysConflicts(WrappedBackend):
        def put_if_match(self, key: str, data: Data, etag: str) -> str:
            if key.startswith("refs/"):
                raise ConflictError(f"blob {key!r} changed since it was read")
            return super().put_if_match(key, data, etag)

    backend = MemoryBackend()
    Store.create(backend).put(f"busy/{WIDE}", b"one")
    sleeps: list[float] = []
    monkeypatch.setattr(
        store_cas, "time", SimpleNamespace(sleep=sleeps.append, monotonic=time.monotonic)
    )
    store = Store.open(AlwaysConflicts(backend))
    with pytest.raises(ConflictError, match=f"could not publish a version of busy/{WIDE}") as info:
        store.put(f"busy/{WIDE}", b"two")
    assert info.value.errno == errno.EAGAIN
    assert "50 times in a row" in str(info.value)
    assert len(sleeps) == 49 and max(sleeps) <= 1.0  # backed off between tries, not after
    assert [v.size for v in store.history(f"busy/{WIDE}")] == [3]  # nothing lost or changed
