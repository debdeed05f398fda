"""The block caches: on disk (shared, persistent, LRU-bounded) and in memory.

A cache may forget anything at any time but must never serve bytes other than
the block's own: every disk hit is re-hashed, and a damaged entry is dropped.
Blocks here are slices of MiniLM's real weights, named by their real ids.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from modelfs.cache import DiskBlockCache, MemoryBlockCache, entry_size
from modelfs.errors import PinLimitError
from modelfs.store.format import block_id


def make_blocks(
    source: Path, count: int, size: int, start: int = 1 << 20
) -> list[tuple[str, bytes]]:
    """(id, bytes) of `count` consecutive slices of a real file."""
    with open(source, "rb") as f:
        f.seek(start)
        chunks = [f.read(size) for _ in range(count)]
    return [(block_id(c), c) for c in chunks]


def segments(directory: Path) -> list[Path]:
    return sorted((directory / "segments").glob("*.seg"))


def files_in(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and p.name != "lock"]


def on_disk(directory: Path) -> int:
    """Bytes the cache's segment files take."""
    return sum(p.stat().st_size for p in segments(directory))


def holding(directory: Path, data: bytes) -> tuple[Path, int]:
    """The segment file holding these bytes, and where in it they start."""
    for path in segments(directory):
        at = path.read_bytes().find(data)
        if at >= 0:
            return path, at
    raise AssertionError("no segment holds these bytes")


def age(directory: Path, data: bytes, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(holding(directory, data)[0], (t, t))


# DiskBlockCache: hits, misses, restarts


def test_disk_cache_returns_what_was_put(tmp_path: Path, minilm_path: Path) -> None:
    cache = DiskBlockCache(tmp_path / "cache", 1 << 20)
    blocks = make_blocks(minilm_path, 5, 10_000)
    for bid, data in blocks:
        cache.put(bid, data)
    got = [cache.get(bid) for bid, _ in blocks]
    assert got == [data for _, data in blocks]
    assert all(type(g) is bytes for g in got)  # FUSE read handlers hand slices to the kernel
    assert cache.size == on_disk(tmp_path / "cache")  # what the segments take on disk
    assert cache.size >= sum(entry_size(bid, len(d)) for bid, d in blocks)
    assert cache.hits == 5


def test_disk_cache_miss_returns_none(tmp_path: Path, minilm_path: Path) -> None:
    cache = DiskBlockCache(tmp_path / "cache", 1 << 20)
    ((bid, _),) = make_blocks(minilm_path, 1, 1000)
    assert cache.get(bid) is None
    assert not cache.contains(bid)
    assert cache.misses == 1


def test_many_blocks_go_into_a_few_segment_files(tmp_path: Path, minilm_path: Path) -> None:
    directory = tmp_path / "cache"
    cache = DiskBlockCache(directory, 1 << 30, segment_bytes=100_000)
    blocks = make_blocks(minilm_path, 60, 10_000)
    for bid, data in blocks:
        cache.put(bid, data)
    assert len(files_in(directory)) == len(segments(directory)) == 6  # ten blocks each
    assert all(cache.get(bid) == data for bid, data in blocks)


def test_putting_a_block_twice_stores_it_once(tmp_path: Path, minilm_path: Path) -> None:
    cache = DiskBlockCache(tmp_path / "cache", 1 << 20)
    ((bid, data),) = make_blocks(minilm_path, 1, 10_000)
    cache.put(bid, data)
    once = on_disk(tmp_path / "cache")
    cache.put(bid, data)
    assert on_disk(tmp_path / "cache") == once == cache.size


def test_disk_cache_entries_and_size_survive_reopening(tmp_path: Path, minilm_path: Path) -> None:
    blocks = make_blocks(minilm_path, 4, 12_345)
    first = DiskBlockCache(tmp_path / "cache", 1 << 20)
    for bid, data in blocks:
        first.put(bid, data)
    first.close()
    again = DiskBlockCache(tmp_path / "cache", 1 << 20)
    assert again.size == first.size == on_disk(tmp_path / "cache")
    assert [again.get(bid) for bid, _ in blocks] == [data for _, data in blocks]


def test_entries_of_a_process_that_did_not_close_its_cache_are_found(
    tmp_path: Path, minilm_path: Path
) -> None:
    blocks = make_blocks(minilm_path, 3, 5_000)
    first = DiskBlockCache(tmp_path / "cache", 1 << 20)
    for bid, data in blocks:
        first.put(bid, data)
    # first is still open, its segment live (as in a running mount)
    again = DiskBlockCache(tmp_path / "cache", 1 << 20)
    assert [again.get(bid) for bid, _ in blocks] == [data for _, data in blocks]


def test_disk_cache_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        DiskBlockCache(tmp_path / "cache", 0)


# eviction


def test_disk_cache_stays_under_its_limit_as_blocks_are_added(
    tmp_path: Path, minilm_path: Path
) -> None:
    limit = 100_000
    cache = DiskBlockCache(tmp_path / "cache", limit)
    for bid, data in make_blocks(minilm_path, 40, 7_000):
        cache.put(bid, data)
        assert on_disk(tmp_path / "cache") == cache.size <= limit
    assert cache.evictions > 0
    assert cache.size >= limit // 2  # evicts to just under the limit, not everything


def test_disk_cache_evicts_least_recently_used_first(tmp_path: Path, minilm_path: Path) -> None:
    directory = tmp_path / "cache"
    # One block per segment here, so that each block has its own age.
    cache = DiskBlockCache(directory, 11_000, segment_bytes=1)
    (a, da), (b, db), (c, dc), (d, dd) = make_blocks(minilm_path, 4, 3_000)
    for bid, data in ((a, da), (b, db), (c, dc)):
        cache.put(bid, data)
    age(directory, da, 300)  # a is the oldest, then b, then c
    age(directory, db, 200)
    age(directory, dc, 100)
    assert cache.get(a) == da  # a use makes a the most recently used
    cache.put(d, dd)  # 4 segments of 3 274 bytes > 11 000: evict down to 9 900
    assert cache.get(b) is None
    assert cache.get(a) == da and cache.get(c) == dc and cache.get(d) == dd
    assert len(segments(directory)) == 3


def test_disk_cache_lru_order_survives_reopening(tmp_path: Path, minilm_path: Path) -> None:
    directory = tmp_path / "cache"
    (a, da), (b, db), (c, dc) = make_blocks(minilm_path, 3, 4_000)
    first = DiskBlockCache(directory, 10_000, segment_bytes=1)
    first.put(a, da)
    first.put(b, db)
    first.close()
    age(directory, da, 100)
    age(directory, db, 200)
    again = DiskBlockCache(directory, 10_000, segment_bytes=1)
    again.put(c, dc)
    assert again.get(b) is None
    assert again.get(a) == da and again.get(c) == dc


def test_a_block_bigger_than_the_whole_disk_cache_is_not_kept(
    tmp_path: Path, minilm_path: Path
) -> None:
    cache = DiskBlockCache(tmp_path / "cache", 10_000)
    ((bid, data),) = make_blocks(minilm_path, 1, 20_000)
    cache.put(bid, data)
    assert cache.size <= 10_000
    assert cache.get(bid) is None


# damage


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "zeroed", "replaced"])
def test_a_damaged_disk_cache_entry_is_dropped_not_served(
    tmp_path: Path, minilm_path: Path, expect_warnings, damage: str
) -> None:
    expect_warnings("damaged")
    directory = tmp_path / "cache"
    cache = DiskBlockCache(directory, 1 << 20)
    (bid, data), (_, other) = make_blocks(minilm_path, 2, 10_000)
    cache.put(bid, data)
    path, at = holding(directory, data)
    stored = bytearray(path.read_bytes())
    if damage == "flipped byte":
        stored[at + 5000] ^= 0x01
    elif damage == "truncated":
        del stored[-1:]
    elif damage == "zeroed":
        stored[at : at + len(data)] = bytes(len(data))
    else:
        stored[at : at + len(data)] = other
    path.write_bytes(stored)
    assert cache.get(bid) is None
    assert DiskBlockCache(directory, 1 << 20).get(bid) is None  # nor after a restart
    cache.put(bid, data)  # fetched again from the store, it is cached again
    assert cache.get(bid) == data
    assert DiskBlockCache(directory, 1 << 20).get(bid) == data


def test_a_damaged_entry_of_a_closed_segment_stays_dropped_after_restarts(
    tmp_path: Path, minilm_path: Path, expect_warnings, caplog: pytest.LogCaptureFixture
) -> None:
    expect_warnings("damaged")
    directory = tmp_path / "cache"
    cache = DiskBlockCache(directory, 1 << 20)
    blocks = make_blocks(minilm_path, 3, 10_000)
    for bid, data in blocks:
        cache.put(bid, data)
    cache.close()  # sealed: its closing record indexes it for the next start
    path, at = holding(directory, blocks[1][1])
    stored = bytearray(path.read_bytes())
    stored[at + 100] ^= 0x01
    path.write_bytes(stored)
    assert DiskBlockCache(directory, 1 << 20).get(blocks[1][0]) is None
    warned = sum("damaged" in r.getMessage() for r in caplog.records)
    again = DiskBlockCache(directory, 1 << 20)
    assert [again.get(bid) for bid, _ in blocks] == [blocks[0][1], None, blocks[2][1]]
    assert sum("damaged" in r.getMessage() for r in caplog.records) == warned == 1


def test_a_damaged_entry_leaves_its_neighbours_served(
    tmp_path: Path, minilm_path: Path, expect_warnings
) -> None:
    expect_warnings("damaged")
    directory = tmp_path / "cache"
    cache = DiskBlockCache(directory, 1 << 20)
    blocks = make_blocks(minilm_path, 5, 10_000)
    for bid, data in blocks:
        cache.put(bid, data)
    path, at = holding(directory, blocks[2][1])
    stored = bytearray(path.read_bytes())
    stored[at] ^= 0x80
    path.write_bytes(stored)
    reopened = DiskBlockCache(directory, 1 << 20)
    got = [reopened.get(bid) for bid, _ in blocks]
    assert got == [d if i != 2 else None for i, (_, d) in enumerate(blocks)]


def test_a_damaged_entry_logs_a_warning_naming_the_file(
    tmp_path: Path, minilm_path: Path, expect_warnings, caplog: pytest.LogCaptureFixture
) -> None:
    expect_warnings("damaged")
    cache = DiskBlockCache(tmp_path / "cache", 1 << 20)
    ((bid, data),) = make_blocks(minilm_path, 1, 1_000)
    cache.put(bid, data)
    path, at = holding(tmp_path / "cache", data)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(b"\0" * 1000)
    assert cache.get(bid) is None
    assert any(
        bid in r.getMessage() and str(path) in r.getMessage() and "damaged" in r.getMessage()
        for r in caplog.records
    )


def test_a_put_that_fails_part_way_leaves_nothing_behind(
    tmp_path: Path, minilm_path: Path, expect_warnings, monkeypatch: pytest.MonkeyPatch
) -> None:
    expect_warnings("cannot cache")
    directory = tmp_path / "cache"
    cache = DiskBlockCache(directory, 1 << 20)
    (bid, data), (other, other_data) = make_blocks(minilm_path, 2, 10_000)
    cache.put(other, other_data)
    before = on_disk(directory)
    # As on a full disk: the kernel writes the entry's frame, then no more.
    monkeypatch.setattr(os, "pwritev", lambda fd, parts, at: os.pwrite(fd, parts[0], at))
    cache.put(bid, data)
    assert cache.get(bid) is None
    assert on_disk(directory) == cache.size == before
    monkeypatch.undo()
    cache.put(bid, data)
    assert cache.get(bid) == data and cache.get(other) == other_data
    reopened = DiskBlockCache(directory, 1 << 20)
    assert reopened.get(bid) == data and reopened.get(other) == other_data


def test_a_file_in_the_segments_directory_that_is_not_a_segment_is_removed(
    tmp_path: Path, minilm_path: Path, expect_warnings
) -> None:
    expect_warnings("not a segment")
    directory = tmp_path / "cache"
    ((bid, data),) = make_blocks(minilm_path, 1, 5_000)
    DiskBlockCache(directory, 1 << 20).put(bid, data)
    stray = directory / "segments" / "0000000000000000-1-00000000.seg"
    stray.write_bytes(b"\0" * 4096)
    cache = DiskBlockCache(directory, 1 << 20)
    assert not stray.exists()
    assert cache.get(bid) == data and cache.size == on_disk(directory)


# the old layout


def test_a_cache_in_the_old_one_file_per_block_layout_is_emptied_and_works(
    tmp_path: Path, minilm_path: Path
) -> None:
    import xxhash

    directory = tmp_path / "cache"
    blocks = make_blocks(minilm_path, 3, 5_000)
    for bid, data in blocks:  # as the old DiskBlockCache wrote its entries
        h = xxhash.xxh3_128(bid.encode())
        h.update(data)
        entry = directory / "blocks" / bid[:2] / bid
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_bytes(h.digest() + data)
    (directory / "tmp").mkdir()
    (directory / "tmp" / f"{blocks[0][0]}.0123456789abcdef").write_bytes(b"half")
    (directory / "staging").mkdir()
    (directory / "staging" / "1.data").write_bytes(b"a mount's unsaved write")
    cache = DiskBlockCache(directory, 1 << 20)
    assert not (directory / "blocks").exists()
    assert list((directory / "tmp").iterdir()) == []
    assert (directory / "staging" / "1.data").read_bytes() == b"a mount's unsaved write"
    assert cache.size == 0
    assert all(cache.get(bid) is None for bid, _ in blocks)  # fetched again, never wrong
    for bid, data in blocks:
        cache.put(bid, data)
    assert [cache.get(bid) for bid, _ in blocks] == [d for _, d in blocks]


# pins


def test_pinned_blocks_are_never_evicted(tmp_path: Path, minilm_path: Path) -> None:
    directory = tmp_path / "cache"
    limit = 100_000
    cache = DiskBlockCache(directory, limit, segment_bytes=30_000)
    blocks = make_blocks(minilm_path, 60, 5_000)
    pinned = blocks[1:3]  # in the first segment, with unpinned neighbours
    cache.pin("two blocks", {bid: len(d) for bid, d in pinned})
    for bid, data in blocks:
        cache.put(bid, data)
        assert on_disk(directory) <= limit
    assert cache.evictions > 0
    assert cache.get(blocks[0][0]) is None  # evicted: its segment was the oldest
    assert [cache.get(bid) for bid, _ in pinned] == [d for _, d in pinned]
    assert DiskBlockCache(directory, limit).get(pinned[0][0]) == pinned[0][1]


def test_pins_written_by_one_process_protect_blocks_from_another_processes_eviction(
    tmp_path: Path, minilm_path: Path
) -> None:
    directory = tmp_path / "cache"
    (bid, data), *others = make_blocks(minilm_path, 40, 5_000)
    warmup = DiskBlockCache(directory, 100_000, segment_bytes=1)
    warmup.put(bid, data)
    warmup.pin("warmed", {bid: len(data)}, {"path": "bert/model.safetensors"})
    warmup.close()
    age(directory, data, 3600)  # the oldest by far
    mount = DiskBlockCache(directory, 100_000, segment_bytes=1)
    for other, d in others:
        mount.put(other, d)
    assert mount.evictions > 0
    assert mount.get(bid) == data
    [pin] = mount.pins()
    assert (pin.key, pin.meta, pin.blocks) == (
        "warmed", {"path": "bert/model.safetensors"}, {bid: len(data)}
    )  # fmt: skip


def test_an_unpinned_block_is_evicted_again(tmp_path: Path, minilm_path: Path) -> None:
    directory = tmp_path / "cache"
    (bid, data), *others = make_blocks(minilm_path, 40, 5_000)
    cache = DiskBlockCache(directory, 100_000, segment_bytes=1)
    cache.put(bid, data)
    cache.pin("k", {bid: len(data)})
    assert cache.unpin("k") and not cache.unpin("k")
    assert cache.pins() == [] and cache.pinned_bytes() == 0
    age(directory, data, 3600)
    for other, d in others:
        cache.put(other, d)
    assert cache.get(bid) is None


def test_pinning_more_than_the_cache_limit_is_refused_naming_the_limit(
    tmp_path: Path, minilm_path: Path
) -> None:
    cache = DiskBlockCache(tmp_path / "cache", 50_000)
    blocks = make_blocks(minilm_path, 12, 5_000)
    cache.pin("first", {bid: len(d) for bid, d in blocks[:6]})
    with pytest.raises(PinLimitError, match=r"over the cache limit of 48\.8 KiB") as e:
        cache.pin_all([
            ("second", {bid: len(d) for bid, d in blocks[6:]}, {"path": "b.bin"}),
            ("third", {blocks[0][0]: 5_000}, {}),
        ])  # fmt: skip
    assert "cannot pin b.bin and 1 more" in str(e.value)
    assert [p.key for p in cache.pins()] == ["first"]  # nothing more pinned
    cache.pin("first again", {blocks[0][0]: 5_000})  # a block pinned twice counts once
    assert cache.pinned_bytes() == sum(entry_size(b, len(d)) for b, d in blocks[:6])


def test_a_cache_opened_with_a_limit_below_its_pins_says_so(
    tmp_path: Path, minilm_path: Path, expect_warnings, caplog: pytest.LogCaptureFixture
) -> None:
    expect_warnings("pinned")
    blocks = make_blocks(minilm_path, 10, 5_000)
    DiskBlockCache(tmp_path / "cache", 1 << 20).pin("all", {b: len(d) for b, d in blocks})
    small = DiskBlockCache(tmp_path / "cache", 20_000)
    assert any("more than the cache limit of 20000" in r.getMessage() for r in caplog.records)
    for bid, data in blocks:
        small.put(bid, data)
    assert [small.get(bid) for bid, _ in blocks] == [d for _, d in blocks]  # all kept


# several processes


def test_blocks_of_a_process_killed_mid_append_are_served_and_its_torn_entry_is_not(
    tmp_path: Path, minilm_path: Path
) -> None:
    directory = tmp_path / "cache"
    blocks = make_blocks(minilm_path, 4, 5_000)
    killed = textwrap.dedent(
        """
        import os, sys
        from modelfs.cache import DiskBlockCache
        from modelfs.store.format import block_id
        directory, source = sys.argv[1:3]
        with open(source, "rb") as f:
            f.seek(1 << 20)
            blocks = [f.read(5_000) for _ in range(4)]
        cache = DiskBlockCache(directory, 1 << 20)
        for data in blocks[:3]:
            cache.put(block_id(data), data)
        real = os.pwritev
        def killed_part_way(fd, parts, at):
            real(fd, [parts[0], parts[1][:100]], at)
            os._exit(9)
        os.pwritev = killed_part_way
        cache.put(block_id(blocks[3]), blocks[3])
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", killed, str(directory), str(minilm_path)], capture_output=True
    )
    assert child.returncode == 9, child.stderr.decode()
    [segment] = segments(directory)
    assert segment.read_bytes().endswith(blocks[3][1][:100])  # the torn entry
    cache = DiskBlockCache(directory, 1 << 20)
    assert [cache.get(bid) for bid, _ in blocks] == [d for _, d in blocks[:3]] + [None]
    cache.put(*blocks[3])
    assert cache.get(blocks[3][0]) == blocks[3][1]
    assert DiskBlockCache(directory, 1 << 20).get(blocks[3][0]) == blocks[3][1]


_CACHE_WORKER = textwrap.dedent(
    """
    import sys
    from modelfs.cache import DiskBlockCache
    from modelfs.store.format import block_id

    directory, source = sys.argv[1:3]
    limit, size, count, mine_at, theirs_at = map(int, sys.argv[3:])
    with open(source, "rb") as f:
        f.seek(mine_at)
        mine = [f.read(size) for _ in range(count)]
        f.seek(theirs_at)
        theirs = [f.read(size) for _ in range(count)]
    cache = DiskBlockCache(directory, limit)
    for rounds in range(3):
        for data in mine:
            cache.put(block_id(data), data)
        for data in mine + theirs:
            got = cache.get(block_id(data))
            assert got is None or got == data, "served the wrong bytes"
    print(sum(cache.get(block_id(d)) is not None for d in theirs))
    """
)


def cache_worker(
    directory: Path,
    source: Path,
    *,
    limit: int,
    size: int,
    count: int,
    mine_at: int,
    theirs_at: int,
) -> list[str]:
    """A process that caches `count` blocks of `source` from mine_at and looks for those from theirs_at."""
    return [
        sys.executable,
        "-c",
        _CACHE_WORKER,
        str(directory),
        str(source),
        *map(str, (limit, size, count, mine_at, theirs_at)),
    ]


def test_a_second_process_hits_blocks_the_first_one_cached(
    tmp_path: Path, minilm_path: Path
) -> None:
    directory = tmp_path / "cache"
    blocks = make_blocks(minilm_path, 10, 5_000, start=1 << 20)
    cache = DiskBlockCache(directory, 1 << 20)
    for bid, data in blocks:
        cache.put(bid, data)
    # The child puts its own 10 blocks and finds all 10 of ours.
    child = subprocess.run(
        cache_worker(directory, minilm_path, limit=1 << 20, size=5_000, count=10, mine_at=2 << 20, theirs_at=1 << 20),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "10"
    assert all(
        cache.get(bid) == data for bid, data in make_blocks(minilm_path, 10, 5_000, start=2 << 20)
    )


def test_two_processes_filling_one_cache_at_once_never_serve_wrong_bytes(
    tmp_path: Path, minilm_path: Path
) -> None:
    directory = tmp_path / "cache"
    limit, size, count = 200_000, 6_000, 40  # each process alone overfills the cache
    DiskBlockCache(directory, limit)
    children = [
        subprocess.Popen(
            cache_worker(directory, minilm_path, limit=limit, size=size, count=count, mine_at=mine, theirs_at=theirs),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for mine, theirs in ((1 << 20, 3 << 20), (3 << 20, 1 << 20))
    ]  # fmt: skip
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err.decode()
    # Each process counts only its own insertions between scans (a documented
    # caveat), so the two together may overshoot by at most one process' share;
    # the next put anywhere brings the cache back under its limit.
    assert on_disk(directory) <= 2 * limit
    cache = DiskBlockCache(directory, limit)
    ((bid, data),) = make_blocks(minilm_path, 1, size, start=5 << 20)
    cache.put(bid, data)
    assert on_disk(directory) <= limit
    assert cache.get(bid) == data


# MemoryBlockCache


def test_memory_cache_returns_what_was_put(minilm_path: Path) -> None:
    cache = MemoryBlockCache(1 << 20)
    blocks = make_blocks(minilm_path, 3, 1_000)
    for bid, data in blocks:
        cache.put(bid, data)
    assert [cache.get(bid) for bid, _ in blocks] == [data for _, data in blocks]
    assert cache.get("0" * 64) is None


def test_memory_cache_stays_under_its_limit_and_evicts_least_recently_used(
    minilm_path: Path,
) -> None:
    cache = MemoryBlockCache(10_000)
    (a, da), (b, db), (c, dc), (d, dd), (e, de) = make_blocks(minilm_path, 5, 3_000)
    for bid, data in ((a, da), (b, db), (c, dc)):
        cache.put(bid, data)
    assert cache.get(a) == da  # now b is the least recently used
    cache.put(d, dd)
    assert cache.get(b) is None
    cache.put(c, dc)  # putting again counts as a use: now a is the oldest
    cache.put(e, de)
    present = {
        bid: data
        for bid, data in ((a, da), (b, db), (c, dc), (d, dd), (e, de))
        if cache.get(bid) is not None
    }
    assert set(present) == {c, d, e}
    assert sum(len(v) for v in present.values()) <= 10_000


def test_memory_cache_never_holds_more_than_its_limit(minilm_path: Path) -> None:
    limit = 50_000
    cache = MemoryBlockCache(limit)
    blocks = make_blocks(minilm_path, 60, 3_333)
    for bid, data in blocks:
        cache.put(bid, data)
        held = sum(len(d) for b, d in blocks if cache.get(b) is not None)
        assert held <= limit
    assert held > limit - 3_333  # full, not emptied


def test_a_block_bigger_than_the_memory_cache_is_not_kept_and_evicts_nothing(
    minilm_path: Path,
) -> None:
    cache = MemoryBlockCache(10_000)
    (small, ds), (big, db) = make_blocks(minilm_path, 2, 5_000)
    cache.put(small, ds)
    cache.put(big, db * 3)
    assert cache.get(big) is None
    assert cache.get(small) == ds
