"""The block index: every stored block id and where it lives, for deduplication.

Loaded from the index objects (one per pack, the pack's block table) and
extended as this process uploads packs. Other writers' new packs are picked up
by refresh(); missing one only costs a duplicate upload, never correctness.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor

from ..backends.base import Backend
from .packs import BlockLocation, decode_table

INDEX_PREFIX = "index/"


class BlockIndex:
    def __init__(self) -> None:
        self._locations: dict[str, BlockLocation] = {}
        self._loaded: set[str] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._locations)

    def __contains__(self, block_id: str) -> bool:
        return block_id in self._locations

    def get(self, block_id: str) -> BlockLocation | None:
        return self._locations.get(block_id)

    def add(self, pack_id: str, locations: list[BlockLocation]) -> None:
        with self._lock:
            for loc in locations:
                self._locations.setdefault(loc.block_id, loc)
            self._loaded.add(pack_id)

    def packs(self) -> set[str]:
        with self._lock:
            return set(self._loaded)

    def locations(self) -> list[BlockLocation]:
        with self._lock:
            return list(self._locations.values())

    def refresh(self, backend: Backend, pool: Executor) -> None:
        """Load the index objects written since the last refresh."""
        new = [k[len(INDEX_PREFIX) :] for k in backend.list(INDEX_PREFIX)]
        new = [p for p in new if p not in self._loaded]

        def load(pack_id: str) -> tuple[str, list[BlockLocation]]:
            return pack_id, decode_table(backend.get(INDEX_PREFIX + pack_id), pack_id)

        for pack_id, locations in pool.map(load, new):
            self.add(pack_id, locations)
