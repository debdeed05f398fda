"""Block codecs: how a block's plaintext becomes its stored bytes.

- "raw": stored as is (chosen whenever compression would not save space).
- "zstd": one zstd frame.
- "bg2", "bg4", "bg8": byte grouping for tensors of 2-, 4- and 8-byte floats,
  the idea behind ZipNN and Xet's BG4. Each element is first rotated left by
  one bit, so that the sign moves to the bottom and the exponent fills the top
  byte; then byte k of every element is gathered into stream k. The exponent
  stream compresses several-fold while the mantissa streams are near-random;
  each stream is stored as zstd or raw, whichever is smaller, so no CPU is
  spent decompressing noise. Streams use zstd level 1 whatever the store's
  level: on exponent bytes it beats level 3 (0.36 vs 0.41 of their size on
  MiniLM in bf16) because longer match searches only find spurious matches.
- A stream whose bytes are nearly all among 15 values (an exponent stream:
  weights span a few binades) is stored as "nibble pairs": each byte becomes
  its value's rank (0-14, 15 for any other value), two ranks share a byte,
  and zstd codes those bytes. Huffman codes whole bits per symbol, which
  wastes most on a few very common symbols; on pairs it lands within 1% of
  the entropy (MiniLM exponents: 0.330 of their size, against 0.367 as plain
  zstd), which is what brings bf16 weights under 1/1.5 of their size.

- "frames+<codec>" (format 5): a block larger than FRAME_SIZE is cut into
  frames of FRAME_SIZE bytes of plaintext (the last shorter), each coded on its
  own with <codec> (one of the above, the same for every frame), so that a
  read can decode a piece of a block. Stored layout: a frame directory (four
  bytes little-endian frame size, four bytes frame count N, N four-byte stored
  lengths), then the frames back to back. 256 KiB frames, by measurement on
  MiniLM (scripts/bench.py's frame-size table): the same ratio as whole blocks
  (1.2166 fp32, 1.5051 bf16, against 1.2161 and 1.5049), decoding as fast or
  faster (smaller working sets), and at most two frames of waste at the edges
  of a read.

Stored layout of bgN: one byte N, then N stream descriptors (one byte kind:
0 raw, 1 zstd, 2 nibble pairs; four bytes little-endian stored length), then
the streams. A nibble-pair stream is: 15 bytes, the values of ranks 0-14;
four bytes little-endian, the number E of other bytes; the E other bytes in
order; then one zstd frame of ceil(count / 2) bytes, the ranks of the
stream's bytes in order, high nibble first (an odd count ends in rank 0).
"""

from __future__ import annotations

import struct
import threading

import numpy as np
import zstandard

from ..errors import CorruptionError
from .tensorfile import DTYPE_SIZES, FLOAT_DTYPES

RAW = "raw"
ZSTD = "zstd"
BYTE_GROUPED = {2: "bg2", 4: "bg4", 8: "bg8"}
FRAMED = "frames+"
FRAME_SIZE = 256 << 10
_PLAIN_CODECS = frozenset({RAW, ZSTD, *BYTE_GROUPED.values()})
CODECS = _PLAIN_CODECS | {FRAMED + c for c in _PLAIN_CODECS}
_DIRECTORY = struct.Struct("<II")
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_STREAM_RAW, _STREAM_ZSTD, _STREAM_NIBBLES = 0, 1, 2
# Nibble pairs pay off while other values are this rare (each costs a whole byte).
_MAX_NIBBLE_ESCAPES = 1 / 256
# Below this, grouping costs more in stream headers than it saves.
_MIN_GROUPED_SIZE = 4096
_GROUPED_STREAM_LEVEL = 1
# Bytes of a stream sampled to pick its 15 values (bincount widens each byte to 8).
_NIBBLE_SAMPLE = 8192

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # ZstdCompressor objects are not thread-safe; keep one per thread and level.
    cache = _local.__dict__.setdefault("compressors", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor


def encode(data: bytes | memoryview, dtype: str | None, level: int) -> tuple[str, bytes]:
    """(codec, stored bytes) for one block; never larger than the plaintext."""
    width = DTYPE_SIZES.get(dtype or "", 0)
    if dtype in FLOAT_DTYPES and len(data) >= _MIN_GROUPED_SIZE and len(data) % width == 0:
        stored = _encode_grouped(data, width, level)
        codec = BYTE_GROUPED[width]
    else:
        stored = _compressor(level).compress(data)
        codec = ZSTD
    if len(stored) >= len(data):
        return RAW, bytes(data)
    return codec, stored


def is_framed(codec: str) -> bool:
    return codec.startswith(FRAMED)


def frame_directory_size(count: int) -> int:
    return _DIRECTORY.size + 4 * count


def encode_frames(
    data: bytes | memoryview, dtype: str | None, level: int, frame_size: int = FRAME_SIZE
) -> tuple[str, list[bytes], list[bytes]]:
    """(codec, the stored bytes in pieces, each frame's stored bytes) for one block:
    framed if it is larger than one frame, else as encode() codes it (one frame, no
    directory). The pieces are joined once, into their pack."""
    if len(data) <= frame_size:
        codec, stored = encode(data, dtype, level)
        return codec, [stored], [stored]
    view = memoryview(data)
    pieces = [view[i : i + frame_size] for i in range(0, len(view), frame_size)]
    width = DTYPE_SIZES.get(dtype or "", 0)
    if dtype in FLOAT_DTYPES and frame_size % width == 0 and len(data) % width == 0:
        inner = BYTE_GROUPED[width]
        frames = [_encode_grouped(p, width, level) for p in pieces]
    else:
        inner = ZSTD
        compressor = _compressor(level)
        frames = [compressor.compress(p) for p in pieces]
    if sum(map(len, frames)) >= len(data):
        inner, frames = RAW, [bytes(p) for p in pieces]
    directory = _DIRECTORY.pack(frame_size, len(frames)) + struct.pack(
        f"<{len(frames)}I", *map(len, frames)
    )
    return FRAMED + inner, [directory, *frames], frames


def frame_directory(stored: bytes | memoryview) -> tuple[int, tuple[int, ...]]:
    """(frame size, each frame's stored length) from a framed block's stored bytes."""
    frame_size, count = _DIRECTORY.unpack_from(stored)
    return frame_size, struct.unpack_from(f"<{count}I", stored, _DIRECTORY.size)


def decode_frame(codec: str, stored: bytes | memoryview, length: int) -> bytes:
    """The plaintext of one frame of a framed block (codec: the block's)."""
    return decode(codec[len(FRAMED) :], stored, length)


def _decode_framed(inner: str, stored: memoryview, length: int) -> bytearray:
    frame_size, lengths = frame_directory(stored)
    if frame_size == 0 or len(lengths) != -(-length // frame_size):
        raise ValueError("frame directory does not match the block's length")
    pos = frame_directory_size(len(lengths))
    if pos + sum(lengths) != len(stored):
        raise ValueError("frame directory does not match the block's stored length")
    out = bytearray(length)
    view = memoryview(out)
    width = int(inner[2:]) if inner in BYTE_GROUPED.values() else 0
    for i, n in enumerate(lengths):
        start = i * frame_size
        size = min(frame_size, length - start)
        piece = stored[pos : pos + n]
        if width:  # decoded in place: one pass over the block's bytes, no copies
            _decode_grouped(piece, width, size, into=view[start : start + size])
        else:
            plain = decode(inner, piece, size)
            view[start : start + size] = plain
        pos += n
    return out


def decode(codec: str, stored: bytes | memoryview, length: int) -> bytes | bytearray:
    """The plaintext of a stored block of `length` bytes; CorruptionError if it cannot be."""
    try:
        if is_framed(codec) and codec in CODECS:
            out = _decode_framed(codec[len(FRAMED) :], memoryview(stored), length)
        elif codec == RAW:
            out = bytes(stored)
        elif codec == ZSTD:
            out = _decompressor().decompress(stored, max_output_size=length)
        elif codec in BYTE_GROUPED.values():
            out = _decode_grouped(memoryview(stored), int(codec[2:]), length)
        else:
            raise CorruptionError(f"unknown codec {codec!r}")
    except (zstandard.ZstdError, ValueError, struct.error) as e:
        raise CorruptionError(f"cannot decode {codec} block: {e}") from None
    if len(out) != length:
        raise CorruptionError(f"{codec} block decoded to {len(out)} bytes, expected {length}")
    return out


def _encode_grouped(data: bytes | memoryview, width: int, level: int) -> bytes:
    values = np.frombuffer(data, dtype=_UINT[width])
    rotated = values << 1
    rotated |= values >> (width * 8 - 1)
    streams = rotated.view(np.uint8).reshape(-1, width).T  # stream k: byte k of every element
    header = [struct.pack("<B", width)]
    bodies: list[bytes | np.ndarray] = []
    compressor = _compressor(_GROUPED_STREAM_LEVEL)
    for k in range(width):
        stream = np.ascontiguousarray(streams[k])
        nibbles = _encode_nibble_pairs(stream)
        if nibbles is not None:
            header.append(struct.pack("<BI", _STREAM_NIBBLES, len(nibbles)))
            bodies.append(nibbles)
            continue
        packed = compressor.compress(stream)
        if len(packed) < stream.size:
            header.append(struct.pack("<BI", _STREAM_ZSTD, len(packed)))
            bodies.append(packed)
        else:
            header.append(struct.pack("<BI", _STREAM_RAW, stream.size))
            bodies.append(stream)
    return b"".join(header + bodies)


_CODES = np.arange(256)


def _escaped_positions(pairs: np.ndarray) -> np.ndarray:
    """Stream positions whose rank is 15, in order, found from the few pairs that hold one."""
    first = (pairs | 0x0F) == 0xFF  # high nibble 15
    second = (pairs | 0xF0) == 0xFF  # low nibble 15
    hits = np.flatnonzero(first | second)
    halves = np.stack([first[hits], second[hits]], axis=1)
    positions = np.stack([2 * hits, 2 * hits + 1], axis=1)
    return positions[halves]


def _encode_nibble_pairs(stream: np.ndarray) -> bytes | None:
    """The stream as nibble pairs, or None where too many bytes fall outside 15 values."""
    # The 15 values from a sample: counting every byte would cost more than the coding.
    sample = stream[:: max(1, stream.size // _NIBBLE_SAMPLE)]
    counts = np.bincount(sample, minlength=256)
    top = np.argsort(-counts, kind="stable")[:15].astype(np.uint8)
    if sample.size - counts[top].sum() > 2 * sample.size * _MAX_NIBBLE_ESCAPES:
        return None  # a mantissa stream: spread over all values
    rank = np.full(256, 15, dtype=np.uint16)
    rank[top] = np.arange(15, dtype=np.uint16)
    if stream.size % 2:
        stream = np.append(stream, top[0])  # rank 0
    # One lookup per two bytes: (first, second) read as a little-endian uint16 -> the pair.
    pair_of = ((rank[:, None] << 4) | rank[None, :]).astype(np.uint8).T.reshape(-1)
    pairs = pair_of.take(stream.view(np.uint16))
    escaped = _escaped_positions(pairs)
    if escaped.size > stream.size * _MAX_NIBBLE_ESCAPES:
        return None
    others = stream[escaped]
    packed = _compressor(_GROUPED_STREAM_LEVEL).compress(pairs.tobytes())
    return b"".join([top.tobytes(), struct.pack("<I", others.size), others.tobytes(), packed])


def _decode_nibble_pairs(body: memoryview, count: int) -> np.ndarray:
    if len(body) < 19:
        raise ValueError("nibble-pair stream is truncated")
    table = np.append(np.frombuffer(body[:15], dtype=np.uint8), np.uint8(0)).astype(np.uint16)
    (n_others,) = struct.unpack_from("<I", body, 15)
    others = np.frombuffer(body[19 : 19 + n_others], dtype=np.uint8)
    if len(others) != n_others:
        raise ValueError("nibble-pair stream is truncated")
    n_pairs = (count + 1) // 2
    pairs = np.frombuffer(
        _decompressor().decompress(body[19 + n_others :], max_output_size=n_pairs), dtype=np.uint8
    )
    if len(pairs) != n_pairs:
        raise ValueError("nibble-pair stream has the wrong length")
    # One lookup per pair: its two bytes as a little-endian uint16 (first in the low byte).
    both = table[_CODES >> 4] | (table[_CODES & 15] << 8)
    out = both.take(pairs).view(np.uint8)  # take: twice as fast as both[pairs] here
    escaped = _escaped_positions(pairs)
    if escaped.size != n_others or (escaped.size and escaped[-1] >= count):
        raise ValueError("nibble-pair stream has the wrong number of other values")
    out[escaped] = others
    return out[:count]


def _decode_grouped(
    stored: memoryview, width: int, length: int, into: memoryview | None = None
) -> bytes | bytearray:
    """The plaintext, decoded into `into` (length bytes) if given, else a new buffer."""
    if length % width or len(stored) < 1 + 5 * width or stored[0] != width:
        raise ValueError("byte-grouped block header does not match its codec")
    count = length // width
    pos = 1 + 5 * width
    streams = []
    for k in range(width):
        kind, size = struct.unpack_from("<BI", stored, 1 + 5 * k)
        body = stored[pos : pos + size]
        if len(body) != size:
            raise ValueError("byte-grouped block is truncated")
        pos += size
        if kind == _STREAM_NIBBLES:
            streams.append(_decode_nibble_pairs(body, count))
            continue
        if kind == _STREAM_ZSTD:
            raw = _decompressor().decompress(body, max_output_size=count)
        elif kind == _STREAM_RAW:
            raw = body
        else:
            raise ValueError(f"unknown stream kind {kind}")
        if len(raw) != count:
            raise ValueError("byte-grouped stream has the wrong length")
        streams.append(np.frombuffer(raw, dtype=np.uint8))
    if pos != len(stored):
        raise ValueError("byte-grouped block has trailing bytes")
    out = bytearray(length) if into is None else into
    # The elements are built in place in the output: no copy of the block after.
    values = np.frombuffer(out, dtype=_UINT[width], count=count)
    _merge_rotated(streams, values)
    return out if into is None else b""


def _merge_rotated(streams: list[np.ndarray], values: np.ndarray) -> None:
    """Put byte k of each element back from streams[k], rotating right by one bit.

    Rotated right, an element is bit 0 of byte 0 at the top, then bytes width-1 .. 1
    from bit 7 down, then byte 0 without its bit 0. Built in that order, top first,
    each stream costs one shift and one OR in place: cheaper than strided writes into
    byte columns followed by a rotation through a block-sized temporary.
    """
    first = streams[0]
    np.bitwise_and(first, 1, out=values)
    for stream in streams[:0:-1]:
        values <<= 8
        values |= stream
    values <<= 7
    values |= first >> 1
