"""The block store: the on-store format and everything that reads and writes it."""

from .format import ChunkingLimits, StoreConfig
from .manifest import BlockRef, Manifest
from .refs import Ref, Version
from .store import FileInfo, FsckReport, PutResult, Store, verify_block

__all__ = [
    "BlockRef", "ChunkingLimits", "FileInfo", "FsckReport", "Manifest", "PutResult", "Ref",
    "Store", "StoreConfig", "Version", "verify_block",
]  # fmt: skip
