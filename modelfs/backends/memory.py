"""An in-process backend, for fast tests of the layers above backends.

Never the only test of anything that touches storage: those also run on
LocalBackend (and, from the S3 issue on, on SeaweedFS).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import xxhash

from ..errors import AlreadyExistsError, ConflictError, NotFoundError
from .base import Backend, BlobInfo, ByteRange, Data, check_key


class MemoryBackend(Backend):
    """Keys of any length (max_key_bytes is None): blobs are dict entries."""

    def __init__(self) -> None:
        self.url = f"memory://{id(self):x}"
        self._blobs: dict[str, bytes] = {}
        self._modified: dict[str, float] = {}
        self._lock = threading.Lock()

    def _get(self, key: str) -> bytes:
        try:
            return self._blobs[check_key(key)]
        except KeyError:
            raise NotFoundError(f"no blob {key!r} in {self.url}") from None

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        data = self._get(key)
        if byte_range is None:
            return data
        return data[byte_range.start : byte_range.end]

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        with self._lock:
            data = self._get(key)
        return data, xxhash.xxh3_128_hexdigest(data)

    def head(self, key: str) -> BlobInfo:
        data = self._get(key)
        return BlobInfo(
            key, len(data), xxhash.xxh3_128_hexdigest(data), self._modified.get(key, 0.0)
        )

    def put(self, key: str, data: Data) -> str:
        with self._lock:
            self._blobs[check_key(key)] = bytes(data)
            self._modified[key] = time.time()
        return xxhash.xxh3_128_hexdigest(data)

    def put_if_absent(self, key: str, data: Data) -> str:
        with self._lock:
            if check_key(key) in self._blobs:
                raise AlreadyExistsError(f"blob {key!r} already exists in {self.url}")
            self._blobs[key] = bytes(data)
            self._modified[key] = time.time()
        return xxhash.xxh3_128_hexdigest(data)

    def put_if_match(self, key: str, data: Data, etag: str) -> str:
        with self._lock:
            if xxhash.xxh3_128_hexdigest(self._get(key)) != etag:
                raise ConflictError(f"blob {key!r} changed since it was read")
            self._blobs[key] = bytes(data)
            self._modified[key] = time.time()
        return xxhash.xxh3_128_hexdigest(data)

    def list(self, prefix: str = "") -> Iterator[str]:
        with self._lock:
            keys = sorted(k for k in self._blobs if k.startswith(prefix))
        return iter(keys)

    def delete(self, key: str) -> None:
        with self._lock:
            self._blobs.pop(check_key(key), None)
            self._modified.pop(key, None)
