"""Reading stored files: byte ranges of a version, through the caches.

BlockReader turns "bytes [offset, offset+n) of this manifest" into the few
blocks that overlap, takes each from the memory cache, then the disk cache,
and fetches the rest from the store in one parallel, coalesced batch.
Concurrent readers of one block share one fetch. A small read of a block
that is not cached (a header, one tensor through mmap) fetches, checks and
decodes only the frames of the block it touches (format 5), kept in the memory
cache beside whole blocks; a sequential reader fetches whole blocks. Fetched blocks go to the
disk cache from a background thread, so a cold read does not wait on cache
writes. StoredFile wraps it as a lazy, seekable, read-only file object;
sequential reading starts fetching the next 32 MiB in the background
(readahead) while the caller consumes this read.
"""

from __future__ import annotations

import io
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .cache import DiskBlockCache, MemoryBlockCache
from .errors import CollectedError, CorruptionError, MissingPackError, ModelfsError
from .store import BlockRef, Manifest, Store
from .store.codecs import is_framed
from .store.paths import version_address
from .store.refs import load_ref

log = logging.getLogger(__name__)

DEFAULT_READAHEAD = 32 << 20
DEFAULT_MEMORY_CACHE = 128 << 20
# A read of at most this much of a block that is not cached fetches only the frames it
# touches; more, and the whole block is worth its one request.
PARTIAL_READ_MAX = 1 << 20
CACHE_BACKLOG_BYTES = 64 << 20


@dataclass
class ReadStats:
    bytes_served: int = 0
    bytes_fetched: int = 0  # plaintext bytes of blocks fetched from the store
    blocks_fetched: int = 0
    frames_fetched: int = 0  # of blocks read in part
    memory_hits: int = 0
    disk_hits: int = 0


class BlockReader:
    def __init__(
        self,
        store: Store,
        disk_cache: DiskBlockCache | None = None,
        memory_cache_bytes: int = DEFAULT_MEMORY_CACHE,
    ) -> None:
        self.store = store
        self.disk_cache = disk_cache
        self.memory = MemoryBlockCache(memory_cache_bytes)
        self.stats = ReadStats()
        self._inflight: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="modelfs-readahead")
        self._cache_writer = ThreadPoolExecutor(1, thread_name_prefix="modelfs-cache-writer")
        # At most this many bytes wait for the cache writer; past it, readers write their
        # blocks themselves. Counted in bytes: a run of small blocks (biases) is no backlog.
        self._cache_backlog_bytes = 0
        self._cache_backlog_limit = CACHE_BACKLOG_BYTES

    def close(self) -> None:
        self._prefetcher.shutdown(wait=True, cancel_futures=True)
        self._cache_writer.shutdown(wait=True)
        with self._lock:  # wake anyone waiting on a readahead that was cancelled
            for event in self._inflight.values():
                event.set()
            self._inflight.clear()

    def _cache_on_disk(self, block_id: str, data: bytes) -> None:
        """Write a block to the disk cache in the background, unless too much is queued."""
        if self.disk_cache is None:
            return
        cache = self.disk_cache
        with self._lock:
            queue = self._cache_backlog_bytes + len(data) <= self._cache_backlog_limit
            if queue:
                self._cache_backlog_bytes += len(data)
        if not queue:
            cache.put(block_id, data)  # the writer is behind: write it ourselves
            return

        def write() -> None:
            try:
                cache.put(block_id, data)
            finally:
                with self._lock:
                    self._cache_backlog_bytes -= len(data)

        self._cache_writer.submit(write)

    def prefetch(self, manifest: Manifest, offset: int, length: int, path: str = "") -> None:
        """Start fetching the blocks of a range in the background; a later read shares the fetch."""
        blocks = [
            b for b in manifest.blocks_for(offset, length)
            if self.memory.get(b.location.block_id) is None
        ]  # fmt: skip
        if not blocks:
            return
        disk = self.disk_cache
        cached = [b for b in blocks if disk is not None and disk.contains(b.location.block_id)]
        # Claim the blocks to fetch now, not when the task runs: a read that needs one of
        # them meanwhile waits for this one batch (one request per run of a pack) instead
        # of fetching its block alone.
        mine, _ = self._claim([b for b in blocks if b not in cached])
        if disk is not None and cached:
            disk.will_need([b.location.block_id for b in cached])

        def run() -> None:
            try:
                self._blocks(cached, path)
                self._fetch_claimed(mine, path)
            except Exception as e:  # the read that needs these blocks will raise it
                log.debug("readahead of %s at %d failed: %s", path, offset, e)
            finally:
                self._release(mine)

        self._prefetcher.submit(run)

    def opened(self, manifest: Manifest) -> None:
        """A reader opened this version: read the tables of its framed blocks' packs in
        the background, so that its first small reads (a header, one tensor through mmap)
        wait only for their frames."""
        self.store.preload_tables(
            b.location.pack for b in manifest.blocks if is_framed(b.location.codec)
        )

    def read(
        self, manifest: Manifest, offset: int, length: int, *, path: str = "",
        partial: bool = False,
    ) -> bytes:  # fmt: skip
        """File bytes [offset, offset + length), short only at the end of the file
        (partial: a small read may fetch only the frames of a block it touches)."""
        out = bytearray(max(0, min(length, manifest.size - offset)))
        self.read_into(manifest, offset, memoryview(out), path=path, partial=partial)
        return bytes(out)

    def read_cached(
        self, manifest: Manifest, offset: int, length: int
    ) -> bytes | memoryview | None:
        """The bytes, if every block they need is in the memory cache; else None.

        Cheap enough to run on an event loop: no I/O, no hashing."""
        length = max(0, min(length, manifest.size - offset))
        if length == 0:
            return b""
        parts = []
        for b in manifest.blocks_for(offset, length):
            data = self.memory.get(b.location.block_id)
            if data is None:
                return None
            lo, hi = max(offset, b.file_offset), min(offset + length, b.end)
            parts.append(memoryview(data)[lo - b.file_offset : hi - b.file_offset])
        self.stats.memory_hits += len(parts)
        self.stats.bytes_served += length
        # One block: a view of it, no copy (FUSE replies take any buffer).
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_into(
        self, manifest: Manifest, offset: int, view: memoryview, *, path: str = "",
        partial: bool = False,
    ) -> int:  # fmt: skip
        """Copy file bytes from offset into view; returns how many (short only at EOF)."""
        length = max(0, min(len(view), manifest.size - offset))
        if length == 0:
            return 0
        wanted = manifest.blocks_for(offset, length)
        pieces = self._pieces(wanted, offset, length, path) if partial else {}
        got = self._blocks([b for b in wanted if b.location.block_id not in pieces], path)
        for b in wanted:
            lo, hi = max(offset, b.file_offset), min(offset + length, b.end)
            bid = b.location.block_id
            if bid in pieces:
                start, data = pieces[bid]
                view[lo - offset : hi - offset] = data[
                    lo - b.file_offset - start : hi - b.file_offset - start
                ]
            else:
                data = got[bid]
                view[lo - offset : hi - offset] = data[lo - b.file_offset : hi - b.file_offset]
        self.stats.bytes_served += length
        return length

    def _pieces(
        self, blocks: list[BlockRef], offset: int, length: int, path: str
    ) -> dict[str, tuple[int, bytes]]:
        """For the blocks of a small read that no cache holds and no fetch is bringing:
        (where in the block, bytes) of the frames the read touches, from the memory cache
        or fetched (one ranged GET a block), verified frame by frame."""
        out: dict[str, tuple[int, bytes]] = {}
        disk = self.disk_cache
        for b in blocks:
            bid = b.location.block_id
            lo, hi = max(offset, b.file_offset) - b.file_offset, min(offset + length, b.end)
            hi -= b.file_offset
            if (
                bid in out
                or hi - lo > PARTIAL_READ_MAX
                or 2 * (hi - lo) > b.location.length
                or not is_framed(b.location.codec)
                or bid in self._inflight
                or self.memory.get(bid) is not None
                or (disk is not None and disk.contains(bid))
            ):
                continue
            try:
                loc = self.store.frames_of(b.location)
                if loc is None or loc.frames is None:
                    continue
                covering = loc.frames.covering(lo, hi)
                frames = [self.memory.get(f"{bid}#{i}") for i in covering]
                missing = [i for i, f in zip(covering, frames, strict=True) if f is None]
                if missing:
                    fetch = range(missing[0], missing[-1] + 1)
                    fetched = self.store.read_frames(loc, fetch)
                    for i, data in zip(fetch, fetched, strict=True):
                        self.memory.put(f"{bid}#{i}", data)
                        frames[i - covering.start] = data
                        self.stats.frames_fetched += 1
                        self.stats.bytes_fetched += len(data)
            except CorruptionError as e:
                if not isinstance(e, MissingPackError):
                    log.error(
                        "corrupt frame of block %s of %s at offset %d (pack %s): %s",
                        bid, path, b.file_offset, e.pack, e,
                    )  # fmt: skip
                raise e.with_file(path or "<stored file>", b.file_offset) from None
            start = covering.start * loc.frames.size
            out[bid] = (start, frames[0] if len(frames) == 1 else b"".join(frames))
        return out

    def _blocks(self, blocks: list[BlockRef], path: str) -> dict[str, bytes]:
        got: dict[str, bytes] = {}
        missing: list[BlockRef] = []
        for b in blocks:
            bid = b.location.block_id
            if bid in got:
                continue
            data = self.memory.get(bid)
            if data is not None:
                self.stats.memory_hits += 1
            elif self.disk_cache is not None and (data := self.disk_cache.get(bid)) is not None:
                self.stats.disk_hits += 1
                self.memory.put(bid, data)
            if data is not None:
                got[bid] = data
            else:
                missing.append(b)
        if missing:
            got.update(self._fetch(missing, path))
        return got

    def _fetch(self, blocks: list[BlockRef], path: str) -> dict[str, bytes]:
        """Fetch from the store, sharing fetches already under way in other threads."""
        mine, theirs = self._claim(blocks)
        try:
            got = self._fetch_claimed(mine, path)
        finally:
            self._release(mine)
        for b, event in theirs:
            event.wait()
            data = self.memory.get(b.location.block_id)
            if data is None:  # their fetch failed or was evicted: fetch it ourselves
                data = self._fetch([b], path)[b.location.block_id]
            got[b.location.block_id] = data
        return got

    def _claim(
        self, blocks: list[BlockRef]
    ) -> tuple[list[BlockRef], list[tuple[BlockRef, threading.Event]]]:
        """(blocks this caller must fetch, blocks another fetch already has, with its event)."""
        mine: list[BlockRef] = []
        theirs: list[tuple[BlockRef, threading.Event]] = []
        with self._lock:
            for b in blocks:
                bid = b.location.block_id
                if bid in self._inflight:
                    if all(m.location.block_id != bid for m in mine):
                        theirs.append((b, self._inflight[bid]))
                else:
                    self._inflight[bid] = threading.Event()
                    mine.append(b)
        return mine, theirs

    def _release(self, claimed: list[BlockRef]) -> None:
        """Wake the readers waiting for claimed blocks (fetched or not)."""
        with self._lock:
            for b in claimed:
                event = self._inflight.pop(b.location.block_id, None)
                if event is not None:
                    event.set()

    def _fetch_claimed(self, mine: list[BlockRef], path: str) -> dict[str, bytes]:
        """Fetch claimed blocks in one coalesced batch into the caches (the caller releases)."""
        got: dict[str, bytes] = {}
        if not mine:
            return got
        try:
            datas = self.store.read_blocks(mine)
        except CorruptionError as e:
            bad = next((b for b in mine if b.location.block_id == e.block_id), mine[0])
            if isinstance(e, MissingPackError):
                # A collected version or damage: whoever reads decides which, and says so.
                raise e.with_file(path or "<stored file>", bad.file_offset) from None
            log.error(
                "corrupt block %s of %s at offset %d (pack %s): %s",
                e.block_id, path, bad.file_offset, e.pack, e,
            )  # fmt: skip
            raise e.with_file(path or "<stored file>", bad.file_offset) from None
        for b, data in zip(mine, datas, strict=True):
            bid = b.location.block_id
            got[bid] = data
            self.memory.put(bid, data)
            self._cache_on_disk(bid, data)
            self.stats.blocks_fetched += 1
            self.stats.bytes_fetched += len(data)
        return got


class StoredFile(io.RawIOBase):
    """One version of a stored file as a lazy, seekable, read-only binary file."""

    def __init__(self, reader: BlockReader, manifest: Manifest, path: str, version: int) -> None:
        super().__init__()
        self._reader = reader
        self.manifest = manifest
        self.path = path
        self.version = version
        self._pos = 0
        self._last_end = -1

    @property
    def size(self) -> int:
        return self.manifest.size

    @property
    def content_hash(self) -> str:
        """The whole file's hash, as addresses write it (blake3:<hex>)."""
        return self.manifest.content_hash

    @property
    def pinned(self) -> str:
        """An address of exactly this version (PATH@N)."""
        return version_address(self.path, self.version)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("I/O operation on closed file")
        view = memoryview(buffer).cast("B")
        sequential = self._pos == self._last_end or self._pos == 0
        if sequential:  # fetch what comes next while the caller works on this
            self._reader.prefetch(
                self.manifest, self._pos + len(view), DEFAULT_READAHEAD, self.path
            )
        try:
            n = self._reader.read_into(self.manifest, self._pos, view, path=self.path)
        except MissingPackError as e:
            raise self._collected(e) from e
        self._pos += n
        self._last_end = self._pos
        return n

    def _collected(self, e: MissingPackError) -> ModelfsError:
        """CollectedError if the version was forgotten (and so collected) while open;
        otherwise the damage itself."""
        try:
            entry = load_ref(self._reader.store.backend, self.path)[0].versions[self.version - 1]
        except (ModelfsError, IndexError):
            return e
        if not entry.forgotten:
            return e
        return CollectedError(
            f"{self.path} version {self.version} was forgotten ({entry.forgotten_note()}) and "
            "collected while it was open: open it again for its current version"
        )

    def readall(self) -> bytes:
        chunks = []
        while True:
            chunk = self.read(16 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
