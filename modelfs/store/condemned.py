"""What a collection in progress has condemned, and how writers learn of it (format 4).

A collector (gc.py) records, before it deletes anything, what it found unreachable:
`gc/condemned/<run>` lists the packs, manifests, snapshot objects and moved/
records it means to delete, and the packs whose live blocks it will copy. It then
deletes the index objects of those packs (so writers stop deduplicating against
them) and marks the record condemned; the grace period starts then. A writer reads
these records (one LIST, each record fetched once) at the start of its commit
window, and never makes a new reference to anything they name: it stores the
content again under a new id instead (a nonce). docs/FORMAT.md, "Collection",
gives the argument.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ..backends.base import Backend
from ..errors import FormatError, NotFoundError
from .format import canonical_json, is_hex_id, parse_json

GC_PREFIX = "gc/"
LOCK_KEY = "gc/lock"
CONDEMNED_PREFIX = "gc/condemned/"
FORGETS_PREFIX = "gc/forgets/"

CONDEMNING = "condemning"  # written before the index objects go; grace not started
CONDEMNED = "condemned"  # every index object gone; grace counts from this write

_KINDS = ("packs", "rewrite", "manifests", "snapshots", "moved")


def condemned_key(run: str) -> str:
    return CONDEMNED_PREFIX + run


def new_run_id(now: float | None = None) -> str:
    """A collection's id: its UTC start and 8 random hex digits (sorts by time)."""
    import os

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{os.urandom(4).hex()}"


@dataclass(frozen=True)
class Condemnation:
    """One collection's record of what it will delete (or, for rewrite, copy and delete)."""

    run: str
    state: str
    by: str
    time: float  # the collector's clock, for people
    grace: float  # seconds the collector waits after state becomes condemned
    packs: frozenset[str] = frozenset()  # wholly unreachable: deleted
    rewrite: frozenset[str] = frozenset()  # mostly unreachable: live blocks copied, then deleted
    manifests: frozenset[str] = frozenset()
    snapshots: frozenset[str] = frozenset()
    moved: frozenset[str] = frozenset()  # moved/ records no manifest needs any more

    @property
    def all_packs(self) -> frozenset[str]:
        return self.packs | self.rewrite

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "run": self.run, "state": self.state, "by": self.by, "time": self.time,
                "grace": self.grace, **{k: sorted(getattr(self, k)) for k in _KINDS},
            }
        )  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes, key: str) -> Condemnation:
        what = f"collection record {key}"
        doc = parse_json(data, what)
        try:
            sets = {}
            for kind in _KINDS:
                ids = doc.get(kind, [])
                if not isinstance(ids, list) or not all(is_hex_id(i) for i in ids):
                    raise ValueError(f"{kind} must be a list of ids")
                sets[kind] = frozenset(ids)
            if doc["state"] not in (CONDEMNING, CONDEMNED) or key != condemned_key(doc["run"]):
                raise ValueError("its state or run is wrong")
            return cls(
                str(doc["run"]), doc["state"], str(doc["by"]), float(doc["time"]),
                float(doc["grace"]), **sets,
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{what} is malformed: {e}") from None


@dataclass(frozen=True)
class Condemned:
    """The union of every collection record in the store at one moment."""

    packs: frozenset[str] = frozenset()
    manifests: frozenset[str] = frozenset()
    snapshots: frozenset[str] = frozenset()
    runs: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.runs)


@dataclass
class CondemnedView:
    """A writer's view of the collection records, read afresh by load() (one LIST when
    there are none, and one GET per record it has not seen)."""

    backend: Backend
    _records: dict[str, Condemnation] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self) -> Condemned:
        keys = [k for k in self.backend.list(CONDEMNED_PREFIX)]
        found: dict[str, Condemnation] = {}
        for key in keys:
            with self._lock:
                known = self._records.get(key)
            if known is None:
                try:
                    known = Condemnation.from_bytes(self.backend.get(key), key)
                except NotFoundError:
                    continue  # that collection just finished
            found[key] = known
        with self._lock:
            self._records = dict(found)
        if not found:
            return Condemned()
        records = list(found.values())
        return Condemned(
            packs=frozenset().union(*(r.all_packs for r in records)),
            manifests=frozenset().union(*(r.manifests for r in records)),
            snapshots=frozenset().union(*(r.snapshots for r in records)),
            runs=tuple(sorted(r.run for r in records)),
        )


@dataclass(frozen=True)
class Check:
    """What a writer observed at the start of its commit window: the collection records,
    read at `started` (time.monotonic()). References it makes must be visible before
    started + the store's commit window."""

    started: float
    condemned: Condemned

    def deadline(self, window: float) -> float:
        return self.started + window
