"""The one error hierarchy of modelfs.

Every layer raises a subclass of ModelfsError; each class carries the errno
that the FUSE boundary (and the CLI's exit status) maps it to, so the mapping
lives in one place: here.
"""

from __future__ import annotations

import errno as _errno


class ModelfsError(Exception):
    """Base of every error modelfs raises on purpose."""

    errno: int = _errno.EIO


class NotFoundError(ModelfsError):
    """A blob, path, version or block that does not exist."""

    errno = _errno.ENOENT


class ForgottenError(NotFoundError):
    """A version a retention rule removed from its history (`modelfs forget`)."""


class CollectedError(ModelfsError):
    """A version that was open when it was forgotten, whose blocks a collection has since
    deleted: the handle no longer stands for anything the store holds."""

    errno = _errno.ESTALE


class CollectionInProgressError(ModelfsError):
    """Another collection holds the store's collection lock."""

    errno = _errno.EBUSY


class AlreadyExistsError(ModelfsError):
    """A create-only write found the key already there."""

    errno = _errno.EEXIST


class ConflictError(ModelfsError):
    """A compare-and-swap lost: the object changed since it was read."""

    errno = _errno.EAGAIN


class InvalidArgumentError(ModelfsError, ValueError):
    """A value given to modelfs that it cannot use: bad params, sizes, ranges, types."""

    errno = _errno.EINVAL


class InvalidPathError(ModelfsError, ValueError):
    """A path that modelfs refuses to store (.., NUL, empty or over-long names)."""

    errno = _errno.EINVAL


class NameTooLongError(InvalidPathError):
    errno = _errno.ENAMETOOLONG


class NotADirectoryError_(InvalidPathError):
    """A path goes through a component that is a file."""

    errno = _errno.ENOTDIR


class IsADirectoryError_(InvalidPathError):
    """A file operation named a path that is a directory."""

    errno = _errno.EISDIR


class DirectoryNotEmptyError(ModelfsError):
    errno = _errno.ENOTEMPTY


class StoreNotFoundError(ModelfsError):
    """The URL names no modelfs store (no config object there)."""

    errno = _errno.ENOENT


class FormatError(ModelfsError):
    """An object of the store is malformed, or of a format this version cannot read."""

    errno = _errno.EIO


class UnsupportedFormatError(FormatError):
    """The store was written by a newer modelfs."""


class CorruptionError(ModelfsError):
    """Stored bytes failed verification: wrong checksum, wrong id, or undecodable.

    Never returned as data: the read that met it fails instead.
    """

    errno = _errno.EIO

    def __init__(
        self,
        message: str,
        *,
        block_id: str | None = None,
        pack: str | None = None,
        path: str | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.block_id = block_id
        self.pack = pack
        self.path = path
        self.offset = offset

    def with_file(self, path: str, offset: int) -> CorruptionError:
        """The same error, now naming the file and offset the read was for."""
        return type(self)(
            f"{path} at offset {offset}: {self}",
            block_id=self.block_id,
            pack=self.pack,
            path=path,
            offset=offset,
        )


class MissingPackError(CorruptionError):
    """A pack a manifest names is not in the store (and no moved/ record forwards it)."""


class BackendError(ModelfsError):
    """The storage backend failed (I/O error, network, server)."""

    errno = _errno.EIO

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class PermissionDeniedError(BackendError):
    """The store refused the credentials or the operation (HTTP 401/403): never retried."""

    errno = _errno.EACCES


class PinLimitError(ModelfsError):
    """Pinning more would leave pinned blocks alone over the cache's limit."""

    errno = _errno.ENOSPC


class ReadOnlyError(ModelfsError):
    errno = _errno.EROFS
