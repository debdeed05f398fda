"""Retention: `modelfs forget` removes versions from their histories by rule (format 4).

A policy keeps, for each file under the target (and each directory's snapshots):
the N newest versions, those committed within a duration, the K best by a metric.
Whatever the policy, a version is always kept if it is its path's current version
(unless the path is deleted), if a tag or alias names it, if an alias named it
within the alias-history window (so a rollback still works), or if a kept
directory snapshot holds it. Forgetting marks the ref entry (compare-and-swap,
like every ref change) with who, when and by which rule; the entry keeps its
number and its manifest id, so numbers are never reused and a name set at that
very moment still finds its content. Nothing is deleted here: `modelfs gc`
collects what no kept version reaches. Each forget is also logged whole under
gc/forgets/.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass, field

from ..errors import InvalidArgumentError, NotFoundError
from . import cas
from .condemned import FORGETS_PREFIX
from .format import COLLECTION_VERSION, canonical_json
from .metrics import check_name as check_metric_name
from .paths import META_PREFIX, REFS_PREFIX, is_file_ref_key, normalize_path, ref_key
from .reachability import find_roots, live_blocks
from .refs import Ref, Version
from .registry import NamesRecord, is_names_key, update_record, who
from .store import Store

log = logging.getLogger(__name__)

DEFAULT_ALIAS_HISTORY = 7 * 86400.0

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdwy])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in "30d", "12h", "1h30m", "90s", "2w" or a plain number of seconds."""
    t = text.strip().lower()
    try:
        value = float(t)
    except ValueError:
        parts = _DURATION.findall(t)
        if not parts or "".join(n + u for n, u in parts) != t:
            raise InvalidArgumentError(
                f"{text!r} is not a duration: write e.g. 30d, 12h, 1h30m, 90s or 2w"
            ) from None
        value = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"{text!r} is not a duration of zero or more seconds")
    return value


@dataclass(frozen=True)
class Policy:
    keep_last: int | None = None
    keep_within: float | None = None  # seconds
    keep_best: int | None = None
    by: str | None = None  # a metric; "name:min" when lower is better
    alias_history: float = DEFAULT_ALIAS_HISTORY

    def __post_init__(self) -> None:
        if self.by is not None and self.keep_best is None:
            raise InvalidArgumentError("--by ranks versions for --keep-best K: give that too")
        if self.keep_last is None and self.keep_within is None and self.keep_best is None:
            raise InvalidArgumentError(
                "say what to keep: --keep-last N, --keep-within DURATION or --keep-best K --by "
                "METRIC (a forget with no rule would forget every version but the current)"
            )
        for name, n in (("--keep-last", self.keep_last), ("--keep-best", self.keep_best)):
            if n is not None and n < 0:
                raise InvalidArgumentError(f"{name} {n}: must be 0 or more")
        if self.keep_best is not None and not self.by:
            raise InvalidArgumentError(
                "--keep-best needs --by METRIC (METRIC:min if lower is better)"
            )
        if self.by is not None:
            check_metric_name(self.metric)

    @property
    def metric(self) -> str:
        return (self.by or "").removesuffix(":min").removesuffix(":max")

    @property
    def lower_is_better(self) -> bool:
        return (self.by or "").endswith(":min")

    def describe(self) -> str:
        rules = []
        if self.keep_last is not None:
            rules.append(f"keep-last {self.keep_last}")
        if self.keep_within is not None:
            rules.append(f"keep-within {_human_duration(self.keep_within)}")
        if self.keep_best is not None:
            rules.append(f"keep-best {self.keep_best} by {self.by}")
        return ", ".join(rules)

    def keeps(self, items: list[tuple[int, float, dict]], now: float) -> dict[int, str]:
        """Which of (number, time, metrics), oldest first, the rules keep, and why."""
        why: dict[int, str] = {}
        if self.keep_last:
            for n, _, _ in items[-self.keep_last :]:
                why.setdefault(n, f"one of the last {self.keep_last}")
        if self.keep_within is not None:
            for n, t, _ in items:
                if t >= now - self.keep_within:
                    why.setdefault(n, f"within {_human_duration(self.keep_within)}")
        if self.keep_best:
            scored = [
                (m[self.metric], n) for n, _, m in items
                if isinstance(m.get(self.metric), (int, float))
            ]  # fmt: skip
            scored.sort(key=lambda s: (s[0] if self.lower_is_better else -s[0], -s[1]))
            for _, n in scored[: self.keep_best]:
                why.setdefault(n, f"one of the best {self.keep_best} by {self.by}")
        return why


def _human_duration(seconds: float) -> str:
    for unit in ("y", "w", "d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"


@dataclass
class PathPlan:
    path: str
    is_dir: bool  # True: the directory's snapshots
    forget: list[int] = field(default_factory=list)
    keep: dict[int, str] = field(default_factory=dict)  # number -> why


@dataclass
class ForgetPlan:
    policy: Policy
    target: str
    plans: list[PathPlan] = field(default_factory=list)
    freed_bytes: int | None = None  # stored bytes a gc would then reclaim (dry run)
    freed_manifest_bytes: int | None = None
    applied: bool = False
    log_key: str = ""

    @property
    def versions(self) -> int:
        return sum(len(p.forget) for p in self.plans if not p.is_dir)

    @property
    def snapshots(self) -> int:
        return sum(len(p.forget) for p in self.plans if p.is_dir)

    def to_json(self) -> dict:
        return {
            "target": self.target, "rule": self.policy.describe(), "applied": self.applied,
            "versions_forgotten": self.versions, "snapshots_forgotten": self.snapshots,
            "freed_bytes": self.freed_bytes, "freed_manifest_bytes": self.freed_manifest_bytes,
            "log": self.log_key,
            "paths": [
                {"path": p.path, "dir": p.is_dir, "forget": p.forget,
                 "keep": {str(n): w for n, w in sorted(p.keep.items())}}
                for p in self.plans
            ],
        }  # fmt: skip


def _under(path: str, target: str) -> bool:
    """Whether path is the target or under it ('' is the whole store)."""
    return not target or path == target or path.startswith(target + "/")


def plan_forget(
    store: Store, target: str, policy: Policy, *, now: float | None = None
) -> ForgetPlan:
    """What forget would do (nothing is written)."""
    now = time.time() if now is None else now
    norm = normalize_path(target) if target.strip("/") else ""
    backend = store.backend
    records: dict[tuple[str, bool], NamesRecord] = {}
    for key in backend.list(META_PREFIX):
        if is_names_key(key):
            try:
                r = NamesRecord.from_bytes(backend.get(key), key)
            except NotFoundError:
                continue
            records[(r.path, r.is_dir)] = r
    # What names and snapshots hold, store-wide: a directory's alias may name a file
    # under it, and a snapshot of a parent holds files under the target.
    held: dict[tuple[str, bool, int], str] = {}
    for r in records.values():
        for name in r.names.values():
            t = name.target
            held.setdefault((t.path, t.is_dir, t.version), f"{name.kind} {name.name}")
        for e in r.log:
            if (
                e.action == "alias"
                and e.before is not None
                and now - e.time <= policy.alias_history
            ):
                b = e.before
                held.setdefault(
                    (b.path, b.is_dir, b.version),
                    f"alias {e.name} named it until {_ago(now, e.time)}",
                )
    plan = ForgetPlan(policy, norm)
    kept_snapshot_files: set[tuple[str, int]] = set()
    from .snapshots import join, load_snapshot

    for (path, is_dir), r in sorted(records.items()):
        if not is_dir or not r.snapshots or not _under(path, norm):
            continue
        live = r.kept_snapshots
        items = [(s.version, s.time, r.metrics_of(s.version)) for s in live]
        keep = policy.keeps(items, now)
        keep.setdefault(live[-1].version, "the newest snapshot") if live else None
        for s in live:
            why = held.get((path, True, s.version))
            if why:
                keep.setdefault(s.version, why)
        pp = PathPlan(path, True, [s.version for s in live if s.version not in keep], keep)
        if pp.forget:
            plan.plans.append(pp)
    for r in records.values():
        if not r.is_dir:
            continue
        forgetting = next((p.forget for p in plan.plans if p.is_dir and p.path == r.path), [])
        for s in r.kept_snapshots:
            if s.version in forgetting:
                continue
            snap = load_snapshot(store, s.snapshot)
            for f in snap.files:
                kept_snapshot_files.add((join(snap.path, f.path), f.version))

    prefix = REFS_PREFIX if not norm else ref_key(norm)[:-1]
    keys = [k for k in backend.list(prefix) if is_file_ref_key(k)] if norm else [
        k for k in backend.list(REFS_PREFIX) if is_file_ref_key(k)
    ]  # fmt: skip
    found = False  # a path under the target (keys may hold siblings: "dir2" for "dir")
    for ref in store.map_io(store._ref_at, keys):
        if ref is None or not _under(ref.path, norm):
            continue
        found = True
        record = records.get((ref.path, False))
        live = [v for v in ref.versions if v.readable]
        items = [
            (v.version, v.time, record.metrics_of(v.version, v.metrics) if record else dict(v.metrics or {}))
            for v in live
        ]  # fmt: skip
        keep = policy.keeps(items, now)
        if ref.current is not None:
            keep.setdefault(ref.current.version, "current")
        for v in live:
            why = held.get((ref.path, False, v.version))
            if why:
                keep.setdefault(v.version, why)
            elif (ref.path, v.version) in kept_snapshot_files:
                keep.setdefault(v.version, "in a kept snapshot")
        pp = PathPlan(ref.path, False, [v.version for v in live if v.version not in keep], keep)
        if pp.forget:
            plan.plans.append(pp)
    if norm and not found and not any(_under(p, norm) for p, _ in records):
        if not store.is_dir(norm):
            raise NotFoundError(f"nothing in the store at {norm}")
    return plan


def _ago(now: float, t: float) -> str:
    return f"{_human_duration(max(0, round(now - t)))} ago"


def estimate_freed(store: Store, plan: ForgetPlan) -> None:
    """Stored bytes that a collection would reclaim once the plan is applied (on top of
    what is garbage already)."""
    roots = find_roots(store)
    existing = {k.rsplit("/", 1)[-1] for k in store.backend.list("packs/")}
    before = live_blocks(store, roots.manifests, existing)
    after_roots = find_roots(
        store,
        exclude_versions={(p.path, n) for p in plan.plans if not p.is_dir for n in p.forget},
        exclude_snapshots={(p.path, n) for p in plan.plans if p.is_dir for n in p.forget},
    )
    after = live_blocks(store, after_roots.manifests, existing)
    plan.freed_bytes = before.stored_bytes() - after.stored_bytes()
    gone = set(roots.manifests) - set(after_roots.manifests)
    sizes = {i.key.rsplit("/", 1)[-1]: i.size for i in store.backend.list_info("manifests/")}
    plan.freed_manifest_bytes = sum(sizes.get(m, 0) for m in gone)


def apply_forget(store: Store, plan: ForgetPlan) -> ForgetPlan:
    """Forget what the plan says: directory snapshots first, then file versions, each by
    compare-and-swap (a version appended meanwhile is kept: it is newer than the plan)."""
    if not plan.plans:
        plan.applied = True
        return plan
    store.require_version(COLLECTION_VERSION, "forgetting versions")
    note = {"time": time.time(), "by": who(), "rule": plan.policy.describe()}
    for p in plan.plans:
        if not p.is_dir:
            continue

        def change(record: NamesRecord, p: PathPlan = p) -> bool:
            changed = False
            held = {
                n.target.version
                for n in record.names.values()
                if n.target.is_dir and n.target.path == record.path
            }
            for n in p.forget:
                if (
                    n not in record.forgotten
                    and n not in held
                    and n != record.snapshots[-1].version
                ):
                    record.forgotten[n] = dict(note)
                    changed = True
            return changed

        update_record(store.backend, p.path, True, change)
    for p in plan.plans:
        if p.is_dir:
            continue
        _forget_versions(store, p.path, set(p.forget), note)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(note["time"]))
    plan.log_key = f"{FORGETS_PREFIX}{stamp}-{os.urandom(4).hex()}"
    store.backend.put_if_absent(
        plan.log_key, canonical_json({**note, **plan.to_json(), "applied": True, "log": ""})
    )
    plan.applied = True
    log.info("forgot %d versions and %d snapshots under %s (%s)", plan.versions, plan.snapshots,
             plan.target or "the store", note["rule"])  # fmt: skip
    return plan


def _forget_versions(store: Store, path: str, numbers: set[int], note: dict) -> None:
    key = ref_key(path)

    def change(data: bytes | None) -> bytes | None:
        if data is None:
            return None
        ref = Ref.from_bytes(data, key, path)
        last = len(ref.versions)
        out: list[Version] = []
        changed = False
        for v in ref.versions:
            if v.version in numbers and v.readable and not (v.version == last):
                out.append(Version(**{**v.__dict__, "forgotten": dict(note)}))
                changed = True
            else:
                out.append(v)
        return Ref(path, tuple(out)).to_bytes() if changed else None

    cas.update(store.backend, key, change, f"forget versions of {path}")
