"""A backend on a local directory: the embedded default, no server needed.

Each blob is a file under the root. Writes go to a temporary file in
ROOT/.tmp, are fsynced, then renamed into place, so readers never see a
partial blob and a crash leaves at most a stray temporary file. Conditional
writes hold an flock on a per-key lock file in ROOT/.locks, which makes them
safe between processes on one machine (and on NFS only as far as its locks are).

A key is a file path under the root, so the longest key is what the
filesystem's PATH_MAX leaves after the root directory's own path; the
temporary and lock files have short names of their own whatever the key.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import xxhash

from ..errors import (
    AlreadyExistsError,
    BackendError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
)
from .base import Backend, BlobInfo, ByteRange, Data, check_key

_DEFAULT_PATH_MAX = 4096  # Linux's, where pathconf says nothing


def _etag(data: Data) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def _write_error(doing: str, e: OSError) -> BackendError:
    """A refused write (no permission, read-only filesystem) is PermissionDeniedError."""
    if e.errno in (errno.EACCES, errno.EROFS):
        return PermissionDeniedError(f"{doing}: {e.strerror}")
    return BackendError(f"{doing}: {e}")


def _path_max(directory: Path) -> int:
    """The filesystem's PATH_MAX: the bytes of a path, with its terminating NUL."""
    try:
        limit = os.pathconf(directory, "PC_PATH_MAX")
    except (OSError, ValueError):
        limit = -1
    return limit if limit > 0 else _DEFAULT_PATH_MAX


def _token(st: os.stat_result) -> str:
    # Every write renames a new file into place, so the inode changes with the content.
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


class LocalBackend(Backend):
    def __init__(self, root: str | os.PathLike[str], *, create: bool = False) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        if not self.root.is_dir():
            raise NotFoundError(f"store directory {self.root} does not exist")
        self._tmp = self.root / ".tmp"
        self._locks = self.root / ".locks"
        # A blob's path is ROOT/KEY and must be shorter than PATH_MAX, which counts its NUL.
        self._path_max = _path_max(self.root)
        self._max_key_bytes = max(0, self._path_max - len(os.fsencode(self.root)) - 2)

    @property
    def max_key_bytes(self) -> int:
        return self._max_key_bytes

    @property
    def key_limit_reason(self) -> str:
        return f"the filesystem's PATH_MAX of {self._path_max:,} less the store directory's path"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    # reads

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                if byte_range is None:
                    return f.read()
                return os.pread(f.fileno(), byte_range.length, byte_range.start)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            # A directory is only a prefix of other keys, not a blob.
            raise NotFoundError(f"no blob {key!r} in {self.url}") from None
        except OSError as e:
            raise BackendError(f"reading {key!r} from {self.url}: {e}") from e

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        data = self.get(key)
        return data, _etag(data)

    def head(self, key: str) -> BlobInfo:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFoundError(f"no blob {key!r} in {self.url}") from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFoundError(f"no blob {key!r} in {self.url}")
        return BlobInfo(key, st.st_size, _token(st), st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[str]:
        return (info.key for info in self.list_info(prefix))

    def list_info(self, prefix: str = "") -> Iterator[BlobInfo]:
        # Walk only the deepest directory the prefix names completely.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base_dir if base_dir else self.root
        infos: list[BlobInfo] = []
        for dirpath, dirnames, filenames in os.walk(start):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel + "/"
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                key = rel + name
                if key.startswith(prefix) and not name.startswith("."):
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue  # deleted while we walked
                    infos.append(BlobInfo(key, st.st_size, _token(st), st.st_mtime))
        infos.sort(key=lambda i: i.key)
        return iter(infos)

    # writes

    def _write_temp(self, data: Data) -> Path:
        self._tmp.mkdir(exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            os.unlink(name)
            raise
        return Path(name)

    def _fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        self._locks.mkdir(exist_ok=True)
        lock_path = self._locks / xxhash.xxh64_hexdigest(key.encode())
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def put(self, key: str, data: Data) -> str:
        path = self._path(key)
        try:
            tmp = self._write_temp(data)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._fsync_dir(path.parent)
        except OSError as e:
            raise _write_error(f"writing {key!r} to {self.url}", e) from e
        return _etag(data)

    def put_if_absent(self, key: str, data: Data) -> str:
        path = self._path(key)
        try:
            tmp = self._write_temp(data)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.link(tmp, path)  # atomic create-only
            except FileExistsError:
                raise AlreadyExistsError(f"blob {key!r} already exists in {self.url}") from None
            finally:
                os.unlink(tmp)
            self._fsync_dir(path.parent)
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise AlreadyExistsError(f"blob {key!r} already exists in {self.url}") from None
            raise _write_error(f"writing {key!r} to {self.url}", e) from e
        return _etag(data)

    def put_if_match(self, key: str, data: Data, etag: str) -> str:
        check_key(key)
        with self._key_lock(key):
            _, current_etag = self.get_with_etag(key)
            if current_etag != etag:
                raise ConflictError(f"blob {key!r} changed since it was read")
            return self.put(key, data)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            pass  # no such blob (a directory is only a prefix of other keys)
        except OSError as e:
            raise _write_error(f"deleting {key!r} from {self.url}", e) from e
