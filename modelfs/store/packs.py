"""Pack objects: many stored blocks in one blob, with a table of them at the end.

A pack is the blocks' stored bytes back to back, then a trailer: the JSON
block table, its length (4 bytes little-endian) and the magic b"MFSPACK1".
The same table is also written as the pack's index object, so the block
index can be loaded without reading packs, and rebuilt from packs alone.
A pack is named by the BLAKE3-256 of its block table.

A block larger than one frame (format 5) is stored as independently coded
frames (codecs.py, "frames+<codec>"); its row in the table also carries the
frame size, each frame's stored length and a BLAKE3-128 of each frame's stored
bytes, so that a read can fetch, check and decode only the frames it needs:
the pack's name pins its table, and the table pins every frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from itertools import accumulate

from ..errors import FormatError
from .codecs import frame_directory, frame_directory_size, is_framed
from .format import canonical_json, frame_hash, is_hex_digits, is_hex_id, object_id, parse_json

PACK_MAGIC = b"MFSPACK1"
_TRAILER = struct.Struct("<I8s")


FRAME_HASH_HEX = 32  # hex digits of a frame's hash: BLAKE3 truncated to 128 bits


@dataclass(frozen=True)
class Frames:
    """How a framed block's stored bytes divide: every frame holds `size` bytes of
    plaintext but the last; `stored` are their stored lengths, `hashes` the BLAKE3-128
    (hex) of each frame's stored bytes, back to back. Offsets count from the start of the
    block's stored bytes, after its frame directory (codecs.frame_directory_size)."""

    size: int
    stored: tuple[int, ...]
    hashes: str
    starts: tuple[int, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts", (0, *accumulate(self.stored)))

    def __len__(self) -> int:
        return len(self.stored)

    def hash(self, i: int) -> str:
        return self.hashes[i * FRAME_HASH_HEX : (i + 1) * FRAME_HASH_HEX]

    def covering(self, lo: int, hi: int) -> range:
        """The frames that hold plaintext bytes [lo, hi) of the block."""
        return range(lo // self.size, min(len(self), -(-hi // self.size)))

    def plain_length(self, i: int, length: int) -> int:
        return min(self.size, length - i * self.size)

    def to_json(self) -> list:
        return [self.size, list(self.stored), self.hashes]

    @classmethod
    def from_json(cls, doc: object, length: int, stored_length: int, directory: int) -> Frames:
        size, stored, hashes = doc  # type: ignore[misc]
        if not (isinstance(size, int) and size > 0 and isinstance(stored, list)):
            raise ValueError("bad frame list")
        if not all(isinstance(n, int) and n > 0 for n in stored):
            raise ValueError("bad frame length")
        if len(stored) != -(-length // size) or len(stored) < 2:
            raise ValueError(f"{len(stored)} frames of {size} bytes cannot hold {length} bytes")
        if directory + sum(stored) != stored_length:
            raise ValueError("frame lengths do not add up to the block's stored length")
        if (
            not isinstance(hashes, str)
            or len(hashes) != FRAME_HASH_HEX * len(stored)
            or not is_hex_digits(hashes)
        ):
            raise ValueError("bad frame hashes")
        return cls(size, tuple(stored), hashes)


def frames_of_stored(codec: str, stored: bytes | memoryview, length: int) -> Frames | None:
    """The frames of a block from its stored bytes, verified whole (a copy keeps them)."""
    if not is_framed(codec):
        return None
    size, lengths = frame_directory(stored)
    view, pos, hashes = memoryview(stored), frame_directory_size(len(lengths)), []
    for n in lengths:
        hashes.append(frame_hash(view[pos : pos + n]))
        pos += n
    return Frames(size, lengths, "".join(hashes))


@dataclass(frozen=True)
class BlockLocation:
    """Where a block's stored bytes are, and how to check and decode them."""

    block_id: str
    pack: str
    offset: int  # in the pack
    stored_length: int
    length: int  # of the plaintext
    codec: str
    checksum: str  # xxh3-128 of the stored bytes
    # A framed block's frames, where known: pack tables carry them, manifests do not
    # (Store.frames_of looks them up). Not part of a location's identity.
    frames: Frames | None = field(default=None, compare=False, repr=False)


def encode_table(locations: list[BlockLocation], nonce: str = "") -> bytes:
    """A block table; nonce (format 4) makes a pack of the same blocks a new pack, for a
    writer that must not reuse one a collection condemned."""
    return canonical_json(
        {
            **({"nonce": nonce} if nonce else {}),
            "blocks": [
                [b.block_id, b.offset, b.stored_length, b.length, b.codec, b.checksum]
                + ([b.frames.to_json()] if b.frames is not None else [])
                for b in locations
            ],
        }
    )


def decode_table(data: bytes, pack_id: str, *, frames: bool = True) -> list[BlockLocation]:
    """A pack's block table (frames=False: without framed blocks' frames, which only a
    read of part of a block needs; the block index of a large store is mostly frames)."""
    doc = parse_json(data, f"block table of pack {pack_id}")
    try:
        rows = doc["blocks"]
        out = []
        for row in rows:
            block_id, offset, stored_length, length, codec, checksum = row[:6]
            if (
                len(row) > 7
                or not is_hex_id(block_id)
                or not all(isinstance(n, int) and n >= 0 for n in (offset, stored_length, length))
            ):
                raise ValueError(f"bad row for block {block_id!r}")
            found = None
            if len(row) == 7:
                if not is_framed(str(codec)):
                    raise ValueError(f"block {block_id} has frames but codec {codec!r}")
                if frames:
                    found = Frames.from_json(
                        row[6], length, stored_length, frame_directory_size(len(row[6][1]))
                    )
            out.append(
                BlockLocation(
                    block_id,
                    pack_id,
                    offset,
                    stored_length,
                    length,
                    str(codec),
                    str(checksum),
                    found,
                )  # fmt: skip
            )
        return out
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"block table of pack {pack_id} is malformed: {e}") from None


class PackWriter:
    """Collects stored blocks into one pack. Not thread-safe: one writer per thread."""

    def __init__(self, nonce: str = "") -> None:
        self.nonce = nonce
        self._parts: list[bytes] = []
        self._rows: list[BlockLocation] = []
        self.size = 0

    def __len__(self) -> int:
        return len(self._rows)

    def add(
        self, block_id: str, stored: bytes | memoryview | list[bytes], length: int, codec: str,
        checksum: str, frames: Frames | None = None,
    ) -> None:  # fmt: skip
        """Add a block's stored bytes (or their pieces in order, joined once, at finish)."""
        pieces = stored if isinstance(stored, list) else [stored]
        size = sum(map(len, pieces))
        self._rows.append(
            BlockLocation(block_id, "", self.size, size, length, codec, checksum, frames)
        )
        self._parts.extend(pieces)
        self.size += size

    def finish(self) -> tuple[str, bytes, bytes, list[BlockLocation]]:
        """(pack id, pack bytes, table bytes, locations) for the blocks added."""
        table = encode_table(self._rows, self.nonce)
        # One join: each `+` would copy the whole pack again.
        body = b"".join([*self._parts, table, _TRAILER.pack(len(table), PACK_MAGIC)])
        # Named by its table, not its bytes: the table pins every block's id and the
        # checksum of its stored bytes, and hashing 32 MiB again would cost a tenth of a put.
        pack_id = object_id(table)
        locations = [
            BlockLocation(
                b.block_id,
                pack_id,
                b.offset,
                b.stored_length,
                b.length,
                b.codec,
                b.checksum,
                b.frames,
            )  # fmt: skip
            for b in self._rows
        ]
        return pack_id, body, table, locations


def table_bytes(pack: bytes, pack_id: str) -> bytes:
    """The block table at the end of a whole pack, byte for byte (its index object)."""
    if len(pack) < _TRAILER.size:
        raise FormatError(f"pack {pack_id} is truncated")
    table_len, magic = _TRAILER.unpack_from(pack, len(pack) - _TRAILER.size)
    if magic != PACK_MAGIC or table_len > len(pack) - _TRAILER.size:
        raise FormatError(f"pack {pack_id} has no valid trailer")
    start = len(pack) - _TRAILER.size - table_len
    table = pack[start : start + table_len]
    if object_id(table) != pack_id:
        raise FormatError(f"pack {pack_id} does not match its name: its block table was altered")
    return table


def read_trailer(pack: bytes, pack_id: str) -> list[BlockLocation]:
    """The block table at the end of a whole pack (for fsck and index rebuilds)."""
    return decode_table(table_bytes(pack, pack_id), pack_id)


# A pack rewritten into one that is rewritten in turn is followed this far, no further.
MAX_MOVES = 8


def encode_moved(pack_id: str, moves: list[tuple[int, BlockLocation]]) -> bytes:
    """The moved/ record of a rewritten pack: for each live block, its offset in the old
    pack and its new location (the same stored bytes, so the same checksum)."""
    return canonical_json(
        {
            "pack": pack_id,
            "blocks": [
                [old, b.block_id, b.pack, b.offset, b.stored_length, b.length, b.codec, b.checksum]
                for old, b in sorted(moves, key=lambda m: m[0])
            ],
        }
    )


def parse_moved(data: bytes, pack_id: str) -> dict[int, BlockLocation]:
    what = f"moved record of pack {pack_id}"
    doc = parse_json(data, what)
    try:
        if doc["pack"] != pack_id:
            raise ValueError(f"it is the record of {doc['pack']!r}")
        out = {}
        for old, bid, pack, offset, stored_length, length, codec, check in doc["blocks"]:
            if not (is_hex_id(bid) and is_hex_id(pack)) or not all(
                isinstance(n, int) and n >= 0 for n in (old, offset, stored_length, length)
            ):
                raise ValueError(f"bad row for block {bid!r}")
            out[old] = BlockLocation(
                bid, pack, offset, stored_length, length, str(codec), str(check)
            )
        return out
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{what} is malformed: {e}") from None
