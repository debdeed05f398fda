"""Garbage collection: delete what no retained version, name or snapshot reaches, while
writers go on writing (format 4; docs/FORMAT.md, "Collection", has the argument).

A collection runs in two phases, separated by a grace period longer than any
writer's commit window:

1. **Condemn.** Scan the roots (reachability.py). Whatever is unreachable and older
   than the grace period is condemned: written to a record `gc/condemned/<run>`
   first, then the index objects of its packs are deleted (writers stop
   deduplicating against them), then the record is marked condemned; the grace
   period starts at that write, by the store's clock.
2. **Sweep**, once the grace period has passed: scan the roots again. What is still
   unreachable is deleted; what a writer reached meanwhile is kept. A pack with
   live blocks is either kept whole (its index object put back) or, if enough of it
   is dead, its live blocks are copied into a new pack, a moved/ record says where
   they went, and only then is it deleted: index first, pack after. The record
   goes last, so a collector killed at any point leaves a record that the next
   collection finishes (every step can be done twice).

One collection at a time: `gc/lock`, taken by create-only write and kept fresh by a
heartbeat. A second collector refuses (CollectionInProgressError), unless the
holder is a dead process on this host or its heartbeat is older than LOCK_STALE.

Caveats:
- Writers older than format 4 do not read the records: every process that writes
  the store must run a modelfs that knows format 4 before the first collection.
- A write session (a mount's file being written, uploading early) longer than the
  grace period may see its early blocks condemned; its commit stores them again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import blake3

from ..backends.base import BlobInfo, ByteRange
from ..errors import (
    AlreadyExistsError,
    CollectionInProgressError,
    ConflictError,
    InvalidArgumentError,
    ModelfsError,
    NotFoundError,
)
from .condemned import (
    CONDEMNED,
    CONDEMNED_PREFIX,
    CONDEMNING,
    LOCK_KEY,
    Condemnation,
    condemned_key,
    new_run_id,
)
from .format import (
    COLLECTION_VERSION,
    canonical_json,
    index_key,
    manifest_key,
    moved_key,
    pack_key,
    parse_json,
)
from .packs import decode_table, encode_moved, table_bytes
from .reachability import Roots, find_roots, live_blocks
from .registry import who
from .snapshots import snapshot_key
from .store import Store

log = logging.getLogger(__name__)

DEFAULT_GRACE = 600.0  # seconds: five default commit windows
DEFAULT_REPACK = 0.2  # a pack with at least this fraction of dead bytes is rewritten
# ... and, when it deletes or rewrites anything else, more packs, the most dead first,
# until what stays unreachable is at most this share of all that is unreachable
# (restic's --max-unused, relative to the garbage; only then, so that a gc right after
# a gc has nothing to do).
DEFAULT_MAX_UNUSED = 0.05
LOCK_STALE = 600.0  # a lock not refreshed for this long was left by a collector that died
PROBE_PREFIX = "probe/"


@dataclass
class GcReport:
    """What one collection examined, condemned, deleted and copied (its --json)."""

    run: str = ""
    dry_run: bool = False
    grace: float = DEFAULT_GRACE
    examined: dict[str, int] = field(default_factory=dict)  # packs, pack_bytes, manifests, ...
    live_bytes: int = 0  # stored bytes of blocks the store keeps
    condemned: dict[str, int] = field(default_factory=dict)  # this run's record
    reclaimed: dict[str, int] = field(default_factory=dict)  # deleted: objects and bytes
    rewritten: dict[str, int] = field(default_factory=dict)  # packs copied: old, new, bytes
    kept: dict[str, int] = field(default_factory=dict)  # condemned, then found reachable
    pending: list[str] = field(default_factory=list)  # runs whose grace has not passed
    finished: list[str] = field(default_factory=list)  # runs swept by this collection
    requests: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


# A pack's trailer: 12 bytes, and a table row of about 150 bytes per block (an id, a
# checksum, numbers, a codec). Bounds generous enough that a wholly live pack never
# looks partly dead.
_TRAILER_BOUND = 1024
_ROW_BOUND = 256

_counting = threading.Lock()  # sweeps count from several request threads


def _count(d: dict[str, int], key: str, n: int = 1) -> None:
    if n:
        with _counting:
            d[key] = d.get(key, 0) + n


class CollectionLock:
    """gc/lock: one collection at a time, and a heartbeat that says it is alive."""

    def __init__(self, store: Store, run: str, *, break_lock: bool = False) -> None:
        self.store = store
        self.backend = store.backend
        self.run = run
        self.break_lock = break_lock
        self._etag = ""
        self._stop = threading.Event()
        self._checked = 0.0
        self._beating = threading.Lock()  # held while the heartbeat rewrites the lock
        self._thread: threading.Thread | None = None
        self.failed: BaseException | None = None

    def _body(self) -> bytes:
        return canonical_json({
            "run": self.run, "by": who(), "host": socket.gethostname(), "pid": os.getpid(),
            "pid_space": _pid_space(), "time": time.time(),
        })  # fmt: skip

    def acquire(self) -> None:
        try:
            self._etag = self.backend.put_if_absent(LOCK_KEY, self._body())
        except AlreadyExistsError:
            self._take_over()
        self._thread = threading.Thread(target=self._beat, name="modelfs-gc-lock", daemon=True)
        self._thread.start()

    def _take_over(self) -> None:
        try:
            data, etag = self.backend.get_with_etag(LOCK_KEY)
        except NotFoundError:
            self._etag = self.backend.put_if_absent(LOCK_KEY, self._body())
            return
        holder = parse_json(data, "the collection lock")
        age = server_now(self.store) - self.backend.head(LOCK_KEY).modified
        # The same host, boot and PID namespace: a container that shares the host's name
        # but not its processes cannot tell whether that pid is alive.
        here = (
            holder.get("host") == socket.gethostname() and holder.get("pid_space") == _pid_space()
        )
        dead = here and not _alive(int(holder.get("pid", 0)))
        if not (dead or age > LOCK_STALE or self.break_lock):
            raise CollectionInProgressError(
                f"another collection of {self.backend.url} is running: run {holder.get('run')} "
                f"by {holder.get('by')} (pid {holder.get('pid')} on {holder.get('host')}), "
                f"its lock refreshed {age:.0f} s ago; if it died, its lock goes stale after "
                f"{LOCK_STALE:.0f} s (or pass --break-lock once you are sure)"
            )
        why = "its process is gone" if dead else f"not refreshed for {age:.0f} s"
        log.warning("taking over the collection lock of run %s (%s)", holder.get("run"), why)
        try:
            self._etag = self.backend.put_if_match(LOCK_KEY, self._body(), etag)
        except ConflictError:
            raise CollectionInProgressError(
                f"another collection of {self.backend.url} took the lock just now"
            ) from None

    def _beat(self) -> None:
        interval = min(30.0, max(0.2, self.store.config.commit_window / 4))
        while not self._stop.wait(interval):
            try:
                with self._beating:
                    self._etag = self.backend.put_if_match(LOCK_KEY, self._body(), self._etag)
            except ModelfsError as e:
                self.failed = e
                log.error("lost the collection lock: %s", e)
                return

    def check(self) -> None:
        """Refuse to go on if the lock is no longer ours (another collector took it): read
        afresh before each batch of deletes, at most once a second."""
        now = time.monotonic()
        if self.failed is None and now - self._checked >= 1.0:
            self._checked = now
            try:
                with self._beating:  # not while the heartbeat changes it
                    _, etag = self.backend.get_with_etag(LOCK_KEY)
                    if etag != self._etag:
                        self.failed = ConflictError("another collector replaced gc/lock")
            except NotFoundError:
                self.failed = ConflictError("gc/lock was removed")
        if self.failed is not None:
            raise CollectionInProgressError(
                f"the collection lock was lost ({self.failed}); stopping before deleting more"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.failed is None:
            try:
                # Only the lock as this collector last wrote it: one taken over since (stale,
                # --break-lock) belongs to its new holder, whose collection may be running.
                data, etag = self.backend.get_with_etag(LOCK_KEY)
                if etag == self._etag:
                    self.backend.delete(LOCK_KEY)
                else:
                    holder = parse_json(data, "the collection lock")
                    log.warning("the collection lock was taken over by run %s; left to it",
                                holder.get("run"))  # fmt: skip
            except NotFoundError:
                pass
            except ModelfsError as e:
                log.warning("could not remove the collection lock: %s", e)


def _pid_space() -> str:
    """This boot and PID namespace, so that a pid in a lock means the same process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def server_now(store: Store) -> float:
    """The store's clock: the time the backend gives an object written now. Grace
    periods are measured with it, against the times it gave earlier objects."""
    key = f"{PROBE_PREFIX}clock-{os.urandom(8).hex()}"
    store.backend.put(key, b"")
    try:
        return store.backend.head(key).modified
    finally:
        store.backend.delete(key)


@dataclass
class _Listing:
    packs: dict[str, BlobInfo]
    indexed: set[str]
    manifests: dict[str, BlobInfo]
    snapshots: dict[str, BlobInfo]
    moved: dict[str, BlobInfo]
    probes: dict[str, BlobInfo]


def _list(store: Store) -> _Listing:
    b = store.backend

    def by_id(prefix: str) -> dict[str, BlobInfo]:
        return {i.key.rsplit("/", 1)[-1]: i for i in b.list_info(prefix)}

    return _Listing(
        packs=by_id("packs/"),
        indexed={k.rsplit("/", 1)[-1] for k in b.list("index/")},
        manifests=by_id("manifests/"),
        snapshots=by_id("snapshots/"),
        moved=by_id("moved/"),
        probes={i.key: i for i in b.list_info(PROBE_PREFIX)},
    )


class Collector:
    """One `modelfs gc`: finish what earlier collections condemned once their grace has
    passed, condemn what is unreachable now, and (wait) sweep it after the grace."""

    def __init__(
        self,
        store: Store,
        *,
        grace: float = DEFAULT_GRACE,
        repack: float = DEFAULT_REPACK,
        max_unused: float = DEFAULT_MAX_UNUSED,
        progress: Callable[[str], None] | None = None,
        break_lock: bool = False,
    ) -> None:
        window = store.config.commit_window
        if grace < 2 * window:
            raise InvalidArgumentError(
                f"a grace period of {grace:g} s is too short: writers of this store may take "
                f"up to its commit window ({window:g} s) to make what they checked visible, "
                f"so the grace must be at least twice that ({2 * window:g} s)"
            )
        if not 0 < repack <= 1:
            raise InvalidArgumentError(f"--repack {repack} must be in (0, 1]")
        if not 0 <= max_unused <= 1:
            raise InvalidArgumentError(f"--max-unused {max_unused} must be in [0, 1]")
        self.store = store
        self.grace = grace
        self.repack = repack
        self.max_unused = max_unused
        self.progress = progress or (lambda _: None)
        self.break_lock = break_lock

    # the whole run

    def run(self, *, dry_run: bool = False, wait: bool = True) -> GcReport:
        started = time.monotonic()
        before = dict(self.store.backend.request_counts())
        report = GcReport(run=new_run_id(), dry_run=dry_run, grace=self.grace)
        if dry_run:
            self._condemn(report, dry_run=True)
        else:
            self.store.require_version(COLLECTION_VERSION, "collecting garbage")
            lock = CollectionLock(self.store, report.run, break_lock=self.break_lock)
            lock.acquire()
            try:
                waiting = self._finish_earlier(report, lock)
                record = self._condemn(report, dry_run=False, lock=lock)
                if record is not None:
                    waiting.append(record)
                if wait:
                    # Earlier runs whose grace has not passed (one a killed collector
                    # left, say) are finished here too, oldest first.
                    for r in waiting:
                        self._wait_grace(r, lock)
                        self._sweep(r, report, lock)
                        report.finished.append(r.run)
                else:
                    report.pending.extend(r.run for r in waiting)
            finally:
                lock.release()
        after = self.store.backend.request_counts()
        report.requests = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        report.seconds = time.monotonic() - started
        return report

    def _finish_earlier(self, report: GcReport, lock: CollectionLock) -> list[Condemnation]:
        """Sweep the runs an earlier collection condemned whose grace has passed, and
        complete one that died while condemning. Returns those still in their grace."""
        waiting: list[Condemnation] = []
        now = server_now(self.store)
        for key in list(self.store.backend.list(CONDEMNED_PREFIX)):
            try:
                data = self.store.backend.get(key)
                info = self.store.backend.head(key)
            except NotFoundError:
                continue
            record = Condemnation.from_bytes(data, key)
            if record.state == CONDEMNING:
                self.progress(f"completing run {record.run}, which stopped while condemning")
                waiting.append(self._mark_condemned(record, lock))
                continue
            if now < info.modified + record.grace + self.store.backend.time_resolution:
                waiting.append(record)
                continue
            self.progress(f"sweeping run {record.run} (condemned {now - info.modified:.0f} s ago)")
            self._sweep(record, report, lock)
            report.finished.append(record.run)
        return waiting

    # phase 1

    def _scan(self, report: GcReport | None):
        self.progress("scanning refs and names")
        roots = find_roots(self.store)
        if roots.unreadable:
            raise ModelfsError(
                "cannot collect: parts of the store do not read, so what they keep is "
                f"unknown ({'; '.join(roots.unreadable[:3])}); run `modelfs fsck --repair`"
            )
        listing = _list(self.store)
        self.progress(f"reading {len(roots.manifests)} manifests")
        live = live_blocks(self.store, roots.manifests, set(listing.packs))
        if live.unreadable:
            raise ModelfsError(
                "cannot collect: manifests that retained versions need do not read "
                f"({'; '.join(live.unreadable[:3])}); run `modelfs fsck`"
            )
        if report is not None:
            report.examined = {
                "refs": roots.refs, "names_records": roots.records, "versions": roots.versions,
                "packs": len(listing.packs),
                "pack_bytes": sum(i.size for i in listing.packs.values()),
                "manifests": len(listing.manifests),
                "manifest_bytes": sum(i.size for i in listing.manifests.values()),
                "snapshots": len(listing.snapshots), "moved": len(listing.moved),
            }  # fmt: skip
            report.live_bytes = live.stored_bytes()
        return roots, listing, live

    def _condemn(
        self, report: GcReport, *, dry_run: bool, lock: CollectionLock | None = None
    ) -> Condemnation | None:
        pending = self._pending_sets()
        roots, listing, live = self._scan(report)
        now = server_now(self.store) if not dry_run else time.time()
        old = now - self.grace - self.store.backend.time_resolution

        def aged(info: BlobInfo) -> bool:
            return info.modified <= old

        dead_packs, rewrite = set(), set()
        partly: dict[str, tuple[int, int]] = {}  # pack -> (dead bytes, block bytes)
        for pack, info in listing.packs.items():
            if pack in pending or not aged(info):
                continue
            live_bytes = live.bytes_in(pack)
            if live_bytes == 0:
                dead_packs.add(pack)
            elif info.size - live_bytes > _TRAILER_BOUND + _ROW_BOUND * len(live.by_pack[pack]):
                # More than its trailer could be: some blocks are dead. (A pack whose every
                # block is live costs no request; a few hundred dead bytes are not worth one.)
                stored = self._stored(pack, info, live_bytes)
                if stored > live_bytes:
                    partly[pack] = (stored - live_bytes, stored)
        rewrite = self._to_rewrite(partly, sum(listing.packs[p].size for p in dead_packs))
        manifests = {
            m for m, i in listing.manifests.items()
            if m not in roots.manifests and m not in pending and aged(i)
        }  # fmt: skip
        snapshots = {
            s for s, i in listing.snapshots.items()
            if s not in roots.snapshots and s not in pending and aged(i)
        }  # fmt: skip
        moved = {
            p for p, i in listing.moved.items()
            if p not in live.moved_used and p not in pending and aged(i)
        }  # fmt: skip
        probes = [k for k, i in listing.probes.items() if aged(i)]
        dead_bytes = sum(listing.packs[p].size for p in dead_packs)
        rewrite_dead = sum(listing.packs[p].size - live.bytes_in(p) for p in rewrite)
        report.condemned = {
            "packs": len(dead_packs), "pack_bytes": dead_bytes, "rewrite_packs": len(rewrite),
            "rewrite_dead_bytes": rewrite_dead,
            "rewrite_live_bytes": sum(live.bytes_in(p) for p in rewrite),
            "manifests": len(manifests),
            "manifest_bytes": sum(listing.manifests[m].size for m in manifests),
            "snapshots": len(snapshots), "moved": len(moved),
        }  # fmt: skip
        if dry_run:
            return None
        assert lock is not None
        for key in probes:  # nothing ever references a probe: left by a crash
            self.store.backend.delete(key)
        if not (dead_packs or rewrite or manifests or snapshots or moved):
            self.progress("nothing to condemn")
            return None
        record = Condemnation(
            run=report.run, state=CONDEMNING, by=who(), time=time.time(), grace=self.grace,
            packs=frozenset(dead_packs), rewrite=frozenset(rewrite),
            manifests=frozenset(manifests), snapshots=frozenset(snapshots),
            moved=frozenset(moved),
        )  # fmt: skip
        lock.check()
        self.store.backend.put_if_absent(condemned_key(record.run), record.to_bytes())
        self.progress(
            f"condemned {len(dead_packs)} packs ({dead_bytes:,} bytes), {len(rewrite)} to "
            f"rewrite, {len(manifests)} manifests"
        )
        return self._mark_condemned(record, lock)

    def _mark_condemned(self, record: Condemnation, lock: CollectionLock) -> Condemnation:
        """Delete the condemned packs' index objects, then start the grace period."""
        lock.check()
        self.store.map_io(self.store.backend.delete, [index_key(p) for p in record.all_packs])
        done = Condemnation(**{**record.__dict__, "state": CONDEMNED})
        key = condemned_key(record.run)
        _, etag = self.store.backend.get_with_etag(key)
        self.store.backend.put_if_match(key, done.to_bytes(), etag)
        return done

    def _pending_sets(self) -> set[str]:
        """Everything earlier runs still hold condemned: not condemned again."""
        out: set[str] = set()
        for key in self.store.backend.list(CONDEMNED_PREFIX):
            with contextlib.suppress(NotFoundError):
                r = Condemnation.from_bytes(self.store.backend.get(key), key)
                out |= r.all_packs | r.manifests | r.snapshots | r.moved
        return out

    def _wait_grace(self, record: Condemnation, lock: CollectionLock) -> None:
        key = condemned_key(record.run)
        since = self.store.backend.head(key).modified
        while True:
            lock.check()
            left = (
                since + record.grace + self.store.backend.time_resolution - server_now(self.store)
            )
            if left <= 0:
                return
            self.progress(f"waiting {left:.0f} s for writes in progress (grace period)")
            time.sleep(min(left + 0.05, 10.0))

    # phase 2

    def _sweep(self, record: Condemnation, report: GcReport, lock: CollectionLock) -> None:
        roots, listing, live = self._scan(None)
        backend = self.store.backend
        lock.check()
        manifests = [m for m in sorted(record.manifests) if m not in roots.manifests]
        manifests = [m for m in manifests if m in listing.manifests]
        _count(report.kept, "manifests", len(record.manifests & set(roots.manifests)))
        self.store.map_io(backend.delete, [manifest_key(m) for m in manifests])
        _count(report.reclaimed, "manifests", len(manifests))
        _count(
            report.reclaimed, "manifest_bytes", sum(listing.manifests[m].size for m in manifests)
        )
        snapshots = [x for x in sorted(record.snapshots) if x not in roots.snapshots]
        snapshots = [x for x in snapshots if x in listing.snapshots]
        _count(report.kept, "snapshots", len(record.snapshots & roots.snapshots))
        self.store.map_io(backend.delete, [snapshot_key(x) for x in snapshots])
        _count(report.reclaimed, "snapshots", len(snapshots))
        lock.check()
        swept = self.store.map_io(
            lambda p: (p, self._sweep_pack(p, record, listing, live, report)),
            sorted(record.all_packs),
        )
        lock.check()
        self._rewrite(record, {p: locs for p, locs in swept if locs}, listing, report)
        # A moved/ record goes only once no kept manifest reaches its pack (rechecked now:
        # a rewrite above may have made new ones that are needed).
        for p in sorted(record.moved):
            if p in live.moved_used:
                _count(report.kept, "moved")
            elif p in listing.moved:
                backend.delete(moved_key(p))
                _count(report.reclaimed, "moved")
        lock.check()
        backend.delete(condemned_key(record.run))

    def _sweep_pack(self, pack, record, listing, live, report) -> list | None:
        """Delete a condemned pack that nothing reaches, or keep it whole if writers reached
        enough of it again; returns its reachable blocks if it is to be rewritten."""
        backend = self.store.backend
        info = listing.packs.get(pack)
        if info is None:
            return None  # deleted by an earlier sweep of this run
        kept = live.by_pack.get(pack, {})
        if not kept:
            # Its index object again first: a writer may have stored the same pack again.
            backend.delete(index_key(pack))
            backend.delete(pack_key(pack))
            _count(report.reclaimed, "packs")
            _count(report.reclaimed, "pack_bytes", info.size)
            return None
        live_bytes = sum(loc.stored_length for loc in kept.values())
        table = self._table(pack, info)
        stored = sum(loc.stored_length for loc in decode_table(table, pack))
        wanted = pack in record.rewrite or stored - live_bytes >= self.repack * stored
        if stored <= live_bytes or not wanted:
            # Reached again by a writer that checked before the condemnation: keep it whole.
            with contextlib.suppress(AlreadyExistsError):
                backend.put_if_absent(index_key(pack), table)
            _count(report.kept, "packs")
            return None
        return list(kept.values())

    def _rewrite(self, record: Condemnation, kept: dict[str, list], listing, report) -> None:
        """Copy the reachable blocks of these packs together into new packs (one nonce per
        run: the same packs if an interrupted sweep is done again), write each old pack's
        moved/ record, then delete its index object and the pack."""
        if not kept:
            return
        backend = self.store.backend
        moves: dict[str, list] = {}
        to_copy = []
        for pack, locs in kept.items():
            existing = self.store.moved(pack)  # an interrupted sweep's, if it covers them
            if existing is not None and all(loc.offset in existing for loc in locs):
                moves[pack] = [(loc.offset, existing[loc.offset]) for loc in locs]
            else:
                to_copy.extend(locs)
        if to_copy:
            nonce = blake3.blake3(f"moved by {record.run}".encode()).hexdigest()
            placed = self.store.copy_blocks(to_copy, nonce=nonce)
            for loc in to_copy:
                moves.setdefault(loc.pack, []).append((loc.offset, placed[(loc.pack, loc.offset)]))
        new_packs = {b.pack for m in moves.values() for _, b in m}
        if new_packs & set(kept):  # cannot happen (the nonce): never delete a copy's home
            raise ModelfsError("rewriting packs gave one of the same packs; nothing deleted")

        def finish(pack: str) -> None:
            with contextlib.suppress(AlreadyExistsError):
                backend.put_if_absent(moved_key(pack), encode_moved(pack, moves[pack]))
            backend.delete(index_key(pack))
            backend.delete(pack_key(pack))

        self.store.map_io(finish, sorted(moves))
        copied = sum(loc.stored_length for locs in kept.values() for loc in locs)
        new_bytes = sum(backend.head(pack_key(p)).size for p in new_packs)
        _count(report.rewritten, "packs", len(moves))
        _count(report.rewritten, "new_packs", len(new_packs))
        _count(report.rewritten, "copied_bytes", copied)
        # What the store holds less: the old packs, less the new ones (trailers and all).
        _count(
            report.reclaimed, "pack_bytes", sum(listing.packs[p].size for p in moves) - new_bytes
        )

    def _to_rewrite(self, partly: dict[str, tuple[int, int]], wholly_dead: int) -> set[str]:
        """Which partly dead packs to rewrite: each at least `repack` dead, and then, if this
        gc deletes or rewrites anything else, the most dead first until what stays
        unreachable is at most `max_unused` of all that is unreachable (a checkpoint series
        leaves many packs a little dead each). Without other work nothing below `repack` is
        rewritten: what an earlier gc left by this rule stays, and a gc right after a gc
        condemns nothing."""
        chosen = {p for p, (dead, stored) in partly.items() if dead >= self.repack * stored}
        if not chosen and not wholly_dead:
            return chosen
        unreachable = wholly_dead + sum(dead for dead, _ in partly.values())
        left = sum(dead for p, (dead, _) in partly.items() if p not in chosen)
        for p, (dead, _stored) in sorted(
            partly.items(), key=lambda kv: (-kv[1][0] / kv[1][1], kv[0])
        ):
            if left <= self.max_unused * unreachable:
                break
            if p not in chosen:
                chosen.add(p)
                left -= dead
        return chosen

    def _stored(self, pack: str, info: BlobInfo, live_bytes: int) -> int:
        """The stored bytes of a pack's blocks (its size less its trailer): by its index
        object where this process loaded it, else from its trailer."""
        stored = self.store.index.stored_in(pack)
        if stored is None:
            stored = sum(loc.stored_length for loc in decode_table(self._table(pack, info), pack))
        return stored

    def _table(self, pack: str, info: BlobInfo) -> bytes:
        """A pack's block table, read from its trailer (two small ranged GETs)."""
        tail = self.store.backend.get(pack_key(pack), ByteRange(max(0, info.size - 12), 12))
        length = struct.unpack_from("<I", tail)[0]
        start = max(0, info.size - 12 - length)
        table = self.store.backend.get(pack_key(pack), ByteRange(start, length))
        return table_bytes(table + tail, pack)


def collect(store: Store, **kwargs) -> GcReport:
    """A whole collection with the defaults (see Collector)."""
    run_kwargs = {k: kwargs.pop(k) for k in ("dry_run", "wait") if k in kwargs}
    return Collector(store, **kwargs).run(**run_kwargs)


def iter_records(store: Store) -> Iterator[Condemnation]:
    for key in store.backend.list(CONDEMNED_PREFIX):
        with contextlib.suppress(NotFoundError):
            yield Condemnation.from_bytes(store.backend.get(key), key)


__all__ = ["Collector", "GcReport", "collect", "DEFAULT_GRACE", "Roots"]
