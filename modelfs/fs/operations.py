"""pyfuse3 Operations: the store as a directory tree any program can open by path.

Reads go through the BlockReader (memory cache, disk cache, verified fetches);
a file opened for reading is pinned to the version current at open, so it
never changes under its reader. The kernel keeps one size per inode for all
its open files, so an inode number stands for one content of its path: when
the content changes while readers hold the old one, the path gets a new inode
(and an open through a stale dentry fails with ESTALE, which makes the kernel
look the path up again). Writes go to a local staging file; flush (on
every close) and fsync commit a dirty file as a new version, so close()
reports a failed upload. Rename is metadata only. The namespace comes from
a scan of the store's refs, refreshed at most every refresh_interval seconds;
open() always reads the path's ref afresh (close-to-open consistency).

Blocking work (backend calls, hashing, zstd) runs in worker threads under one
CapacityLimiter; trio's event loop only moves requests.

Caveats:
- mtime is the commit time of the current version; utimens is accepted but not kept.
- Owners are the mounting user; chown to anyone else is refused with EPERM.
- chmod of a directory is accepted but not kept (directories are always 0755).
- Renaming a directory renames each file in it, one compare-and-swap each.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyfuse3
import trio

from ..errors import BackendError, ModelfsError, NotFoundError, ReadOnlyError
from ..reader import BlockReader
from ..store import Manifest, Store
from ..store.early import EarlyUploader
from ..store.namespace import Tree
from ..store.paths import ref_key
from ..store.refs import Version
from .errors import fuse_error_boundary
from .inodes import InodeTable
from .staging import MODE_KEY, StagedFile, StagingArea

log = logging.getLogger(__name__)

T = TypeVar("T")

CONTROL_DIR = ".modelfs"
STATS_FILE = ".modelfs/stats"
DEFAULT_FILE_MODE = stat.S_IFREG | 0o644
DIR_MODE = stat.S_IFDIR | 0o755
XATTR_PREFIX = "user."
BLOCK_SIZE = 4096
MIN_READAHEAD = 4 << 20
# Twice the kernel's own readahead (mount.py raises it to 1 MiB): a page fault in an
# mmap makes the kernel read 1 MiB around it, which may look sequential but is all
# the reader wants (safetensors maps the file and touches one tensor).
SEQUENTIAL_THRESHOLD = 2 << 20
NEAR = 8 << 20  # reads this close to the last ones continue a sequential run
MAX_READAHEAD = 64 << 20


def _fuse(err: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(err)


def _content(v: Version) -> tuple[str, int]:
    return (v.content_hash, v.size)


def _join(parent: str, name: bytes) -> str:
    text = os.fsdecode(name)
    if "/" in text or text in (".", ".."):
        raise _fuse(errno.EINVAL)
    return f"{parent}/{text}" if parent else text


@dataclass(eq=False)  # a handle is itself, not its fields: two opens are two readers
class ReadHandle:
    path: str
    inode: int
    version: Version
    manifest: Manifest
    last_end: int = 0
    sequential: int = 0  # bytes read back to back up to last_end
    readahead: int = 0
    prefetched_to: int = 0  # readahead has been started up to this offset


@dataclass
class WriteHandle:
    path: str
    inode: int
    staged: StagedFile
    writable: bool = True


@dataclass
class VirtualHandle:
    data: bytes


@dataclass
class DirHandle:
    entries: list[tuple[str, str]] = field(default_factory=list)  # (name, path)


@dataclass
class Counters:
    opens: int = 0
    reads: int = 0
    writes: int = 0
    bytes_written: int = 0
    commits: int = 0
    commit_errors: int = 0
    read_errors: int = 0
    refresh_errors: int = 0


@fuse_error_boundary
class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(
        self,
        store: Store,
        reader: BlockReader,
        staging: StagingArea,
        *,
        read_only: bool = False,
        refresh_interval: float = 5.0,
        threads: int = 16,
    ) -> None:
        super().__init__()
        self.store = store
        self.reader = reader
        self.staging = staging
        self.read_only = read_only
        self.refresh_interval = refresh_interval
        self.inodes = InodeTable()
        self.tree = Tree()
        self._tree_time = 0.0
        self._refresh_failing = False
        self._handles: dict[int, ReadHandle | WriteHandle | VirtualHandle | DirHandle] = {}
        self._next_fh = 1
        self._staged: dict[str, StagedFile] = {}  # store path -> file being written
        self._cached_manifest: dict[int, str] = {}  # inode -> manifest its page cache holds
        self._described: dict[int, tuple[str, int]] = {}  # inode -> content the kernel was told
        self._readers: dict[int, list[ReadHandle]] = {}  # inode -> its open read handles
        self._limiter = trio.CapacityLimiter(threads)
        # One file at a time uploads early; its upload itself runs several requests.
        self._early_uploads = ThreadPoolExecutor(1, thread_name_prefix="modelfs-early-upload")
        self._fsyncs = ThreadPoolExecutor(2, thread_name_prefix="modelfs-fsync")
        self._refresh_lock = trio.Lock()
        self._changes = 0  # bumped whenever this mount updates the tree from the store
        self._copy_locks: dict[int, trio.Lock] = {}  # id(staged) -> lock of its one copy-in
        self.counters = Counters()
        self.uid, self.gid = os.getuid(), os.getgid()
        self.started = time.time()
        self.initialized = trio.Event()  # set once the kernel's INIT request is answered

    def init(self) -> None:
        # Called while answering INIT; the answer goes out as soon as this returns, so
        # whoever waits on the event runs after the kernel has taken the mount's settings.
        self.initialized.set()

    # helpers

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def _refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._tree_time < self.refresh_interval:
            return
        async with self._refresh_lock:
            if not force and time.monotonic() - self._tree_time < self.refresh_interval:
                return
            # A scan that began before one of this mount's own changes may predate it, and
            # installing it would undo the change (a file just written vanishes, an unlinked
            # one comes back) until the next refresh: scan again. Each change is in the
            # store before it is counted, so a scan that began after it sees it.
            for _ in range(3):
                changes = self._changes
                try:
                    tree = await self._run(self.store.scan)
                except BackendError as e:
                    # The store is unreachable: serve the names known from the last scan
                    # (reads of cached blocks keep working) and try again after the interval.
                    self._tree_time = time.monotonic()
                    self.counters.refresh_errors += 1
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

    def _new_fh(self, handle: ReadHandle | WriteHandle | VirtualHandle | DirHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    def _check_writable(self) -> None:
        # The kernel refuses writes to a mount made with "ro" first; this is for the rest.
        if self.read_only:
            raise ReadOnlyError("the mount is read-only")

    def _is_dir(self, path: str) -> bool:
        return path == "" or path == CONTROL_DIR or path in self.tree.dirs

    def _exists(self, path: str) -> bool:
        return (
            self._is_dir(path)
            or path in self.tree.files
            or path in self._staged
            or path == STATS_FILE
        )

    def _attr(self, inode: int, path: str) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.generation = 0
        a.entry_timeout = self.refresh_interval
        a.attr_timeout = self.refresh_interval
        a.st_uid, a.st_gid = self.uid, self.gid
        a.st_blksize = 128 << 10
        mtime = self.started
        if path in self._staged:
            staged = self._staged[path]
            a.st_mode = int(staged.metadata.get(MODE_KEY, DEFAULT_FILE_MODE))
            a.st_size = staged.size
            a.st_nlink = 1
            mtime = os.fstat(staged.fd).st_mtime
            a.attr_timeout = a.entry_timeout = 0  # changing under us
        elif path == STATS_FILE:
            a.st_mode = stat.S_IFREG | 0o444
            a.st_size = len(self._stats_bytes())
            a.st_nlink = 1
            a.attr_timeout = 0
        elif path in self.tree.files:
            v = self.tree.files[path]
            self._described[inode] = _content(v)
            a.st_mode = v.mode or DEFAULT_FILE_MODE
            a.st_size = v.size
            a.st_nlink = 1
            mtime = v.time
        elif self._is_dir(path):
            a.st_mode = DIR_MODE
            a.st_size = 0
            a.st_nlink = 2
        else:
            raise _fuse(errno.ENOENT)
        a.st_blocks = (a.st_size + 511) // 512
        ns = int(mtime * 1e9)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
        return a

    def _handle_attr(self, inode: int, handle: ReadHandle) -> pyfuse3.EntryAttributes:
        """Attributes of an open (possibly since unlinked or replaced) file: its opened version."""
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.st_mode = handle.version.mode or DEFAULT_FILE_MODE
        a.st_size = handle.version.size
        a.st_nlink = 1
        a.st_uid, a.st_gid = self.uid, self.gid
        a.st_blksize = 128 << 10
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = int(handle.version.time * 1e9)
        a.attr_timeout = a.entry_timeout = self.refresh_interval
        return a

    def _pinned_reader(self, inode: int, path: str) -> ReadHandle | None:
        """An open reader of inode whose content is no longer path's (replaced, changed, unlinked)."""
        readers = self._readers.get(inode)
        if not readers:
            return None
        if self.inodes.known(path) != inode:
            return readers[0]
        if path in self._staged:
            return None  # being rewritten in place through this very inode
        current = self.tree.files.get(path)
        for h in readers:
            if current is None or _content(h.version) != _content(current):
                return h
        return None

    def _inode_for(self, path: str) -> int:
        """path's inode for lookups: a new one if readers of the old one hold other content."""
        inode = self.inodes.inode(path)
        if self._pinned_reader(inode, path) is not None:
            self.inodes.detach(path)
            inode = self.inodes.inode(path)
        return inode

    def _check_fresh(self, inode: int, path: str, version: Version) -> None:
        """ESTALE if the kernel's inode describes other content than version (a stale dentry).

        Its size would cut reads short (or let them run past the end), and
        readers of the old content may share it; the kernel retries the open
        after a fresh lookup, which gives the path a new inode.
        """
        described = self._described.get(inode)
        if (
            self.inodes.known(path) != inode
            or (described is not None and described != _content(version))
            or any(_content(h.version) != _content(version) for h in self._readers.get(inode, ()))
        ):
            if self.inodes.known(path) == inode:
                self.inodes.detach(path)
            raise _fuse(errno.ESTALE)

    def _stats_bytes(self) -> bytes:
        r = self.reader.stats
        disk = self.reader.disk_cache
        hits = r.memory_hits + r.disk_hits
        lookups = hits + r.blocks_fetched
        doc = {
            "store": self.store.backend.url,
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
            "opens": self.counters.opens,
            "reads": self.counters.reads,
            "writes": self.counters.writes,
            "bytes_written": self.counters.bytes_written,
            "commits": self.counters.commits,
            "commit_errors": self.counters.commit_errors,
            "read_errors": self.counters.read_errors,
            "refresh_errors": self.counters.refresh_errors,
            "read_only": self.read_only,
            "store_unavailable": getattr(self.store.backend, "unavailable", False),
            "files_being_written": len(self._staged),
            "store_requests": self.store.backend.request_counts(),
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    # lookups and attributes

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = _join(self.inodes.path(parent_inode), name)
        await self._refresh()
        if not self._exists(path) and not await self._found_in_store(path):
            raise _fuse(errno.ENOENT)
        inode = self._inode_for(path)
        attr = self._attr(inode, path)
        self.inodes.looked_up(inode)
        return attr

    async def _found_in_store(self, path: str) -> bool:
        """Whether path, unknown to the last refresh, is in the store now (then added to the tree).

        Close-to-open holds for names too: a file another mount has just closed (or
        a directory it made) opens at once, not after the next refresh. A name that
        is in neither costs one ref read and one listing per lookup.
        """
        if path.split("/")[0] == CONTROL_DIR:
            return False
        if await self._current_version(path) is not None:
            self.tree.add_dir_and_parents(path.rpartition("/")[0])
            return True
        if await self._run(self.store.is_dir, path):
            self.tree.add_dir_and_parents(path)
            self._changes += 1
            return True
        return False

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            if self.inodes.forget(inode, count):
                self._described.pop(inode, None)
                self._cached_manifest.pop(inode, None)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path = self.inodes.path(inode)
        if path not in self._staged:
            await self._refresh()
        pinned = self._pinned_reader(inode, path)  # open but unlinked, replaced or changed
        if pinned is not None:
            if self.inodes.known(path) == inode:
                self.inodes.detach(path)  # the path's next lookup gets a new inode
            return self._handle_attr(inode, pinned)
        return self._attr(inode, path)

    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
        fh: int | None, ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:  # fmt: skip
        path = self.inodes.path(inode)
        # Files belong to the mounting user; a chown to that owner changes nothing and
        # must succeed, or `cp -a`, `rsync -a` and `tar x` fail on every file.
        if (fields.update_uid and attr.st_uid != self.uid) or (
            fields.update_gid and attr.st_gid != self.gid
        ):
            raise _fuse(errno.EPERM)
        if fields.update_size:
            self._check_writable()
            staged = self._staged.get(path)
            if staged is None:
                staged = await self._stage(
                    path, inode, truncate=attr.st_size == 0,
                    version=await self._current_version(path),
                )  # fmt: skip
                staged.handles -= 1  # no handle holds it: commit now
                if attr.st_size:
                    await self._materialize(staged)
                staged.base = None
                os.ftruncate(staged.fd, attr.st_size)
                staged.dirty = True
                await self._commit(staged)
                await self._release_staged(staged)
            else:
                if attr.st_size:
                    await self._materialize(staged)
                staged.base = None
                staged.early = None  # truncated while written: commit it at close, as a whole
                os.ftruncate(staged.fd, attr.st_size)
                staged.dirty = True
        if fields.update_mode:
            self._check_writable()
            mode = (attr.st_mode & 0o7777) | (self._attr(inode, path).st_mode & ~0o7777)
            staged = self._staged.get(path)
            if staged is not None:
                staged.metadata[MODE_KEY] = str(mode)
            elif path in self.tree.files:
                version = await self._run(self.store.chmod, path, mode)
                self.tree.files[path] = version
                self._changes += 1
            elif not self._is_dir(path):
                raise _fuse(errno.ENOENT)
        return await self.getattr(inode, ctx)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK_SIZE
        total = 1 << 50  # object stores have no fixed size: report 1 PiB
        used = sum(v.size for v in self.tree.files.values())
        s.f_blocks = total // BLOCK_SIZE
        s.f_bfree = s.f_bavail = max(0, total - used) // BLOCK_SIZE
        s.f_files = len(self.tree.files) + len(self.tree.dirs)
        s.f_ffree = s.f_favail = 1 << 32
        s.f_namemax = 255
        return s

    # directories

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        path = self.inodes.path(inode)
        await self._refresh()
        if not self._is_dir(path):
            raise _fuse(errno.ENOTDIR if self._exists(path) else errno.ENOENT)
        if path == CONTROL_DIR:
            entries = [("stats", STATS_FILE)]
        else:
            dirs, files = self.tree.children(path)
            names = set(dirs) | set(files)
            prefix = path + "/" if path else ""
            for staged_path in self._staged:
                if staged_path.startswith(prefix) and "/" not in staged_path[len(prefix) :]:
                    names.add(staged_path[len(prefix) :])
            if path == "":
                names.discard(CONTROL_DIR)
                names.add(CONTROL_DIR)
            entries = [(n, prefix + n) for n in sorted(names)]
        return self._new_fh(DirHandle(entries))

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._handles[fh]
        assert isinstance(handle, DirHandle)
        for i in range(start_id, len(handle.entries)):
            name, path = handle.entries[i]
            try:
                inode = self._inode_for(path)
                attr = self._attr(inode, path)
            except pyfuse3.FUSEError:
                continue  # removed since opendir
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, i + 1):
                return
            self.inodes.looked_up(inode)

    async def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    async def _new_name(self, parent_inode: int, name: bytes) -> str:
        """The path a mkdir or symlink will make: EROFS, or EEXIST if it is taken."""
        self._check_writable()
        path = _join(self.inodes.path(parent_inode), name)
        await self._refresh(force=True)
        if self._exists(path):
            raise _fuse(errno.EEXIST)
        return path

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = await self._new_name(parent_inode, name)
        await self._run(self.store.mkdir, path)
        self.tree.add_dir_and_parents(path)
        self.tree.explicit_dirs.add(path)
        self._changes += 1
        inode = self.inodes.inode(path)
        self.inodes.looked_up(inode)
        return self._attr(inode, path)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_writable()
        path = _join(self.inodes.path(parent_inode), name)
        if path == CONTROL_DIR:
            raise _fuse(errno.EPERM)
        await self._refresh(force=True)
        if not self._is_dir(path):
            raise _fuse(errno.ENOTDIR if self._exists(path) else errno.ENOENT)
        dirs, files = self.tree.children(path)
        if dirs or files or any(p.startswith(path + "/") for p in self._staged):
            raise _fuse(errno.ENOTEMPTY)
        await self._run(self.store.rmdir, path)
        self.tree.dirs.discard(path)
        self.tree.explicit_dirs.discard(path)
        self._changes += 1
        self.inodes.detach(path)

    # files: namespace

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_writable()
        parent = self.inodes.path(parent_inode)
        path = _join(parent, name)
        await self._refresh(force=True)
        if self._is_dir(path):
            raise _fuse(errno.EISDIR)
        staged = self._staged.get(path)
        if path not in self.tree.files and staged is None:
            raise _fuse(errno.ENOENT)

        def delete() -> None:
            self.store.ensure_dir(parent)  # the directory outlives its last file
            if path in self.tree.files:
                self.store.delete(path)

        await self._run(delete)
        self.tree.files.pop(path, None)
        self.tree.add_dir_and_parents(parent)
        self._changes += 1
        if staged is not None:  # written but not yet committed: it will never be
            staged.path = ""
            # Also in the journal, or a crash now would let the next mount commit it again.
            await self._run(staged.write_journal)
            self._staged.pop(path, None)
        self.inodes.detach(path)

    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
        flags: int, ctx: pyfuse3.RequestContext,
    ) -> None:  # fmt: skip
        self._check_writable()
        old = _join(self.inodes.path(parent_inode_old), name_old)
        new = _join(self.inodes.path(parent_inode_new), name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise _fuse(errno.EINVAL)
        if CONTROL_DIR in (old.split("/")[0], new.split("/")[0]):
            raise _fuse(errno.EPERM)
        await self._refresh(force=True)
        if not self._exists(old):
            raise _fuse(errno.ENOENT)
        if flags & pyfuse3.RENAME_NOREPLACE and self._exists(new):
            raise _fuse(errno.EEXIST)
        if old == new:
            return
        if self._is_dir(old):
            await self._rename_dir(old, new)
        else:
            if self._is_dir(new):
                raise _fuse(errno.EISDIR)
            await self._rename_file(old, new)
        self.inodes.detach(new)
        self.inodes.move(old, new)

    async def _rename_file(self, old: str, new: str) -> None:
        staged = self._staged.get(old)
        if staged is not None:
            if new in self._staged:
                raise _fuse(errno.EBUSY)  # both being written: refuse rather than guess
            ref_key(new)  # a name the store refuses fails the rename, not the commit later
            # Not committed yet: it will be committed under its new name.
            del self._staged[old]
            staged.path = new
            staged.write_journal()
            self._staged[new] = staged
            if old in self.tree.files:
                await self._run(self._delete_keeping_parent, old)
                self.tree.files.pop(old, None)
                self._changes += 1
            return
        version = await self._run(self._rename_keeping_parent, old, new)
        self.tree.files.pop(old, None)
        self.tree.files[new] = version
        self.tree.add_dir_and_parents(new.rpartition("/")[0])
        self._changes += 1
        await self._invalidate(new)

    def _delete_keeping_parent(self, path: str) -> None:
        self.store.ensure_dir(path.rpartition("/")[0])
        self.store.delete(path)

    def _rename_keeping_parent(self, old: str, new: str) -> Version:
        self.store.ensure_dir(old.rpartition("/")[0])
        return self.store.rename(old, new)

    async def _rename_dir(self, old: str, new: str) -> None:
        if self._exists(new):
            if not self._is_dir(new):
                raise _fuse(errno.ENOTDIR)
            dirs, files = self.tree.children(new)
            if dirs or files:
                raise _fuse(errno.ENOTEMPTY)
        if new.startswith(old + "/"):
            raise _fuse(errno.EINVAL)
        if any(p == old or p.startswith(old + "/") for p in self._staged):
            raise _fuse(errno.EBUSY)
        prefix = old + "/"
        files = [p for p in self.tree.files if p.startswith(prefix)]
        dirs = [d for d in self.tree.explicit_dirs if d == old or d.startswith(prefix)]

        def move() -> None:
            for d in dirs:
                self.store.ensure_dir(new + d[len(old) :])
            self.store.ensure_dir(new)
            for p in files:
                self.store.rename(p, new + p[len(old) :])
            for d in sorted(dirs, reverse=True):
                self.store.rmdir(d)

        await self._run(move)
        self._changes += 1
        await self._refresh(force=True)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = await self._new_name(parent_inode, name)
        await self._run(lambda: self.store.put(path, bytes(target), mode=stat.S_IFLNK | 0o777))
        self.tree.files[path] = await self._run(self.store.version, path)
        self._changes += 1
        inode = self.inodes.inode(path)
        self.inodes.looked_up(inode)
        return self._attr(inode, path)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        path = self.inodes.path(inode)
        await self._refresh()
        version = self.tree.files.get(path)
        if version is None or not stat.S_ISLNK(version.mode):
            raise _fuse(errno.EINVAL)
        manifest = await self._run(self.store.load_manifest, version.manifest)
        return await self._run(self.reader.read, manifest, 0, manifest.size)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _fuse(errno.EPERM)  # hard links: a path is the unit of versioning

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _fuse(errno.EPERM)

    # files: data

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        path = self.inodes.path(inode)
        self.counters.opens += 1
        if path == STATS_FILE:
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise _fuse(errno.EACCES)
            return pyfuse3.FileInfo(
                fh=self._new_fh(VirtualHandle(self._stats_bytes())), direct_io=True
            )
        writing = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC))
        if writing:
            self._check_writable()
            truncate = bool(flags & os.O_TRUNC)
            staged = self._staged.get(path)
            if staged is None:
                version = await self._current_version(path)
                if version is not None:
                    self._check_fresh(inode, path, version)
                staged = await self._stage(path, inode, truncate=truncate, version=version)
                if truncate:
                    self._start_early_upload(staged)
            else:
                staged.handles += 1
                if truncate:
                    await self._empty(staged)
            if truncate:
                staged.dirty = True  # emptied: a new version even if nothing is written
            fh = self._new_fh(WriteHandle(path, inode, staged))
            return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=False)
        staged = self._staged.get(path)
        if staged is not None:  # read what this mount is writing
            staged.handles += 1
            return pyfuse3.FileInfo(
                fh=self._new_fh(WriteHandle(path, inode, staged, writable=False))
            )
        # Close-to-open: read the path's ref afresh, whatever the refresh interval. The
        # manifest the listing names loads meanwhile: it is nearly always still current.
        listed = self.tree.files.get(path)
        async with trio.open_nursery() as nursery:
            if listed is not None and listed.manifest is not None:
                nursery.start_soon(self._preload_manifest, listed.manifest)
            version = await self._current_version(path)
        if version is None:
            raise _fuse(errno.ENOENT)
        self._check_fresh(inode, path, version)
        assert version.manifest is not None
        manifest = await self._run(self.store.load_manifest, version.manifest)
        # The kernel may keep pages cached from an earlier open only if they are of this version.
        keep = self._cached_manifest.get(inode) == version.manifest
        self._cached_manifest[inode] = version.manifest
        self._described[inode] = _content(version)
        handle = ReadHandle(path, inode, version, manifest)
        self._readers.setdefault(inode, []).append(handle)
        return pyfuse3.FileInfo(fh=self._new_fh(handle), keep_cache=keep)

    async def _preload_manifest(self, manifest_id: str) -> None:
        try:
            await self._run(self.store.load_manifest, manifest_id)
        except ModelfsError:
            pass  # the open loads the manifest it needs and reports what fails

    async def _current_version(self, path: str) -> Version | None:
        """path's current version, read afresh from the store (None if there is none)."""
        try:
            version = await self._run(self.store.version, path)
        except NotFoundError:
            if self.tree.files.pop(path, None) is not None:
                self._changes += 1
            return None
        if self.tree.files.get(path) != version:
            self.tree.files[path] = version
            self._changes += 1
        return version

    async def _stage(
        self, path: str, inode: int, *, truncate: bool, version: Version | None
    ) -> StagedFile:
        """A staging file for path holding version's content (none if truncate), one handle."""
        await self._refresh()
        if self._is_dir(path):
            raise _fuse(errno.EISDIR)
        metadata: dict[str, str] = {}
        manifest: Manifest | None = None
        if version is not None:
            assert version.manifest is not None
            manifest = await self._run(self.store.load_manifest, version.manifest)
            metadata = dict(manifest.metadata)
            if version.mode:
                metadata[MODE_KEY] = str(version.mode)
        staged = await self._run(self.staging.create, path, metadata)
        if manifest is not None and not truncate:
            staged.base = manifest  # copied in by _materialize, at the first change
        staged.handles = 1
        self._staged[path] = staged
        return staged

    async def _empty(self, staged: StagedFile) -> None:
        """Truncate a staged file to nothing (its base content is then never needed)."""
        async with self._copy_locks.setdefault(id(staged), trio.Lock()):
            staged.base = None
            staged.early = None  # emptied under its writers: commit it at close, as a whole
            os.ftruncate(staged.fd, 0)
        self._copy_locks.pop(id(staged), None)

    async def _materialize(self, staged: StagedFile) -> None:
        """Copy the committed content a staged file starts from into it, once, before
        anything reads or changes its data (concurrent callers wait for one copy)."""
        if staged.base is None:
            return
        lock = self._copy_locks.setdefault(id(staged), trio.Lock())
        async with lock:
            if staged.base is not None:
                await self._run(self._copy_into, staged.base, staged, staged.path)
                staged.base = None
        self._copy_locks.pop(id(staged), None)

    def _copy_into(self, manifest: Manifest, staged: StagedFile, path: str) -> None:
        offset = 0
        while offset < manifest.size:
            data = self.reader.read(manifest, offset, 16 << 20, path=path)
            os.pwrite(staged.fd, data, offset)
            offset += len(data)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._check_writable()
        path = _join(self.inodes.path(parent_inode), name)
        ref_key(path)  # a name the store refuses (too long once escaped) fails now, not at commit
        await self._refresh()
        if self._is_dir(path):
            raise _fuse(errno.EISDIR)
        staged = self._staged.get(path)
        if staged is None:
            staged = await self._run(self.staging.create, path, {})
            staged.handles = 1
            self._staged[path] = staged
        else:
            staged.handles += 1
            await self._empty(staged)
        staged.metadata[MODE_KEY] = str(stat.S_IFREG | (mode & 0o7777))
        staged.dirty = True  # an empty new file is still a new file
        self._start_early_upload(staged)
        inode = self.inodes.inode(path)
        self.inodes.looked_up(inode)
        fh = self._new_fh(WriteHandle(path, inode, staged))
        self.counters.opens += 1
        return pyfuse3.FileInfo(fh=fh), self._attr(inode, path)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self._handles[fh]
        self.counters.reads += 1
        if isinstance(handle, VirtualHandle):
            return handle.data[off : off + size]
        if isinstance(handle, WriteHandle):
            await self._materialize(handle.staged)
            return os.pread(handle.staged.fd, size, off)
        assert isinstance(handle, ReadHandle)
        # The kernel's own readahead sends several requests at once, which may arrive out
        # of order: a read near where the last ones ended still counts as sequential.
        near = handle.last_end - NEAR <= off <= handle.last_end + NEAR
        handle.sequential = handle.sequential + size if near and handle.last_end else 0
        if off == 0:
            handle.sequential = size
        if handle.sequential >= SEQUENTIAL_THRESHOLD:
            # A sequential reader: fetch what comes next while this read is served, over a
            # window that doubles while it stays sequential. mmap page faults read only a
            # little around each fault, below the threshold, so they fetch nothing extra.
            handle.readahead = min(MAX_READAHEAD, max(MIN_READAHEAD, handle.readahead * 2))
            # Top the window up in big steps, not a block per read: each step is one
            # batch, fetched with one request per run of neighbouring blocks in a pack.
            start = max(off + size, handle.prefetched_to)
            end = off + size + handle.readahead
            if end - start >= handle.readahead // 2:
                self.reader.prefetch(handle.manifest, start, end - start, handle.path)
                handle.prefetched_to = end
        else:
            handle.readahead = 0
            handle.prefetched_to = 0
        try:
            data = self.reader.read_cached(handle.manifest, off, size)
            if data is None:
                data = await self._run(
                    functools.partial(
                        self.reader.read, handle.manifest, off, size, path=handle.path
                    )
                )
        except ModelfsError:
            self.counters.read_errors += 1
            raise
        handle.last_end = max(handle.last_end, off + len(data)) if near else off + len(data)
        return data

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        if not isinstance(handle, WriteHandle) or not handle.writable:
            raise _fuse(errno.EBADF)
        await self._materialize(handle.staged)
        written = os.pwrite(handle.staged.fd, buf, off)
        handle.staged.dirty = True
        self._upload_early(handle.staged, off, written)
        self.counters.writes += 1
        self.counters.bytes_written += written
        return written

    def _start_early_upload(self, staged: StagedFile) -> None:
        """Upload the file's blocks while it is written, if it is written front to back."""
        if not self.read_only:
            staged.early = EarlyUploader(self.store, staged, staged.path)
            staged.written_end = 0

    def _upload_early(self, staged: StagedFile, off: int, written: int) -> None:
        early = staged.early
        if early is None:
            return
        if off != staged.written_end:  # not front to back: the commit does it all
            staged.early = None
            return
        staged.written_end += written
        step = self.store.config.pack_size  # a pack at a time
        running = staged.early_task is not None and not staged.early_task.done()
        if not running and staged.written_end - early.uploaded_to >= step:
            staged.early_task = self._early_uploads.submit(
                early.advance, staged.written_end, minimum=step
            )

    async def _wait_early_upload(self, staged: StagedFile) -> None:
        """Let a running early upload finish (its blocks are what the commit skips)."""
        task = staged.early_task
        if task is not None and not task.done():
            await trio.to_thread.run_sync(futures.wait, [task])

    async def flush(self, fh: int) -> None:
        handle = self._handles.get(fh)
        if isinstance(handle, WriteHandle) and handle.writable and handle.staged.dirty:
            await self._commit(handle.staged)

    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.flush(fh)

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if isinstance(handle, ReadHandle):
            readers = self._readers.get(handle.inode, [])
            readers.remove(handle)
            if not readers:
                self._readers.pop(handle.inode, None)
        if isinstance(handle, WriteHandle):
            handle.staged.handles -= 1
            await self._release_staged(handle.staged)

    async def _release_staged(self, staged: StagedFile) -> None:
        if staged.handles > 0:
            return
        if staged.dirty and staged.path:
            try:  # flush normally committed it; this is the last chance
                await self._commit(staged)
            except ModelfsError:
                return  # kept in staging, journal says closed: the next mount commits it
        if self._staged.get(staged.path) is staged:
            del self._staged[staged.path]
        await self._wait_early_upload(staged)  # it reads through the fd discard closes
        await self._run(self.staging.discard, staged)

    async def _commit(self, staged: StagedFile) -> None:
        """Upload a staged file as the next version of its path; EIO (kept staged) on failure."""
        path = staged.path
        if not path:
            return
        staged.dirty = False
        await self._wait_early_upload(staged)
        closing: Future[None] | None = None
        try:
            await self._materialize(staged)  # a metadata-only change still commits the content
            # The upload need not wait for the staged data to reach the disk (an fsync of
            # a large model takes a good part of a second): both run at once, and a failed
            # upload returns only once its data is durable and marked closed.
            closing = self._fsyncs.submit(self.staging.mark_closed, staged)
            try:
                version = await self._run(staged.commit_to, self.store)
            finally:
                await trio.to_thread.run_sync(futures.wait, [closing])
        except BaseException as e:
            staged.dirty = True
            self.counters.commit_errors += 1
            if closing is not None and closing.exception() is not None:
                log.error(
                    "%s could not be marked closed, so the next mount will not commit it: %s",
                    path, closing.exception(),
                )  # fmt: skip
            log.error(
                "committing %s failed; its data stays staged in %s: %s", path, staged.data_path, e
            )
            if isinstance(e, ModelfsError):
                raise ModelfsError(f"committing {path} failed: {e}") from e
            raise
        self.counters.commits += 1
        self.tree.files[path] = version
        self.tree.add_dir_and_parents(path.rpartition("/")[0])
        self._changes += 1
        inode = self.inodes.known(path)
        if inode is not None:
            self._cached_manifest.pop(inode, None)
            self._described[inode] = _content(version)  # its writer's writes told the kernel

    async def _invalidate(self, path: str) -> None:
        inode = self.inodes.known(path)
        if inode is None:
            return
        self._cached_manifest.pop(inode, None)
        try:
            await self._run(pyfuse3.invalidate_inode, inode)
        except OSError:
            pass

    # extended attributes: user.* lives in the file's metadata

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        metadata = await self._metadata(self.inodes.path(inode))
        key = os.fsdecode(name)
        if not key.startswith(XATTR_PREFIX) or key not in metadata:
            raise _fuse(pyfuse3.ENOATTR)
        return metadata[key].encode("utf-8", "surrogateescape")

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        metadata = await self._metadata(self.inodes.path(inode))
        return [
            k.encode("utf-8", "surrogateescape") for k in metadata if k.startswith(XATTR_PREFIX)
        ]

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        key = os.fsdecode(name)
        if not key.startswith(XATTR_PREFIX):
            raise _fuse(errno.ENOTSUP)
        self._check_writable()
        text = value.decode("utf-8", "surrogateescape")
        await self._update_metadata(self.inodes.path(inode), lambda m: m.__setitem__(key, text))

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        key = os.fsdecode(name)
        self._check_writable()
        metadata = await self._metadata(self.inodes.path(inode))
        if key not in metadata:
            raise _fuse(pyfuse3.ENOATTR)
        await self._update_metadata(self.inodes.path(inode), lambda m: m.pop(key))

    async def _metadata(self, path: str) -> dict[str, str]:
        staged = self._staged.get(path)
        if staged is not None:
            return staged.metadata
        await self._refresh()
        version = self.tree.files.get(path)
        if version is None:
            if self._exists(path):
                return {}  # directories carry no metadata
            raise _fuse(errno.ENOENT)
        manifest = await self._run(self.store.load_manifest, version.manifest)
        return dict(manifest.metadata)

    async def _update_metadata(self, path: str, change: Callable[[dict[str, str]], object]) -> None:
        staged = self._staged.get(path)
        if staged is not None:
            change(staged.metadata)
            staged.dirty = True
            return
        if path not in self.tree.files:
            raise _fuse(errno.ENOTSUP if self._exists(path) else errno.ENOENT)
        metadata = await self._metadata(path)
        change(metadata)
        self.tree.files[path] = await self._run(self.store.set_metadata, path, metadata)
        self._changes += 1

    # lifecycle

    def close(self) -> None:
        """After unmounting: wait for early uploads still running."""
        self._early_uploads.shutdown(wait=True)
        self._fsyncs.shutdown(wait=True)

    async def start(self) -> None:
        """Before the mount is ready: list the store (the first lookups need no request)
        and commit what an earlier mount left staged."""
        await self._refresh(force=True)
        await self.commit_leftovers()

    async def warm_manifests(self) -> None:
        """Load the manifests of the newest files in the background, so that their first
        open after mounting costs one ref read, not a ref and a manifest read in a row."""
        newest = sorted(self.tree.files.values(), key=lambda v: v.time, reverse=True)
        ids = [v.manifest for v in newest if v.manifest is not None]
        await self._run(self.store.preload_manifests, ids)

    async def commit_leftovers(self) -> None:
        """Commit files that an earlier mount closed but could not upload."""
        for staged in self.staging.leftovers():
            if self.read_only:
                log.warning(
                    "%s, staged by an earlier mount, stays staged: this mount is read-only "
                    "(commit it with `modelfs sync` where the store takes writes)",
                    staged.path,
                )  # fmt: skip
                continue
            staged.fd = os.open(staged.data_path, os.O_RDWR)
            try:
                await self._commit(staged)
            except ModelfsError as e:
                log.error("could not commit staged %s; it stays staged: %s", staged.path, e)
                os.close(staged.fd)
                continue
            log.info("committed %s, staged by an earlier mount", staged.path)
            await self._run(self.staging.discard, staged)
