"""Reading committed versions through the mount: read handles and the readahead policy.

A file opened for reading is pinned to the version current at open, so it
never changes under its reader. Reads go through the BlockReader (memory
cache, disk cache, verified fetches). Readahead is a plain object fed with
each read's offset and size, which answers what to fetch ahead of it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import CollectedError, MissingPackError, ModelfsError
from ..reader import BlockReader
from ..store import Manifest, Version
from ..store.refs import load_ref

MIN_READAHEAD = 4 << 20
MAX_READAHEAD = 64 << 20
log = logging.getLogger(__name__)

# Eight times the kernel's own readahead (mount.py raises it to 1 MiB): page faults
# in an mmap make the kernel read 1 MiB around each, in order through a tensor, which
# looks sequential but is all the reader wants (safetensors maps the file and touches
# one tensor; reads until then fetch only the frames they touch). Past it, whole blocks
# in big batches.
SEQUENTIAL_THRESHOLD = 8 << 20
NEAR = 8 << 20  # reads this close to the last ones continue a sequential run


@dataclass
class Readahead:
    """When and how far to read ahead of one reader.

    The kernel's own readahead sends several requests at once, which may arrive
    out of order: a read near where the last ones ended still counts as
    sequential. After SEQUENTIAL_THRESHOLD bytes read back to back, each read
    asks for a window that doubles up to MAX_READAHEAD, topped up in big steps
    (each one batch of requests, not a block per read). Isolated reads and mmap
    page faults stay below the threshold and fetch nothing extra.
    """

    last_end: int = 0
    sequential: int = 0  # bytes read back to back up to last_end
    window: int = 0
    prefetched_to: int = 0  # readahead has been started up to this offset
    _near: bool = field(default=False, repr=False)  # the last read continued the run

    def on_read(self, offset: int, size: int) -> tuple[int, int] | None:
        """Note a read; return the (offset, length) to fetch ahead of it, if any."""
        self._near = self.last_end - NEAR <= offset <= self.last_end + NEAR
        self.sequential = self.sequential + size if self._near and self.last_end else 0
        if offset == 0:
            self.sequential = size
        if self.sequential < SEQUENTIAL_THRESHOLD:
            self.window = 0
            self.prefetched_to = 0
            return None
        self.window = min(MAX_READAHEAD, max(MIN_READAHEAD, self.window * 2))
        start = max(offset + size, self.prefetched_to)
        end = offset + size + self.window
        if end - start < self.window // 2:
            return None
        self.prefetched_to = end
        return start, end - start

    def on_served(self, offset: int, length: int) -> None:
        """Note how much the read returned (short at the end of the file)."""
        end = offset + length
        self.last_end = max(self.last_end, end) if self._near else end


@dataclass(eq=False)  # a handle is itself, not its fields: two opens are two readers
class ReadHandle:
    path: str
    inode: int
    version: Version
    manifest: Manifest
    readahead: Readahead = field(default_factory=Readahead)


class Reads:
    """Serves read requests of read handles."""

    def __init__(self, reader: BlockReader, run: Callable[..., Awaitable[Any]]) -> None:
        self.reader = reader
        self._run = run
        self.errors = 0

    async def read(self, handle: ReadHandle, offset: int, size: int) -> bytes | memoryview:
        ahead = handle.readahead.on_read(offset, size)
        if ahead is not None:
            self.reader.prefetch(handle.manifest, ahead[0], ahead[1], handle.path)
        try:
            data = self.reader.read_cached(handle.manifest, offset, size)
            if data is None:
                # Outside a sequential run (a header, a tensor through mmap), fetch only
                # the frames of a block that the read touches.
                partial = handle.readahead.sequential < SEQUENTIAL_THRESHOLD
                data = await self._run(
                    functools.partial(
                        self.reader.read,
                        handle.manifest,
                        offset,
                        size,
                        path=handle.path,
                        partial=partial,
                    )  # fmt: skip
                )
        except MissingPackError as e:
            self.errors += 1
            note = await self._run(self._forgotten, handle)
            if note is not None:
                raise CollectedError(
                    f"{handle.path} version {handle.version.version} was forgotten ({note}) "
                    "and collected while it was open: reopen the file for its current version"
                ) from e
            log.error("%s version %d: %s", handle.path, handle.version.version, e)
            raise
        except ModelfsError:
            self.errors += 1
            raise
        handle.readahead.on_served(offset, len(data))
        return data

    def _forgotten(self, handle: ReadHandle) -> str | None:
        """Why the handle's version is gone from its history (None: it is not)."""
        try:
            ref, _ = load_ref(self.reader.store.backend, handle.path)
        except ModelfsError:
            return None
        n = handle.version.version
        if n <= len(ref.versions) and ref.versions[n - 1].forgotten:
            return ref.versions[n - 1].forgotten_note()
        return None
