"""The store, the CLI and the mount on an s3:// store (a real SeaweedFS), end to end.

The same behaviour as on a local store, reached through the S3 API: MiniLM
round trips byte-exact, a fine-tuned copy deduplicates, a mount reads and
writes, and two mounts with separate caches (two machines) see each other's
files at the next open.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from conftest import sha256

import modelfs
from modelfs.models import encode_model

PATH = "minilm/model.safetensors"


def test_put_read_dedup_and_fsck_on_s3(
    s3_store_url: str, tmp_path: Path, minilm_path: Path, minilm_tensors
) -> None:
    with modelfs.open_store(s3_store_url, cache_dir=tmp_path / "cache") as c:
        first = c.put(PATH, minilm_path)
        assert sha256(c.read(PATH)) == sha256(minilm_path)
        tuned = dict(minilm_tensors)
        rng = np.random.default_rng(0)
        for name in [n for n in tuned if n.startswith("encoder.layer.5.")][:4]:
            tuned[name] = tuned[name] + np.float32(1e-3) * rng.standard_normal(
                tuned[name].shape, np.float32
            )
        second = c.put("minilm-tuned/model.safetensors", encode_model(tuned))
        assert 0 < second.uploaded_bytes < first.uploaded_bytes / 5
        assert c.fsck().ok
    with modelfs.open_store(s3_store_url, cache_dir=tmp_path / "cold") as c:  # a second machine
        assert sha256(c.read(PATH, 1_000_000, 4_000_000)) == sha256(
            minilm_path.read_bytes()[1_000_000:5_000_000]
        )


def test_cli_on_s3(s3_store_url: str, cli, minilm_path: Path, tmp_path: Path) -> None:
    cli("put", s3_store_url, minilm_path, PATH)
    assert PATH in cli("ls", s3_store_url).stdout.decode()
    cli("get", s3_store_url, PATH, tmp_path / "back.safetensors")
    assert sha256(tmp_path / "back.safetensors") == sha256(minilm_path)
    assert "no problems found" in cli("fsck", s3_store_url).stdout.decode()


def test_mounts_on_one_bucket_write_and_read_each_others_files(
    s3_store_url: str, mount_store, minilm_path: Path
) -> None:
    a = mount_store(s3_store_url, name="a")
    b = mount_store(s3_store_url, "--refresh-interval", "30", name="b")
    (a.path / "minilm").mkdir()
    shutil.copyfile(minilm_path, a.path / PATH)
    assert sha256(b.path / PATH) == sha256(minilm_path)  # closed on a, complete on b
    from safetensors import safe_open

    with safe_open(str(b.path / PATH), "np") as f:
        assert f.get_tensor("encoder.layer.2.output.dense.weight").shape == (384, 1536)
    assert a.stats()["store_requests"]["PUT"] > 0  # S3 requests, counted per method
    assert b.stats()["store_requests"]["GET"] > 0
