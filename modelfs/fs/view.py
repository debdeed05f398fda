"""The mount's view of the store's tree: a snapshot, its refresh, close-to-open lookups.

The tree comes from a scan of the store's refs, refreshed at most every
refresh_interval seconds. This mount's own changes enter it at once, through
the few methods that record a change; a scan that began before one of them
could undo it, so such a scan is retried (see refresh). Opens always read the
path's ref afresh (current_version), whatever the interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from ..errors import BackendError, NotFoundError
from ..store import Store, Version
from ..store.namespace import Tree

log = logging.getLogger(__name__)

T = TypeVar("T")
Run = Callable[..., Awaitable[Any]]  # runs a blocking call in a worker thread


class View:
    def __init__(self, store: Store, run: Run, refresh_interval: float) -> None:
        self.store = store
        self._run = run
        self.refresh_interval = refresh_interval
        self.tree = Tree()
        self.refresh_errors = 0
        self._tree_time = 0.0
        self._refresh_failing = False
        self._refresh_lock = trio.Lock()
        self._changes = 0  # bumped by every change this mount records

    # queries of the snapshot

    def file(self, path: str) -> Version | None:
        return self.tree.files.get(path)

    def is_dir(self, path: str) -> bool:
        return path == "" or path in self.tree.dirs

    def children(self, path: str) -> tuple[list[str], list[str]]:
        return self.tree.children(path)

    # this mount's changes: the only places the snapshot changes between scans

    def file_changed(self, path: str, version: Version) -> None:
        self.tree.files[path] = version
        self.tree.add_dir_and_parents(path.rpartition("/")[0])
        self._changes += 1

    def file_removed(self, path: str) -> None:
        self.tree.files.pop(path, None)
        self._changes += 1

    def dir_added(self, path: str, *, explicit: bool = False) -> None:
        self.tree.add_dir_and_parents(path)
        if explicit:
            self.tree.explicit_dirs.add(path)
        self._changes += 1

    def dir_removed(self, path: str) -> None:
        self.tree.dirs.discard(path)
        self.tree.explicit_dirs.discard(path)
        self._changes += 1

    # reading the store

    async def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._tree_time < self.refresh_interval:
            return
        async with self._refresh_lock:
            if not force and time.monotonic() - self._tree_time < self.refresh_interval:
                return
            # A scan that began before one of this mount's own changes may predate it, and
            # installing it would undo the change (a file just written vanishes, an unlinked
            # one comes back) until the next refresh: scan again. Each change is in the
            # store before it is recorded, so a scan that began after it sees it.
            for _ in range(3):
                changes = self._changes
                try:
                    tree = await self._run(self.store.scan)
                except BackendError as e:
                    # The store is unreachable: serve the names known from the last scan
                    # (reads of cached blocks keep working) and try again after the interval.
                    self._tree_time = time.monotonic()
                    self.refresh_errors += 1
                    if not self._refresh_failing:
                        self._refresh_failing = True
                        log.warning("cannot list the store, showing the last listing: %s", e)
                    return
                if self._refresh_failing:
                    self._refresh_failing = False
                    log.warning("listing the store works again")
                if changes == self._changes:
                    self.tree = tree
                    self._tree_time = time.monotonic()
                    return
            # Still changing: keep the tree that has the changes (it lags only in what
            # other mounts did) rather than scan on every request.
            self._tree_time = time.monotonic()

    async def current_version(self, path: str) -> Version | None:
        """path's current version, read afresh from the store (None if there is none)."""
        try:
            version = await self._run(self.store.version, path)
        except NotFoundError:
            if path in self.tree.files:
                self.file_removed(path)
            return None
        if self.tree.files.get(path) != version:
            self.file_changed(path, version)
        return version

    async def found_in_store(self, path: str) -> bool:
        """Whether path, unknown to the last refresh, is in the store now (then added).

        Close-to-open holds for names too: a file another mount has just closed (or
        a directory it made) opens at once, not after the next refresh. A name that
        is in neither costs one ref read and one listing per lookup.
        """
        if await self.current_version(path) is not None:
            return True
        if await self._run(self.store.is_dir, path):
            self.dir_added(path)
            return True
        return False
