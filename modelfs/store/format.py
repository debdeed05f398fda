"""The on-store format: object keys, the config object, hashing, canonical JSON.

docs/FORMAT.md is the prose version of this module; change both together.
Every object is JSON or opaque bytes; nothing in the store is ever unpickled
or executed.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import blake3
import xxhash

from ..errors import FormatError, InvalidArgumentError, UnsupportedFormatError

FORMAT_NAME = "modelfs"
# 2: names too long for a key component are shortened (see paths.py); directory
# markers hold their path. Version-1 stores are read and written as they are, and
# become version 2 when the first shortened key is written (Store.require_format).
# 3: names records (tags, aliases, metrics) under meta/, directory snapshots under
# snapshots/, and versions whose ref entry holds metrics. A store becomes version 3
# before the first of these is written.
# 4: retention and collection. Ref entries may be forgotten (they keep their manifest
# id), directories' snapshots too; packs whose live blocks were copied elsewhere are
# forwarded by moved/ records; a collection in progress is recorded under gc/; the
# config holds the writers' commit window. A store becomes version 4 before the first
# forget or collection.
# 5: framed blocks. A block larger than one frame is stored as independently coded
# frames behind a frame directory (codec "frames+<codec>"), and its pack-table row
# carries the frames' stored lengths and hashes, so that a read can verify a piece of a
# block. A store becomes version 5 before its first framed block is uploaded.
FORMAT_VERSION = 5
SHORTENED_KEYS_VERSION = 2  # the format version that first allowed shortened names in keys
NAMES_VERSION = 3  # the format version that first had names records, snapshots and metrics
COLLECTION_VERSION = 4  # the format version that first had forgotten versions and collection
FRAMES_VERSION = 5  # the format version that first had framed blocks
# How long a writer may take from checking what a collection condemned to making a
# new reference visible (store config, version 4). A collector waits longer than this.
DEFAULT_COMMIT_WINDOW = 120.0
MANIFEST_VERSION = 1  # manifests did not change: the same content keeps the same id

CONFIG_KEY = "config"
HASH_NAME = "blake3-256"
CHECKSUM_NAME = "xxh3-128"
HEX_ID_LENGTH = 64  # hex digits of a BLAKE3-256 id
_HEX_ID = re.compile(f"[0-9a-f]{{{HEX_ID_LENGTH}}}")
_HEX_DIGITS = re.compile("[0-9a-f]*")


def block_id(data: bytes | memoryview) -> str:
    """The id of a block: BLAKE3-256 of its plaintext."""
    # Large inputs hash on several threads; the GIL is released either way.
    threads = blake3.blake3.AUTO if len(data) >= 4 << 20 else 1
    return blake3.blake3(data, max_threads=threads).hexdigest()


def object_id(data: bytes) -> str:
    """The id of a content-addressed object: BLAKE3-256 of its bytes (a manifest's, a pack's table)."""
    return blake3.blake3(data).hexdigest()


def checksum(stored: bytes | memoryview | list[bytes]) -> str:
    """xxh3-128 of a block's stored bytes (or of its pieces in order): a fast check
    before decompression."""
    if not isinstance(stored, list):
        return xxhash.xxh3_128_hexdigest(stored)
    h = xxhash.xxh3_128()
    for piece in stored:
        h.update(piece)
    return h.hexdigest()


def frame_hash(stored: bytes | memoryview) -> str:
    """The hash a pack table pins for one frame: BLAKE3 of its stored bytes, 128 bits
    (a frame is checked on its own, before it is decoded, without the rest of its block)."""
    return blake3.blake3(stored).hexdigest(length=16)


def is_hex_digits(text: str) -> bool:
    return _HEX_DIGITS.fullmatch(text) is not None


def is_hex_id(text: object) -> bool:
    # A regex, not a loop over characters: manifests check thousands of ids per open.
    return isinstance(text, str) and _HEX_ID.fullmatch(text) is not None


def all_hex_ids(texts: list[Any]) -> bool:
    """is_hex_id of each, in one regex match over them all (a manifest has thousands)."""
    if not all(isinstance(t, str) and len(t) == HEX_ID_LENGTH for t in texts):
        return False
    return _HEX_DIGITS.fullmatch("".join(texts)) is not None


def pack_key(pack_id: str) -> str:
    return f"packs/{pack_id[:2]}/{pack_id}"


def index_key(pack_id: str) -> str:
    return f"index/{pack_id}"


def manifest_key(manifest_id: str) -> str:
    return f"manifests/{manifest_id[:2]}/{manifest_id}"


def moved_key(pack_id: str) -> str:
    """Where a collected pack's live blocks went (version 4)."""
    return f"moved/{pack_id}"


def canonical_json(obj: Any) -> bytes:
    """One byte string per value: sorted keys, no whitespace, UTF-8.

    A string that holds bytes which are not UTF-8 (a file name or an attribute value
    read with surrogateescape) cannot be written as UTF-8; such a value is written
    with every non-ASCII character as a JSON escape instead, which reads back the same.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FormatError(f"{what} is not valid JSON: {e}") from None


@dataclass(frozen=True)
class ChunkingLimits:
    """Sizes that decide how files are cut into blocks."""

    min_size: int = 256 << 10
    avg_size: int = 1 << 20
    max_size: int = 4 << 20

    def __post_init__(self) -> None:
        # pyfastcdc's own bounds; beyond them its cut points are undefined.
        if not (64 <= self.min_size <= 1 << 20):
            raise InvalidArgumentError(f"min block size {self.min_size} outside [64 B, 1 MiB]")
        if not (256 <= self.avg_size <= 4 << 20):
            raise InvalidArgumentError(f"average block size {self.avg_size} outside [256 B, 4 MiB]")
        if not (1024 <= self.max_size <= 16 << 20):
            raise InvalidArgumentError(f"max block size {self.max_size} outside [1 KiB, 16 MiB]")
        if not (self.min_size <= self.avg_size <= self.max_size):
            raise InvalidArgumentError("block sizes must satisfy min <= avg <= max")


@dataclass(frozen=True)
class StoreConfig:
    """The config object: what every reader and writer of the store must agree on."""

    chunking: ChunkingLimits = field(default_factory=ChunkingLimits)
    zstd_level: int = 3
    pack_size: int = 32 << 20
    version: int = FORMAT_VERSION
    commit_window: float = DEFAULT_COMMIT_WINDOW  # seconds (see DEFAULT_COMMIT_WINDOW)

    def __post_init__(self) -> None:
        if not (0.05 <= self.commit_window <= 86400):
            raise InvalidArgumentError(
                f"commit window {self.commit_window} s outside [0.05 s, 1 day]"
            )
        if not (1 <= self.zstd_level <= 22):
            raise InvalidArgumentError(f"zstd level {self.zstd_level} outside 1..22")
        if not (1 << 20 <= self.pack_size <= 1 << 30):
            raise InvalidArgumentError(f"pack size {self.pack_size} outside [1 MiB, 1 GiB]")

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "format": FORMAT_NAME,
                "version": self.version,
                "hash": HASH_NAME,
                "checksum": CHECKSUM_NAME,
                "chunking": {"algorithm": "fastcdc2020", **asdict(self.chunking)},
                "compression": {"codec": "zstd", "level": self.zstd_level},
                "pack_size": self.pack_size,
                # Written only where it is not the default: older stores' configs stay as
                # they were, byte for byte.
                **(
                    {"collection": {"commit_window": self.commit_window}}
                    if self.commit_window != DEFAULT_COMMIT_WINDOW
                    else {}
                ),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> StoreConfig:
        doc = parse_json(data, "store config")
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise FormatError("the config object is not a modelfs store config")
        version = doc.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise FormatError("store config has no valid format version")
        if version > FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"store has format version {version}; this modelfs reads up to "
                f"{FORMAT_VERSION}: upgrade modelfs"
            )
        if doc.get("hash") != HASH_NAME or doc.get("checksum") != CHECKSUM_NAME:
            raise FormatError(f"store uses hash {doc.get('hash')!r}, expected {HASH_NAME!r}")
        try:
            chunking = dict(doc["chunking"])
            algorithm = chunking.pop("algorithm", None)
            if algorithm != "fastcdc2020" or doc["compression"]["codec"] != "zstd":
                raise FormatError(
                    f"store uses chunking {algorithm!r} and compression "
                    f"{doc['compression']['codec']!r}, which this modelfs does not know"
                )
            return cls(
                chunking=ChunkingLimits(**chunking),
                zstd_level=int(doc["compression"]["level"]),
                pack_size=int(doc["pack_size"]),
                version=version,
                commit_window=float(
                    doc.get("collection", {}).get("commit_window", DEFAULT_COMMIT_WINDOW)
                ),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"store config is malformed: {e}") from None


def config_with_version(data: bytes, version: int) -> bytes:
    """A config object's bytes with only its format version changed (an in-place upgrade:
    whatever else an older writer put there is kept as it was)."""
    StoreConfig.from_bytes(data)  # refuse to upgrade what this modelfs cannot read
    doc = parse_json(data, "store config")
    doc["version"] = version
    return canonical_json(doc)
