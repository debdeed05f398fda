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

from modelfs.cache import ENTRY_OVERHEAD, DiskBlockCache, MemoryBlockCache
from modelfs.store.format import block_id


def make_blocks(
    source: Path, count: int, size: int, start: int = 1 << 20
) -> list[tuple[str, bytes]]:
    """(id, bytes) of `count` consecutive slices of a real file."""
    with open(source, "rb") as f:
        f.seek(start)
        chunks = [f.read(size) for _ in range(count)]
    return [(block_id(c), c) for c in chunks]


def on_disk(directory: Path) -> dict[str, int]:
    """id -> size of every entry a cache directory holds."""
    return {p.name: p.stat().st_size for p in (directory / "blocks").rglob("*") if p.is_file()}


def entry_path(directory: Path, bid: str) -> Path:
    (path,) = (directory / "blocks").rglob(bid)
    return path


def age(directory: Path, bid: str, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(entry_path(directory, bid), (t, t))


# DiskBlockCache


def test_disk_cache_returns_what_was_put(tmp_path: Path, minilm_path: Path) -> None:
    cache = DiskBlockCache(tmp_path / "cache", 1 << 20)
    blocks = make_blocks(minilm_path, 5, 10_000)
    for bid, data in blocks:
        cache.put(bid, data)
    got = [cache.get(bid) for bid, _ in blocks]
    assert got == [data for _, data in blocks]
    assert all(type(g) is bytes for g in got)  # FUSE read handlers hand slices to the kernel
    assert cache.size == 5 * (10_000 + ENTRY_OVERHEAD)  # what the entries take on disk
    assert cache.hits == 5


def test_disk_cache_miss_returns_none(tmp_path: Path, minilm_path: Path) -> None:
    cache = DiskBlockCache(tmp_path / "cache", 1 << 20)
    ((bid, _),) = make_blocks(minilm_path, 1, 1000)
    assert cache.get(bid) is None
    assert cache.misses == 1


def test_putting_a_block_twice_stores_it_once(tmp_path: Path, minilm_path: Path) -> None:
    cache = DiskBlockCache(tmp_path / "cache", 1 << 20)
    ((bid, data),) = make_blocks(minilm_path, 1, 10_000)
    cache.put(bid, data)
    cache.put(bid, data)
    assert cache.size == 10_000 + ENTRY_OVERHEAD
    assert on_disk(tmp_path / "cache") == {bid: 10_000 + ENTRY_OVERHEAD}


def test_disk_cache_entries_and_size_survive_reopening(tmp_path: Path, minilm_path: Path) -> None:
    blocks = make_blocks(minilm_path, 4, 12_345)
    first = DiskBlockCache(tmp_path / "cache", 1 << 20)
    for bid, data in blocks:
        first.put(bid, data)
    again = DiskBlockCache(tmp_path / "cache", 1 << 20)
    assert again.size == 4 * (12_345 + ENTRY_OVERHEAD)
    assert [again.get(bid) for bid, _ in blocks] == [data for _, data in blocks]


def test_disk_cache_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        DiskBlockCache(tmp_path / "cache", 0)


def test_disk_cache_stays_under_its_limit_as_blocks_are_added(
    tmp_path: Path, minilm_path: Path
) -> None:
    limit = 100_000
    cache = DiskBlockCache(tmp_path / "cache", limit)
    for bid, data in make_blocks(minilm_path, 40, 7_000):
        cache.put(bid, data)
        assert cache.size <= limit
        assert sum(on_disk(tmp_path / "cache").values()) == cache.size
    assert cache.evictions > 0
    assert cache.size >= limit // 2  # evicts to just under the limit, not everything


def test_disk_cache_evicts_least_recently_used_first(tmp_path: Path, minilm_path: Path) -> None:
    directory = tmp_path / "cache"
    cache = DiskBlockCache(directory, 10_100)
    (a, da), (b, db), (c, dc), (d, dd) = make_blocks(minilm_path, 4, 3_000)
    for bid, data in ((a, da), (b, db), (c, dc)):
        cache.put(bid, data)
    age(directory, a, 300)  # a is the oldest, then b, then c
    age(directory, b, 200)
    age(directory, c, 100)
    assert cache.get(a) == da  # a use makes a the most recently used
    cache.put(d, dd)  # 4 x 3 016 bytes on disk > 10 100: evict down to 9 090
    assert set(on_disk(directory)) == {a, c, d}
    assert cache.get(b) is None
    assert cache.get(a) == da and cache.get(c) == dc and cache.get(d) == dd


def test_disk_cache_lru_order_survives_reopening(tmp_path: Path, minilm_path: Path) -> None:
    directory = tmp_path / "cache"
    (a, da), (b, db), (c, dc) = make_blocks(minilm_path, 3, 4_000)
    first = DiskBlockCache(directory, 10_000)
    first.put(a, da)
    first.put(b, db)
    age(directory, a, 100)
    age(directory, b, 200)
    again = DiskBlockCache(directory, 10_000)
    again.put(c, dc)
    assert set(on_disk(directory)) == {a, c}


def test_a_block_bigger_than_the_whole_disk_cache_is_not_kept(
    tmp_path: Path, minilm_path: Path
) -> None:
    cache = DiskBlockCache(tmp_path / "cache", 10_000)
    ((bid, data),) = make_blocks(minilm_path, 1, 20_000)
    cache.put(bid, data)
    assert cache.size <= 10_000
    assert cache.get(bid) is None


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "emptied", "replaced"])
def test_a_damaged_disk_cache_entry_is_dropped_not_served(
    tmp_path: Path, minilm_path: Path, expect_warnings, damage: str
) -> None:
    expect_warnings("damaged")
    directory = tmp_path / "cache"
    cache = DiskBlockCache(directory, 1 << 20)
    (bid, data), (_, other) = make_blocks(minilm_path, 2, 10_000)
    cache.put(bid, data)
    path = entry_path(directory, bid)
    stored = bytearray(path.read_bytes())
    if damage == "flipped byte":
        stored[5000] ^= 0x01
        path.write_bytes(stored)
    elif damage == "truncated":
        path.write_bytes(stored[:-1])
    elif damage == "emptied":
        path.write_bytes(b"")
    else:
        path.write_bytes(other)
    assert cache.get(bid) is None
    assert not path.exists()
    assert DiskBlockCache(directory, 1 << 20).size == 0
    cache.put(bid, data)  # fetched again from the store, it is cached again
    assert cache.get(bid) == data


def test_a_dropped_damaged_entry_no_longer_counts_toward_the_cache_size(
    tmp_path: Path, minilm_path: Path, expect_warnings
) -> None:
    expect_warnings("damaged")
    directory = tmp_path / "cache"
    cache = DiskBlockCache(directory, 1 << 20)
    (bid, data), (kept, kept_data) = make_blocks(minilm_path, 2, 10_000)
    cache.put(bid, data)
    cache.put(kept, kept_data)
    path = entry_path(directory, bid)
    damaged = bytearray(path.read_bytes())
    damaged[0] ^= 0x80
    path.write_bytes(damaged)
    assert cache.get(bid) is None
    assert cache.size == 10_000 + ENTRY_OVERHEAD == sum(on_disk(directory).values())


def test_a_damaged_entry_logs_a_warning_naming_the_file(
    tmp_path: Path, minilm_path: Path, expect_warnings, caplog: pytest.LogCaptureFixture
) -> None:
    expect_warnings("damaged")
    cache = DiskBlockCache(tmp_path / "cache", 1 << 20)
    ((bid, data),) = make_blocks(minilm_path, 1, 1_000)
    cache.put(bid, data)
    entry_path(tmp_path / "cache", bid).write_bytes(b"\0" * 1000)
    assert cache.get(bid) is None
    assert any(bid in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)


def test_a_put_that_fails_part_way_leaves_nothing_behind(
    tmp_path: Path, minilm_path: Path, expect_warnings, monkeypatch: pytest.MonkeyPatch
) -> None:
    expect_warnings("cannot cache")
    directory = tmp_path / "cache"
    cache = DiskBlockCache(directory, 1 << 20)
    ((bid, data),) = make_blocks(minilm_path, 1, 10_000)
    # As on a full disk: the kernel writes the checksum, then no more.
    monkeypatch.setattr(os, "writev", lambda fd, parts: os.write(fd, parts[0]))
    cache.put(bid, data)
    assert cache.get(bid) is None
    assert cache.size == 0
    assert [p for p in directory.rglob("*") if p.is_file() and p.name != "lock"] == []
    monkeypatch.undo()
    cache.put(bid, data)
    assert cache.get(bid) == data


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
    assert sum(on_disk(directory).values()) <= 2 * limit
    cache = DiskBlockCache(directory, limit)
    ((bid, data),) = make_blocks(minilm_path, 1, size, start=5 << 20)
    cache.put(bid, data)
    assert sum(on_disk(directory).values()) <= limit
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
