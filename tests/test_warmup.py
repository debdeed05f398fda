"""Warming the disk cache ahead of use: from the API, the CLI and inside a real mount.

A warmed file then reads without a request to the store; pinned files stay
cached however much else passes through the cache; a pin that would not fit
is refused before anything is fetched.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import sha256

import modelfs
from modelfs.errors import CorruptionError, NotFoundError, PinLimitError

SIZE = 6 << 20


@pytest.fixture
def weights(minilm_path: Path) -> bytes:
    """6 MiB of real weights: a handful of blocks."""
    with open(minilm_path, "rb") as f:
        f.seek(8 << 20)
        return f.read(SIZE)


@pytest.fixture
def stored(local_store_url: str, weights: bytes, tmp_path: Path) -> str:
    """A store holding the weights as a/w.bin, a/copy.bin (the same blocks) and b/other.bin."""
    with modelfs.open_store(local_store_url, use_disk_cache=False) as c:
        c.put("a/w.bin", weights)
        c.put("a/copy.bin", weights)
        c.put("b/other.bin", weights[::-1])
    return local_store_url


def fetched_reading(url: str, cache_dir: Path, path: str, expect: bytes) -> int:
    """Blocks a fresh client with this cache fetches from the store to read a file."""
    with modelfs.open_store(url, cache_dir=cache_dir) as c:
        assert c.read(path) == expect
        return c.reader.stats.blocks_fetched


def test_a_warmed_file_reads_without_fetching(stored: str, weights: bytes, tmp_path: Path) -> None:
    with modelfs.open_store(stored, cache_dir=tmp_path / "cache") as c:
        s = c.warmup("a/w.bin")
    assert (s.files, s.bytes, s.blocks_cached, s.pinned) == (1, SIZE, 0, 0)
    assert s.blocks_fetched == s.blocks > 1 and s.bytes_fetched == SIZE
    assert fetched_reading(stored, tmp_path / "cache", "a/w.bin", weights) == 0
    with modelfs.open_store(stored, cache_dir=tmp_path / "cache") as c:
        again = c.warmup(["a/w.bin"])
    assert (again.blocks_cached, again.blocks_fetched, again.bytes_fetched) == (s.blocks, 0, 0)


def test_warming_a_directory_fetches_shared_blocks_once(
    stored: str, weights: bytes, tmp_path: Path
) -> None:
    done: list[int] = []
    planned: list[int] = []
    with modelfs.open_store(stored, cache_dir=tmp_path / "cache") as c:
        s = c.warmup(["a"], progress=done.append, on_plan=planned.append)
    assert (s.files, s.bytes) == (2, 2 * SIZE)
    assert s.bytes_fetched == SIZE  # the copy's blocks are the same blocks
    assert planned == [SIZE] and sum(done) == SIZE
    assert s.mb_per_s > 0 and s.to_json()["blocks_fetched"] == s.blocks
    assert fetched_reading(stored, tmp_path / "cache", "a/copy.bin", weights) == 0
    assert fetched_reading(stored, tmp_path / "cache", "b/other.bin", weights[::-1]) > 0


def test_warming_a_missing_path_fails_naming_it(stored: str, tmp_path: Path) -> None:
    with modelfs.open_store(stored, cache_dir=tmp_path / "cache") as c:
        with pytest.raises(NotFoundError, match="no/such.bin"):
            c.warmup(["a/w.bin", "no/such.bin"])


def test_pinned_files_stay_cached_while_others_pass_through(
    stored: str, weights: bytes, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    limit = 3 * SIZE  # room for the pinned file and a little more
    with modelfs.open_store(stored, cache_dir=cache, cache_size=limit) as c:
        c.warmup("a/w.bin", pin=True)
        [pin] = c.pins()
        assert (pin.meta["path"], pin.meta["version"]) == ("a/w.bin", 1)
    with modelfs.open_store(stored, cache_dir=cache, cache_size=limit) as c:
        for i in range(4):  # 24 MiB more through a 18 MiB cache
            c.put(f"churn/{i}.bin", random.Random(i).randbytes(SIZE))
            c.read(f"churn/{i}.bin")
        disk = c.reader.disk_cache
    assert disk is not None and disk.evictions > 0 and disk.size <= limit
    assert fetched_reading(stored, cache, "a/w.bin", weights) == 0
    with modelfs.open_store(stored, cache_dir=cache, cache_size=limit) as c:
        assert [p.meta["path"] for p in c.unpin("a")] == ["a/w.bin"]
        assert c.pins() == []


def test_a_pin_over_the_cache_limit_is_refused_before_fetching(stored: str, tmp_path: Path) -> None:
    with modelfs.open_store(stored, cache_dir=tmp_path / "cache", cache_size=SIZE + SIZE // 2) as c:
        with pytest.raises(PinLimitError, match="over the cache limit of 9.0 MiB"):
            c.warmup(["a/w.bin", "b/other.bin"], pin=True)
        assert c.pins() == []
        assert c.reader.disk_cache is not None and c.reader.disk_cache.size < 1 << 20
        assert c.warmup("a/w.bin", pin=True).pinned == 1  # one fits


def test_a_warmup_that_cannot_read_a_block_fails_naming_the_file(
    stored: str, tmp_path: Path
) -> None:
    for pack in Path(stored, "packs").rglob("*"):
        if pack.is_file():
            pack.unlink()
    with modelfs.open_store(stored, cache_dir=tmp_path / "cache") as c:
        with pytest.raises(CorruptionError, match=r"a/w\.bin at offset"):
            c.warmup("a/w.bin")


# the command line


def test_warmup_command_fills_the_cache_of_a_store_and_pins(
    stored: str, weights: bytes, tmp_path: Path, cli
) -> None:
    cache = tmp_path / "cache"
    out = cli("warmup", "--store", stored, "--cache-dir", cache, "a", "--pin", "--json")
    summary = json.loads(out.stdout)
    assert summary["files"] == 2 and summary["bytes_fetched"] == SIZE
    assert summary["pinned"] == 2 and summary["seconds"] > 0
    assert fetched_reading(stored, cache, "a/w.bin", weights) == 0
    listed = json.loads(
        cli("warmup", "--store", stored, "--cache-dir", cache, "--list", "--json").stdout
    )
    assert sorted(r["path"] for r in listed) == ["a/copy.bin", "a/w.bin"]
    assert all(r["cached_blocks"] == r["blocks"] for r in listed)
    proc = cli("warmup", "--store", stored, "--cache-dir", cache, "a/w.bin", "b", "--progress")
    assert "warmed 2 files" in proc.stdout.decode() and "fetched (6.0 MiB)" in proc.stdout.decode()
    assert b"warmup: 6.0 MiB / 6.0 MiB (100%)" in proc.stderr  # the bar, as on a terminal
    text = cli("warmup", "--store", stored, "--cache-dir", cache, "--unpin", "a").stdout.decode()
    assert "unpinned a/copy.bin@1" in text and "unpinned a/w.bin@1" in text
    assert (
        cli("warmup", "--store", stored, "--cache-dir", cache, "--list", "--json").stdout.strip()
        == b"[]"
    )


def test_warmup_command_refuses_a_pin_over_the_limit_naming_it(
    stored: str, tmp_path: Path, cli
) -> None:
    proc = cli(
        "warmup", "--store", stored, "--cache-dir", tmp_path / "c", "--cache-size", "4M", "a",
        "--pin", check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert b"over the cache limit of 4.0 MiB" in proc.stderr


def test_warmup_of_a_path_outside_any_mount_says_to_give_a_store(tmp_path: Path, cli) -> None:
    proc = cli("warmup", tmp_path, check=False)
    assert proc.returncode == 1
    assert b"not in a modelfs mount" in proc.stderr and b"--store" in proc.stderr


# a real mount


def test_a_file_warmed_in_a_mount_reads_through_it_without_fetching(
    stored: str, weights: bytes, mount_store, cli
) -> None:
    m = mount_store(stored, "--read-only")
    assert m.stats()["disk_cache_dir"] == str(m.cache_dir)
    out = cli("warmup", m.path / "a" / "w.bin", "--pin", "--json")
    assert json.loads(out.stdout)["bytes_fetched"] == SIZE
    assert sha256(m.path / "a" / "w.bin") == sha256(weights)
    stats = m.stats()
    assert stats["bytes_fetched"] == 0 and stats["blocks_from_disk_cache"] > 0
    listed = json.loads(cli("warmup", "--list", "--json", m.path).stdout)
    assert [r["path"] for r in listed] == ["a/w.bin"]
    # The whole mount: only what was not warmed yet is fetched.
    again = json.loads(cli("warmup", m.path, "--json").stdout)
    assert again["files"] == 3 and again["bytes_fetched"] == SIZE  # b/other.bin
