"""Reads, inodes and the view, without FUSE: Operations driven as the kernel would.

The readahead policy is a plain object, tested alone; the rest plays
processes on mounts of an in-memory store (tests/fsdriver.py).
"""

from __future__ import annotations

import errno
import json
import os

import pytest
from fsdriver import PID_BASE, FSError, new_store, started, trio_test

from modelfs.fs.reads import MAX_READAHEAD, MIN_READAHEAD, SEQUENTIAL_THRESHOLD, Readahead
from modelfs.store import Store

WRITER, READER = PID_BASE + 1, PID_BASE + 2
MiB = 1 << 20


# the readahead policy


def test_a_sequential_reader_gets_a_window_that_doubles_up_to_the_maximum() -> None:
    r = Readahead()
    windows = []
    for offset in range(0, 200 * MiB, MiB):
        ahead = r.on_read(offset, MiB)
        r.on_served(offset, MiB)
        if ahead is not None:
            start, length = ahead
            assert start >= offset + MiB  # never what this read fetches itself
            windows.append(start + length - (offset + MiB))
    assert windows[0] == MIN_READAHEAD
    assert windows == sorted(windows)
    assert max(windows) == MAX_READAHEAD
    # Topped up in big steps, not one request per read.
    assert len(windows) < 200 // 4


def test_mmap_faults_and_random_reads_fetch_nothing_extra() -> None:
    r = Readahead()
    for offset in (90 * MiB, 3 * MiB, 50 * MiB, 7 * MiB, 120 * MiB, 60 * MiB):
        assert r.on_read(offset, MiB) is None
        r.on_served(offset, MiB)


def test_the_kernels_out_of_order_readahead_still_counts_as_sequential() -> None:
    r = Readahead()
    started = False
    # The kernel sends 1 MiB requests of a sequential read in a slightly shuffled order.
    for block in [0, 2, 1, 3, 5, 4, 6, 7]:
        ahead = r.on_read(block * MiB, MiB)
        r.on_served(block * MiB, MiB)
        started = started or ahead is not None
    assert started
    assert SEQUENTIAL_THRESHOLD <= 8 * MiB


def test_a_short_read_at_the_end_of_the_file_ends_the_run_where_the_file_ends() -> None:
    r = Readahead()
    r.on_read(0, MiB)
    r.on_served(0, 1000)
    assert r.last_end == 1000


# pinned readers and inodes


@trio_test
async def test_a_reader_keeps_its_version_size_and_inode_while_the_file_is_replaced(
    fs_mounts,
) -> None:
    backend = new_store()
    k = await started(fs_mounts(backend))
    old, new = os.urandom(3 * MiB), os.urandom(MiB)
    await k.write_file("m.bin", old, WRITER)
    reader = await k.open("m.bin", os.O_RDONLY, READER)
    old_inode = k.inode_of[reader]
    await k.write_file("m.bin", new, WRITER)
    # The open handle reads the old bytes; its inode still says the old size.
    assert await k.read(reader) == old
    assert (await k.ops.getattr(old_inode, None)).st_size == len(old)
    # The path now has another inode, with the new size.
    attr = await k.stat("m.bin", READER)
    assert attr.st_ino != old_inode and attr.st_size == len(new)
    await k.close(reader)
    assert await k.read_file("m.bin", READER) == new


@trio_test
async def test_an_unlinked_file_open_for_reading_keeps_reading(fs_mounts) -> None:
    backend = new_store()
    k = await started(fs_mounts(backend))
    data = os.urandom(MiB)
    await k.write_file("r.bin", data, WRITER)
    reader = await k.open("r.bin", os.O_RDONLY, READER)
    await k.unlink("r.bin", WRITER)
    assert not await k.exists("r.bin", READER)
    assert await k.read(reader) == data
    await k.close(reader)


@trio_test
async def test_an_open_sees_what_another_mount_committed_at_once(fs_mounts) -> None:
    backend = new_store()
    k = await started(fs_mounts(backend))
    await k.write_file("ckpt", b"v1", WRITER)
    assert await k.read_file("ckpt", READER) == b"v1"
    other = Store.open(backend)
    other.put("ckpt", b"version two")
    other.close()
    # Close-to-open: the open reads the ref afresh, and the size comes with it.
    fh = await k.open("ckpt", os.O_RDONLY, READER)
    assert await k.read(fh) == b"version two"
    await k.close(fh)


@trio_test
async def test_the_stats_file_reads_as_json_and_refuses_writes(fs_mounts) -> None:
    backend = new_store()
    k = await started(fs_mounts(backend))
    await k.write_file("a", b"x" * 1000, WRITER)
    assert await k.listdir(".modelfs", READER) == ["stats"]
    stats = json.loads(await k.read_file(".modelfs/stats", READER))
    assert stats["commits"] == 1 and stats["bytes_written"] == 1000
    assert stats["files_being_written"] == 0
    with pytest.raises(FSError) as e:
        await k.open(".modelfs/stats", os.O_WRONLY, READER)
    assert e.value.errno == errno.EACCES
    with pytest.raises(FSError) as e:
        await k.unlink(".modelfs/stats", READER)
    assert e.value.errno == errno.EPERM
