"""The block index: every stored block id and where it lives, for deduplication.

Loaded from the index objects (one per pack, the pack's block table) and
extended as this process uploads packs. Other writers' new packs are picked up
by refresh(); missing one only costs a duplicate upload, never correctness.
refresh() also forgets packs whose index object is gone: a collection deletes a
pack's index object first, and no writer may deduplicate against it after that.
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import Executor

from ..backends.base import Backend
from ..errors import NotFoundError
from .packs import BlockLocation, decode_table

INDEX_PREFIX = "index/"


class BlockIndex:
    def __init__(self) -> None:
        self._locations: dict[str, BlockLocation] = {}
        # pack -> its locations and the refresh generation it was added in.
        self._packs: dict[str, tuple[list[BlockLocation], int]] = {}
        self._generation = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._locations)

    def __contains__(self, block_id: str) -> bool:
        return block_id in self._locations

    def get(self, block_id: str) -> BlockLocation | None:
        return self._locations.get(block_id)

    def add(self, pack_id: str, locations: list[BlockLocation]) -> None:
        # Frames are kept out: dedup needs none, and they would be most of the index.
        locations = [
            loc if loc.frames is None else dataclasses.replace(loc, frames=None)
            for loc in locations
        ]
        with self._lock:
            for loc in locations:
                self._locations.setdefault(loc.block_id, loc)
            self._packs[pack_id] = (locations, self._generation)

    def stored_in(self, pack_id: str) -> int | None:
        """The stored bytes of a pack's blocks, by its table (None: not loaded)."""
        with self._lock:
            got = self._packs.get(pack_id)
        return sum(loc.stored_length for loc in got[0]) if got is not None else None

    def packs(self) -> set[str]:
        with self._lock:
            return set(self._packs)

    def drop(self, packs: frozenset[str] | set[str]) -> None:
        """Forget these packs (those a collection condemned), if loaded."""
        with self._lock:
            gone = set(packs) & set(self._packs)
            if gone:
                self._drop(gone)

    def _drop(self, gone: set[str]) -> None:
        """Forget packs (the lock held): their blocks are found again in other packs, if
        any other holds them."""
        lost: set[str] = set()
        for pack_id in gone:
            locations, _ = self._packs.pop(pack_id)
            for loc in locations:
                if self._locations.get(loc.block_id) is loc:
                    del self._locations[loc.block_id]
                    lost.add(loc.block_id)
        if lost:
            for locations, _ in self._packs.values():
                for loc in locations:
                    if loc.block_id in lost and loc.block_id not in self._locations:
                        self._locations[loc.block_id] = loc

    def locations(self) -> list[BlockLocation]:
        with self._lock:
            return list(self._locations.values())

    def refresh(
        self, backend: Backend, pool: Executor, exclude: frozenset[str] = frozenset()
    ) -> None:
        """Load the index objects written since the last refresh, and forget the packs
        whose index object is gone or that a collection condemned (exclude): writers
        must not deduplicate against those. A pack this process added during the
        listing is kept (its index object may have been written after the listing
        passed it)."""
        with self._lock:
            self._generation += 1
            started = self._generation
        listed = {k[len(INDEX_PREFIX) :] for k in backend.list(INDEX_PREFIX)} - exclude
        with self._lock:
            gone = {p for p, (_, gen) in self._packs.items() if p not in listed and gen < started}
            gone |= exclude & set(self._packs)
            if gone:
                self._drop(gone)
            new = [p for p in listed if p not in self._packs]

        def load(pack_id: str) -> tuple[str, list[BlockLocation] | None]:
            try:
                # Without frames: dedup needs none, and they are most of a table.
                data = backend.get(INDEX_PREFIX + pack_id)
                return pack_id, decode_table(data, pack_id, frames=False)
            except NotFoundError:
                return pack_id, None  # condemned since the listing

        for pack_id, locations in pool.map(load, new):
            if locations is not None:
                self.add(pack_id, locations)
