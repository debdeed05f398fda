"""Cutting a file into blocks.

A safetensors file is cut at tensor boundaries: the header is one block and
each tensor another, so an unchanged tensor keeps its block id wherever it
moved. A tensor over the maximum block size is cut into equal sub-blocks on
element boundaries. Anything else (and any gap between tensors) is cut by
FastCDC 2020, so inserts and shifts still deduplicate.

The cut points are part of the format: a change here stops new writes from
deduplicating against old ones (correctness does not depend on them).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from pyfastcdc import FastCDC

from .format import ChunkingLimits
from .tensorfile import TensorLayout


@dataclass(frozen=True)
class Span:
    offset: int
    length: int
    dtype: str | None = None  # the safetensors dtype when the span holds tensor elements

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class Gap:
    """Bytes [start, end) that no tensor of a layout covers: cut by content, if at all."""

    start: int
    end: int


class RandomAccess(Protocol):
    """Bytes to be stored, read by offset (a file read with pread, say)."""

    size: int

    def pread(self, offset: int, length: int) -> bytes: ...


class _RangeStream:
    """A readinto() stream over bytes [start, end) of a RandomAccess, for pyfastcdc."""

    def __init__(self, source: RandomAccess, start: int, end: int) -> None:
        self._source, self._pos, self._end = source, start, end

    def readinto(self, buffer: memoryview) -> int:
        n = min(len(buffer), self._end - self._pos)
        if n <= 0:
            return 0
        data = self._source.pread(self._pos, n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def cdc_spans(
    data: memoryview | RandomAccess, start: int, end: int, limits: ChunkingLimits
) -> Iterator[Span]:
    """Content-defined spans covering bytes [start, end) of data."""
    if end <= start:
        return
    # pyfastcdc's average is avg_size + min_size (cut-point skipping); aim at ours.
    cdc = FastCDC(
        max(256, limits.avg_size - limits.min_size),
        min_size=limits.min_size,
        max_size=limits.max_size,
    )
    if isinstance(data, memoryview):
        chunks = cdc.cut_buf(data[start:end])
    else:
        chunks = cdc.cut_stream(_RangeStream(data, start, end))
    for chunk in chunks:
        yield Span(start + chunk.offset, chunk.length)


def tensor_spans(start: int, end: int, itemsize: int, dtype: str, max_size: int) -> Iterator[Span]:
    """One span for a tensor, or equal sub-spans on element boundaries if it is too big."""
    length = end - start
    if length <= max_size:
        yield Span(start, length, dtype)
        return
    elements = length // itemsize
    # Count pieces in whole elements, so no piece exceeds max_size even when
    # max_size is not a multiple of itemsize (else identical to length / max_size).
    pieces = -(-elements // (max_size // itemsize))
    per_piece = -(-elements // pieces) * itemsize
    offset = start
    while offset < end:
        size = min(per_piece, end - offset)
        yield Span(offset, size, dtype)
        offset += size


def layout_cuts(layout: TensorLayout, size: int, max_size: int) -> Iterator[Span | Gap]:
    """The cuts a safetensors layout fixes, in file order: the header's span, then each
    non-empty tensor's spans, with a Gap wherever bytes lie before a tensor or after
    the last one (up to size).

    The one definition of where a safetensors file is cut: split() cuts each Gap
    by content, and the early uploader (early.py) stops at the first Gap, so what
    it uploads is exactly a prefix of the blocks the commit makes.
    """
    yield Span(0, layout.header_end)
    pos = layout.header_end
    for t in layout.tensors:  # sorted by start, never overlapping (parse_layout checks)
        if t.end == t.start:
            continue  # an empty tensor makes no block
        if t.start > pos:
            yield Gap(pos, t.start)
        yield from tensor_spans(t.start, t.end, t.itemsize, t.dtype, max_size)
        pos = t.end
    if size > pos:
        yield Gap(pos, size)


def split(
    data: bytes | memoryview | RandomAccess, layout: TensorLayout | None, limits: ChunkingLimits
) -> list[Span]:
    """The blocks of a whole file, in order, covering it exactly."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        buf: memoryview | RandomAccess = memoryview(data).cast("B")
        size = len(buf)  # type: ignore[arg-type]
    else:
        buf, size = data, data.size
    if layout is None:
        return list(cdc_spans(buf, 0, size, limits))
    spans: list[Span] = []
    for cut in layout_cuts(layout, size, limits.max_size):
        if isinstance(cut, Gap):
            spans.extend(cdc_spans(buf, cut.start, cut.end, limits))
        else:
            spans.append(cut)
    return spans
