"""A backend on an S3 bucket (AWS, SeaweedFS, MinIO, ...), named by s3://bucket/prefix.

Endpoint, region and credentials come from the usual AWS configuration
(AWS_* environment variables including AWS_ENDPOINT_URL, ~/.aws profiles,
instance roles) unless given as keyword options. Conditional writes are the
server's own: put_if_absent sends If-None-Match: *, put_if_match sends
If-Match: etag, so they are as safe between machines as the server makes them.
Blobs over `multipart_threshold` go up as a multipart upload; modelfs keys are
content-addressed, so an unconditional put of a pack needs no condition.

Errors: a missing key is NotFoundError; a missing bucket StoreNotFoundError;
throttling, 5xx and connection failures BackendError(temporary=True); refused
credentials a BackendError that says so. No message ever carries a secret:
only error codes, HTTP statuses, the bucket and the key go into them.

Caveats:
- list/list_info gather the whole listing and sort it (S3 servers differ in
  how they order keys around '/'), so a listing holds all its keys in memory.
- put_if_absent and put_if_match always use a single PUT (5 GiB at most);
  only unconditional puts use multipart uploads.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote, urlparse

import boto3
import botocore.exceptions
from botocore.config import Config

from ..errors import (
    AlreadyExistsError,
    BackendError,
    ConflictError,
    ModelfsError,
    NotFoundError,
    PermissionDeniedError,
    StoreNotFoundError,
)
from .base import Backend, BlobInfo, ByteRange, Data, check_key

log = logging.getLogger(__name__)

MiB = 1 << 20
MAX_KEY_BYTES = 1024  # S3's limit on an object key, in bytes of UTF-8, with the prefix
MULTIPART_THRESHOLD = 64 * MiB
PART_SIZE = 32 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's limit for every part but the last
MAX_PARTS = 10_000
UPLOAD_THREADS = 8
CONNECT_TIMEOUT = 10.0  # seconds
READ_TIMEOUT = 30.0  # seconds without a byte from the server

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_AUTH_CODES = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
}
_THROTTLE_CODES = {
    "429",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "TooManyRequests",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    # Another conditional write to the same key is in flight (AWS); try again.
    "ConditionalRequestConflict",
    "OperationAborted",
}


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://bucket/prefix; the prefix is '' or ends in '/'."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StoreNotFoundError(f"invalid S3 store URL {url!r}: use s3://bucket/prefix")
    if parsed.query or parsed.fragment or "@" in parsed.netloc:
        raise StoreNotFoundError(f"invalid S3 store URL {url!r}: use s3://bucket/prefix")
    prefix = unquote(parsed.path).strip("/")
    if prefix:
        try:
            check_key(prefix)
        except ValueError:
            raise StoreNotFoundError(f"invalid S3 store URL {url!r}: bad prefix") from None
        prefix += "/"
    return parsed.netloc, prefix


def _code(e: botocore.exceptions.ClientError) -> tuple[str, int]:
    code = str(e.response.get("Error", {}).get("Code", ""))
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


class S3Backend(Backend):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        profile_name: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        max_pool_connections: int = 32,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
        client: Any = None,
    ) -> None:
        """`client` replaces the boto3 client made from the other options (tests, custom setups)."""
        if prefix:
            prefix = check_key(prefix.strip("/")) + "/"
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size {part_size} is below S3's minimum of {MIN_PART_SIZE}")
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}"
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        if client is None:
            session = boto3.session.Session(profile_name=profile_name)
            client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region_name,
                aws_access_key_id=aws_access_key_id,
                aws_secret_access_key=aws_secret_access_key,
                aws_session_token=aws_session_token,
                config=Config(
                    max_pool_connections=max_pool_connections,
                    # Retries happen in one place, RetryingBackend, within its time bound.
                    retries={"mode": "standard", "total_max_attempts": 1},
                    # Bounded waits: a hung server costs at most this per attempt.
                    connect_timeout=connect_timeout,
                    read_timeout=read_timeout,
                    # No SHA-256 of every body on plain-http endpoints (botocore already
                    # skips it over https): a fifth of a put's CPU. Bodies still carry
                    # botocore's CRC32, which the server checks, and every block is
                    # checked against its own checksum and id when read.
                    s3={"payload_signing_enabled": False},
                ),
            )
        self._s3 = client
        self._requests: Counter[str] = Counter()
        self._requests_lock = threading.Lock()
        # Count every HTTP request the client sends (retries and multipart parts too).
        client.meta.events.register("before-send.s3.*", self._count_request)
        self._check_bucket()

    def _count_request(self, request: Any = None, **kwargs: Any) -> None:
        method = getattr(request, "method", "?")
        with self._requests_lock:
            self._requests[method] += 1

    def request_counts(self) -> dict[str, int]:
        with self._requests_lock:
            return dict(self._requests)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3Backend:
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, **options)

    # errors

    def _error(self, e: Exception, doing: str, key: str | None = None) -> ModelfsError:
        """The modelfs error for a boto3/botocore failure; never includes the server's free text."""
        where = f"{key!r} in {self.url}" if key is not None else self.url
        if isinstance(e, botocore.exceptions.ClientError):
            code, status = _code(e)
            if code == "NoSuchBucket":
                return StoreNotFoundError(f"no S3 bucket {self.bucket!r} ({doing} {where})")
            if code in _NOT_FOUND_CODES or status == 404:
                return NotFoundError(f"no blob {key!r} in {self.url}")
            if code in _AUTH_CODES or status in (401, 403):
                return PermissionDeniedError(
                    f"{doing} {where}: access denied ({code or status}); check the S3 "
                    "credentials and the bucket's permissions"
                )
            if code in _THROTTLE_CODES or status == 429 or status >= 500:
                return BackendError(f"{doing} {where}: {code} (HTTP {status})", temporary=True)
            return BackendError(f"{doing} {where}: {code} (HTTP {status})")
        if isinstance(
            e, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
        ):
            return BackendError(
                f"{doing} {where}: no usable S3 credentials (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or pass them as options)"
            )
        if isinstance(
            e,
            botocore.exceptions.ConnectionError
            | botocore.exceptions.HTTPClientError
            | botocore.exceptions.ResponseStreamingError
            | botocore.exceptions.IncompleteReadError
            | OSError,  # a socket error that botocore let through
        ):
            return BackendError(f"{doing} {where}: {type(e).__name__}", temporary=True)
        return BackendError(f"{doing} {where}: {type(e).__name__}")

    def _check_bucket(self) -> None:
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as e:
            code, status = _code(e)
            if status == 404 or code in ("NoSuchBucket", "404", "NotFound"):
                raise StoreNotFoundError(
                    f"no store at {self.url}: the S3 bucket {self.bucket!r} does not exist"
                ) from None
            raise self._error(e, "opening") from None
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            raise self._error(e, "opening") from None

    @property
    def time_resolution(self) -> float:
        return 1.0  # HEAD's Last-Modified is an HTTP date, to the second

    @property
    def max_key_bytes(self) -> int:
        return MAX_KEY_BYTES - len(self.prefix.encode())

    @property
    def key_limit_reason(self) -> str:
        if not self.prefix:
            return "S3's limit on an object key"
        return f"S3's {MAX_KEY_BYTES:,} less the store's prefix"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    # reads

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        full = self._key(key)
        if byte_range is None:
            return self.get_with_etag(key)[0]
        if byte_range.length == 0:
            self.head(key)  # still NotFoundError for a missing key
            return b""
        try:
            response = self._s3.get_object(
                Bucket=self.bucket, Key=full, Range=f"bytes={byte_range.start}-{byte_range.end - 1}"
            )
            data = response["Body"].read()
        except botocore.exceptions.ClientError as e:
            code, status = _code(e)
            if status == 416 or code == "InvalidRange":
                return b""  # the range starts at or past the end; the blob exists
            raise self._error(e, "reading", key) from None
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            raise self._error(e, "reading", key) from None
        # A server that ignores Range sends the whole blob (200, not 206).
        if (
            response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200
            and "ContentRange" not in response
        ):
            data = data[byte_range.start : byte_range.end]
        return data

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        full = self._key(key)
        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=full)
            return response["Body"].read(), response["ETag"]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as e:
            raise self._error(e, "reading", key) from None

    def head(self, key: str) -> BlobInfo:
        full = self._key(key)
        try:
            response = self._s3.head_object(Bucket=self.bucket, Key=full)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as e:
            raise self._error(e, "reading", key) from None
        return BlobInfo(
            key, response["ContentLength"], response["ETag"], _epoch(response.get("LastModified"))
        )

    def list(self, prefix: str = "") -> Iterator[str]:
        return (info.key for info in self.list_info(prefix))

    def list_info(self, prefix: str = "") -> Iterator[BlobInfo]:
        infos: list[BlobInfo] = []
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                for obj in page.get("Contents", ()):
                    key = obj["Key"][len(self.prefix) :]
                    if key.endswith("/"):
                        continue  # a folder marker some servers list, not a blob
                    infos.append(
                        BlobInfo(key, obj["Size"], obj["ETag"], _epoch(obj.get("LastModified")))
                    )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as e:
            raise self._error(e, "listing", prefix) from None
        infos.sort(key=lambda i: i.key)
        return iter(infos)

    # writes

    def put(self, key: str, data: Data) -> str:
        full = self._key(key)
        if len(data) > self.multipart_threshold:
            return self._put_multipart(key, full, memoryview(data).cast("B"))
        return self._put_object(key, dict(Key=full, Body=bytes(data)))

    def put_if_absent(self, key: str, data: Data) -> str:
        full = self._key(key)
        try:
            return self._put_object(
                key, dict(Key=full, Body=bytes(data), IfNoneMatch="*"), raw=True
            )
        except botocore.exceptions.ClientError as e:
            code, status = _code(e)
            if status == 412 or code == "PreconditionFailed":
                raise AlreadyExistsError(f"blob {key!r} already exists in {self.url}") from None
            raise self._error(e, "writing", key) from None

    def put_if_match(self, key: str, data: Data, etag: str) -> str:
        full = self._key(key)
        try:
            return self._put_object(key, dict(Key=full, Body=bytes(data), IfMatch=etag), raw=True)
        except botocore.exceptions.ClientError as e:
            code, status = _code(e)
            if status == 412 or code == "PreconditionFailed":
                self.head(key)  # NotFoundError if the blob is missing, as the interface says
                raise ConflictError(f"blob {key!r} changed since it was read") from None
            if code == "ConditionalRequestConflict" or status == 409:
                raise ConflictError(f"blob {key!r} is being replaced concurrently") from None
            raise self._error(e, "writing", key) from None

    def _put_object(self, key: str, args: dict[str, Any], *, raw: bool = False) -> str:
        """One PUT; with raw=True ClientErrors pass through for the caller to interpret."""
        try:
            return self._s3.put_object(Bucket=self.bucket, **args)["ETag"]
        except botocore.exceptions.ClientError as e:
            if raw:
                raise
            raise self._error(e, "writing", key) from None
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            raise self._error(e, "writing", key) from None

    def _put_multipart(self, key: str, full: str, data: memoryview) -> str:
        part_size = max(self.part_size, math.ceil(len(data) / MAX_PARTS))
        starts = range(0, len(data), part_size)
        try:
            upload_id = self._s3.create_multipart_upload(Bucket=self.bucket, Key=full)["UploadId"]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as e:
            raise self._error(e, "writing", key) from None

        def upload(number: int, start: int) -> dict[str, Any]:
            response = self._s3.upload_part(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                PartNumber=number,
                Body=bytes(data[start : start + part_size]),
            )
            return {"PartNumber": number, "ETag": response["ETag"]}

        try:
            with ThreadPoolExecutor(max_workers=min(UPLOAD_THREADS, len(starts))) as pool:
                parts = list(pool.map(upload, range(1, len(starts) + 1), starts))
            response = self._s3.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            return response["ETag"]
        except BaseException as e:
            try:
                self._s3.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            except Exception as abort_error:
                log.warning(
                    "aborting the multipart upload of %r to %s failed (%s); "
                    "its parts stay until a lifecycle rule removes them",
                    key,
                    self.url,
                    type(abort_error).__name__,
                )
            if isinstance(
                e, botocore.exceptions.BotoCoreError | botocore.exceptions.ClientError | OSError
            ):
                raise self._error(e, "writing", key) from None
            raise

    def delete(self, key: str) -> None:
        full = self._key(key)
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=full)
        except botocore.exceptions.ClientError as e:
            code, status = _code(e)
            if status == 404 or code in _NOT_FOUND_CODES:
                return  # already gone
            raise self._error(e, "deleting", key) from None
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            raise self._error(e, "deleting", key) from None

    def close(self) -> None:
        self._s3.close()


def _epoch(when: object) -> float:
    """botocore's LastModified (a datetime) in seconds since the epoch; 0 if absent."""
    timestamp = getattr(when, "timestamp", None)
    return float(timestamp()) if timestamp is not None else 0.0
