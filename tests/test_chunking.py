"""Cutting files into blocks, on MiniLM's real weights.

A safetensors file must be cut at every tensor boundary (so an unchanged
tensor keeps its block id), big tensors on element boundaries, and any file
that is not a well-formed safetensors file must still be cut, by
content-defined chunking, without an error: splitting is never why a put fails.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelfs.store.chunking import Span, split
from modelfs.store.format import ChunkingLimits, block_id
from modelfs.store.tensorfile import (
    DTYPE_SIZES,
    TensorBytes,
    TensorLayout,
    encode_header,
    read_layout,
)

DEFAULT = ChunkingLimits()
SMALL = ChunkingLimits(min_size=16 << 10, avg_size=64 << 10, max_size=256 << 10)


def layout_of(data: bytes) -> TensorLayout | None:
    return read_layout(io.BytesIO(data), len(data))


def blocks_of(data: bytes, limits: ChunkingLimits) -> list[Span]:
    """What the store does to a file: read its layout, if any, and split it."""
    return split(memoryview(data), layout_of(data), limits)


def assert_covers_exactly(spans: list[Span], size: int) -> None:
    assert spans, "no blocks"
    assert spans[0].offset == 0
    for a, b in zip(spans, spans[1:], strict=False):
        assert b.offset == a.end, f"gap or overlap between {a} and {b}"
    assert spans[-1].end == size
    assert all(s.length > 0 for s in spans)


def boundaries(spans: list[Span]) -> set[int]:
    return {s.offset for s in spans} | {s.end for s in spans}


def safetensors_file(
    tensors: dict[str, TensorBytes], metadata: dict[str, str] | None = None
) -> bytes:
    return encode_header(tensors, metadata) + b"".join(tensors[n].data for n in sorted(tensors))


def with_header(doc: object, data: bytes) -> bytes:
    raw = json.dumps(doc).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.fixture(scope="module")
def small_model(minilm_tensors: dict[str, np.ndarray]) -> dict[str, TensorBytes]:
    """A few real MiniLM tensors (about 3 MiB), in several float dtypes."""
    dense = minilm_tensors["encoder.layer.0.intermediate.dense.weight"]
    query = minilm_tensors["encoder.layer.0.attention.self.query.weight"]
    return {
        "dense": TensorBytes("F32", dense.shape, dense.tobytes()),
        "query.f16": TensorBytes("F16", query.shape, query.astype(np.float16).tobytes()),
        "query.f64": TensorBytes("F64", query.shape, query.astype(np.float64).tobytes()),
        "bias": TensorBytes(
            "F32", (384,), minilm_tensors["encoder.layer.0.output.dense.bias"].tobytes()
        ),
    }


@pytest.fixture(scope="module")
def small_file(small_model: dict[str, TensorBytes]) -> bytes:
    return safetensors_file(small_model, {"format": "pt"})


# safetensors files


def test_minilm_blocks_start_and_end_at_every_tensor_boundary(minilm_bytes: bytes) -> None:
    layout = layout_of(minilm_bytes)
    assert layout is not None and len(layout.tensors) == 104
    spans = split(memoryview(minilm_bytes), layout, DEFAULT)
    cuts = boundaries(spans)
    for t in layout.tensors:
        assert t.start in cuts and t.end in cuts, f"tensor {t.name} shares a block"
    assert spans[0] == Span(0, layout.header_end)


def test_minilm_blocks_are_contiguous_and_cover_the_file(minilm_bytes: bytes) -> None:
    assert_covers_exactly(blocks_of(minilm_bytes, DEFAULT), len(minilm_bytes))


def test_every_tensor_block_lies_inside_one_tensor_and_carries_its_dtype(
    minilm_bytes: bytes,
) -> None:
    layout = layout_of(minilm_bytes)
    assert layout is not None
    spans = split(memoryview(minilm_bytes), layout, DEFAULT)
    for s in spans[1:]:
        owners = [t for t in layout.tensors if t.start <= s.offset and s.end <= t.end]
        assert len(owners) == 1, f"block {s} is not inside exactly one tensor"
        assert s.dtype == owners[0].dtype


@pytest.mark.parametrize(
    "limits",
    [DEFAULT, ChunkingLimits(max_size=(1 << 20) + 2, avg_size=1 << 20)],
    ids=["4MiB", "max-not-a-multiple-of-the-itemsize"],
)
def test_a_tensor_over_max_size_is_cut_on_element_boundaries_into_blocks_within_max_size(
    minilm_bytes: bytes, limits: ChunkingLimits
) -> None:
    layout = layout_of(minilm_bytes)
    assert layout is not None
    spans = split(memoryview(minilm_bytes), layout, limits)
    big = next(t for t in layout.tensors if t.name == "embeddings.word_embeddings.weight")
    assert big.end - big.start > limits.max_size
    pieces = [s for s in spans if big.start <= s.offset < big.end]
    assert len(pieces) > 1
    assert pieces[0].offset == big.start and pieces[-1].end == big.end
    for p in pieces:
        assert (p.offset - big.start) % big.itemsize == 0
        assert p.length % big.itemsize == 0
        assert p.length <= limits.max_size
    assert len({p.length for p in pieces[:-1]}) == 1, "sub-blocks are not of equal size"


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32", "F64", "I64", "U8"])
def test_sub_blocks_respect_max_size_for_every_itemsize(
    minilm_tensors: dict[str, np.ndarray], dtype: str
) -> None:
    itemsize = DTYPE_SIZES[dtype]
    raw = minilm_tensors["encoder.layer.1.output.dense.weight"].tobytes()[: 300_000 // 8 * 8]
    data = safetensors_file({"t": TensorBytes(dtype, (len(raw) // itemsize,), raw)})
    limits = ChunkingLimits(
        min_size=1000, avg_size=1001, max_size=1029
    )  # a multiple of no itemsize
    layout = layout_of(data)
    assert layout is not None
    spans = split(memoryview(data), layout, limits)
    assert_covers_exactly(spans, len(data))
    tensor = layout.tensors[0]
    for s in spans[1:]:
        assert s.length <= limits.max_size
        assert (s.offset - tensor.start) % itemsize == 0


def test_bytes_between_and_after_tensors_are_covered_and_tensors_still_cut_out(
    small_model: dict[str, TensorBytes],
) -> None:
    a, b = small_model["dense"].data, small_model["bias"].data
    gap = bytes(small_model["query.f16"].data)[:100_000]
    doc = {
        "a": {"dtype": "F32", "shape": [len(a) // 4], "data_offsets": [0, len(a)]},
        "b": {"dtype": "F32", "shape": [len(b) // 4], "data_offsets": [len(a) + len(gap), len(a) + len(gap) + len(b)]},
    }  # fmt: skip
    data = with_header(doc, bytes(a) + gap + bytes(b) + gap)
    layout = layout_of(data)
    assert layout is not None
    spans = split(memoryview(data), layout, SMALL)
    assert_covers_exactly(spans, len(data))
    cuts = boundaries(spans)
    assert all(t.start in cuts and t.end in cuts for t in layout.tensors)


def test_empty_tensors_make_no_empty_blocks(small_model: dict[str, TensorBytes]) -> None:
    data = safetensors_file({**small_model, "empty": TensorBytes("F32", (0, 384), b"")})
    layout = layout_of(data)
    assert layout is not None and any(t.start == t.end for t in layout.tensors)
    assert_covers_exactly(split(memoryview(data), layout, DEFAULT), len(data))


def test_an_unchanged_tensor_keeps_its_block_ids_when_another_tensor_changes(
    small_model: dict[str, TensorBytes],
) -> None:
    before = safetensors_file(small_model)
    changed = np.frombuffer(small_model["bias"].data, dtype=np.float32) * 2
    after = safetensors_file({**small_model, "bias": TensorBytes("F32", (384,), changed.tobytes())})
    ids_before = {block_id(memoryview(before)[s.offset : s.end]) for s in blocks_of(before, SMALL)}
    ids_after = [block_id(memoryview(after)[s.offset : s.end]) for s in blocks_of(after, SMALL)]
    unchanged = [i for i in ids_after if i in ids_before]
    assert len(ids_after) - len(unchanged) == 1  # only the bias's block is new


# anything else falls back to content-defined chunking


def _damaged_variants(
    small_file: bytes, small_model: dict[str, TensorBytes]
) -> Iterator[tuple[str, bytes]]:
    (n,) = struct.unpack("<Q", small_file[:8])
    body = small_file[8 + n :]
    dense = small_model["dense"].data
    yield (
        "non-JSON header",
        small_file[:8] + b"{" + b"\x8f garbage" * (n // 10) + small_file[8 + 1 + n // 10 * 10 :],
    )
    yield "header not starting with {", small_file[:8] + b" " + small_file[9:]
    yield "JSON array header", with_header([1, 2, 3], body)
    yield "truncated in the header", small_file[: 8 + n // 2]
    yield "truncated in the tensor data", small_file[: len(small_file) - 1000]
    yield "header length 2**63", struct.pack("<Q", 1 << 63) + small_file[8:]
    yield "header length past the end", struct.pack("<Q", len(small_file)) + small_file[8:]
    yield "header length over 100 MiB", struct.pack("<Q", (100 << 20) + 1) + small_file[8:]
    yield (
        "shape disagrees with size",
        with_header({"t": {"dtype": "F32", "shape": [7], "data_offsets": [0, len(dense)]}}, dense),
    )
    yield (
        "no dtype",
        with_header({"t": {"shape": [len(dense) // 4], "data_offsets": [0, len(dense)]}}, dense),
    )
    yield (
        "reversed offsets",
        with_header(
            {"t": {"dtype": "U8", "shape": [len(dense)], "data_offsets": [len(dense), 0]}}, dense
        ),
    )
    yield (
        "overlapping tensors",
        with_header(
            {
                "a": {"dtype": "U8", "shape": [600_000], "data_offsets": [0, 600_000]},
                "b": {"dtype": "U8", "shape": [600_000], "data_offsets": [500_000, 1_100_000]},
            },
            dense,
        ),
    )
    yield "shorter than 8 bytes", small_file[:5]


def test_files_that_are_not_well_formed_safetensors_fall_back_to_cdc_without_raising(
    small_file: bytes, small_model: dict[str, TensorBytes]
) -> None:
    for what, data in _damaged_variants(small_file, small_model):
        assert layout_of(data) is None, what
        spans = blocks_of(data, SMALL)
        assert_covers_exactly(spans, len(data))
        assert all(s.dtype is None for s in spans), what
        if len(data) > 4 * SMALL.max_size:
            assert len(spans) > 4, f"{what}: not cut by content"


def test_an_empty_file_has_no_blocks() -> None:
    assert blocks_of(b"", DEFAULT) == []


def _damaged_minilm(minilm_bytes: bytes, size: int) -> bytes:
    return b"\xff" * 8 + minilm_bytes[8:size]  # the header length is now impossible


def test_cdc_blocks_respect_min_and_max_size_except_the_last(minilm_bytes: bytes) -> None:
    for limits in (DEFAULT, SMALL):
        data = _damaged_minilm(minilm_bytes, len(minilm_bytes) - 12345)
        spans = blocks_of(data, limits)
        assert_covers_exactly(spans, len(data))
        assert len(spans) > 20
        for s in spans[:-1]:
            assert limits.min_size <= s.length <= limits.max_size
        assert spans[-1].length <= limits.max_size


def test_cdc_average_block_size_is_near_the_configured_average(minilm_bytes: bytes) -> None:
    data = _damaged_minilm(minilm_bytes, 32 << 20)
    spans = blocks_of(data, SMALL)
    mean = len(data) / len(spans)
    assert SMALL.avg_size / 2 <= mean <= SMALL.avg_size * 2


@pytest.mark.parametrize("edit", ["insert", "delete"])
def test_cdc_is_shift_resistant_so_an_edit_near_the_start_keeps_most_block_ids(
    minilm_bytes: bytes, edit: str
) -> None:
    original = _damaged_minilm(minilm_bytes, 24 << 20)
    at = 200_000
    edited = (
        original[:at] + b"SHIFT!!" + original[at:]
        if edit == "insert"
        else original[:at] + original[at + 7 :]
    )
    for limits in (DEFAULT, SMALL):
        old = {
            block_id(memoryview(original)[s.offset : s.end]) for s in blocks_of(original, limits)
        }
        new = [block_id(memoryview(edited)[s.offset : s.end]) for s in blocks_of(edited, limits)]
        kept = sum(1 for i in new if i in old)
        assert len(new) >= 6
        assert kept >= len(new) - 3, f"only {kept} of {len(new)} blocks survived a 7-byte {edit}"


# files are split through pread, bytes in memory directly: the cut points must agree


class PreadFile:
    """A file on disk as chunking.RandomAccess, read with pread as the store reads files."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed by the test
        self.size = path.stat().st_size

    def pread(self, offset: int, length: int) -> bytes:
        return os.pread(self._f.fileno(), length, offset)

    def close(self) -> None:
        self._f.close()


@pytest.mark.parametrize("kind", ["safetensors", "not-safetensors", "safetensors-with-gaps"])
def test_a_file_read_with_pread_is_cut_exactly_like_the_same_bytes_in_memory(
    minilm_bytes: bytes, small_model: dict[str, TensorBytes], tmp_path: Path, kind: str
) -> None:
    if kind == "safetensors":
        data = minilm_bytes
    elif kind == "not-safetensors":
        data = _damaged_minilm(minilm_bytes, 40 << 20)
    else:
        a, filler = small_model["dense"].data, bytes(small_model["query.f64"].data)
        doc = {
            "a": {
                "dtype": "F32",
                "shape": [len(a) // 4],
                "data_offsets": [len(filler), len(filler) + len(a)],
            }
        }
        data = with_header(doc, filler + bytes(a) + filler)
    path = tmp_path / "file"
    path.write_bytes(data)
    source = PreadFile(path)
    try:
        for limits in (DEFAULT, SMALL):
            from_file = split(source, layout_of(data), limits)
            assert from_file == blocks_of(data, limits)
            assert_covers_exactly(from_file, len(data))
    finally:
        source.close()
