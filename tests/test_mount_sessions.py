"""Write sessions through a real mount: one save is one version, and nobody sees it half done.

Real programs write through the mount (torch.save, safetensors' save_file, cp,
dd, shutil.copyfile, writer processes of their own), while other processes of
the same mount and another mount read. Each test checks what a user would:
the store's history, the bytes every reader gets, and that nothing is left
to commit after the writers are gone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mounting import wait_until
from test_mount_files import history_sizes
from test_mount_files import read_stored as read_store

import modelfs

MiB = 1 << 20


def one_more_version(store_url: str, tmp_path: Path, path: str, before: int) -> bool:
    return len(history_sizes(store_url, tmp_path, path)) == before + 1


def test_each_save_over_an_existing_file_is_exactly_one_version(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    m = mount_store(store_url)
    p = m.path / "model.bin"
    p.write_bytes(b"the first version" * 1000)
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 * MiB + 5))
    torch.manual_seed(0)
    tensors = {"w": torch.randn(512, 1024), "b": torch.randn(1024)}

    def torch_save() -> None:
        torch.save(tensors, p)

    def safetensors_save() -> None:
        save_file(tensors, str(p))

    def cp() -> None:
        subprocess.run(["cp", str(source), str(p)], check=True)

    def dd() -> None:
        subprocess.run(["dd", f"if={source}", f"of={p}", "bs=1M", "status=none"], check=True)

    def copyfile() -> None:
        shutil.copyfile(source, p)

    for save in (torch_save, safetensors_save, cp, dd, copyfile):
        before = len(history_sizes(store_url, tmp_path, "model.bin"))
        save()
        # The last close commits; give the release that follows it a moment, then check
        # that no second version came with it.
        assert wait_until(lambda n=before: one_more_version(store_url, tmp_path, "model.bin", n))
        sizes = history_sizes(store_url, tmp_path, "model.bin")
        assert len(sizes) == before + 1, f"{save.__name__} made {len(sizes) - before} versions"
        assert sizes[-1] == p.stat().st_size != 0
    assert read_store(store_url, tmp_path, "model.bin") == source.read_bytes()
    torch_save()
    assert torch.equal(torch.load(p)["w"], tensors["w"])
    safetensors_save()
    assert torch.equal(load_file(str(p))["b"], tensors["b"])


def test_dd_onto_a_new_file_is_one_version(store_url: str, mount_store, tmp_path: Path) -> None:
    m = mount_store(store_url)
    subprocess.run(
        ["dd", "if=/dev/urandom", f"of={m.path / 'new.bin'}", "bs=256k", "count=8", "status=none"],
        check=True,
    )
    assert history_sizes(store_url, tmp_path, "new.bin") == [2 * MiB]
    # Synchronous writes (the kernel syncs after each) are no request to publish each one.
    for flag in ("oflag=dsync", "oflag=sync", "conv=fsync"):
        subprocess.run(
            ["dd", "if=/dev/urandom", f"of={m.path / 'new.bin'}", "bs=256k", "count=8",
             "status=none", flag],
            check=True,
        )  # fmt: skip
    assert history_sizes(store_url, tmp_path, "new.bin") == [2 * MiB] * 4


WRITER = """
import os, sys
path, first, second = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
os.write(fd, b"n" * first)
print("half", flush=True)
sys.stdin.readline()
os.write(fd, b"N" * second)
os.close(fd)
print("done", flush=True)
"""


def test_while_a_file_is_overwritten_every_other_reader_sees_the_old_one_whole(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    a = mount_store(store_url, name="a")
    b = mount_store(store_url, name="b")
    old = os.urandom(3 * MiB)
    (a.path / "ckpt.bin").write_bytes(old)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(a.path / "ckpt.bin"), str(MiB), str(MiB)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert writer.stdout.readline().strip() == "half"
        # The writer has truncated the file and written half: readers of this mount
        # (this process) and of another mount get the old file, size and bytes.
        assert (a.path / "ckpt.bin").stat().st_size == len(old)
        assert (a.path / "ckpt.bin").read_bytes() == old
        assert (b.path / "ckpt.bin").read_bytes() == old
        assert read_store(store_url, tmp_path, "ckpt.bin") == old
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "done"
    finally:
        writer.kill()
        writer.wait()
    new = b"n" * MiB + b"N" * MiB
    assert (a.path / "ckpt.bin").read_bytes() == new
    assert (b.path / "ckpt.bin").read_bytes() == new
    assert history_sizes(store_url, tmp_path, "ckpt.bin") == [len(old), len(new)]


PROCESS_WRITER = """
import os, sys
path, tag, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(rounds):
    with open(path, "wb") as f:
        f.write(bytes([tag]) * (256 << 10) * (1 + i % 3))
"""


def test_many_threads_and_processes_writing_one_path_never_fail_at_close(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    """open("wb"), write, close over and over, from 6 threads and 3 processes at once."""
    m = mount_store(store_url)
    path = m.path / "shared.bin"
    path.write_bytes(b"first")
    errors: list[BaseException] = []
    closes = [0]

    def thread_writer(tag: int) -> None:
        try:
            for i in range(6):
                with open(path, "wb") as f:
                    f.write(bytes([tag]) * (256 << 10) * (1 + i % 3))
                closes[0] += 1
        except BaseException as e:  # collected: the test fails on each
            errors.append(e)

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS_WRITER, str(path), str(100 + n), "6"],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for n in range(3)
    ]
    threads = [threading.Thread(target=thread_writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert errors == []
    assert closes[0] == 36
    assert wait_until(lambda: m.stats()["files_being_written"] == 0)
    sizes = history_sizes(store_url, tmp_path, "shared.bin")
    assert 2 <= len(sizes) <= 1 + 36 + 18
    assert 0 not in sizes  # no truncation was ever published on its own
    current = read_store(store_url, tmp_path, "shared.bin")
    assert path.read_bytes() == current
    # Nothing is left for a later mount to commit: every accepted write was closed and committed.
    assert m.stats()["commit_errors"] == 0
    proc = m.unmount()
    assert proc.returncode == 0, proc.stderr
    staging = m.cache_dir / "staging"
    assert sorted(p.name for p in staging.iterdir()) == ["lock"]
    again = mount_store(store_url, name="again")
    assert history_sizes(store_url, tmp_path, "shared.bin") == sizes
    assert (again.path / "shared.bin").read_bytes() == current
    with modelfs.open_store(store_url, cache_dir=tmp_path / "fsck-cache") as c:
        assert c.fsck().ok


def test_a_writer_process_sees_what_it_wrote_before_closing(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    m = mount_store(store_url)
    p = m.path / "log.txt"
    p.write_bytes(b"line one\n")
    with open(p, "ab") as f:
        f.write(b"line two\n")
        f.flush()
        # The writing process stats and reads the path: its own writes, not the old file.
        assert p.stat().st_size == 18
        assert p.read_bytes() == b"line one\nline two\n"
        # Another process still sees the committed file.
        out = subprocess.run(["cat", str(p)], capture_output=True, check=True).stdout
        assert out == b"line one\n"
    assert subprocess.run(["cat", str(p)], capture_output=True).stdout == b"line one\nline two\n"


@pytest.mark.backend_independent
def test_np_memmap_writes_through_the_mount(store_url: str, mount_store, tmp_path: Path) -> None:
    """A shared writable mapping (np.memmap "w+", as some checkpoint writers use) is committed."""
    m = mount_store(store_url)
    p = m.path / "weights.npy"
    arr = np.memmap(p, dtype=np.float32, mode="w+", shape=(256, 1024))
    arr[:] = np.arange(256 * 1024, dtype=np.float32).reshape(256, 1024)
    arr.flush()
    del arr
    assert wait_until(lambda: m.stats()["files_being_written"] == 0)
    expected = np.arange(256 * 1024, dtype=np.float32).tobytes()
    assert read_store(store_url, tmp_path, "weights.npy") == expected
    assert p.read_bytes() == expected


def test_a_writer_killed_mid_write_leaves_the_previous_version_and_the_partial_bytes(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    m = mount_store(store_url)
    p = m.path / "ckpt.bin"
    old = os.urandom(2 * MiB)
    p.write_bytes(old)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(p), str(MiB), str(MiB)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert writer.stdout.readline().strip() == "half"
    finally:
        writer.kill()  # SIGKILL: the kernel closes its descriptor for it
        writer.wait()
    assert wait_until(lambda: m.stats()["files_being_written"] == 0)
    assert history_sizes(store_url, tmp_path, "ckpt.bin") == [len(old)]
    assert p.read_bytes() == old
    recovered = list((m.cache_dir / "recovered").iterdir())
    assert [r.read_bytes() for r in recovered] == [b"n" * MiB]
    assert "was killed before it closed the file" in m.log


def test_a_writer_that_reads_its_file_back_commits_at_its_close_from_many_threads(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    """Each thread: open("wb"), write, open("rb") to read it back, close the writer, then
    the reader. Every close commits; nothing fails; every version is a whole save."""
    m = mount_store(store_url)
    errors: list[BaseException] = []
    contents = {f"mix/f{t}_{i}.bin": os.urandom(20000) for t in range(3) for i in range(3)}
    (m.path / "mix").mkdir()

    def loop(t: int) -> None:
        try:
            for n in range(8):
                path = f"mix/f{t}_{n % 3}.bin"
                fw = open(m.path / path, "wb")  # noqa: SIM115 - the order of closes is the test
                fw.write(contents[path])
                fr = open(m.path / path, "rb")  # noqa: SIM115
                assert fr.read() == b""  # buffered: nothing reached the file yet
                fw.close()
                # Committed by that close: another process reads it whole, at once.
                out = subprocess.run(["cat", str(m.path / path)], capture_output=True).stdout
                assert out == contents[path]
                fr.close()
        except BaseException as e:  # collected: the test fails on each
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    assert wait_until(lambda: m.stats()["files_being_written"] == 0)
    with modelfs.open_store(store_url, cache_dir=tmp_path / "check") as c:
        for path, data in contents.items():
            assert {c.read(path, version=v.version) for v in c.history(path)} == {data}
    assert sorted(p.name for p in (m.cache_dir / "staging").iterdir()) == ["lock"]
    assert " ERROR " not in m.log


@pytest.mark.backend_independent
def test_a_close_commits_while_another_thread_forks_a_child(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    """A child forked by another thread holds a copy of the writer's (close-on-exec)
    descriptor until it execs: the writer's close still commits, so another process
    reads the file at once."""
    m = mount_store(store_url)
    data = os.urandom(30000)
    f = open(m.path / "new.bin", "wb")  # noqa: SIM115 - closed while the child holds a copy
    f.write(data)
    f.flush()

    def pause() -> None:  # runs in the child, between fork and exec
        os.write(w, b"x")
        time.sleep(0.2)

    r, w = os.pipe()
    errors: list[BaseException] = []

    def spawn() -> None:
        try:
            subprocess.run(["true"], preexec_fn=pause, check=True)  # noqa: PLW1509
        except BaseException as e:
            errors.append(e)

    child = threading.Thread(target=spawn)
    child.start()
    assert os.read(r, 1) == b"x"  # the child exists and holds the descriptor
    f.close()
    out = subprocess.run(["cat", str(m.path / "new.bin")], capture_output=True)
    child.join(timeout=30)
    os.close(r)
    os.close(w)
    assert errors == []
    assert out.stdout == data, out.stderr
    assert history_sizes(store_url, tmp_path, "new.bin") == [30000]


@pytest.mark.backend_independent
def test_a_child_handed_the_descriptor_writes_one_version(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    """subprocess.Popen(cmd, stdout=open(p, "wb")): the parent closes (and may exit) first."""
    m = mount_store(store_url)
    p = m.path / "out.bin"
    p.write_bytes(b"old")
    go = tmp_path / "go"  # the child writes once told to, however slow the machine is
    script = (
        "import subprocess, sys; subprocess.Popen(['sh', '-c', 'while [ ! -e \"$0\" ]; do "
        'sleep 0.05; done; head -c 3000000 /dev/zero | tr "\\\\0" x\', sys.argv[2]], '
        "stdout=open(sys.argv[1], 'wb'))"
    )
    subprocess.run([sys.executable, "-c", script, str(p), str(go)], check=True)  # returns at once
    assert read_store(store_url, tmp_path, "out.bin") == b"old"  # no empty version meanwhile
    go.touch()
    assert wait_until(lambda: len(history_sizes(store_url, tmp_path, "out.bin")) == 2, timeout=20)
    assert history_sizes(store_url, tmp_path, "out.bin") == [3, 3000000]
    assert p.read_bytes() == b"x" * 3000000


MAPPED_WRITER = """
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
n = 4 << 20
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, n)
addr = libc.mmap(None, n, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
os.close(fd)  # as C programs do: the mapping keeps the file
ctypes.memmove(addr, b"M" * n, n)
assert libc.msync(ctypes.c_void_p(addr), ctypes.c_size_t(n), 4) == 0
assert libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(n)) == 0
"""


@pytest.mark.backend_independent
def test_a_file_written_through_a_mapping_after_its_descriptor_closed_is_one_version(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    m = mount_store(store_url)
    p = m.path / "mapped.bin"
    p.write_bytes(b"old")
    subprocess.run([sys.executable, "-c", MAPPED_WRITER, str(p)], check=True)
    assert wait_until(lambda: m.stats()["files_being_written"] == 0)
    assert history_sizes(store_url, tmp_path, "mapped.bin") == [3, 4 << 20]  # no zeros first
    assert read_store(store_url, tmp_path, "mapped.bin") == b"M" * (4 << 20)


def test_mv_of_a_file_another_process_writes_keeps_its_old_content_under_the_new_name(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    a = mount_store(store_url, name="a")
    b = mount_store(store_url, name="b")
    old = os.urandom(2 * MiB)
    (a.path / "r.bin").write_bytes(old)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(a.path / "r.bin"), str(MiB), str(MiB)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert writer.stdout.readline().strip() == "half"
        subprocess.run(["mv", str(a.path / "r.bin"), str(a.path / "renamed.bin")], check=True)
        # Everyone else: the file moved, with the content it had.
        assert (b.path / "renamed.bin").read_bytes() == old
        assert not (b.path / "r.bin").exists()
        writer.kill()  # the save never finishes
        writer.wait()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert wait_until(lambda: a.stats()["files_being_written"] == 0)
    assert read_store(store_url, tmp_path, "renamed.bin") == old  # nothing lost
    assert (a.path / "renamed.bin").read_bytes() == old
