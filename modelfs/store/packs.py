"""Pack objects: many stored blocks in one blob, with a table of them at the end.

A pack is the blocks' stored bytes back to back, then a trailer: the JSON
block table, its length (4 bytes little-endian) and the magic b"MFSPACK1".
The same table is also written as the pack's index object, so the block
index can be loaded without reading packs, and rebuilt from packs alone.
A pack is named by the BLAKE3-256 of its block table.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import FormatError
from .format import canonical_json, is_hex_id, object_id, parse_json

PACK_MAGIC = b"MFSPACK1"
_TRAILER = struct.Struct("<I8s")


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


def encode_table(locations: list[BlockLocation], nonce: str = "") -> bytes:
    """A block table; nonce (format 4) makes a pack of the same blocks a new pack, for a
    writer that must not reuse one a collection condemned."""
    return canonical_json(
        {
            **({"nonce": nonce} if nonce else {}),
            "blocks": [
                [b.block_id, b.offset, b.stored_length, b.length, b.codec, b.checksum]
                for b in locations
            ],
        }
    )


def decode_table(data: bytes, pack_id: str) -> list[BlockLocation]:
    doc = parse_json(data, f"block table of pack {pack_id}")
    try:
        rows = doc["blocks"]
        out = []
        for block_id, offset, stored_length, length, codec, checksum in rows:
            if not is_hex_id(block_id) or not all(
                isinstance(n, int) and n >= 0 for n in (offset, stored_length, length)
            ):
                raise ValueError(f"bad row for block {block_id!r}")
            out.append(
                BlockLocation(
                    block_id, pack_id, offset, stored_length, length, str(codec), str(checksum)
                )
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

    def add(self, block_id: str, stored: bytes, length: int, codec: str, checksum: str) -> None:
        self._rows.append(
            BlockLocation(block_id, "", self.size, len(stored), length, codec, checksum)
        )
        self._parts.append(stored)
        self.size += len(stored)

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
                b.block_id, pack_id, b.offset, b.stored_length, b.length, b.codec, b.checksum
            )
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
