"""Selection: rank versions by their metrics, without reading a byte of any model.

The candidates of a file are all its versions; of a directory, the current
version (or, with all_versions, every version) of each file under it and the
snapshots of each directory under it (the newest, or all), itself included.
What selection needs is in each path's ref (versions, and metrics recorded at
commit) and names record (metrics recorded later, snapshots): one LIST of
refs, one LIST of names records, and one GET of each, however many versions
each path has. Where-clauses and order-bys are query.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InvalidArgumentError, NotFoundError
from .addresses import parse_address
from .metrics import Value
from .paths import names_prefix, version_address
from .query import Order, Where, parse_order, parse_where
from .refs import Ref, load_ref
from .registry import NamesRecord, is_names_key, load_record
from .store import Store


@dataclass(frozen=True)
class Candidate:
    path: str
    version: int
    is_dir: bool
    content_hash: str
    time: float
    size: int
    message: str
    metrics: dict[str, Value] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return version_address(self.path, self.version)

    def record(self) -> dict[str, Value]:
        return {
            **self.metrics, "path": self.path, "version": self.version, "time": self.time,
            "size": self.size, "content_hash": self.content_hash, "message": self.message,
        }  # fmt: skip


@dataclass
class Selection:
    ranked: list[Candidate]  # those that match, best first (at most limit)
    considered: int  # candidates looked at
    matched: int  # candidates that matched the where-clause

    @property
    def best(self) -> Candidate:
        if not self.ranked:
            raise NotFoundError("no version matches")
        return self.ranked[0]


def _file_candidates(ref: Ref, record: NamesRecord | None, all_versions: bool) -> list[Candidate]:
    if all_versions:
        versions = [v for v in ref.versions if v.readable]
    else:
        versions = [ref.current] if ref.current is not None else []
    out = []
    for v in versions:
        metrics = record.metrics_of(v.version, v.metrics) if record else dict(v.metrics or {})
        out.append(Candidate(ref.path, v.version, False, v.content_hash, v.time, v.size,
                             v.message, metrics))  # fmt: skip
    return out


def _dir_candidates(record: NamesRecord, all_versions: bool) -> list[Candidate]:
    snaps = record.kept_snapshots if all_versions else record.kept_snapshots[-1:]
    return [
        Candidate(
            record.path,
            s.version,
            True,
            s.content_hash,
            s.time,
            s.size,
            "",
            record.metrics_of(s.version),
        )  # fmt: skip
        for s in snaps
    ]


def candidates(store: Store, target: str, *, all_versions: bool = False) -> list[Candidate]:
    """Every version selection ranks for a path or prefix (see the module docstring)."""
    path = parse_address(target).path if target.strip("/") else ""
    if path and not target.endswith("/"):
        try:
            ref = load_ref(store.backend, path)[0]
        except NotFoundError:
            ref = None
        if ref is not None:  # one file: all its versions
            record = load_record(store.backend, path, is_dir=False)
            return _file_candidates(ref, record, True)
    refs = store.refs_under(path)
    record_keys = [k for k in store.backend.list(names_prefix(path)) if is_names_key(k)]
    own = load_record(store.backend, path, is_dir=True) if path else None
    if not refs and not record_keys and own is None and not store.is_dir(path):
        raise NotFoundError(f"no such file or directory in the store: {path}")

    def load(key: str) -> NamesRecord:  # one GET each, on the store's request threads
        return NamesRecord.from_bytes(store.backend.get(key), key)

    records = store.map_io(load, record_keys)
    by_file = {r.path: r for r in records if not r.is_dir}
    found = []
    for ref in refs:
        found += _file_candidates(ref, by_file.get(ref.path), all_versions)
    dirs = [r for r in records if r.is_dir] + ([own] if own is not None else [])
    for record in sorted(dirs, key=lambda r: r.path):
        found += _dir_candidates(record, all_versions or record is own)
    return found


def select(
    store: Store,
    target: str,
    *,
    where: str | Where | None = None,
    order_by: str | Order | None = None,
    limit: int | None = None,
    all_versions: bool = False,
) -> Selection:
    """Rank the candidates of target that match where, by order_by (default: newest first)."""
    w = parse_where(where) if isinstance(where, str) else where
    o = parse_order(order_by) if isinstance(order_by, str) else order_by
    if limit is not None and limit < 1:
        raise InvalidArgumentError(f"limit must be at least 1, not {limit}")
    found = candidates(store, target, all_versions=all_versions)
    matched = [c for c in found if w is None or w.matches(c.record())]
    if o is not None:
        ranked = o.sort(matched, key=Candidate.record)
    else:
        ranked = sorted(matched, key=lambda c: (c.time, c.path, c.version), reverse=True)
    return Selection(ranked[:limit] if limit is not None else ranked, len(found), len(matched))
