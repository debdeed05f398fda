"""Real FUSE mounts for tests: started through the CLI as a user would, always torn down.

A test asks for `mount_store(url)` (fixture `mount_store` in conftest) and gets
a Mount: the daemon runs in the background exactly as after `modelfs mount`,
and teardown unmounts it (lazily and by force if the test left it broken)
and makes sure its daemon process is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from modelfs.mount import pid_file


@dataclass
class Mount:
    store: str
    path: Path
    cache_dir: Path
    args: list[str] = field(default_factory=list)
    output: str = ""  # what `modelfs mount` printed (stdout and stderr)

    @property
    def log(self) -> str:
        try:
            return (self.cache_dir / "mount.log").read_text()
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int | None:
        f = pid_file(str(self.path))
        return int(f.read_text()) if f.exists() else None

    def stats(self) -> dict:
        with open(self.path / ".modelfs" / "stats") as f:
            return json.load(f)

    def unmount(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "modelfs", "umount", str(self.path)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def force_cleanup(self) -> None:
        pid = self.pid
        if _is_mounted(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def start_mount(
    store: str, mountpoint: Path, cache_dir: Path, *args: str, env: dict[str, str] | None = None
) -> Mount:
    """Mount with `modelfs mount`; env adds or replaces variables of the daemon's environment."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "modelfs", "mount", store, str(mountpoint),
        "--cache-dir", str(cache_dir), "--refresh-interval", "0.2", *args,
    ]  # fmt: skip
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )
    m = Mount(store, mountpoint, cache_dir, list(args), proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"mount failed ({proc.returncode}): {proc.stderr}\n{m.log}")
    return m


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
