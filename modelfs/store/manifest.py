"""Manifests: the block index of one version of one file.

A manifest is immutable JSON named by the BLAKE3-256 of its bytes: the file's
size, the BLAKE3-256 of its whole content, its metadata (string to string:
extended attributes, metrics), how it was split, and its blocks in file order,
each with everything needed to fetch, check and decode it without any other
object. Blocks are contiguous and cover the file exactly; from_bytes refuses
a manifest that breaks that.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

from ..errors import FormatError
from .format import MANIFEST_VERSION, all_hex_ids, canonical_json, object_id, parse_json
from .packs import BlockLocation


@dataclass(frozen=True)
class BlockRef:
    """One block of a file: where it sits in the file and where it is stored."""

    file_offset: int
    location: BlockLocation

    @property
    def length(self) -> int:
        return self.location.length

    @property
    def end(self) -> int:
        return self.file_offset + self.location.length


@dataclass(frozen=True)
class Manifest:
    size: int
    content_hash: str  # "blake3:<hex>"
    layout: str  # "safetensors" or "cdc"
    blocks: tuple[BlockRef, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    # Set only when a writer must not reuse the manifest of this content because a
    # collection condemned it (format 4): the same content under a new id.
    nonce: str = ""

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                **({"nonce": self.nonce} if self.nonce else {}),
                "version": MANIFEST_VERSION,
                "size": self.size,
                "content_hash": self.content_hash,
                "layout": self.layout,
                "metadata": self.metadata,
                "blocks": [
                    [
                        b.file_offset, b.location.length, b.location.block_id, b.location.pack,
                        b.location.offset, b.location.stored_length, b.location.codec,
                        b.location.checksum,
                    ]
                    for b in self.blocks
                ],
            }
        )  # fmt: skip

    @property
    def id(self) -> str:
        return object_id(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, manifest_id: str | None = None) -> Manifest:
        what = f"manifest {manifest_id}" if manifest_id else "manifest"
        if manifest_id is not None and object_id(data) != manifest_id:
            raise FormatError(f"{what} does not match its id: corrupt or tampered")
        doc = parse_json(data, what)
        try:
            if doc["version"] > MANIFEST_VERSION:
                raise FormatError(f"{what} has format version {doc['version']}: upgrade modelfs")
            blocks = []
            pos = 0
            rows = doc["blocks"]
            # Every id becomes part of an object key: check them all in one pass.
            if not all_hex_ids([row[2] for row in rows] + [row[3] for row in rows]):
                raise ValueError("a block or pack id is not a hex id")
            for off, length, bid, pack, pack_off, stored_len, codec, checksum in rows:
                if off != pos or length <= 0:
                    raise ValueError(f"block at offset {off} is out of place or malformed")
                blocks.append(
                    BlockRef(
                        off, BlockLocation(bid, pack, pack_off, stored_len, length, codec, checksum)
                    )
                )
                pos += length
            if pos != doc["size"]:
                raise ValueError(f"blocks cover {pos} bytes of {doc['size']}")
            metadata = doc.get("metadata", {})
            if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
            ):
                raise ValueError("metadata must map strings to strings")
            return cls(
                int(doc["size"]),
                str(doc["content_hash"]),
                str(doc["layout"]),
                tuple(blocks),
                metadata,
                str(doc.get("nonce", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{what} is malformed: {e}") from None

    def blocks_for(self, offset: int, length: int) -> list[BlockRef]:
        """The blocks overlapping file bytes [offset, offset + length)."""
        if length <= 0 or offset >= self.size:
            return []
        starts = self._starts()
        first = max(0, bisect_right(starts, offset) - 1)
        end = offset + length
        out = []
        for b in self.blocks[first:]:
            if b.file_offset >= end:
                break
            out.append(b)
        return out

    def _starts(self) -> list[int]:
        cached = self.__dict__.get("_starts_cache")
        if cached is None:
            cached = [b.file_offset for b in self.blocks]
            object.__setattr__(self, "_starts_cache", cached)
        return cached
