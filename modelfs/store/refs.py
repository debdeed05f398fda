"""Refs: each stored path's history of versions.

A ref is a small JSON object at the path's ref key listing every version in
order: its number, manifest id (None for a deletion), time, size and content
hash. Publishing a version is a compare-and-swap of the whole ref
(put_if_absent for a new path, put_if_match otherwise), retried on conflict
after re-reading, so two writers that race both land, one after the other.
A ref is read by its key and names its own path; the path must map back to
that key (a shortened key cannot be decoded, see paths.py). Whether a new
ref's key fits the backend is the store's check (Store.check_new_path),
made before anything is written; an existing ref is read and appended to
whatever its key's length.
"""

from __future__ import annotations

import logging
import stat
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from ..backends.base import Backend
from ..errors import ForgottenError, FormatError, NotFoundError
from . import cas
from .format import canonical_json, is_hex_id, parse_json
from .metrics import Metrics, Value, check_metrics
from .paths import describe_key, path_stored_at, ref_key

log = logging.getLogger(__name__)

DEFAULT_FILE_MODE = stat.S_IFREG | 0o644  # what a version's mode 0 means


@dataclass(frozen=True)
class Version:
    version: int
    manifest: str | None  # None: the path was deleted in this version
    time: float
    size: int = 0
    content_hash: str = ""
    message: str = ""
    mode: int = 0  # POSIX type and permission bits; 0: a regular file, 0644
    # Recorded with the version at its commit (format 3); later ones are in its names record.
    metrics: Mapping[str, Value] | None = None
    # Removed from the history by a retention rule (format 4): {"time", "by", "rule"}.
    # The entry keeps its manifest id, so a name set on it while it was being forgotten
    # still keeps its content (a collector keeps forgotten versions that a name targets).
    forgotten: Mapping[str, object] | None = None

    @property
    def deleted(self) -> bool:
        return self.manifest is None

    @property
    def readable(self) -> bool:
        """A version with content that is still in the history (neither a deletion nor
        forgotten)."""
        return self.manifest is not None and not self.forgotten

    def forgotten_note(self) -> str:
        """Why the version is gone, for messages: "keep-last 2, by ana@gpu7 at 2026-...".'"""
        f = self.forgotten or {}
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(f.get("time", 0))))
        return f"{f.get('rule', 'a rule')}, by {f.get('by', '?')} at {when}"

    @property
    def file_mode(self) -> int:
        """The type and permission bits the version has (mode 0 is a regular file, 0644)."""
        return self.mode or DEFAULT_FILE_MODE


@dataclass(frozen=True)
class Ref:
    path: str
    versions: tuple[Version, ...]

    @property
    def current(self) -> Version | None:
        """The newest version, or None if the path is deleted (or has none)."""
        if not self.versions or self.versions[-1].deleted:
            return None
        return self.versions[-1]

    def get(self, number: int, *, named: bool = False) -> Version:
        """Version number of the path; named: reached through a tag, alias or snapshot,
        which keeps a version readable even if it was forgotten (as it was being named)."""
        if 1 <= number <= len(self.versions):  # numbered 1, 2, 3... (checked on read)
            v = self.versions[number - 1]
            if v.deleted:
                raise NotFoundError(f"version {number} of {self.path} is a deletion")
            if v.forgotten and not named:
                raise ForgottenError(
                    f"version {number} of {self.path} was forgotten ({v.forgotten_note()})"
                )
            return v
        raise NotFoundError(
            f"{self.path} has no version {number} (versions 1..{len(self.versions)})"
        )

    def to_bytes(self) -> bytes:
        return canonical_json({"path": self.path, "versions": [_entry(v) for v in self.versions]})

    @classmethod
    def from_bytes(cls, data: bytes, key: str, path: str | None = None) -> Ref:
        """The ref stored at key, which must name a path whose key is key (and be path)."""
        what = f"ref of {path or describe_key(key)}"
        doc = parse_json(data, what)
        try:
            versions = tuple(Version(**v) for v in doc["versions"])
            for i, v in enumerate(versions, 1):
                if v.version != i or not (v.manifest is None or is_hex_id(v.manifest)):
                    raise ValueError(f"version entry {i} is malformed")
                if v.metrics is not None:
                    check_metrics(v.metrics)
                if v.forgotten is not None and (
                    not isinstance(v.forgotten, dict) or v.manifest is None
                ):
                    raise ValueError(f"version entry {i} is forgotten but malformed")
            named = path_stored_at(doc["path"], key, what)
            if path is not None and named != path:
                raise ValueError(f"it names {named!r}")  # a hash collision of shortened names
            return cls(named, versions)
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{what} is malformed: {e}") from None


def _entry(v: Version) -> dict:
    entry = asdict(v)
    if not v.metrics:
        del entry["metrics"]  # a version-2 reader knows no such field
    if not v.forgotten:
        del entry["forgotten"]  # nor a version-3 reader this one
    return entry


def load_ref(backend: Backend, path: str) -> tuple[Ref, str]:
    """The ref of a path and its etag; NotFoundError if the path was never stored."""
    key = ref_key(path)
    limit = backend.max_key_bytes
    try:
        if limit is not None and len(key) > limit:
            # No key that long can be there, and asking a filesystem or S3 for one is an error.
            raise NotFoundError(key)
        data, etag = backend.get_with_etag(key)
    except NotFoundError:
        raise NotFoundError(f"no such file in the store: {path}") from None
    return Ref.from_bytes(data, key, path), etag


def append_version(
    backend: Backend,
    path: str,
    manifest: str | None,
    *,
    size: int = 0,
    content_hash: str = "",
    message: str = "",
    mode: int = 0,
    metrics: Metrics | None = None,
    require_current: bool = False,
    deadline: float | None = None,
) -> Version:
    """Publish a new version of path (manifest None: delete it) by compare-and-swap.

    ConflictError if other writers changed the ref every time (cas.ATTEMPTS times);
    cas.DeadlinePassed if it would be sent after deadline (the commit window's end).
    """
    key = ref_key(path)
    made: list[Version] = []

    def append(data: bytes | None) -> bytes:
        ref = Ref.from_bytes(data, key, path) if data is not None else None
        if require_current and (ref is None or ref.current is None):
            raise NotFoundError(f"no such file in the store: {path}")
        versions = ref.versions if ref else ()
        new = Version(
            len(versions) + 1, manifest, time.time(), size, content_hash, message, mode,
            dict(metrics) if metrics else None,
        )  # fmt: skip
        made[:] = [new]
        return Ref(path, versions + (new,)).to_bytes()

    cas.update(backend, key, append, f"publish a version of {path}", deadline=deadline)
    return made[0]
