"""Blob backends and the store URLs that name them.

A store URL is a plain path or file:///abs/path (LocalBackend) or memory://
(MemoryBackend, tests only) or s3://bucket/prefix (S3Backend, configured by
the usual AWS environment and profiles).
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlparse

from ..errors import StoreNotFoundError
from .base import Backend, BlobInfo, ByteRange
from .local import LocalBackend
from .memory import MemoryBackend
from .retry import DEFAULT_MAX_ELAPSED, RetryingBackend

__all__ = [
    "Backend", "BlobInfo", "ByteRange", "LocalBackend", "MemoryBackend", "RetryingBackend",
    "open_backend",
]  # fmt: skip


def open_backend(url: str | os.PathLike[str], *, create: bool = False, **s3_options) -> Backend:
    """The backend a store URL names. create=True makes a missing local directory.

    s3_options go to S3Backend (endpoint_url, region_name, profile_name, ...); a
    missing bucket is StoreNotFoundError whatever `create` says.
    """
    text = os.fspath(url)
    parsed = urlparse(text)
    if "://" not in text and parsed.scheme not in ("file", "memory"):
        parsed = urlparse("")  # a relative path with a colon in it, like store:v1
    if parsed.scheme in ("", "file"):
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise StoreNotFoundError(f"file:// URL {text!r} names a remote host")
            path = unquote(parsed.path)
        else:
            path = text
        if not path:
            raise StoreNotFoundError("empty store path")
        if not create and not os.path.isdir(path):
            raise StoreNotFoundError(f"no store at {text!r}: {path} is not a directory")
        return LocalBackend(path, create=create)
    if parsed.scheme == "memory":
        return MemoryBackend()
    if parsed.scheme == "s3":
        from .s3 import S3Backend  # imported here: boto3 takes a while to import

        max_elapsed = s3_options.pop("retry_seconds", None)
        if max_elapsed is None:
            max_elapsed = DEFAULT_MAX_ELAPSED
        # Only network backends have temporary failures worth waiting out.
        return RetryingBackend(S3Backend.from_url(text, **s3_options), max_elapsed=max_elapsed)
    raise StoreNotFoundError(
        f"unsupported store URL {text!r}: use a path, file:///abs/path or s3://bucket/prefix"
    )
