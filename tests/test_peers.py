"""scripts/peers.py: each tool the benchmark compares with mounts, keeps and returns a file.

Each peer mounts over its own bucket of the session's SeaweedFS, writes a
file, comes back cold (unmounted, local cache dropped) and reads it back.
A missing tool fails the test with a pointer to scripts/setup.sh: a
benchmark that quietly lost a peer would compare less than it says.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from seaweed import SeaweedFS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import peers  # noqa: E402

SIZE = 3 << 20


@pytest.fixture(params=peers.PEERS, ids=lambda cls: cls.name)
def peer(
    request: pytest.FixtureRequest, seaweedfs: SeaweedFS, tmp_path: Path
) -> Iterator[peers.Peer]:
    """A set-up peer; after the test nothing of it is mounted or running, whatever happened."""
    p: peers.Peer = request.param(seaweedfs, tmp_path)
    try:
        p.setup()
        yield p
    finally:
        p.unmount()
        assert not peers.is_mounted(p.mountpoint), f"{p.mountpoint} is still mounted"
        assert p.daemon_pids() == [], f"{p.name} daemons still running"


def test_peer_reads_back_a_file_after_a_cold_remount(peer: peers.Peer) -> None:
    assert peer.version()  # also fails, naming scripts/setup.sh, when the tool is missing
    data = os.urandom(SIZE)

    mnt = peer.mount()
    pids = peer.daemon_pids()
    assert pids and all(peers.process_alive(p) for p in pids), (
        f"no {peer.name} daemon while mounted"
    )
    with pytest.raises(RuntimeError, match="unmount before"):
        peer.drop_cache()
    (mnt / "model.bin").write_bytes(data)
    peer.wait_durable(mnt / "model.bin", SIZE)
    peer.unmount()
    assert not peers.is_mounted(peer.mountpoint)
    assert not any(peers.process_alive(p) for p in pids), f"{peer.name} daemon outlived its unmount"
    peer.unmount()  # idempotent

    # Random bytes do not compress: every tool stores at least the file.
    assert peer.bucket_bytes() >= SIZE
    peer.drop_cache()
    assert list(peer.cache_dir.iterdir()) == []

    mnt = peer.mount()
    assert peer.daemon_pids()
    back = (mnt / "model.bin").read_bytes()
    assert len(back) == SIZE
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    peer.unmount()
