"""The Backend interface: a dumb store of named blobs.

Everything above (packs, manifests, refs) is built from these few calls, so a
new backend (S3, another object store) only implements this file's methods and
passes tests/backends' conformance suite. Backends know nothing of modelfs'
format. Missing keys always raise NotFoundError, never return None.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

Data = bytes | bytearray | memoryview


@dataclass(frozen=True)
class ByteRange:
    """Bytes [start, start + length) of a blob."""

    start: int
    length: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.length < 0:
            raise ValueError(f"invalid byte range start={self.start} length={self.length}")

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    # Changes whenever the blob is replaced (S3: the ETag; local: inode and mtime).
    # Not comparable with the etags of get_with_etag / put_if_match.
    token: str = ""
    # When the blob was last written, in seconds since the epoch, by the clock of whatever
    # keeps it (S3: the server's LastModified; local: the file's mtime); 0: unknown.
    # Only compared with other blobs' times from the same backend (the collector's grace).
    modified: float = 0.0


class Backend(ABC):
    """Blobs named by '/'-separated keys of [A-Za-z0-9._~%-] components.

    Writes are atomic: a reader sees the whole old blob or the whole new one.
    An etag is an opaque string that changes whenever a blob's content does.
    """

    url: str

    @property
    def max_key_bytes(self) -> int | None:
        """The longest key this backend can hold, in bytes of UTF-8; None: no limit.

        A physical limit of where keys go (a filesystem's PATH_MAX less the root
        directory's path, S3's 1,024 bytes less the store's prefix): no key longer
        than this can be in the backend, and writing one fails. Each component of a
        key must also fit in 255 bytes, on every backend. Wrappers pass their inner
        backend's limit through.
        """
        return None

    @property
    def time_resolution(self) -> float:
        """Seconds to which BlobInfo.modified is exact (S3's HTTP dates: 1 s; local: 0)."""
        return 0.0

    @property
    def key_limit_reason(self) -> str:
        """What sets max_key_bytes, for messages: "S3's 1,024 less the store's prefix"."""
        return ""

    @abstractmethod
    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        """The blob, or the part of it in byte_range (short if the blob ends first)."""

    @abstractmethod
    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """The whole blob and its etag, read together."""

    @abstractmethod
    def head(self, key: str) -> BlobInfo: ...

    @abstractmethod
    def put(self, key: str, data: Data) -> str:
        """Create or replace; returns the new etag."""

    @abstractmethod
    def put_if_absent(self, key: str, data: Data) -> str:
        """Create only; AlreadyExistsError if the key exists."""

    @abstractmethod
    def put_if_match(self, key: str, data: Data, etag: str) -> str:
        """Replace only if the blob's etag is still `etag`; ConflictError otherwise."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with prefix, in lexicographic order."""

    def list_info(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Like list, with each blob's size and change token (one listing, no reads)."""
        for key in self.list(prefix):
            yield self.head(key)

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove a blob; removing a missing one is not an error."""

    def request_counts(self) -> dict[str, int]:
        """Requests sent to a remote store so far, by HTTP method ({} for local backends)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_key(key: str) -> str:
    """Reject keys that could escape a prefix or mean different things to different backends."""
    if not key or key.startswith("/") or key.endswith("/"):
        raise ValueError(f"invalid blob key {key!r}")
    for part in key.split("/"):
        if part in ("", ".", "..") or part.startswith(".") or "\0" in part:
            raise ValueError(f"invalid blob key {key!r}")
    return key
