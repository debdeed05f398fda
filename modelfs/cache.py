"""Bounded caches of verified block plaintext: on local disk, and in memory.

The disk cache keeps one file per block, named by its id, under
DIR/blocks/. It survives restarts and can be shared by several processes:
entries are written to a temporary file and renamed into place, a hit bumps
the file's mtime (the LRU clock), and eviction runs under an flock on
DIR/lock, deleting the least recently used entries until the cache is back
under 90% of its limit. Each entry starts with an xxh3-128 of its id and
bytes, checked on every hit, so a damaged cache file is dropped and fetched
again, never served.

Caveats:
- Between evictions each process counts only its own insertions, so the
  cache can overshoot its limit by what other processes added since their
  last eviction scan.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import xxhash

from .errors import InvalidArgumentError

log = logging.getLogger(__name__)

_EVICT_TO = 0.9
ENTRY_OVERHEAD = 16  # each entry file: xxh3-128 of (id, bytes), then the bytes


def _entry_checksum(block_id: str, data: bytes | memoryview) -> bytes:
    # xxh3 of the id and the bytes: ten times cheaper than re-hashing with BLAKE3,
    # and enough to catch a damaged or misplaced file on our own disk (the bytes
    # were checked against their BLAKE3 id before they were cached).
    h = xxhash.xxh3_128(block_id.encode())
    h.update(data)
    return h.digest()


class DiskBlockCache:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        if max_bytes <= 0:
            raise InvalidArgumentError(f"cache size must be positive, not {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._blocks = self.directory / "blocks"
        self._tmp = self.directory / "tmp"
        self._blocks.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._size = sum(e[2] for e in self._scan())
        self.hits = self.misses = self.evictions = 0

    def _path(self, block_id: str) -> Path:
        return self._blocks / block_id[:2] / block_id

    @property
    def size(self) -> int:
        return self._size

    def contains(self, block_id: str) -> bool:
        """Whether an entry exists (not checked: get may still find it damaged)."""
        return self._path(block_id).exists()

    def will_need(self, block_ids: list[str]) -> None:
        """Ask the kernel to start reading these entries now, all at once, so that the
        gets that follow find them in the page cache (readahead from the disk cache)."""
        for block_id in block_ids:
            try:
                fd = os.open(self._path(block_id), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def get(self, block_id: str) -> bytes | None:
        path = self._path(block_id)
        try:
            with open(path, "rb") as f:
                stored_sum = f.read(ENTRY_OVERHEAD)
                data = f.read()  # its own bytes object: no copy to strip the checksum
        except FileNotFoundError:
            self.misses += 1
            return None
        entry_size = len(stored_sum) + len(data)
        if len(stored_sum) < ENTRY_OVERHEAD or _entry_checksum(block_id, data) != stored_sum:
            log.warning("cache entry %s is damaged; dropping it", path)
            try:
                path.unlink()
            except FileNotFoundError:
                pass  # another process dropped or evicted it first
            else:
                with self._lock:
                    self._size -= entry_size
            self.misses += 1
            return None
        try:
            os.utime(path)
        except FileNotFoundError:
            pass  # evicted by another process meanwhile: we still have the bytes
        self.hits += 1
        return data

    def put(self, block_id: str, data: bytes) -> None:
        path = self._path(block_id)
        if path.exists():
            try:
                os.utime(path)  # recently used again
            except FileNotFoundError:
                pass
            else:
                return
        try:
            path.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(_entry_checksum(block_id, data))
                f.write(data)
            os.replace(tmp, path)
        except OSError as e:
            # A cache that cannot write (disk full) only costs speed.
            log.warning("cannot cache block %s in %s: %s", block_id, self.directory, e)
            return
        with self._lock:
            self._size += ENTRY_OVERHEAD + len(data)
            over = self._size > self.max_bytes
        if over:
            self.evict()

    def _scan(self) -> list[tuple[float, Path, int]]:
        entries = []
        for sub in os.scandir(self._blocks):
            if not sub.is_dir():
                continue
            for e in os.scandir(sub.path):
                try:
                    st = e.stat()
                except FileNotFoundError:
                    continue
                entries.append((st.st_mtime, Path(e.path), st.st_size))
        return entries

    def evict(self) -> None:
        """Delete least recently used entries until under 90% of the limit."""
        with open(self.directory / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                entries = sorted(self._scan(), key=lambda e: e[0])
                total = sum(e[2] for e in entries)
                target = int(self.max_bytes * _EVICT_TO)
                for _, path, size in entries:
                    if total <= target:
                        break
                    path.unlink(missing_ok=True)
                    total -= size
                    self.evictions += 1
                with self._lock:
                    self._size = total
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class MemoryBlockCache:
    """A small in-process LRU, for the many small reads that hit one block."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, block_id: str) -> bytes | None:
        with self._lock:
            data = self._entries.get(block_id)
            if data is not None:
                self._entries.move_to_end(block_id)
            return data

    def put(self, block_id: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            if block_id in self._entries:
                self._entries.move_to_end(block_id)
                return
            self._entries[block_id] = data
            self._size += len(data)
            while self._size > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._size -= len(old)
