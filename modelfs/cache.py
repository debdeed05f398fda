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

import errno
import fcntl
import logging
import os
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
        # Entry paths are built as strings: pathlib costs more than the syscalls of a hit.
        self._blocks_prefix = os.fspath(self._blocks) + os.sep
        self._tmp_prefix = os.fspath(self._tmp) + os.sep
        self._lock = threading.Lock()
        self._size = sum(e[2] for e in self._scan())
        self.hits = self.misses = self.evictions = 0

    def _path(self, block_id: str) -> str:
        return f"{self._blocks_prefix}{block_id[:2]}{os.sep}{block_id}"

    @property
    def size(self) -> int:
        return self._size

    def contains(self, block_id: str) -> bool:
        """Whether an entry exists (not checked: get may still find it damaged)."""
        return os.path.exists(self._path(block_id))

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
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            self.misses += 1
            return None
        try:
            stored_sum = os.read(fd, ENTRY_OVERHEAD)
            # os.read reads straight into a bytes object of the asked size: no copy (a
            # buffered f.read() after f.read(16) joins two parts, copying 4 MiB blocks).
            data = os.read(fd, max(0, os.fstat(fd).st_size - ENTRY_OVERHEAD))
            intact = (
                len(stored_sum) == ENTRY_OVERHEAD and _entry_checksum(block_id, data) == stored_sum
            )
            if intact:
                try:
                    os.utime(fd)  # recently used again; by fd: no second path lookup
                except OSError:
                    pass  # a read-only cache still serves
        finally:
            os.close(fd)
        if intact:
            self.hits += 1
            return data
        log.warning("cache entry %s is damaged; dropping it", path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # another process dropped or evicted it first
        else:
            with self._lock:
                self._size -= len(stored_sum) + len(data)
        self.misses += 1
        return None

    def put(self, block_id: str, data: bytes) -> None:
        path = self._path(block_id)
        try:
            os.utime(path)  # already cached (maybe by another process): recently used again
            return
        except FileNotFoundError:
            pass
        except OSError:
            return  # there but not ours to touch (a shared, read-only cache)
        # A random name, unique among all writers of this cache: what mkstemp does,
        # without its path handling.
        tmp = f"{self._tmp_prefix}{block_id}.{os.urandom(8).hex()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            self._cannot_write(block_id, e)
            return
        try:
            try:
                # Checksum and bytes in one syscall. Short only when the disk is full.
                written = os.writev(fd, [_entry_checksum(block_id, data), data])
            finally:
                os.close(fd)
            if written != ENTRY_OVERHEAD + len(data):
                raise OSError(errno.ENOSPC, "short write")
            try:
                os.replace(tmp, path)
            except FileNotFoundError:  # the first entry of its subdirectory
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.replace(tmp, path)
        except OSError as e:
            self._cannot_write(block_id, e)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return
        with self._lock:
            self._size += ENTRY_OVERHEAD + len(data)
            over = self._size > self.max_bytes
        if over:
            self.evict()

    def _cannot_write(self, block_id: str, error: OSError) -> None:
        # A cache that cannot write (disk full) only costs speed.
        log.warning("cannot cache block %s in %s: %s", block_id, self.directory, error)

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
