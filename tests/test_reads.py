"""How reads reach the backend: few requests, in parallel, and per-file verification.

A cold read of a whole model must cost about one ranged GET per pack, not one
per block (hundreds of small tensors would otherwise be hundreds of requests),
and `verify` / `modelfs fsck PATH` must fetch from the store, not trust a cache.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import sha256
from storeobjects import StoreObjects, WrappedBackend

import modelfs
from modelfs.backends import Backend, open_backend
from modelfs.backends.base import ByteRange
from modelfs.client import Client
from modelfs.errors import CorruptionError
from modelfs.store import Store
from modelfs.store.format import pack_key

PATH = "minilm/model.safetensors"


class CountingBackend(WrappedBackend):
    """A real backend (local or S3) that counts pack reads and how many overlap in time."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.pack_gets = 0
        self._active = 0
        self.max_parallel = 0
        self.pack_delay = 0.0  # seconds each pack read takes at least (as on a network)
        self._lock = threading.Lock()

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        if not key.startswith("packs/"):
            return super().get(key, byte_range)
        with self._lock:
            self.pack_gets += 1
            self._active += 1
            self.max_parallel = max(self.max_parallel, self._active)
        try:
            time.sleep(self.pack_delay)
            return super().get(key, byte_range)
        finally:
            with self._lock:
                self._active -= 1


@pytest.fixture
def stored(store_url: str, tmp_path: Path, minilm_path: Path) -> str:
    with modelfs.open_store(store_url, cache_dir=tmp_path / "writer-cache") as c:
        c.put(PATH, minilm_path)
    return store_url


def counting_client(url: str, cache_dir: Path) -> tuple[Client, CountingBackend]:
    backend = CountingBackend(open_backend(url))
    return Client(Store.open(backend), cache_dir=cache_dir), backend


def test_cold_whole_file_read_uses_about_one_request_per_pack(
    stored: str, tmp_path: Path, minilm_path: Path
) -> None:
    client, backend = counting_client(stored, tmp_path / "cold-cache")
    with client:
        manifest = client.store.manifest(PATH)
        packs = {b.location.pack for b in manifest.blocks}
        data = client.read(PATH)
    assert sha256(data) == sha256(minilm_path)
    assert len(manifest.blocks) > 100  # MiniLM: one block per tensor
    # One request per pack, plus at most a few where reads split a pack's blocks.
    assert backend.pack_gets <= 3 * len(packs) < len(manifest.blocks) // 4


def test_blocks_of_several_packs_are_fetched_in_parallel(stored: str, tmp_path: Path) -> None:
    client, backend = counting_client(stored, tmp_path / "cold-cache")
    # A local read can end before the next one starts on a busy machine: make each take a
    # network's round trip, so that overlap shows whether they were issued in parallel.
    backend.pack_delay = 0.05
    with client:
        manifest = client.store.manifest(PATH)
        assert len({b.location.pack for b in manifest.blocks}) >= 2
        client.store.read_blocks(list(manifest.blocks))
    assert backend.max_parallel >= 2


def test_verify_fetches_from_the_store_even_when_cached(stored: str, tmp_path: Path) -> None:
    client, backend = counting_client(stored, tmp_path / "cache")
    with client:
        client.read(PATH)  # now every block is cached
        before = backend.pack_gets
        result = client.verify(PATH)
    assert result["version"] == 1 and result["blocks"] > 100
    assert backend.pack_gets > before


def test_verify_names_file_and_offset_of_a_corrupt_block(
    stored: str, tmp_path: Path, cli, store_objects: StoreObjects, expect_warnings
) -> None:
    with modelfs.open_store(stored, cache_dir=tmp_path / "c1") as client:
        block = client.store.manifest(PATH).blocks[50]
    store_objects.flip_byte(pack_key(block.location.pack), block.location.offset + 10)
    with modelfs.open_store(stored, cache_dir=tmp_path / "c2") as client:
        with pytest.raises(CorruptionError) as info:
            client.verify(PATH)
    assert info.value.path == PATH and info.value.offset == block.file_offset
    assert f"offset {block.file_offset}" in str(info.value)

    proc = cli("fsck", stored, PATH, check=False)
    assert proc.returncode == 1
    assert PATH in proc.stderr.decode() and str(block.file_offset) in proc.stderr.decode()


def test_fsck_of_one_healthy_file_succeeds(stored: str, cli) -> None:
    proc = cli("fsck", stored, PATH)
    assert "verified, no problems found" in proc.stdout.decode()
