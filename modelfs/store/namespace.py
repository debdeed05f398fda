"""The whole tree of a store at one moment: its current files and its directories.

Built from one listing of refs/: each ref is read only when its change token
differs from the one seen at the previous scan, so refreshing a mount's view
of a large, quiet store costs one listing and no reads.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Executor
from dataclasses import dataclass, field

from ..backends.base import Backend
from ..errors import FormatError, NotFoundError
from .paths import REFS_PREFIX, is_dir_marker_key, path_from_dir_marker_key, path_from_ref_key
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
    """Refs read at earlier scans, by key, with the change token they had."""

    def __init__(self) -> None:
        self._refs: dict[str, tuple[str, Ref]] = {}
        self._lock = threading.Lock()

    def scan(self, backend: Backend, pool: Executor) -> Tree:
        infos = list(backend.list_info(REFS_PREFIX))
        tree = Tree()
        stale: list[tuple[str, str]] = []
        with self._lock:
            seen = {i.key for i in infos}
            for key in list(self._refs):
                if key not in seen:
                    del self._refs[key]
            for info in infos:
                if is_dir_marker_key(info.key):
                    path = path_from_dir_marker_key(info.key)
                    tree.explicit_dirs.add(path)
                    tree.add_dir_and_parents(path)
                elif info.key.endswith("~"):
                    cached = self._refs.get(info.key)
                    if cached is None or cached[0] != info.token or not info.token:
                        stale.append((info.key, info.token))

        def load(item: tuple[str, str]) -> tuple[str, str, Ref | None]:
            key, token = item
            path = path_from_ref_key(key)
            try:
                data = backend.get(key)
            except NotFoundError:
                return key, token, None  # deleted since the listing
            try:
                return key, token, Ref.from_bytes(data, path)
            except FormatError as e:
                log.warning("skipping %s: %s", path, e)
                return key, token, None

        for key, token, ref in pool.map(load, stale):
            with self._lock:
                if ref is None:
                    self._refs.pop(key, None)
                else:
                    self._refs[key] = (token, ref)
        with self._lock:
            for _token, ref in self._refs.values():
                current = ref.current
                if current is not None:
                    tree.files[ref.path] = current
                    tree.add_dir_and_parents(ref.path.rpartition("/")[0])
        return tree
