"""Inode numbers for paths, with the kernel's lookup counts.

An inode stands for a path (the root is ROOT_INODE and the path ""). Numbers
are never reused while the mount lives, so a stale number can never reach
another file. The kernel's lookup count is kept honestly: an inode is
forgotten only when the kernel says so (forget), never when its file is
unlinked, since an open file outlives its name.
"""

from __future__ import annotations

import itertools

import pyfuse3

from ..errors import NotFoundError


class InodeTable:
    def __init__(self) -> None:
        self._path: dict[int, str] = {pyfuse3.ROOT_INODE: ""}
        self._inode: dict[str, int] = {"": pyfuse3.ROOT_INODE}
        self._lookups: dict[int, int] = {}
        self._next = itertools.count(pyfuse3.ROOT_INODE + 1)

    def path(self, inode: int) -> str:
        try:
            return self._path[inode]
        except KeyError:
            raise NotFoundError(
                f"inode {inode} is unknown (forgotten or never looked up)"
            ) from None

    def inode(self, path: str) -> int:
        """The inode of path, made on first use."""
        ino = self._inode.get(path)
        if ino is None:
            ino = next(self._next)
            self._inode[path] = ino
            self._path[ino] = path
        return ino

    def known(self, path: str) -> int | None:
        return self._inode.get(path)

    def looked_up(self, inode: int) -> None:
        self._lookups[inode] = self._lookups.get(inode, 0) + 1

    def forget(self, inode: int, count: int) -> bool:
        """Count down the kernel's lookups; True when the inode is gone for good."""
        left = self._lookups.get(inode, 0) - count
        if left > 0:
            self._lookups[inode] = left
            return False
        self._lookups.pop(inode, None)
        if inode != pyfuse3.ROOT_INODE and inode in self._path:
            path = self._path.pop(inode)
            if self._inode.get(path) == inode:
                del self._inode[path]
            return True
        return False

    def move(self, old: str, new: str) -> None:
        """Paths under old now live under new (rename); inode numbers follow their files."""
        prefix = old + "/"
        moved = [(p, i) for p, i in self._inode.items() if p == old or p.startswith(prefix)]
        for p, _ in moved:
            del self._inode[p]
        for p, i in moved:
            target = new + p[len(old) :]
            self._inode[target] = i
            self._path[i] = target

    def detach(self, path: str) -> None:
        """path's name is gone (unlink, or replaced by rename); its inode lives on until forgotten."""
        self._inode.pop(path, None)
