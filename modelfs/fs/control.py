"""The `.modelfs/` directory of a mount: files that show the mount itself.

`.modelfs/stats` holds the mount's figures as JSON (cache hit rate, bytes
fetched and served, commits, errors, store requests), made afresh at each
open. `.modelfs/at/` holds every version by address (versions.py); it is not
listed, only reached by path. The
directory cannot be written, renamed or removed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Protocol

from ..reader import BlockReader
from ..store import Store
from .reads import Reads
from .view import View
from .writes import Writes


class Counted(Protocol):
    """The request counters the handlers keep."""

    opens: int
    reads: int


CONTROL_DIR = ".modelfs"
STATS_FILE = ".modelfs/stats"


def is_control(path: str) -> bool:
    """Whether path is the control directory or inside it."""
    return path.split("/")[0] == CONTROL_DIR


@dataclass
class VirtualHandle:
    """An open control file: its bytes as of the open."""

    data: bytes


class Control:
    def __init__(
        self, store: Store, reader: BlockReader, view: View, reads: Reads, writes: Writes,
        requests: Counted, *, read_only: bool,
    ) -> None:  # fmt: skip
        # Read only: the figures of every part of the mount.
        self.store, self.reader, self.view = store, reader, view
        self.reads, self.writes, self.requests = reads, writes, requests
        self.read_only = read_only
        self.started = time.time()

    def entries(self) -> list[tuple[str, str]]:
        """(name, path) of each file in the control directory."""
        # at/ is reached by path but not listed (as ZFS hides .zfs): find, du, rsync -a and
        # backups of the mount would otherwise walk every version of every file again.
        return [("stats", STATS_FILE)]

    def content(self, path: str) -> bytes:
        if path != STATS_FILE:
            raise KeyError(path)
        return (json.dumps(self.stats(), indent=2) + "\n").encode()

    def stats(self) -> dict[str, object]:
        r = self.reader.stats
        disk = self.reader.disk_cache
        hits = r.memory_hits + r.disk_hits
        lookups = hits + r.blocks_fetched
        w = self.writes.counters
        backend = self.store.backend
        return {
            "store": backend.url,
            "uptime_s": round(time.time() - self.started, 1),
            "cache_hit_rate": round(hits / lookups, 4) if lookups else None,
            "blocks_from_memory": r.memory_hits,
            "blocks_from_disk_cache": r.disk_hits,
            "blocks_fetched": r.blocks_fetched,
            "blocks_verified": r.blocks_fetched,
            "bytes_fetched": r.bytes_fetched,
            "bytes_served": r.bytes_served,
            "disk_cache_bytes": disk.size if disk else 0,
            "disk_cache_limit": disk.max_bytes if disk else 0,
            # Where `modelfs warmup PATH-IN-THE-MOUNT` puts blocks for this mount to find.
            "disk_cache_dir": str(disk.directory.absolute()) if disk else None,
            "opens": self.requests.opens,
            "reads": self.requests.reads,
            "writes": w.writes,
            "bytes_written": w.bytes_written,
            "commits": w.commits,
            "commit_errors": w.commit_errors,
            "read_errors": self.reads.errors,
            "refresh_errors": self.view.refresh_errors,
            "read_only": self.read_only,
            "store_unavailable": getattr(backend, "unavailable", False),
            "files_being_written": len(self.writes.paths()),
            "store_requests": backend.request_counts(),
        }
