"""Bounded caches of verified block plaintext: on local disk, and in memory.

The disk cache keeps blocks in segment files under DIR/segments/, each about
SEGMENT_BYTES (64 MiB; a sixteenth of a cache under 1 GiB) holding many
entries, instead of one file per block. Each process appends only to segments
it created, under an flock it holds while it appends (its live segments); a
full segment is sealed with a closing record that holds its index, and is
never appended to again. Every entry is framed: a header (id, length, an
xxh3-128 of id and bytes, an xxh3-64 of the header itself), then the bytes.

The index (id -> segment, offset, length, checksum) lives in memory. At start
it is read from each sealed segment's closing record, and from the entry
headers of the others (live in another process, or left by a killed one); it
follows this process's own appends; and on a miss it looks for segments other
processes created, appended to or deleted since. Every hit reads the bytes
(os.pread: one copy, from the page cache) and checks them against the
checksum; a damaged entry is marked dropped in its segment, never served, and
fetched again.

Space is reclaimed by whole segments, under an flock on DIR/lock: the least
recently used first (a segment's mtime, bumped by appends and hits), never a
live one, until the cache is under 90% of its limit. Pinned blocks (named sets
of block ids in DIR/pins/, read by every process) are never evicted: a pinned
entry in a segment being deleted is first copied to a segment of the evicting
process, and a segment mostly pinned is kept whole.

Caveats:
- Live segments are never evicted, so the cache can stay over its limit by up
  to a segment per process using it; and each process sees what others added
  only on its misses and every 1/64 of the limit it appends, so together they
  can overshoot by about that much more (measured: 2% with two writers).
- A dropped (damaged) entry and the duplicate of a block two processes cached
  at once take space until their segment is evicted; so does the torn tail a
  process killed mid-append leaves.
- A cache directory in the old layout (one file per block in DIR/blocks/) is
  emptied at start: its blocks are fetched again. A process still running the
  old code writes there again until it stops.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import xxhash

from .errors import InvalidArgumentError, PinLimitError
from .units import human

log = logging.getLogger(__name__)

SEGMENT_BYTES = 64 << 20
_EVICT_TO = 0.9
_MOSTLY_PINNED = 0.5  # a segment at least this pinned is kept whole, not copied from
_TOUCH_EVERY_S = 1.0  # a hit bumps its segment's mtime at most this often
_RELIST_EVERY_S = 1.0  # a directory mtime has coarse ticks: list again at least this often

_FILE_MAGIC = b"modelfs-segment\n"  # the first bytes of every segment file
_HEADER = struct.Struct("<4sHHQ16s")  # magic, id length, flags, data length, xxh3-128
_LIVE, _DROPPED = b"MFSE", b"MFSD"  # an entry's magic; a dropped one keeps its frame
_SEAL = 1  # flags: the segment's closing record: no id; its data, the segment's index
_INDEX_ROW = struct.Struct("<QQ16sH")  # an entry's frame offset, length, checksum, id length
_TRAILER = struct.Struct("<8sQ")  # after the closing record: magic, the record's offset
_TRAILER_MAGIC = b"MFSINDEX"
_HEADER_SUM = 8  # xxh3-64 of the header and id, after the id
_MAX_ID = 255


def entry_size(block_id: str, length: int) -> int:
    """Bytes an entry of `length` bytes takes in a segment: its frame, then the bytes."""
    return _HEADER.size + len(block_id.encode()) + _HEADER_SUM + length


def _entry_checksum(block_id: str, data: bytes | memoryview) -> bytes:
    # xxh3 of the id and the bytes: ten times cheaper than re-hashing with BLAKE3,
    # and enough to catch a damaged or misplaced entry on our own disk (the bytes
    # were checked against their BLAKE3 id before they were cached).
    h = xxhash.xxh3_128(block_id.encode())
    h.update(data)
    return h.digest()


def _frame(block_id: str, data_length: int, checksum: bytes, flags: int = 0) -> bytes:
    head = _HEADER.pack(_LIVE, len(block_id.encode()), flags, data_length, checksum)
    head += block_id.encode()
    return head + xxhash.xxh3_64(head).digest()


@dataclass(eq=False)  # a segment is itself: compared by identity
class _Segment:
    name: str
    path: str
    size: int = 0  # bytes on disk, as last seen
    scanned: int = 0  # entries before this offset are indexed
    sealed: bool = False  # will not grow: closed by its writer, or its writer is gone
    entries: dict[str, _Entry] = field(default_factory=dict)
    touched: float = 0.0  # monotonic time of the last mtime bump by this process


class _Entry(NamedTuple):
    segment: _Segment
    offset: int  # of the frame
    data_offset: int
    length: int
    checksum: bytes


@dataclass
class _Appender:
    """A live segment of this process: its fd holds the flock that says so."""

    segment: _Segment
    fd: int
    offset: int


@dataclass(frozen=True)
class Pin:
    """A named set of blocks that eviction skips (what `modelfs warmup --pin` writes)."""

    key: str
    meta: dict[str, Any]
    blocks: dict[str, int]  # id -> length
    time: float

    @property
    def bytes(self) -> int:
        return sum(entry_size(b, n) for b, n in self.blocks.items())


class DiskBlockCache:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int,
        *,
        segment_bytes: int | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise InvalidArgumentError(f"cache size must be positive, not {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        # At least 16 segments in a full cache: eviction frees a tenth of it at a time.
        self.segment_bytes = segment_bytes or max(1, min(SEGMENT_BYTES, max_bytes // 16))
        self._segdir = self.directory / "segments"
        self._tmp = self.directory / "tmp"
        self._pindir = self.directory / "pins"
        for d in (self._segdir, self._tmp, self._pindir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the index, the segments and the size
        self._append_lock = threading.Lock()  # this process's appends, in order
        self._segments: dict[str, _Segment] = {}
        self._index: dict[str, _Entry] = {}
        self._appender: _Appender | None = None  # for new blocks
        self._keeper: _Appender | None = None  # for pinned blocks moved out of evicted segments
        self._listed: tuple[int, float] | None = None  # (directory mtime, monotonic time)
        self._size = 0
        # Evict when the size passes this: the limit, or, while pins alone keep the cache
        # over it, a segment above where the last eviction had to stop.
        self._evict_above = max_bytes
        self._appended = 0  # bytes this process appended since it last looked at others'
        self.hits = self.misses = self.evictions = 0
        self._clear_leftovers()
        with self._lock:
            self._refresh()
        pinned = self.pinned_bytes()
        if pinned > self.max_bytes:
            log.warning(
                "pinned blocks in %s take %d bytes, more than the cache limit of %d: they are "
                "kept, so the cache stays over its limit (unpin: modelfs warmup --unpin)",
                self.directory, pinned, self.max_bytes,
            )  # fmt: skip

    # the index

    @property
    def size(self) -> int:
        """Bytes the segments take on disk, as this process last saw them."""
        return self._size

    def _lookup(self, block_id: str) -> _Entry | None:
        with self._lock:
            entry = self._index.get(block_id)
            if entry is None:  # maybe another process cached it since we last looked
                self._refresh()
                entry = self._index.get(block_id)
            return entry

    def contains(self, block_id: str) -> bool:
        """Whether an entry is indexed (not checked: get may still find it damaged)."""
        return self._lookup(block_id) is not None

    def _refresh(self) -> None:
        """Learn the segments others created, appended to or evicted (lock held)."""
        self._appended = 0
        try:
            mtime = os.stat(self._segdir).st_mtime_ns
        except OSError:
            return
        now = time.monotonic()
        if (
            self._listed is None
            or self._listed[0] != mtime
            or now - self._listed[1] > _RELIST_EVERY_S
        ):
            try:
                names = {n for n in os.listdir(self._segdir) if n.endswith(".seg")}
            except OSError:
                return
            self._listed = (mtime, now)
            mine = {a.segment.name for a in (self._appender, self._keeper) if a is not None}
            for name in [n for n in self._segments if n not in names and n not in mine]:
                self._forget(self._segments[name])
            for name in sorted(names - self._segments.keys()):
                self._segments[name] = _Segment(name, os.path.join(self._segdir, name))
        for seg in list(self._segments.values()):
            if not seg.sealed and not self._is_mine(seg):
                self._scan(seg)

    def _is_mine(self, seg: _Segment) -> bool:
        return any(a is not None and a.segment is seg for a in (self._appender, self._keeper))

    def _scan(self, seg: _Segment) -> None:
        """Index the entries appended to a segment since it was last scanned (lock held)."""
        try:
            fd = os.open(seg.path, os.O_RDONLY)
        except FileNotFoundError:
            self._forget(seg)
            return
        except OSError:
            return  # unreadable for now: its entries are simply not found
        try:
            self._scan_from(seg, fd)
        except OSError as e:  # an I/O error part way: what was indexed stays
            log.debug("scanning cache segment %s: %s", seg.path, e)
        finally:
            os.close(fd)

    def _scan_from(self, seg: _Segment, fd: int) -> None:
        """Index the entries from where the last scan stopped (lock held)."""
        size = os.fstat(fd).st_size
        self._size += size - seg.size
        grew, seg.size = size != seg.size, size
        pos = seg.scanned
        if pos == 0:
            head = os.pread(fd, len(_FILE_MAGIC), 0)
            if head == _FILE_MAGIC and size >= len(_FILE_MAGIC) + _TRAILER.size:
                if self._read_index(seg, fd, size):
                    return
            if head != _FILE_MAGIC:
                # Never one of ours in the making: a segment is renamed here complete.
                log.warning("cache segment %s is damaged (not a segment); removing it", seg.path)
                try:
                    os.unlink(seg.path)
                except OSError:
                    pass
                self._forget(seg)
                return
            pos = len(_FILE_MAGIC)
        while pos < size:
            head = os.pread(fd, _HEADER.size + _MAX_ID + _HEADER_SUM, pos)
            if len(head) < _HEADER.size:
                break
            magic, id_len, flags, length, checksum = _HEADER.unpack_from(head)
            frame = _HEADER.size + id_len + _HEADER_SUM
            if magic not in (_LIVE, _DROPPED) or len(head) < frame:
                break
            # Checked as written: a dropped entry differs from it only in its magic.
            framed = _LIVE + head[4 : frame - _HEADER_SUM]
            if xxhash.xxh3_64(framed).digest() != head[frame - _HEADER_SUM : frame]:
                break  # a torn or damaged header: nothing after it can be trusted
            end = pos + frame + length
            if end > size:
                break  # still being written
            if flags & _SEAL:
                seg.sealed = True
                pos = end
                break
            if magic == _LIVE:
                block_id = framed[_HEADER.size :].decode(errors="replace")
                entry = _Entry(seg, pos, pos + frame, length, checksum)
                seg.entries[block_id] = entry
                self._index.setdefault(block_id, entry)
            pos = seg.scanned = end
        # Short of the end, or at it without a closing record: an entry being written, or
        # what a killed writer left. Its flock tells which: free, it will never grow.
        seg.scanned = pos
        if not seg.sealed and not grew:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released as fd closes
                seg.sealed = True
            except BlockingIOError:
                pass  # live: look again on the next miss

    def _read_index(self, seg: _Segment, fd: int, size: int) -> bool:
        """Index a sealed segment from its closing record; False if it has none intact."""
        magic, at = _TRAILER.unpack(os.pread(fd, _TRAILER.size, size - _TRAILER.size))
        if magic != _TRAILER_MAGIC or not len(_FILE_MAGIC) <= at < size - _TRAILER.size:
            return False
        record = os.pread(fd, size - _TRAILER.size - at, at)
        frame = _HEADER.size + _HEADER_SUM
        if len(record) < frame:
            return False
        magic, id_len, flags, length, checksum = _HEADER.unpack_from(record)
        index = record[frame:]
        if (
            (magic, id_len, flags, length) != (_LIVE, 0, _SEAL, len(index))
            or xxhash.xxh3_64(record[: _HEADER.size]).digest() != record[_HEADER.size : frame]
            or _entry_checksum("", index) != checksum
        ):
            return False
        pos = 0
        while pos < len(index):
            offset, length, checksum, id_len = _INDEX_ROW.unpack_from(index, pos)
            pos += _INDEX_ROW.size
            block_id = index[pos : pos + id_len].decode(errors="replace")
            pos += id_len
            frame = _HEADER.size + id_len + _HEADER_SUM
            entry = _Entry(seg, offset, offset + frame, length, checksum)
            seg.entries[block_id] = entry
            self._index.setdefault(block_id, entry)
        seg.sealed = True
        seg.scanned = size
        return True

    def _forget(self, seg: _Segment) -> None:
        """Drop an evicted segment from the index; its blocks may have copies elsewhere."""
        if self._segments.get(seg.name) is not seg:
            return  # forgotten already
        del self._segments[seg.name]
        self._size -= seg.size
        for block_id, entry in seg.entries.items():
            if self._index.get(block_id) is entry:
                self._unindex(block_id)

    # reading

    def will_need(self, block_ids: list[str]) -> None:
        """Ask the kernel to start reading these entries now, all at once, so that the
        gets that follow find them in the page cache (readahead from the disk cache)."""
        ranges: dict[str, list[tuple[int, int]]] = {}
        with self._lock:
            for block_id in block_ids:
                entry = self._index.get(block_id)
                if entry is not None:
                    ranges.setdefault(entry.segment.path, []).append(
                        (entry.data_offset, entry.length)
                    )
        for path, spans in ranges.items():
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                for offset, length in spans:
                    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def get(self, block_id: str) -> bytes | None:
        while (entry := self._lookup(block_id)) is not None:
            data = self._read(entry)
            if data is None:  # its segment was evicted (by another process): look again
                log.debug("cache segment %s is gone or unreadable", entry.segment.path)
                with self._lock:
                    if entry.segment.name in self._segments:
                        self._forget(entry.segment)
                continue
            if _entry_checksum(block_id, data) == entry.checksum:
                self.hits += 1
                self._touch(entry.segment)
                return data
            log.warning(
                "cache entry %s in %s at offset %d is damaged; dropping it",
                block_id, entry.segment.path, entry.offset,
            )  # fmt: skip
            self._drop(block_id, entry)
        self.misses += 1
        return None

    @staticmethod
    def _read(entry: _Entry) -> bytes | None:
        """The entry's bytes; None if its segment is gone (evicted) or cannot be read."""
        try:
            fd = os.open(entry.segment.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            # Straight into a bytes object of the asked size: one copy, from the page cache.
            # An mmap would save that copy, but a segment file truncated or unreadable under
            # a mapping kills the process with SIGBUS where pread raises: a cache may
            # forget, never crash its mount.
            return os.pread(fd, entry.length, entry.data_offset)
        except OSError:
            return None
        finally:
            os.close(fd)

    def _touch(self, seg: _Segment) -> None:
        now = time.monotonic()
        if now - seg.touched > _TOUCH_EVERY_S:
            seg.touched = now
            try:
                os.utime(seg.path)  # recently used again: the LRU clock of eviction
            except OSError:
                pass  # evicted meanwhile, or a read-only cache: it still serves

    def _unindex(self, block_id: str) -> None:
        """Forget where a block is (the lock held), or find it in another segment that
        holds it too (two processes cached it at once)."""
        del self._index[block_id]
        other = next(
            (s.entries[block_id] for s in self._segments.values() if block_id in s.entries),
            None,
        )  # fmt: skip
        if other is not None:
            self._index[block_id] = other

    def _drop(self, block_id: str, entry: _Entry) -> None:
        """Forget a damaged entry, here and (by its magic) for every later scan."""
        with self._lock:
            if entry.segment.entries.get(block_id) is entry:
                del entry.segment.entries[block_id]
            if self._index.get(block_id) is entry:
                self._unindex(block_id)
        try:
            fd = os.open(entry.segment.path, os.O_WRONLY)
        except OSError:
            return  # gone, or not ours to write: other processes will find it damaged too
        try:
            os.pwrite(fd, _DROPPED, entry.offset)
            # A sealed segment's index still lists the entry: spoil the trailer, so that
            # later starts walk the headers and see it dropped.
            size = os.fstat(fd).st_size
            if entry.segment.sealed and size >= _TRAILER.size:
                os.pwrite(fd, bytes(len(_TRAILER_MAGIC)), size - _TRAILER.size)
        except OSError:
            pass
        finally:
            os.close(fd)

    # writing

    def put(self, block_id: str, data: bytes | memoryview) -> None:
        with self._lock:
            entry = self._index.get(block_id)
        if entry is not None:  # already cached (maybe by another process)
            self._touch(entry.segment)
            return
        if entry_size(block_id, len(data)) > self.max_bytes or len(block_id.encode()) > _MAX_ID:
            return  # bigger than the whole cache (or not a block id)
        with self._append_lock:
            with self._lock:
                if block_id in self._index:  # another thread put it while we waited
                    return
            self._append(block_id, data, keep=False)
        if self._appended > self.max_bytes // 64:  # what others added counts toward the limit
            with self._lock:
                self._refresh()
        if self._size > self._evict_above:
            self.evict()

    def _append(self, block_id: str, data: bytes | memoryview, *, keep: bool) -> _Entry | None:
        """Append an entry to this process's live segment (append lock held)."""
        try:
            appender = self._live(keep)
        except OSError as e:
            self._cannot_write(block_id, e)
            return None
        checksum = _entry_checksum(block_id, data)
        frame = _frame(block_id, len(data), checksum)
        at = appender.offset
        try:
            # Frame and bytes in one syscall. Short only when the disk is full.
            written = os.pwritev(appender.fd, [frame, data], at)
            if written != len(frame) + len(data):
                raise OSError(errno.ENOSPC, "short write")
        except OSError as e:
            self._cannot_write(block_id, e)
            try:
                os.ftruncate(appender.fd, at)  # no torn entry for others to stumble on
            except OSError:
                self._seal(keep)
            return None
        appender.offset += written
        entry = _Entry(appender.segment, at, at + len(frame), len(data), checksum)
        with self._lock:
            appender.segment.entries[block_id] = entry
            appender.segment.size = appender.segment.scanned = appender.offset
            self._index[block_id] = entry
            self._size += written
            self._appended += written
        if appender.offset >= self.segment_bytes:
            self._seal(keep)
        return entry

    def _live(self, keep: bool) -> _Appender:
        """This process's live segment (for pinned blocks moved: keep), made if need be."""
        appender = self._keeper if keep else self._appender
        if appender is not None:
            return appender
        name = f"{time.time_ns():016x}-{os.getpid()}-{os.urandom(4).hex()}.seg"
        tmp = os.path.join(self._tmp, name)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Locked before it is visible: no evictor ever sees it unlocked while live.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.write(fd, _FILE_MAGIC) != len(_FILE_MAGIC):
                raise OSError(errno.ENOSPC, "short write")
            path = os.path.join(self._segdir, name)
            os.rename(tmp, path)
        except OSError:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        seg = _Segment(name, path, len(_FILE_MAGIC), len(_FILE_MAGIC))
        appender = _Appender(seg, fd, len(_FILE_MAGIC))
        with self._lock:
            self._segments[name] = seg
            self._size += len(_FILE_MAGIC)
        if keep:
            self._keeper = appender
        else:
            self._appender = appender
        return appender

    def _seal(self, keep: bool) -> None:
        """Close a live segment with its closing record (append lock held)."""
        appender = self._keeper if keep else self._appender
        if appender is None:
            return
        if keep:
            self._keeper = None
        else:
            self._appender = None
        # The closing record holds the segment's index, and a trailer says where it is: a
        # later start reads three small pieces of the segment, not every entry's header.
        index = b"".join(
            _INDEX_ROW.pack(e.offset, e.length, e.checksum, len(b.encode())) + b.encode()
            for b, e in appender.segment.entries.items()
        )
        seal = _frame("", len(index), _entry_checksum("", index), _SEAL) + index
        seal += _TRAILER.pack(_TRAILER_MAGIC, appender.offset)
        try:
            if os.pwrite(appender.fd, seal, appender.offset) == len(seal):
                appender.offset += len(seal)
        except OSError:
            pass  # without it, others see the writer gone by its flock
        finally:
            os.close(appender.fd)  # releases the flock
        with self._lock:
            seg = appender.segment
            self._size += appender.offset - seg.size
            seg.size = seg.scanned = appender.offset
            seg.sealed = True

    def close(self) -> None:
        """Seal this process's live segments (a process that exits without it leaves them
        for others to find unlocked: the same, a little slower to notice)."""
        with self._append_lock:
            self._seal(keep=False)
            self._seal(keep=True)

    def _cannot_write(self, block_id: str, error: OSError) -> None:
        # A cache that cannot write (disk full) only costs speed.
        log.warning("cannot cache block %s in %s: %s", block_id, self.directory, error)

    def _clear_leftovers(self) -> None:
        """Empty the old layout (a file per block) and segments a killed process was making."""
        old = self.directory / "blocks"
        if old.is_dir():
            with self._locked():
                files = sum(len(f) for _, _, f in os.walk(old))
                shutil.rmtree(old, ignore_errors=True)
            log.info(
                "cache %s: removed %d entries of the old one-file-per-block layout; "
                "their blocks will be fetched again", self.directory, files,
            )  # fmt: skip
        for e in os.scandir(self._tmp):
            try:
                fd = os.open(e.path, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody is making it
                os.unlink(e.path)
            except OSError:
                pass
            finally:
                os.close(fd)

    # eviction

    def _locked(self) -> _DirLock:
        return _DirLock(self.directory / "lock")

    def evict(self) -> None:
        """Delete least recently used segments until under 90% of the limit, keeping
        live segments and pinned blocks."""
        with self._append_lock, self._locked():
            with self._lock:
                self._listed = None
                self._refresh()
            pinned = self._pinned()
            ages = []
            total = 0
            for seg in list(self._segments.values()):
                try:
                    st = os.stat(seg.path)
                except FileNotFoundError:
                    with self._lock:
                        self._forget(seg)
                    continue
                total += st.st_size
                ages.append((st.st_mtime_ns, seg.name, seg))
            target = int(self.max_bytes * _EVICT_TO)
            # Segments mostly pinned are kept whole at first; only if that is not enough
            # are their pinned blocks copied out too.
            for most_pinned in (_MOSTLY_PINNED, 1.0):
                for _, _, seg in sorted(ages):
                    if total <= target:
                        break
                    if seg.name in self._segments and not self._is_mine(seg):
                        total += self._evict_segment(seg, pinned, most_pinned)
            with self._lock:
                self._size = total
            stuck = total > self.max_bytes
            if stuck and self._evict_above == self.max_bytes:
                log.warning(
                    "cache %s stays over its limit of %d bytes (%d): %d bytes are pinned, the "
                    "rest in segments other processes are appending to",
                    self.directory, self.max_bytes, total,
                    sum(entry_size(b, n) for b, n in pinned.items()),
                )  # fmt: skip
            step = max(self.segment_bytes, self.max_bytes // 16)
            self._evict_above = total + step if stuck else self.max_bytes

    def _evict_segment(self, seg: _Segment, pinned: Mapping[str, int], most_pinned: float) -> int:
        """Delete one segment, moving its pinned blocks first; the bytes this changes."""
        try:
            fd = os.open(seg.path, os.O_RDONLY)
        except FileNotFoundError:
            with self._lock:
                self._forget(seg)
            return 0
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # live: another process appends to it
            if not seg.sealed:  # its writer is gone: index what it finished
                with self._lock:
                    self._scan(seg)
                    seg.sealed = True
            with self._lock:
                keep = [
                    (b, e) for b, e in seg.entries.items()
                    if b in pinned and self._index.get(b) is e
                ]  # fmt: skip
            size = os.fstat(fd).st_size
            kept = sum(entry_size(b, e.length) for b, e in keep)
            if kept >= most_pinned * size:
                return 0  # (at 1.0: copying it all would free nothing)
            moved = 0
            for block_id, entry in keep:
                try:
                    data = os.pread(fd, entry.length, entry.data_offset)
                except OSError:
                    continue  # unreadable: fetched again when needed
                if _entry_checksum(block_id, data) != entry.checksum:
                    continue  # damaged: the same
                if (new := self._append(block_id, data, keep=True)) is not None:
                    moved += entry_size(block_id, new.length)
            try:
                os.unlink(seg.path)
            except FileNotFoundError:
                pass  # removed as damaged by the scan above
            with self._lock:
                self.evictions += len(seg.entries) - len(keep)
                self._forget(seg)
            return moved - size
        finally:
            os.close(fd)

    # pins

    def _pin_path(self, key: str) -> Path:
        return self._pindir / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"

    def pins(self) -> list[Pin]:
        """Every pin in the cache directory, by key."""
        found = []
        for e in os.scandir(self._pindir):
            if not e.name.endswith(".json"):
                continue
            try:
                with open(e.path) as f:
                    doc = json.load(f)
                found.append(Pin(doc["key"], doc.get("meta", {}), doc["blocks"], doc["time"]))
            except (OSError, ValueError, KeyError, TypeError) as why:
                if not isinstance(why, FileNotFoundError):
                    log.warning("pin file %s is unreadable (%s); ignoring it", e.path, why)
        return sorted(found, key=lambda p: p.key)

    def _pinned(self) -> dict[str, int]:
        return {b: n for p in self.pins() for b, n in p.blocks.items()}

    def pinned_bytes(self) -> int:
        """Bytes the pinned blocks take (or will, once cached)."""
        return sum(entry_size(b, n) for b, n in self._pinned().items())

    def pin(
        self, key: str, blocks: Mapping[str, int], meta: Mapping[str, Any] | None = None
    ) -> None:
        """Pin blocks (id -> length) under key, replacing what key pinned before."""
        self.pin_all([(key, blocks, meta or {})])

    def pin_all(self, pins: Iterable[tuple[str, Mapping[str, int], Mapping[str, Any]]]) -> None:
        """Pin each (key, blocks, meta): all of them, or (PinLimitError) none if the pinned
        blocks would then take more than the cache's limit."""
        new = {key: (dict(blocks), dict(meta)) for key, blocks, meta in pins}
        if not new:
            return
        with self._locked():
            pinned = {b: n for p in self.pins() if p.key not in new for b, n in p.blocks.items()}
            for blocks, _ in new.values():
                pinned.update(blocks)
            after = sum(entry_size(b, n) for b, n in pinned.items())
            if after > self.max_bytes:
                first, more = next(iter(new.items())), len(new) - 1
                what = first[1][1].get("path", first[0]) + (f" and {more} more" if more else "")
                raise PinLimitError(
                    f"cannot pin {what}: pinned blocks would take {human(after)}, over the "
                    f"cache limit of {human(self.max_bytes)} ({self.directory}); unpin "
                    "something (modelfs warmup --unpin PATH) or raise --cache-size"
                )
            for key, (blocks, meta) in new.items():
                doc = {"key": key, "meta": meta, "blocks": blocks, "time": time.time()}
                path = self._pin_path(key)
                tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}")
                tmp.write_text(json.dumps(doc))
                os.replace(tmp, path)

    def unpin(self, key: str) -> bool:
        """Remove a pin; whether there was one."""
        with self._locked():
            try:
                self._pin_path(key).unlink()
            except FileNotFoundError:
                return False
            return True


class _DirLock:
    """An flock on a file: between processes sharing a cache directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self._f = open(self.path, "a")  # noqa: SIM115 - closed in __exit__
        fcntl.flock(self._f, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


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
