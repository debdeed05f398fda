"""Warming the disk cache: fetch files into it ahead of use, and pin them there.

`warmup(store, cache, paths)` resolves each path (a file, a directory: every
current file under it, or an address) to its blocks, and fetches those the
disk cache lacks from the store in parallel batches (Store.read_blocks:
coalesced per pack, each block verified against its id), putting each into
the disk cache. A block shared by several files is fetched once. With pin,
the files' blocks are pinned before anything is fetched, so that no process
sharing the cache evicts them meanwhile, and a pin that would not fit fails
before a byte is fetched. `find_mount` maps a path inside a running mount to
the mount's store, cache directory and cache limit (from its .modelfs/stats),
so that a warmup fills the cache the mount reads.

Caveats:
- A file's pin names the version current when it was pinned: a newer version
  is not pinned until the file is warmed with --pin again.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from .cache import DiskBlockCache, Pin
from .errors import CorruptionError, InvalidArgumentError, ModelfsError, NotFoundError
from .store import BlockRef, Store
from .store.addresses import parse_address
from .store.paths import normalize_path

DEFAULT_JOBS = 4  # batches in flight at once; each is read_blocks' parallel requests
BATCH_BYTES = 32 << 20

Progress = Callable[[int], None]


@dataclass
class WarmupSummary:
    files: int = 0
    bytes: int = 0  # the files' sizes
    blocks: int = 0  # distinct blocks among them
    blocks_cached: int = 0  # already in the disk cache
    blocks_fetched: int = 0
    bytes_fetched: int = 0
    pinned: int = 0  # files pinned
    seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_fetched / self.seconds / 1e6 if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "mb_per_s": round(self.mb_per_s, 1)}


@dataclass(frozen=True)
class MountInfo:
    """A running mount, as its .modelfs/stats describes it."""

    mountpoint: str
    store: str
    cache_dir: str
    cache_size: int


def find_mount(path: str) -> tuple[MountInfo, str] | None:
    """The mount a local path lies in and the path's store path; None if in no mount."""
    here = os.path.abspath(path)
    while True:
        if os.path.ismount(here):
            try:
                with open(os.path.join(here, ".modelfs", "stats")) as f:
                    stats = json.load(f)
            except (OSError, ValueError):
                stats = None
            if isinstance(stats, dict) and stats.get("disk_cache_dir"):
                rel = os.path.relpath(os.path.abspath(path), here)
                rel = "" if rel == "." else rel.replace(os.sep, "/")
                if rel.split("/")[0] == ".modelfs":
                    raise InvalidArgumentError(
                        f"{path} is in the mount's control directory: give a stored file"
                    )
                info = MountInfo(
                    here, stats["store"], stats["disk_cache_dir"], int(stats["disk_cache_limit"])
                )
                return info, rel
            if stats is not None:  # a modelfs mount too old to say where its cache is
                raise ModelfsError(
                    f"the mount at {here} does not say where its cache is: give --store URL "
                    "and --cache-dir DIR"
                )
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def pin_key(store_url: str, path: str) -> str:
    return f"{store_url} {path}"


@dataclass
class _File:
    path: str
    version: int
    size: int
    blocks: list[BlockRef]


def _files(
    store: Store, list_files: Callable[[str], list[Any]], paths: Sequence[str]
) -> list[_File]:
    """Every file the paths name (a directory: each current file under it), once."""
    infos = {}
    for p in paths:
        found = list_files(p)
        if not found:
            where = parse_address(p).path if "@" in p else normalize_path(p) if p.strip("/") else ""
            if where and not store.is_dir(where):
                raise NotFoundError(f"no such file or directory in the store: {p}")
        for info in found:
            infos.setdefault((info.path, info.version), info)
    manifests = store.map_io(lambda i: store.manifest(i.path, i.version), list(infos.values()))
    return [
        _File(i.path, i.version, i.size, m.blocks)
        for i, m in zip(infos.values(), manifests, strict=True)
    ]


def warmup(
    store: Store,
    cache: DiskBlockCache,
    list_files: Callable[[str], list[Any]],
    paths: Sequence[str],
    *,
    pin: bool = False,
    progress: Progress | None = None,
    on_plan: Callable[[int], None] | None = None,
    jobs: int = DEFAULT_JOBS,
) -> WarmupSummary:
    """Fetch the files the paths name into the disk cache (list_files: Client.list)."""
    started = time.monotonic()
    files = _files(store, list_files, paths)
    summary = WarmupSummary(files=len(files), bytes=sum(f.size for f in files))
    wanted: dict[str, tuple[BlockRef, str]] = {}  # id -> (a ref to it, a file using it)
    for f in files:
        for b in f.blocks:
            wanted.setdefault(b.location.block_id, (b, f.path))
    summary.blocks = len(wanted)
    if pin:  # first: a pin that cannot fit fails before anything is fetched
        url = store.backend.url
        cache.pin_all(
            (
                pin_key(url, f.path),
                {b.location.block_id: b.location.length for b in f.blocks},
                {"store": url, "path": f.path, "version": f.version},
            )
            for f in files
        )
        summary.pinned = len(files)
    missing = [(b, path) for bid, (b, path) in wanted.items() if not cache.contains(bid)]
    summary.blocks_cached = len(wanted) - len(missing)
    if on_plan is not None:
        on_plan(sum(b.location.length for b, _ in missing))
    batches: list[list[tuple[BlockRef, str]]] = [[]]
    size = 0
    for item in missing:
        if size >= BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += item[0].location.length
    lock = threading.Lock()

    def fetch(batch: list[tuple[BlockRef, str]]) -> None:
        refs = [b for b, _ in batch]
        try:
            datas = store.read_blocks(refs)
        except CorruptionError as e:
            b, path = next(
                ((b, p) for b, p in batch if b.location.block_id == e.block_id), batch[0]
            )
            raise e.with_file(path, b.file_offset) from None
        for b, data in zip(refs, datas, strict=True):
            cache.put(b.location.block_id, data)
            with lock:
                summary.blocks_fetched += 1
                summary.bytes_fetched += len(data)
            if progress is not None:
                progress(len(data))

    if missing:
        with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="modelfs-warmup") as pool:
            for done in [pool.submit(fetch, batch) for batch in batches]:
                done.result()  # the first failure fails the warmup
    summary.seconds = time.monotonic() - started
    return summary


def unpin(cache: DiskBlockCache, store_url: str, paths: Sequence[str]) -> list[Pin]:
    """Remove the pins of these paths (a directory: of every file under it); the removed."""
    prefixes = [parse_address(p).path if "@" in p else p.strip("/") for p in paths]
    removed = []
    for p in cache.pins():
        if p.meta.get("store") != store_url:
            continue
        path = str(p.meta.get("path", ""))
        if any(not pre or path == pre or path.startswith(pre + "/") for pre in prefixes):
            if cache.unpin(p.key):
                removed.append(p)
    return removed
