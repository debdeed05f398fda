"""Local staging of writes: where a file lives between open-for-write and commit.

Each file being written has a data file and a small JSON journal beside it
in the staging directory (inside the mount's cache directory). The journal
names the store path, the state and the metadata to commit:

- "open": being written. After a crash its data is a partial write: the next
  mount keeps it, moved to recovered/, and logs where, but never commits it.
- "closed": closed by the application and due to be committed. After a crash
  or a failed upload the next mount (or `modelfs sync`) commits it.

The journal is written (and fsynced) before the state it describes is
relied on, so a crash never loses a closed file's data.

Caveats:
- One mount at a time may use a staging directory; the lock file enforces it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelfsError
from ..store import Manifest, Store, Version
from ..store.early import EarlyUploader

log = logging.getLogger(__name__)

# The file's mode travels in the staged metadata under this key; it is committed
# as the version's mode, not as metadata.
MODE_KEY = "modelfs.mode"


@dataclass
class StagedFile:
    """A file being written: its local data and what to commit it as."""

    path: str
    data_path: Path
    journal_path: Path
    metadata: dict[str, str] = field(default_factory=dict)
    state: str = "open"
    fd: int = -1
    dirty: bool = False
    handles: int = 0
    # The committed content this file starts from, not yet copied in: opening a
    # large model for writing (as `touch` does) copies nothing until a byte changes.
    base: Manifest | None = None
    # Uploading blocks while the file is written front to back (None: not this file).
    early: EarlyUploader | None = None
    early_task: Future[None] | None = None
    written_end: int = 0  # the writes so far cover [0, written_end) in order
    # The journal is written from worker threads (mark_closed runs beside the upload).
    _journal_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def size(self) -> int:
        return self.base.size if self.base is not None else os.fstat(self.fd).st_size

    def commit_to(self, store: Store) -> Version:
        """Store the staged data as the next version of its path (blocking: run in a thread)."""
        metadata = {k: v for k, v in self.metadata.items() if k != MODE_KEY}
        mode = int(self.metadata.get(MODE_KEY, 0))
        store.put(self.path, self.data_path, metadata=metadata, mode=mode)
        return store.version(self.path)

    def pread(self, offset: int, length: int) -> bytes:
        """The staged bytes (a RandomAccess for the early uploader)."""
        return os.pread(self.fd, length, offset)

    def write_journal(self) -> None:
        with self._journal_lock:
            tmp = self.journal_path.with_suffix(".tmp")
            with open(tmp, "w") as f:
                doc = {"path": self.path, "state": self.state, "metadata": self.metadata}
                json.dump(doc, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.journal_path)


class StagingArea:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.recovered = directory.parent / "recovered"
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(directory / "lock", "a")  # noqa: SIM115 - held for the mount's life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise ModelfsError(
                f"the staging directory {directory} is in use by another mount: "
                "give each mount its own --cache-dir"
            ) from None

    def close(self) -> None:
        self._lock_file.close()

    def create(self, path: str, metadata: dict[str, str]) -> StagedFile:
        name = uuid.uuid4().hex
        staged = StagedFile(
            path, self.directory / f"{name}.data", self.directory / f"{name}.json", dict(metadata)
        )
        staged.fd = os.open(staged.data_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        staged.write_journal()
        return staged

    def mark_closed(self, staged: StagedFile) -> None:
        """Make the data durable and record that it is complete and due to be committed."""
        os.fsync(staged.fd)
        staged.state = "closed"
        staged.write_journal()

    def discard(self, staged: StagedFile) -> None:
        if staged.fd >= 0:
            os.close(staged.fd)
            staged.fd = -1
        staged.data_path.unlink(missing_ok=True)
        staged.journal_path.unlink(missing_ok=True)

    def leftovers(self) -> Iterator[StagedFile]:
        """Files staged by an earlier mount that never finished: closed ones to commit.

        Partial writes (state "open") are moved to recovered/ and logged, not returned.
        """
        for journal in sorted(self.directory.glob("*.json")):
            data = journal.with_suffix(".data")
            try:
                doc = json.loads(journal.read_text())
                path, state, metadata = doc["path"], doc["state"], dict(doc.get("metadata", {}))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("ignoring unreadable staging journal %s: %s", journal, e)
                continue
            if not data.exists() or not path:  # gone, or unlinked before it was committed
                data.unlink(missing_ok=True)
                journal.unlink(missing_ok=True)
                continue
            if state == "closed":
                yield StagedFile(path, data, journal, metadata, "closed")
                continue
            self.recovered.mkdir(exist_ok=True)
            target = self.recovered / (journal.stem + "-" + path.replace("/", "_"))
            shutil.move(str(data), target)
            journal.unlink(missing_ok=True)
            log.warning(
                "%s was being written when the last mount stopped; its partial data is kept "
                "in %s and was not committed",
                path, target,
            )  # fmt: skip
