"""The Python API: a store opened by URL, with its caches, ready to use.

    import modelfs
    with modelfs.open_store("/data/models") as store:
        store.put("bert/model.safetensors", "model.safetensors")
        with store.open("bert/model.safetensors") as f:
            f.seek(1024); head = f.read(4096)

Every read takes an address as well as a path (store/addresses.py):
`open("bert/model.safetensors@champion")`, `open("bert@3/config.json")`, and
the file object says which version it got (`f.version`, `f.content_hash`).
Tags, aliases, metrics recorded later and selection by metrics are the store's
naming and selection modules, reached through the methods below.

This is wiring: it knows the backend, store, cache and reader layers and adds
no format logic of its own.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import blake3

from .backends import open_backend
from .cache import DiskBlockCache, Pin
from .errors import (
    AlreadyExistsError,
    CorruptionError,
    InvalidArgumentError,
    IsADirectoryError_,
    ModelfsError,
    NotFoundError,
    StoreNotFoundError,
)
from .reader import BlockReader, StoredFile
from .store import BlockRef, FileInfo, FsckReport, PutResult, Store, StoreConfig, Version, naming
from .store.addresses import Resolved, parse_address, resolve
from .store.gc import Collector, GcReport, iter_records
from .store.metrics import Value
from .store.paths import names_prefix, normalize_path, version_address
from .store.reachability import space
from .store.registry import (
    Event,
    Name,
    NamesRecord,
    Target,
    is_names_key,
    load_record,
    parse_record,
)
from .store.retention import ForgetPlan, Policy, apply_forget, estimate_freed, plan_forget
from .store.selection import Selection, select
from .store.snapshots import join
from .store.store import DEFAULT_MAX_REQUESTS, Progress, Source
from .warmup import DEFAULT_JOBS, WarmupSummary, unpin, warmup

DEFAULT_CACHE_SIZE = 10 << 30


def default_cache_dir(url: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "modelfs" / hashlib.sha256(url.encode()).hexdigest()[:16]


class Client:
    """An open store. Thread-safe; close it (or use `with`) to stop its worker threads."""

    def __init__(
        self,
        store: Store,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        use_disk_cache: bool = True,
    ) -> None:
        self.store = store
        disk = None
        if use_disk_cache:
            directory = cache_dir or default_cache_dir(store.backend.url)
            try:
                disk = DiskBlockCache(directory, cache_size)
            except OSError as e:
                store.close()
                raise ModelfsError(
                    f"cannot use cache directory {directory}: {e.strerror}"
                ) from None
        self.reader = BlockReader(store, disk)

    @property
    def url(self) -> str:
        return self.store.backend.url

    def close(self) -> None:
        self.reader.close()
        if self.reader.disk_cache is not None:
            self.reader.disk_cache.close()
        self.store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        metrics: Mapping[str, Value] | None = None,
    ) -> PutResult:
        """Store a local path, a binary file object or bytes as the next version of path,
        with metrics (name -> number or string) recorded in the same commit."""
        return self.store.put(
            path, source, metadata=metadata, message=message, progress=progress, mode=mode,
            metrics=metrics,
        )  # fmt: skip

    def delete(self, path: str) -> Version:
        return self.store.delete(path)

    # addresses

    def resolve(self, address: str) -> Resolved:
        """The one immutable version an address names (see store/addresses.py)."""
        return resolve(self.store, address)

    def _file(self, path: str, version: int | None) -> tuple[str, Version]:
        """The path and version that a path and number, or an address, name: a file's."""
        if "@" not in path:
            norm = normalize_path(path)
            return norm, self.store.version(norm, version)
        if version is not None:
            raise InvalidArgumentError(
                f"{path!r} is an address with its own version: do not give a version as well"
            )
        resolved = self.resolve(path)
        if resolved.is_dir or resolved.entry is None:
            raise IsADirectoryError_(
                f"{path} is the directory version {resolved.pinned}, not a file: "
                f"name a file in it ({path}/NAME)"
            )
        return resolved.path, resolved.entry

    # reading

    def open(self, path: str, version: int | None = None) -> StoredFile:
        """A lazy, seekable, read-only file object for a version (default: current). path may
        be an address (PATH@N, PATH@NAME, PATH@blake3:HEX, DIR@NAME/FILE); f.version and
        f.content_hash say which version it is."""
        norm, v = self._file(path, version)
        assert v.manifest is not None
        return StoredFile(self.reader, self.store.load_manifest(v.manifest), norm, v.version)

    def read(
        self, path: str, offset: int = 0, length: int | None = None, version: int | None = None
    ) -> bytes:
        """Bytes [offset, offset+length) of a stored file (to its end by default)."""
        if offset < 0 or (length is not None and length < 0):
            raise InvalidArgumentError(f"invalid range offset={offset} length={length}")
        with self.open(path, version) as f:
            f.seek(offset)
            return f.read(length if length is not None else max(0, f.size - offset))

    def list(self, prefix: str = "") -> list[FileInfo]:
        """Current files under a directory; for an address of a directory version
        (`bert@champion`), the files of that version."""
        if "@" not in prefix:
            return self.store.list(prefix)
        resolved = self.resolve(prefix)
        if not resolved.is_dir or resolved.snapshot is None:
            assert resolved.entry is not None
            v = resolved.entry
            return [FileInfo(resolved.path, v.version, v.size, v.time, v.content_hash)]
        snap = resolved.snapshot
        refs = self.store.map_io(self.store.ref, [join(snap.path, f.path) for f in snap.files])
        return [
            FileInfo(ref.path, f.version, f.size, ref.get(f.version).time, f.content_hash)
            for f, ref in zip(snap.files, refs, strict=True)
        ]

    def history(self, path: str) -> list[Version]:
        """Every version of a file, deletions included (of the file an address names)."""
        if "@" in path:
            resolved = self.resolve(path)
            if resolved.is_dir:
                raise IsADirectoryError_(f"{path} is a directory version; a file has a history")
            path = resolved.path
        return self.store.history(path)

    def stat(self, path: str, version: int | None = None) -> dict[str, Any]:
        """Size, blocks, codecs, dedup and compression figures of one version, with its
        metrics and the tags and aliases that name it. A directory version (an address
        such as `bert@champion`) gives its files, size, metrics and names."""
        if "@" in path and version is None:
            resolved = self.resolve(path)
            if resolved.is_dir:
                return self._stat_dir(resolved)
        norm, v = self._file(path, version)
        assert v.manifest is not None
        m = self.store.load_manifest(v.manifest)
        codecs: dict[str, int] = {}
        unique: dict[str, int] = {}
        stored = 0
        for b in m.blocks:
            codecs[b.location.codec] = codecs.get(b.location.codec, 0) + 1
            if b.location.block_id not in unique:
                unique[b.location.block_id] = b.location.length
                stored += b.location.stored_length
        records = self._records_over(norm, is_dir=False)
        own = records[0] if records and records[0].path == norm and not records[0].is_dir else None
        metrics = own.metrics_of(v.version, v.metrics) if own else dict(v.metrics or {})
        return {
            "path": norm,
            "version": v.version,
            "time": v.time,
            "size": m.size,
            "content_hash": m.content_hash,
            "layout": m.layout,
            "manifest": v.manifest,
            "blocks": len(m.blocks),
            "unique_blocks": len(unique),
            "stored_bytes": stored,
            "compression_ratio": (sum(unique.values()) / stored) if stored else 1.0,
            "codecs": codecs,
            "metadata": m.metadata,
            "message": v.message,
            "metrics": metrics,
            "names": self._names_at(records, Target(norm, v.version, v.content_hash, False)),
        }

    def _stat_dir(self, resolved: Resolved) -> dict[str, Any]:
        assert resolved.snapshot is not None
        snap = resolved.snapshot
        info: dict[str, Any] = {
            "path": resolved.path,
            "version": resolved.version,
            "content_hash": resolved.content_hash,
            "files": len(snap.files),
            "size": snap.size,
            "metrics": dict(resolved.metrics or {}),
            "names": [],
        }
        if resolved.version is not None:
            target = Target(resolved.path, resolved.version, resolved.content_hash, True)
            info["names"] = self._names_at(self._records_over(resolved.path, is_dir=True), target)
        return info

    def _records_over(self, path: str, *, is_dir: bool) -> list[NamesRecord]:
        """The names records that can name a version of path: its own, then each directory
        above it, nearest first."""
        records = []
        own = load_record(self.store.backend, path, is_dir=is_dir, damaged_ok=True)
        if own is not None:
            records.append(own)
        parts = path.split("/")
        for i in range(len(parts) - 1, 0, -1):
            record = load_record(
                self.store.backend, "/".join(parts[:i]), is_dir=True, damaged_ok=True
            )
            if record is not None:
                records.append(record)
        return records

    @staticmethod
    def _names_at(records: list[NamesRecord], target: Target) -> list[str]:
        """The names (as addresses: OWNER@NAME) that point at target."""
        return sorted(
            version_address(r.path, n.name)
            for r in records
            for n in r.names.values()
            if n.target == target
        )

    def names_by_version(self, path: str) -> dict[int, list[str]]:
        """For each version of a file, the names (OWNER@NAME) pointing at it."""
        norm = self._path_of(path)
        out: dict[int, list[str]] = {}
        for r in self._records_over(norm, is_dir=False):
            for n in r.names.values():
                if n.target.path == norm and not n.target.is_dir:
                    out.setdefault(n.target.version, []).append(version_address(r.path, n.name))
        return {v: sorted(names) for v, names in out.items()}

    def metrics_by_version(self, path: str) -> dict[int, dict[str, Value]]:
        """Each live version's metrics: recorded at commit, merged with those recorded later."""
        norm = self._path_of(path)
        record = load_record(self.store.backend, norm, is_dir=False, damaged_ok=True)
        out = {}
        for v in self.store.history(norm):
            if v.readable:
                out[v.version] = (
                    record.metrics_of(v.version, v.metrics) if record else dict(v.metrics or {})
                )
        return out

    def _path_of(self, path: str) -> str:
        if "@" in path:
            return self.resolve(path).path
        return normalize_path(path)

    # names and metrics

    def tag(self, address: str, name: str, message: str = "", owner: str | None = None) -> Name:
        """Name the version an address names; a tag never moves (AlreadyExistsError if the
        name is taken by another version; setting it again to the same one changes nothing).
        The tag belongs to the address's path, or to owner, a directory above it."""
        named, _, _ = naming.name_version(
            self.store, address, name, alias=False, message=message, owner=owner
        )
        return named

    def untag(self, path: str, name: str, message: str = "") -> Target:
        """Remove a tag (the removal is logged); returns what it named."""
        return naming.unname(self.store, path, name, alias=False, message=message)

    def alias(
        self, address: str, name: str, message: str = "", expect: str | None = None,
        owner: str | None = None,
    ) -> Name:  # fmt: skip
        """Point an alias at the version an address names, moving it if it exists (every
        move is logged). With expect (an address), move it only if it still names that
        version (ConflictError otherwise, nothing changed). The alias belongs to the
        address's path, or to owner, a directory above it (`run@champion` -> run/step-2)."""
        named, _, _ = naming.name_version(
            self.store, address, name, alias=True, message=message, expect=expect, owner=owner
        )
        return named

    def unalias(self, path: str, name: str, message: str = "") -> Target:
        """Remove an alias (the removal is logged); returns what it named."""
        return naming.unname(self.store, path, name, alias=True, message=message)

    def names(self, path: str) -> list[Name]:
        """The tags and aliases a path owns, sorted by name."""
        return naming.names_of(self.store, path)

    def names_under(self, prefix: str = "") -> list[tuple[str, Name]]:
        """(owner, name) for every tag and alias owned by prefix or by anything under it
        (the whole store by default), sorted by owner and name."""
        backend = self.store.backend
        keys = [k for k in backend.list(names_prefix(prefix)) if is_names_key(k)]
        records = [
            record
            for key, data in zip(keys, self.store.map_io(backend.get, keys), strict=True)
            if (record := parse_record(data, key, damaged_ok=True)) is not None
        ]
        if prefix.strip("/"):
            norm = normalize_path(prefix)
            records += [
                r for is_dir in (False, True)
                if (r := load_record(backend, norm, is_dir=is_dir, damaged_ok=True)) is not None
            ]  # fmt: skip
        found = {(r.path, n.name): n for r in records for n in r.names.values()}
        return [(owner, found[(owner, name)]) for owner, name in sorted(found)]

    def names_log(self, path: str, name: str | None = None) -> list[Event]:
        """Every change of a path's names (one name's, if given), oldest first."""
        return naming.log_of(self.store, path, name)

    def record_metrics(
        self, address: str, metrics: Mapping[str, Value | None], message: str = ""
    ) -> Resolved:
        """Record metrics of a committed version (None removes one); makes no new version.
        Returns the version with its metrics as they now are."""
        return naming.measure(self.store, address, metrics, message=message)

    def select(
        self,
        target: str,
        where: str | None = None,
        order_by: str | None = None,
        limit: int | None = None,
        all_versions: bool = False,
        alias: str | None = None,
        message: str = "",
    ) -> Selection:
        """Rank the versions of a file, or of what is under a prefix, by their metrics
        (store/selection.py). With alias, point that alias of the target (a prefix's is
        its directory's) at the best one in the same call; NotFoundError, and nothing
        changed, if none matches."""
        chosen = select(
            self.store, target, where=where, order_by=order_by, limit=limit,
            all_versions=all_versions,
        )  # fmt: skip
        if alias is None:
            return chosen
        if not chosen.ranked:
            clause = f" matches {where!r}" if where else " exists"
            raise NotFoundError(
                f"no version of {target}{clause} ({chosen.considered} looked at): "
                f"alias {alias} not changed"
            )
        owner = parse_address(target).path if target.strip("/") else ""
        if not owner:
            raise InvalidArgumentError("an alias belongs to a file or directory: give one")
        naming.name_version(
            self.store, chosen.ranked[0].address, alias, alias=True, message=message, owner=owner
        )
        return chosen

    def store_stats(self) -> dict[str, Any]:
        """Figures for the whole store: logical bytes, unique bytes, bytes stored."""
        self.store.refresh_index()
        locations = self.store.index.locations()
        unique = sum(loc.length for loc in locations)
        stored = sum(loc.stored_length for loc in locations)
        logical_current = logical_all = versions = 0
        files = self.list()
        for info in files:
            logical_current += info.size
            for v in self.history(info.path):
                if v.readable:
                    versions += 1
                    logical_all += v.size
        where = space(self.store)
        return {
            "url": self.url,
            "files": len(files),
            "versions": versions,
            "forgotten_versions": where["forgotten_versions"],
            "blocks": len(locations),
            "logical_bytes_current": logical_current,
            "logical_bytes_all_versions": logical_all,
            "unique_bytes": unique,
            "stored_bytes": stored,
            "dedup_ratio": logical_all / unique if unique else 1.0,
            "compression_ratio": unique / stored if stored else 1.0,
            "pack_bytes": where["pack_bytes"],
            "live_bytes": where["live_bytes"],
            "history_only_bytes": where["history_only_bytes"],
            "reclaimable_bytes": where["reclaimable_bytes"],
            "collections_pending": len(list(iter_records(self.store))),
        }

    # the disk cache

    def warmup(
        self,
        paths: str | Sequence[str],
        pin: bool = False,
        progress: Progress | None = None,
        *,
        on_plan: Callable[[int], None] | None = None,
        jobs: int = DEFAULT_JOBS,
    ) -> WarmupSummary:
        """Fetch files (a directory: every current file under it; or addresses) into the
        disk cache ahead of use, in parallel; blocks already cached are not fetched again.
        pin: pin them too, so that no eviction removes them (PinLimitError, and nothing
        fetched, if the pinned blocks would take more than the cache limit). progress is
        called with the bytes of each block fetched, on_plan once with the bytes to fetch."""
        return warmup(
            self.store, self._disk_cache(), self.list, [paths] if isinstance(paths, str) else paths,
            pin=pin, progress=progress, on_plan=on_plan, jobs=jobs,
        )  # fmt: skip

    def unpin(self, paths: str | Sequence[str]) -> list[Pin]:
        """Remove the pins of files (a directory: of every file under it); the pins removed."""
        return unpin(
            self._disk_cache(), self.url, [paths] if isinstance(paths, str) else list(paths)
        )

    def pins(self) -> list[Pin]:
        """The pins in the disk cache of this store, by path."""
        return [p for p in self._disk_cache().pins() if p.meta.get("store") == self.url]

    def _disk_cache(self) -> DiskBlockCache:
        if self.reader.disk_cache is None:
            raise InvalidArgumentError("this store was opened without a disk cache")
        return self.reader.disk_cache

    # retention and collection

    def forget(
        self, target: str, policy: Policy | None = None, *, dry_run: bool = False, **rules: Any
    ) -> ForgetPlan:
        """Forget the versions under target (a path, a directory, '' for the store) that
        the policy does not keep: a Policy, or its fields as keywords (keep_last=2,
        keep_within=seconds, keep_best=1, by="accuracy" or "loss:min", alias_history=).
        dry_run: only say which, and what a gc would then free."""
        if policy is None:
            policy = Policy(**rules)
        elif rules:
            raise InvalidArgumentError("give a Policy or its rules as keywords, not both")
        plan = plan_forget(self.store, target, policy)
        if dry_run:
            estimate_freed(self.store, plan)
            return plan
        return apply_forget(self.store, plan)

    def gc(self, *, dry_run: bool = False, wait: bool = True, progress=None, **options) -> GcReport:
        """Collect garbage (modelfs/store/gc.py): options grace, repack, break_lock."""
        return Collector(self.store, progress=progress, **options).run(dry_run=dry_run, wait=wait)

    def verify(self, path: str, version: int | None = None) -> dict[str, Any]:
        """Fetch every block of a version from the store (not the cache), check each
        block and the whole-file hash; CorruptionError names the first bad offset."""
        norm, v = self._file(path, version)
        assert v.manifest is not None
        manifest = self.store.load_manifest(v.manifest)
        whole = blake3.blake3(max_threads=blake3.blake3.AUTO)
        batch: list[BlockRef] = []
        batch_bytes = 0

        def flush() -> None:
            try:
                datas = self.store.read_blocks(batch)
            except CorruptionError as e:
                bad = next((b for b in batch if b.location.block_id == e.block_id), batch[0])
                raise e.with_file(norm, bad.file_offset) from None
            for data in datas:
                whole.update(data)
            batch.clear()

        for b in manifest.blocks:  # in batches, so memory stays bounded
            batch.append(b)
            batch_bytes += b.length
            if batch_bytes >= 64 << 20:
                flush()
                batch_bytes = 0
        if batch:
            flush()
        if f"blake3:{whole.hexdigest()}" != manifest.content_hash:
            raise CorruptionError(f"{norm} version {v.version}: whole-file hash does not match")
        return {
            "path": norm,
            "version": v.version,
            "size": manifest.size,
            "blocks": len(manifest.blocks),
            "content_hash": manifest.content_hash,
        }

    def fsck(self, progress: Progress | None = None, *, repair: bool = False) -> FsckReport:
        return self.store.fsck(progress, repair=repair)

    @staticmethod
    def version_dict(v: Version) -> dict[str, Any]:
        return {**asdict(v), "deleted": v.deleted}


def _s3_options(url: str | os.PathLike[str], given: dict[str, Any] | None) -> dict[str, Any]:
    """The S3 options that apply to url: none unless it is an s3:// URL."""
    if urlparse(os.fspath(url)).scheme != "s3":
        return {}
    return {k: v for k, v in (given or {}).items() if v is not None}


def init_store(
    url: str | os.PathLike[str],
    config: StoreConfig | None = None,
    *,
    unsafe_single_writer: bool = False,
    s3_options: dict[str, Any] | None = None,
) -> None:
    """Create an empty store at url (a missing local directory is created).

    s3_options: for s3:// URLs, what the AWS configuration would otherwise give
    (endpoint_url, region_name, profile_name, aws_access_key_id, ...).
    """
    backend = open_backend(url, create=True, **_s3_options(url, s3_options))
    try:
        Store.create(backend, config, unsafe_single_writer=unsafe_single_writer).close()
    except ModelfsError:
        backend.close()
        raise


def open_store(
    url: str | os.PathLike[str],
    *,
    create: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_size: int = DEFAULT_CACHE_SIZE,
    use_disk_cache: bool = True,
    config: StoreConfig | None = None,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    retry_seconds: float | None = None,
    s3_options: dict[str, Any] | None = None,
) -> Client:
    """Open the store at url; with create=True, make it first if it does not exist.

    max_requests: requests to the store in flight at once. retry_seconds: how
    long a request to a network store is retried before it fails (s3:// only).
    s3_options: as for init_store.
    """
    if create:
        try:
            init_store(url, config, s3_options=s3_options)
        except AlreadyExistsError:
            pass
    options = _s3_options(url, s3_options)
    if urlparse(os.fspath(url)).scheme == "s3":
        # Enough pooled connections for the readers plus a multipart upload's parts.
        options.update(retry_seconds=retry_seconds, max_pool_connections=max(32, 2 * max_requests))
    backend = open_backend(url, **options)
    try:
        store = Store.open(backend, max_requests=max_requests)
    except ModelfsError:
        backend.close()
        raise
    return Client(store, cache_dir=cache_dir, cache_size=cache_size, use_disk_cache=use_disk_cache)


__all__ = ["Client", "StoreNotFoundError", "init_store", "open_store"]
