"""Framed blocks (format 5): a read of a piece of a block fetches, checks and decodes
only the frames it touches, and still never returns a byte its pack's name does not pin.

Blocks here are real MiniLM tensors (fp32: "frames+bg4") and random bytes ("frames+raw"),
stored through Client.put on local and SeaweedFS stores.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from storeobjects import WrappedBackend

import modelfs
from modelfs.backends import open_backend
from modelfs.backends.base import ByteRange
from modelfs.errors import CorruptionError, FormatError
from modelfs.reader import BlockReader
from modelfs.store import Store, codecs, gc
from modelfs.store.format import (
    CONFIG_KEY,
    StoreConfig,
    config_with_version,
    index_key,
    pack_key,
)
from modelfs.store.packs import PackWriter, decode_table, encode_table
from modelfs.store.store import _encode

FRAME = codecs.FRAME_SIZE
PATH = "minilm/model.safetensors"


class GetCounter(WrappedBackend):
    """Counts the body bytes of every pack GET."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.pack_bytes = 0
        self.pack_gets = 0
        self._lock = threading.Lock()

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        data = self.inner.get(key, byte_range)
        if key.startswith("packs/"):
            with self._lock:
                self.pack_bytes += len(data)
                self.pack_gets += 1
        return data


def tensors(path: Path) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The file's bytes and each tensor's (start, end) in the file."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    spans = {
        k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1]) for k, v in header.items()
    }
    return data, spans


@pytest.fixture
def stored(store_url: str, tmp_path: Path, minilm_path: Path) -> str:
    with modelfs.open_store(store_url, cache_dir=tmp_path / "writer-cache") as c:
        c.put(PATH, minilm_path)
    return store_url


def reader_of(url: str) -> tuple[Store, GetCounter, BlockReader]:
    backend = GetCounter(open_backend(url))
    store = Store.open(backend)
    return store, backend, BlockReader(store)


# the format


@pytest.mark.parametrize(
    ("dtype", "make", "codec"),
    [
        (
            "F32",
            lambda n: np.random.default_rng(1).normal(size=n // 4).astype("<f4").tobytes(),
            "frames+bg4",
        ),
        (
            "BF16",
            lambda n: (
                np.random.default_rng(2)
                .normal(size=n // 2)
                .astype("<f4")
                .view("<u4")[::1]
                .astype("<u4")
                .tobytes()[:n]
            ),
            "frames+bg2",
        ),
        (None, lambda n: (b"weights " * (n // 8 + 1))[:n], "frames+zstd"),
        (None, lambda n: np.random.default_rng(3).bytes(n), "frames+raw"),
    ],
)
def test_a_block_larger_than_a_frame_is_framed_and_decodes_whole_and_frame_by_frame(
    dtype, make, codec
) -> None:
    data = make(3 * FRAME + 1000)  # a short last frame
    got_codec, pieces, frames = _encode(data, dtype, 3)
    stored = b"".join(pieces)
    assert got_codec == codec and frames is not None and len(frames) == 4
    assert codecs.decode(got_codec, stored, len(data)) == data
    base = codecs.frame_directory_size(len(frames))
    for i in range(len(frames)):
        piece = stored[base + frames.starts[i] : base + frames.starts[i + 1]]
        plain = codecs.decode_frame(got_codec, piece, frames.plain_length(i, len(data)))
        assert plain == data[i * FRAME : (i + 1) * FRAME]


def test_a_block_of_one_frame_is_stored_as_before() -> None:
    codec, _, frames = _encode(b"x" * FRAME, None, 3)
    assert codec == "zstd" and frames is None


def test_frames_round_trip_through_a_pack_table_and_bad_frame_lists_are_refused() -> None:
    data = np.random.default_rng(4).bytes(2 * FRAME + 5)
    codec, stored, frames = _encode(data, None, 3)
    writer = PackWriter()  # the pieces are joined once, into the pack
    writer.add("ab" * 32, stored, len(data), codec, "00" * 16, frames)
    pack_id, _, table, _ = writer.finish()
    (row,) = decode_table(table, pack_id)
    assert row.frames == frames and row.frames.hashes == frames.hashes

    def table_with(frame_json) -> bytes:
        doc = json.loads(table)
        doc["blocks"][0][6] = frame_json
        return json.dumps(doc).encode()

    f = frames.to_json()
    for bad in (
        [f[0], f[1][:-1], f[2]],  # too few frames for the block's length
        [f[0], [f[1][0] + 1, *f[1][1:]], f[2]],  # lengths that do not add up
        [f[0], f[1], f[2][:-2]],  # a hash cut short
        [0, f[1], f[2]],
        "frames",
    ):
        with pytest.raises(FormatError, match="malformed"):
            decode_table(table_with(bad), pack_id)
    doc = json.loads(table)
    doc["blocks"][0][4] = "zstd"  # frames on a block that is not framed
    with pytest.raises(FormatError, match="has frames but codec"):
        decode_table(json.dumps(doc).encode(), pack_id)
    # A table without frames reads as tables of format 4 did.
    plain = encode_table(
        [
            row.__class__(
                *[
                    getattr(row, k)
                    for k in (
                        "block_id",
                        "pack",
                        "offset",
                        "stored_length",
                        "length",
                        "codec",
                        "checksum",
                    )
                ]
            )
        ]
    )
    assert decode_table(plain, pack_id)[0].frames is None


# partial reads


def test_a_small_read_fetches_only_the_frames_it_touches_and_verifies(
    stored: str, minilm_path: Path
) -> None:
    data, spans = tensors(minilm_path)
    start, end = spans["encoder.layer.5.intermediate.dense.weight"]  # 2.4 MB, one block
    store, backend, reader = reader_of(stored)
    with store:
        manifest = store.manifest(PATH)
        offset, size = start + 300_000, 700_000
        got = reader.read(manifest, offset, size, partial=True)
        assert got == data[offset : offset + size]
        # The frames that hold the range, stored (bg4 of fp32 barely shrinks): never the block.
        assert backend.pack_gets == 1
        assert backend.pack_bytes <= size + 2 * FRAME
        assert reader.stats.frames_fetched == len(range(300_000 // FRAME, -(-1_000_000 // FRAME)))
        # Read again: from the frames in memory, no request.
        assert (
            reader.read(manifest, offset + 10, 1000, partial=True)
            == data[offset + 10 : offset + 1010]
        )
        assert backend.pack_gets == 1
        # Without partial (a sequential reader), the whole block, verified by its id.
        whole = reader.read(manifest, start, end - start)
        assert whole == data[start:end] and backend.pack_gets == 2
        reader.close()


def test_the_header_and_one_tensor_cost_at_most_the_tensor_and_a_mebibyte(
    stored: str, minilm_path: Path
) -> None:
    data, spans = tensors(minilm_path)
    header_end = min(s for s, _ in spans.values())
    name = "encoder.layer.4.output.dense.weight"
    start, end = spans[name]
    store, backend, reader = reader_of(stored)
    with store:
        manifest = store.manifest(PATH)
        assert reader.read(manifest, 0, header_end, partial=True) == data[:header_end]
        # As safetensors through mmap: page faults of up to 1 MiB, in order.
        for off in range(start, end, 1 << 20):
            n = min(1 << 20, end - off)
            assert reader.read(manifest, off, n, partial=True) == data[off : off + n]
        assert backend.pack_bytes <= (end - start) + (1 << 20), backend.pack_bytes
        reader.close()


def test_a_damaged_frame_fails_its_read_saying_which_and_fsck_finds_it(
    stored: str, minilm_path: Path, expect_warnings
) -> None:
    expect_warnings("corrupt frame", "corrupt block")
    data, spans = tensors(minilm_path)
    start, _ = spans["encoder.layer.5.intermediate.dense.weight"]
    store, _, reader = reader_of(stored)
    with store:
        manifest = store.manifest(PATH)
        (ref,) = [b for b in manifest.blocks if b.file_offset <= start + FRAME < b.end]
        loc = store.frames_of(ref.location)
        assert loc is not None and loc.frames is not None
        # Flip one byte in the middle of frame 1 of that block.
        i = 1
        at = loc.offset + codecs.frame_directory_size(len(loc.frames)) + loc.frames.starts[i] + 100
        raw = open_backend(stored)
        body = bytearray(raw.get(pack_key(loc.pack)))
        body[at] ^= 0x40
        raw.put(pack_key(loc.pack), bytes(body))
        offset = ref.file_offset + i * FRAME + 10
        with pytest.raises(
            CorruptionError,
            match=f"frame {i} of block {ref.location.block_id}.*does not match its hash",
        ):
            reader.read(manifest, offset, 1000, partial=True)
        # The frames before it still read, checked on their own.
        assert (
            reader.read(manifest, ref.file_offset, 1000, partial=True)
            == data[ref.file_offset : ref.file_offset + 1000]
        )
        with pytest.raises(CorruptionError):
            reader.read(manifest, ref.file_offset, ref.location.length)  # whole: its id fails
        reader.close()
    with modelfs.open_store(stored) as c:
        report = c.fsck()
        assert not report.ok and ref.location.block_id in report.corrupt_blocks


def test_a_pack_table_whose_frame_hashes_were_altered_is_refused(
    stored: str, expect_warnings
) -> None:
    expect_warnings("corrupt frame")
    store, _, reader = reader_of(stored)
    with store:
        manifest = store.manifest(PATH)
        ref = next(b for b in manifest.blocks if codecs.is_framed(b.location.codec))
        raw = open_backend(stored)
        table = json.loads(raw.get(index_key(ref.location.pack)))
        row = next(r for r in table["blocks"] if r[0] == ref.location.block_id)
        row[6][2] = "0" * len(row[6][2])
        raw.put(index_key(ref.location.pack), json.dumps(table).encode())
        with pytest.raises(CorruptionError, match="does not match the pack's name"):
            reader.read(manifest, ref.file_offset, 1000, partial=True)
        reader.close()


def test_frames_of_a_pack_rewritten_by_gc_read_through_its_moved_record(
    tmp_path: Path, minilm_path: Path
) -> None:
    url = f"file://{tmp_path}/store"
    Store.create(open_backend(url, create=True), StoreConfig(commit_window=0.1)).close()
    data, spans = tensors(minilm_path)
    changed = bytearray(data)  # a fine-tune: two tensors changed, the rest shared with a
    for name in (
        "encoder.layer.2.intermediate.dense.weight",
        "encoder.layer.4.output.dense.weight",
    ):
        start, end = spans[name]
        changed[start:end] = bytes(end - start)
    with modelfs.open_store(url, cache_dir=tmp_path / "c") as c:
        c.put("a", data)
        c.put("b", bytes(changed))
        c.put("a", b"gone")
        c.forget("a", keep_last=1)
    time.sleep(0.5)
    with Store.open(open_backend(url)) as store:
        report = gc.Collector(store, grace=0.3, repack=0.01).run()
    assert report.rewritten.get("packs", 0) >= 1
    store, _, reader = reader_of(url)
    with store:
        manifest = store.manifest("b")
        moved = [
            b for b in manifest.blocks
            if codecs.is_framed(b.location.codec) and store.moved(b.location.pack) is not None
        ]  # fmt: skip
        assert moved, "no framed block of b was in a rewritten pack"
        ref = moved[0]
        offset = ref.file_offset + FRAME + 5
        assert reader.read(manifest, offset, 5000, partial=True) == changed[offset : offset + 5000]
        assert reader.stats.frames_fetched >= 1
        # The copy kept the frames: its new pack's table has them.
        target = store.frames_of(ref.location)
        assert target is not None and target.pack != ref.location.pack and target.frames
        reader.close()
    with modelfs.open_store(url) as c:
        assert c.fsck().ok


def test_a_version_4_store_reads_as_it_was_and_becomes_version_5_at_its_first_framed_block(
    tmp_path: Path, minilm_path: Path
) -> None:
    url = f"file://{tmp_path}/store"
    backend = open_backend(url, create=True)
    Store.create(backend).close()
    backend.put(CONFIG_KEY, config_with_version(backend.get(CONFIG_KEY), 4))
    small = b"small file, one frame"
    with modelfs.open_store(url) as c:
        c.put("small", small)
        assert json.loads(backend.get(CONFIG_KEY))["version"] == 4
        c.put(PATH, minilm_path)
        assert json.loads(backend.get(CONFIG_KEY))["version"] == 5
    with modelfs.open_store(url) as c:
        assert c.read("small") == small and c.read(PATH) == minilm_path.read_bytes()


def test_the_block_index_holds_no_frames_and_frame_reads_take_them_from_the_table(
    stored: str, minilm_path: Path
) -> None:
    data, _ = tensors(minilm_path)
    store, backend, reader = reader_of(stored)
    with store:
        store.refresh_index()  # as a writer loads it, for dedup
        framed = [loc for loc in store.index.locations() if codecs.is_framed(loc.codec)]
        assert framed and all(loc.frames is None for loc in framed)
        manifest = store.manifest(PATH)
        ref = next(b for b in manifest.blocks if codecs.is_framed(b.location.codec))
        offset = ref.file_offset + FRAME
        assert reader.read(manifest, offset, 100, partial=True) == data[offset : offset + 100]
        assert backend.pack_bytes <= FRAME
        reader.close()
