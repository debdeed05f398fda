"""The raw objects of a store, on whichever backend holds it: what tests inspect and damage.

Tests that check "nothing was written" or that damage a pack (as bit rot, a
truncated upload or a careless hand would) use this instead of the local
directory, so they run unchanged on file:// and s3:// stores. It goes to the
backend directly, under modelfs' format layer, and writes unconditionally.

Caveats:
- On S3 a snapshot tells rewrites apart by ETag and LastModified (whole
  seconds on SeaweedFS): a rewrite with identical bytes in the same second
  goes unseen there. Locally every write shows (inode, mtime, size).
"""

from __future__ import annotations

from collections.abc import Iterator

from modelfs.backends import Backend, RetryingBackend, open_backend
from modelfs.backends.base import BlobInfo, ByteRange, Data
from modelfs.backends.s3 import S3Backend
from modelfs.store.format import pack_key


class WrappedBackend(Backend):
    """A real backend (local or S3) seen through a subclass that watches or
    breaks some calls; everything it does not override passes through."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.url = inner.url

    @property
    def max_key_bytes(self) -> int | None:
        return self.inner.max_key_bytes

    @property
    def key_limit_reason(self) -> str:
        return self.inner.key_limit_reason

    @property
    def time_resolution(self) -> float:
        return self.inner.time_resolution

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        return self.inner.get(key, byte_range)

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        return self.inner.get_with_etag(key)

    def head(self, key: str) -> BlobInfo:
        return self.inner.head(key)

    def put(self, key: str, data: Data) -> str:
        return self.inner.put(key, data)

    def put_if_absent(self, key: str, data: Data) -> str:
        return self.inner.put_if_absent(key, data)

    def put_if_match(self, key: str, data: Data, etag: str) -> str:
        return self.inner.put_if_match(key, data, etag)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)

    def list_info(self, prefix: str = "") -> Iterator[BlobInfo]:
        return self.inner.list_info(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def request_counts(self) -> dict[str, int]:
        return self.inner.request_counts()

    def close(self) -> None:
        self.inner.close()


class StoreObjects:
    def __init__(self, url: str) -> None:
        self.url = url
        self._backend: Backend | None = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = open_backend(self.url)
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self) -> StoreObjects:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # looking

    def keys(self, *prefixes: str) -> set[str]:
        """Keys of every object under these prefixes (all objects without one)."""
        return {k for p in (prefixes or ("",)) for k in self.backend.list(p)}

    def sizes(self, prefix: str = "") -> dict[str, int]:
        return {i.key: i.size for i in self.backend.list_info(prefix)}

    def snapshot(self) -> dict[str, tuple[object, ...]]:
        """Every object with what changes when it is written: equal snapshots, no writes."""
        inner = self.backend
        if isinstance(inner, RetryingBackend):
            inner = inner.inner
        if isinstance(inner, S3Backend):
            pages = inner._s3.get_paginator("list_objects_v2").paginate(
                Bucket=inner.bucket, Prefix=inner.prefix
            )
            return {
                obj["Key"][len(inner.prefix) :]: (obj["Size"], obj["ETag"], obj["LastModified"])
                for page in pages
                for obj in page.get("Contents", [])
            }
        return {i.key: (i.size, i.token) for i in self.backend.list_info()}

    def read(self, key: str) -> bytes:
        return self.backend.get(key)

    # damaging

    def write(self, key: str, data: bytes) -> None:
        self.backend.put(key, data)

    def delete(self, key: str) -> None:
        self.backend.delete(key)

    def flip_byte(self, key: str, offset: int) -> None:
        """Damage one byte of an object, as bit rot or a bad disk would."""
        data = bytearray(self.read(key))
        data[offset] ^= 0xFF
        self.write(key, bytes(data))

    def truncate(self, key: str, length: int) -> None:
        self.write(key, self.read(key)[:length])

    @staticmethod
    def pack(pack_id: str) -> str:
        """The key of a pack."""
        return pack_key(pack_id)
