"""Inode numbers, the kernel's lookup counts, and what the kernel was told of each inode.

An inode stands for one content of one path. The root is ROOT_INODE and the
path "". A path's inode (the one its lookups return) describes the path's
committed version; a write session gets an inode of its own (new_detached),
which lookups return only to the processes taking part in it. Numbers are
never reused while the mount lives, so a stale number never reaches another
file.

The kernel keeps one size and one page cache per inode for all the files
open on it, so an inode must never describe two contents at once: when the
path's content changes while readers hold the old one, the path gets a new
inode and the readers keep the old one (pinned_reader, check_fresh). The
kernel's lookup count is kept honestly: an inode is forgotten only when the
kernel says so (forget), never when its name goes, since an open file
outlives its name.
"""

from __future__ import annotations

import errno
import itertools
from typing import TYPE_CHECKING

import pyfuse3

from ..errors import NotFoundError
from ..store import Version

if TYPE_CHECKING:
    from .reads import ReadHandle

Content = tuple[str, int]  # (content hash, size): what a version looks like to the kernel


def content_of(v: Version) -> Content:
    return (v.content_hash, v.size)


class InodeTable:
    def __init__(self) -> None:
        self._path: dict[int, str] = {pyfuse3.ROOT_INODE: ""}
        self._inode: dict[str, int] = {"": pyfuse3.ROOT_INODE}
        self._lookups: dict[int, int] = {}
        self._next = itertools.count(pyfuse3.ROOT_INODE + 1)
        self._described: dict[int, Content] = {}  # the content whose size the kernel holds
        self._page_cache: dict[int, str] = {}  # the manifest whose pages the kernel may keep
        self._readers: dict[int, list[ReadHandle]] = {}  # open read handles, by inode
        self._pinned: set[int] = set()  # kept whatever the kernel forgets (a session's)

    # numbers and paths

    def path(self, inode: int) -> str:
        try:
            return self._path[inode]
        except KeyError:
            raise NotFoundError(
                f"inode {inode} is unknown (forgotten or never looked up)"
            ) from None

    def inode(self, path: str) -> int:
        """The inode lookups of path return, made on first use."""
        ino = self._inode.get(path)
        if ino is None:
            ino = next(self._next)
            self._inode[path] = ino
            self._path[ino] = path
        return ino

    def known(self, path: str) -> int | None:
        return self._inode.get(path)

    def new_detached(self, path: str) -> int:
        """A new inode for path that the path's lookups do not return (a write session's).

        It is pinned: the kernel may forget it and be given it again by a later lookup
        (it forgets an inode a revalidation returned in place of the one it had), so
        it lives until unpin.
        """
        ino = next(self._next)
        self._path[ino] = path
        self._pinned.add(ino)
        return ino

    def unpin(self, inode: int) -> None:
        self._pinned.discard(inode)
        if inode not in self._lookups:
            self._drop(inode)

    def looked_up(self, inode: int) -> None:
        self._lookups[inode] = self._lookups.get(inode, 0) + 1

    def forget(self, inode: int, count: int) -> None:
        """Count down the kernel's lookups; the inode is dropped once none are left."""
        left = self._lookups.get(inode, 0) - count
        if left > 0:
            self._lookups[inode] = left
            return
        self._lookups.pop(inode, None)
        if inode not in self._pinned:
            self._drop(inode)

    def _drop(self, inode: int) -> None:
        if inode == pyfuse3.ROOT_INODE or inode not in self._path:
            return
        path = self._path.pop(inode)
        if self._inode.get(path) == inode:
            del self._inode[path]
        self._described.pop(inode, None)
        self._page_cache.pop(inode, None)

    def move(self, old: str, new: str) -> None:
        """Paths under old now live under new (rename); inode numbers follow their files."""
        prefix = old + "/"

        def moved(p: str) -> bool:
            return p == old or p.startswith(prefix)

        for ino, p in list(self._path.items()):
            if moved(p):
                self._path[ino] = new + p[len(old) :]
        entries = [(p, i) for p, i in self._inode.items() if moved(p)]
        for p, _ in entries:
            del self._inode[p]
        for p, i in entries:
            self._inode[new + p[len(old) :]] = i

    def detach(self, path: str) -> None:
        """path's lookups stop returning its inode (unlink, replaced, or new content while
        readers hold the old); the inode lives on until the kernel forgets it."""
        self._inode.pop(path, None)

    # what the kernel was told

    def told(self, inode: int, version: Version) -> None:
        """The kernel now holds version's size for inode."""
        self._described[inode] = content_of(version)

    def add_reader(self, handle: ReadHandle) -> None:
        self._readers.setdefault(handle.inode, []).append(handle)

    def remove_reader(self, handle: ReadHandle) -> None:
        readers = self._readers.get(handle.inode, [])
        readers.remove(handle)
        if not readers:
            self._readers.pop(handle.inode, None)

    def has_readers(self, inode: int) -> bool:
        return bool(self._readers.get(inode))

    def pinned_reader(self, inode: int, path: str, current: Version | None) -> ReadHandle | None:
        """An open reader of inode whose content is no longer path's (replaced, changed,
        unlinked): the inode must keep describing that reader's version."""
        readers = self._readers.get(inode)
        if not readers:
            return None
        if self._inode.get(path) != inode:
            return readers[0]
        for h in readers:
            if current is None or content_of(h.version) != content_of(current):
                return h
        return None

    def for_lookup(self, path: str, current: Version | None) -> int:
        """path's inode for a lookup: a new one if readers of the old one hold other content."""
        inode = self.inode(path)
        if self.pinned_reader(inode, path, current) is not None:
            self.detach(path)
            inode = self.inode(path)
        return inode

    def check_fresh(self, inode: int, path: str, version: Version) -> None:
        """ESTALE if the kernel's inode describes other content than version (a stale dentry).

        Its size would cut reads short (or let them run past the end), and
        readers of the old content may share it; the kernel retries the open
        after a fresh lookup, which gives the path a new inode.
        """
        described = self._described.get(inode)
        if (
            self._inode.get(path) != inode
            or (described is not None and described != content_of(version))
            or any(
                content_of(h.version) != content_of(version) for h in self._readers.get(inode, ())
            )
        ):
            if self._inode.get(path) == inode:
                self.detach(path)
            raise pyfuse3.FUSEError(errno.ESTALE)

    def keep_page_cache(self, inode: int, manifest_id: str) -> bool:
        """Whether the kernel may keep inode's cached pages for an open of this manifest
        (only if they are of it); records that they will be from now on."""
        keep = self._page_cache.get(inode) == manifest_id
        self._page_cache[inode] = manifest_id
        return keep

    def drop_page_cache(self, inode: int) -> None:
        self._page_cache.pop(inode, None)
