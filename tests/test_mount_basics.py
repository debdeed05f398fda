"""A mounted store, used with ordinary file operations (cp, open, ls)."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import sha256

import modelfs


def test_cp_in_and_read_back_byte_exact(
    store_url: str, mount_store, minilm_path: Path, tmp_path: Path
) -> None:
    m = mount_store(store_url)
    shutil.copyfile(minilm_path, m.path / "model.safetensors")
    assert (m.path / "model.safetensors").stat().st_size == minilm_path.stat().st_size
    assert sha256(m.path / "model.safetensors") == sha256(minilm_path)
    # Committed on close: the store has it, read without any mount.
    with modelfs.open_store(store_url, cache_dir=tmp_path / "other") as c:
        assert sha256(c.read("model.safetensors")) == sha256(minilm_path)
    assert sorted(p.name for p in m.path.iterdir()) == [".modelfs", "model.safetensors"]
