"""Local staging of writes: where a file lives between open-for-write and commit.

Each file being written has a data file and a small JSON journal beside it
in the staging directory (inside the mount's cache directory). The journal
names the store path, the state and the metadata to commit:

- "open": being written. After a crash its data is a partial write: the next
  mount keeps it, moved to recovered/, and logs where, but never commits it.
- "closed": every writer closed it (or fsync asked for it), and it is due to
  be committed. After a crash or a failed upload the next mount (or `modelfs
  sync`) commits it.
- "committed": committed, and only kept while handles are still open. After
  a crash it is dropped (committing it again would add a second version).

The journal is written (and fsynced) before the state it describes is
relied on: a file goes back to "open" before a change after its commit, so
a crash never loses a closed file's data and never commits a partial one.

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
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelfsError
from ..store import Store, Version
from ..store.metrics import Value, parse_value
from ..store.store import KnownBlocks

log = logging.getLogger(__name__)

# The file's mode travels in the staged metadata under this key; it is committed
# as the version's mode, not as metadata.
MODE_KEY = "modelfs.mode"
# Metrics set while the file is written travel under this prefix (their values as text);
# they are recorded with the version the commit makes, not kept as metadata.
METRIC_KEY_PREFIX = "modelfs.metric."


# Where the file is in its life; see the module docstring.
OPEN, CLOSED, COMMITTED = "open", "closed", "committed"


@dataclass
class StagedFile:
    """A file being written: its local data and what to commit it as."""

    path: str  # "" once unlinked: it is then never committed
    data_path: Path
    journal_path: Path
    metadata: dict[str, str] = field(default_factory=dict)
    state: str = OPEN
    fd: int = -1
    # The journal is written from worker threads (mark_closed runs beside the upload).
    _journal_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def commit_to(self, store: Store, known: KnownBlocks | None = None) -> Version:
        """Store the staged data as the next version of its path (blocking: run in a thread;
        known: its first blocks, uploaded while it was written)."""
        metadata = {
            k: v
            for k, v in self.metadata.items()
            if k != MODE_KEY and not k.startswith(METRIC_KEY_PREFIX)
        }
        mode = int(self.metadata.get(MODE_KEY, 0))
        metrics = staged_metrics(self.metadata)
        result = store.put(
            self.path, self.data_path, metadata=metadata, mode=mode, metrics=metrics or None,
            known=known,
        )  # fmt: skip
        return store.version(self.path, result.version)

    def pread(self, offset: int, length: int) -> bytes:
        """The staged bytes (a RandomAccess for the early uploader)."""
        return os.pread(self.fd, length, offset)

    def write_journal(self, state: str | None = None, *, durable: bool = True) -> None:
        """Record the path, metadata and state (this one, if given) in the journal."""
        with self._journal_lock:
            if state is not None:
                self.state = state
            tmp = self.journal_path.with_suffix(".tmp")
            with open(tmp, "w") as f:
                doc = {"path": self.path, "state": self.state, "metadata": self.metadata}
                json.dump(doc, f)
                if durable:
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
        staged.write_journal(CLOSED)

    def discard(self, staged: StagedFile) -> None:
        fd, staged.fd = staged.fd, -1  # taken first: a descriptor is closed once, never twice
        if fd >= 0:
            os.close(fd)
        staged.data_path.unlink(missing_ok=True)
        staged.journal_path.unlink(missing_ok=True)

    def recover(self, staged: StagedFile) -> Path:
        """Keep a partial file out of the way, in recovered/, never to be committed."""
        fd, staged.fd = staged.fd, -1
        if fd >= 0:
            os.close(fd)
        return self._move_to_recovered(staged.data_path, staged.journal_path, staged.path)

    def _move_to_recovered(self, data: Path, journal: Path, path: str) -> Path:
        self.recovered.mkdir(exist_ok=True)
        target = self.recovered / _recovered_name(journal.stem, path)
        shutil.move(str(data), target)
        journal.unlink(missing_ok=True)
        return target

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
            if not data.exists() or not path or state == COMMITTED:
                # Gone, unlinked before it was committed, or committed already.
                data.unlink(missing_ok=True)
                journal.unlink(missing_ok=True)
                continue
            if state == CLOSED:
                yield StagedFile(path, data, journal, metadata, CLOSED)
                continue
            target = self._move_to_recovered(data, journal, path)
            log.warning(
                "%s was being written when the last mount stopped; its partial data is kept "
                "in %s and was not committed",
                path, target,
            )  # fmt: skip


def staged_metrics(metadata: dict[str, str]) -> dict[str, Value]:
    """The metrics a staged file's metadata carries, by name."""
    cut = len(METRIC_KEY_PREFIX)
    return {k[cut:]: parse_value(v) for k, v in metadata.items() if k.startswith(METRIC_KEY_PREFIX)}


def _recovered_name(stem: str, path: str) -> str:
    """A file name for a partial write of path: the journal's stem, then as much of the
    path as fits in a name (255 bytes), so a user can tell which file it was."""
    readable = path.replace("/", "_").encode("utf-8", "surrogateescape")
    room = 255 - len(stem) - 1
    return stem + "-" + readable[:room].decode("utf-8", "ignore")


def commit_leftovers(staging: StagingArea, store: Store) -> tuple[list[str], list[str]]:
    """Commit what an earlier mount closed but could not upload: (committed, failed paths).

    Blocking (run it in a thread). Partial writes are moved to recovered/ (see
    StagingArea.leftovers); a file that fails stays staged for the next try.
    """
    committed: list[str] = []
    failed: list[str] = []
    for staged in staging.leftovers():
        try:
            staged.commit_to(store)
        except ModelfsError as e:
            log.error("could not commit staged %s; it stays staged: %s", staged.path, e)
            failed.append(staged.path)
            continue
        log.info("committed %s, staged by an earlier mount", staged.path)
        staging.discard(staged)
        committed.append(staged.path)
    return committed, failed
