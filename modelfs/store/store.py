"""The Store: files in, verified bytes out, over any Backend.

Writing a file: split it (chunking), hash every block, skip blocks the store
already has (dedup), compress the rest (codecs) into packs, upload each pack
and then its index object, then the manifest, then publish the version on
the path's ref by compare-and-swap. That order is the crash-safety rule: a
crash at any point leaves the previous version intact and at most
unreferenced packs behind.

Reading: read_blocks fetches the stored bytes of any set of blocks, merging
neighbours in one pack into one ranged read, in parallel; every block's
checksum is checked before decompression and its id after. No unverified
byte leaves this module.

Caveats:
- Concurrent puts in one process may both upload a block new to both
  (harmless garbage, for a future gc).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

import blake3

from ..backends.base import Backend, ByteRange
from ..errors import (
    AlreadyExistsError,
    CollectedError,
    ConflictError,
    CorruptionError,
    DirectoryNotEmptyError,
    FormatError,
    InvalidArgumentError,
    IsADirectoryError_,
    MissingPackError,
    ModelfsError,
    NameTooLongError,
    NotADirectoryError_,
    NotFoundError,
    PermissionDeniedError,
    StoreNotFoundError,
)
from . import cas, codecs
from .blockindex import BlockIndex
from .checkpoints import torch_cuts
from .chunking import RandomAccess, Span, split
from .condemned import Check, CondemnedView
from .format import (
    CONFIG_KEY,
    FRAMES_VERSION,
    NAMES_VERSION,
    SHORTENED_KEYS_VERSION,
    StoreConfig,
    block_id,
    checksum,
    config_with_version,
    frame_hash,
    index_key,
    manifest_key,
    moved_key,
    object_id,
    pack_key,
)
from .manifest import BlockRef, Manifest
from .metrics import Metrics, check_metrics
from .namespace import RefCache, Tree
from .packs import (
    MAX_MOVES,
    BlockLocation,
    Frames,
    PackWriter,
    decode_table,
    frames_of_stored,
    parse_moved,
    read_trailer,
)
from .paths import (
    META_PREFIX,
    REFS_PREFIX,
    describe_key,
    dir_marker_key,
    dir_ref_prefix,
    is_dir_marker_key,
    is_file_ref_key,
    is_shortened_key,
    marker_body,
    marker_path,
    normalize_path,
    ref_key,
)
from .refs import Ref, Version, append_version, load_ref
from .registry import NamesRecord, is_names_key, load_record, set_aside
from .snapshots import load_snapshot
from .tensorfile import TensorLayout, header_size_needed, parse_layout

log = logging.getLogger(__name__)

T = TypeVar("T")
U = TypeVar("U")

Source = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO
Progress = Callable[[int], None]

# Neighbouring blocks of a pack closer than this are fetched in one request.
COALESCE_GAP = 1 << 20
COALESCE_MAX = 64 << 20
UPLOADS_IN_FLIGHT = 4  # packs (32 MiB by default) uploading at once during a put
# Manifests kept in memory (a 1 GiB safetensors file's is about 300 KB of JSON).
MANIFEST_CACHE_ENTRIES = 64
# Pack tables kept in memory for reads of single frames (a 32 MiB pack's is a few KB).
TABLE_CACHE_ENTRIES = 4096
# Requests to the backend in flight at once. scripts/bench.py --s3-requests
# (SeaweedFS, 537 MB file, 0 and 20 ms round trips): N=1 is 10-26% slower to
# read, N=2..32 all within noise for one reader and for put. 8 leaves room for
# several readers at once and for S3's per-connection bandwidth, at worst
# 8 x 64 MiB of coalesced ranges in memory.
DEFAULT_MAX_REQUESTS = 8


@dataclass
class KnownBlocks:
    """The first blocks of a file, uploaded while it was written (early.py) and not
    changed since: their spans, ids, and the content hash of their bytes so far. A put
    given them neither reads nor hashes those bytes again."""

    spans: list[Span]
    ids: list[str]
    hasher: Any  # blake3, fed the bytes of the spans in order

    @property
    def end(self) -> int:
        return self.spans[-1].end if self.spans else 0


@dataclass(frozen=True)
class PutResult:
    path: str
    version: int
    size: int
    blocks: int
    new_blocks: int
    new_bytes: int  # plaintext bytes of blocks the store did not have
    uploaded_bytes: int  # stored (compressed) bytes of those blocks
    manifest: str
    layout: str
    seconds: float


@dataclass(frozen=True)
class FileInfo:
    path: str
    version: int
    size: int
    time: float
    content_hash: str


@dataclass
class FsckReport:
    packs_checked: int = 0
    blocks_checked: int = 0
    bytes_checked: int = 0
    files_checked: int = 0
    versions_checked: int = 0
    names_checked: int = 0  # tags and aliases whose targets were checked
    problems: list[str] = field(default_factory=list)
    corrupt_blocks: dict[str, str] = field(default_factory=dict)  # block id -> why
    missing_packs: list[str] = field(default_factory=list)
    affected: list[dict[str, object]] = field(default_factory=list)  # path, version, offset, ...
    repaired: list[str] = field(default_factory=list)  # what --repair did
    # Harmless and reclaimable (`modelfs gc`): never a reason for fsck to fail.
    garbage: dict[str, int] = field(default_factory=dict)
    forgotten_versions: int = 0  # skipped: a retention rule removed them

    @property
    def ok(self) -> bool:
        return not (self.problems or self.corrupt_blocks or self.missing_packs or self.affected)


class Store:
    def __init__(
        self, backend: Backend, config: StoreConfig, *, max_requests: int = DEFAULT_MAX_REQUESTS
    ) -> None:
        if max_requests < 1:
            raise InvalidArgumentError(f"max_requests must be at least 1, not {max_requests}")
        self.backend = backend
        self.config = config
        self.index = BlockIndex()
        # The requests to the backend in flight at once (ranged GETs, pack uploads).
        self._io = ThreadPoolExecutor(max_requests, thread_name_prefix="modelfs-io")
        self._cpu = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="modelfs-cpu")
        self._index_lock = threading.Lock()
        self._index_loaded = False
        self._config_lock = threading.Lock()
        self._ref_cache = RefCache()
        self._condemned = CondemnedView(backend)
        self._condemned_packs: frozenset[str] = frozenset()  # as the last check found them
        self._moved: dict[str, dict[int, BlockLocation]] = {}  # moved/ records are immutable
        self._moved_lock = threading.Lock()
        # Manifests are immutable and checked against their id: keep the recent ones.
        self._manifests: OrderedDict[str, Manifest] = OrderedDict()
        self._manifests_lock = threading.Lock()
        self._manifest_loads: dict[str, threading.Lock] = {}
        # Pack tables read for frame reads, by pack: {offset: location}. Immutable.
        self._tables: OrderedDict[str, dict[int, BlockLocation]] = OrderedDict()
        self._tables_lock = threading.Lock()
        # Its own threads: table reads ahead of need never queue before data reads.
        self._tables_io = ThreadPoolExecutor(2, thread_name_prefix="modelfs-tables")

    # opening

    @classmethod
    def create(
        cls,
        backend: Backend,
        config: StoreConfig | None = None,
        *,
        unsafe_single_writer: bool = False,
    ) -> Store:
        """Write the config object of a new store; AlreadyExistsError if there is one.

        Refuses a backend whose conditional writes do not hold (a server that ignores
        If-None-Match / If-Match), unless the user accepts the risk: then only one
        writer at a time may use the store, or versions can be lost.
        """
        config = config or StoreConfig()
        try:
            backend.put_if_absent(CONFIG_KEY, config.to_bytes())
        except AlreadyExistsError:
            raise AlreadyExistsError(f"{backend.url} already holds a modelfs store") from None
        if not unsafe_single_writer:
            try:
                check_conditional_writes(backend)
            except BaseException:
                backend.delete(CONFIG_KEY)  # refused: leave no store behind
                raise
        return cls(backend, config)

    @classmethod
    def open(cls, backend: Backend, *, max_requests: int = DEFAULT_MAX_REQUESTS) -> Store:
        try:
            data = backend.get(CONFIG_KEY)
        except NotFoundError:
            raise StoreNotFoundError(
                f"no modelfs store at {backend.url} (run `modelfs init {backend.url}`)"
            ) from None
        return cls(backend, StoreConfig.from_bytes(data), max_requests=max_requests)

    def can_write(self) -> bool:
        """Whether the backend takes writes from us: False where it refuses them (a
        read-only credential, a read-only filesystem). Writes and removes a probe/ object."""
        key = f"probe/{os.urandom(8).hex()}"
        try:
            self.backend.put_if_absent(key, b"write probe")
        except PermissionDeniedError:
            return False
        try:
            self.backend.delete(key)
        except PermissionDeniedError:
            log.warning("could write but not delete the probe %s; it is harmless", key)
        return True

    def close(self) -> None:
        self._tables_io.shutdown(wait=True, cancel_futures=True)
        self._io.shutdown(wait=True)
        self._cpu.shutdown(wait=True)
        self.backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refresh_index(self) -> None:
        with self._index_lock:
            self.index.refresh(self.backend, self._io)
            self._index_loaded = True

    # writing

    def put(
        self,
        path: str,
        source: Source,
        *,
        metadata: dict[str, str] | None = None,
        message: str = "",
        progress: Progress | None = None,
        mode: int = 0,
        metrics: Metrics | None = None,
        known: KnownBlocks | None = None,
    ) -> PutResult:
        """Store source as the next version of path (mode: POSIX bits; 0 for a plain file),
        with metrics recorded in the same commit (known: its first blocks, uploaded early
        and unchanged since)."""
        started = time.monotonic()
        path = normalize_path(path)
        key = self.check_new_path(path)
        self._check_namespace(path)
        metadata = _check_metadata(metadata)
        metrics = check_metrics(metrics)
        check = self.check()
        with _open_source(source) as src:
            layout, layout_kind = _layout_of(src)
            spans = split(
                src.buffer if src.buffer is not None else src, layout, self.config.chunking
            )
            skip = 0
            if known is not None and spans[: len(known.spans)] == known.spans:
                skip = len(known.spans)  # the same cuts: the early upload did these
                if progress:
                    progress(known.end)
            ids, new_blocks, new_bytes, uploaded, content_hash = self._store_blocks(
                src, spans[skip:], progress,
                hasher=known.hasher.copy() if skip and known is not None else None,
            )  # fmt: skip
            if skip and known is not None:
                ids = known.ids + ids
            for _attempt in range(cas.ATTEMPTS):
                if time.monotonic() > check.started + self.config.commit_window / 2:
                    check = self.check()  # a long upload: what collections condemned since
                blocks, rescued = self._locate(src, spans, ids, check)
                uploaded += rescued
                manifest = Manifest(
                    size=sum(s.length for s in spans),
                    content_hash=f"blake3:{content_hash}",
                    layout=layout_kind,
                    blocks=tuple(blocks),
                    metadata=metadata,
                )
                manifest_id = self._store_manifest(manifest, check)
                self.require_format(key)
                if metrics:
                    self.require_version(NAMES_VERSION, f"recording metrics with {path}")
                try:
                    version = append_version(
                        self.backend, path, manifest_id, size=manifest.size,
                        content_hash=manifest.content_hash, message=message, mode=mode,
                        metrics=metrics, deadline=check.deadline(self.config.commit_window),
                    )  # fmt: skip
                    break
                except cas.DeadlinePassed:
                    log.info(
                        "committing %s took longer than the commit window; checking again", path
                    )
                    check = self.check()
            else:
                raise ConflictError(f"could not commit {path} within the store's commit window")
        result = PutResult(
            path, version.version, manifest.size, len(blocks), new_blocks, new_bytes, uploaded,
            manifest_id, manifest.layout, time.monotonic() - started,
        )  # fmt: skip
        log.info(
            "stored %s version %d: %d bytes, %d/%d blocks new, %d bytes uploaded",
            path, result.version, result.size, new_blocks, len(blocks), uploaded,
        )  # fmt: skip
        return result

    def upload_blocks(
        self, source: RandomAccess, spans: list[Span], hasher: Any = None
    ) -> tuple[list[str], int]:
        """Store the blocks of these spans of source that the store lacks; returns their
        ids and the stored bytes uploaded, and feeds their bytes to hasher. No version is
        made: a later put finds them and skips them (or is given them: KnownBlocks)."""
        if not self._index_loaded:
            self.check()
        ids, _, _, uploaded, _ = self._store_blocks(source, spans, None, hasher=hasher)
        return ids, uploaded

    # what collections condemned (condemned.py; FORMAT.md, "Collection")

    def check(self, *, index: bool = True) -> Check:
        """Start a commit window: read the collection records, then (index) the block
        index afresh without the packs they condemn or whose index object is gone.
        Every reference a writer then makes must be visible by the window's end."""
        started = time.monotonic()
        condemned = self._condemned.load()
        self._condemned_packs = condemned.packs
        if index:
            with self._index_lock:
                self.index.refresh(self.backend, self._io, exclude=condemned.packs)
                self._index_loaded = True
        return Check(started, condemned)

    def _locate(
        self, source: RandomAccess, spans: list[Span], ids: list[str], check: Check
    ) -> tuple[list[BlockRef], int]:
        """Each span's block in a pack writers may reference now; blocks found only in
        condemned packs are stored again, in a pack of their own (a nonce makes it a new
        pack even if it holds the same blocks). Returns the refs and the bytes uploaded.

        A pack this put uploaded itself may be a condemned one: storing the blocks of a
        forgotten version again gives the same table, so the same pack id, and the upload
        finds the pack still there. It is not referenced either."""
        condemned = check.condemned.packs
        if condemned:
            self.index.drop(condemned)
        missing = [
            i for i, bid in enumerate(ids)
            if (loc := self.index.get(bid)) is None or loc.pack in condemned
        ]  # fmt: skip
        uploaded = 0
        if missing:
            log.info(
                "storing %d blocks again: the packs that held them are condemned", len(missing)
            )
            again = self._store_blocks(
                source, [spans[i] for i in missing], None, nonce=os.urandom(16).hex()
            )
            if again[0] != [ids[i] for i in missing]:
                raise ModelfsError("the file changed while it was being stored; store it again")
            uploaded = again[3]
        blocks = []
        for span, bid in zip(spans, ids, strict=True):
            loc = self.index.get(bid)
            if loc is None or loc.pack in condemned:
                raise ConflictError(f"block {bid} vanished from the index twice; try again")
            blocks.append(BlockRef(span.offset, loc))
        return blocks, uploaded

    def _store_manifest(self, manifest: Manifest, check: Check) -> str:
        """Upload a manifest; one that a collection condemned is stored again, as a copy
        under a new id (a nonce), since the condemned one will be deleted."""
        if manifest.id in check.condemned.manifests:
            manifest = dataclasses.replace(manifest, nonce=os.urandom(16).hex())
        try:
            self.backend.put_if_absent(manifest_key(manifest.id), manifest.to_bytes())
        except AlreadyExistsError:
            pass  # the same content and metadata were stored before
        return manifest.id

    def referencable(self, manifest_id: str, check: Check) -> str:
        """manifest_id, or the id of a copy of it that no collection has condemned (with
        its blocks copied out of condemned packs): for a new reference to stored content
        (a rename, a chmod, a snapshot). A current version's content is almost never
        condemned; this is for the moment when it has just been forgotten elsewhere."""
        condemned = check.condemned
        if not condemned:
            return manifest_id
        manifest = self.load_manifest(manifest_id)
        stale = [b.location for b in manifest.blocks if b.location.pack in condemned.packs]
        if not stale and manifest_id not in condemned.manifests:
            return manifest_id
        moved = self.copy_blocks(stale, nonce=os.urandom(16).hex()) if stale else {}
        blocks = tuple(
            BlockRef(b.file_offset, moved.get((b.location.pack, b.location.offset), b.location))
            for b in manifest.blocks
        )
        copy = dataclasses.replace(manifest, blocks=blocks)
        return self._store_manifest(copy, check)

    def copy_blocks(
        self, locations: Sequence[BlockLocation], *, nonce: str = ""
    ) -> dict[tuple[str, int], BlockLocation]:
        """Copy blocks' stored bytes, verified, into new packs; returns each old
        (pack, offset)'s new location. Nothing is decoded or encoded again."""
        by_place = {(loc.pack, loc.offset): loc for loc in locations}
        ordered = sorted(by_place.values(), key=lambda loc: (loc.pack, loc.offset))
        out: dict[tuple[str, int], BlockLocation] = {}
        writer = PackWriter(nonce)
        placed: list[tuple[str, int]] = []

        def flush() -> None:
            nonlocal writer, placed
            if len(writer):
                pack_id, body, table, new = writer.finish()
                for k, data in ((pack_key(pack_id), body), (index_key(pack_id), table)):
                    try:
                        self.backend.put_if_absent(k, data)
                    except AlreadyExistsError:
                        pass
                self.index.add(pack_id, new)
                out.update(zip(placed, new, strict=True))
            writer, placed = PackWriter(nonce), []

        for group in _coalesce(ordered):
            stored = self._fetch_stored(group, check=True)
            for loc in group:
                data = stored[(loc.pack, loc.offset)]
                # The same stored bytes, verified whole: their frames are read off them.
                writer.add(loc.block_id, data, loc.length, loc.codec, loc.checksum,
                           frames_of_stored(loc.codec, data, loc.length))  # fmt: skip
                placed.append((loc.pack, loc.offset))
                if writer.size >= self.config.pack_size:
                    flush()
        flush()
        return out

    def _store_blocks(
        self,
        source: RandomAccess,
        spans: list[Span],
        progress: Progress | None,
        *,
        nonce: str = "",
        hasher: Any = None,
    ) -> tuple[list[str], int, int, int, str]:
        """Hash, dedup, compress and upload the blocks of one file, in order (nonce: into
        packs of their own; see _locate; hasher: the content hash of what comes before)."""
        level = self.config.zstd_level
        claimed: set[str] = set()  # new blocks this put is storing
        claim_lock = threading.Lock()

        def prepare(span: Span) -> tuple[str, bytes, Encoded | None]:
            # One read: the id, the stored bytes and the content hash must all
            # describe the same bytes even if the source file changes meanwhile.
            data = source.pread(span.offset, span.length)
            bid = block_id(data)
            with claim_lock:
                known = bid in self.index or bid in claimed
                claimed.add(bid)
            return bid, data, None if known else _encode(data, span.dtype, level)

        whole = hasher if hasher is not None else blake3.blake3(max_threads=blake3.blake3.AUTO)
        ids: list[str] = []
        writer = PackWriter(nonce)
        uploads: deque[Future[None]] = deque()
        new_blocks = new_bytes = uploaded = 0

        def flush() -> None:
            nonlocal writer
            if len(writer):
                uploads.append(self._io.submit(self._upload_pack, writer))
                writer = PackWriter(nonce)
            while len(uploads) > UPLOADS_IN_FLIGHT - 1:  # bound memory
                uploads.popleft().result()

        window = max(4, 2 * (os.cpu_count() or 2))
        pending: deque[Future[tuple[str, bytes, Encoded | None]]] = deque()
        spans_iter = iter(spans)
        try:
            while True:
                while len(pending) < window:
                    span = next(spans_iter, None)
                    if span is None:
                        break
                    pending.append(self._cpu.submit(prepare, span))
                if not pending:
                    break
                bid, data, encoded = pending.popleft().result()
                whole.update(data)
                ids.append(bid)
                if encoded is not None:
                    codec, stored, frames = encoded
                    writer.add(bid, stored, len(data), codec, checksum(stored), frames)
                    new_blocks += 1
                    new_bytes += len(data)
                    uploaded += sum(map(len, stored))
                    if writer.size >= self.config.pack_size:
                        flush()
                if progress:
                    progress(len(data))
            flush()
            while uploads:
                uploads.popleft().result()
        except BaseException:
            # Let running tasks finish before the source is closed under them.
            for f in list(pending) + list(uploads):
                f.cancel()
            futures.wait(list(pending) + list(uploads))
            raise
        return ids, new_blocks, new_bytes, uploaded, whole.hexdigest()

    def _upload_pack(self, writer: PackWriter) -> None:
        pack_id, body, table, locations = writer.finish()
        if any(loc.frames is not None for loc in locations):
            self.require_version(FRAMES_VERSION, "uploading framed blocks")
        if pack_id in self._condemned_packs:
            # The same blocks as a condemned pack (a forgotten version stored again): a
            # pack of its own, not that one (see _locate).
            writer.nonce = os.urandom(16).hex()
            pack_id, body, table, locations = writer.finish()
        for key, data in ((pack_key(pack_id), body), (index_key(pack_id), table)):
            try:
                self.backend.put_if_absent(key, data)
            except AlreadyExistsError:
                pass  # content-addressed: the same bytes are already there
        self.index.add(pack_id, locations)
        log.debug("uploaded pack %s: %d blocks, %d bytes", pack_id, len(locations), len(body))

    def check_new_path(self, path: str) -> str:
        """The ref key of path, a file that may be new; NameTooLongError, saying why, if the
        backend cannot hold a key that long. put and rename check this before they write
        anything; the filesystem calls it when it accepts a create or a rename, so that an
        over-long path fails at open, not at close. No request is made (safe to call from
        an event loop): a key over the backend's limit cannot be in the store, so a file
        that exists always passes."""
        path = normalize_path(path)
        return self._fitting(ref_key(path), path)

    def check_new_dir(self, path: str) -> str:
        """The marker key of directory path, as check_new_path checks a file's ref key."""
        path = normalize_path(path)
        return self._fitting(dir_marker_key(path), path)

    def _fits(self, key: str) -> bool:
        limit = self.backend.max_key_bytes
        return limit is None or len(key) <= limit  # keys are ASCII: characters are bytes

    def _fitting(self, key: str, path: str) -> str:
        if self._fits(key):
            return key
        shown = path if len(path) <= 72 else f"{path[:44]}...{path[-24:]}"
        raise NameTooLongError(
            f"path {shown!r} is too long for this store: its object key would be "
            f"{len(key):,} bytes, and {self.backend.url} holds keys of at most "
            f"{self.backend.max_key_bytes:,} ({self.backend.key_limit_reason}); use shorter "
            "names or fewer directories (a byte outside A-Z a-z 0-9 _ - takes three in a key)"
        )

    def require_format(self, key: str) -> None:
        """Make a version-1 store version 2 before its first key with a shortened name is
        written, so that older modelfs refuse the store ("upgrade modelfs") rather than
        miss or misname what is under such keys."""
        if is_shortened_key(key):
            self.require_version(
                SHORTENED_KEYS_VERSION,
                f"writing {describe_key(key)}, whose key has a shortened name",
            )

    def require_version(self, needed: int, why: str) -> None:
        """Raise the store's format version to `needed` (if it is lower) before writing what
        older readers would misread: a compare-and-swap of the config object, whose other
        fields stay as they are; a store's version never goes down."""
        if self.config.version >= needed:
            return
        with self._config_lock:
            for _attempt in range(5):
                data, etag = self.backend.get_with_etag(CONFIG_KEY)
                config = StoreConfig.from_bytes(data)
                if config.version < needed:
                    upgraded = config_with_version(data, needed)
                    try:
                        self.backend.put_if_match(CONFIG_KEY, upgraded, etag)
                    except ConflictError:
                        continue
                    log.info(
                        "upgraded %s to store format version %d (from %d) before %s, which "
                        "version-%d readers would misread: modelfs releases that know only "
                        "version %d now refuse this store",
                        self.backend.url, needed, config.version, why, config.version,
                        config.version,
                    )  # fmt: skip
                    config = StoreConfig.from_bytes(upgraded)
                self.config = config
                return
        raise ConflictError(
            f"could not upgrade the format version of {self.backend.url}: "
            "its config object kept changing"
        )

    def _keys_under(self, key_prefix: str) -> Iterator[str]:
        # A key under the prefix is longer than it: none fits the backend under one too long.
        if not self._fits(key_prefix + "~"):
            return iter(())
        return self.backend.list(key_prefix)

    def _current_at(self, key: str) -> Version | None:
        ref = self._ref_at(key)
        return ref.current if ref is not None else None

    def _ref_at(self, key: str) -> Ref | None:
        """The ref stored at a file's ref key (None if there is none): its path is in it."""
        try:
            data = self.backend.get(key)
        except NotFoundError:
            return None
        return Ref.from_bytes(data, key)

    def _check_namespace(self, path: str, what: str = "store") -> None:
        """A path cannot be both a file and a directory."""
        parts = path.split("/")
        for i in range(1, len(parts)):
            ancestor = "/".join(parts[:i])
            if self._current(ancestor) is not None:
                raise NotADirectoryError_(f"cannot {what} {path}: {ancestor} is a file")
        if self.is_dir(path):
            raise IsADirectoryError_(f"cannot {what} {path}: it is a directory")

    def _current(self, path: str) -> Version | None:
        try:
            return load_ref(self.backend, path)[0].current
        except NotFoundError:
            return None

    # the namespace

    def ref(self, path: str) -> Ref:
        return load_ref(self.backend, normalize_path(path))[0]

    def history(self, path: str) -> list[Version]:
        return list(self.ref(path).versions)

    def version(self, path: str, number: int | None = None) -> Version:
        """A version of path: the current one by default."""
        ref = self.ref(path)
        if number is None:
            if ref.current is None:
                raise NotFoundError(f"no such file in the store: {ref.path} (deleted)")
            return ref.current
        return ref.get(number)

    def manifest(self, path: str, number: int | None = None) -> Manifest:
        version = self.version(path, number)
        assert version.manifest is not None
        return self.load_manifest(version.manifest)

    def load_manifest(self, manifest_id: str) -> Manifest:
        manifest = self._cached_manifest(manifest_id)
        if manifest is not None:
            return manifest
        # One load per manifest at a time: a second caller waits for the first.
        with self._manifests_lock:
            loading = self._manifest_loads.setdefault(manifest_id, threading.Lock())
        try:
            with loading:
                manifest = self._cached_manifest(manifest_id)  # loaded while we waited
                if manifest is not None:
                    return manifest
                try:
                    data = self.backend.get(manifest_key(manifest_id))
                except NotFoundError:
                    raise NotFoundError(
                        f"manifest {manifest_id} is missing from the store"
                    ) from None
                manifest = Manifest.from_bytes(data, manifest_id)
                with self._manifests_lock:
                    self._manifests[manifest_id] = manifest
                    while len(self._manifests) > MANIFEST_CACHE_ENTRIES:
                        self._manifests.popitem(last=False)
                return manifest
        finally:
            with self._manifests_lock:
                if self._manifest_loads.get(manifest_id) is loading:
                    del self._manifest_loads[manifest_id]

    def _cached_manifest(self, manifest_id: str) -> Manifest | None:
        with self._manifests_lock:
            manifest = self._manifests.get(manifest_id)
            if manifest is not None:
                self._manifests.move_to_end(manifest_id)
            return manifest

    def preload_manifests(self, manifest_ids: Sequence[str]) -> None:
        """Load manifests into the cache, several at once (errors wait for the real load)."""

        def load(manifest_id: str) -> None:
            try:
                self.load_manifest(manifest_id)
            except ModelfsError as e:
                log.debug("preloading manifest %s failed: %s", manifest_id, e)

        list(self._io.map(load, manifest_ids[:MANIFEST_CACHE_ENTRIES]))

    def is_dir(self, path: str) -> bool:
        """Whether path is a directory: marked by mkdir, or holding a current file."""
        if not path.strip("/"):
            return True
        prefix = dir_ref_prefix(path)
        if any(is_dir_marker_key(k) for k in self._keys_under(prefix)):
            return True
        return any(True for _ in self._current_files(prefix, limit=1))

    def scan(self) -> Tree:
        """Every current file and directory, reading only refs changed since the last scan."""
        return self._ref_cache.scan(self.backend, self._io)

    def mkdir(self, path: str) -> None:
        """Make an (empty) directory; AlreadyExistsError if the path exists."""
        path = normalize_path(path)
        key = self.check_new_dir(path)
        if self._current(path) is not None or self.is_dir(path):
            raise AlreadyExistsError(f"cannot make directory {path}: it exists")
        self._check_namespace(path, "make directory")
        self.require_format(key)
        self.backend.put(key, marker_body(path))

    def ensure_dir(self, path: str) -> None:
        """Mark path as a directory, so it outlives the files in it (no error if it is one)."""
        if path.strip("/"):
            path = normalize_path(path)
            key = self.check_new_dir(path)
            self.require_format(key)
            try:
                self.backend.put_if_absent(key, marker_body(path))
            except AlreadyExistsError:
                pass

    def rmdir(self, path: str) -> None:
        """Remove an empty directory."""
        path = normalize_path(path)
        if self._current(path) is not None:
            raise NotADirectoryError_(f"cannot remove directory {path}: it is a file")
        prefix = dir_ref_prefix(path)
        marker = dir_marker_key(path)
        if not self._fits(marker):  # it cannot be there, nor anything under it
            raise NotFoundError(f"no such directory in the store: {path}")
        for key in self._keys_under(prefix):
            if key == marker:
                continue
            if is_dir_marker_key(key) or (is_file_ref_key(key) and self._current_at(key)):
                raise DirectoryNotEmptyError(f"cannot remove directory {path}: it is not empty")
        try:
            self.backend.head(marker)
        except NotFoundError:
            raise NotFoundError(f"no such directory in the store: {path}") from None
        self.backend.delete(marker)

    def within_commit_window(self, what: str, change: Callable[[Check], T]) -> T:
        """Run change(check) in a fresh commit window, again in a new one if it did not
        make its reference visible within it (cas.DeadlinePassed: nothing was written)."""
        for _attempt in range(cas.ATTEMPTS):
            check = self.check(index=False)
            try:
                return change(check)
            except cas.DeadlinePassed:
                log.info("%s took longer than the commit window; checking again", what)
        raise ConflictError(f"could not {what} within the store's commit window")

    def rename(self, old: str, new: str, *, message: str = "") -> Version:
        """Make old's current content the next version of new, then delete old.

        Metadata only: the manifest is shared, no block moves. Readers of new see
        its previous version or the renamed content, never a mix.
        """
        old, new = normalize_path(old), normalize_path(new)

        def copy(check: Check) -> Version:
            source = self.version(old)
            if old == new:
                return source
            key = self.check_new_path(new)
            self._check_namespace(new, "rename to")
            self.require_format(key)
            assert source.manifest is not None
            return append_version(
                self.backend, new, self.referencable(source.manifest, check),
                size=source.size, mode=source.mode, content_hash=source.content_hash,
                message=message or f"renamed from {old}",
                metrics=self._carried_metrics(old, source),
                deadline=check.deadline(self.config.commit_window),
            )  # fmt: skip

        version = self.within_commit_window(f"rename {old} to {new}", copy)
        if old != new:
            append_version(self.backend, old, None, message=f"renamed to {new}")
        return version

    def set_metadata(self, path: str, metadata: dict[str, str], *, message: str = "") -> Version:
        """A new version of path with the same content and this metadata (no data moves)."""
        path = normalize_path(path)
        metadata = _check_metadata(metadata)

        def change(check: Check) -> Version:
            current = self.version(path)
            assert current.manifest is not None
            manifest = self.load_manifest(self.referencable(current.manifest, check))
            if manifest.metadata == metadata:
                return current
            updated = dataclasses.replace(manifest, metadata=metadata, nonce="")
            return append_version(
                self.backend, path, self._store_manifest(updated, check), size=current.size,
                mode=current.mode, content_hash=current.content_hash,
                message=message or "metadata changed",
                metrics=self._carried_metrics(path, current),
                deadline=check.deadline(self.config.commit_window),
            )  # fmt: skip

        return self.within_commit_window(f"change the metadata of {path}", change)

    def chmod(self, path: str, mode: int) -> Version:
        """A new version of path with the same content and these mode bits."""

        def change(check: Check) -> Version:
            current = self.version(path)
            if current.file_mode == mode:
                return current  # rsync and cp -p set the mode a file already has
            assert current.manifest is not None
            return append_version(
                self.backend, normalize_path(path), self.referencable(current.manifest, check),
                size=current.size, mode=mode, content_hash=current.content_hash,
                message="mode changed", metrics=self._carried_metrics(path, current),
                deadline=check.deadline(self.config.commit_window),
            )  # fmt: skip

        return self.within_commit_window(f"change the mode of {path}", change)

    def _carried_metrics(self, path: str, current: Version) -> dict | None:
        """The metrics a version with the same content keeps (a chmod, an xattr, a rename:
        the model is the same, and so are its measurements)."""
        record = load_record(self.backend, normalize_path(path), is_dir=False, damaged_ok=True)
        metrics = record.metrics_of(current.version, current.metrics) if record else current.metrics
        if metrics:
            self.require_version(NAMES_VERSION, f"carrying the metrics of {path}")
        return dict(metrics) if metrics else None

    def list(self, prefix: str = "") -> list[FileInfo]:
        """Current files under a directory prefix ('' for all), sorted by path."""
        # Keys sort in their encoded order (and shortened names by hash): sort by path.
        if prefix.strip("/"):
            norm = normalize_path(prefix)
            current = self._current(norm)
            if current is not None:  # a file, not a directory
                return [
                    FileInfo(
                        norm, current.version, current.size, current.time, current.content_hash
                    )
                ]
        return sorted(self._current_files(dir_ref_prefix(prefix)), key=lambda f: f.path)

    def refs_under(self, prefix: str = "") -> list[Ref]:
        """The refs of every path ever stored under a directory ('' for all), deleted ones
        too, sorted by path: one LIST and one GET per path (in parallel)."""
        keys = [k for k in self._keys_under(dir_ref_prefix(prefix)) if is_file_ref_key(k)]
        refs = [r for r in self._io.map(self._ref_at, keys) if r is not None]
        return sorted(refs, key=lambda r: r.path)

    def map_io(self, fn: Callable[[T], U], items: Iterable[T]) -> list[U]:
        """fn over items on the store's request threads (bounded: max_requests at once)."""
        return list(self._io.map(fn, items))

    def _current_files(self, key_prefix: str, limit: int | None = None) -> Iterator[FileInfo]:
        keys = [k for k in self._keys_under(key_prefix) if is_file_ref_key(k)]
        batch = 64 if limit is None else limit
        found = 0
        for start in range(0, len(keys), batch):
            for ref in self._io.map(self._ref_at, keys[start : start + batch]):
                version = ref.current if ref is not None else None
                if ref is not None and version is not None:
                    yield FileInfo(
                        ref.path, version.version, version.size, version.time,
                        version.content_hash,
                    )  # fmt: skip
                    found += 1
                    if limit is not None and found >= limit:
                        return

    def delete(self, path: str, *, message: str = "") -> Version:
        """Record a deletion as a new version; earlier versions stay readable."""
        path = normalize_path(path)
        return append_version(self.backend, path, None, message=message, require_current=True)

    # reading

    def read_blocks(self, blocks: Sequence[BlockRef]) -> list[bytes]:
        """The verified plaintext of each block, in the order given."""
        groups = _coalesce([b.location for b in blocks])
        results: dict[tuple[str, int], bytes] = {}
        for got in self._io.map(self._fetch_group, groups):
            results.update(got)
        return [results[(b.location.pack, b.location.offset)] for b in blocks]

    def _fetch_group(self, group: list[BlockLocation]) -> dict[tuple[str, int], bytes]:
        """The verified plaintext of neighbouring blocks of one pack, by (pack, offset)."""
        stored = self._fetch_stored(group, check=False)
        places = list(stored)

        def check(place: tuple[str, int]) -> bytes:
            loc, data = stored[place]
            return verify_block(loc, data)

        # One request may bring many blocks; verify and decode them on every core.
        plain = self._cpu.map(check, places) if len(places) > 1 else map(check, places)
        return dict(zip(places, plain, strict=True))

    def _fetch_stored(
        self, group: list[BlockLocation], *, check: bool = True, hops: int = 0
    ) -> dict:
        """The stored bytes of neighbouring blocks of one pack, with one ranged GET, by
        (pack, offset) as the caller named them. check: verified (checksum, decode, id),
        and only the bytes are returned; otherwise (location, bytes) for the caller to
        verify. A pack that a collection rewrote is followed to where its live blocks
        went (moved/)."""
        first, last = group[0], group[-1]
        start, end = first.offset, last.offset + last.stored_length
        try:
            data = self.backend.get(pack_key(first.pack), ByteRange(start, end - start))
        except NotFoundError:
            return self._fetch_moved(group, check=check, hops=hops)
        view = memoryview(data)
        out: dict = {}
        for loc in group:
            piece = view[loc.offset - start : loc.offset - start + loc.stored_length]
            if check:
                verify_block(loc, piece)
                out[(loc.pack, loc.offset)] = bytes(piece)
            else:
                out[(loc.pack, loc.offset)] = (loc, piece)
        return out

    def _fetch_moved(self, group: list[BlockLocation], *, check: bool, hops: int) -> dict:
        pack = group[0].pack
        moved = self.moved(pack) if hops < MAX_MOVES else None
        if moved is None:
            raise MissingPackError(
                f"pack {pack} is missing from the store", block_id=group[0].block_id, pack=pack
            )
        targets = []
        for loc in group:
            target = moved.get(loc.offset)
            if target is None or target.block_id != loc.block_id:
                raise CollectedError(
                    f"block {loc.block_id} of pack {pack} was collected: no version the "
                    "store keeps holds it any more"
                )
            targets.append(target)
        out: dict = {}
        by_pack: dict[str, list[BlockLocation]] = {}
        for t in targets:
            by_pack.setdefault(t.pack, []).append(t)
        for new_group in (g for locs in by_pack.values() for g in _coalesce(locs)):
            out.update(self._fetch_stored(new_group, check=check, hops=hops + 1))
        return {
            (loc.pack, loc.offset): out[(t.pack, t.offset)]
            for loc, t in zip(group, targets, strict=True)
        }

    def frames_of(self, loc: BlockLocation, hops: int = 0) -> BlockLocation | None:
        """Where a framed block is stored now, with its frames, as its pack's table has
        them (the table checked against the pack's name, so every frame's hash is pinned);
        a block of a rewritten pack is followed to its new place. None: the block is not
        framed, or cannot be found (a whole read then says why)."""
        if not codecs.is_framed(loc.codec):
            return None
        if loc.frames is not None:
            return loc
        table = self._table(loc.pack)
        if table is None:
            moved = self.moved(loc.pack) if hops < MAX_MOVES else None
            target = moved.get(loc.offset) if moved is not None else None
            if target is None or target.block_id != loc.block_id:
                return None
            return self.frames_of(target, hops + 1)
        row = table.get(loc.offset)
        if row is None or row.block_id != loc.block_id or row.frames is None:
            raise CorruptionError(
                f"pack {loc.pack} has no framed block {loc.block_id} at offset {loc.offset}",
                block_id=loc.block_id, pack=loc.pack,
            )  # fmt: skip
        return row

    def _table(self, pack: str) -> dict[int, BlockLocation] | None:
        """A pack's table by offset, with its frames, from its index object checked against
        the pack's name (None: the index object is gone). The block index holds no frames."""
        with self._tables_lock:
            if pack in self._tables:
                self._tables.move_to_end(pack)
                return self._tables[pack]
        try:
            data = self.backend.get(index_key(pack))
        except NotFoundError:
            return None
        if object_id(data) != pack:
            raise CorruptionError(
                f"the index object of pack {pack} does not match the pack's name", pack=pack
            )
        table = {r.offset: r for r in decode_table(data, pack)}
        with self._tables_lock:
            self._tables[pack] = table
            while len(self._tables) > TABLE_CACHE_ENTRIES:
                self._tables.popitem(last=False)
        return table

    def preload_tables(self, packs: Iterable[str]) -> None:
        """Start reading these packs' tables in the background (errors: the read that
        needs one reads it again and reports), so a first read of one frame of a block of
        theirs waits for no table."""
        with self._tables_lock:
            wanted = [p for p in dict.fromkeys(packs) if p not in self._tables]
        for pack in wanted:
            self._tables_io.submit(self._preload_table, pack)

    def _preload_table(self, pack: str) -> None:
        try:
            self._table(pack)
        except ModelfsError as e:
            log.debug("preloading the table of pack %s: %s", pack, e)

    def read_frames(self, loc: BlockLocation, frames: range, hops: int = 0) -> list[bytes]:
        """The verified plaintext of some frames of a framed block (loc from frames_of),
        with one ranged GET: each frame checked against the hash its pack's table pins,
        then decoded. A pack rewritten meanwhile is followed (the same stored bytes)."""
        f = loc.frames
        assert f is not None and frames and frames.stop <= len(f)
        base = loc.offset + codecs.frame_directory_size(len(f))
        start, end = base + f.starts[frames.start], base + f.starts[frames.stop]
        try:
            data = self.backend.get(pack_key(loc.pack), ByteRange(start, end - start))
        except NotFoundError:
            moved = self.moved(loc.pack) if hops < MAX_MOVES else None
            target = moved.get(loc.offset) if moved is not None else None
            if target is None or target.block_id != loc.block_id:
                raise MissingPackError(
                    f"pack {loc.pack} is missing from the store", block_id=loc.block_id,
                    pack=loc.pack,
                ) from None  # fmt: skip
            return self.read_frames(dataclasses.replace(target, frames=f), frames, hops + 1)
        view = memoryview(data)
        out = []
        for i in frames:
            piece = view[
                f.starts[i] - f.starts[frames.start] : f.starts[i + 1] - f.starts[frames.start]
            ]
            what = f"frame {i} of block {loc.block_id} in pack {loc.pack}"
            if len(piece) != f.stored[i]:
                raise CorruptionError(f"{what} is truncated", block_id=loc.block_id, pack=loc.pack)
            if frame_hash(piece) != f.hash(i):
                raise CorruptionError(
                    f"{what} does not match its hash", block_id=loc.block_id, pack=loc.pack
                )
            try:
                out.append(codecs.decode_frame(loc.codec, piece, f.plain_length(i, loc.length)))
            except CorruptionError as e:
                raise CorruptionError(
                    f"{what}: {e}", block_id=loc.block_id, pack=loc.pack
                ) from None
        return out

    def moved(self, pack: str) -> dict[int, BlockLocation] | None:
        """Where a rewritten pack's live blocks went, by their offset in it (None: the
        pack was not rewritten)."""
        with self._moved_lock:
            if pack in self._moved:
                return self._moved[pack]
        try:
            found: dict[int, BlockLocation] | None = parse_moved(
                self.backend.get(moved_key(pack)), pack
            )
        except NotFoundError:
            found = None
        with self._moved_lock:
            if found is not None:  # absent is not cached: a collection may be writing it
                self._moved[pack] = found
        return found

    # checking

    def fsck(self, progress: Progress | None = None, *, repair: bool = False) -> FsckReport:
        """Read every pack and block, check both hashes, and name the files affected.
        repair: set damaged names records aside (the only damage fsck repairs)."""
        report = FsckReport()
        self.refresh_index()
        pack_keys = {k.rsplit("/", 1)[-1] for k in self.backend.list("packs/")}
        indexed = self.index.packs()
        # A pack without its index object is a pack a collection condemned, or one a
        # crash left before its index object: garbage either way (reads never need it).
        unindexed = pack_keys - indexed
        bad_locations: dict[tuple[str, int], str] = {}

        def check_pack(pack_id: str) -> tuple[str, int, int, dict[tuple[str, int], str]]:
            bad: dict[tuple[str, int], str] = {}
            try:
                body = self.backend.get(pack_key(pack_id))
            except NotFoundError:
                return pack_id, 0, 0, {(pack_id, -1): "pack missing"}
            try:
                table = read_trailer(body, pack_id)
            except FormatError as e:
                table = [loc for loc in self.index.locations() if loc.pack == pack_id]
                bad[(pack_id, -2)] = str(e)
            view = memoryview(body)
            for loc in table:
                try:
                    verify_block(loc, view[loc.offset : loc.offset + loc.stored_length])
                except CorruptionError as e:
                    bad[(pack_id, loc.offset)] = f"block {loc.block_id}: {e}"
            return pack_id, len(table), len(body), bad

        for _pack_id, nblocks, nbytes, bad in self._io.map(check_pack, sorted(indexed)):
            report.packs_checked += 1
            report.blocks_checked += nblocks
            report.bytes_checked += nbytes
            for (pid, offset), why in bad.items():
                if offset == -1:
                    report.missing_packs.append(pid)
                elif offset == -2:
                    report.problems.append(why)
                else:
                    bad_locations[(pid, offset)] = why
                    report.corrupt_blocks[why.split(":")[0].split()[-1]] = why
            if progress:
                progress(nbytes)
        missing = set(report.missing_packs) | (indexed - pack_keys)
        report.missing_packs = sorted(missing)

        for key in self.backend.list(REFS_PREFIX):
            if is_dir_marker_key(key):
                try:
                    marker_path(key, self.backend.get(key))
                except NotFoundError:
                    pass  # removed since the listing
                except ModelfsError as e:
                    report.problems.append(str(e))
                continue
            if not is_file_ref_key(key):
                continue
            try:
                ref = self._ref_at(key)
            except ModelfsError as e:
                report.files_checked += 1
                report.affected.append({"path": describe_key(key), "problem": str(e)})
                continue
            if ref is None:
                continue  # deleted since the listing
            report.files_checked += 1
            path = ref.path
            for v in ref.versions:
                if v.deleted:
                    continue
                if v.forgotten:
                    report.forgotten_versions += 1
                    continue  # its content may be collected; a name on it is checked below
                report.versions_checked += 1
                assert v.manifest is not None
                try:
                    manifest = self.load_manifest(v.manifest)
                except ModelfsError as e:
                    report.affected.append({"path": path, "version": v.version, "problem": str(e)})
                    continue
                for b in manifest.blocks:
                    loc = self._followed(b.location, pack_keys)
                    why = bad_locations.get((loc.pack, loc.offset))
                    if why is None and (loc.pack in missing or loc.pack not in pack_keys):
                        why = f"pack {loc.pack} is missing"
                    if why is not None:
                        report.affected.append(
                            {"path": path, "version": v.version, "offset": b.file_offset,
                             "length": loc.length, "block": loc.block_id, "problem": why}
                        )  # fmt: skip
        self._check_names(report, repair)
        from .reachability import space  # it builds on this module

        where = space(self)
        report.garbage = {
            "reclaimable_bytes": where["reclaimable_bytes"],
            "packs_without_index": len(unindexed),
            "forgotten_versions": where["forgotten_versions"],
            "collections_pending": len(list(self.backend.list("gc/condemned/"))),
        }
        return report

    def _followed(self, loc: BlockLocation, existing: set[str]) -> BlockLocation:
        """Where a block is now: its pack, or where a rewrite of that pack moved it."""
        for _ in range(MAX_MOVES):
            if loc.pack in existing:
                return loc
            moved = self.moved(loc.pack)
            target = moved.get(loc.offset) if moved is not None else None
            if target is None or target.block_id != loc.block_id:
                return loc
            loc = target
        return loc

    def _check_names(self, report: FsckReport, repair: bool) -> None:
        """Every names record parses, each name's target exists with the content it names,
        and each numbered snapshot's object is there and holds what its entry says.
        repair: a record that does not parse is set aside (registry.set_aside)."""
        for key in self.backend.list(META_PREFIX):
            if not is_names_key(key):
                continue
            try:
                data = self.backend.get(key)
                record = NamesRecord.from_bytes(data, key)
            except NotFoundError:
                continue
            except ModelfsError as e:
                aside = set_aside(self.backend, key, data) if repair else None
                if aside is not None:
                    report.repaired.append(f"{e}: set aside at {aside}")
                else:
                    report.problems.append(str(e))
                continue
            report.names_checked += len(record.names)
            for entry in record.snapshots:
                if entry.version in record.forgotten:
                    continue  # collected, unless a name keeps it (checked with the names)
                try:
                    snap = load_snapshot(self, entry.snapshot)
                    if snap.content_hash != entry.content_hash or snap.path != record.path:
                        raise FormatError("it does not hold what its entry says")
                except ModelfsError as e:
                    report.problems.append(f"snapshot {entry.version} of {record.path}: {e}")
            for name in record.names.values():
                t = name.target
                try:
                    if t.is_dir:
                        target = load_record(self.backend, t.path, is_dir=True)
                        if target is None:
                            raise NotFoundError(f"{t.path} has no snapshots")
                        found = target.snapshot(t.version, named=True).content_hash
                    else:
                        found = self.ref(t.path).get(t.version, named=True).content_hash
                    if found != t.content_hash:
                        raise FormatError(f"that version holds {found}, not {t.content_hash}")
                except ModelfsError as e:
                    report.problems.append(
                        f"{name.kind} {record.path}@{name.name} names {t}, which is broken: {e}"
                    )


def check_conditional_writes(backend: Backend) -> None:
    """ModelfsError unless create-only and compare-and-swap writes really are conditional."""
    key = f"probe/{os.urandom(8).hex()}"
    try:
        etag = backend.put_if_absent(key, b"first")
        try:
            backend.put_if_absent(key, b"second")
            honoured = False
        except AlreadyExistsError:
            honoured = True
        if honoured:
            try:
                backend.put_if_match(key, b"third", etag + "-stale")
                honoured = False
            except ConflictError:
                pass
        if honoured and backend.get(key) != b"first":
            honoured = False
    finally:
        backend.delete(key)
    if not honoured:
        raise ModelfsError(
            f"{backend.url} ignores conditional writes (If-None-Match / If-Match): two writers "
            "could overwrite each other's versions. Use a server that supports them, or accept "
            "one writer at a time with --unsafe-single-writer"
        )


Encoded = tuple[str, list[bytes], Frames | None]  # codec, stored bytes in pieces, frames


def _encode(data: bytes, dtype: str | None, level: int) -> Encoded:
    """A block's codec, stored bytes (in pieces) and, for a framed block, its frames."""
    codec, stored, frames = codecs.encode_frames(data, dtype, level)
    if len(frames) == 1:
        return codec, stored, None
    return (
        codec,
        stored,
        Frames(codecs.FRAME_SIZE, tuple(map(len, frames)), "".join(map(frame_hash, frames))),
    )


def verify_block(loc: BlockLocation, stored: memoryview | bytes) -> bytes:
    """The plaintext of a stored block, or CorruptionError: never unverified bytes."""
    if len(stored) != loc.stored_length:
        raise CorruptionError(
            f"block {loc.block_id} in pack {loc.pack} is truncated "
            f"({len(stored)} of {loc.stored_length} bytes)",
            block_id=loc.block_id, pack=loc.pack,
        )  # fmt: skip
    if checksum(stored) != loc.checksum:
        raise CorruptionError(
            f"block {loc.block_id} in pack {loc.pack} failed its checksum",
            block_id=loc.block_id, pack=loc.pack,
        )  # fmt: skip
    try:
        plain = codecs.decode(loc.codec, stored, loc.length)
    except CorruptionError as e:
        raise CorruptionError(
            f"block {loc.block_id}: {e}", block_id=loc.block_id, pack=loc.pack
        ) from None
    if block_id(plain) != loc.block_id:
        raise CorruptionError(
            f"block {loc.block_id} in pack {loc.pack} does not match its id",
            block_id=loc.block_id, pack=loc.pack,
        )  # fmt: skip
    if loc.frames is not None and frames_of_stored(loc.codec, stored, loc.length) != loc.frames:
        # The block is whole, but a read of one frame would fail (or be refused).
        raise CorruptionError(
            f"block {loc.block_id} in pack {loc.pack}: its frames do not match the hashes "
            "its pack's table holds", block_id=loc.block_id, pack=loc.pack,
        )  # fmt: skip
    return plain


def _coalesce(locations: list[BlockLocation]) -> list[list[BlockLocation]]:
    """Group blocks by pack, then into runs close enough to fetch in one request."""
    unique = {(loc.pack, loc.offset): loc for loc in locations}
    ordered = sorted(unique.values(), key=lambda loc: (loc.pack, loc.offset))
    groups: list[list[BlockLocation]] = []
    for loc in ordered:
        if groups:
            last = groups[-1][-1]
            gap = loc.offset - (last.offset + last.stored_length)
            span = loc.offset + loc.stored_length - groups[-1][0].offset
            if loc.pack == last.pack and gap <= COALESCE_GAP and span <= COALESCE_MAX:
                groups[-1].append(loc)
                continue
        groups.append([loc])
    return groups


def _check_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidArgumentError("metadata must be a dict of strings to strings")
    return dict(metadata)


def _layout_of(source: _BufferSource | _FileSource) -> tuple[TensorLayout | None, str]:
    """Where a file is cut, and the manifest's name for how: at the tensors of a
    safetensors file, at the storages of a torch.save zip, else by content alone."""
    need = header_size_needed(source.pread(0, 8))
    layout = parse_layout(source.pread(0, need), source.size)
    if layout is not None:
        return layout, "safetensors"
    layout = torch_cuts(source.pread, source.size)
    return layout, "torch" if layout is not None else "cdc"


class _BufferSource:
    """Bytes in memory, as a RandomAccess."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.buffer = memoryview(data).cast("B")
        self.size = len(self.buffer)

    def pread(self, offset: int, length: int) -> bytes:
        return bytes(self.buffer[offset : offset + length])


class _FileSource:
    """An open regular file, read with pread (never mapped: a file that shrinks
    under a mapping kills the process with SIGBUS; here it is a clear error)."""

    buffer = None

    def __init__(self, f: BinaryIO, name: str) -> None:
        self._fd = f.fileno()
        self._name = name
        self.size = os.fstat(self._fd).st_size

    def pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) != max(0, min(length, self.size - offset)):
            raise ModelfsError(
                f"{self._name} shrank while it was being stored; nothing was committed"
            )
        return data


@contextmanager
def _open_source(source: Source) -> Iterator[_BufferSource | _FileSource]:
    """Random access to what is being stored: bytes, a local path, or a binary file."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield _BufferSource(source)
        return
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        try:
            f = open(source, "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise NotFoundError(f"no such local file: {name}") from None
        except IsADirectoryError:
            raise IsADirectoryError_(f"{name} is a directory") from None
        with f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ModelfsError(f"{name} is not a regular file")
            yield _FileSource(f, name)
        return
    if hasattr(source, "read"):
        try:
            regular = stat.S_ISREG(os.fstat(source.fileno()).st_mode)
        except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
            regular = False
        if regular:
            yield _FileSource(source, getattr(source, "name", "the source file"))
            return
        # A pipe or an in-memory stream: spool it to disk first, so memory stays bounded.
        with tempfile.TemporaryFile(prefix="modelfs-spool-") as spool:
            shutil.copyfileobj(source, spool, 8 << 20)
            spool.flush()
            yield _FileSource(spool, "the spooled input")
        return
    raise InvalidArgumentError(
        f"cannot store a {type(source).__name__}: give a path, bytes or a binary file"
    )
