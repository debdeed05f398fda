"""Naming and measuring versions given by address: tag, alias, metrics, snapshots.

Each operation resolves its address to one immutable version first (a
directory as it is now becomes a numbered snapshot), then changes one names
record by compare-and-swap. The owner of a name is the path the address
names (`checkpoints@best` is an alias of checkpoints/, whatever checkpoint it
points at); its target is a version of the owner or of a path under it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from ..errors import InvalidArgumentError
from .addresses import Address, Resolved, parse_address, resolve
from .condemned import Check
from .format import NAMES_VERSION
from .metrics import Value
from .registry import (
    Event,
    Name,
    NamesRecord,
    SnapshotEntry,
    Target,
    add_snapshot,
    delete_name,
    load_record,
    record_metrics,
    set_name,
)
from .snapshots import join, save_snapshot
from .store import Store


def pin(store: Store, resolved: Resolved, check: Check | None = None) -> Resolved:
    """A resolved version that has a number: a directory as it is now gets a snapshot.
    check: the commit window the resolution started (see condemned.py)."""
    if resolved.version is not None:
        return resolved
    assert resolved.snapshot is not None
    snap = resolved.snapshot
    store.require_version(NAMES_VERSION, f"numbering a snapshot of {snap.path}")
    snapshot_id = save_snapshot(store, snap, check)
    entry = add_snapshot(
        store.backend, snap.path,
        lambda n: SnapshotEntry(n, snapshot_id, snap.content_hash, time.time(),
                                len(snap.files), snap.size),
        deadline=check.deadline(store.config.commit_window) if check is not None else None,
    )  # fmt: skip
    return Resolved(resolved.address, snap.path, True, entry.version, entry.content_hash, None,
                    snap, resolved.via, {})  # fmt: skip


def owner_of(address: Address) -> str:
    return join(address.path, address.inner)


def _target(
    store: Store, address: str, owner: str | None = None, check: Check | None = None
) -> tuple[Address, Resolved, Target]:
    parsed = parse_address(address)
    resolved = pin(store, resolve(store, parsed), check)
    owner = owner_of(parsed) if owner is None else parse_address(owner).path
    if not (resolved.path == owner or resolved.path.startswith(owner + "/")):
        raise InvalidArgumentError(f"{address} resolves to {resolved.pinned}, outside {owner}")
    assert resolved.version is not None
    return parsed, resolved, Target(resolved.path, resolved.version, resolved.content_hash,
                                    resolved.is_dir)  # fmt: skip


def _owner_is_dir(store: Store, owner: str, resolved: Resolved) -> bool:
    return resolved.is_dir or resolved.path != owner


def name_version(
    store: Store, address: str, name: str, *, alias: bool, message: str = "",
    expect: str | None = None, owner: str | None = None,
) -> tuple[Name, Target | None, Resolved]:  # fmt: skip
    """Tag (alias=False) or alias the version an address names; returns the name, the
    target it had before (None if new) and the version it names now. The name belongs to
    the path the address names, or to owner (a directory the version lies under:
    `run@champion` naming run/step-2)."""
    # The version is read, then named: a collection that meanwhile condemns what it
    # holds waits longer than the commit window, so the name must land within it (or
    # be tried again in a new one: nothing is written after the window's end).

    def change(check: Check) -> tuple[Name, Target | None, Resolved]:
        parsed, resolved, target = _target(store, address, owner, check)
        named_by = owner_of(parsed) if owner is None else parse_address(owner).path
        expected = None
        if expect is not None:
            _, _, expected = _target(store, expect)
        store.require_version(NAMES_VERSION, f"naming {resolved.pinned}")
        named, before = set_name(
            store.backend, named_by, _owner_is_dir(store, named_by, resolved), name, target,
            alias=alias, message=message, expect=expected,
            deadline=check.deadline(store.config.commit_window),
        )  # fmt: skip
        return named, before, resolved

    return store.within_commit_window(f"name {address} {name!r}", change)


def unname(store: Store, path: str, name: str, *, alias: bool, message: str = "") -> Target:
    """Remove a tag or alias of path (file or directory)."""
    owner = parse_address(path).path
    for is_dir in (False, True):
        record = load_record(store.backend, owner, is_dir=is_dir)
        if record is not None and name in record.names:
            return delete_name(store.backend, owner, is_dir, name, alias=alias, message=message)
    return delete_name(store.backend, owner, store.is_dir(owner), name, alias=alias,
                       message=message)  # fmt: skip


def names_of(store: Store, path: str) -> list[Name]:
    """The tags and aliases of a path (a file's, or a directory's), sorted by name."""
    owner = parse_address(path).path
    found: list[Name] = []
    for is_dir in (False, True):
        record = load_record(store.backend, owner, is_dir=is_dir)
        if record is not None:
            found += record.names.values()
    return sorted(found, key=lambda n: n.name)


def log_of(store: Store, path: str, name: str | None = None) -> list[Event]:
    """A path's names log (one name's, if given), oldest first."""
    owner = parse_address(path).path
    events: list[Event] = []
    for is_dir in (False, True):
        record = load_record(store.backend, owner, is_dir=is_dir)
        if record is not None:
            events += [e for e in record.log if name is None or e.name == name]
    return sorted(events, key=lambda e: e.time)


def measure(
    store: Store, address: str, metrics: Mapping[str, Value | None], *, message: str = ""
) -> Resolved:
    """Record metrics of the version an address names (None removes one); no new version."""
    check = store.check(index=False)
    parsed, resolved, target = _target(store, address, check=check)
    store.require_version(NAMES_VERSION, f"recording metrics of {resolved.pinned}")
    record: NamesRecord = record_metrics(
        store.backend, target.path, target.is_dir, target.version, metrics, message=message
    )
    recorded = resolved.entry.metrics if resolved.entry is not None else None
    return Resolved(resolved.address, resolved.path, resolved.is_dir, resolved.version,
                    resolved.content_hash, resolved.entry, resolved.snapshot, resolved.via,
                    record.metrics_of(target.version, recorded))  # fmt: skip
