"""What the store keeps: every object a retained version, a name or a snapshot reaches.

The roots are the refs and the names records. A ref entry keeps its manifest unless
it was forgotten; a forgotten entry is kept all the same while a tag or alias names
it (a name set as the version was being forgotten wins). A directory's snapshots are
kept unless forgotten (the same exception), and each keeps the manifests it lists.
A manifest keeps each block it lists, at the place it names: a pack, or, where a
collection rewrote that pack, the place its moved/ record gives. A store whose refs
or names records do not all read cannot be collected: what they hold is unknown.

One scan reads every ref and names record (LIST and GET), every snapshot object and
every manifest they keep (each once); nothing reads packs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ModelfsError, NotFoundError
from .manifest import Manifest
from .packs import MAX_MOVES, BlockLocation
from .paths import META_PREFIX, REFS_PREFIX, is_file_ref_key
from .registry import NamesRecord, is_names_key
from .snapshots import load_snapshot
from .store import Store

log = logging.getLogger(__name__)

CURRENT = "current"  # a manifest some path's current version has
HISTORY = "history"  # kept only by older versions, names or snapshots


@dataclass
class Roots:
    """Which manifests and snapshot objects the store keeps, found by one scan."""

    manifests: dict[str, str] = field(default_factory=dict)  # id -> CURRENT or HISTORY
    snapshots: set[str] = field(default_factory=set)
    # Forgotten versions not kept by a name: (path, version) -> manifest id.
    forgotten: dict[tuple[str, int], str] = field(default_factory=dict)
    refs: int = 0
    records: int = 0
    versions: int = 0  # retained file versions (with content)
    unreadable: list[str] = field(default_factory=list)  # refs or records that did not read

    def keep(self, manifest_id: str, kind: str) -> None:
        if self.manifests.get(manifest_id) != CURRENT:
            self.manifests[manifest_id] = kind


def find_roots(
    store: Store,
    *,
    progress: Callable[[str], None] | None = None,
    exclude_versions: set[tuple[str, int]] | frozenset = frozenset(),
    exclude_snapshots: set[tuple[str, int]] | frozenset = frozenset(),
) -> Roots:
    """Scan every ref and names record (see the module docstring). exclude_*: (path,
    number) taken as forgotten too, to see what forgetting them would free."""
    roots = Roots()
    backend = store.backend
    records: list[NamesRecord] = []
    named_files: set[tuple[str, int]] = set()
    named_snaps: set[tuple[str, int]] = set()

    def read_record(key: str) -> NamesRecord | str | None:
        try:
            return NamesRecord.from_bytes(backend.get(key), key)
        except NotFoundError:
            return None
        except ModelfsError as e:
            return str(e)

    for got in store.map_io(read_record, [k for k in backend.list(META_PREFIX) if is_names_key(k)]):
        if isinstance(got, str):
            roots.unreadable.append(got)
        elif got is not None:
            records.append(got)
            for name in got.names.values():
                t = name.target
                (named_snaps if t.is_dir else named_files).add((t.path, t.version))
    roots.records = len(records)
    if progress:
        progress(f"{len(records)} names records")

    def read_ref(key: str):
        try:
            return store._ref_at(key)
        except ModelfsError as e:
            return str(e)

    ref_keys = [k for k in backend.list(REFS_PREFIX) if is_file_ref_key(k)]
    for ref in store.map_io(read_ref, ref_keys):
        if isinstance(ref, str):
            roots.unreadable.append(ref)
            continue
        if ref is None:
            continue  # removed since the listing (refs are not removed; a test may)
        roots.refs += 1
        current = ref.current
        for v in ref.versions:
            if v.manifest is None:
                continue
            forgotten = v.forgotten or (ref.path, v.version) in exclude_versions
            if forgotten and (ref.path, v.version) not in named_files:
                roots.forgotten[(ref.path, v.version)] = v.manifest
                continue
            roots.versions += 1
            roots.keep(v.manifest, CURRENT if v is current else HISTORY)
    if progress:
        progress(f"{roots.refs} refs")

    wanted: list[str] = []
    for record in records:
        for entry in record.snapshots:
            gone = (
                entry.version in record.forgotten
                or (record.path, entry.version) in exclude_snapshots
            )
            if gone and (record.path, entry.version) not in named_snaps:
                continue
            wanted.append(entry.snapshot)
    roots.snapshots = set(wanted)

    def read_snapshot(snapshot_id: str):
        try:
            return load_snapshot(store, snapshot_id)
        except ModelfsError as e:
            return str(e)

    for snap in store.map_io(read_snapshot, sorted(roots.snapshots)):
        if isinstance(snap, str):
            roots.unreadable.append(snap)
            continue
        for f in snap.files:
            roots.keep(f.manifest, HISTORY)
    return roots


@dataclass
class LiveBlocks:
    """The stored blocks the kept manifests reach, by pack and offset in the pack."""

    by_pack: dict[str, dict[int, BlockLocation]] = field(default_factory=dict)
    current: set[tuple[str, int]] = field(default_factory=set)  # reached by a current version
    moved_used: set[str] = field(default_factory=set)  # rewritten packs whose moved/ is needed
    manifests_read: int = 0
    unreadable: list[str] = field(default_factory=list)  # manifests that did not read

    def stored_bytes(self) -> int:
        return sum(loc.stored_length for locs in self.by_pack.values() for loc in locs.values())

    def bytes_in(self, pack: str) -> int:
        return sum(loc.stored_length for loc in self.by_pack.get(pack, {}).values())


def live_blocks(
    store: Store,
    manifests: dict[str, str],
    existing_packs: set[str],
    *,
    progress: Callable[[int], None] | None = None,
) -> LiveBlocks:
    """Every block the manifests reach, placed where it is now: a block in a pack that
    is gone is followed through its moved/ record (and the record counts as needed)."""
    live = LiveBlocks()

    def read(manifest_id: str) -> Manifest | str:
        try:
            return store.load_manifest(manifest_id)
        except ModelfsError as e:
            return f"manifest {manifest_id}: {e}"

    ids = sorted(manifests)
    for manifest_id, manifest in zip(ids, store.map_io(read, ids), strict=True):
        live.manifests_read += 1
        if progress:
            progress(1)
        if isinstance(manifest, str):
            live.unreadable.append(manifest)
            continue
        current = manifests[manifest_id] == CURRENT
        for b in manifest.blocks:
            loc = _placed(store, b.location, existing_packs, live)
            if loc is None:
                continue  # missing: damage, which fsck reports; nothing to keep
            live.by_pack.setdefault(loc.pack, {})[loc.offset] = loc
            if current:
                live.current.add((loc.pack, loc.offset))
    return live


def _placed(
    store: Store, loc: BlockLocation, existing: set[str], live: LiveBlocks
) -> BlockLocation | None:
    for _ in range(MAX_MOVES):
        if loc.pack in existing:
            return loc
        moved = store.moved(loc.pack)
        if moved is None:
            return None
        live.moved_used.add(loc.pack)
        target = moved.get(loc.offset)
        if target is None or target.block_id != loc.block_id:
            return None
        loc = target
    return loc if loc.pack in existing else None


def space(store: Store) -> dict[str, int]:
    """Where the stored bytes are: kept by current versions, kept only by older versions
    (and names and snapshots), and reachable by nothing (what a collection reclaims, once
    its grace period has passed)."""
    roots = find_roots(store)
    packs = {i.key.rsplit("/", 1)[-1]: i.size for i in store.backend.list_info("packs/")}
    live = live_blocks(store, roots.manifests, set(packs))
    current = sum(live.by_pack[p][o].stored_length for p, o in live.current)
    kept = live.stored_bytes()
    store.refresh_index()
    reclaimable = 0
    for pack, size in packs.items():
        used = live.bytes_in(pack)
        blocks = store.index.stored_in(pack)
        if used == 0:
            reclaimable += size  # the whole pack goes, trailer and all
        else:  # a rewrite keeps the live blocks (and writes a new trailer)
            reclaimable += max(0, (blocks if blocks is not None else size) - used)
    return {
        "pack_bytes": sum(packs.values()),
        "live_bytes": current,
        "history_only_bytes": kept - current,
        "reclaimable_bytes": reclaimable,
        "forgotten_versions": len(roots.forgotten),
        "unreadable": len(roots.unreadable) + len(live.unreadable),
    }
