"""What only S3Backend promises, checked against a real SeaweedFS.

The conformance suite in test_backends.py runs on S3 too (the `backend`
fixture); here are the S3-only parts: the server's conditional writes under
real concurrency, multipart uploads, store URLs and configuration from the
AWS environment, and how refused credentials, a missing bucket and an
unreachable endpoint are reported.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from seaweed import REGION, SeaweedFS

import modelfs
from modelfs.backends import ByteRange, RetryingBackend, open_backend
from modelfs.backends.s3 import S3Backend, parse_s3_url
from modelfs.errors import (
    AlreadyExistsError,
    BackendError,
    ConflictError,
    NotFoundError,
    StoreNotFoundError,
)

MiB = 1 << 20


def _options(server: SeaweedFS, **overrides) -> dict:
    return {
        "endpoint_url": server.endpoint,
        "region_name": REGION,
        "aws_access_key_id": server.access_key,
        "aws_secret_access_key": server.secret_key,
        **overrides,
    }


def _race(n: int, attempt) -> list[object]:
    """Run attempt(i) in n threads released together; each result or the exception it raised."""
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = attempt(i)
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_put_if_match_with_the_same_etag_has_exactly_one_winner(
    s3_backend: S3Backend,
) -> None:
    # SeaweedFS makes a losing writer wait for its lock (up to a second), so few rounds.
    for round_ in range(5):
        etag = s3_backend.put("ref", b"base")
        results = _race(
            8, lambda i, etag=etag: s3_backend.put_if_match("ref", f"writer {i}".encode(), etag)
        )
        winners = [i for i, r in enumerate(results) if isinstance(r, str)]
        losers = [r for r in results if not isinstance(r, str)]
        assert len(winners) == 1, f"round {round_}: {results}"
        assert all(isinstance(r, ConflictError) for r in losers), losers
        assert s3_backend.get_with_etag("ref") == (
            f"writer {winners[0]}".encode(),
            results[winners[0]],
        )


def test_concurrent_put_if_absent_of_one_key_has_exactly_one_winner(s3_backend: S3Backend) -> None:
    for round_ in range(5):
        key = f"manifests/m{round_}"
        results = _race(8, lambda i, key=key: s3_backend.put_if_absent(key, f"writer {i}".encode()))
        winners = [i for i, r in enumerate(results) if isinstance(r, str)]
        assert len(winners) == 1, f"round {round_}: {results}"
        assert all(isinstance(r, AlreadyExistsError) for r in results if not isinstance(r, str))
        assert s3_backend.get(key) == f"writer {winners[0]}".encode()


def test_a_blob_over_the_threshold_goes_up_in_parts_and_reads_back_whole(
    seaweedfs: SeaweedFS,
) -> None:
    backend = S3Backend(
        seaweedfs.new_bucket(),
        "p",
        multipart_threshold=6 * MiB,
        part_size=5 * MiB,
        **_options(seaweedfs),
    )
    data = bytes(range(256)) * (12 * MiB // 256 + 3)  # three parts, the last one short
    etag = backend.put("packs/ab/big", memoryview(data))
    assert etag.strip('"').endswith("-3")  # S3's mark of a 3-part upload
    assert backend.get_with_etag("packs/ab/big") == (data, etag)
    boundary = 5 * MiB
    assert (
        backend.get("packs/ab/big", ByteRange(boundary - 10, 20))
        == data[boundary - 10 : boundary + 10]
    )
    assert backend.head("packs/ab/big").size == len(data)
    uploads = backend._s3.list_multipart_uploads(Bucket=backend.bucket).get("Uploads", [])
    assert uploads == []


def test_a_failed_multipart_upload_is_aborted(seaweedfs: SeaweedFS) -> None:
    backend = S3Backend(
        seaweedfs.new_bucket(),
        multipart_threshold=6 * MiB,
        part_size=5 * MiB,
        **_options(seaweedfs),
    )
    real_upload_part = backend._s3.upload_part

    def failing_upload_part(**kwargs):
        if kwargs["PartNumber"] == 2:
            raise ConnectionResetError("injected")
        return real_upload_part(**kwargs)

    backend._s3.upload_part = failing_upload_part
    with pytest.raises(BackendError) as info:
        backend.put("big", b"x" * (11 * MiB))
    assert info.value.temporary
    assert backend._s3.list_multipart_uploads(Bucket=backend.bucket).get("Uploads", []) == []
    with pytest.raises(NotFoundError):
        backend.head("big")


def test_prefixes_keep_stores_in_one_bucket_apart(seaweedfs: SeaweedFS) -> None:
    bucket = seaweedfs.new_bucket()
    a = S3Backend(bucket, "a", **_options(seaweedfs))
    ab = S3Backend(bucket, "a/b", **_options(seaweedfs))
    a.put("x", b"in a")
    ab.put("x", b"in a/b")
    assert list(a.list()) == ["b/x", "x"]
    assert list(ab.list()) == ["x"]
    assert ab.get("x") == b"in a/b"
    assert a.url == f"s3://{bucket}/a/"


def test_open_backend_takes_an_s3_url_and_the_aws_environment(aws_env: SeaweedFS) -> None:
    seaweedfs = aws_env
    bucket = seaweedfs.new_bucket()
    backend = open_backend(f"s3://{bucket}/stores/one")
    assert isinstance(backend, RetryingBackend) and isinstance(backend.inner, S3Backend)
    backend.put("config", b"c")
    assert backend.get("config") == b"c"
    raw = seaweedfs.client().get_object(Bucket=bucket, Key="stores/one/config")
    assert raw["Body"].read() == b"c"


def test_cli_and_api_take_the_endpoint_as_an_option_instead_of_the_environment(
    seaweedfs: SeaweedFS, s3_bucket: str, cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    url = f"s3://{s3_bucket}/explicit-{tmp_path.name}"
    where = ["--endpoint-url", seaweedfs.endpoint, "--region", REGION]
    cli("init", url, *where)
    (tmp_path / "a.bin").write_bytes(b"explicit endpoint")
    cli("put", url, tmp_path / "a.bin", "a.bin", *where)
    assert cli("cat", url, "a.bin", *where).stdout == b"explicit endpoint"
    options = {"endpoint_url": seaweedfs.endpoint, "region_name": REGION}
    with modelfs.open_store(url, s3_options=options, use_disk_cache=False) as c:
        assert c.read("a.bin") == b"explicit endpoint"


def test_parse_s3_url_splits_bucket_and_prefix() -> None:
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/") == ("bucket", "")
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    for bad in ("s3:///prefix", "s3://bucket/../x", "s3://key:secret@bucket/p", "s3://b/p?x=1"):
        with pytest.raises(StoreNotFoundError, match="invalid S3 store URL|invalid blob key"):
            parse_s3_url(bad)


def test_a_missing_bucket_raises_store_not_found(seaweedfs: SeaweedFS) -> None:
    with pytest.raises(StoreNotFoundError, match="bucket 'no-such-bucket' does not exist"):
        open_backend("s3://no-such-bucket/store", **_options(seaweedfs))


def test_refused_credentials_say_so_without_showing_the_secret(seaweedfs: SeaweedFS) -> None:
    secret = "not-the-secret-0123456789abcdef"
    with pytest.raises(BackendError, match="access denied") as info:
        S3Backend(seaweedfs.new_bucket(), **_options(seaweedfs, aws_secret_access_key=secret))
    assert not info.value.temporary
    assert secret not in str(info.value)
    assert seaweedfs.secret_key not in str(info.value)


def test_an_unreachable_endpoint_is_a_temporary_backend_error(seaweedfs: SeaweedFS) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    with pytest.raises(BackendError) as info:
        S3Backend("bucket", **_options(seaweedfs, endpoint_url=f"http://127.0.0.1:{port}"))
    assert info.value.temporary
    assert seaweedfs.secret_key not in str(info.value)


def test_a_store_on_seaweedfs_passes_the_conditional_write_check_at_init(
    seaweedfs: SeaweedFS,
) -> None:
    from modelfs.store import Store

    backend = open_backend(f"s3://{seaweedfs.new_bucket()}/models", **_options(seaweedfs))
    Store.create(backend).close()
    assert list(backend.list()) == ["config"]  # the probe is gone
