"""A mount moves model bytes while they are still being written, and reads them in big steps.

- A safetensors file written front to back has its blocks in the store before
  it is closed (the commit at close then uploads only the rest), and whatever
  the writer does after that (overwrite, truncate) the version committed at
  close holds exactly the bytes it closed with.
- Opening a file whose content has not changed reads its ref and nothing else.
- Sequential reads reach the daemon in 1 MiB requests from the first file
  opened after `modelfs mount` returns.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from mounting import wait_until
from storeobjects import StoreObjects

import modelfs

MiB = 1 << 20


def pack_count(store_url: str) -> int:
    with StoreObjects(store_url) as objects:
        return len(objects.keys("packs/"))


def stored_bytes(store_url: str, path: str, tmp_path: Path) -> bytes:
    """path's current content as another program reads it (its own client, empty cache)."""
    with modelfs.open_store(store_url, cache_dir=tmp_path / f"reader-{os.urandom(4).hex()}") as c:
        return c.read(path)


def write_front_to_back_until_uploaded(f, data: bytes, store_url: str) -> None:
    """Write data to the open file f in 1 MiB writes, then wait until blocks reach the store."""
    for i in range(0, len(data), MiB):
        f.write(data[i : i + MiB])
    f.flush()
    assert wait_until(lambda: pack_count(store_url) > 0, timeout=60), (
        "no block reached the store while the file was open"
    )


@pytest.mark.parametrize("store_url", ["file", "s3"], indirect=True)
def test_a_model_written_front_to_back_is_uploaded_before_close(
    store_url, mount_store, minilm_bytes, tmp_path
):
    m = mount_store(store_url)
    with open(m.path / "model.safetensors", "wb", buffering=0) as f:
        write_front_to_back_until_uploaded(f, minilm_bytes, store_url)
        with modelfs.open_store(store_url, cache_dir=tmp_path / "other") as other:
            assert other.list() == []  # blocks only: no version until the close
    assert stored_bytes(store_url, "model.safetensors", tmp_path) == minilm_bytes


@pytest.mark.parametrize("store_url", ["file"], indirect=True)
def test_overwriting_bytes_already_uploaded_commits_the_bytes_the_file_closed_with(
    store_url, mount_store, minilm_bytes, tmp_path
):
    m = mount_store(store_url)
    changed = bytearray(minilm_bytes)
    changed[10 * MiB : 10 * MiB + 4096] = os.urandom(4096)  # inside the first pack's tensors
    with open(m.path / "model.safetensors", "wb", buffering=0) as f:
        write_front_to_back_until_uploaded(f, minilm_bytes, store_url)
        f.seek(10 * MiB)
        f.write(changed[10 * MiB : 10 * MiB + 4096])
    assert stored_bytes(store_url, "model.safetensors", tmp_path) == bytes(changed)
    with modelfs.open_store(store_url, cache_dir=tmp_path / "fsck") as c:
        assert c.fsck().ok


@pytest.mark.parametrize("store_url", ["file"], indirect=True)
def test_truncating_after_an_early_upload_commits_the_truncated_file(
    store_url, mount_store, minilm_bytes, tmp_path
):
    m = mount_store(store_url)
    with open(m.path / "model.safetensors", "wb", buffering=0) as f:
        write_front_to_back_until_uploaded(f, minilm_bytes, store_url)
        f.truncate(5 * MiB)
        f.seek(0, os.SEEK_END)
        f.write(b"tail")
    expected = minilm_bytes[: 5 * MiB] + b"tail"
    assert stored_bytes(store_url, "model.safetensors", tmp_path) == expected


@pytest.mark.parametrize("store_url", ["file"], indirect=True)
def test_a_model_copied_twice_in_one_open_commits_the_second_copy(
    store_url, mount_store, minilm_bytes, tmp_path
):
    """O_TRUNC again while the first copy's blocks are uploading: only the last bytes count."""
    m = mount_store(store_url)
    second = minilm_bytes[::-1]
    with open(m.path / "model.safetensors", "wb", buffering=0) as f:
        write_front_to_back_until_uploaded(f, minilm_bytes, store_url)
        with open(m.path / "model.safetensors", "wb", buffering=0) as g:
            g.write(second)
    assert stored_bytes(store_url, "model.safetensors", tmp_path) == second


@pytest.mark.parametrize("store_url", ["s3"], indirect=True)  # the S3 backend counts requests
def test_reopening_an_unchanged_file_reads_only_its_ref(
    store_url, mount_store, minilm_path, tmp_path
):
    with modelfs.open_store(store_url, cache_dir=tmp_path / "writer") as c:
        c.put("model.safetensors", minilm_path)
    m = mount_store(store_url)
    with open(m.path / "model.safetensors", "rb") as f:
        head = f.read(8)
    before = m.stats()["store_requests"]
    with open(m.path / "model.safetensors", "rb") as f:
        assert f.read(8) == head
    after = m.stats()["store_requests"]
    # The open reads the ref (close-to-open); the manifest is immutable and already here.
    assert after.get("GET", 0) - before.get("GET", 0) == 1
    assert {k: v for k, v in after.items() if k != "GET"} == {
        k: v for k, v in before.items() if k != "GET"
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="raising the kernel's readahead needs root")
def test_a_file_opened_right_after_mount_is_read_in_1_mib_requests(
    local_store_url, mount_store, tmp_path
):
    data = os.urandom(32 * MiB)
    src = tmp_path / "blob"
    src.write_bytes(data)
    with modelfs.open_store(local_store_url, cache_dir=tmp_path / "writer") as c:
        c.put("blob", src)
    m = mount_store(local_store_url)
    with open(m.path / "blob", "rb", buffering=0) as f:  # opened as soon as mount returned
        got = hashlib.sha256()
        while chunk := f.read(4 * MiB):
            got.update(chunk)
    assert got.digest() == hashlib.sha256(data).digest()
    # 32 requests of 1 MiB (and a few more where readahead overlaps), not 256 of 128 KiB.
    assert m.stats()["reads"] <= 48
    shutil.rmtree(tmp_path / "writer", ignore_errors=True)
