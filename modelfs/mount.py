"""Mount wiring: checks, the pyfuse3 session, signals, and the background daemon.

`modelfs mount` without --foreground starts itself again with --foreground in
a new session and returns once that child reports the mount ready (or prints
the child's error and fails). The daemon writes its pid where `modelfs
umount` finds it, so umount can wait until it has finished and exited.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from .client import Client, open_store
from .errors import ModelfsError
from .store.store import DEFAULT_MAX_REQUESTS

if TYPE_CHECKING:
    from .fs.operations import Operations

log = logging.getLogger(__name__)

INIT_TIMEOUT_S = 10.0  # the kernel sends INIT at once; report ready anyway after this
FUSE_DEVICE = "/dev/fuse"  # a module constant, so a test can point it at a missing path
_PYFUSE3_BUILD = (
    "it needs libfuse3-dev and pkg-config to build; apt-get install fuse3 libfuse3-dev pkg-config"
)


@dataclass
class MountOptions:
    store: str
    mountpoint: str
    cache_dir: str | None = None
    cache_size: int = 10 << 30
    read_only: bool = False
    allow_other: bool = False
    refresh_interval: float = 5.0
    readahead_kb: int = 1024
    fuse_options: list[str] = field(default_factory=list)
    max_requests: int = DEFAULT_MAX_REQUESTS
    retry_seconds: float | None = None
    s3_options: dict[str, Any] = field(default_factory=dict)


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or ("/run" if os.getuid() == 0 else "/tmp")
    d = Path(base) / f"modelfs-{os.getuid()}"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def pid_file(mountpoint: str) -> Path:
    key = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:16]
    return runtime_dir() / f"{key}.pid"


def raise_readahead(real_mountpoint: str, kb: int) -> None:
    """Let the kernel read ahead up to kb KiB, so sequential reads arrive in 1 MiB
    requests instead of 128 KiB ones: eight times fewer round trips to the daemon.

    Best effort (needs root). Reads /proc and /sys only: touching the mountpoint
    itself before the main loop runs would wait forever on our own daemon.
    """
    try:
        with open("/proc/self/mountinfo") as f:
            devs = [line.split()[2] for line in f if line.split()[4] == real_mountpoint]
        if devs:
            Path(f"/sys/class/bdi/{devs[-1]}/read_ahead_kb").write_text(str(kb))
            log.info("kernel readahead for %s set to %d KiB", real_mountpoint, kb)
    except OSError as e:
        log.info("kernel readahead left at its default (%s)", e)


def mount_identity(real_mountpoint: str) -> tuple[int, tuple[int, int]] | None:
    """The mount id (as /proc/*/fdinfo shows it) and the (major, minor) device (as
    /proc/*/maps shows it) of the mount at real_mountpoint; None if it is not found."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = [line.split() for line in f]
        fields = [f for f in lines if f[4] == real_mountpoint][-1]
        major, minor = fields[2].split(":")
        return int(fields[0]), (int(major), int(minor))
    except (OSError, ValueError, IndexError):
        return None


def check_fusermount3() -> None:
    """libfuse runs fusermount3 to mount for a user who is not root; `modelfs umount` runs it."""
    if shutil.which("fusermount3") is None:
        raise ModelfsError("fusermount3 is not installed (or not on PATH): apt-get install fuse3")


def check_fuse_available() -> None:
    """Fail with one line saying what to install when a piece a mount needs is missing:
    the pyfuse3 module, the FUSE device, fusermount3.

    Run before daemonising too, so the error reaches the caller's terminal and
    not only the daemon's log.
    """
    try:
        import pyfuse3  # noqa: F401
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name == "pyfuse3":
            raise ModelfsError(
                f"pyfuse3 is not installed: pip install 'modelfs[fuse]' ({_PYFUSE3_BUILD})"
            ) from None
        why = " ".join(str(e).split())  # one line, whatever the loader said
        raise ModelfsError(
            f"pyfuse3 is installed but cannot be imported ({why}): "
            f"pip install --force-reinstall 'modelfs[fuse]' ({_PYFUSE3_BUILD})"
        ) from None
    if not os.path.exists(FUSE_DEVICE):
        raise ModelfsError(
            f"{FUSE_DEVICE} is missing: load the fuse module (modprobe fuse) or, in a container, pass --device /dev/fuse"
        )
    check_fusermount3()


def check_mountpoint(mountpoint: str) -> None:
    if not os.path.isdir(mountpoint):
        raise ModelfsError(f"mountpoint {mountpoint} does not exist or is not a directory")
    try:
        if os.path.ismount(mountpoint):
            raise ModelfsError(
                f"mountpoint {mountpoint} is busy: something is already mounted there"
            )
    except OSError as e:  # a dead FUSE mount: "Transport endpoint is not connected"
        raise ModelfsError(
            f"mountpoint {mountpoint} is a dead mount ({e.strerror}): run `modelfs umount {mountpoint}` first"
        ) from None


def run_foreground(opts: MountOptions, ready_fd: int | None = None) -> None:
    """Mount and serve until unmounted or signalled. Reports readiness or the error on ready_fd."""

    def report(message: str) -> None:
        if ready_fd is not None:
            os.write(ready_fd, message.encode() + b"\n")

    client: Client | None = None
    staging: StagingArea | None = None
    ops: Operations | None = None
    mounted = False
    try:
        check_fuse_available()  # before anything imports pyfuse3: say what to install
        check_mountpoint(opts.mountpoint)
        import pyfuse3

        from .fs.operations import Operations
        from .fs.staging import StagingArea

        client = open_store(
            opts.store, cache_dir=opts.cache_dir, cache_size=opts.cache_size,
            max_requests=opts.max_requests, retry_seconds=opts.retry_seconds,
            s3_options=opts.s3_options,
        )  # fmt: skip
        assert client.reader.disk_cache is not None
        note = ""
        if not opts.read_only and not client.store.can_write():
            opts.read_only = True
            note = (
                f"{opts.store} refuses writes with these credentials (access denied): "
                "mounted read-only"
            )
            log.warning("%s", note)
        staging = StagingArea(client.reader.disk_cache.directory / "staging")
        ops = Operations(
            client.store, client.reader, staging,
            read_only=opts.read_only, refresh_interval=opts.refresh_interval,
        )  # fmt: skip
        trio.run(ops.start)
        fuse_options = set(pyfuse3.default_options) | {"fsname=modelfs", "subtype=modelfs"}
        if opts.allow_other:
            fuse_options.add("allow_other")
        if opts.read_only:
            fuse_options.add("ro")
        for option in opts.fuse_options:
            fuse_options.update(o for o in option.split(",") if o)
        # Before init: once mounted, touching the mountpoint from this thread would
        # wait on requests that only the not yet running main loop can answer.
        pidf = pid_file(opts.mountpoint)
        real_mountpoint = os.path.realpath(opts.mountpoint)
        try:
            pyfuse3.init(ops, opts.mountpoint, fuse_options)
        except RuntimeError as e:
            raise ModelfsError(f"cannot mount {opts.mountpoint}: {e}") from None
        mounted = True
        pidf.write_text(str(os.getpid()))
        log.info("mounted %s at %s", opts.store, opts.mountpoint)

        def ready() -> None:
            nonlocal ready_fd
            report(f"ready {note}".strip())
            if ready_fd is not None:
                os.close(ready_fd)
                ready_fd = None

        trio.run(_serve, ops, real_mountpoint, opts.readahead_kb, ready)
    except ModelfsError as e:
        report(f"error: {e}")
        raise
    finally:
        if mounted:
            pyfuse3.close(unmount=True)
            pidf.unlink(missing_ok=True)
            log.info("unmounted %s", opts.mountpoint)
        if ops is not None:
            ops.close()
        if staging is not None:
            staging.close()
        if client is not None:
            client.close()


async def _serve(
    ops: Operations, real_mountpoint: str, readahead_kb: int, ready: Callable[[], None]
) -> None:
    import pyfuse3

    async with trio.open_nursery() as nursery:

        async def raise_readahead_then_report_ready() -> None:
            # The kernel lowers readahead to what the FUSE INIT reply allows, and a file
            # keeps the readahead it had when opened: raise it after INIT and before
            # anyone is told the mount is ready (a file opened earlier would read in
            # 128 KiB requests for its whole life).
            with trio.move_on_after(INIT_TIMEOUT_S):
                await ops.initialized.wait()
            await trio.to_thread.run_sync(raise_readahead, real_mountpoint, readahead_kb)
            identity = await trio.to_thread.run_sync(mount_identity, real_mountpoint)
            if identity is not None:
                processes = ops.writes.processes
                processes.mount_id, processes.device = identity
            ready()
            await ops.warm_manifests()

        nursery.start_soon(raise_readahead_then_report_ready)
        nursery.start_soon(ops.retry_failed_commits)

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("signal %d: unmounting", signum)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(stop_on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def start_background(argv: list[str], log_file: str, timeout: float = 60.0) -> str:
    """Run `modelfs mount ... --foreground` as a daemon; return when it is mounted,
    with the daemon's note for the user ("" or why it mounted read-only)."""
    read_fd, write_fd = os.pipe()
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelfs", *argv, "--foreground", "--ready-fd", str(write_fd)],
            pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
            start_new_session=True,
        )  # fmt: skip
    os.close(write_fd)
    message = b""
    deadline = time.monotonic() + timeout
    with os.fdopen(read_fd, "rb") as r:
        while time.monotonic() < deadline:
            chunk = r.readline()
            message += chunk
            if not chunk or chunk.endswith(b"\n"):
                break
    text = message.decode(errors="replace").strip()
    if text == "ready" or text.startswith("ready "):
        return text.removeprefix("ready").strip()
    if proc.poll() is None and not text:
        proc.terminate()
        raise ModelfsError(f"the mount did not become ready in {timeout:.0f} s; see {log_file}")
    proc.wait(timeout=30)
    raise ModelfsError(text.removeprefix("error: ") or f"the mount daemon failed; see {log_file}")


def sync_staged(
    store: str, cache_dir: str | None, **open_options: Any
) -> tuple[list[str], list[str]]:
    """Commit what a stopped mount left staged in cache_dir: (committed paths, failed ones).

    Files closed but not uploaded are committed; partial writes are moved to
    recovered/ (see fs/staging.py). Refused while a mount uses that cache directory.
    """
    from .fs.staging import StagingArea, commit_leftovers

    with open_store(store, cache_dir=cache_dir, **open_options) as client:
        assert client.reader.disk_cache is not None
        staging = StagingArea(client.reader.disk_cache.directory / "staging")
        try:
            return commit_leftovers(staging, client.store)
        finally:
            staging.close()


def _is_modelfs_process(pid: int) -> bool:
    """Whether pid is still a running modelfs (the pid of a crashed daemon may be reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return b"modelfs" in cmdline and state != "Z"


def mounted_fs_type(mountpoint: str) -> str | None:
    """The type of what is mounted at mountpoint ("fuse.modelfs" for ours), None if nothing."""
    target = os.path.realpath(mountpoint)  # a dead mount cannot be resolved further; fine
    fs_type = None
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            # /proc/mounts writes space, tab, newline and backslash in octal (\040)
            where = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
            if where == target:
                fs_type = fields[2]  # the last one is on top
    return fs_type


def unmount(mountpoint: str, timeout: float = 60.0) -> None:
    """Unmount (also a dead mount) and wait for the daemon to finish and exit."""
    # Run as root, fusermount3 -u unmounts whatever is there, even a disk: look first.
    fs_type = mounted_fs_type(mountpoint)
    if fs_type != "fuse.modelfs":
        what = f"it is a {fs_type} mount" if fs_type else "nothing is mounted there"
        raise ModelfsError(f"{mountpoint} is not a modelfs mount ({what})")
    check_fusermount3()
    pidf = pid_file(mountpoint)
    pid = int(pidf.read_text()) if pidf.exists() else None
    proc = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if proc.returncode != 0:
        err = proc.stderr.strip()
        if "busy" in err.lower():
            raise ModelfsError(
                f"{mountpoint} is busy: close the files open in it, then unmount again"
            )
        if "not found" in err or "not mounted" in err.lower() or "entry for" in err:
            raise ModelfsError(f"{mountpoint} is not a modelfs mount")
        raise ModelfsError(f"cannot unmount {mountpoint}: {err}")
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_modelfs_process(pid):
            pidf.unlink(missing_ok=True)
            return
        time.sleep(0.05)
    raise ModelfsError(
        f"the daemon (pid {pid}) of {mountpoint} has not exited after {timeout:.0f} s"
    )
