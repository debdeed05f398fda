"""`modelfs mount` and `modelfs umount` on a machine that lacks a piece FUSE needs.

Each test takes one piece away for real, for the command it runs: pyfuse3 by a
module of that name on PYTHONPATH that fails to import, fusermount3 by a PATH
without it, the FUSE device by pointing modelfs.mount.FUSE_DEVICE at a path
that does not exist. The command must fail at once, in the caller's terminal
(not in the daemon's log), with exit status 1 and one line naming what is
missing and how to install it; and nothing may be mounted or left running.
The store and mountpoint are real and fine: with the check gone, the mount
would succeed (and the test's teardown would take it down again).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import Mount

import modelfs
import modelfs.cli
import modelfs.mount
from modelfs.mount import mounted_fs_type, pid_file

# Each command runs both ways: as a user types it (a daemon in the background) and
# as a systemd unit runs it (--foreground), where nothing checked before.
MODES = {"background": [], "foreground": ["--foreground"]}


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Mount]:
    """A new store and an empty mountpoint; whatever a test mounted there is gone after it."""
    url = f"file://{tmp_path / 'store'}"
    modelfs.init_store(url)
    (tmp_path / "mnt").mkdir()
    m = Mount(url, tmp_path / "mnt", tmp_path / "cache")
    # pytest reuses tmp paths across runs: a pid file an earlier, killed run left for this
    # very path is not this test's to judge.
    pid_file(str(m.path)).unlink(missing_ok=True)
    yield m
    m.force_cleanup()  # only needed if the check under test let a mount through
    for pid in _daemons_of(m.path):
        os.kill(pid, signal.SIGKILL)


def _daemons_of(mountpoint: Path) -> list[int]:
    """The pids of modelfs processes (other than this one) started for mountpoint."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"modelfs" in argv and str(mountpoint).encode() in argv:
            pids.append(int(entry.name))
    return pids


def _mount_argv(m: Mount, mode: str) -> list[str]:
    return ["mount", m.store, str(m.path), "--cache-dir", str(m.cache_dir), *MODES[mode]]


def _modelfs(
    argv: list[str], env: dict[str, str], *, prelude: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a new interpreter (by absolute path: PATH may lack everything)."""
    code = f"import sys\n{prelude}\nfrom modelfs.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def _with_pythonpath(first: Path) -> dict[str, str]:
    """This environment with `first` ahead of everything on the module search path."""
    rest = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(first), *([rest] if rest else [])])}


def assert_fails_with_one_line(rc: int, stdout: str, stderr: str, *needles: str) -> None:
    assert rc == 1, f"exit status {rc}; stderr: {stderr}"
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"not one line: {stderr!r}"
    assert lines[0].startswith("modelfs: error: ")
    for needle in needles:
        assert needle in lines[0], f"{needle!r} missing from {lines[0]!r}"
    assert stdout == ""


def assert_nothing_mounted_or_running(m: Mount) -> None:
    assert mounted_fs_type(str(m.path)) is None
    assert not pid_file(str(m.path)).exists()
    assert _daemons_of(m.path) == []
    assert not (m.cache_dir / "mount.log").exists()  # no daemon was even started


# pyfuse3


@pytest.mark.parametrize("mode", MODES)
def test_mount_without_pyfuse3_says_to_install_the_fuse_extra(
    target: Mount, tmp_path: Path, mode: str
) -> None:
    hide = tmp_path / "no-pyfuse3"
    hide.mkdir()
    # What the import system raises when no pyfuse3 is installed anywhere.
    (hide / "pyfuse3.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pyfuse3'\", name='pyfuse3')\n"
    )
    proc = _modelfs(_mount_argv(target, mode), _with_pythonpath(hide))
    assert_fails_with_one_line(
        proc.returncode, proc.stdout, proc.stderr,
        "pyfuse3 is not installed", "pip install 'modelfs[fuse]'",
        "apt-get install fuse3 libfuse3-dev pkg-config",
    )  # fmt: skip
    assert_nothing_mounted_or_running(target)


@pytest.mark.parametrize("mode", MODES)
def test_mount_with_a_pyfuse3_that_cannot_load_says_why_and_how_to_reinstall(
    target: Mount, tmp_path: Path, mode: str
) -> None:
    hide = tmp_path / "broken-pyfuse3"
    hide.mkdir()
    # What importing pyfuse3 raises once libfuse3 is gone from the machine.
    (hide / "pyfuse3.py").write_text(
        'raise ImportError("libfuse3.so.3: cannot open shared object file: No such file or directory")\n'
    )
    proc = _modelfs(_mount_argv(target, mode), _with_pythonpath(hide))
    assert_fails_with_one_line(
        proc.returncode, proc.stdout, proc.stderr,
        "pyfuse3", "libfuse3.so.3: cannot open shared object file",
        "pip install --force-reinstall 'modelfs[fuse]'", "apt-get install fuse3",
    )  # fmt: skip
    assert_nothing_mounted_or_running(target)


# fusermount3


@pytest.mark.parametrize("mode", MODES)
def test_mount_without_fusermount3_says_to_install_fuse3(
    target: Mount, tmp_path: Path, mode: str
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    proc = _modelfs(_mount_argv(target, mode), {**os.environ, "PATH": str(empty)})
    assert_fails_with_one_line(
        proc.returncode, proc.stdout, proc.stderr, "fusermount3", "apt-get install fuse3"
    )
    assert_nothing_mounted_or_running(target)


def test_umount_without_fusermount3_says_to_install_fuse3_and_leaves_the_mount(
    target: Mount, mount_store, tmp_path: Path
) -> None:
    m = mount_store(target.store)
    (m.path / "weights.bin").write_bytes(b"still here")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    proc = _modelfs(["umount", str(m.path)], {**os.environ, "PATH": str(empty)})
    assert_fails_with_one_line(
        proc.returncode, proc.stdout, proc.stderr, "fusermount3", "apt-get install fuse3"
    )
    # Nothing was unmounted: the daemon still serves (the fixture unmounts it after).
    assert mounted_fs_type(str(m.path)) == "fuse.modelfs"
    assert (m.path / "weights.bin").read_bytes() == b"still here"


# the FUSE device


def test_mount_without_the_fuse_device_says_how_to_get_it(
    target: Mount,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = str(tmp_path / "no-fuse-device")
    monkeypatch.setattr(modelfs.mount, "FUSE_DEVICE", missing)
    rc = modelfs.cli.main(_mount_argv(target, "background"))
    out = capsys.readouterr()
    assert_fails_with_one_line(
        rc, out.out, out.err, f"{missing} is missing", "modprobe fuse", "--device /dev/fuse"
    )
    assert_nothing_mounted_or_running(target)


def test_mount_in_the_foreground_without_the_fuse_device_says_how_to_get_it(
    target: Mount, tmp_path: Path
) -> None:
    # In a new interpreter: with the check gone, a foreground mount would serve forever.
    missing = str(tmp_path / "no-fuse-device")
    prelude = f"import modelfs.mount\nmodelfs.mount.FUSE_DEVICE = {missing!r}"
    proc = _modelfs(_mount_argv(target, "foreground"), dict(os.environ), prelude=prelude)
    assert_fails_with_one_line(
        proc.returncode, proc.stdout, proc.stderr, f"{missing} is missing", "modprobe fuse"
    )
    assert_nothing_mounted_or_running(target)
