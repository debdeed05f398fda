"""What a comparison reads: one side of `modelfs diff`, as files read by range.

An operand is one of:

    ADDRESS              a version in the store (`bert/model.safetensors@3`, `bert@champion`,
                         `ck/`, anything store/addresses.py resolves)
    STORE_URL::ADDRESS   a version in another store (`s3://bucket/models::bert@2`)
    ./PATH, /PATH, ~/... a local file or directory (a path starting with '/', './', '../' or '~')

and opens as a Model: one file, or a directory's files, each a ModelFile that
reads by range. Store files keep their manifest, so that a tensor whose bytes
lie in the same blocks on both sides is known identical without a fetch, and
read through the client's block reader (verified, cached, fetched in parallel).

Caveats:
- A local directory is read as it is while the comparison runs; a store
  directory as one version (its snapshot), so shards never mix versions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from ..client import Client, open_store
from ..errors import InvalidArgumentError, NotFoundError
from ..reader import BlockReader
from ..store import Version
from ..store.checkpoints import LocalFile, ReadAt
from ..store.manifest import Manifest
from ..store.paths import version_address
from ..store.snapshots import join

STORE_SEPARATOR = "::"
_LOCAL_PREFIXES = ("/", "./", "../", "~")


@dataclass
class ModelFile:
    """One file of a model, read by range."""

    name: str  # relative to the model ('' for a single file)
    size: int
    read: ReadAt
    manifest: Manifest | None = None  # a store file's blocks: identity without a fetch
    content_hash: str | None = None  # blake3:<hex> of the whole file, when known for free
    prefetch: Callable[[int, int], None] | None = None  # start fetching a range

    def whole_hash(self) -> str:
        """blake3:<hex> of the file (a local file is read once to learn it)."""
        if self.content_hash is None:
            h = blake3.blake3()
            for offset in range(0, self.size, 8 << 20):
                h.update(self.read(offset, min(8 << 20, self.size - offset)))
            self.content_hash = "blake3:" + h.hexdigest()
        return self.content_hash


@dataclass
class Model:
    """One side of a comparison: what the user named, and its files."""

    label: str  # as resolved: `PATH@N blake3:<hex>`, or a local path
    is_dir: bool
    files: dict[str, ModelFile] = field(default_factory=dict)  # by name, sorted
    tables: dict[object, object] = field(default_factory=dict)  # diff.py's, learnt once


def is_local(text: str) -> bool:
    return text.startswith(_LOCAL_PREFIXES)


# A comparison reads each block once: its memory cache need only hold the chunks being
# compared and the ones prefetched (the client's 128 MiB one doubled a diff's peak RSS).
READER_MEMORY = 64 << 20


class Opener:
    """Opens operands; keeps the other stores, readers and local files it opened until closed."""

    def __init__(self, client: Client | None) -> None:
        self.client = client
        self._stack = ExitStack()
        self._stores: dict[str, Client] = {}
        self._readers: dict[int, BlockReader] = {}

    def close(self) -> None:
        self._stack.close()

    def _reader(self, client: Client) -> BlockReader:
        """A reader of client's store through its disk cache, with a small memory cache."""
        reader = self._readers.get(id(client))
        if reader is None:
            reader = BlockReader(client.store, client.reader.disk_cache, READER_MEMORY)
            self._readers[id(client)] = reader
            self._stack.callback(reader.close)
        return reader

    def __enter__(self) -> Opener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, text: str) -> Model:
        if not isinstance(text, str) or not text:
            raise InvalidArgumentError(f"{text!r} is not something to compare")
        if is_local(text):
            return self._local(Path(os.path.expanduser(text)))
        if STORE_SEPARATOR in text:
            url, _, address = text.partition(STORE_SEPARATOR)
            if not url or not address:
                raise InvalidArgumentError(
                    f"{text!r}: write STORE_URL::ADDRESS, e.g. s3://bucket/models::bert@2"
                )
            return self._stored(self._store(url), address, prefix=url + STORE_SEPARATOR)
        if self.client is None:
            raise InvalidArgumentError(
                f"{text!r} is an address, but no store is open: give a store, "
                "STORE_URL::ADDRESS, or a local path starting with ./ or /"
            )
        return self._stored(self.client, text)

    def _store(self, url: str) -> Client:
        if url not in self._stores:
            self._stores[url] = self._stack.enter_context(open_store(url))
        return self._stores[url]

    def _local(self, path: Path) -> Model:
        if path.is_file():
            return Model(str(path), False, {"": self._local_file("", path)})
        if path.is_dir():
            files = {
                p.relative_to(path).as_posix(): p
                for p in sorted(path.rglob("*"))
                if p.is_file() and not p.is_symlink()
            }
            return Model(
                str(path), True, {name: self._local_file(name, p) for name, p in files.items()}
            )
        raise NotFoundError(f"no such local file or directory: {path}")

    def _local_file(self, name: str, path: Path) -> ModelFile:
        f = self._stack.enter_context(LocalFile(path))
        return ModelFile(name, f.size, f.read)

    def file_version(self, path: str, version: Version) -> Model:
        """A version of a file in the store, from a ref already read (a series reads its
        ref once, not once per version)."""
        assert self.client is not None
        label = f"{version_address(path, version.version)} {version.content_hash}"
        reader = self._reader(self.client)
        return Model(label, False, {"": _store_file(self.client, reader, "", path, version)})

    def _stored(self, client: Client, address: str, prefix: str = "") -> Model:
        resolved = client.resolve(address)
        label = prefix + resolved.describe()
        reader = self._reader(client)
        if not resolved.is_dir:
            assert resolved.entry is not None
            return Model(
                label, False, {"": _store_file(client, reader, "", resolved.path, resolved.entry)}
            )
        snap = resolved.snapshot
        assert snap is not None

        def one(f) -> ModelFile:  # a ref and a manifest: on the store's request threads
            path = join(snap.path, f.path)
            return _store_file(client, reader, f.path, path, client.store.version(path, f.version))

        files = dict(zip([f.path for f in snap.files], client.store.map_io(one, snap.files),
                         strict=True))  # fmt: skip
        return Model(label, True, files)


def _store_file(
    client: Client, reader: BlockReader, name: str, path: str, version: Version
) -> ModelFile:
    if version.manifest is None:
        raise NotFoundError(f"{version_address(path, version.version)} is a deletion")
    manifest = client.store.load_manifest(version.manifest)

    def read(offset: int, length: int) -> bytes:
        return reader.read(manifest, offset, length, path=path)

    def prefetch(offset: int, length: int) -> None:
        reader.prefetch(manifest, offset, length, path)

    return ModelFile(name, manifest.size, read, manifest, manifest.content_hash, prefetch)


def files_in(model: Model, suffixes: tuple[str, ...]) -> Iterator[ModelFile]:
    for name, f in model.files.items():
        if name.endswith(suffixes):
            yield f
