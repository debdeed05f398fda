"""Write sessions: what happens between the first open for writing of a path and its commit.

A session runs from the first open for writing (or truncate) of a path in
this mount to the last close of it here, and makes one version. Its bytes
live in a local staging file (staging.py). Its rules:

- **Who sees it.** A session has an inode of its own. Lookups of the path
  return that inode only to the processes taking part in it (those that
  opened it for writing); every other process keeps seeing the previous
  version, whole, on the path's own inode, until the session is committed.
  A process that wants to change the path through the previous version's
  inode is invited in and answered ESTALE: the kernel looks the path up
  again, gets the session's inode and retries (Operations does this).
- **Many writers share it**, as on a local filesystem: every open for
  writing of the path in this mount joins the one session, and O_TRUNC
  truncates the shared file.
- **When it is committed.** At the close (flush) after which nothing can
  write the file: every handle flushed since its last write, and no process
  holding it for writing (Processes: a descriptor of the writer or of a
  process it started, or a shared writable mapping). FUSE flushes at every
  close(2), also of a duplicate: dd's close of the descriptor it dup2'ed, a
  child's close-on-exec. Otherwise when the last handle is released. fsync
  commits at once what the file holds (an O_SYNC handle's syncs only make it
  durable in staging). A failed commit keeps the data staged (journal
  "closed"); it is retried in the background and by the next mount.
- **Crashes.** The journal says "open" until the commit starts: a crash
  before the last close never commits a partial file (the next mount moves
  it to recovered/). A writer killed by a signal before it closed the file
  is no save either: its bytes go to recovered/, nothing is committed.

Caveats:
- A descriptor passed to an unrelated process (SCM_RIGHTS) is not seen: the
  file is committed at the writer's close, and again after that process writes.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import trio

from ..errors import ModelfsError
from ..reader import BlockReader
from ..store import Manifest, Store, Version
from ..store.early import EarlyUploader
from ..store.refs import DEFAULT_FILE_MODE
from .inodes import InodeTable
from .staging import COMMITTED, MODE_KEY, OPEN, StagedFile, StagingArea, commit_leftovers
from .view import View

log = logging.getLogger(__name__)

# An invited process that has not opened the session's inode by then never will (its
# retry failed or it went away): the session is dropped.
INVITATION_SECONDS = 10.0
RETRY_SECONDS = 30.0  # how often a commit that failed is tried again in the background


def _fuse(err: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(err)


PF_EXITING = 0x4  # in /proc/PID/stat's flags: the process is exiting


def process_of(pid: int) -> int:
    """The process (thread group) of the thread that sent a request (0: unknown)."""
    if pid <= 0:
        return 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return pid


def _flags(fdinfo: bytes) -> int | None:
    """An fdinfo entry's open flags (None: no flags line). The kernel adds O_CLOEXEC
    there when the descriptor is close-on-exec."""
    for line in fdinfo.splitlines():
        if line.startswith(b"flags:"):
            return int(line.split()[1], 8)
    return None


class _Held(enum.Enum):
    NO = 0
    UNTIL_EXEC = 1  # only through close-on-exec descriptors
    LASTING = 2


class Processes:
    """What the kernel says (in /proc) of the processes that write through the mount.

    FUSE's flush comes with every close(2) of a descriptor, also of a duplicate,
    and with no word of who closed it; these answer whether a writer still
    holds the file, and whether it was killed. Blocking (they read /proc).
    """

    MAX_DESCENDANTS = 256  # a process tree larger than this is not searched further
    # A fork's child that keeps only close-on-exec copies longer than this is a worker
    # (multiprocessing's fork), which may write: it holds the file.
    FORK_SETTLE_SECONDS = 0.5

    def __init__(self, mount_id: int | None = None, device: tuple[int, int] | None = None) -> None:
        self.mount_id = mount_id  # the mount's id in mountinfo (None: match inodes only)
        self.device = device  # its (major, minor) device numbers, as /proc/PID/maps shows

    def holders(self, processes: set[int], inode: int) -> set[int]:
        """Those of processes, and of the processes they started, that can still write
        inode of this mount: through a descriptor open for writing (a child given the
        descriptor, as subprocess's stdout= does, holds it too), or a shared writable
        mapping (a program may close the descriptor once it has mapped the file). A
        descriptor open for reading does not keep a file from being committed.

        A child forked by another thread of the writer between fork and exec holds a copy
        of every descriptor, close-on-exec ones too, for a moment: such copies are waited
        for (up to FORK_SETTLE_SECONDS), so that the writer's close still commits."""
        deadline = time.monotonic() + self.FORK_SETTLE_SECONDS
        while True:
            lasting, until_exec = set(), set()
            for p in self._and_descendants(processes):
                if self._writes_through_a_mapping(p, inode):
                    lasting.add(p)
                    continue
                held = self._writes_through_a_descriptor(p, inode)
                if held is _Held.UNTIL_EXEC and p not in processes:
                    until_exec.add(p)
                elif held is not _Held.NO:
                    lasting.add(p)
            if lasting or not until_exec or time.monotonic() >= deadline:
                return lasting | until_exec
            time.sleep(0.005)

    def _and_descendants(self, processes: set[int]) -> list[int]:
        found = [p for p in processes if p > 0]
        for p in found:  # grows as children are found
            if len(found) >= self.MAX_DESCENDANTS:
                break
            try:
                tasks = os.listdir(f"/proc/{p}/task")
            except OSError:
                continue  # gone
            for task in tasks:
                try:
                    with open(f"/proc/{p}/task/{task}/children", "rb") as f:
                        children = [int(c) for c in f.read().split()]
                except (OSError, ValueError):
                    continue
                found.extend(c for c in children if c not in found)
        return found

    def _writes_through_a_descriptor(self, process: int, inode: int) -> _Held:
        try:
            fds = os.listdir(f"/proc/{process}/fdinfo")
        except OSError:
            return _Held.NO  # gone
        want_ino = f"ino:\t{inode}\n".encode()
        want_mnt = f"mnt_id:\t{self.mount_id}\n".encode() if self.mount_id is not None else b""
        held = _Held.NO
        for fd in fds:
            try:
                with open(f"/proc/{process}/fdinfo/{fd}", "rb") as f:
                    info = f.read()
            except OSError:
                continue  # closed while we looked
            if want_ino in info and want_mnt in info:
                flags = _flags(info)
                if flags is None or flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                    if flags is not None and flags & os.O_CLOEXEC:
                        held = _Held.UNTIL_EXEC
                    else:
                        return _Held.LASTING
        return held

    def _writes_through_a_mapping(self, process: int, inode: int) -> bool:
        try:
            with open(f"/proc/{process}/maps", "rb") as f:
                maps = f.read()
        except OSError:
            return False
        want = str(inode).encode()
        if want not in maps:
            return False
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) < 5 or fields[4] != want or fields[1][1:2] != b"w":
                continue
            if fields[1][3:4] != b"s":
                continue  # a private mapping writes nothing back
            if self.device is not None:
                major, _, minor = fields[3].partition(b":")
                if (int(major, 16), int(minor, 16)) != self.device:
                    continue
            return True
        return False

    def killed(self, process: int) -> bool:
        """Whether process is exiting because a signal killed it (the kernel then closes
        its files, and their flushes are not the program's closes)."""
        if process <= 0:
            return False
        try:
            with open(f"/proc/{process}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            state, flags, exit_code = fields[0], int(fields[6]), int(fields[49])
        except (OSError, ValueError, IndexError):
            return False
        exiting = bool(flags & PF_EXITING) or state in (b"Z", b"X")
        return exiting and exit_code & 0x7F != 0


@dataclass(eq=False)  # a handle is itself: two opens are two handles
class WriteHandle:
    session: WriteSession
    writable: bool
    process: int
    flushed: bool = False  # closed (flush) since this handle's last change
    killed: bool = False  # its process was killed: its close is not a save
    # Opened O_SYNC or O_DSYNC: the kernel syncs after every write, which is no request
    # to publish what is half written.
    sync_writes: bool = False


@dataclass(eq=False)
class WriteSession:
    path: str  # "" once unlinked: never committed
    inode: int
    processes: set[int] = field(default_factory=set)  # those that see the session at path
    # Invited (answered ESTALE) and not yet joined: the session waits for them a while.
    awaiting: set[int] = field(default_factory=set)
    holders: set[int] = field(default_factory=set)  # processes last found holding it for writing
    invited_at: float = field(default_factory=time.monotonic)
    ended: bool = False  # its staging file is discarded (or kept for the next mount)
    staged: StagedFile | None = None  # None until the first open (an invitation only)
    handles: list[WriteHandle] = field(default_factory=list)
    # The committed content the file starts from, not yet copied in: opening a large
    # model for writing (as `touch` does) copies nothing until a byte changes.
    base: Manifest | None = None
    base_version: Version | None = None  # the version it started from (attributes while pending)
    dirty: bool = False  # differs from what was last committed (or from where it started)
    committed: Version | None = None  # what this session last committed
    lock: trio.Lock = field(default_factory=trio.Lock)  # held by commits and copy-in
    # Uploading blocks while the file is written front to back (None: not this file).
    early: EarlyUploader | None = None
    early_task: Future[None] | None = None
    written_end: int = 0  # the writes so far cover [0, written_end) in order
    _process_cache: dict[int, int] = field(default_factory=dict)

    @property
    def pending(self) -> bool:
        return self.staged is None

    @property
    def writers(self) -> list[WriteHandle]:
        return [h for h in self.handles if h.writable]

    @property
    def size(self) -> int:
        if self.base is not None:
            return self.base.size
        if self.staged is not None:
            return self.staged.size
        return self.base_version.size if self.base_version is not None else 0

    def sees(self, pid: int) -> bool:
        """Whether the thread pid belongs to a process taking part in this session."""
        if not self.processes:
            return False
        process = self._process_cache.get(pid)
        if process is None:
            process = self._process_cache[pid] = process_of(pid)
        return process in self.processes

    def metadata(self) -> dict[str, str]:
        assert self.staged is not None
        return self.staged.metadata


@dataclass
class WriteCounters:
    writes: int = 0
    bytes_written: int = 0
    commits: int = 0
    commit_errors: int = 0


class Writes:
    """The write sessions of one mount, by path and by inode."""

    def __init__(
        self,
        store: Store,
        reader: BlockReader,
        staging: StagingArea,
        view: View,
        inodes: InodeTable,
        run: Callable[..., Awaitable[Any]],
        *,
        processes: Processes | None = None,
        early_upload: bool = True,
    ) -> None:
        self.store = store
        self.reader = reader
        self.staging = staging
        self.view = view
        self.inodes = inodes
        self._run = run
        self.processes = processes or Processes()
        self._early_upload = early_upload
        self.counters = WriteCounters()
        self._by_path: dict[str, WriteSession] = {}
        self._by_inode: dict[int, WriteSession] = {}
        # One file at a time uploads early; its upload itself runs several requests.
        self._early_uploads = ThreadPoolExecutor(1, thread_name_prefix="modelfs-early-upload")
        self._fsyncs = ThreadPoolExecutor(2, thread_name_prefix="modelfs-fsync")

    def close(self) -> None:
        """After unmounting: wait for early uploads still running."""
        self._early_uploads.shutdown(wait=True)
        self._fsyncs.shutdown(wait=True)

    # finding sessions

    def at(self, path: str) -> WriteSession | None:
        """The session of path in this mount, if any (an invitation nobody took up expires)."""
        session = self._by_path.get(path)
        if (
            session is not None
            and not session.handles
            and not (session.dirty and session.path and not session.pending)
            and time.monotonic() - session.invited_at > INVITATION_SECONDS
        ):
            self._expire(session)
            return None
        return session

    def of_inode(self, inode: int) -> WriteSession | None:
        return self._by_inode.get(inode)

    def paths(self) -> list[str]:
        return list(self._by_path)

    def visible_at(self, path: str, pid: int) -> WriteSession | None:
        """path's session if the thread pid takes part in it: its lookups return the session."""
        session = self.at(path)
        return session if session is not None and session.sees(pid) else None

    def invite(self, path: str, pid: int) -> WriteSession:
        """Let pid's process take part in path's session (made now, if there is none).

        The caller answers the request ESTALE: the kernel looks the path up again
        (getting the session's inode, as this process now sees it) and retries.
        """
        session = self.at(path)
        if session is None:
            session = WriteSession(path, self.inodes.new_detached(path))
            session.base_version = self.view.file(path)
            self._by_path[path] = session
            self._by_inode[session.inode] = session
        process = process_of(pid)
        session.processes.add(process)
        session.awaiting.add(process)
        session.invited_at = time.monotonic()
        return session

    # opening

    async def open(self, session: WriteSession, flags: int, pid: int) -> WriteHandle:
        """A handle on the session, for writing if flags say so (O_TRUNC truncates)."""
        writable = bool(flags & (os.O_WRONLY | os.O_RDWR))
        truncate = bool(flags & os.O_TRUNC)
        # Joined before any await: a session with a handle is not ended under us.
        handle = self._join(session, writable, pid)
        handle.sync_writes = bool(flags & (os.O_SYNC | os.O_DSYNC))
        try:
            if session.pending:
                async with session.lock:
                    if session.pending:
                        version = await self.view.current_version(session.path)
                        if version is None:
                            raise _fuse(errno.ENOENT)  # deleted since it was looked up
                        await self._stage(session, version, truncate=truncate)
                        truncate = False
            if truncate:
                await self._truncate(session, 0)
        except BaseException:
            await self._leave(handle)
            raise
        return handle

    async def create(self, path: str, mode: int, flags: int, pid: int) -> WriteHandle:
        """create(): a new file, or a handle on the session already writing path."""
        session = self.at(path)
        if session is not None and not session.pending and flags & os.O_EXCL:
            raise _fuse(errno.EEXIST)
        if session is None:
            session = WriteSession(path, self.inodes.new_detached(path))
            self._by_path[path] = session
            self._by_inode[session.inode] = session
        # Joined before any await: a session with a handle is not ended under us.
        handle = self._join(session, True, pid)
        handle.sync_writes = bool(flags & (os.O_SYNC | os.O_DSYNC))
        try:
            async with session.lock:
                if session.pending:
                    # The kernel's lookup said no such file; another mount may have made one.
                    version = await self.view.current_version(path)
                    if version is not None and flags & os.O_EXCL:
                        raise _fuse(errno.EEXIST)
                    truncate = version is None or bool(flags & os.O_TRUNC)
                    await self._stage(session, version, truncate=truncate)
                    if version is None:
                        assert session.staged is not None
                        session.staged.metadata[MODE_KEY] = str(stat.S_IFREG | (mode & 0o7777))
                elif flags & os.O_TRUNC:
                    await self._truncate_locked(session, 0)
        except BaseException:
            await self._leave(handle)
            raise
        return handle

    async def _leave(self, handle: WriteHandle) -> None:
        """Undo a join that failed: the session ends if nothing else holds it."""
        session = handle.session
        session.handles.remove(handle)
        if not session.handles and not (session.dirty and session.path):
            await self._finish(session)

    def _join(self, session: WriteSession, writable: bool, pid: int) -> WriteHandle:
        handle = WriteHandle(session, writable, process_of(pid))
        session.handles.append(handle)
        session.awaiting.discard(handle.process)
        if writable:
            session.processes.add(handle.process)
        return handle

    async def _stage(self, session: WriteSession, version: Version | None, *, truncate: bool):
        """Start the staging file of a session: version's content (none if truncate)."""
        metadata: dict[str, str] = {}
        manifest: Manifest | None = None
        if version is not None:
            assert version.manifest is not None
            manifest = await self._run(self.store.load_manifest, version.manifest)
            metadata = dict(manifest.metadata)
            if version.mode:
                metadata[MODE_KEY] = str(version.mode)
        session.staged = await self._run(self.staging.create, session.path, metadata)
        session.base_version = version
        session.base = manifest if not truncate else None
        # A new file is a new version even if nothing is written, and so is an emptied one.
        session.dirty = version is None or (truncate and version.size > 0)
        if truncate:
            self._start_early_upload(session)

    # data

    async def read(self, handle: WriteHandle, offset: int, size: int) -> bytes:
        session = handle.session
        assert session.staged is not None
        if session.base is not None:
            async with session.lock:
                await self._materialize(session)
        return os.pread(session.staged.fd, size, offset)

    async def write(self, handle: WriteHandle, offset: int, data: bytes) -> int:
        session = handle.session
        staged = session.staged
        assert staged is not None
        if session.lock.locked() or session.base is not None or staged.state != OPEN:
            async with session.lock:  # a commit or copy-in runs: wait for it
                await self._reopen(session)
                await self._materialize(session)
                written = os.pwrite(staged.fd, data, offset)
        else:
            # No await between the check above and the write: no commit starts in between.
            written = os.pwrite(staged.fd, data, offset)
        session.dirty = True
        handle.flushed = False
        self._upload_early(session, offset, written)
        self.counters.writes += 1
        self.counters.bytes_written += written
        return written

    async def truncate(
        self, session: WriteSession, size: int, handle: WriteHandle | None = None
    ) -> None:
        await self._truncate(session, size)
        if handle is not None:
            handle.flushed = False

    async def _truncate(self, session: WriteSession, size: int) -> None:
        async with session.lock:
            await self._truncate_locked(session, size)

    async def _truncate_locked(self, session: WriteSession, size: int) -> None:
        staged = session.staged
        assert staged is not None
        await self._reopen(session)
        await self._materialize(session, upto=size)
        session.base = None
        session.early = None  # truncated while written: commit it at close, as a whole
        os.ftruncate(staged.fd, size)
        session.dirty = True

    async def set_metadata(self, session: WriteSession, change: Callable[[dict], object]) -> None:
        """Change the session's metadata (xattrs, mode): committed with its data."""
        async with session.lock:
            await self._reopen(session)
            change(session.metadata())
        session.dirty = True

    async def _reopen(self, session: WriteSession) -> None:
        """Before a change after a commit (or a failed one): the journal says "open" again,
        so that a crash before the next commit does not commit a partial file. Call with
        session.lock held."""
        staged = session.staged
        assert staged is not None
        if staged.state != OPEN:
            await self._run(staged.write_journal, OPEN)

    async def _materialize(self, session: WriteSession, upto: int | None = None) -> None:
        """Copy the committed content the session starts from into its staging file, once,
        before anything reads or changes its data (only its first `upto` bytes when it is
        about to be cut there). Call with session.lock held."""
        manifest = session.base
        if manifest is None:
            return
        staged = session.staged
        assert staged is not None
        end = manifest.size if upto is None else min(upto, manifest.size)

        def copy() -> None:
            offset = 0
            while offset < end:
                data = self.reader.read(
                    manifest, offset, min(16 << 20, end - offset), path=staged.path
                )
                os.pwrite(staged.fd, data, offset)
                offset += len(data)

        await self._run(copy)
        session.base = None

    # early upload

    def _start_early_upload(self, session: WriteSession) -> None:
        """Upload the file's blocks while it is written, if it is written front to back."""
        if self._early_upload:
            assert session.staged is not None
            session.early = EarlyUploader(self.store, session.staged, session.path)
            session.written_end = 0

    def _upload_early(self, session: WriteSession, offset: int, written: int) -> None:
        early = session.early
        if early is None:
            return
        if offset != session.written_end:  # not front to back: the commit does it all
            session.early = None
            return
        session.written_end += written
        step = self.store.config.pack_size  # a pack at a time
        running = session.early_task is not None and not session.early_task.done()
        if not running and session.written_end - early.uploaded_to >= step:
            session.early_task = self._early_uploads.submit(
                early.advance, session.written_end, minimum=step
            )

    async def _wait_early_upload(self, session: WriteSession) -> None:
        """Let a running early upload finish (its blocks are what the commit skips)."""
        task = session.early_task
        if task is not None and not task.done():
            await trio.to_thread.run_sync(futures.wait, [task])

    # closing

    async def _closed_by_all(self, session: WriteSession) -> bool:
        """Whether every writer has closed the file: each handle flushed since its last
        write, and no writer's process still holds a descriptor of it. A flush is any
        close(2), also of a duplicate: dd's close of the descriptor it dup2'ed, or the
        close-on-exec in a child that a writer spawned, must not commit a file that is
        still being written."""
        writers = session.writers
        if not all(h.flushed for h in writers):
            return False
        # Who held it last time stays a candidate: a child outlives the writer that
        # handed it the descriptor (it is then no longer found among its children).
        candidates = {h.process for h in writers} | session.holders
        session.holders = await self._run(self.processes.holders, candidates, session.inode)
        return not session.holders

    async def flush(self, handle: WriteHandle) -> None:
        """A close of a descriptor: commit if the last writer has closed the file."""
        if not handle.writable:
            return
        handle.flushed = True
        session = handle.session
        if await self._run(self.processes.killed, handle.process):
            # The kernel closes a killed writer's files: what it left is not a save.
            handle.killed = True
            return
        if session.dirty and session.path and await self._closed_by_all(session):
            await self.commit(session, closed=True)

    async def fsync(self, handle: WriteHandle) -> None:
        """fsync: publish what the file holds now (a version, durable in the store); for
        a handle opened O_SYNC or O_DSYNC, make its bytes durable in staging only."""
        session = handle.session
        if handle.sync_writes:
            assert session.staged is not None
            await self._run(os.fsync, session.staged.fd)
        elif session.dirty and session.path:
            await self.commit(session)

    async def release(self, handle: WriteHandle) -> None:
        """The kernel let go of a handle: the last one ends the session."""
        session = handle.session
        session.handles.remove(handle)
        if handle.killed and not session.writers and session.dirty and session.path:
            await self._abandon(session, handle.process)
        elif session.dirty and session.path and await self._closed_by_all(session):
            try:  # a close normally committed it; this is the last chance
                await self.commit(session, closed=True)
            except ModelfsError:
                pass  # logged; stays staged ("closed") and is tried again later
        if not session.handles and not (session.dirty and session.path):
            if session.awaiting and time.monotonic() - session.invited_at < INVITATION_SECONDS:
                # A process was answered ESTALE to join it and is about to open it again:
                # ending now would send its retry to the old inode, and ESTALE again.
                await self._wait_early_upload(session)
                return
            await self._finish(session)

    async def _finish(self, session: WriteSession) -> None:
        """End a session with no handle left and nothing to commit: its staging file goes.
        Once only, whoever calls it (two releases may both find the last handle gone)."""
        if session.ended:
            return
        session.ended = True
        self._end(session)  # before any await: nobody finds it from now on
        await self._wait_early_upload(session)  # it reads through the fd discard closes
        if session.staged is not None:
            await self._run(self.staging.discard, session.staged)

    def _expire(self, session: WriteSession) -> None:
        """_finish for an invitation nobody took up (no await: called from lookups)."""
        if session.ended:
            return
        session.ended = True
        self._end(session)
        task = session.early_task
        if session.staged is not None and (task is None or task.done()):
            self.staging.discard(session.staged)  # two unlinks and a close: no thread needed
        elif session.staged is not None:
            task.add_done_callback(lambda _: self.staging.discard(session.staged))

    async def _abandon(self, session: WriteSession, process: int) -> None:
        """The last writer was killed before it closed the file: the previous version
        stays current, and the partial data is kept in recovered/, never committed."""
        async with session.lock:
            staged = session.staged
            assert staged is not None
            await self._wait_early_upload(session)
            target = await self._run(self.staging.recover, staged)
            log.warning(
                "%s was being written by process %d, which was killed before it closed the "
                "file; its partial data is kept in %s and was not committed",
                session.path, process, target,
            )  # fmt: skip
            session.dirty = False
            if self._by_path.get(session.path) is session:
                del self._by_path[session.path]
            session.path = ""

    async def commit(self, session: WriteSession, *, closed: bool = False) -> None:
        """Upload a session's file as the next version of its path; EIO (kept staged) on failure.

        closed: the caller found every writer closed; a writer that joined since (its
        O_TRUNC may have emptied the file) keeps the file uncommitted until it closes.
        """
        async with session.lock:
            if not session.dirty or not session.path:
                return  # committed meanwhile (or unlinked)
            if closed and not all(h.flushed for h in session.writers):
                return  # the lock keeps every change out from here to the end of the upload
            staged = session.staged
            assert staged is not None
            path = session.path
            await self._wait_early_upload(session)
            closing: Future[None] | None = None
            try:
                await self._materialize(session)  # a metadata-only change commits the content too
                # The upload need not wait for the staged data to reach the disk (an fsync
                # of a large model takes a good part of a second): both run at once, and a
                # failed upload returns only once its data is durable and marked closed.
                closing = self._fsyncs.submit(self.staging.mark_closed, staged)
                try:
                    # Written front to back: what the early upload did is not done again.
                    known = session.early.known() if session.early is not None else None
                    version = await self._run(staged.commit_to, self.store, known)
                finally:
                    await trio.to_thread.run_sync(futures.wait, [closing])
            except BaseException as e:
                self.counters.commit_errors += 1
                if closing is not None and closing.exception() is not None:
                    log.error(
                        "%s could not be marked closed, so the next mount will not commit it: %s",
                        path, closing.exception(),
                    )  # fmt: skip
                log.error(
                    "committing %s failed; its data stays staged in %s: %s",
                    path, staged.data_path, e,
                )  # fmt: skip
                if isinstance(e, ModelfsError):
                    raise ModelfsError(f"committing {path} failed: {e}") from e
                raise
            session.dirty = False
            session.committed = version
            self.counters.commits += 1
            self.view.file_changed(path, version)
            if session.handles:  # still open: a crash now must not commit it again
                await self._run(lambda: staged.write_journal(COMMITTED, durable=False))

    async def retry_failed(self) -> None:
        """Commit again what failed to commit and has no handle left (the store was down)."""
        for session in list(self._by_path.values()):
            if session.handles or not session.dirty or session.pending:
                continue
            try:
                await self.commit(session)
            except ModelfsError:
                continue
            log.info("committed %s on a later try", session.path)
            if not session.handles:
                await self._finish(session)

    def _end(self, session: WriteSession) -> None:
        if self._by_path.get(session.path) is session:
            del self._by_path[session.path]
        if self._by_inode.pop(session.inode, None) is not None:
            self.inodes.unpin(session.inode)
        session.processes.clear()

    # the namespace

    async def unlinked(self, session: WriteSession) -> None:
        """path was unlinked while being written: the session is never committed."""
        async with session.lock:
            if self._by_path.get(session.path) is session:
                del self._by_path[session.path]
            session.path = ""
            if session.staged is not None:
                session.staged.path = ""
                # In the journal too, or a crash now would let the next mount commit it.
                await self._run(session.staged.write_journal)
            session.processes.clear()
        if not session.handles:
            await self._finish(session)

    async def renamed(self, session: WriteSession, new: str) -> None:
        """The session's file was renamed: it is committed under its new name."""
        async with session.lock:
            if self._by_path.get(session.path) is session:
                del self._by_path[session.path]
            session.path = new
            self._by_path[new] = session
            if session.staged is not None:
                session.staged.path = new
                await self._run(session.staged.write_journal)
            if session.early is not None:
                session.early.path = new

    # attributes

    def attributes(self, session: WriteSession) -> tuple[int, int, float]:
        """(mode, size, mtime) of the session's file as its processes see it."""
        if session.staged is None:
            v = session.base_version
            if v is None:
                return DEFAULT_FILE_MODE, 0, time.time()
            return v.file_mode, v.size, v.time
        mode = int(session.staged.metadata.get(MODE_KEY, DEFAULT_FILE_MODE))
        return mode, session.size, os.fstat(session.staged.fd).st_mtime

    async def truncate_path(self, path: str, size: int, version: Version | None) -> Version:
        """truncate(2) of a path no one has open for writing: a session of its own, committed
        at once. Returns the version it made."""
        # Not registered by path: nothing joins it, and it is gone when this returns.
        session = WriteSession(path, self.inodes.new_detached(path))
        try:
            async with session.lock:
                await self._stage(session, version, truncate=size == 0)
            staged = session.staged
            assert staged is not None
            try:
                await self._truncate(session, size)
                await self.commit(session)
            except BaseException:
                os.close(staged.fd)  # kept staged ("closed"): the next mount commits it
                raise
        finally:
            self.inodes.unpin(session.inode)
        assert session.committed is not None
        await self._run(self.staging.discard, staged)
        return session.committed

    # leftovers

    async def commit_leftovers(self, *, read_only: bool) -> None:
        """Commit files that an earlier mount closed but could not upload."""
        if read_only:
            for staged in self.staging.leftovers():
                log.warning(
                    "%s, staged by an earlier mount, stays staged: this mount is read-only "
                    "(commit it with `modelfs sync` where the store takes writes)",
                    staged.path,
                )  # fmt: skip
            return
        await self._run(commit_leftovers, self.staging, self.store)
