"""pyfuse3 Operations: the store as a directory tree any program can open by path.

This module only decodes requests, dispatches them and builds attributes;
each question has its own module:

- view.py: the tree (a scan of the store, refreshed) and close-to-open lookups;
- inodes.py: inode numbers and what the kernel was told of each (ESTALE);
- reads.py: read handles of committed versions, readahead;
- writes.py: write sessions (staging, commits, who sees what while writing);
- control.py: the .modelfs/ directory;
- versions.py: .modelfs/at/, every version, tag and alias by path (read-only);
- xattrs.py: extended attributes (metrics, metadata).

Blocking work (backend calls, hashing, zstd) runs in worker threads under one
CapacityLimiter; trio's event loop only moves requests. Errors become errnos
at one boundary (errors.py).

Caveats:
- mtime is the commit time of the current version; utimens is accepted but not kept.
- Owners are the mounting user; chown to anyone else is refused with EPERM.
- chmod of a directory is accepted but not kept (directories are always 0755).
- Renaming a directory renames each file in it, one compare-and-swap each.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyfuse3
import trio

from ..errors import ModelfsError, ReadOnlyError
from ..reader import BlockReader
from ..store import Store, Version
from ..store.metrics import format_value
from .control import CONTROL_DIR, STATS_FILE, Control, VirtualHandle, is_control
from .errors import fuse_error_boundary
from .inodes import InodeTable
from .reads import ReadHandle, Reads
from .staging import MODE_KEY, StagingArea
from .versions import AT_DIR, PINNED_TIMEOUT, Entry, Versions, file_mode, is_view
from .view import View
from .writes import (
    RETRY_SECONDS,
    Processes,
    WriteHandle,
    Writes,
    WriteSession,
    process_of,
)
from .xattrs import (
    METRIC_PREFIX,
    as_xattrs,
    committed_metrics,
    metric_name,
    metric_value,
    record_metric,
    staged_key,
    staged_xattrs,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DIR_MODE = stat.S_IFDIR | 0o755
XATTR_PREFIX = "user."
BLOCK_SIZE = 4096
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC


def _fuse(err: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(err)


def _join(parent: str, name: bytes) -> str:
    text = os.fsdecode(name)
    if "/" in text or text in (".", ".."):
        raise _fuse(errno.EINVAL)
    return f"{parent}/{text}" if parent else text


def _pid(ctx: Any) -> int:
    return getattr(ctx, "pid", 0) or 0


@dataclass
class DirHandle:
    entries: list[tuple[str, str]] = field(default_factory=list)  # (name, path)
    pid: int = 0  # who opened it: a write session shows only to its own processes
    key: str = ""  # a version view directory: its entries are listed at the first readdir
    view_entries: list[tuple[str, Entry, bool]] | None = None


Handle = ReadHandle | WriteHandle | VirtualHandle | DirHandle


@dataclass
class Counters:
    opens: int = 0
    reads: int = 0


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
        notify_kernel: bool = True,
        processes: Processes | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.reader = reader
        self.read_only = read_only
        self.refresh_interval = refresh_interval
        self._limiter = trio.CapacityLimiter(threads)
        self.inodes = InodeTable()
        self.view = View(store, self._run, refresh_interval)
        self.reads = Reads(reader, self._run)
        self.writes = Writes(
            store, reader, staging, self.view, self.inodes, self._run, processes=processes
        )
        self.counters = Counters()
        self.versions = Versions(store, self.view, self._run)
        self.control = Control(
            store, reader, self.view, self.reads, self.writes, self.counters, read_only=read_only
        )
        self._notify_kernel = notify_kernel  # False where no kernel is there (the fs-tier tests)
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
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

    def _new_fh(self, handle: Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    def _check_writable(self) -> None:
        # The kernel refuses writes to a mount made with "ro" first; this is for the rest.
        if self.read_only:
            raise ReadOnlyError("the mount is read-only")

    def _is_dir(self, path: str) -> bool:
        return path == CONTROL_DIR or self.view.is_dir(path)

    def _exists(self, path: str) -> bool:
        """Whether the name is taken: by a directory, a file, or a file being written."""
        return (
            self._is_dir(path)
            or self.view.file(path) is not None
            or self.writes.at(path) is not None
            or path == STATS_FILE
        )

    def _attributes(
        self, inode: int, mode: int, size: int, mtime: float, timeout: float
    ) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.generation = 0
        a.entry_timeout = a.attr_timeout = timeout
        a.st_uid, a.st_gid = self.uid, self.gid
        a.st_blksize = 128 << 10
        a.st_mode = mode
        a.st_size = size
        a.st_nlink = 2 if stat.S_ISDIR(mode) else 1
        a.st_blocks = (size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = int(mtime * 1e9)
        return a

    def _entry_attr(self, inode: int, entry: Entry, follows: bool) -> pyfuse3.EntryAttributes:
        """Attributes of a version view entry: one immutable content per inode, so only a
        name that follows something that moves (an alias, a tag, latest) is looked up again."""
        timeout = 0 if follows else self.refresh_interval if entry.live else PINNED_TIMEOUT
        v = entry.version
        if v is None:
            return self._attributes(inode, file_mode(entry), 0, self.started, timeout)
        return self._attributes(inode, file_mode(entry), v.size, v.time, timeout)

    def _refuse_in_view(self, path: str, what: str) -> None:
        if is_view(path):
            raise ReadOnlyError(f"{what} {path}: the version views under {AT_DIR} are read-only")

    def _session_attr(self, session: WriteSession) -> pyfuse3.EntryAttributes:
        mode, size, mtime = self.writes.attributes(session)
        return self._attributes(session.inode, mode, size, mtime, 0)  # changing under us

    def _attr(self, inode: int, path: str) -> pyfuse3.EntryAttributes:
        """Attributes of a path's inode: its committed version, a directory or a control file."""
        if path == STATS_FILE:
            size = len(self.control.content(STATS_FILE))
            return self._attributes(inode, stat.S_IFREG | 0o444, size, time.time(), 0)
        version = self.view.file(path)
        if version is not None:
            self.inodes.told(inode, version)
            # While the path is being written here, others look it up at every use, so that
            # they follow its commit at once.
            timeout = 0 if self.writes.at(path) is not None else self.refresh_interval
            mode = version.file_mode
            return self._attributes(inode, mode, version.size, version.time, timeout)
        if self._is_dir(path):
            return self._attributes(inode, DIR_MODE, 0, self.started, self.refresh_interval)
        raise _fuse(errno.ENOENT)

    def _version_attr(self, inode: int, version: Version) -> pyfuse3.EntryAttributes:
        """Attributes of an open (possibly since unlinked or replaced) file: its opened version."""
        mode = version.file_mode
        return self._attributes(inode, mode, version.size, version.time, self.refresh_interval)

    def _invited(self, path: str, ctx: Any) -> pyfuse3.FUSEError:
        """The caller will change path, which is (or is about to be) written here: it takes
        part in the session, and ESTALE makes the kernel look the path up again (getting the
        session's inode) and retry."""
        self.writes.invite(path, _pid(ctx))
        log.debug("%s: joining its write session (pid %d), answered ESTALE", path, _pid(ctx))
        return _fuse(errno.ESTALE)

    def _session_to_change(self, inode: int, path: str, ctx: Any) -> WriteSession | None:
        """For a change of inode's file: its write session (None: change the committed file).
        Raises ESTALE to move the caller onto the session's inode first."""
        session = self.writes.of_inode(inode)
        if session is not None:
            if session.pending:  # invited to open it, not to change it like this
                session.processes.discard(process_of(_pid(ctx)))
                raise _fuse(errno.ESTALE)
            return session
        active = self.writes.at(path)
        if active is not None and not active.pending:
            raise self._invited(path, ctx)
        return None

    # lookups and attributes

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.inodes.path(parent_inode)
        if is_view(parent) or (parent == CONTROL_DIR and name == b"at"):
            return await self._lookup_view(parent, name)
        path = _join(parent, name)
        session = self.writes.visible_at(path, _pid(ctx))
        if session is not None:
            self.inodes.looked_up(session.inode)
            return self._session_attr(session)
        await self.view.refresh()
        known = self._is_dir(path) or self.view.file(path) is not None or path == STATS_FILE
        if not known and (is_control(path) or not await self.view.found_in_store(path)):
            raise _fuse(errno.ENOENT)
        inode = self.inodes.for_lookup(path, self.view.file(path))
        attr = self._attr(inode, path)
        self.inodes.looked_up(inode)
        return attr

    async def _lookup_view(self, parent: str, name: bytes) -> pyfuse3.EntryAttributes:
        if parent == CONTROL_DIR:
            entry, follows = self.versions.entry(AT_DIR), False
        else:
            _join(parent, name)  # refuses '/', '.' and '..'
            await self.view.refresh()
            entry, follows = await self.versions.lookup(parent, os.fsdecode(name))
        inode = self.inodes.inode(entry.key)
        attr = self._entry_attr(inode, entry, follows)
        self.inodes.looked_up(inode)
        return attr

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            try:
                path: str | None = self.inodes.path(inode)
            except ModelfsError:
                path = None  # forgotten already
            self.inodes.forget(inode, count)
            if path is not None and is_view(path) and self.inodes.known(path) is None:
                self.versions.forget(path)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        session = self.writes.of_inode(inode)
        if session is not None:
            return self._session_attr(session)
        path = self.inodes.path(inode)
        if is_view(path):
            return self._entry_attr(inode, self.versions.entry(path), False)
        await self.view.refresh()
        current = self.view.file(path)
        pinned = self.inodes.pinned_reader(inode, path, current)  # open, content since changed
        if pinned is not None:
            if self.inodes.known(path) == inode:
                self.inodes.detach(path)  # the path's next lookup gets a new inode
            return self._version_attr(inode, pinned.version)
        return self._attr(inode, path)

    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
        fh: int | None, ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:  # fmt: skip
        path = self.inodes.path(inode)
        if any(getattr(fields, f"update_{f}", False)
               for f in ("size", "mode", "uid", "gid", "atime", "mtime", "ctime")):  # fmt: skip
            self._refuse_in_view(path, "changing")  # even touch: a version never changes
        # Files belong to the mounting user; a chown to that owner changes nothing and
        # must succeed, or `cp -a`, `rsync -a` and `tar x` fail on every file.
        if (fields.update_uid and attr.st_uid != self.uid) or (
            fields.update_gid and attr.st_gid != self.gid
        ):
            raise _fuse(errno.EPERM)
        if not (fields.update_size or fields.update_mode):
            return await self.getattr(inode, ctx)
        self._check_writable()
        if is_control(path):
            raise _fuse(errno.EPERM)
        handle = self._handles.get(fh) if fh is not None else None
        session = (
            handle.session
            if isinstance(handle, WriteHandle)
            else self._session_to_change(inode, path, ctx)
        )
        if session is not None:
            if fields.update_size:
                await self.writes.truncate(
                    session, attr.st_size, handle if isinstance(handle, WriteHandle) else None
                )
            if fields.update_mode:
                mode = stat.S_IFMT(self.writes.attributes(session)[0]) | (attr.st_mode & 0o7777)
                await self.writes.set_metadata(
                    session, lambda m: m.__setitem__(MODE_KEY, str(mode))
                )
            return self._session_attr(session)
        if self._is_dir(path):
            if fields.update_size:
                raise _fuse(errno.EISDIR)
            return self._attr(inode, path)  # accepted, not kept (see Caveats)
        current = await self.view.current_version(path)
        if current is None:
            raise _fuse(errno.ENOENT)
        if fields.update_size:
            if self.inodes.has_readers(inode):
                # Readers of this inode keep their content: the truncate goes to a new inode.
                self.inodes.detach(path)
                raise _fuse(errno.ESTALE)
            current = await self.writes.truncate_path(path, attr.st_size, current)
            self.inodes.drop_page_cache(inode)
        if fields.update_mode:
            mode = stat.S_IFMT(current.file_mode) | (attr.st_mode & 0o7777)
            current = await self._run(self.store.chmod, path, mode)
            self.view.file_changed(path, current)
        return self._attr(inode, path)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK_SIZE
        total = 1 << 50  # object stores have no fixed size: report 1 PiB
        files = self.view.tree.files
        used = sum(v.size for v in files.values())
        s.f_blocks = total // BLOCK_SIZE
        s.f_bfree = s.f_bavail = max(0, total - used) // BLOCK_SIZE
        s.f_files = len(files) + len(self.view.tree.dirs)
        s.f_ffree = s.f_favail = 1 << 32
        s.f_namemax = 255
        return s

    # directories

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        path = self.inodes.path(inode)
        await self.view.refresh()
        if is_view(path):
            if not self.versions.entry(path).is_dir:
                raise _fuse(errno.ENOTDIR)
            return self._new_fh(DirHandle(entries=[], pid=_pid(ctx), key=path))
        if not self._is_dir(path):
            raise _fuse(errno.ENOTDIR if self._exists(path) else errno.ENOENT)
        if path == CONTROL_DIR:
            entries = self.control.entries()
        else:
            dirs, files = self.view.children(path)
            names = set(dirs) | set(files)
            prefix = path + "/" if path else ""
            for written in self.writes.paths():
                rest = written[len(prefix) :]
                if written.startswith(prefix) and "/" not in rest:
                    if self.writes.visible_at(written, _pid(ctx)) is not None:
                        names.add(rest)
            if path == "":
                names.add(CONTROL_DIR)
            entries = [(n, prefix + n) for n in sorted(names)]
        return self._new_fh(DirHandle(entries, _pid(ctx)))

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._handles[fh]
        assert isinstance(handle, DirHandle)
        if handle.key:
            await self._readdir_view(handle, start_id, token)
            return
        for i in range(start_id, len(handle.entries)):
            name, path = handle.entries[i]
            session = self.writes.visible_at(path, handle.pid)
            try:
                if session is not None:
                    inode, attr = session.inode, self._session_attr(session)
                elif path == AT_DIR:
                    inode = self.inodes.inode(AT_DIR)
                    attr = self._entry_attr(inode, self.versions.entry(AT_DIR), False)
                else:
                    inode = self.inodes.for_lookup(path, self.view.file(path))
                    attr = self._attr(inode, path)
            except pyfuse3.FUSEError:
                continue  # removed since opendir
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, i + 1):
                return
            self.inodes.looked_up(inode)

    async def _readdir_view(
        self, handle: DirHandle, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        if handle.view_entries is None:
            handle.view_entries = await self.versions.children(handle.key)
        for i in range(start_id, len(handle.view_entries)):
            name, entry, follows = handle.view_entries[i]
            entry = self.versions.keep(entry)  # its inode may have been forgotten meanwhile
            inode = self.inodes.inode(entry.key)
            attr = self._entry_attr(inode, entry, follows)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, i + 1):
                return
            self.inodes.looked_up(inode)

    async def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    async def _new_name(self, parent_inode: int, name: bytes) -> str:
        """The path a mkdir or symlink will make: EROFS, or EEXIST if it is taken."""
        self._refuse_in_view(self.inodes.path(parent_inode), "making a name in")
        self._check_writable()
        path = _join(self.inodes.path(parent_inode), name)
        if is_control(path):
            raise _fuse(errno.EPERM)
        await self.view.refresh(force=True)
        if self._exists(path):
            raise _fuse(errno.EEXIST)
        return path

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = await self._new_name(parent_inode, name)
        await self._run(self.store.mkdir, path)
        self.view.dir_added(path, explicit=True)
        inode = self.inodes.inode(path)
        self.inodes.looked_up(inode)
        return self._attr(inode, path)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._refuse_in_view(self.inodes.path(parent_inode), "removing a name in")
        self._check_writable()
        path = _join(self.inodes.path(parent_inode), name)
        if path == AT_DIR:
            raise _fuse(errno.EPERM)
        if path == CONTROL_DIR:
            raise _fuse(errno.EPERM)
        await self.view.refresh(force=True)
        if not self._is_dir(path):
            raise _fuse(errno.ENOTDIR if self._exists(path) else errno.ENOENT)
        dirs, files = self.view.children(path)
        if dirs or files or any(p.startswith(path + "/") for p in self.writes.paths()):
            raise _fuse(errno.ENOTEMPTY)
        await self._run(self.store.rmdir, path)
        self.view.dir_removed(path)
        self.inodes.detach(path)

    # files: namespace

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._refuse_in_view(self.inodes.path(parent_inode), "removing a name in")
        self._check_writable()
        parent = self.inodes.path(parent_inode)
        path = _join(parent, name)
        if is_control(path):
            raise _fuse(errno.EPERM)
        await self.view.refresh(force=True)
        if self._is_dir(path):
            raise _fuse(errno.EISDIR)
        session = self.writes.at(path)
        committed = self.view.file(path) is not None
        if not committed and session is None:
            raise _fuse(errno.ENOENT)

        def delete() -> None:
            self.store.ensure_dir(parent)  # the directory outlives its last file
            if committed:
                self.store.delete(path)

        await self._run(delete)
        self.view.file_removed(path)
        self.view.dir_added(parent)
        if session is not None:  # being written: it will never be committed
            await self.writes.unlinked(session)
        self.inodes.detach(path)

    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
        flags: int, ctx: pyfuse3.RequestContext,
    ) -> None:  # fmt: skip
        self._refuse_in_view(self.inodes.path(parent_inode_old), "renaming from")
        self._refuse_in_view(self.inodes.path(parent_inode_new), "renaming into")
        self._check_writable()
        old = _join(self.inodes.path(parent_inode_old), name_old)
        new = _join(self.inodes.path(parent_inode_new), name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise _fuse(errno.EINVAL)
        if is_control(old) or is_control(new):
            raise _fuse(errno.EPERM)
        await self.view.refresh(force=True)
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
        if self.writes.at(new) is not None:
            # Replacing a file that is being written here would drop its writers' bytes.
            log.info("refused to rename %s onto %s: %s is being written", old, new, new)
            raise _fuse(errno.EBUSY)
        session = self.writes.at(old)
        if session is not None and session.pending:
            session = None  # only invited: nothing is written yet
        if session is not None:
            self.store.check_new_path(new)  # a path the store cannot hold fails now
            if self.view.file(old) is not None:
                # The committed version moves now: until the session commits its own (as
                # new's next version), everyone else reads that, whole, under the new
                # name, and it is still there if the writer never closes the file.
                version = await self._run(self._rename_keeping_parent, old, new)
                self.view.file_removed(old)
                self.view.file_changed(new, version)
            await self.writes.renamed(session, new)
            return
        version = await self._run(self._rename_keeping_parent, old, new)
        self.view.file_removed(old)
        self.view.file_changed(new, version)
        await self._invalidate(new)

    def _rename_keeping_parent(self, old: str, new: str) -> Version:
        self.store.ensure_dir(old.rpartition("/")[0])
        return self.store.rename(old, new)

    async def _rename_dir(self, old: str, new: str) -> None:
        if self._exists(new):
            if not self._is_dir(new):
                raise _fuse(errno.ENOTDIR)
            dirs, files = self.view.children(new)
            if dirs or files:
                raise _fuse(errno.ENOTEMPTY)
        if new.startswith(old + "/"):
            raise _fuse(errno.EINVAL)
        if any(p == old or p.startswith(old + "/") for p in self.writes.paths()):
            log.info("refused to rename directory %s: a file in it is being written", old)
            raise _fuse(errno.EBUSY)
        prefix = old + "/"
        files = [p for p in self.view.tree.files if p.startswith(prefix)]
        dirs = [d for d in self.view.tree.explicit_dirs if d == old or d.startswith(prefix)]
        # Every new name must fit the store before the first file moves: the move is one
        # compare-and-swap per file, and a refusal half-way would leave it half done.
        self.store.check_new_dir(new)
        for p in files:
            self.store.check_new_path(new + p[len(old) :])
        for d in dirs:
            self.store.check_new_dir(new + d[len(old) :])

        def move() -> None:
            for d in dirs:
                self.store.ensure_dir(new + d[len(old) :])
            self.store.ensure_dir(new)
            for p in files:
                self.store.rename(p, new + p[len(old) :])
            for d in sorted(dirs, reverse=True):
                self.store.rmdir(d)

        await self._run(move)
        await self.view.refresh(force=True)

    async def _invalidate(self, path: str) -> None:
        """Drop what the kernel holds of path's inode (attributes and pages)."""
        inode = self.inodes.known(path)
        if inode is None:
            return
        self.inodes.drop_page_cache(inode)
        if not self._notify_kernel:
            return
        try:
            await self._run(pyfuse3.invalidate_inode, inode)
        except OSError:
            pass

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = await self._new_name(parent_inode, name)
        await self._run(lambda: self.store.put(path, bytes(target), mode=stat.S_IFLNK | 0o777))
        self.view.file_changed(path, await self._run(self.store.version, path))
        inode = self.inodes.inode(path)
        self.inodes.looked_up(inode)
        return self._attr(inode, path)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        path = self.inodes.path(inode)
        if is_view(path):
            version = self.versions.entry(path).version
        else:
            await self.view.refresh()
            version = self.view.file(path)
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
        self.counters.opens += 1
        writing = bool(flags & WRITE_FLAGS)
        session = self.writes.of_inode(inode)
        if session is not None:
            if writing:
                self._check_writable()
            elif not session.sees(_pid(ctx)):
                raise _fuse(errno.ESTALE)  # not taking part: it reads the committed version
            handle = await self.writes.open(session, flags, _pid(ctx))
            return pyfuse3.FileInfo(fh=self._new_fh(handle), direct_io=False, keep_cache=False)
        path = self.inodes.path(inode)
        if is_view(path):
            return await self._open_view(inode, path, writing)
        if path == STATS_FILE:
            if writing:
                raise _fuse(errno.EACCES)
            data = self.control.content(STATS_FILE)
            return pyfuse3.FileInfo(fh=self._new_fh(VirtualHandle(data)), direct_io=True)
        if writing:
            # A write session gets an inode of its own, so that this one keeps showing the
            # committed version to everyone else: the kernel retries the open on it.
            self._check_writable()
            if self._is_dir(path):
                raise _fuse(errno.EISDIR)
            # The session's attributes start from the path's current version: read it afresh.
            await self.view.current_version(path)
            raise self._invited(path, ctx)
        if self.writes.visible_at(path, _pid(ctx)) is not None:
            raise _fuse(errno.ESTALE)  # this process reads what it is writing: the session
        # Close-to-open: read the path's ref afresh, whatever the refresh interval. The
        # manifest the listing names loads meanwhile: it is nearly always still current.
        listed = self.view.file(path)
        async with trio.open_nursery() as nursery:
            if listed is not None and listed.manifest is not None:
                nursery.start_soon(self._preload_manifest, listed.manifest)
            version = await self.view.current_version(path)
        if version is None:
            raise _fuse(errno.ENOENT)
        self.inodes.check_fresh(inode, path, version)
        assert version.manifest is not None
        manifest = await self._run(self.store.load_manifest, version.manifest)
        # The kernel may keep pages cached from an earlier open only if they are of this version.
        keep = self.inodes.keep_page_cache(inode, version.manifest)
        self.inodes.told(inode, version)
        handle = ReadHandle(path, inode, version, manifest)
        self.inodes.add_reader(handle)
        if not keep:  # pages the kernel keeps need no frames
            self.reader.opened(manifest)
        return pyfuse3.FileInfo(fh=self._new_fh(handle), keep_cache=keep)

    async def _open_view(self, inode: int, key: str, writing: bool) -> pyfuse3.FileInfo:
        """A version view's file: one immutable version, read as any committed file is."""
        if writing:
            self._refuse_in_view(key, "opening for writing")
        entry = self.versions.entry(key)
        version = entry.version
        if version is None:
            raise _fuse(errno.EISDIR)
        assert version.manifest is not None
        manifest = await self._run(self.store.load_manifest, version.manifest)
        handle = ReadHandle(entry.path, inode, version, manifest)
        self.inodes.add_reader(handle)
        # The inode stands for this version only: its pages are always its own.
        return pyfuse3.FileInfo(fh=self._new_fh(handle), keep_cache=True)

    async def _preload_manifest(self, manifest_id: str) -> None:
        try:
            await self._run(self.store.load_manifest, manifest_id)
        except ModelfsError:
            pass  # the open loads the manifest it needs and reports what fails

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._refuse_in_view(self.inodes.path(parent_inode), "creating a file in")
        self._check_writable()
        path = _join(self.inodes.path(parent_inode), name)
        if is_control(path):
            raise _fuse(errno.EACCES)
        self.store.check_new_path(path)  # a path the store cannot hold fails now, not at close
        await self.view.refresh()
        if self._is_dir(path):
            raise _fuse(errno.EISDIR)
        handle = await self.writes.create(path, mode, flags, _pid(ctx))
        self.counters.opens += 1
        session = handle.session
        self.inodes.looked_up(session.inode)
        fh = self._new_fh(handle)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False), self._session_attr(session)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self._handles[fh]
        self.counters.reads += 1
        if isinstance(handle, ReadHandle):
            return await self.reads.read(handle, off, size)
        if isinstance(handle, WriteHandle):
            return await self.writes.read(handle, off, size)
        assert isinstance(handle, VirtualHandle)
        return handle.data[off : off + size]

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        if not isinstance(handle, WriteHandle) or not handle.writable:
            raise _fuse(errno.EBADF)
        return await self.writes.write(handle, off, buf)

    async def flush(self, fh: int) -> None:
        handle = self._handles.get(fh)
        if isinstance(handle, WriteHandle):
            await self.writes.flush(handle)

    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._handles.get(fh)
        if isinstance(handle, WriteHandle):
            await self.writes.fsync(handle)

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if isinstance(handle, ReadHandle):
            self.inodes.remove_reader(handle)
        elif isinstance(handle, WriteHandle):
            await self.writes.release(handle)

    # extended attributes (xattrs.py): user.metric.* are metrics, other user.* metadata

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        key = os.fsdecode(name)
        found = await self._xattrs(inode, key)
        if key not in found:
            raise _fuse(pyfuse3.ENOATTR)
        return found[key].encode("utf-8", "surrogateescape")

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [k.encode("utf-8", "surrogateescape") for k in await self._xattrs(inode, None)]

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        key = os.fsdecode(name)
        self._refuse_in_view(self.inodes.path(inode), f"setting {key} of")
        if not key.startswith(XATTR_PREFIX):
            raise _fuse(errno.ENOTSUP)
        self._check_writable()
        metric = metric_name(key)
        if metric is not None:
            await self._set_metric(inode, ctx, metric, metric_value(metric, value))
            return
        text = value.decode("utf-8", "surrogateescape")
        await self._update_metadata(inode, ctx, lambda m: m.__setitem__(key, text))

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        key = os.fsdecode(name)
        self._refuse_in_view(self.inodes.path(inode), f"removing {key} of")
        self._check_writable()
        metric = metric_name(key)
        if metric is not None and key in await self._xattrs(inode, key, metadata=False):
            await self._set_metric(inode, ctx, metric, None)
            return
        if key not in await self._metadata(inode):
            raise _fuse(pyfuse3.ENOATTR)
        await self._update_metadata(inode, ctx, lambda m: m.pop(key))

    async def _xattrs(
        self, inode: int, wanted: str | None, *, metadata: bool = True
    ) -> dict[str, str]:
        """The xattrs of inode's file (only those that may be `wanted`, if given)."""
        path = self.inodes.path(inode)
        if is_view(path):
            return await self.versions.xattrs(self.versions.entry(path), wanted)
        if wanted is not None and not wanted.startswith(XATTR_PREFIX):
            return {}
        session = self.writes.of_inode(inode)
        if session is not None and not session.pending:
            found = staged_xattrs(session.metadata())
            if not metadata:
                return {k: v for k, v in found.items() if k.startswith(METRIC_PREFIX)}
            return found
        found = {}
        if metadata:
            found = {k: v for k, v in (await self._metadata(inode)).items()
                     if k.startswith(XATTR_PREFIX)}  # fmt: skip
        version = self.view.file(path)
        if version is not None and (wanted is None or wanted.startswith(METRIC_PREFIX)):
            metrics = await self._run(committed_metrics, self.store, path, version)
            found.update(as_xattrs(metrics))
        return found

    async def _set_metric(self, inode: int, ctx: Any, metric: str, value: Any) -> None:
        """Record (None: remove) a metric of the file's current version, with no new version;
        or, during a write session, of the version that session will commit."""
        path = self.inodes.path(inode)
        session = self._session_to_change(inode, path, ctx)
        if session is not None:
            stored = staged_key(metric)

            def change(m: dict[str, str]) -> None:
                if value is None:
                    m.pop(stored, None)
                else:
                    m[stored] = format_value(value)

            await self.writes.set_metadata(session, change)
            return
        if self.view.file(path) is None:
            raise _fuse(errno.ENOTSUP if self._exists(path) else errno.ENOENT)
        current = await self.view.current_version(path)
        if current is None:
            raise _fuse(errno.ENOENT)
        await self._run(record_metric, self.store, path, current.version, metric, value)
        log.debug("%s@%d: metric %s set to %r", path, current.version, metric, value)

    async def _metadata(self, inode: int) -> dict[str, str]:
        session = self.writes.of_inode(inode)
        if session is not None and not session.pending:
            return session.metadata()
        path = self.inodes.path(inode)
        await self.view.refresh()
        version = self.view.file(path)
        if version is None:
            if self._exists(path):
                return {}  # directories carry no metadata
            raise _fuse(errno.ENOENT)
        manifest = await self._run(self.store.load_manifest, version.manifest)
        return dict(manifest.metadata)

    async def _update_metadata(
        self, inode: int, ctx: Any, change: Callable[[dict[str, str]], object]
    ) -> None:
        path = self.inodes.path(inode)
        session = self._session_to_change(inode, path, ctx)
        if session is not None:
            await self.writes.set_metadata(session, change)
            return
        if self.view.file(path) is None:
            raise _fuse(errno.ENOTSUP if self._exists(path) else errno.ENOENT)
        metadata = await self._metadata(inode)
        change(metadata)
        self.view.file_changed(path, await self._run(self.store.set_metadata, path, metadata))

    # lifecycle

    def close(self) -> None:
        """After unmounting: wait for early uploads still running."""
        self.writes.close()

    async def start(self) -> None:
        """Before the mount is ready: commit what an earlier mount left staged, then list
        the store (so the first lookups need no request)."""
        await self.writes.commit_leftovers(read_only=self.read_only)
        await self.view.refresh(force=True)

    async def warm_manifests(self) -> None:
        """Load the manifests of the newest files in the background, so that their first
        open after mounting costs one ref read, not a ref and a manifest read in a row."""
        newest = sorted(self.view.tree.files.values(), key=lambda v: v.time, reverse=True)
        ids = [v.manifest for v in newest if v.manifest is not None]
        await self._run(self.store.preload_manifests, ids)

    async def retry_failed_commits(self) -> None:
        """In the background while mounted: commit again what failed to commit at close."""
        while True:
            await trio.sleep(RETRY_SECONDS)
            await self.writes.retry_failed()
