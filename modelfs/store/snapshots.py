"""Directory snapshots: the versions of every file under a directory at one moment.

A Hugging Face model is a directory (config.json, tokenizer files, safetensors
shards); its version is a snapshot. A snapshot is an immutable, content-
addressed object at snapshots/<id[0:2]>/<id>, named by the BLAKE3-256 of its
canonical JSON: the directory's path and, for each file under it, its path
relative to the directory, version number, manifest id, size, content hash and
mode. Its content hash is the BLAKE3-256 of just the (relative path, content
hash, mode) triples, so two snapshots of the same files (even at other version
numbers) have one content hash: what `DIR@blake3:<hex>` names.

There is no transaction across paths in a store, so a snapshot of a directory
another writer is changing is taken by listing it until two listings in a row
agree (at most a few times): every file's version in it was then current at
one moment, as far as any reader could tell.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import blake3

from ..errors import AlreadyExistsError, FormatError, NotFoundError
from .format import canonical_json, is_hex_id, object_id, parse_json
from .paths import normalize_path, normalize_prefix
from .refs import Version

if TYPE_CHECKING:  # the store imports this module (fsck checks snapshots)
    from .condemned import Check
    from .store import Store

log = logging.getLogger(__name__)

SNAPSHOTS_PREFIX = "snapshots/"
_LISTINGS = 5  # listings of a changing directory before its last one is taken as it is


@dataclass(frozen=True)
class SnapshotFile:
    path: str  # relative to the snapshot's directory
    version: int
    manifest: str
    size: int
    content_hash: str
    mode: int = 0


@dataclass(frozen=True)
class Snapshot:
    path: str  # the directory ('' for the whole store)
    files: tuple[SnapshotFile, ...]  # sorted by path
    nonce: str = ""  # as a manifest's (format 4): the same snapshot under a new id

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def content_hash(self) -> str:
        tree = [[f.path, f.content_hash, f.mode] for f in self.files]
        return "blake3:" + blake3.blake3(canonical_json(tree)).hexdigest()

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                **({"nonce": self.nonce} if self.nonce else {}),
                "path": self.path,
                "files": [
                    [f.path, f.version, f.manifest, f.size, f.content_hash, f.mode]
                    for f in self.files
                ],
            }
        )

    @property
    def id(self) -> str:
        return object_id(self.to_bytes())

    def file(self, inner: str) -> SnapshotFile | None:
        """The file at a path relative to the directory, if the snapshot has one there."""
        for f in self.files:
            if f.path == inner:
                return f
        return None

    def is_dir(self, inner: str) -> bool:
        """Whether the snapshot holds files under the relative directory inner ('' is itself)."""
        if not inner:
            return True
        return any(f.path.startswith(inner + "/") for f in self.files)

    def under(self, inner: str) -> Snapshot:
        """The part of the snapshot under a relative directory, as a snapshot of it."""
        if not inner:
            return self
        cut = len(inner) + 1
        files = tuple(
            SnapshotFile(f.path[cut:], f.version, f.manifest, f.size, f.content_hash, f.mode)
            for f in self.files
            if f.path.startswith(inner + "/")
        )
        return Snapshot(join(self.path, inner), files)

    def children(self, inner: str = "") -> tuple[list[str], list[str]]:
        """The names of the directories and of the files right under a relative directory."""
        prefix = inner + "/" if inner else ""
        dirs: set[str] = set()
        files = []
        for f in self.files:
            if f.path.startswith(prefix):
                rest = f.path[len(prefix) :]
                head, sep, _ = rest.partition("/")
                (dirs.add(head) if sep else files.append(head))
        return sorted(dirs), files

    @classmethod
    def from_bytes(cls, data: bytes, snapshot_id: str) -> Snapshot:
        what = f"snapshot {snapshot_id}"
        if object_id(data) != snapshot_id:
            raise FormatError(f"{what} does not match its id (damaged or swapped)")
        doc = parse_json(data, what)
        try:
            path = doc["path"]
            if path and normalize_path(path) != path:
                raise ValueError(f"{path!r} is not a normalized path")
            files = tuple(
                SnapshotFile(rel, int(v), m, int(size), h, int(mode))
                for rel, v, m, size, h, mode in doc["files"]
            )
            for f in files:
                if normalize_path(f.path) != f.path or not is_hex_id(f.manifest):
                    raise ValueError(f"file entry {f.path!r} is malformed")
            return cls(path, files, str(doc.get("nonce", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{what} is malformed: {e}") from None


def join(directory: str, inner: str) -> str:
    return f"{directory}/{inner}" if directory and inner else directory or inner


def snapshot_key(snapshot_id: str) -> str:
    if not is_hex_id(snapshot_id):
        raise FormatError(f"{snapshot_id!r} is not a snapshot id")
    return f"{SNAPSHOTS_PREFIX}{snapshot_id[:2]}/{snapshot_id}"


def _files_of(store: Store, directory: str) -> tuple[SnapshotFile, ...]:
    cut = len(directory) + 1 if directory else 0
    found = []
    for ref in store.refs_under(directory):
        v: Version | None = ref.current
        if v is not None and v.manifest is not None:
            found.append(
                SnapshotFile(ref.path[cut:], v.version, v.manifest, v.size, v.content_hash, v.mode)
            )
    return tuple(found)


def take_snapshot(store: Store, directory: str) -> Snapshot:
    """The directory's files as they are now (NotFoundError if it holds none)."""
    directory = normalize_prefix(directory)
    files = _files_of(store, directory)
    for _ in range(_LISTINGS - 1):
        again = _files_of(store, directory)
        if again == files:
            break
        files = again
    else:
        log.info("%s kept changing while it was listed; its snapshot is the last listing",
                 directory)  # fmt: skip
    if not files:
        raise NotFoundError(f"no files under {directory or 'the store root'} to take a snapshot of")
    return Snapshot(directory, files)


def save_snapshot(store: Store, snapshot: Snapshot, check: Check | None = None) -> str:
    """Store a snapshot object (put-if-absent: one id, one content) and return its id.

    check: what collections had condemned when the snapshot was listed (the start of
    the commit window): a file whose manifest is condemned is pointed at a copy, and a
    snapshot object that is condemned is stored again under a new id (a nonce)."""
    if check is not None and check.condemned:
        files = tuple(
            dataclasses.replace(f, manifest=store.referencable(f.manifest, check))
            for f in snapshot.files
        )
        snapshot = dataclasses.replace(snapshot, files=files)
        if snapshot.id in check.condemned.snapshots:
            snapshot = dataclasses.replace(snapshot, nonce=os.urandom(16).hex())
    try:
        store.backend.put_if_absent(snapshot_key(snapshot.id), snapshot.to_bytes())
    except AlreadyExistsError:
        pass
    return snapshot.id


def load_snapshot(store: Store, snapshot_id: str) -> Snapshot:
    try:
        data = store.backend.get(snapshot_key(snapshot_id))
    except NotFoundError:
        raise NotFoundError(f"snapshot {snapshot_id} is missing from the store") from None
    return Snapshot.from_bytes(data, snapshot_id)
