"""The safetensors file format: reading a file's tensor table, writing a file.

The format: an 8-byte little-endian header length N, N bytes of JSON (a map
of tensor name to dtype, shape and data_offsets, plus optional
"__metadata__"), then the tensors' bytes. Parsing is strict: anything odd
makes parse_layout return None and the caller treats the file as opaque bytes.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

log = logging.getLogger(__name__)

# Bytes per element of each safetensors dtype.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
MAX_HEADER_SIZE = 100 << 20  # the reference implementation's own limit


@dataclass(frozen=True)
class TensorSpan:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    end: int

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES.get(self.dtype, 1)


@dataclass(frozen=True)
class TensorLayout:
    header_end: int  # 8 + header length: where tensor data begins
    tensors: tuple[TensorSpan, ...]  # sorted by start
    metadata: dict[str, str]


def parse_layout(head: bytes, file_size: int) -> TensorLayout | None:
    """The tensor table of a safetensors file, or None if it is not one.

    `head` holds at least the first 8 bytes and, when they say so, the header;
    `header_size_needed(head)` tells how much to read first.
    """
    try:
        return _parse(head, file_size)
    except _NotSafetensors as e:
        log.debug("not a safetensors layout: %s", e)
        return None


def header_size_needed(first8: bytes) -> int:
    """How many leading bytes parse_layout needs (8 if those 8 are already nonsense)."""
    if len(first8) < 8:
        return 8
    (n,) = struct.unpack("<Q", first8[:8])
    return 8 + n if n <= MAX_HEADER_SIZE else 8


class _NotSafetensors(Exception):
    pass


def _parse(head: bytes, file_size: int) -> TensorLayout:
    if len(head) < 8 or file_size < 8:
        raise _NotSafetensors("shorter than 8 bytes")
    (n,) = struct.unpack("<Q", head[:8])
    if n < 2 or n > MAX_HEADER_SIZE or 8 + n > file_size:
        raise _NotSafetensors(f"header length {n} impossible for a file of {file_size} bytes")
    if len(head) < 8 + n:
        raise _NotSafetensors("header truncated")
    if head[8:9] != b"{":
        raise _NotSafetensors("header does not start with '{'")
    try:
        doc = json.loads(head[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _NotSafetensors(f"header is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _NotSafetensors("header is not a JSON object")
    data_start = 8 + n
    data_len = file_size - data_start
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _NotSafetensors("__metadata__ is not an object")
    spans = []
    for name, info in doc.items():
        if not isinstance(info, dict):
            raise _NotSafetensors(f"tensor {name!r} entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str):
            raise _NotSafetensors(f"tensor {name!r} has no dtype")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _NotSafetensors(f"tensor {name!r} has a bad shape")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise _NotSafetensors(f"tensor {name!r} has bad data_offsets")
        if (
            dtype in DTYPE_SIZES
            and offsets[1] - offsets[0] != math.prod(shape) * DTYPE_SIZES[dtype]
        ):
            raise _NotSafetensors(f"tensor {name!r} size disagrees with its shape")
        spans.append(
            TensorSpan(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])
        )
    spans.sort(key=lambda s: (s.start, s.end))
    for a, b in zip(spans, spans[1:], strict=False):
        if b.start < a.end:
            raise _NotSafetensors(f"tensors {a.name!r} and {b.name!r} overlap")
    return TensorLayout(data_start, tuple(spans), {str(k): str(v) for k, v in metadata.items()})


def read_layout(f: BinaryIO, file_size: int) -> TensorLayout | None:
    """parse_layout for an open file positioned anywhere."""
    f.seek(0)
    first8 = f.read(8)
    need = header_size_needed(first8)
    head = first8 + f.read(need - len(first8)) if need > 8 else first8
    return parse_layout(head, file_size)


@dataclass(frozen=True)
class TensorBytes:
    """One tensor to write: its dtype, shape and raw little-endian bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes | memoryview


def encode_header(tensors: Mapping[str, TensorBytes], metadata: Mapping[str, str] | None) -> bytes:
    """The first bytes of a safetensors file holding `tensors` in name order."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        size = len(memoryview(t.data).cast("B"))
        header[name] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align tensor data to 8 bytes, as the reference writer does
    return struct.pack("<Q", len(raw)) + raw
