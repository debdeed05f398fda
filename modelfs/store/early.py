"""Uploading the blocks of a safetensors file while it is still being written.

A mount commits a file when it is closed: split, hash, compress, upload,
then the manifest. For a model written front to back (cp, save_file) most of
that can happen before the close. EarlyUploader is told how far the file has
been written; once the header is complete it knows where every tensor's
blocks will be cut (the cuts depend on the header alone), and uploads the
blocks that are wholly written, a pack at a time.

The commit is given what was uploaded (known(): the blocks' spans, their ids
and the content hash of their bytes), so it reads and hashes only the rest,
and checks those blocks against the block index and collections as any put
does. That holds only while the file is written front to back: the mount
drops the uploader at the first write that is not an append, or a truncate,
and the commit then reads, hashes and uploads the whole file (what was sent
early and changed since is unreferenced garbage, as is everything uploaded
early for a file that is never committed).
"""

from __future__ import annotations

import logging

import blake3

from ..errors import ModelfsError
from .chunking import Gap, RandomAccess, Span, layout_cuts
from .store import KnownBlocks, Store
from .tensorfile import header_size_needed, parse_layout

log = logging.getLogger(__name__)

# A safetensors header never says more than this many bytes follow it: the file's
# real size is not known while it is written, and parse_layout checks offsets against it.
_UNKNOWN_SIZE = 1 << 62


class EarlyUploader:
    """Uploads the wholly written blocks of one file being written front to back.

    advance() blocks (run it in a thread); calls must not overlap.
    """

    def __init__(self, store: Store, source: RandomAccess, path: str) -> None:
        self.store = store
        self.source = source
        self.path = path
        self.active = True  # False once the file turns out not to suit (or a call failed)
        self.uploaded_to = 0  # every block ending at or before this offset is uploaded
        self.uploaded_bytes = 0  # stored bytes sent early
        self._spans: list[Span] | None = None
        self._next = 0  # index in _spans of the first block not yet uploaded
        self._ids: list[str] = []  # of the blocks uploaded
        self._hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)  # of their bytes

    @property
    def spans(self) -> list[Span] | None:
        """The blocks this uploader may upload, in order, once the header is written
        (None before): always a prefix of what split() cuts the whole file into."""
        return self._spans

    def known(self) -> KnownBlocks | None:
        """What the commit need not read or hash again (None: nothing, or a batch failed
        part way, so the content hash may hold part of it)."""
        if not self.active or self._spans is None or not self._next:
            return None
        return KnownBlocks(self._spans[: self._next], list(self._ids), self._hasher.copy())

    def advance(self, written: int, *, minimum: int) -> None:
        """Upload the blocks within the first `written` bytes once they add up to `minimum`."""
        if not self.active:
            return
        try:
            if self._spans is None and not self._plan(written):
                return
            assert self._spans is not None
            end = self._next
            while end < len(self._spans) and self._spans[end].end <= written:
                end += 1
            if end == self._next or self._spans[end - 1].end - self.uploaded_to < minimum:
                return
            batch = self._spans[self._next : end]
            ids, uploaded = self.store.upload_blocks(self.source, batch, self._hasher)
            self.uploaded_bytes += uploaded
            self._ids += ids
            self._next = end
            self.uploaded_to = batch[-1].end
            log.debug("%s: blocks up to offset %d uploaded early", self.path, self.uploaded_to)
        except (ModelfsError, OSError) as e:
            # The commit at close uploads whatever is missing, and reports its own errors.
            self.active = False
            log.info("uploading %s early stopped, the commit will upload it: %s", self.path, e)

    def _plan(self, written: int) -> bool:
        """Find the block cuts once the header is written; False until then (or never)."""
        if written < 8:
            return False
        need = header_size_needed(self.source.pread(0, 8))
        if need == 8:  # no safetensors header: cut by content at the commit
            self.active = False
            return False
        if written < need:
            return False
        layout = parse_layout(self.source.pread(0, need), _UNKNOWN_SIZE)
        if layout is None:
            self.active = False
            return False
        spans: list[Span] = []
        for cut in layout_cuts(layout, _UNKNOWN_SIZE, self.store.config.chunking.max_size):
            if isinstance(cut, Gap):
                break  # a gap is cut by content: leave it and what follows to the commit
            spans.append(cut)
        self._spans = spans
        return True
