"""Addresses: one syntax for a version, everywhere a version is read.

    PATH              the current version (of a file; of a directory, its files as they are now)
    PATH@N            version N of a file, snapshot N of a directory
    PATH@NAME         the version a tag or alias names
    PATH@blake3:HEX   the newest version with that content hash (8 to 64 hex digits, unique)
    PATH@latest       the current version (also how to reach a name holding an '@')
    DIR@SEL/INNER     a file or directory inside a directory's version
    DIR@latest/ADDR   an address inside the live directory DIR

The address ends at the first name holding an '@', and its selector is what
follows the last '@' of that name. What follows a directory version (@N, a
name, @blake3) is a path inside it, taken literally. What follows DIR@latest is
again an address, relative to DIR. So a name holding an '@' is reached with an
explicit selector at every level of the live tree: `weird@name.bin@latest`,
`weird@name.bin@3`, `odd@dir@latest/we@ird.bin@2` (live_address writes them).

resolve() turns an address into a Resolved: an immutable version (the path,
its number and content hash; a directory's snapshot), which output shows so
that a script can pin what it got.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import (
    FormatError,
    InvalidArgumentError,
    InvalidPathError,
    NotFoundError,
)
from .metrics import Value
from .paths import live_address, normalize_path, version_address
from .refs import Ref, Version, load_ref
from .registry import Name, NamesRecord, check_name, load_record
from .snapshots import Snapshot, join, load_snapshot, take_snapshot
from .store import Store

LATEST = "latest"
_HASH_PREFIX = "blake3:"
_HEX = re.compile(r"[0-9a-f]{8,64}")


@dataclass(frozen=True)
class Address:
    text: str
    path: str
    selector: str | None  # None: the current version
    inner: str = ""  # a path inside a directory version

    def __str__(self) -> str:
        return self.text


def parse_address(text: str) -> Address:
    """Split an address (see the module docstring); InvalidArgumentError if it is malformed."""
    if not isinstance(text, str) or not text.strip("/"):
        raise InvalidArgumentError(f"{text!r} is not an address: give a path, PATH@N or PATH@NAME")
    parts = text.strip("/").split("/")
    for i, part in enumerate(parts):
        if "@" not in part:
            continue
        name, _, selector = part.rpartition("@")
        if not name:
            raise InvalidArgumentError(f"{text!r}: nothing before the '@' in {part!r}")
        if not selector:
            raise InvalidArgumentError(
                f"{text!r}: nothing after the '@': write PATH@N, PATH@NAME, PATH@blake3:<hex> "
                "or PATH@latest"
            )
        try:
            path = normalize_path("/".join([*parts[:i], name]))
            inner = normalize_path("/".join(parts[i + 1 :])) if i + 1 < len(parts) else ""
        except InvalidPathError as e:
            raise InvalidArgumentError(f"{text!r}: {e}") from None
        if selector == LATEST and inner:
            # Inside the live directory the rest is an address again, relative to it.
            rest = parse_address(inner)
            return Address(text, join(path, rest.path), rest.selector, rest.inner)
        return Address(text, path, selector, inner)
    try:
        return Address(text, normalize_path(text), None)
    except InvalidPathError as e:
        raise InvalidArgumentError(f"{text!r}: {e}") from None


@dataclass(frozen=True)
class Resolved:
    """An address resolved to one immutable version."""

    address: str
    path: str  # the stored file or directory
    is_dir: bool
    version: int | None  # a file's version or a directory's snapshot; None: a directory now
    content_hash: str
    entry: Version | None = None  # a file's version entry
    snapshot: Snapshot | None = None  # a directory version's files
    via: Name | None = None  # the tag or alias it was reached through
    metrics: dict[str, Value] | None = None

    @property
    def pinned(self) -> str:
        """An address that names this version and nothing else, ever."""
        if self.version is not None:
            return version_address(self.path, self.version)
        return version_address(self.path, self.content_hash)

    def describe(self) -> str:
        via = f" ({self.via.kind} {self.via.name})" if self.via is not None else ""
        if self.version is None:  # its pinned address is its content hash already
            return f"{self.pinned}{via}"
        return f"{self.pinned} {self.content_hash}{via}"


def _file_ref(store: Store, path: str) -> Ref | None:
    try:
        return load_ref(store.backend, path)[0]
    except NotFoundError:
        return None


def _check_hex(address: Address, selector: str) -> str:
    digits = selector[len(_HASH_PREFIX) :]
    if not _HEX.fullmatch(digits):
        raise InvalidArgumentError(
            f"{address}: {selector!r} is not a content hash: write blake3: and 8 to 64 "
            "lower-case hex digits"
        )
    return _HASH_PREFIX + digits


def _one_hash(address: Address, wanted: str, hashes: list[str]) -> str | None:
    matching = sorted({h for h in hashes if h.startswith(wanted)})
    if len(matching) > 1:
        raise InvalidArgumentError(
            f"{address}: {wanted} matches {len(matching)} different contents; give more digits"
        )
    return matching[0] if matching else None


def _file_version(store: Store, address: Address, ref: Ref, v: Version, via: Name | None,
                  record: NamesRecord | None = None) -> Resolved:  # fmt: skip
    if record is None:
        record = load_record(store.backend, ref.path, is_dir=False, damaged_ok=True)
    metrics = record.metrics_of(v.version, v.metrics) if record else dict(v.metrics or {})
    return Resolved(address.text, ref.path, False, v.version, v.content_hash, v, None, via, metrics)


def _dir_snapshot(store: Store, address: Address, record: NamesRecord, number: int,
                  via: Name | None) -> Resolved:  # fmt: skip
    entry = record.snapshot(number, named=via is not None)
    snap = load_snapshot(store, entry.snapshot)
    if snap.content_hash != entry.content_hash or snap.path != record.path:
        raise FormatError(f"snapshot {number} of {record.path} does not hold what its record says")
    metrics = record.metrics_of(number)
    return Resolved(address.text, record.path, True, number, entry.content_hash, None, snap, via,
                    metrics)  # fmt: skip


def _deleted_hint(ref: Ref | None) -> str:
    if ref is None or not ref.versions:
        return ""
    return f" (deleted in version {len(ref.versions)}; its earlier versions are {ref.path}@N)"


def resolve(store: Store, text: str | Address) -> Resolved:
    """The version an address names; NotFoundError or InvalidArgumentError saying why not."""
    address = text if isinstance(text, Address) else parse_address(text)
    resolved = _resolve_path(store, address)
    if not address.inner:
        return resolved
    if not resolved.is_dir or resolved.snapshot is None:
        raise NotFoundError(f"{address}: {resolved.pinned} is a file, not a directory")
    inner, snap = address.inner, resolved.snapshot
    f = snap.file(inner)
    if f is not None:
        ref = _file_ref(store, join(snap.path, inner))
        if ref is None:
            raise FormatError(
                f"{address}: {join(snap.path, inner)} is in the snapshot but has no ref"
            )
        return _file_version(store, address, ref, ref.get(f.version, named=True), resolved.via)
    if snap.is_dir(inner):
        sub = snap.under(inner)
        return Resolved(address.text, sub.path, True, None, sub.content_hash, None, sub,
                        resolved.via)  # fmt: skip
    raise NotFoundError(f"{address}: {resolved.pinned} holds no {inner}")


def _resolve_path(store: Store, address: Address) -> Resolved:
    path, selector = address.path, address.selector
    ref = _file_ref(store, path)
    if selector is None or selector == LATEST:
        if ref is not None and ref.current is not None:
            return _file_version(store, address, ref, ref.current, None)
        if store.is_dir(path):
            snap = take_snapshot(store, path)
            return Resolved(address.text, path, True, None, snap.content_hash, None, snap)
        raise NotFoundError(f"no such file or directory in the store: {path}{_deleted_hint(ref)}")
    if selector.isdigit():
        number = int(selector)
        if ref is not None:
            return _file_version(store, address, ref, ref.get(number), None)
        record = load_record(store.backend, path, is_dir=True)
        if record is not None:
            return _dir_snapshot(store, address, record, number, None)
        raise NotFoundError(_nothing_at(store, path))
    if selector.startswith(_HASH_PREFIX):
        wanted = _check_hex(address, selector)
        if ref is not None:
            live = [v for v in ref.versions if v.readable]
            found = _one_hash(address, wanted, [v.content_hash for v in live])
            if found is not None:
                v = [v for v in live if v.content_hash == found][-1]
                return _file_version(store, address, ref, v, None)
        record = load_record(store.backend, path, is_dir=True)
        if record is not None:
            found = _one_hash(address, wanted, [s.content_hash for s in record.kept_snapshots])
            if found is not None:
                number = [s for s in record.kept_snapshots if s.content_hash == found][-1].version
                return _dir_snapshot(store, address, record, number, None)
        if ref is None and store.is_dir(path):
            snap = take_snapshot(store, path)
            if snap.content_hash.startswith(wanted):
                return Resolved(address.text, path, True, None, snap.content_hash, None, snap)
        raise NotFoundError(f"{address}: no version of {path} has content {wanted}")
    try:
        check_name(selector)
    except InvalidArgumentError:
        raise InvalidArgumentError(
            f"{address}: {selector!r} is neither a version number, a tag or alias name, "
            "blake3:<hex> nor 'latest'" + _literal_hint(store, address)
        ) from None
    records: dict[bool, NamesRecord | None] = {}
    for is_dir in (False, True):  # a file's names first; a directory's only if need be
        record = records[is_dir] = load_record(store.backend, path, is_dir=is_dir)
        name = record.names.get(selector) if record is not None else None
        if name is not None:
            # The target is most often a version of this very path: reuse what was read.
            known = (ref, records[False]) if ref is not None and name.target.path == path else None
            return _target(store, address, name, known)
    names = [n for r in records.values() if r is not None for n in sorted(r.names)]
    have = f" (it has: {', '.join(names)})" if names else ""
    if ref is None and not store.is_dir(path):
        raise NotFoundError(_nothing_at(store, path) + _literal_hint(store, address))
    raise NotFoundError(
        f"{path} has no tag or alias {selector!r}{have}" + _literal_hint(store, address)
    )


def _target(
    store: Store, address: Address, name: Name,
    known: tuple[Ref, NamesRecord | None] | None = None,
) -> Resolved:  # fmt: skip
    t = name.target
    if t.is_dir:
        record = load_record(store.backend, t.path, is_dir=True)
        if record is None:
            raise FormatError(f"{address}: {name.kind} {name.name} names {t}, which has no record")
        resolved = _dir_snapshot(store, address, record, t.version, name)
    else:
        ref, record = known if known is not None else (_file_ref(store, t.path), None)
        if ref is None:
            raise FormatError(f"{address}: {name.kind} {name.name} names {t}, which has no ref")
        resolved = _file_version(store, address, ref, ref.get(t.version, named=True), name, record)
    if resolved.content_hash != t.content_hash:
        raise FormatError(
            f"{address}: {name.kind} {name.name} names {t} with content {t.content_hash}, but "
            f"that version holds {resolved.content_hash}"
        )
    return resolved


def _nothing_at(store: Store, path: str) -> str:
    return f"no such file or directory in the store: {path}"


def _literal_hint(store: Store, address: Address) -> str:
    """If the address, or its part up to the selector, read as a plain path, is a stored
    file or directory: how to reach it."""
    texts = [address.text]
    if address.inner:
        texts.append(address.text.strip("/")[: -len(address.inner) - 1])
    for text in texts:
        try:
            literal = normalize_path(text)
        except InvalidPathError:
            continue
        if _file_ref(store, literal) is not None or store.is_dir(literal):
            return f"; to read the path named {literal!r}, write {live_address(literal)}"
    return ""
