"""Write sessions, without FUSE: Operations driven as the kernel would (tests/fsdriver.py).

Each test plays processes on one or two mounts of an in-memory store and
checks what a user would notice: the bytes each process reads, the versions
in the store's history, the errno of a call, what the next mount commits.
"""

from __future__ import annotations

import errno
import json
import os

import pyfuse3
import pytest
import trio
from fsdriver import (
    PID_BASE,
    Ctx,
    FSError,
    Mount,
    history_sizes,
    new_store,
    read_store,
    started,
    trio_test,
)

from modelfs.backends import MemoryBackend
from modelfs.errors import BackendError
from modelfs.store import Store

WRITER, READER, OTHER = PID_BASE + 1, PID_BASE + 2, PID_BASE + 3
MiB = 1 << 20
O_WB = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


@pytest.fixture
def backend() -> MemoryBackend:
    return new_store()


def staged_journals(mount: Mount) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(mount.staging_dir.glob("*.json"))]


# one write session, one version


@trio_test
async def test_an_overwrite_is_one_version_and_others_read_the_old_file_whole_until_it_closes(
    backend, fs_mounts
) -> None:
    k = await started(fs_mounts(backend))
    old, new = os.urandom(3 * MiB), os.urandom(2 * MiB)
    await k.write_file("ckpt.bin", old, WRITER)
    fh = await k.open("ckpt.bin", O_WB, WRITER)
    await k.write(fh, 0, new[:MiB])
    # Half written: another process on this mount, and another mount, see the old file.
    assert await k.read_file("ckpt.bin", READER) == old
    assert (await k.stat("ckpt.bin", READER)).st_size == len(old)
    other = await started(fs_mounts(backend))
    assert await other.read_file("ckpt.bin", READER) == old
    assert read_store(backend, "ckpt.bin") == old
    # The writer's own process sees what it wrote so far.
    assert (await k.stat("ckpt.bin", WRITER)).st_size == MiB
    assert await k.read_file("ckpt.bin", WRITER) == new[:MiB]
    await k.write(fh, MiB, new[MiB:])
    await k.close(fh)
    assert await k.read_file("ckpt.bin", READER) == new
    assert await other.read_file("ckpt.bin", READER) == new
    assert history_sizes(backend, "ckpt.bin") == [len(old), len(new)]
    assert staged_journals(k.mount) == []


@trio_test
async def test_dd_closing_a_duplicated_descriptor_before_writing_makes_one_version(
    backend, fs_mounts
) -> None:
    """dd opens with O_TRUNC, dup2s the descriptor and closes the first one, then writes."""
    k = await started(fs_mounts(backend))
    await k.write_file("f", b"old" * 1000, WRITER)
    fh = await k.open("f", O_WB, WRITER)
    k.dup(fh, WRITER)
    await k.close_descriptor(fh, WRITER)  # close(3) after dup2(3, 1): nothing written yet
    assert read_store(backend, "f") == b"old" * 1000  # no empty version
    await k.write(fh, 0, b"new" * 500)
    await k.close_descriptor(fh, WRITER)
    assert history_sizes(backend, "f") == [3000, 1500]


@trio_test
async def test_a_child_closing_its_inherited_descriptor_does_not_commit(backend, fs_mounts) -> None:
    """A writer spawns a program: fork hands the child the descriptor, exec closes it."""
    k = await started(fs_mounts(backend))
    await k.write_file("ckpt", b"old", WRITER)
    fh = await k.open("ckpt", O_WB, WRITER)
    await k.write(fh, 0, b"first half ")
    k.fork(WRITER, OTHER)
    await k.close_descriptor(fh, OTHER)  # the child's exec: close-on-exec
    assert history_sizes(backend, "ckpt") == [3]
    await k.write(fh, 11, b"second half")
    await k.close(fh)
    assert history_sizes(backend, "ckpt") == [3, 22]
    assert read_store(backend, "ckpt") == b"first half second half"


@trio_test
async def test_a_writer_killed_mid_write_leaves_the_previous_version_and_its_bytes_recoverable(
    backend, fs_mounts, expect_warnings
) -> None:
    expect_warnings("which was killed before it closed the file")
    m = fs_mounts(backend)
    k = await started(m)
    await k.write_file("ckpt", b"old" * 1000, WRITER)
    fh = await k.open("ckpt", O_WB, WRITER)
    await k.write(fh, 0, b"half a checkpoint")
    await k.kill(WRITER)  # the kernel closes its files: flush and release
    assert history_sizes(backend, "ckpt") == [3000]
    assert await k.read_file("ckpt", READER) == b"old" * 1000
    recovered = list((m.staging_dir.parent / "recovered").iterdir())
    assert [p.read_bytes() for p in recovered] == [b"half a checkpoint"]
    assert staged_journals(m) == []


@trio_test
async def test_touch_of_a_new_file_commits_it_empty_at_its_close(backend, fs_mounts) -> None:
    k = await started(fs_mounts(backend))
    fh = await k.open("new", os.O_WRONLY | os.O_CREAT, WRITER)
    await k.close_returns(fh, WRITER)
    assert history_sizes(backend, "new") == [0]  # before the release comes
    await k.release(fh)
    assert history_sizes(backend, "new") == [0]
    assert await k.read_file("new", READER) == b""


@trio_test
async def test_opened_for_writing_and_closed_unchanged_makes_no_version(backend, fs_mounts) -> None:
    k = await started(fs_mounts(backend))
    await k.write_file("f", b"data", WRITER)
    fh = await k.open("f", os.O_RDWR, WRITER)
    await k.close(fh)
    assert history_sizes(backend, "f") == [4]


@trio_test
async def test_a_truncate_with_no_open_handle_is_a_version_of_its_own(backend, fs_mounts) -> None:
    k = await started(fs_mounts(backend))
    data = os.urandom(MiB)
    await k.write_file("t", data, WRITER)
    await k.truncate("t", 1000, OTHER)
    assert read_store(backend, "t") == data[:1000]
    assert (await k.stat("t", READER)).st_size == 1000
    await k.truncate("t", 0, OTHER)
    assert history_sizes(backend, "t") == [MiB, 1000, 0]


@trio_test
async def test_a_reader_open_before_a_truncate_keeps_its_bytes(backend, fs_mounts) -> None:
    k = await started(fs_mounts(backend))
    data = os.urandom(MiB)
    await k.write_file("t", data, WRITER)
    reader = await k.open("t", os.O_RDONLY, READER)
    await k.truncate("t", 10, OTHER)
    assert await k.read(reader) == data
    await k.close(reader)
    assert await k.read_file("t", READER) == data[:10]


@trio_test
async def test_fsync_publishes_what_the_file_holds_at_once(backend, fs_mounts) -> None:
    k = await started(fs_mounts(backend))
    fh = await k.open("f", O_WB, WRITER)
    await k.write(fh, 0, b"durable")
    await k.fsync(fh)
    assert read_store(backend, "f") == b"durable"
    await k.write(fh, 7, b" and more")
    await k.close(fh)
    assert history_sizes(backend, "f") == [7, 16]


# who sees a file being written


@trio_test
async def test_a_new_file_shows_only_to_its_writer_until_it_is_committed(
    backend, fs_mounts
) -> None:
    k = await started(fs_mounts(backend))
    fh = await k.open("new.bin", O_WB, WRITER)
    await k.write(fh, 0, b"partial")
    assert await k.exists("new.bin", WRITER)
    assert not await k.exists("new.bin", READER)
    with pytest.raises(FSError) as e:
        await k.open("new.bin", os.O_RDONLY, READER)
    assert e.value.errno == errno.ENOENT
    assert await k.listdir("", WRITER) == [".modelfs", "new.bin"]
    assert await k.listdir("", READER) == [".modelfs"]
    await k.close(fh)
    assert await k.read_file("new.bin", READER) == b"partial"
    assert await k.listdir("", READER) == [".modelfs", "new.bin"]


@trio_test
async def test_a_process_that_writes_through_the_old_inode_joins_the_session(
    backend, fs_mounts
) -> None:
    """A second process opens the path for writing while the first writes: they share it."""
    k = await started(fs_mounts(backend))
    await k.write_file("f", b"x" * 100, WRITER)
    a = await k.open("f", os.O_RDWR, WRITER)
    await k.write(a, 0, b"AAAA")
    b = await k.open("f", os.O_RDWR, OTHER)  # ESTALE, then the session's inode
    assert await k.read(b, 0, 4) == b"AAAA"
    await k.write(b, 4, b"BBBB")
    await k.close(a)
    assert history_sizes(backend, "f") == [100]  # b still writes: not yet
    assert await k.read_file("f", READER) == b"x" * 100
    await k.close(b)
    assert read_store(backend, "f") == b"AAAABBBB" + b"x" * 92
    assert history_sizes(backend, "f") == [100, 100]


@trio_test
async def test_many_writers_of_one_path_share_it_and_none_fails_at_close(
    backend, fs_mounts
) -> None:
    """Each writer does open("wb"), write, close, again and again, from processes of its own:
    no accepted write fails at close, no truncation is published on its own, nothing is
    left staged."""
    k = await started(fs_mounts(backend))
    await k.write_file("shared", b"first", WRITER)
    writers = range(PID_BASE + 10, PID_BASE + 18)
    errors: list[BaseException] = []
    saves = 0

    async def writer(n: int, pid: int) -> None:
        nonlocal saves
        try:
            for i in range(5):
                fh = await k.open("shared", O_WB, pid)
                await trio.sleep(0)
                await k.write(fh, 0, bytes([n]) * (32 << 10) * (1 + (n + i) % 3), step=16 << 10)
                await trio.sleep(0)
                await k.close(fh)
                saves += 1
        except BaseException as e:  # collected: the test fails below with each one
            errors.append(e)

    async with trio.open_nursery() as nursery:
        for n, pid in enumerate(writers):
            nursery.start_soon(writer, n, pid)
    assert errors == []
    assert saves == 40
    sizes = history_sizes(backend, "shared")
    assert 2 <= len(sizes) <= 1 + saves
    assert 0 not in sizes  # no truncation was published on its own
    final = read_store(backend, "shared")
    assert await k.read_file("shared", READER) == final
    assert staged_journals(k.mount) == []
    assert k.ops.writes.paths() == []


# crashes and failed commits


@trio_test
async def test_a_crash_before_the_last_close_keeps_the_old_version_and_the_bytes(
    backend, fs_mounts, expect_warnings
) -> None:
    expect_warnings("was being written when the last mount stopped")
    m = fs_mounts(backend)
    k = await started(m)
    await k.write_file("ckpt", b"old" * 1000, WRITER)
    fh = await k.open("ckpt", O_WB, WRITER)
    await k.write(fh, 0, b"new, half written")
    m.close()  # the daemon dies: no close, no release
    again = Mount(backend, m.staging_dir.parent)
    try:
        await again.start()
        assert read_store(backend, "ckpt") == b"old" * 1000
        assert history_sizes(backend, "ckpt") == [3000]
        recovered = list((m.staging_dir.parent / "recovered").iterdir())
        assert [p.read_bytes() for p in recovered] == [b"new, half written"]
    finally:
        again.close()


class FailingPuts(MemoryBackend):
    """A store that refuses uploads while `down` is set, as an outage would."""

    down = False

    def put_if_absent(self, key, data):
        if self.down and not key.startswith("probe/"):
            raise BackendError("the store did not answer (simulated outage)")
        return super().put_if_absent(key, data)


@trio_test
async def test_a_failed_commit_fails_the_close_and_the_next_mount_commits_it(
    fs_mounts, expect_warnings
) -> None:
    expect_warnings("committing f failed")
    backend = FailingPuts()
    from modelfs.store import Store

    Store.create(backend)
    m = fs_mounts(backend)
    k = await started(m)
    fh = await k.open("f", O_WB, WRITER)
    await k.write(fh, 0, b"precious")
    backend.down = True
    with pytest.raises(FSError) as e:
        await k.close(fh)
    assert e.value.errno == errno.EIO
    assert [j["state"] for j in staged_journals(m)] == ["closed"]
    m.close()
    backend.down = False
    again = Mount(backend, m.staging_dir.parent)
    try:
        await again.start()
        assert read_store(backend, "f") == b"precious"
        assert staged_journals(again) == []
    finally:
        again.close()


@trio_test
async def test_a_write_after_a_failed_commit_is_never_committed_by_a_later_mount_if_it_crashes(
    fs_mounts, expect_warnings
) -> None:
    expect_warnings("committing f failed", "was being written when the last mount stopped")
    backend = FailingPuts()
    from modelfs.store import Store

    Store.create(backend)
    m = fs_mounts(backend)
    k = await started(m)
    fh = await k.open("f", O_WB, WRITER)
    await k.write(fh, 0, b"closed once")
    k.dup(fh, OTHER)  # another process was handed the descriptor (SCM_RIGHTS, say)
    backend.down = True
    with pytest.raises(FSError):
        await k.close_descriptor(fh, WRITER)
    await k.write(fh, 0, b"CHANGED AFTER")  # and writes on
    assert [j["state"] for j in staged_journals(m)] == ["open"]
    m.close()  # crash
    backend.down = False
    again = Mount(backend, m.staging_dir.parent)
    try:
        await again.start()
        assert history_sizes(backend, "f") == []
    finally:
        again.close()


@trio_test
async def test_a_failed_commit_is_retried_while_mounted(fs_mounts, expect_warnings) -> None:
    expect_warnings("committing f failed")
    backend = FailingPuts()
    from modelfs.store import Store

    Store.create(backend)
    k = await started(fs_mounts(backend))
    fh = await k.open("f", O_WB, WRITER)
    await k.write(fh, 0, b"later")
    backend.down = True
    with pytest.raises(FSError):
        await k.close(fh)
    assert await k.read_file("f", WRITER) == b"later"  # still staged, shown to its writer
    backend.down = False
    await k.ops.writes.retry_failed()
    assert read_store(backend, "f") == b"later"
    assert await k.read_file("f", READER) == b"later"
    assert k.ops.writes.paths() == []


# the namespace while writing


@trio_test
async def test_a_file_unlinked_while_written_is_never_committed(backend, fs_mounts) -> None:
    k = await started(fs_mounts(backend))
    fh = await k.open("w.bin", O_WB, WRITER)
    await k.write(fh, 0, b"partial")
    await k.unlink("w.bin", WRITER)
    await k.write(fh, 7, b" more")
    await k.close(fh)
    assert history_sizes(backend, "w.bin") == []
    assert await k.listdir("", WRITER) == [".modelfs"]
    assert staged_journals(k.mount) == []


@trio_test
async def test_a_file_renamed_while_written_is_committed_under_its_new_name(
    backend, fs_mounts
) -> None:
    k = await started(fs_mounts(backend))
    await k.write_file("ckpt", b"old", WRITER)
    fh = await k.open("ckpt.tmp", O_WB, WRITER)
    await k.write(fh, 0, b"first half, ")
    await k.rename("ckpt.tmp", "ckpt", WRITER)
    assert await k.read_file("ckpt", READER) == b"old"  # not committed yet
    await k.write(fh, 12, b"second half")
    await k.close(fh)
    assert read_store(backend, "ckpt") == b"first half, second half"
    assert history_sizes(backend, "ckpt") == [3, 23]
    assert not await k.exists("ckpt.tmp", READER)


@trio_test
async def test_renaming_onto_a_file_being_written_is_refused(backend, fs_mounts) -> None:
    k = await started(fs_mounts(backend))
    await k.write_file("a", b"aaa", WRITER)
    fh = await k.open("b", O_WB, WRITER)
    await k.write(fh, 0, b"bbb")
    with pytest.raises(FSError) as e:
        await k.rename("a", "b", OTHER)
    assert e.value.errno == errno.EBUSY
    await k.close(fh)
    assert read_store(backend, "a") == b"aaa"
    assert read_store(backend, "b") == b"bbb"


@trio_test
async def test_an_attribute_set_while_writing_is_committed_with_the_data(
    backend, fs_mounts
) -> None:
    k = await started(fs_mounts(backend))
    await k.write_file("w", b"x" * 10, WRITER)
    fh = await k.open("w", os.O_RDWR, WRITER)
    # Set by path from another process: it joins the session rather than make a version.
    await k.setxattr("w", "user.metric.loss", b"0.25", OTHER)
    await k.write(fh, 0, b"y")
    assert history_sizes(backend, "w") == [10]
    await k.close(fh)
    assert history_sizes(backend, "w") == [10, 10]
    assert await k.getxattr("w", "user.metric.loss", READER) == b"0.25"
    assert read_store(backend, "w") == b"y" + b"x" * 9


@trio_test
async def test_chmod_of_a_committed_file_is_a_version_with_the_same_content(
    backend, fs_mounts
) -> None:
    k = await started(fs_mounts(backend))
    await k.write_file("s.sh", b"#!/bin/sh\n", WRITER)
    await k.chmod("s.sh", 0o755, OTHER)
    assert (await k.stat("s.sh", READER)).st_mode & 0o777 == 0o755
    assert history_sizes(backend, "s.sh") == [10, 10]


@trio_test
async def test_a_chmod_to_the_mode_a_file_has_makes_no_version(backend, fs_mounts) -> None:
    """cp -p and rsync set the mode after the copy; `modelfs put` records none (mode 0)."""
    with Store.open(backend) as store:
        store.put("f.bin", b"weights")
    k = await started(fs_mounts(backend))
    await k.chmod("f.bin", 0o644, OTHER)
    assert history_sizes(backend, "f.bin") == [7]
    await k.chmod("f.bin", 0o600, OTHER)
    await k.chmod("f.bin", 0o600, OTHER)
    assert history_sizes(backend, "f.bin") == [7, 7]


@trio_test
async def test_a_read_only_mount_refuses_every_change_with_erofs(backend, fs_mounts) -> None:
    k = await started(fs_mounts(backend))
    await k.write_file("f", b"data", WRITER)
    ro = await started(fs_mounts(backend, read_only=True))
    for attempt in (
        ro.open("f", os.O_RDWR, WRITER),
        ro.open("new", O_WB, WRITER),
        ro.truncate("f", 0, WRITER),
        ro.setxattr("f", "user.a", b"1", WRITER),
        ro.unlink("f", WRITER),
    ):
        with pytest.raises(FSError) as e:
            await attempt
        assert e.value.errno == errno.EROFS
    assert await ro.read_file("f", READER) == b"data"
    assert history_sizes(backend, "f") == [4]


@trio_test
async def test_a_writer_that_also_reads_the_file_commits_when_it_closes_the_write(
    backend, fs_mounts
) -> None:
    """open("wb"), write, open("rb") in the same process, close the writer: committed then,
    not when the reader closes."""
    k = await started(fs_mounts(backend))
    await k.write_file("f", b"A" * 1000, WRITER)
    w = await k.open("f", O_WB, WRITER)
    await k.write(w, 0, b"B" * 2000)
    r = await k.open("f", os.O_RDONLY, WRITER)
    assert await k.read(r) == b"B" * 2000  # its own writes
    await k.close_returns(w, WRITER)
    assert history_sizes(backend, "f") == [1000, 2000]  # before the release comes
    await k.release(w)
    assert await k.read_file("f", READER) == b"B" * 2000
    await k.close(r)
    assert history_sizes(backend, "f") == [1000, 2000]


@trio_test
async def test_a_child_given_the_descriptor_writes_and_its_close_commits_once(
    backend, fs_mounts
) -> None:
    """subprocess.Popen(cmd, stdout=open(p, "wb")): the parent closes its copy at once."""
    k = await started(fs_mounts(backend))
    await k.write_file("out.log", b"old", WRITER)
    fh = await k.open("out.log", O_WB, WRITER)
    k.fork(WRITER, OTHER)
    await k.close_descriptor(fh, WRITER)
    assert history_sizes(backend, "out.log") == [3]  # no empty version
    await k.exit(WRITER)  # the parent goes; the child runs on, and starts one of its own
    k.fork(OTHER, OTHER + 100)
    await k.exit(OTHER + 100)  # `sleep 1` in the child's shell: its copy closes
    assert history_sizes(backend, "out.log") == [3]
    await k.write(fh, 0, b"the child's output")
    await k.close_descriptor(fh, OTHER)
    assert history_sizes(backend, "out.log") == [3, 18]


@trio_test
async def test_a_file_written_through_a_mapping_after_its_close_is_one_version(
    backend, fs_mounts
) -> None:
    """open, ftruncate, mmap(MAP_SHARED), close(fd), write through the mapping, munmap."""
    k = await started(fs_mounts(backend))
    await k.write_file("w.bin", b"old", WRITER)
    fh = await k.open("w.bin", O_WB, WRITER)
    await k.ftruncate(fh, "w.bin", 4096, WRITER)
    k.mmap(fh, WRITER)
    await k.close_descriptor(fh, WRITER)
    assert history_sizes(backend, "w.bin") == [3]  # no version of zeros
    await k.write(fh, 0, b"mapped" * 100)  # writeback of the dirty pages
    await k.munmap(fh, WRITER)
    assert history_sizes(backend, "w.bin") == [3, 4096]
    assert read_store(backend, "w.bin")[:600] == b"mapped" * 100


@trio_test
async def test_concurrent_releases_of_one_session_end_it_once(backend, fs_mounts) -> None:
    """A writer that reads the file back through a second handle, closed together: both
    releases find the last handle gone; the staging file is closed and removed once."""
    m = fs_mounts(backend)
    k = await started(m)
    for i in range(20):
        w = await k.open("f", O_WB, WRITER)
        await k.write(w, 0, bytes([i]) * 20000)
        r = await k.open("f", os.O_RDONLY, WRITER)
        await k.close_returns(w, WRITER)
        await k.close_returns(r, WRITER)
        async with trio.open_nursery() as nursery:  # the two releases at once
            nursery.start_soon(k.release, w)
            nursery.start_soon(k.release, r)
    assert history_sizes(backend, "f") == [20000] * 20
    assert staged_journals(m) == []
    assert sorted(p.name for p in m.staging_dir.iterdir()) == ["lock"]
    assert k.ops.writes.paths() == []


@trio_test
async def test_a_writer_invited_into_a_session_that_ends_before_its_retry_still_opens(
    backend, fs_mounts
) -> None:
    """The first open of a second writer is answered ESTALE to move it onto the session's
    inode; if the session's last writer closes before the retry, the retry still works."""
    k = await started(fs_mounts(backend))
    await k.write_file("f", b"old", WRITER)
    a = await k.open("f", O_WB, WRITER)
    await k.write(a, 0, b"from a")
    version_inode = (await k.stat("f", OTHER)).st_ino
    with pytest.raises(pyfuse3.FUSEError) as e:  # b's first try, on the version's inode
        await k.ops.open(version_inode, os.O_WRONLY | os.O_TRUNC, Ctx(OTHER))
    assert e.value.errno == errno.ESTALE
    await k.close(a)  # a's close commits and ends its part before b retries
    b = await k.open("f", O_WB, OTHER, retries=0)  # the kernel's one retry
    await k.write(b, 0, b"from b")
    await k.close(b)
    assert read_store(backend, "f") == b"from b"
    assert history_sizes(backend, "f") == [3, 6, 6]
