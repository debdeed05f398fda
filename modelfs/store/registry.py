"""Names records: the tags, aliases and later metrics of a path, and a directory's snapshots.

A version has a number; people and programs want names. A **tag** names one
version and never moves (setting it to another version is refused); an
**alias** is a name that moves (champion, production), and every move is
logged: when, by whom, from which version to which, with its message. Both are
kept, with metrics recorded after a version was committed and, for a
directory, the list of its snapshots (numbered 1, 2, 3... as a file's versions
are), in one JSON record per path at meta/<encoded path>~ (a file) or
meta/<encoded dir>/~ (a directory). Selection reads a path's ref and this one
record, whatever the number of versions.

A record changes only by compare-and-swap (cas.update), so two machines moving
one alias at once both land, one after the other, each in the log with the
target it replaced; none is lost. Records are never deleted; a removed name
stays in the log.

A name's target is a version of the record's own path, or, for a directory,
of a path under it (`select checkpoints/ --alias best` names the best
checkpoint file or directory under checkpoints/).
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache

from ..errors import (
    AlreadyExistsError,
    ConflictError,
    ForgottenError,
    FormatError,
    InvalidArgumentError,
    NotFoundError,
)
from . import cas
from .format import canonical_json, is_hex_id, parse_json
from .metrics import Value, check_metrics
from .metrics import check_name as check_metric_name
from .paths import META_PREFIX, names_key, normalize_path, version_address

log = logging.getLogger(__name__)

DAMAGED_PREFIX = "damaged/"  # where fsck --repair sets damaged records aside
REPAIR_HINT = "modelfs fsck --repair sets it aside, losing its names and later metrics"

NAME_MAX = 128
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
RESERVED_NAMES = ("latest",)  # PATH@latest is the current version


def check_name(name: object, kind: str = "tag or alias") -> str:
    """A tag or alias name: letters, digits, '_', '.', '-', starting with a letter or digit,
    not all digits (PATH@3 is version 3), at most 128 characters, not 'latest'."""
    if (
        not isinstance(name, str)
        or not _NAME.fullmatch(name)
        or len(name) > NAME_MAX
        or name.isdigit()
        or name in RESERVED_NAMES
    ):
        raise InvalidArgumentError(
            f"{name!r} is not allowed as a {kind} name: use letters, digits, '_', '.' or '-', "
            f"starting with a letter or digit, not only digits (PATH@3 is version 3) and not "
            f"'latest' (the current version), at most {NAME_MAX} characters"
        )
    return name


@cache
def who() -> str:
    """Who makes a change, for the log: $MODELFS_USER, else user@host."""
    given = os.environ.get("MODELFS_USER")
    if given:
        return given
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Target:
    """A version: of a file (version number) or of a directory (snapshot number)."""

    path: str
    version: int
    content_hash: str
    is_dir: bool = False

    def to_json(self) -> dict:
        doc = {"path": self.path, "version": self.version, "content_hash": self.content_hash}
        return {**doc, "dir": True} if self.is_dir else doc

    @classmethod
    def from_json(cls, doc: Mapping) -> Target:
        path, version = doc["path"], doc["version"]
        if normalize_path(path) != path or not isinstance(version, int) or version < 1:
            raise ValueError(f"target {doc!r} is malformed")
        return cls(path, version, str(doc["content_hash"]), bool(doc.get("dir", False)))

    def __str__(self) -> str:
        return version_address(self.path, self.version)


@dataclass(frozen=True)
class Name:
    name: str
    alias: bool
    target: Target
    time: float
    by: str
    message: str = ""

    @property
    def kind(self) -> str:
        return "alias" if self.alias else "tag"


@dataclass(frozen=True)
class Event:
    """One change of a record: a name set, moved or removed, or metrics recorded."""

    time: float
    by: str
    action: str  # tag, untag, alias, unalias, metrics
    name: str = ""
    before: Target | None = None
    after: Target | None = None
    message: str = ""
    metrics: Mapping[str, Value | None] | None = None  # action "metrics": None removes one

    def to_json(self) -> dict:
        doc: dict = {"time": self.time, "by": self.by, "action": self.action}
        if self.name:
            doc["name"] = self.name
        if self.before is not None:
            doc["from"] = self.before.to_json()
        if self.after is not None:
            doc["to"] = self.after.to_json()
        if self.message:
            doc["message"] = self.message
        if self.metrics is not None:
            doc["metrics"] = dict(self.metrics)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping) -> Event:
        return cls(
            float(doc["time"]), str(doc["by"]), str(doc["action"]), str(doc.get("name", "")),
            Target.from_json(doc["from"]) if "from" in doc else None,
            Target.from_json(doc["to"]) if "to" in doc else None,
            str(doc.get("message", "")), doc.get("metrics"),
        )  # fmt: skip


@dataclass(frozen=True)
class SnapshotEntry:
    """A directory's numbered snapshot: which snapshot object, and what it holds."""

    version: int
    snapshot: str  # the snapshot object's id
    content_hash: str
    time: float
    files: int
    size: int


@dataclass
class NamesRecord:
    path: str
    is_dir: bool
    names: dict[str, Name] = field(default_factory=dict)
    metrics: dict[int, dict[str, Value | None]] = field(default_factory=dict)
    snapshots: list[SnapshotEntry] = field(default_factory=list)
    log: list[Event] = field(default_factory=list)
    # Snapshot numbers a retention rule forgot (format 4): {"time", "by", "rule"} each.
    forgotten: dict[int, dict] = field(default_factory=dict)

    def metrics_of(self, version: int, recorded: Mapping[str, Value] | None = None) -> dict:
        """A version's metrics: those recorded with it, updated by those recorded later."""
        merged = dict(recorded or {})
        for name, value in self.metrics.get(version, {}).items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        return merged

    def snapshot(self, number: int, *, named: bool = False) -> SnapshotEntry:
        """Snapshot number; named: reached through a tag or alias (see Ref.get)."""
        if 1 <= number <= len(self.snapshots):
            if number in self.forgotten and not named:
                f = self.forgotten[number]
                raise ForgottenError(
                    f"snapshot {number} of {self.path} was forgotten ({f.get('rule', 'a rule')}"
                    f", by {f.get('by', '?')})"
                )
            return self.snapshots[number - 1]
        have = f"snapshots 1..{len(self.snapshots)}" if self.snapshots else "no snapshots yet"
        raise NotFoundError(f"directory {self.path} has no snapshot {number} ({have})")

    @property
    def kept_snapshots(self) -> list[SnapshotEntry]:
        """The snapshots not forgotten, oldest first."""
        return [s for s in self.snapshots if s.version not in self.forgotten]

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "path": self.path,
                "dir": self.is_dir,
                "names": {
                    n.name: {
                        "alias": n.alias,
                        "target": n.target.to_json(),
                        "time": n.time,
                        "by": n.by,
                        "message": n.message,
                    }  # fmt: skip
                    for n in self.names.values()
                },
                "metrics": {str(v): m for v, m in self.metrics.items()},
                "snapshots": [
                    [s.version, s.snapshot, s.content_hash, s.time, s.files, s.size]
                    for s in self.snapshots
                ],
                "log": [e.to_json() for e in self.log],
                **(
                    {"forgotten": {str(n): f for n, f in self.forgotten.items()}}
                    if self.forgotten
                    else {}
                ),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, key: str) -> NamesRecord:
        try:
            return cls._parse(data, key)
        except FormatError as e:
            raise FormatError(f"{e} ({REPAIR_HINT})") from None

    @classmethod
    def _parse(cls, data: bytes, key: str) -> NamesRecord:
        what = f"names record {key}"
        doc = parse_json(data, what)
        try:
            path, is_dir = doc["path"], doc["dir"]
            if not isinstance(is_dir, bool) or names_key(path, is_dir=is_dir) != key:
                raise ValueError(f"it names {path!r}, whose key is not {key!r}")
            what = f"names record of {path}"
            names = {}
            for name, n in doc["names"].items():
                check_name(name)
                target = Target.from_json(n["target"])
                names[name] = Name(name, bool(n["alias"]), target, float(n["time"]),
                                   str(n["by"]), str(n["message"]))  # fmt: skip
            metrics = {}
            for number, values in doc["metrics"].items():
                check_metrics({k: v for k, v in values.items() if v is not None})
                metrics[int(number)] = dict(values)
            snapshots = [SnapshotEntry(int(v), s, h, float(t), int(f), int(z))
                         for v, s, h, t, f, z in doc["snapshots"]]  # fmt: skip
            for i, s in enumerate(snapshots, 1):
                if s.version != i or not is_hex_id(s.snapshot):
                    raise ValueError(f"snapshot entry {i} is malformed")
            log = [Event.from_json(e) for e in doc["log"]]
            forgotten = {int(n): dict(f) for n, f in doc.get("forgotten", {}).items()}
            if any(not 1 <= n <= len(snapshots) for n in forgotten):
                raise ValueError("it forgets a snapshot it does not have")
            return cls(path, is_dir, names, metrics, snapshots, log, forgotten)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise FormatError(f"{what} is malformed: {e}") from None


def load_record(
    backend, path: str, *, is_dir: bool, damaged_ok: bool = False
) -> NamesRecord | None:
    """A path's names record, or None if nothing was ever named or measured there.

    damaged_ok: where names and later metrics only decorate what is read (the bytes of
    a version, its log, its xattrs), a damaged record is reported, not fatal: the
    version is still readable. Whatever decides by names or metrics (resolving a name,
    selecting, changing the record) reads it strictly.
    """
    key = names_key(path, is_dir=is_dir)
    limit = backend.max_key_bytes
    if limit is not None and len(key) > limit:
        return None
    try:
        data = backend.get(key)
    except NotFoundError:
        return None
    return parse_record(data, key, damaged_ok=damaged_ok)


def set_aside(backend, key: str, data: bytes) -> str | None:
    """Move a damaged names record out of the way, so that its path can be named and
    measured again: its bytes are copied under damaged/ first, then the record is removed,
    unless it changed meanwhile. Returns where the bytes went (None: not removed)."""
    aside = f"{DAMAGED_PREFIX}{key}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    backend.put(aside, data)
    try:
        if backend.get(key) != data:
            return None  # repaired or rewritten by someone else: theirs stands
    except NotFoundError:
        return None
    backend.delete(key)
    return aside


def parse_record(data: bytes, key: str, *, damaged_ok: bool = False) -> NamesRecord | None:
    """A names record read from key (None if damaged and damaged_ok: see load_record)."""
    try:
        return NamesRecord.from_bytes(data, key)
    except FormatError as e:
        if not damaged_ok:
            raise
        log.warning("its names and later metrics are not shown: %s", e)
        return None


def update_record(
    backend,
    path: str,
    is_dir: bool,
    change: Callable[[NamesRecord], bool],
    *,
    deadline: float | None = None,
) -> NamesRecord:
    """Apply change to the path's record by compare-and-swap (change returns False to write
    nothing; it may raise to refuse, and is called again if another writer got there first).
    Returns the record as written (or as found, if nothing changed)."""
    key = names_key(path, is_dir=is_dir)
    result: list[NamesRecord] = []

    def apply(data: bytes | None) -> bytes | None:
        record = (
            NamesRecord.from_bytes(data, key)
            if data is not None
            else NamesRecord(normalize_path(path), is_dir)
        )
        changed = change(record)
        result[:] = [record]
        return record.to_bytes() if changed else None

    cas.update(backend, key, apply, f"change the names record of {path}", deadline=deadline)
    return result[0]


def set_name(
    backend,
    owner: str,
    owner_is_dir: bool,
    name: str,
    target: Target,
    *,
    alias: bool,
    message: str = "",
    expect: Target | None = None,
    deadline: float | None = None,
) -> tuple[Name, Target | None]:
    """Point a tag or alias of owner at target. A tag that exists is refused unless it
    already names target (then nothing changes); an alias moves, and with expect given it
    moves only if it still names expect (ConflictError otherwise). Returns the name and
    the target it had before (None if it is new)."""
    check_name(name)
    kind = "alias" if alias else "tag"
    before: list[Target | None] = [None]

    def change(record: NamesRecord) -> bool:
        old = record.names.get(name)
        before[0] = old.target if old is not None else None
        if old is not None and old.alias != alias:
            raise AlreadyExistsError(
                f"{owner}@{name} is a{'n alias' if old.alias else ' tag'}, not a{'n alias' if alias else ' tag'}: "
                f"remove it first (modelfs {'alias rm' if old.alias else 'untag'})"
            )
        if expect is not None and (old is None or old.target != expect):
            raise ConflictError(
                f"alias {owner}@{name} names {old.target if old else 'nothing'}, not {expect}: "
                "it was moved meanwhile; nothing changed"
            )
        if old is not None and old.target == target:
            return False  # already so: setting it again is not a change
        if old is not None and not alias:
            raise AlreadyExistsError(
                f"tag {owner}@{name} already names {old.target} ({old.target.content_hash}); "
                "a tag never moves: use an alias for a name that moves, or another tag name"
            )
        now = time.time()
        record.names[name] = Name(name, alias, target, now, who(), message)
        record.log.append(Event(now, who(), kind, name, before[0], target, message))
        return True

    record = update_record(backend, owner, owner_is_dir, change, deadline=deadline)
    return record.names[name], before[0]


def delete_name(
    backend, owner: str, owner_is_dir: bool, name: str, *, alias: bool, message: str = ""
) -> Target:
    """Remove a tag or alias (logged); NotFoundError if owner has none by that name."""
    kind = "alias" if alias else "tag"
    removed: list[Target] = []

    def change(record: NamesRecord) -> bool:
        old = record.names.get(name)
        if old is None or old.alias != alias:
            raise NotFoundError(f"{owner} has no {kind} {name!r}" + _known(record, alias))
        del record.names[name]
        record.log.append(Event(time.time(), who(), "un" + kind, name, old.target, None, message))
        removed[:] = [old.target]
        return True

    update_record(backend, owner, owner_is_dir, change)
    return removed[0]


def record_metrics(
    backend,
    path: str,
    is_dir: bool,
    version: int,
    metrics: Mapping[str, Value | None],
    *,
    message: str = "",
) -> NamesRecord:
    """Record metrics of one version after its commit (None removes one); no new version."""
    values = check_metrics({k: v for k, v in metrics.items() if v is not None})
    removed = {check_metric_name(k): None for k, v in metrics.items() if v is None}
    change_set = {**values, **removed}
    if not change_set:
        raise InvalidArgumentError("no metrics given")

    def change(record: NamesRecord) -> bool:
        record.metrics.setdefault(version, {}).update(change_set)
        measured = Target(normalize_path(path), version, "", is_dir)
        record.log.append(
            Event(time.time(), who(), "metrics", "", None, measured, message, change_set)
        )
        return True

    return update_record(backend, path, is_dir, change)


def add_snapshot(
    backend,
    directory: str,
    entry_for: Callable[[int], SnapshotEntry],
    *,
    deadline: float | None = None,
) -> SnapshotEntry:
    """Number a snapshot of directory (the next number, or the number of the newest one if
    it is the same snapshot object) and return its entry."""
    got: list[SnapshotEntry] = []

    def change(record: NamesRecord) -> bool:
        entry = entry_for(len(record.snapshots) + 1)
        if record.snapshots and record.snapshots[-1].snapshot == entry.snapshot:
            got[:] = [record.snapshots[-1]]
            return False
        record.snapshots.append(entry)
        got[:] = [entry]
        return True

    update_record(backend, directory, True, change, deadline=deadline)
    return got[0]


def _known(record: NamesRecord, alias: bool) -> str:
    names = sorted(n.name for n in record.names.values() if n.alias == alias)
    return f" (it has: {', '.join(names)})" if names else ""


def is_names_key(key: str) -> bool:
    return key.startswith(META_PREFIX) and key.endswith("~")
