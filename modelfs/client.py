"""The Python API: a store opened by URL, with its caches, ready to use.

    import modelfs
    with modelfs.open_store("/data/models") as store:
        store.put("bert/model.safetensors", "model.safetensors")
        with store.open("bert/model.safetensors") as f:
            f.seek(1024); head = f.read(4096)

This is wiring: it knows the backend, store, cache and reader layers and adds
no format logic of its own.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import blake3

from .backends import open_backend
from .cache import DiskBlockCache
from .errors import (
    AlreadyExistsError,
    CorruptionError,
    InvalidArgumentError,
    ModelfsError,
    StoreNotFoundError,
)
from .reader import BlockReader, StoredFile
from .store import BlockRef, FileInfo, FsckReport, PutResult, Store, StoreConfig, Version
from .store.paths import normalize_path
from .store.store import DEFAULT_MAX_REQUESTS, Progress, Source

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
    ) -> PutResult:
        """Store a local path, a binary file object or bytes as the next version of path."""
        return self.store.put(
            path, source, metadata=metadata, message=message, progress=progress, mode=mode
        )

    def delete(self, path: str) -> Version:
        return self.store.delete(path)

    # reading

    def open(self, path: str, version: int | None = None) -> StoredFile:
        """A lazy, seekable, read-only file object for a version (default: current)."""
        norm = normalize_path(path)
        v = self.store.version(norm, version)
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
        return self.store.list(prefix)

    def history(self, path: str) -> list[Version]:
        return self.store.history(path)

    def stat(self, path: str, version: int | None = None) -> dict[str, Any]:
        """Size, blocks, codecs, dedup and compression figures of one version."""
        v = self.store.version(path, version)
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
        return {
            "path": normalize_path(path),
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
        }

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
                if not v.deleted:
                    versions += 1
                    logical_all += v.size
        return {
            "url": self.url,
            "files": len(files),
            "versions": versions,
            "blocks": len(locations),
            "logical_bytes_current": logical_current,
            "logical_bytes_all_versions": logical_all,
            "unique_bytes": unique,
            "stored_bytes": stored,
            "dedup_ratio": logical_all / unique if unique else 1.0,
            "compression_ratio": unique / stored if stored else 1.0,
        }

    def verify(self, path: str, version: int | None = None) -> dict[str, Any]:
        """Fetch every block of a version from the store (not the cache), check each
        block and the whole-file hash; CorruptionError names the first bad offset."""
        norm = normalize_path(path)
        v = self.store.version(norm, version)
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
        }

    def fsck(self, progress: Progress | None = None) -> FsckReport:
        return self.store.fsck(progress)

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
