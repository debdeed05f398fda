"""The whole tree of a store at one moment: its current files and its directories.

Built from one listing of refs/: each ref is read only when its change token
differs from the one seen at the previous scan, so refreshing a mount's view
of a large, quiet store costs one listing and no reads. Paths come from the
refs themselves (a key with a shortened name cannot be decoded); a marker is
read only when its key cannot be decoded.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Executor
from dataclasses import dataclass, field

from ..backends.base import Backend
from ..errors import FormatError, NotFoundError
from .paths import (
    REFS_PREFIX,
    describe_key,
    is_dir_marker_key,
    is_file_ref_key,
    is_shortened_key,
    marker_path,
    path_from_dir_marker_key,
)
from .refs import Ref, Version

log = logging.getLogger(__name__)


@dataclass
class Tree:
    files: dict[str, Version] = field(default_factory=dict)  # path -> current version
    dirs: set[str] = field(default_factory=lambda: {""})  # every directory; "" is the root
    explicit_dirs: set[str] = field(default_factory=set)  # those with a marker (mkdir)

    def add_dir_and_parents(self, path: str) -> None:
        while path and path not in self.dirs:
            self.dirs.add(path)
            path = path.rpartition("/")[0]

    def children(self, path: str) -> tuple[list[str], list[str]]:
        """(subdirectory names, file names) directly inside directory path."""
        prefix = path + "/" if path else ""
        dirs = sorted(
            d[len(prefix) :]
            for d in self.dirs
            if d and d.startswith(prefix) and "/" not in d[len(prefix) :]
        )
        files = sorted(
            f[len(prefix) :]
            for f in self.files
            if f.startswith(prefix) and "/" not in f[len(prefix) :]
        )
        return dirs, files


class RefCache:
    """Refs and shortened markers read at earlier scans, by key, with their change tokens."""

    def __init__(self) -> None:
        self._refs: dict[str, tuple[str, Ref]] = {}
        # Markers whose key cannot be decoded (a shortened name): their path is in the body.
        self._markers: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def scan(self, backend: Backend, pool: Executor) -> Tree:
        infos = list(backend.list_info(REFS_PREFIX))
        tree = Tree()
        stale: list[tuple[str, str]] = []
        with self._lock:
            seen = {i.key for i in infos}
            for cache in (self._refs, self._markers):
                for key in [k for k in cache if k not in seen]:
                    del cache[key]
            for info in infos:
                if is_dir_marker_key(info.key) and not is_shortened_key(info.key):
                    path = path_from_dir_marker_key(info.key)
                    tree.explicit_dirs.add(path)
                    tree.add_dir_and_parents(path)
                elif is_dir_marker_key(info.key) or is_file_ref_key(info.key):
                    cache = self._markers if is_dir_marker_key(info.key) else self._refs
                    cached = cache.get(info.key)
                    if cached is None or cached[0] != info.token or not info.token:
                        stale.append((info.key, info.token))

        def load(item: tuple[str, str]) -> tuple[str, str, Ref | str | None]:
            key, token = item
            try:
                data = backend.get(key)
            except NotFoundError:
                return key, token, None  # deleted since the listing
            try:
                if is_dir_marker_key(key):
                    return key, token, marker_path(key, data)
                return key, token, Ref.from_bytes(data, key)
            except FormatError as e:
                log.warning("skipping %s: %s", describe_key(key), e)
                return key, token, None

        for key, token, loaded in pool.map(load, stale):
            with self._lock:
                if loaded is None:
                    self._refs.pop(key, None)
                    self._markers.pop(key, None)
                elif isinstance(loaded, str):
                    self._markers[key] = (token, loaded)
                else:
                    self._refs[key] = (token, loaded)
        with self._lock:
            for _token, path in self._markers.values():
                tree.explicit_dirs.add(path)
                tree.add_dir_and_parents(path)
            for _token, ref in self._refs.values():
                current = ref.current
                if current is not None:
                    tree.files[ref.path] = current
                    tree.add_dir_and_parents(ref.path.rpartition("/")[0])
        return tree
