"""A store on a replicated SeaweedFS keeps serving reads while one volume server dies.

The cluster keeps two copies of every volume ("001": two servers, one rack),
each volume server a process of its own. A mount reads the first part of a
model, the volume server that served those reads is SIGKILLed, and the mount
reads the rest; then a second client with a cold cache reads the whole file.
Every byte must come back right, and nothing may fail or log an error: the
store's S3 gateway has to fall back to the surviving copy by itself.

The test first checks its own premise, so that it cannot pass by luck: every
volume holding the bucket's data has a copy on both servers, the killed one
served reads before it died, and the store was read again after its death.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import aws_environment, sha256
from seaweed import SeaweedFS, VolumeServer, start_seaweedfs

import modelfs
from modelfs.models import encode_model

PATH = "minilm-part/model.safetensors"
# Read through the mount before the kill; below modelfs's 1 MiB threshold for readahead.
FIRST_PART = 512 << 10


@pytest.fixture(scope="module")
def cluster() -> Iterator[SeaweedFS]:
    """SeaweedFS with two separate volume servers and two copies of everything."""
    server = start_seaweedfs(replication="001", volume_servers=2)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster_store_url(
    cluster: SeaweedFS, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> tuple[str, str]:
    """(bucket, s3:// URL) of a new store on the cluster, reached through AWS_* variables
    only, as in conftest's aws_env (which is bound to the session's single server)."""
    for name, value in aws_environment(cluster, tmp_path).items():
        monkeypatch.setenv(name, value)
    bucket = cluster.new_bucket()
    url = f"s3://{bucket}/models"
    modelfs.init_store(url)
    return bucket, url


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def _bucket_volumes(volume: VolumeServer, bucket: str) -> dict[int, int]:
    """Volume id -> bytes of the bucket's volumes on one server, as that server sees them now
    (the master's /vol/status lags by a heartbeat; the server's own /status does not)."""
    status = _get_json(f"http://{volume.address}/status")
    return {v["Id"]: v["Size"] for v in status["Volumes"] if v["Collection"] == bucket}


def _gets_served(volume: VolumeServer) -> int:
    """How many HTTP GETs (chunk reads) this volume server has answered, from its metrics."""
    with urllib.request.urlopen(volume.metrics + "/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r'^SeaweedFS_volumeServer_request_seconds_count\{type="GET"\} (\d+)$', text, re.M)
    return int(m.group(1)) if m else 0


def test_mount_reads_on_while_the_volume_server_serving_it_is_killed(
    cluster: SeaweedFS,
    cluster_store_url: tuple[str, str],
    minilm_tensors,
    mount_store,
    tmp_path: Path,
) -> None:
    bucket, url = cluster_store_url
    # MiniLM without its last four layers: a real safetensors model of about 55 MiB.
    tensors = {
        k: v for k, v in minilm_tensors.items() if not re.match(r"encoder\.layer\.[2-5]\.", k)
    }
    data = encode_model(tensors)
    assert 48 << 20 <= len(data) <= 64 << 20
    with modelfs.open_store(url, cache_dir=tmp_path / "writer-cache") as c:
        put = c.put(PATH, data)

    # Premise: every volume of the bucket has a copy on both servers, and those copies hold
    # at least the bytes the store uploaded (a volume's size also counts needle headers).
    a, b = cluster.volume_servers
    on_a, on_b = _bucket_volumes(a, bucket), _bucket_volumes(b, bucket)
    assert on_a.keys() == on_b.keys(), f"volumes not on both servers: {on_a} vs {on_b}"
    for vid in on_a:
        where = _get_json(f"{cluster.master}/dir/lookup?volumeId={vid}&collection={bucket}")
        assert {loc["url"] for loc in where["locations"]} == {a.address, b.address}, where
    assert sum(on_a.values()) >= put.uploaded_bytes and sum(on_b.values()) >= put.uploaded_bytes

    m = mount_store(url)  # its cache is fresh: every block it reads comes from the store
    gets_before = {v.address: _gets_served(v) for v in cluster.volume_servers}
    started = time.monotonic()
    with open(m.path / PATH, "rb", buffering=0) as f:
        # The first read is too small for modelfs's readahead and the kernel's is off, so
        # nothing past it is fetched before the kill: the rest can only come after it.
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        first = f.read(FIRST_PART)
        fetched_before_kill = m.stats()["bytes_fetched"]
        served = {v.address: _gets_served(v) - gets_before[v.address] for v in (a, b)}
        victim, survivor = (a, b) if served[a.address] >= served[b.address] else (b, a)
        assert served[victim.address] > 0, f"no volume server served the first read: {served}"
        assert fetched_before_kill < 8 << 20, f"{fetched_before_kill} bytes read ahead of the kill"
        victim.kill()
        survivor_gets_at_kill = _gets_served(survivor)
        # The same reader reads on as any sequential reader does, with readahead on again.
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        rest = b"".join(iter(lambda: f.read(1 << 20), b""))
    read_s = time.monotonic() - started
    assert len(first) == FIRST_PART and sha256(first + rest) == sha256(data)
    stats = m.stats()
    assert stats["read_errors"] == 0
    assert stats["bytes_fetched"] >= len(data), stats  # the rest came from the store ...
    assert _gets_served(survivor) > survivor_gets_at_kill  # ... served by the surviving copy
    assert read_s < 20, f"reading {len(data)} bytes took {read_s:.1f}s across the kill"

    # A second machine with a cold cache reads the whole model from the one remaining copy.
    with modelfs.open_store(url, cache_dir=tmp_path / "cold-cache") as c:
        assert sha256(c.read(PATH)) == sha256(data)
    # The master noticed the death (so the reads above really had one copy left).
    for vid in on_a:
        where = _get_json(f"{cluster.master}/dir/lookup?volumeId={vid}&collection={bucket}")
        assert [loc["url"] for loc in where["locations"]] == [survivor.address], where
