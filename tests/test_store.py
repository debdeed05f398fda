"""The store as a user of the Python API meets it, on real MiniLM weights.

Storing from every kind of source, lazy and cached reads, deduplication of a
fine-tuned copy, versions and deletion, concurrent writers, crash safety
(a backend that fails mid-put), and what happens when packs are corrupted,
deleted or truncated on disk.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from conftest import sha256
from storeobjects import StoreObjects, WrappedBackend

import modelfs
from modelfs.backends import open_backend
from modelfs.backends.base import Backend, Data
from modelfs.errors import BackendError, IsADirectoryError_, NotADirectoryError_
from modelfs.store import Manifest, PutResult, Store
from modelfs.store.chunking import Span, split
from modelfs.store.format import pack_key
from modelfs.store.tensorfile import read_layout

PATH = "minilm/model.safetensors"


def cold_client(url: str, cache_dir: Path) -> modelfs.Client:
    """A client with an empty disk cache: every block it reads comes from the store."""
    return modelfs.open_store(url, cache_dir=cache_dir)


def tensor_ranges(data: bytes) -> dict[str, tuple[int, int]]:
    """Absolute [start, end) of each tensor of a safetensors file, from its header."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    return {
        name: (8 + n + info["data_offsets"][0], 8 + n + info["data_offsets"][1])
        for name, info in header.items()
    }


@pytest.fixture(scope="module")
def finetuned(minilm_tensors: dict[str, np.ndarray]) -> tuple[bytes, set[str]]:
    """MiniLM with its last encoder layer fine-tuned and a classifier head added.

    Written by the reference safetensors writer. Returns the file's bytes and
    the names of the tensors that differ from MiniLM. The new head sorts
    first, so every unchanged tensor sits at a new offset.
    """
    rng = np.random.default_rng(0)
    tensors = dict(minilm_tensors)
    changed = {name for name in tensors if name.startswith("encoder.layer.5.")}
    for name in changed:
        tensors[name] = tensors[name] + rng.normal(0, 1e-3, tensors[name].shape).astype(np.float32)
    tensors["classifier.weight"] = rng.normal(size=(2, 384)).astype(np.float32)
    tensors["classifier.bias"] = np.zeros(2, np.float32)
    data = safetensors.numpy.save(tensors, metadata={"format": "pt"})
    return data, changed | {"classifier.weight", "classifier.bias"}


@pytest.fixture
def stored_minilm(client: modelfs.Client, minilm_path: Path) -> PutResult:
    """MiniLM stored at PATH in the test's own (changeable) store."""
    return client.put(PATH, minilm_path)


# storing and reading back


class NonSeekableStream(io.RawIOBase):
    """A stream with read() only: no fileno, no seek (a socket or HTTP body, say)."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), len(self._data) - self._pos, 1 << 20)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


@pytest.fixture(params=["path", "open-file", "bytes", "pipe", "stream-without-fileno"])
def minilm_source(
    request: pytest.FixtureRequest, minilm_path: Path, minilm_bytes: bytes
) -> Iterator[object]:
    """MiniLM as each kind of source put() accepts."""
    if request.param == "path":
        yield minilm_path
    elif request.param == "open-file":
        with open(minilm_path, "rb") as f:
            yield f
    elif request.param == "bytes":
        yield minilm_bytes
    elif request.param == "pipe":
        with subprocess.Popen(["cat", str(minilm_path)], stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            yield proc.stdout
    else:
        yield NonSeekableStream(minilm_bytes)


@pytest.mark.backend_independent
def test_put_from_any_source_reads_back_byte_exact(
    client: modelfs.Client, minilm_source: object, minilm_path: Path
) -> None:
    result = client.put(PATH, minilm_source)  # type: ignore[arg-type]

    assert (result.version, result.size, result.layout) == (
        1,
        minilm_path.stat().st_size,
        "safetensors",
    )
    assert sha256(client.read(PATH)) == sha256(minilm_path)
    assert [(f.path, f.size) for f in client.list()] == [(PATH, result.size)]


def test_random_range_reads_match_the_original_bytes(
    minilm_store: str, tmp_path: Path, minilm_bytes: bytes
) -> None:
    rng = random.Random(7)
    size = len(minilm_bytes)
    with cold_client(minilm_store, tmp_path / "cache") as c, c.open(PATH) as f:
        # Reads that start, end or straddle at block edges, as well as anywhere.
        edges = [b.file_offset for b in f.manifest.blocks]
        ranges = [
            (e + d, n) for e in rng.sample(edges, 20) for d in (-1, 0, 1) for n in (1, 2, 5000)
        ]
        ranges += [
            (rng.randrange(size), rng.choice([0, 1, 7, 4096, 1 << 20, 5 << 20])) for _ in range(150)
        ]
        ranges += [(0, 8), (size - 1, 10), (size, 10), (size + 100, 10), (0, size + 1000)]
        for offset, length in ranges:
            offset = max(0, offset)
            f.seek(offset)
            assert f.read(length) == minilm_bytes[offset : offset + length], (offset, length)
            assert f.tell() == (min(size, offset + length) if offset <= size else offset)


def test_small_read_fetches_only_the_blocks_it_overlaps(
    minilm_store: str, tmp_path: Path, minilm_bytes: bytes
) -> None:
    size = len(minilm_bytes)
    offset, length = size // 2, 1000
    with cold_client(minilm_store, tmp_path / "cache") as c:
        overlapping = c.store.manifest(PATH).blocks_for(offset, length)

        assert c.read(PATH, offset, length) == minilm_bytes[offset : offset + length]

        assert c.reader.stats.blocks_fetched == len(overlapping)
        assert c.reader.stats.bytes_fetched == sum(b.length for b in overlapping)
        assert c.reader.stats.bytes_fetched < size // 10


def test_repeated_read_is_served_from_cache(
    minilm_store: str, tmp_path: Path, minilm_bytes: bytes
) -> None:
    offset = len(minilm_bytes) // 3
    with cold_client(minilm_store, tmp_path / "cache") as c:
        c.read(PATH, offset, 4096)
        fetched = c.reader.stats.blocks_fetched

        again = c.read(PATH, offset, 4096)
        nearby = c.read(PATH, offset + 10, 100)  # the same block

        assert again == minilm_bytes[offset : offset + 4096]
        assert nearby == minilm_bytes[offset + 10 : offset + 110]
        assert c.reader.stats.blocks_fetched == fetched
        assert c.reader.stats.memory_hits >= 2


def test_disk_cache_serves_blocks_after_reopening(
    minilm_store: str, tmp_path: Path, minilm_bytes: bytes
) -> None:
    offset = len(minilm_bytes) // 3
    with cold_client(minilm_store, tmp_path / "cache") as c:
        c.read(PATH, offset, 4096)

    with cold_client(minilm_store, tmp_path / "cache") as reopened:
        data = reopened.read(PATH, offset, 4096)

        assert data == minilm_bytes[offset : offset + 4096]
        assert reopened.reader.stats.blocks_fetched == 0
        assert reopened.reader.stats.disk_hits >= 1


# deduplication


@pytest.fixture(scope="module")
def finetune_stored(
    tmp_path_factory: pytest.TempPathFactory, minilm_path: Path, finetuned: tuple[bytes, set[str]]
) -> tuple[PutResult, Manifest, Manifest]:
    """MiniLM, then its fine-tuned copy, put into one store: (the copy's result, both manifests)."""
    base = tmp_path_factory.mktemp("finetune")
    with modelfs.open_store(base / "store", create=True, cache_dir=base / "cache") as c:
        c.put("base.safetensors", minilm_path)
        result = c.put("finetuned.safetensors", finetuned[0])
        return (
            result,
            c.store.manifest("base.safetensors"),
            c.store.manifest("finetuned.safetensors"),
        )


def test_finetuned_copy_uploads_only_about_its_changed_tensors(
    finetune_stored: tuple[PutResult, Manifest, Manifest], finetuned: tuple[bytes, set[str]]
) -> None:
    result, _, _ = finetune_stored
    data, changed = finetuned
    ranges = tensor_ranges(data)
    changed_bytes = sum(ranges[n][1] - ranges[n][0] for n in changed)

    assert 0 < result.new_bytes < 0.2 * result.size
    # The changed tensors, plus the new header, and nothing else of note.
    assert changed_bytes <= result.new_bytes <= changed_bytes + 64 * 1024
    assert 0 < result.uploaded_bytes <= result.new_bytes


def test_unchanged_tensors_deduplicate_although_they_moved(
    finetune_stored: tuple[PutResult, Manifest, Manifest],
    finetuned: tuple[bytes, set[str]],
    minilm_path: Path,
) -> None:
    _, base, copy = finetune_stored
    data, changed = finetuned
    old_offsets = {b.location.block_id: b.file_offset for b in base.blocks}
    new_ranges, old_ranges = tensor_ranges(data), tensor_ranges(minilm_path.read_bytes())

    moved = 0
    for name, (start, end) in new_ranges.items():
        if name in changed:
            continue
        assert new_ranges[name] != old_ranges[name], f"{name} did not move; the test proves nothing"
        for b in copy.blocks_for(start, end - start):
            assert b.location.block_id in old_offsets, f"{name} was stored again"
            moved += old_offsets[b.location.block_id] != b.file_offset
    assert moved > 50


def test_putting_identical_content_again_uploads_nothing(
    client: modelfs.Client,
    stored_minilm: PutResult,
    minilm_path: Path,
    store_objects: StoreObjects,
) -> None:
    packs_before = store_objects.snapshot()

    same_path = client.put(PATH, minilm_path)
    other_path = client.put("copy/model.safetensors", minilm_path.read_bytes())

    for r in (same_path, other_path):
        assert (r.new_blocks, r.new_bytes, r.uploaded_bytes) == (0, 0, 0)
        assert r.manifest == stored_minilm.manifest
    assert same_path.version == 2
    after = store_objects.snapshot()
    assert {k: v for k, v in after.items() if k.startswith(("packs/", "index/"))} == {
        k: v for k, v in packs_before.items() if k.startswith(("packs/", "index/"))
    }
    assert sha256(client.read("copy/model.safetensors")) == sha256(minilm_path)


# versions


def test_history_lists_versions_in_order_and_old_versions_read_back(
    client: modelfs.Client, minilm_path: Path, finetuned: tuple[bytes, set[str]]
) -> None:
    client.put(PATH, minilm_path, message="base")
    client.put(PATH, finetuned[0], message="fine-tuned")
    client.put(PATH, b"not a model at all", message="oops")

    history = client.history(PATH)

    assert [(v.version, v.message) for v in history] == [
        (1, "base"),
        (2, "fine-tuned"),
        (3, "oops"),
    ]
    assert [v.size for v in history] == [minilm_path.stat().st_size, len(finetuned[0]), 18]
    assert sha256(client.read(PATH, version=1)) == sha256(minilm_path)
    assert client.read(PATH, version=2) == finetuned[0]
    assert client.read(PATH) == b"not a model at all"
    assert client.list()[0].version == 3


def test_delete_hides_the_path_but_keeps_old_versions_readable(
    client: modelfs.Client, stored_minilm: PutResult, minilm_path: Path
) -> None:
    client.put("other.bin", b"stays")

    deletion = client.delete(PATH)

    assert deletion.deleted and deletion.version == 2
    assert [f.path for f in client.list()] == ["other.bin"]
    assert [f.path for f in client.list("minilm")] == []
    assert [v.deleted for v in client.history(PATH)] == [False, True]
    with pytest.raises(modelfs.NotFoundError, match="minilm/model.safetensors"):
        client.read(PATH)
    assert sha256(client.read(PATH, version=1)) == sha256(minilm_path)

    again = client.put(PATH, b"back")
    assert again.version == 3
    assert client.read(PATH) == b"back"
    assert [f.path for f in client.list()] == [PATH, "other.bin"]


def test_deleting_a_missing_or_deleted_file_raises_not_found(client: modelfs.Client) -> None:
    with pytest.raises(modelfs.NotFoundError, match="nothing-here"):
        client.delete("nothing-here")
    client.put("gone", b"x")
    client.delete("gone")
    with pytest.raises(modelfs.NotFoundError, match="gone"):
        client.delete("gone")
    assert len(client.history("gone")) == 2


@pytest.mark.parametrize(
    ("path", "version", "named"),
    [
        ("no/such/file.safetensors", None, "no/such/file.safetensors"),
        ("no/such/file.safetensors", 1, "no/such/file.safetensors"),
        (PATH, 9, "version 9"),
        (PATH, 0, "version 0"),
    ],
)
def test_missing_path_or_version_raises_not_found_naming_it(
    client: modelfs.Client, path: str, version: int | None, named: str
) -> None:
    client.put(PATH, b"one")
    with pytest.raises(modelfs.NotFoundError, match=named):
        client.read(path, version=version)
    with pytest.raises(modelfs.NotFoundError, match=named):
        client.open(path, version)


def test_reading_a_deletion_version_raises_not_found(client: modelfs.Client) -> None:
    client.put("f", b"one")
    client.delete("f")
    with pytest.raises(modelfs.NotFoundError, match="version 2 of f"):
        client.read("f", version=2)


def test_concurrent_puts_to_one_path_all_land_as_distinct_versions(
    store_url: str, tmp_path: Path
) -> None:
    writers, puts_each = 4, 3
    contents = {
        (w, i): os.urandom(64 * 1024) + f"{w}/{i}".encode()
        for w in range(writers)
        for i in range(puts_each)
    }
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            with modelfs.open_store(store_url, cache_dir=tmp_path / f"cache{w}") as c:
                barrier.wait()
                for i in range(puts_each):
                    c.put("shared/model.bin", contents[(w, i)])
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not errors
    with modelfs.open_store(store_url, cache_dir=tmp_path / "check") as c:
        history = c.history("shared/model.bin")
        assert [v.version for v in history] == list(range(1, writers * puts_each + 1))
        stored = sorted(c.read("shared/model.bin", version=v.version) for v in history)
    assert stored == sorted(contents.values())


def test_a_path_cannot_be_both_file_and_directory(client: modelfs.Client) -> None:
    client.put("models/bert", b"a file")
    client.put("runs/a/weights.bin", b"a file in a directory")

    with pytest.raises(NotADirectoryError_, match="models/bert is a file"):
        client.put("models/bert/weights.bin", b"x")
    with pytest.raises(IsADirectoryError_, match="runs/a"):
        client.put("runs/a", b"x")
    with pytest.raises(IsADirectoryError_, match="runs"):
        client.put("runs", b"x")

    assert [f.path for f in client.list()] == ["models/bert", "runs/a/weights.bin"]
    assert client.read("models/bert") == b"a file"
    with pytest.raises(modelfs.NotFoundError):
        client.history("models/bert/weights.bin")
    with pytest.raises(modelfs.NotFoundError):
        client.history("runs/a")


# crash safety


class FailingBackend(WrappedBackend):
    """A real store (local or S3) whose writes under one key prefix fail, as a
    dying disk or a dropped connection would; everything else passes through."""

    def __init__(self, inner: Backend, fail_prefix: str) -> None:
        super().__init__(inner)
        self.fail_prefix = fail_prefix

    def _fail(self, key: str) -> None:
        if key.startswith(self.fail_prefix):
            raise BackendError(f"injected failure writing {key!r}")

    def put(self, key: str, data: Data) -> str:
        self._fail(key)
        return super().put(key, data)

    def put_if_absent(self, key: str, data: Data) -> str:
        self._fail(key)
        return super().put_if_absent(key, data)

    def put_if_match(self, key: str, data: Data, etag: str) -> str:
        self._fail(key)
        return super().put_if_match(key, data, etag)


def failing_client(store_url: str, fail_prefix: str, cache_dir: Path) -> modelfs.Client:
    backend = FailingBackend(open_backend(store_url), fail_prefix)
    return modelfs.Client(Store.open(backend), cache_dir=cache_dir)


@pytest.mark.backend_independent
@pytest.mark.parametrize("fail_prefix", ["packs/", "index/", "manifests/", "refs/"])
def test_failed_put_leaves_the_previous_version_current_and_intact(
    store_url: str,
    tmp_path: Path,
    stored_minilm: PutResult,
    minilm_path: Path,
    finetuned: tuple[bytes, set[str]],
    fail_prefix: str,
) -> None:
    with failing_client(store_url, fail_prefix, tmp_path / "cache1") as broken:
        with pytest.raises(BackendError, match="injected failure"):
            broken.put(PATH, finetuned[0])

    with cold_client(store_url, tmp_path / "cache2") as c:
        assert [v.version for v in c.history(PATH)] == [1]
        assert [(f.path, f.version) for f in c.list()] == [(PATH, 1)]
        assert sha256(c.read(PATH)) == sha256(minilm_path)
        assert c.fsck().affected == []
        # The store is still usable: the same put now succeeds.
        assert c.put(PATH, finetuned[0]).version == 2
        assert c.read(PATH) == finetuned[0]


def test_failed_first_put_publishes_no_file(store_url: str, tmp_path: Path) -> None:
    with failing_client(store_url, "refs/", tmp_path / "cache1") as broken:
        with pytest.raises(BackendError):
            broken.put("new/model.bin", os.urandom(100_000))

    with cold_client(store_url, tmp_path / "cache2") as c:
        assert c.list() == []
        with pytest.raises(modelfs.NotFoundError):
            c.read("new/model.bin")


# damage on disk


def middle_block_in_shared_pack(manifest: Manifest) -> int:
    """Index of a block whose neighbours on both sides live in the same pack."""
    for i in range(len(manifest.blocks) // 2, len(manifest.blocks) - 1):
        prev, b, nxt = manifest.blocks[i - 1 : i + 2]
        if prev.location.pack == b.location.pack == nxt.location.pack:
            return i
    raise AssertionError("no block with neighbours in its pack")


def test_corrupt_pack_byte_fails_reads_of_that_block_naming_file_and_offset(
    client: modelfs.Client,
    stored_minilm: PutResult,
    store_url: str,
    tmp_path: Path,
    minilm_bytes: bytes,
    expect_warnings,
    store_objects: StoreObjects,
) -> None:
    expect_warnings("corrupt block")
    manifest = client.store.manifest(PATH)
    bad = manifest.blocks[middle_block_in_shared_pack(manifest)]
    store_objects.flip_byte(
        pack_key(bad.location.pack), bad.location.offset + bad.location.stored_length // 2
    )

    with cold_client(store_url, tmp_path / "cold") as c:
        with pytest.raises(modelfs.CorruptionError) as err:
            c.read(PATH, bad.file_offset + 100, 10)
        assert (err.value.path, err.value.offset) == (PATH, bad.file_offset)
        assert PATH in str(err.value) and str(bad.file_offset) in str(err.value)
        # Never wrong bytes: not on a second try, not in a whole-file read.
        with pytest.raises(modelfs.CorruptionError):
            c.read(PATH, bad.file_offset, 10)
        with pytest.raises(modelfs.CorruptionError):
            c.read(PATH)


def test_corrupt_pack_byte_leaves_other_regions_readable(
    client: modelfs.Client,
    stored_minilm: PutResult,
    store_url: str,
    tmp_path: Path,
    minilm_bytes: bytes,
    expect_warnings,
    store_objects: StoreObjects,
) -> None:
    expect_warnings("corrupt block")
    manifest = client.store.manifest(PATH)
    i = middle_block_in_shared_pack(manifest)
    bad = manifest.blocks[i]
    store_objects.flip_byte(pack_key(bad.location.pack), bad.location.offset + 10)

    with cold_client(store_url, tmp_path / "cold") as c:
        prev, nxt = manifest.blocks[i - 1], manifest.blocks[i + 1]
        for offset, length in [
            (0, 100),
            (prev.file_offset, prev.length),
            (nxt.file_offset, nxt.length),
            (len(minilm_bytes) - 50, 50),
        ]:
            assert c.read(PATH, offset, length) == minilm_bytes[offset : offset + length]
        # Reading sequentially right up to the bad block succeeds: readahead of
        # the damaged block must not fail reads of the intact bytes before it.
        with c.open(PATH) as f:
            while f.tell() < bad.file_offset:
                pos = f.tell()
                chunk = f.read(min(1 << 20, bad.file_offset - pos))
                assert chunk == minilm_bytes[pos : pos + len(chunk)]
            with pytest.raises(modelfs.CorruptionError):
                f.read(1)


def test_fsck_reports_a_corrupt_block_and_every_file_and_version_using_it(
    client: modelfs.Client,
    stored_minilm: PutResult,
    store_url: str,
    minilm_path: Path,
    expect_warnings,
    store_objects: StoreObjects,
) -> None:
    expect_warnings("corrupt block")
    client.put("copy.safetensors", minilm_path)
    client.put(PATH, b"a later version; version 1 is still affected")
    manifest = client.store.manifest(PATH, 1)
    bad = manifest.blocks[middle_block_in_shared_pack(manifest)]
    store_objects.flip_byte(pack_key(bad.location.pack), bad.location.offset)

    report = client.fsck()

    assert not report.ok
    assert list(report.corrupt_blocks) == [bad.location.block_id]
    assert report.missing_packs == []
    assert sorted((a["path"], a["version"], a["offset"]) for a in report.affected) == [
        ("copy.safetensors", 1, bad.file_offset),
        (PATH, 1, bad.file_offset),
    ]


def test_fsck_of_a_healthy_store_finds_nothing(
    client: modelfs.Client, stored_minilm: PutResult
) -> None:
    report = client.fsck()

    assert report.ok
    assert report.blocks_checked == stored_minilm.blocks
    assert (report.files_checked, report.versions_checked) == (1, 1)


def test_deleted_pack_is_reported_missing_with_the_files_it_affects(
    client: modelfs.Client,
    stored_minilm: PutResult,
    store_url: str,
    tmp_path: Path,
    minilm_bytes: bytes,
    expect_warnings,
    store_objects: StoreObjects,
) -> None:
    expect_warnings("corrupt block")
    manifest = client.store.manifest(PATH)
    gone = manifest.blocks[len(manifest.blocks) // 2]
    store_objects.delete(pack_key(gone.location.pack))

    report = client.fsck()

    assert not report.ok
    assert report.missing_packs == [gone.location.pack]
    in_pack = [b for b in manifest.blocks if b.location.pack == gone.location.pack]
    assert sorted(a["offset"] for a in report.affected) == [b.file_offset for b in in_pack]
    assert {(a["path"], a["version"]) for a in report.affected} == {(PATH, 1)}
    with cold_client(store_url, tmp_path / "cold") as c:
        with pytest.raises(modelfs.CorruptionError, match="missing"):
            c.read(PATH, gone.file_offset, 10)
        elsewhere = next(b for b in manifest.blocks if b.location.pack != gone.location.pack)
        assert (
            c.read(PATH, elsewhere.file_offset, 10)
            == minilm_bytes[elsewhere.file_offset : elsewhere.file_offset + 10]
        )


def test_truncated_pack_is_reported_with_the_files_it_affects(
    client: modelfs.Client,
    stored_minilm: PutResult,
    store_url: str,
    tmp_path: Path,
    minilm_bytes: bytes,
    expect_warnings,
    store_objects: StoreObjects,
) -> None:
    expect_warnings("corrupt block")
    manifest = client.store.manifest(PATH)
    victim = manifest.blocks[len(manifest.blocks) // 2]
    cut = victim.location.offset + victim.location.stored_length // 2
    store_objects.truncate(pack_key(victim.location.pack), cut)

    report = client.fsck()

    assert not report.ok
    lost = [
        b
        for b in manifest.blocks
        if b.location.pack == victim.location.pack
        and b.location.offset + b.location.stored_length > cut
    ]
    assert victim.location.block_id in report.corrupt_blocks
    assert sorted(a["offset"] for a in report.affected) == sorted(b.file_offset for b in lost)
    assert {a["path"] for a in report.affected} == {PATH}
    with cold_client(store_url, tmp_path / "cold") as c:
        with pytest.raises(modelfs.CorruptionError) as err:
            c.read(PATH, victim.file_offset, 10)
        assert err.value.path == PATH
        kept = next(
            b
            for b in manifest.blocks
            if b.location.pack == victim.location.pack
            and b.location.offset + b.location.stored_length <= cut
        )
        assert (
            c.read(PATH, kept.file_offset, kept.length) == minilm_bytes[kept.file_offset : kept.end]
        )


def test_fsck_reports_a_pack_whose_block_table_was_altered(
    client: modelfs.Client,
    stored_minilm: PutResult,
    store_url: str,
    store_objects: StoreObjects,
) -> None:
    manifest = client.store.manifest(PATH)
    pack_id = manifest.blocks[0].location.pack
    body = bytearray(store_objects.read(pack_key(pack_id)))
    (table_len,) = struct.unpack_from("<I", body, len(body) - 12)
    table_start = len(body) - 12 - table_len
    # Change one hex digit of the first block id in the table: still valid JSON,
    # but no longer the table the pack is named by.
    digit = table_start + len(b'{"blocks":[["')
    assert body[table_start:digit] == b'{"blocks":[["'
    body[digit] = ord("0") if body[digit] != ord("0") else ord("1")
    store_objects.write(pack_key(pack_id), bytes(body))

    report = client.fsck()

    assert not report.ok
    assert any(pack_id in p and "does not match its name" in p for p in report.problems)


# uploading while a file is written


class GrowingFile:
    """The first `written` bytes of data: a file a writer is still writing, front to back."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.written = 0

    @property
    def size(self) -> int:
        return self.written

    def pread(self, offset: int, length: int) -> bytes:
        return self.data[offset : min(offset + length, self.written)]


def memory_store() -> Store:
    from modelfs.backends.memory import MemoryBackend

    return Store.create(MemoryBackend())


def test_blocks_uploaded_while_a_safetensors_file_is_written_are_skipped_by_its_commit(
    minilm_bytes: bytes,
) -> None:
    from modelfs.store.early import EarlyUploader

    store = memory_store()
    growing = GrowingFile(minilm_bytes)
    early = EarlyUploader(store, growing, PATH)
    for end in range(1 << 20, len(minilm_bytes) + (1 << 20), 1 << 20):
        growing.written = min(end, len(minilm_bytes))
        early.advance(growing.written, minimum=8 << 20)
    assert early.active and early.uploaded_to > len(minilm_bytes) - (8 << 20)
    result = store.put(PATH, minilm_bytes)
    # Only what was written after the last early step is left for the commit.
    assert result.uploaded_bytes < (8 << 20) < early.uploaded_bytes
    assert store.manifest(PATH).size == len(minilm_bytes)


def test_a_commit_given_the_early_blocks_reads_and_hashes_only_the_rest(
    minilm_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelfs.store import store as store_module
    from modelfs.store.early import EarlyUploader

    path = tmp_path / "model.safetensors"
    path.write_bytes(minilm_bytes)
    store = memory_store()
    growing = GrowingFile(minilm_bytes)
    early = EarlyUploader(store, growing, PATH)
    growing.written = len(minilm_bytes) - (5 << 20)  # the last tensors still to come
    early.advance(growing.written, minimum=1)
    known = early.known()
    assert known is not None and 0 < known.end <= growing.written

    read: list[int] = []
    pread = store_module._FileSource.pread
    monkeypatch.setattr(
        store_module._FileSource, "pread",
        lambda self, offset, length: read.append(length) or pread(self, offset, length),
    )  # fmt: skip
    result = store.put(PATH, path, known=known)

    # The header (to cut the file) and what came after the early blocks: nothing else.
    assert sum(read) < len(minilm_bytes) - known.end + (1 << 20)
    plain = memory_store()
    expected = plain.put(PATH, minilm_bytes)
    assert store.manifest(PATH).content_hash == plain.manifest(PATH).content_hash
    assert [b.location.block_id for b in store.manifest(PATH).blocks] == [
        b.location.block_id for b in plain.manifest(PATH).blocks
    ]
    assert result.size == expected.size
    with modelfs.Client(store, cache_dir=tmp_path / "cache") as client:
        assert client.read(PATH) == minilm_bytes


def test_early_blocks_of_other_cuts_are_ignored_by_the_commit(minilm_bytes: bytes) -> None:
    from modelfs.store.early import EarlyUploader

    store = memory_store()
    growing = GrowingFile(minilm_bytes)
    early = EarlyUploader(store, growing, PATH)
    growing.written = len(minilm_bytes)
    early.advance(growing.written, minimum=1)
    known = early.known()
    assert known is not None
    other = os.urandom(3 << 20)  # not what the early blocks were cut from
    store.put("other.bin", other, known=known)
    with modelfs.Client(store) as client:
        assert client.read("other.bin") == other


def test_an_early_upload_of_bytes_later_overwritten_does_not_reach_the_version(
    minilm_bytes: bytes, tmp_path: Path
) -> None:
    from modelfs.store.early import EarlyUploader

    store = memory_store()
    growing = GrowingFile(minilm_bytes)
    early = EarlyUploader(store, growing, PATH)
    growing.written = len(minilm_bytes)
    early.advance(growing.written, minimum=1)
    changed = bytearray(minilm_bytes)
    changed[-4096:] = os.urandom(4096)
    store.put(PATH, bytes(changed))
    with modelfs.Client(store, cache_dir=tmp_path / "cache") as client:
        assert client.read(PATH) == bytes(changed)


def test_a_file_that_is_not_safetensors_is_left_to_its_commit() -> None:
    from modelfs.store.early import EarlyUploader

    store = memory_store()
    data = os.urandom(4 << 20)
    growing = GrowingFile(data)
    growing.written = len(data)
    early = EarlyUploader(store, growing, "blob.bin")
    early.advance(len(data), minimum=1)
    assert not early.active and early.uploaded_bytes == 0
    assert store.put("blob.bin", data).new_blocks > 0


def _planned_and_split(data: bytes) -> tuple[list[Span], list[Span]]:
    """The blocks the early uploader plans for data, written whole, and those split() makes."""
    from modelfs.store.early import EarlyUploader

    store = memory_store()
    growing = GrowingFile(data)
    growing.written = len(data)
    early = EarlyUploader(store, growing, PATH)
    early.advance(len(data), minimum=len(data) + 1)  # plan, upload nothing
    assert early.active and early.uploaded_bytes == 0 and early.spans is not None
    layout = read_layout(io.BytesIO(data), len(data))
    return early.spans, split(memoryview(data), layout, store.config.chunking)


def test_the_blocks_uploaded_early_are_exactly_a_prefix_of_the_blocks_the_commit_cuts(
    minilm_bytes: bytes,
) -> None:
    planned, commit = _planned_and_split(minilm_bytes)
    # MiniLM's tensors follow one another without gaps: every block but none after them.
    assert len(planned) == len(commit) > 100
    assert planned == commit[: len(planned)]


def test_early_blocks_stop_at_the_first_gap_between_tensors_and_still_match_the_commit(
    minilm_tensors: dict[str, np.ndarray],
) -> None:
    a = minilm_tensors["encoder.layer.0.intermediate.dense.weight"].tobytes()
    b = minilm_tensors["encoder.layer.0.output.dense.bias"].tobytes()
    gap = os.urandom(300_000)
    doc = {
        "a": {"dtype": "F32", "shape": [len(a) // 4], "data_offsets": [0, len(a)]},
        "b": {"dtype": "F32", "shape": [len(b) // 4], "data_offsets": [len(a) + len(gap), len(a) + len(gap) + len(b)]},
    }  # fmt: skip
    raw = json.dumps(doc).encode()
    data = struct.pack("<Q", len(raw)) + raw + a + gap + b
    planned, commit = _planned_and_split(data)
    assert planned == commit[: len(planned)]
    header_end = 8 + len(raw)
    assert planned[-1].end == header_end + len(a) < len(data)  # the header and a, not the gap
