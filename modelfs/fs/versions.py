"""Version views: `.modelfs/at/`, every version, tag and alias readable by path.

Plain names under `at/` mirror the live tree, so a program can walk to a file
or directory and add a selector: `at/bert@champion/config.json`,
`at/bert/model.safetensors@3`, `at/ck/m.bin@blake3:<hex>`. A name holding an
'@' is an address (store/addresses.py), resolved at each lookup to one
immutable version; inside a directory version, names are the snapshot's. A
live name that holds an '@' is listed, and reached, as NAME@latest (a directory
so named is live too). A version's xattrs are those of the live file (metrics,
metadata) and what it resolved to (user.modelfs.*).

Each entry's inode stands for one immutable content: its key (the path the
inode table holds) is the version it resolved to (`at/bert@4`,
`at/bert/config.json@2`), not the name it was looked up by. So when an alias
moves, the next lookup of its name gets another inode, and a reader that
opened the old one keeps its bytes and its kernel page cache. Names that
follow something that moves (a tag or alias, @latest, a plain file name) are
answered with an entry timeout of 0, so the kernel asks again at each open
(close-to-open); pinned ones (@N, @blake3) may be cached.

Everything here is read-only: every change is EROFS (Operations says so).

Caveats:
- A directory version's file costs one ref read at its first lookup (for its
  time); every other lookup of a pinned entry is answered from memory.
"""

from __future__ import annotations

import errno
import logging
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyfuse3

from ..errors import InvalidArgumentError, NotFoundError
from ..store import Store, Version
from ..store.addresses import LATEST, Resolved, live_address, resolve
from ..store.registry import load_record
from ..store.snapshots import Snapshot, join
from .view import View
from .xattrs import METRIC_PREFIX, USER_PREFIX, as_xattrs, committed_metrics

log = logging.getLogger(__name__)

AT_DIR = ".modelfs/at"
_AT_PREFIX = AT_DIR + "/"
# How long the kernel may keep an entry of one immutable version (@N, @blake3, inside a
# directory version); live directories under at/ follow the refresh interval.
PINNED_TIMEOUT = 300.0

VERSION_XATTR = "user.modelfs.version"
HASH_XATTR = "user.modelfs.content_hash"
PATH_XATTR = "user.modelfs.path"


def is_view(path: str) -> bool:
    """Whether an inode path is the version views' directory or inside it."""
    return path == AT_DIR or path.startswith(_AT_PREFIX)


@dataclass(frozen=True)
class Entry:
    """One name under at/: a live directory, a directory version or a file version."""

    key: str  # the inode table's path for it: what it resolved to, under at/
    path: str  # the store path it shows ('' for the root)
    version: Version | None = None  # a file version
    snapshot: Snapshot | None = None  # a directory version (its files, relative to path)
    number: int | None = None  # a directory version's snapshot number (None: unnumbered)

    @property
    def is_dir(self) -> bool:
        return self.version is None

    @property
    def live(self) -> bool:
        """A plain directory mirroring the live tree (no version)."""
        return self.version is None and self.snapshot is None

    def resolved_xattrs(self) -> dict[str, str]:
        """What the entry resolved to (user.modelfs.*)."""
        found = {PATH_XATTR: self.path}
        if self.version is not None:
            found[VERSION_XATTR] = str(self.version.version)
            found[HASH_XATTR] = self.version.content_hash
        elif self.snapshot is not None:
            if self.number is not None:
                found[VERSION_XATTR] = str(self.number)
            found[HASH_XATTR] = self.snapshot.content_hash
        return found


def _file_key(path: str, number: int) -> str:
    return f"{_AT_PREFIX}{path}@{number}"


def _follows(selector: str | None) -> bool:
    """Whether a selector names something that may move (a tag, alias, or latest)."""
    if selector is None or selector == LATEST:
        return True
    return not (selector.isdigit() or selector.startswith("blake3:"))


class Versions:
    """The entries of at/ the kernel was told of, by key, and the lookups that make them."""

    def __init__(self, store: Store, view: View, run: Callable[..., Awaitable[Any]]) -> None:
        self.store = store
        self.view = view
        self._run = run
        root = Entry(AT_DIR, "")
        self._entries: dict[str, Entry] = {AT_DIR: root}

    def entry(self, key: str) -> Entry:
        try:
            return self._entries[key]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def keep(self, entry: Entry) -> Entry:
        """Register an entry under its key (kept until the kernel forgets its inode)."""
        return self._entries.setdefault(entry.key, entry)

    async def lookup(self, parent_key: str, name: str) -> tuple[Entry, bool]:
        """The entry name stands for in parent, and whether the name follows something
        that may move (then the kernel must not cache it)."""
        parent = self.entry(parent_key)
        if parent.snapshot is not None:
            return await self._inside(parent, name), False
        if "@" not in name and self.view.is_dir(join(parent.path, name)):
            return self.keep(Entry(join(parent_key, name), join(parent.path, name))), False
        # The parent is a live directory, whose own names may hold an '@'.
        resolved = await self._resolve(join(live_address(parent.path), name))
        selector = name.rpartition("@")[2] if "@" in name else None
        follows = _follows(selector)
        if not resolved.is_dir:
            assert resolved.entry is not None
            v = resolved.entry
            return self.keep(Entry(_file_key(resolved.path, v.version), resolved.path, v)), follows
        if selector is None or selector == LATEST:  # a directory of the live tree, as readdir
            return self.keep(Entry(join(parent_key, name), resolved.path)), False
        snap = resolved.snapshot
        assert snap is not None
        pin = str(resolved.version) if resolved.version is not None else snap.content_hash
        key = f"{_AT_PREFIX}{resolved.path}@{pin}"
        return self.keep(Entry(key, resolved.path, None, snap, resolved.version)), follows

    async def xattrs(self, entry: Entry, wanted: str | None) -> dict[str, str]:
        """An entry's xattrs: what it resolved to; a version's metrics and, for a file,
        its metadata, as the live file shows them (only those that may be `wanted`)."""
        resolved = entry.resolved_xattrs()
        if wanted is not None and (wanted in resolved or not wanted.startswith(USER_PREFIX)):
            return resolved
        found: dict[str, str] = {}
        if entry.version is not None:
            v = entry.version
            if v.manifest is not None and (wanted is None or not wanted.startswith(METRIC_PREFIX)):
                manifest = await self._run(self.store.load_manifest, v.manifest)
                found.update({k: val for k, val in manifest.metadata.items()
                              if k.startswith(USER_PREFIX)})  # fmt: skip
            if wanted is None or wanted.startswith(METRIC_PREFIX):
                found.update(
                    as_xattrs(await self._run(committed_metrics, self.store, entry.path, v))
                )
        elif entry.number is not None and (wanted is None or wanted.startswith(METRIC_PREFIX)):
            record = await self._run(
                partial(load_record, is_dir=True, damaged_ok=True), self.store.backend, entry.path
            )
            if record is not None:
                found.update(as_xattrs(record.metrics_of(entry.number)))
        return found | resolved

    def forget(self, key: str) -> None:
        """The kernel forgot the entry's inode: nothing reaches it by its key any more."""
        if key != AT_DIR:
            self._entries.pop(key, None)

    async def _resolve(self, text: str) -> Resolved:
        try:
            return await self._run(resolve, self.store, text)
        except (NotFoundError, InvalidArgumentError) as e:
            # An address that names nothing says why; a plain name that is not there is
            # as common as on any filesystem (programs probe for files).
            level = logging.INFO if "@" in text else logging.DEBUG
            log.log(level, "%s/%s: no such version: %s", AT_DIR, text, e)
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    async def _inside(self, parent: Entry, name: str) -> Entry:
        """A name inside a directory version: the snapshot's, taken literally."""
        snap = parent.snapshot
        assert snap is not None
        f = snap.file(name)
        if f is not None:
            path = join(snap.path, name)
            key = _file_key(path, f.version)
            known = self._entries.get(key)
            if known is not None:
                return known
            try:
                version = await self._run(self.store.version, path, f.version)
            except NotFoundError as e:
                log.info("%s: in %s but not in the store: %s", path, parent.key, e)
                raise pyfuse3.FUSEError(errno.ENOENT) from None
            return self.keep(Entry(key, path, version))
        if snap.is_dir(name) and "/" not in name:
            sub = snap.under(name)
            return self.keep(Entry(join(parent.key, name), sub.path, None, sub))
        log.debug("%s holds no %s", parent.key, name)  # a probe, as from_pretrained's
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def children(self, key: str) -> list[tuple[str, Entry, bool]]:
        """(name, entry, follows) of each entry of a directory, for readdir."""
        parent = self.entry(key)
        out: list[tuple[str, Entry, bool]] = []
        if parent.snapshot is not None:
            dirs, files = parent.snapshot.children()
            for name in sorted(dirs + files):
                try:
                    out.append((name, await self._inside(parent, name), False))
                except pyfuse3.FUSEError:
                    continue
            return out
        dirs, files = self.view.children(parent.path)
        for name in sorted(dirs):
            path = join(parent.path, name)
            shown = name if "@" not in name else name + "@" + LATEST
            out.append((shown, self.keep(Entry(join(key, shown), path)), False))
        for name in sorted(files):
            path = join(parent.path, name)
            v = self.view.file(path)
            if v is None or v.manifest is None:
                continue
            shown = name if "@" not in name else name + "@" + LATEST
            out.append((shown, self.keep(Entry(_file_key(path, v.version), path, v)), True))
        return out


def file_mode(entry: Entry) -> int:
    """A view entry's mode: read-only."""
    if entry.version is None:
        return stat.S_IFDIR | 0o555
    mode = entry.version.file_mode
    if stat.S_ISLNK(mode):
        return mode
    return stat.S_IFMT(mode) | (mode & 0o555)
