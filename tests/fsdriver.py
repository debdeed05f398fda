"""The filesystem without FUSE: Operations on an in-memory store, driven as the kernel would.

A Mount here is an Operations object over a Store on a MemoryBackend (several
mounts may share one backend: they are then mounts of one store on different
machines), with its own staging directory. Kernel plays the kernel's part for
one mount: it walks paths with lookups, retries an open (or a truncate, chmod,
setxattr) once after ESTALE as Linux does, pairs every close with a flush and
a release, and tells each request which process sent it. Tests call it from
trio (the `fs_run` fixture runs a test's coroutine), so a rule about write
sessions is checked in milliseconds; the real-mount tests are the net above.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import trio

import modelfs
from modelfs.backends import Backend, MemoryBackend
from modelfs.errors import NotFoundError
from modelfs.fs.operations import Operations
from modelfs.fs.staging import StagingArea
from modelfs.fs.writes import Processes
from modelfs.reader import BlockReader
from modelfs.store import Store

# Process ids far above Linux's pid_max, so no real process has them (writes.process_of
# then takes each for a process of its own).
PID_BASE = 5_000_000


@dataclass
class Ctx:
    """What pyfuse3's RequestContext tells a handler about the caller."""

    pid: int
    uid: int = os.getuid()
    gid: int = os.getgid()
    umask: int = 0o022


@dataclass
class Fields:
    """pyfuse3.SetattrFields: which attributes a setattr changes."""

    update_size: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False


class KernelProcesses(Processes):
    """/proc as the Kernel below keeps it: which process holds which descriptor, who was killed."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel: Kernel | None = None

    def holders(self, processes: set[int], inode: int) -> set[int]:
        k = self.kernel
        assert k is not None
        family = set(processes)
        while True:  # the processes and every process they started (while they live)
            more = {c for c, p in k.parent.items() if p in family and p not in k.exited}
            if more <= family:
                break
            family |= more
        return {
            pid
            for pid, fh in k.descriptors + k.mappings
            if pid in family and k.inode_of[fh] == inode and fh in k.writable
        }

    def killed(self, process: int) -> bool:
        return self.kernel is not None and process in self.kernel.killed


class Mount:
    """One mount of a store: Operations with its own staging directory."""

    def __init__(self, backend: Backend, workdir: Path, *, read_only: bool = False) -> None:
        self.store = Store.open(backend)
        self.reader = BlockReader(self.store)
        self.staging_dir = workdir / "staging"
        self.staging = StagingArea(self.staging_dir)
        self.processes = KernelProcesses()
        self.ops = Operations(
            self.store, self.reader, self.staging, read_only=read_only,
            refresh_interval=0.0, notify_kernel=False, processes=self.processes,
        )  # fmt: skip

    async def start(self) -> None:
        await self.ops.start()

    def close(self) -> None:
        """An orderly unmount (or, without releasing open handles first, a crash)."""
        self.ops.close()
        self.reader.close()
        self.staging.close()
        self.store.close()


def new_store() -> MemoryBackend:
    backend = MemoryBackend()
    Store.create(backend)
    return backend


def read_store(backend: Backend, path: str, version: int | None = None) -> bytes:
    """What another program reading the store gets."""
    with modelfs.Client(Store.open(backend), use_disk_cache=False) as c:
        return c.read(path, version=version) if version is not None else c.read(path)


def history_sizes(backend: Backend, path: str) -> list[int | None]:
    """Each version's size, oldest first (None for a deletion); [] if never stored."""
    store = Store.open(backend)
    try:
        return [None if v.deleted else v.size for v in store.history(path)]
    except NotFoundError:
        return []
    finally:
        store.close()


class FSError(OSError):
    pass


def _errno_error(e: pyfuse3.FUSEError, what: str) -> FSError:
    return FSError(e.errno, f"{what}: {os.strerror(e.errno)}")


class Kernel:
    """The kernel's side of one mount: paths to inodes, file descriptors, retries.

    An open returns a handle (fh) and gives the opening process one descriptor of it;
    dup gives a process another (fork hands a child one). Closing a descriptor flushes
    its handle, and the last descriptor's close releases it, as Linux does.
    """

    def __init__(self, mount: Mount) -> None:
        self.ops = mount.ops
        self.mount = mount
        self.descriptors: list[tuple[int, int]] = []  # (process, fh), one per descriptor
        self.inode_of: dict[int, int] = {}  # fh -> the inode it was opened on
        self.writable: set[int] = set()  # handles opened for writing
        self.mappings: list[tuple[int, int]] = []  # (process, fh), one per shared mapping
        self.parent: dict[int, int] = {}  # process -> the process that forked it
        self.exited: set[int] = set()  # their children are no longer theirs (reparented)
        self.killed: set[int] = set()
        mount.processes.kernel = self

    def _opened(self, fh: int, inode: int, pid: int, flags: int) -> int:
        self.inode_of[fh] = inode
        if flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
            self.writable.add(fh)
        self.descriptors.append((pid, fh))
        return fh

    def dup(self, fh: int, pid: int) -> None:
        """Another descriptor of handle fh, in process pid (dup, or a child after fork)."""
        self.descriptors.append((pid, fh))

    def fork(self, parent: int, child: int) -> None:
        """fork(): the child gets a copy of each of the parent's descriptors."""
        self.parent[child] = parent
        self.descriptors += [(child, fh) for pid, fh in self.descriptors if pid == parent]

    def mmap(self, fh: int, pid: int) -> None:
        """A shared mapping of fh's file: it holds the file as a descriptor does."""
        self.mappings.append((pid, fh))

    async def munmap(self, fh: int, pid: int) -> None:
        self.mappings.remove((pid, fh))
        await self._release_if_unused(fh)

    async def _release_if_unused(self, fh: int) -> None:
        if not any(f == fh for _, f in self.descriptors + self.mappings):
            await self.release(fh)

    async def close_descriptor(self, fh: int, pid: int) -> None:
        """close(2) of pid's descriptor of fh: flush, and release after the last one."""
        try:
            await self.close_returns(fh, pid)
        finally:
            await self._release_if_unused(fh)

    async def close_returns(self, fh: int, pid: int) -> None:
        """close(2) of pid's descriptor of fh up to where it returns to the program: the
        kernel sends the release of the last descriptor after that, and may be slow to."""
        self.descriptors.remove((pid, fh))
        await self.flush(fh)

    async def exit(self, pid: int) -> None:
        """exit(): the kernel closes the process's descriptors; its children live on."""
        self.exited.add(pid)
        for p, fh in list(self.descriptors):
            if p == pid:
                await self.close_descriptor(fh, pid)

    async def kill(self, pid: int) -> None:
        """SIGKILL: the kernel closes every descriptor the process held."""
        self.killed.add(pid)
        for p, fh in list(self.descriptors):
            if p == pid:
                try:
                    await self.close_descriptor(fh, pid)
                except FSError:
                    pass  # nobody is there to see a close fail

    # paths

    async def lookup(self, path: str, pid: int) -> pyfuse3.EntryAttributes:
        """Walk path from the root, as a path lookup by process pid does."""
        inode = pyfuse3.ROOT_INODE
        attr = await self.ops.getattr(inode, Ctx(pid))
        for name in [p for p in path.split("/") if p]:
            attr = await self.ops.lookup(inode, os.fsencode(name), Ctx(pid))
            inode = attr.st_ino
        return attr

    async def _with_retry(self, path: str, pid: int, call: Callable[[int], Any]) -> Any:
        """call(inode) on path's inode, looked up afresh and retried once after ESTALE."""
        for attempt in (1, 2):
            try:
                attr = await self.lookup(path, pid)
                return await call(attr.st_ino)
            except pyfuse3.FUSEError as e:
                if e.errno == errno.ESTALE and attempt == 1:
                    continue
                raise _errno_error(e, path) from None
        raise AssertionError("unreachable")

    async def stat(self, path: str, pid: int) -> pyfuse3.EntryAttributes:
        try:
            return await self.lookup(path, pid)
        except pyfuse3.FUSEError as e:
            raise _errno_error(e, path) from None

    async def exists(self, path: str, pid: int) -> bool:
        try:
            await self.lookup(path, pid)
            return True
        except pyfuse3.FUSEError as e:
            if e.errno == errno.ENOENT:
                return False
            raise

    async def listdir(self, path: str, pid: int) -> list[str]:
        attr = await self.stat(path, pid)
        fh = await self.ops.opendir(attr.st_ino, Ctx(pid))
        names: list[bytes] = []
        original = pyfuse3.readdir_reply
        pyfuse3.readdir_reply = lambda token, name, attr, next_id: names.append(name) or True
        try:
            await self.ops.readdir(fh, 0, None)
        finally:
            pyfuse3.readdir_reply = original
            await self.ops.releasedir(fh)
        return sorted(os.fsdecode(n) for n in names)

    # files

    async def open(
        self, path: str, flags: int, pid: int, mode: int = 0o644, *, retries: int = 1
    ) -> int:
        """open(2): a file handle (O_CREAT makes the file if its lookup finds none). Linux
        retries once after ESTALE, with a fresh lookup (retries=0: that retry itself)."""
        parent, _, name = path.rpartition("/")
        for attempt in range(1, retries + 2):
            try:
                try:
                    attr = await self.lookup(path, pid)
                except pyfuse3.FUSEError as e:
                    if e.errno != errno.ENOENT or not flags & os.O_CREAT:
                        raise
                    parent_attr = await self.lookup(parent, pid)
                    info, attr = await self.ops.create(
                        parent_attr.st_ino, os.fsencode(name), stat.S_IFREG | mode,
                        flags & ~os.O_CREAT, Ctx(pid),
                    )  # fmt: skip
                    return self._opened(info.fh, attr.st_ino, pid, flags)
                if flags & os.O_CREAT and flags & os.O_EXCL:
                    raise pyfuse3.FUSEError(errno.EEXIST)
                # The kernel strips O_CREAT and O_EXCL from what FUSE's open is given.
                info = await self.ops.open(attr.st_ino, flags & ~(os.O_CREAT | os.O_EXCL), Ctx(pid))
                return self._opened(info.fh, attr.st_ino, pid, flags)
            except pyfuse3.FUSEError as e:
                if e.errno == errno.ESTALE and attempt <= retries:
                    continue  # looked up again with LOOKUP_REVAL, as Linux does
                raise _errno_error(e, path) from None
        raise AssertionError("unreachable")

    async def read(self, fh: int, offset: int = 0, size: int = 1 << 40) -> bytes:
        out = bytearray()
        while len(out) < size:
            chunk = await self.ops.read(fh, offset + len(out), min(1 << 20, size - len(out)))
            if not chunk:
                break
            out += chunk
        return bytes(out)

    async def write(self, fh: int, offset: int, data: bytes, step: int = 128 << 10) -> None:
        for start in range(0, len(data), step):
            await self.ops.write(fh, offset + start, data[start : start + step])

    async def flush(self, fh: int) -> None:
        """close(2) of one descriptor of the open file (dup'ed ones each flush)."""
        try:
            await self.ops.flush(fh)
        except pyfuse3.FUSEError as e:
            raise _errno_error(e, f"close of handle {fh}") from None

    async def release(self, fh: int) -> None:
        await self.ops.release(fh)

    async def close(self, fh: int) -> None:
        """close(2) of the descriptor its opener got (the only one, unless dup'ed)."""
        pid = next(p for p, f in self.descriptors if f == fh)
        await self.close_descriptor(fh, pid)

    async def fsync(self, fh: int) -> None:
        try:
            await self.ops.fsync(fh, False)
        except pyfuse3.FUSEError as e:
            raise _errno_error(e, f"fsync of handle {fh}") from None

    async def ftruncate(self, fh: int, path: str, size: int, pid: int) -> None:
        attr = await self.stat(path, pid)
        a = pyfuse3.EntryAttributes()
        a.st_size = size
        await self.ops.setattr(attr.st_ino, a, Fields(update_size=True), fh, Ctx(pid))

    async def truncate(self, path: str, size: int, pid: int) -> None:
        """truncate(2) by path: no file handle."""
        a = pyfuse3.EntryAttributes()
        a.st_size = size
        await self._with_retry(
            path,
            pid,
            lambda ino: self.ops.setattr(ino, a, Fields(update_size=True), None, Ctx(pid)),
        )

    async def chmod(self, path: str, mode: int, pid: int) -> None:
        a = pyfuse3.EntryAttributes()
        a.st_mode = mode
        await self._with_retry(
            path,
            pid,
            lambda ino: self.ops.setattr(ino, a, Fields(update_mode=True), None, Ctx(pid)),
        )

    async def touch(self, path: str, pid: int) -> None:
        """utimensat(2), as touch(1) calls it on a file that exists."""
        a = pyfuse3.EntryAttributes()
        a.st_atime_ns = a.st_mtime_ns = 1_700_000_000 * 10**9
        fields = Fields(update_atime=True, update_mtime=True)
        await self._with_retry(
            path, pid, lambda ino: self.ops.setattr(ino, a, fields, None, Ctx(pid))
        )

    async def setxattr(self, path: str, name: str, value: bytes, pid: int) -> None:
        await self._with_retry(
            path, pid, lambda ino: self.ops.setxattr(ino, name.encode(), value, Ctx(pid))
        )

    async def getxattr(self, path: str, name: str, pid: int) -> bytes:
        return await self._with_retry(
            path, pid, lambda ino: self.ops.getxattr(ino, name.encode(), Ctx(pid))
        )

    async def listxattr(self, path: str, pid: int) -> list[str]:
        names = await self._with_retry(path, pid, lambda ino: self.ops.listxattr(ino, Ctx(pid)))
        return sorted(os.fsdecode(n) for n in names)

    async def removexattr(self, path: str, name: str, pid: int) -> None:
        await self._with_retry(
            path, pid, lambda ino: self.ops.removexattr(ino, name.encode(), Ctx(pid))
        )

    async def mkdir(self, path: str, pid: int) -> None:
        parent, _, name = path.rpartition("/")
        attr = await self.stat(parent, pid)
        try:
            await self.ops.mkdir(attr.st_ino, os.fsencode(name), 0o755, Ctx(pid))
        except pyfuse3.FUSEError as e:
            raise _errno_error(e, path) from None

    async def unlink(self, path: str, pid: int) -> None:
        parent, _, name = path.rpartition("/")
        attr = await self.stat(parent, pid)
        try:
            await self.ops.unlink(attr.st_ino, os.fsencode(name), Ctx(pid))
        except pyfuse3.FUSEError as e:
            raise _errno_error(e, path) from None

    async def rename(self, old: str, new: str, pid: int) -> None:
        old_parent, _, old_name = old.rpartition("/")
        new_parent, _, new_name = new.rpartition("/")
        a = await self.stat(old_parent, pid)
        b = await self.stat(new_parent, pid)
        try:
            await self.ops.rename(
                a.st_ino, os.fsencode(old_name), b.st_ino, os.fsencode(new_name), 0, Ctx(pid)
            )
        except pyfuse3.FUSEError as e:
            raise _errno_error(e, f"{old} -> {new}") from None

    # whole files, as programs write and read them

    async def write_file(self, path: str, data: bytes, pid: int) -> None:
        """open(path, "wb"), write, close."""
        fh = await self.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, pid)
        try:
            await self.write(fh, 0, data)
        finally:
            await self.close(fh)

    async def read_file(self, path: str, pid: int) -> bytes:
        fh = await self.open(path, os.O_RDONLY, pid)
        try:
            return await self.read(fh)
        finally:
            await self.close(fh)


def trio_test(fn: Callable) -> Callable:
    """Run an async test function under trio (pytest still sees its fixtures)."""

    @functools.wraps(fn)
    def run(*args, **kwargs) -> None:
        trio.run(functools.partial(fn, *args, **kwargs))

    return run


async def started(mount: Mount) -> Kernel:
    """The mount started (leftovers committed, the store listed), and its kernel."""
    await mount.start()
    return Kernel(mount)
