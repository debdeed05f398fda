"""Retention and collection at the store tier (format 4): `forget` by rule, then `gc`.

What a user of forget and gc relies on: the rules keep what they say (and names,
alias history, kept snapshots and current versions whatever they say); gc deletes
only what nothing retained reaches, rewrites mostly dead packs behind moved/
records, waits its grace period, and reports what it freed; writers that meet a
collection in progress never reference what it condemned; a collector killed at
any backend call leaves a store that reads and that the next gc finishes; one
collection at a time. Most tests run on the in-memory backend; those where the
backend matters (object times, listings, deletes, conditional writes) also run on
local disk and SeaweedFS.

The store's commit window is WINDOW (0.2 s) and gc's grace GRACE (2 x WINDOW), so a
whole forget-and-collect cycle takes about a second (a few on S3, whose object times
are whole seconds: gc allows the backend's time_resolution on top of the grace).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from storeobjects import WrappedBackend

import modelfs
from modelfs.backends import Backend, LocalBackend, MemoryBackend
from modelfs.backends.base import Data
from modelfs.errors import (
    BackendError,
    CollectedError,
    CollectionInProgressError,
    ForgottenError,
    InvalidArgumentError,
    MissingPackError,
    ModelfsError,
    NotFoundError,
)
from modelfs.store import gc
from modelfs.store.condemned import CONDEMNED, CONDEMNING, FORGETS_PREFIX, LOCK_KEY
from modelfs.store.format import CONFIG_KEY, StoreConfig, canonical_json, manifest_key, pack_key
from modelfs.store.packs import PackWriter
from modelfs.store.paths import META_PREFIX, ref_key
from modelfs.store.refs import Ref, append_version
from modelfs.store.registry import NamesRecord, is_names_key, who
from modelfs.store.retention import Policy, apply_forget, plan_forget
from modelfs.store.store import Store
from modelfs.store.tensorfile import TensorBytes, encode_header

WINDOW = 0.2
GRACE = 2 * WINDOW
CONFIG = StoreConfig(commit_window=WINDOW)
DAY = 86400.0


# content


def rand(n: int = 20_000) -> bytes:
    return os.urandom(n)


def st(**tensors: bytes) -> bytes:
    """A safetensors file of U8 tensors: one block for its header and one per tensor, so a
    test decides exactly which blocks two files share."""
    t = {name: TensorBytes("U8", (len(data),), data) for name, data in tensors.items()}
    return encode_header(t, None) + b"".join(t[name].data for name in sorted(t))


# backends and stores


class Shared(WrappedBackend):
    """A backend that the stores opened on it leave open (the test's fixture closes it)."""

    def close(self) -> None:
        pass


class Hooked(Shared):
    """Calls before(method, key) before every write and every read with an etag, so a test
    can interleave a collection with a writer's request, on one thread."""

    def __init__(self, inner: Backend, before: Callable[[str, str], None]) -> None:
        super().__init__(inner)
        self.before = before

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        self.before("get_with_etag", key)
        return self.inner.get_with_etag(key)

    def put(self, key: str, data: Data) -> str:
        self.before("put", key)
        return self.inner.put(key, data)

    def put_if_absent(self, key: str, data: Data) -> str:
        self.before("put_if_absent", key)
        return self.inner.put_if_absent(key, data)

    def put_if_match(self, key: str, data: Data, etag: str) -> str:
        self.before("put_if_match", key)
        return self.inner.put_if_match(key, data, etag)

    def delete(self, key: str) -> None:
        self.before("delete", key)
        self.inner.delete(key)


class FailingAt(Hooked):
    """Fails the Nth write (put, put_if_absent, put_if_match, delete; the lock's aside, so
    that the heartbeat thread does not make the count depend on timing), as a collector
    killed there would stop; fail_at=0 only counts."""

    WRITES = ("put", "put_if_absent", "put_if_match", "delete")

    def __init__(self, inner: Backend, fail_at: int = 0) -> None:
        super().__init__(inner, self._count)
        self.fail_at = fail_at
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def _count(self, method: str, key: str) -> None:
        if method not in self.WRITES or key == LOCK_KEY:
            return
        with self._lock:
            self.calls.append(f"{method} {key}")
            n = len(self.calls)
        if n == self.fail_at:
            raise BackendError(f"injected failure at write {n}: {method} {key}")


@dataclass
class Env:
    """One store: a client that writes and reads it, the versions it was given, and
    collections run as another process would (a Store of their own)."""

    kind: str
    backend: Backend
    client: modelfs.Client
    contents: dict[tuple[str, int], bytes] = field(default_factory=dict)

    @property
    def store(self) -> Store:
        return self.client.store

    def put(self, path: str, data: bytes, **kwargs) -> int:
        n = self.client.put(path, data, **kwargs).version
        self.contents[(path, n)] = data
        return n

    def open_store(self, backend: Backend | None = None) -> Store:
        return Store.open(backend or self.backend)

    @contextlib.contextmanager
    def reader(self, backend: Backend | None = None) -> Iterator[modelfs.Client]:
        """A new client, no disk cache: every byte it returns comes from the store."""
        c = modelfs.Client(self.open_store(backend), use_disk_cache=False)
        try:
            yield c
        finally:
            c.close()

    def gc(self, backend: Backend | None = None, *, dry_run: bool = False, wait: bool = True,
           **options) -> gc.GcReport:  # fmt: skip
        options.setdefault("grace", GRACE)
        with self.open_store(backend) as store:
            return gc.Collector(store, **options).run(dry_run=dry_run, wait=wait)

    def forget(self, target: str = "", **rules) -> None:
        self.client.forget(target, **rules)

    def age(self) -> None:
        """Wait until everything written so far is older than the grace period, as gc
        measures it: to the backend's resolution (S3: whole seconds), with that much more."""
        r = self.backend.time_resolution
        time.sleep((math.ceil((GRACE + r) / r) * r if r else GRACE) + 0.05)

    def keys(self, prefix: str = "") -> set[str]:
        return set(self.backend.list(prefix))

    def listing(self) -> dict[str, tuple]:
        """Every object with what changes when it is written (S3: ETag and LastModified)."""
        return {i.key: (i.size, i.token, i.modified) for i in self.backend.list_info()}

    def pack_bytes(self) -> int:
        return sum(i.size for i in self.backend.list_info("packs/"))

    def records(self) -> list[gc.Condemnation]:
        with self.open_store() as store:
            return list(gc.iter_records(store))

    def packs_of(self, path: str, n: int) -> set[str]:
        """The packs version n of path names (forgotten or not)."""
        manifest = self.store.ref(path).versions[n - 1].manifest
        assert manifest is not None
        return {b.location.pack for b in self.store.load_manifest(manifest).blocks}


@pytest.fixture
def make_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Env]]:
    made: list[tuple[Env, Backend]] = []

    def make(kind: str = "memory", config: StoreConfig = CONFIG) -> Env:
        if kind == "memory":
            inner: Backend = MemoryBackend()
        elif kind == "local":
            inner = LocalBackend(tmp_path / f"store{len(made)}", create=True)
        else:
            inner = request.getfixturevalue("s3_backend")
        backend = Shared(inner)
        store = Store.create(backend, config)
        env = Env(kind, backend, modelfs.Client(store, use_disk_cache=False))
        made.append((env, inner))
        return env

    yield make
    for env, inner in made:
        env.client.close()
        if env.kind != "s3":  # the s3_backend fixture closes its own
            inner.close()


@pytest.fixture
def user(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Who forgets and collects, as MODELFS_USER says (read once per process: reset here)."""
    monkeypatch.setenv("MODELFS_USER", "ana@gpu7")
    who.cache_clear()
    yield "ana@gpu7"
    who.cache_clear()


@pytest.fixture
def env(make_env: Callable[..., Env]) -> Env:
    return make_env("memory")


@pytest.fixture(params=["memory", "local", "s3"])
def any_env(request: pytest.FixtureRequest, make_env: Callable[..., Env]) -> Env:
    """Each backend in turn, for what depends on listings, deletes and object times."""
    return make_env(request.param)


@pytest.fixture(params=["memory", "s3"])
def clock_env(request: pytest.FixtureRequest, make_env: Callable[..., Env]) -> Env:
    """Exact object times (memory) and whole-second LastModified (SeaweedFS)."""
    return make_env(request.param)


# what a store keeps, read back


def dir_records(store: Store) -> list[NamesRecord]:
    out = []
    for key in store.backend.list(META_PREFIX):
        if is_names_key(key):
            record = NamesRecord.from_bytes(store.backend.get(key), key)
            if record.is_dir:
                out.append(record)
    return out


def retained(c: modelfs.Client) -> dict[str, bytes]:
    """Every version the store keeps, by an address a user would read it by: each readable
    version by number, each tag and alias, each file of each kept snapshot."""
    out: dict[str, bytes] = {}
    for ref in c.store.refs_under(""):
        for v in ref.versions:
            if v.readable:
                out[f"{ref.path}@{v.version}"] = c.read(ref.path, version=v.version)
    for owner, name in c.names_under(""):
        address = f"{owner}@{name.name}"
        if name.target.is_dir:
            for f in c.list(address):
                inner = f.path[len(name.target.path) + 1 :]
                out[f"{address}/{inner}"] = c.read(f"{address}/{inner}")
        else:
            out[address] = c.read(address)
    for record in dir_records(c.store):
        for s in record.kept_snapshots:
            for f in c.list(f"{record.path}@{s.version}"):
                inner = f.path[len(record.path) + 1 :]
                out[f"{record.path}@{s.version}/{inner}"] = c.read(
                    f"{record.path}@{s.version}/{inner}"
                )
    return out


def assert_retained_read(env: Env, expected: dict[str, bytes], backend: Backend | None = None):
    with env.reader(backend) as c:
        got = retained(c)
        assert sorted(got) == sorted(expected)
        for address, data in expected.items():
            assert got[address] == data, f"{address} reads other bytes"
        report = c.fsck()
        # No version, name or snapshot it keeps is damaged (names: see the fsck test below).
        assert (report.affected, report.missing_packs, report.corrupt_blocks) == ([], [], {})


def rich_history(env: Env) -> None:
    """Files with several versions, shared blocks, a tag, an alias, a deleted file and a
    directory with snapshots (one tagged)."""
    c = env.client
    x, y, z = rand(), rand(60_000), rand()
    env.put("m/a", st(x=x, y=y))  # a@1
    env.put("m/a", st(x=x, z=z))  # a@2 shares x
    env.put("m/a", st(q=rand()))  # a@3
    env.put("m/b", st(b=rand()))
    c.tag("m/b@1", "release")
    env.put("m/b", st(b=rand()))
    env.put("m/b", st(b=rand()))
    c.alias("m/b@3", "prod")
    # e@1's pack keeps x2 (e2 shares it) and loses the rest: it is rewritten.
    x2 = rand()
    env.put("m/e", st(x2=x2, y2=rand(80_000)))
    env.put("m/e2", st(x2=x2))
    env.put("m/e", st(e=rand()))
    env.put("d/f", st(f=rand()))
    env.put("d/g", st(g=rand()))
    c.tag("d", "first")  # snapshot 1
    env.put("d/f", st(f=rand()))
    c.record_metrics("d", {"score": 1})  # snapshot 2
    env.put("d/f", st(f=rand()))
    c.record_metrics("d", {"score": 2})  # snapshot 3
    env.put("gone/c", st(c=rand()))
    c.delete("gone/c")


# forget: the rules


def forgotten(store: Store, path: str) -> list[int]:
    return [v.version for v in store.history(path) if v.forgotten]


def test_keep_last_keeps_the_newest_versions_and_forgets_the_rest(env: Env) -> None:
    for _ in range(5):
        env.put("p", rand(1000))

    env.forget("p", keep_last=2)

    assert forgotten(env.store, "p") == [1, 2, 3]
    for n in (4, 5):
        assert env.client.read("p", version=n) == env.contents[("p", n)]
    for n in (1, 2, 3):
        with pytest.raises(ForgottenError):
            env.client.read("p", version=n)


def test_keep_within_keeps_the_versions_committed_within_the_duration(env: Env) -> None:
    for _ in range(4):
        env.put("p", rand(1000))
        time.sleep(0.01)
    times = [v.time for v in env.store.history("p")]
    now = times[-1] + 30 * DAY
    within = now - times[1]  # v2 and later are within it, v2 at its very edge

    plan = plan_forget(env.store, "p", Policy(keep_within=within + 0.001), now=now)
    assert [(p.path, p.forget) for p in plan.plans] == [("p", [1])]
    # A duration a moment shorter loses v2 as well; the current version stays regardless.
    plan = plan_forget(env.store, "p", Policy(keep_within=within - 0.001), now=now)
    assert plan.plans[0].forget == [1, 2]
    plan = plan_forget(env.store, "p", Policy(keep_within=DAY), now=now)
    assert plan.plans[0].forget == [1, 2, 3]
    assert plan.plans[0].keep == {4: "current"}


def test_keep_best_keeps_the_highest_metric_and_not_versions_without_it(env: Env) -> None:
    for accuracy in (0.7, 0.9, None, 0.8, 0.6):
        env.put("p", rand(1000), metrics={"accuracy": accuracy} if accuracy else None)
    env.put("p", rand(1000))  # current, unmeasured

    env.forget("p", keep_best=2, by="accuracy")

    # v2 (0.9) and v4 (0.8) are the best; v6 is current; v3 has no accuracy at all.
    assert forgotten(env.store, "p") == [1, 3, 5]


def test_keep_best_by_metric_min_keeps_the_lowest(env: Env) -> None:
    for loss in (0.5, 0.2, 0.9, 0.3):
        env.put("p", rand(1000), metrics={"loss": loss})
    env.put("p", rand(1000), metrics={"loss": 1.5})

    env.forget("p", keep_best=1, by="loss:min")

    assert forgotten(env.store, "p") == [1, 3, 4]  # keeps v2 (lowest) and v5 (current)


def test_metrics_recorded_after_the_commit_count_for_keep_best(env: Env) -> None:
    for _ in range(3):
        env.put("p", rand(1000))
    env.client.record_metrics("p@1", {"accuracy": 0.99})
    env.client.record_metrics("p@2", {"accuracy": 0.5})

    env.forget("p", keep_best=1, by="accuracy")

    assert forgotten(env.store, "p") == [2]


def test_rules_combine_as_the_union_of_what_each_keeps(env: Env) -> None:
    for accuracy in (0.95, 0.1, 0.2, 0.3, 0.4, 0.5):
        env.put("p", rand(1000), metrics={"accuracy": accuracy})
        time.sleep(0.01)
    times = [v.time for v in env.store.history("p")]
    now = times[-1] + DAY

    plan = plan_forget(
        env.store, "p",
        Policy(keep_last=1, keep_within=now - times[2] + 0.001, keep_best=1, by="accuracy"),
        now=now,
    )  # fmt: skip

    assert plan.plans[0].forget == [2]
    keep = plan.plans[0].keep
    assert keep[1].startswith("one of the best 1") and keep[6] == "one of the last 1"
    assert all(keep[n].startswith("within") for n in (3, 4, 5))


def test_the_current_version_is_kept_by_any_rule_but_a_deleted_path_loses_all(
    env: Env,
) -> None:
    for _ in range(3):
        env.put("kept", rand(1000))
        env.put("gone", rand(1000))
    env.client.delete("gone")

    env.forget("", keep_last=0)

    assert forgotten(env.store, "kept") == [1, 2]
    assert env.client.read("kept") == env.contents[("kept", 3)]
    assert forgotten(env.store, "gone") == [1, 2, 3]


def test_tagged_and_aliased_versions_are_kept(env: Env) -> None:
    for _ in range(5):
        env.put("p", rand(1000))
    env.client.tag("p@1", "release")
    env.client.alias("p@3", "prod")

    env.forget("p", keep_last=1)

    assert forgotten(env.store, "p") == [2, 4]
    assert env.client.read("p@release") == env.contents[("p", 1)]
    assert env.client.read("p@prod") == env.contents[("p", 3)]
    assert env.client.read("p", version=1) == env.contents[("p", 1)]


def test_an_alias_previous_target_is_kept_within_the_alias_history_only(env: Env) -> None:
    for _ in range(4):
        env.put("p", rand(1000))
    env.client.alias("p@1", "prod")
    env.client.alias("p@2", "prod")  # a rollback to p@1 must still work for a while
    moved = env.client.names_log("p", "prod")[-1].time

    soon = plan_forget(env.store, "p", Policy(keep_last=1), now=moved + 6 * DAY)
    later = plan_forget(env.store, "p", Policy(keep_last=1), now=moved + 8 * DAY)
    custom = plan_forget(
        env.store, "p", Policy(keep_last=1, alias_history=DAY), now=moved + 2 * DAY
    )

    assert soon.plans[0].forget == [3]
    assert soon.plans[0].keep[1].startswith("alias prod named it until")
    assert later.plans[0].forget == [1, 3]
    assert custom.plans[0].forget == [1, 3]
    assert soon.plans[0].keep[2] == "alias prod"


def test_versions_held_by_a_kept_snapshot_are_kept(env: Env) -> None:
    for _ in range(3):
        env.put("d/f", rand(1000))
    env.client.tag("d", "v1")  # holds d/f@3
    env.put("d/f", rand(1000))
    env.put("d/f", rand(1000))

    env.forget("d/f", keep_last=1)

    assert forgotten(env.store, "d/f") == [1, 2, 4]
    assert env.client.read("d@v1/f") == env.contents[("d/f", 3)]


def test_snapshots_are_forgotten_by_the_rules_except_the_newest_and_named_ones(
    env: Env,
) -> None:
    c = env.client
    for i in range(5):
        env.put("d/f", rand(1000))
        c.record_metrics("d", {"step": i})  # snapshot i+1
    c.tag("d@2", "good")
    before = {n: c.read(f"d@{n}/f") for n in range(1, 6)}

    plan = c.forget("d", keep_last=1)

    assert [(p.path, p.is_dir, p.forget) for p in plan.plans if p.is_dir] == [
        ("d", True, [1, 3, 4])
    ]
    assert plan.snapshots == 3
    for n in (1, 3, 4):
        with pytest.raises(ForgottenError, match=f"snapshot {n} of d was forgotten"):
            c.read(f"d@{n}/f")
    assert c.read("d@2/f") == c.read("d@good/f") == before[2]
    assert c.read("d@5/f") == before[5]
    # The files the forgotten snapshots held go with them (d/f@2 stays: snapshot 2 holds it).
    assert forgotten(env.store, "d/f") == [1, 3, 4]


def test_a_prefix_target_touches_only_paths_under_it(env: Env) -> None:
    for path in ("dir/a", "dir/sub/b", "dir2/c", "top"):
        for _ in range(2):
            env.put(path, rand(1000))

    for target in ("dir/", "dir"):
        plan = plan_forget(env.store, target, Policy(keep_last=1))
        assert sorted(p.path for p in plan.plans) == ["dir/a", "dir/sub/b"]
    env.forget("dir/sub/", keep_last=1)
    assert [forgotten(env.store, p) for p in ("dir/a", "dir/sub/b", "dir2/c", "top")] == [
        [], [1], [], []
    ]  # fmt: skip
    env.forget("", keep_last=1)
    assert all(forgotten(env.store, p) == [1] for p in ("dir/a", "dir2/c", "top"))


def test_a_forget_of_nothing_in_the_store_says_so(env: Env) -> None:
    env.put("dir/a", rand(1000))
    with pytest.raises(NotFoundError, match="nothing in the store at di"):
        plan_forget(env.store, "di", Policy(keep_last=1))


def test_a_forget_without_a_rule_refuses_and_changes_nothing(env: Env) -> None:
    for _ in range(3):
        env.put("p", rand(1000))
    before = env.listing()

    with pytest.raises(InvalidArgumentError, match="say what to keep"):
        env.client.forget("p")
    with pytest.raises(InvalidArgumentError, match="--keep-best needs --by"):
        env.client.forget("p", keep_best=1)

    assert env.listing() == before


def test_a_forgotten_version_reads_as_forgotten_naming_rule_and_who(env: Env, user: str) -> None:
    env.put("p", rand(1000))
    env.put("p", rand(1000))
    env.forget("p", keep_last=1)

    with pytest.raises(
        ForgottenError, match=r"version 1 of p was forgotten \(keep-last 1, by ana@gpu7 at 20"
    ):
        env.client.read("p", version=1)
    with pytest.raises(ForgottenError):
        env.client.read("p@1")
    # Its entry stays in the history, marked.
    assert [(v.version, bool(v.forgotten)) for v in env.client.history("p")] == [
        (1, True),
        (2, False),
    ]


def test_a_tag_set_between_plan_and_apply_keeps_the_version_readable_through_it(
    env: Env,
) -> None:
    for _ in range(3):
        env.put("p", rand(1000))
    plan = plan_forget(env.store, "p", Policy(keep_last=1))
    env.client.tag("p@1", "late")  # another user, at that moment

    apply_forget(env.store, plan)

    assert forgotten(env.store, "p") == [1, 2]
    with pytest.raises(ForgottenError):
        env.client.read("p", version=1)
    env.age()
    env.gc()
    with env.reader() as c:
        assert c.read("p@late") == env.contents[("p", 1)]
        with pytest.raises(ForgottenError):
            c.read("p", version=2)


def test_version_numbers_are_never_reused_after_forget_and_gc(env: Env) -> None:
    for _ in range(3):
        env.put("p", rand(1000))
    env.forget("p", keep_last=1)
    env.age()
    env.gc()

    assert env.put("p", rand(1000)) == 4
    assert [v.version for v in env.client.history("p")] == [1, 2, 3, 4]
    assert env.client.read("p", version=4) == env.contents[("p", 4)]


def test_a_forget_is_logged_under_gc_forgets(env: Env, user: str) -> None:
    for _ in range(3):
        env.put("p", rand(1000))

    plan = env.client.forget("p", keep_last=1)

    assert plan.log_key.startswith(FORGETS_PREFIX)
    assert env.keys(FORGETS_PREFIX) == {plan.log_key}
    logged = json.loads(env.backend.get(plan.log_key))
    assert (logged["by"], logged["rule"], logged["target"]) == ("ana@gpu7", "keep-last 1", "p")
    assert logged["paths"] == [
        {"path": "p", "dir": False, "forget": [1, 2], "keep": {"3": "one of the last 1"}}
    ]


def test_a_dry_run_forget_changes_nothing_and_estimates_what_gc_reclaims(env: Env) -> None:
    rich_history(env)
    before = env.listing()
    trailers = {
        i.key.rsplit("/", 1)[-1]: i.size for i in env.backend.list_info("packs/")
    }  # pack -> size, less its blocks' bytes below
    env.store.refresh_index()
    for pack in trailers:
        trailers[pack] -= env.store.index.stored_in(pack) or 0

    plan = env.client.forget("", keep_last=1, dry_run=True)

    assert not plan.applied and plan.versions > 0
    assert env.listing() == before
    assert all(not forgotten(env.store, r.path) for r in env.store.refs_under(""))
    env.client.forget("", keep_last=1)
    env.age()
    report = env.gc()
    reclaimed = report.reclaimed["pack_bytes"]
    assert plan.freed_bytes is not None and plan.freed_bytes > 0
    # gc also frees the trailers of the packs it deletes or rewrites.
    assert 0 <= reclaimed - plan.freed_bytes <= sum(trailers.values())
    assert plan.freed_manifest_bytes == report.reclaimed["manifest_bytes"]


# gc: what it deletes, rewrites and keeps


def test_after_forget_and_gc_every_retained_version_name_and_snapshot_reads_byte_exact(
    any_env: Env,
) -> None:
    env = any_env
    rich_history(env)
    env.forget("", keep_last=1)
    with env.reader() as c:
        expected = retained(c)
    for (path, n), data in env.contents.items():
        if f"{path}@{n}" in expected:
            assert expected[f"{path}@{n}"] == data
    assert "m/b@release" in expected and "d@first/f" in expected and "m/b@prod" in expected
    assert "m/a@1" not in expected and "gone/c@1" in expected  # keep-last 1 of a deleted path
    packs_before = env.keys("packs/")

    env.age()
    report = env.gc()

    assert report.finished == [report.run] and not report.pending
    assert report.reclaimed["packs"] >= 2 and report.rewritten["packs"] >= 1
    assert_retained_read(env, expected)
    assert env.keys("packs/") != packs_before
    assert not env.keys("gc/condemned/") and not env.keys(LOCK_KEY)
    # A second collection finds nothing more to do.
    again = env.gc()
    assert not again.condemned.get("packs") and not again.reclaimed


def test_wholly_dead_packs_and_their_manifests_are_deleted(env: Env) -> None:
    env.put("p", st(a=rand()))
    env.put("p", st(b=rand()))
    old_packs = env.packs_of("p", 1)
    old_manifest = env.store.version("p", 1).manifest
    env.forget("p", keep_last=1)
    env.age()

    report = env.gc()

    for pack in old_packs:
        assert pack_key(pack) not in env.keys() and f"index/{pack}" not in env.keys()
    assert manifest_key(old_manifest) not in env.keys()
    assert report.reclaimed["packs"] == len(old_packs) and report.reclaimed["manifests"] == 1
    assert not report.rewritten
    assert env.keys("moved/") == set()
    with env.reader() as c:
        assert c.read("p") == env.contents[("p", 2)]


def test_a_mostly_dead_pack_is_rewritten_and_reads_through_its_moved_record(env: Env) -> None:
    x = rand()
    env.put("a", st(x=x, y=rand(80_000)))
    env.put("b", st(x=x))  # shares x, in a's pack
    env.put("a", st(z=rand()))
    (old,) = env.packs_of("a", 1)
    assert old in env.packs_of("b", 1)
    env.forget("a", keep_last=1)
    env.age()

    report = env.gc()

    assert report.rewritten["packs"] == 1
    assert pack_key(old) not in env.keys() and env.keys("moved/") == {f"moved/{old}"}
    with env.reader() as c:
        # b's manifest still names the old pack: its block is found through moved/.
        assert old in {b.location.pack for b in c.store.manifest("b").blocks}
        assert c.read("b") == env.contents[("b", 1)]
        assert c.fsck().ok


def test_packs_a_little_dead_are_rewritten_beside_other_work_and_a_second_gc_has_none(
    env: Env,
) -> None:
    x1, x2 = rand(190_000), rand(390_000)
    env.put("a", st(x=x1, y=rand(10_000)))  # a pack 5% dead once a's first version goes
    env.put("b", st(x=x2, y=rand(4_000)))  # and one 1% dead
    env.put("keep", st(x1=x1, x2=x2))
    env.put("c", st(w=rand(200_000)))  # wholly dead: the gc has other work
    for path in ("a", "b", "c"):
        env.put(path, st(n=rand(1_000)))
    (p1,), (p2,) = env.packs_of("a", 1), env.packs_of("b", 1)
    env.forget("", keep_last=1)
    env.age()

    first = env.gc()

    # Below --repack (20%), the most dead first until at most 5% of what is unreachable
    # stays: a's pack goes, b's 4 KB stay.
    assert first.rewritten["packs"] == 1
    keys = env.keys("packs/")
    assert pack_key(p1) not in keys and pack_key(p2) in keys
    # Nothing new is unreachable: the next gc leaves b's pack alone, not rewriting 390 KB
    # of live blocks for 4 KB (and the one after that, and so on).
    again = env.gc(dry_run=True)
    assert not any(again.condemned.values()), again.condemned
    assert env.client.store_stats()["reclaimable_bytes"] > 4_000
    with env.reader() as c:
        assert c.read("keep") == env.contents[("keep", 1)]
        assert c.fsck().ok


def test_a_pack_rewritten_twice_still_reads_through_the_chain_and_goes_with_it(
    env: Env,
) -> None:
    x, y = rand(), rand(40_000)
    env.put("p", st(x=x, y=y, z=rand(80_000)))
    env.put("xy", st(x=x, y=y))
    env.put("x", st(x=x))
    env.put("p", st(n=rand()))
    (first,) = env.packs_of("p", 1)
    env.forget("p", keep_last=1)
    env.age()
    assert env.gc().rewritten["packs"] == 1  # first -> second
    env.put("xy", st(n=rand()))
    env.forget("xy", keep_last=1)
    env.age()
    assert env.gc().rewritten["packs"] == 1  # second -> third

    assert len(env.keys("moved/")) == 2
    with env.reader() as c:
        assert first in {b.location.pack for b in c.store.manifest("x").blocks}
        assert c.read("x") == env.contents[("x", 1)]
        assert c.fsck().ok

    # Once nothing needs the chain, its packs and moved/ records go too.
    env.put("x", st(n=rand()))
    env.forget("", keep_last=1)
    env.age()
    env.gc()
    assert env.keys("moved/") == set()
    with env.reader() as c:
        live = {
            b.location.pack for r in c.store.refs_under("") for b in c.store.manifest(r.path).blocks
        }
        assert {k.rsplit("/", 1)[-1] for k in env.keys("packs/")} == live
        assert_retained_read(env, retained(c))


def test_a_gc_with_nothing_to_collect_changes_nothing(any_env: Env) -> None:
    env = any_env
    env.put("p", st(a=rand()))
    env.put("p", st(b=rand()))
    env.age()
    before = env.listing()

    report = env.gc()

    assert not report.condemned.get("packs") and not report.reclaimed and not report.finished
    assert env.listing() == before


def test_a_dry_run_gc_writes_nothing_and_says_what_it_would_condemn(any_env: Env) -> None:
    env = any_env
    rich_history(env)
    env.forget("", keep_last=1)
    env.age()
    before = env.listing()
    watched = FailingAt(env.backend)

    report = env.gc(watched, dry_run=True)

    assert watched.calls == []
    assert env.listing() == before
    assert (
        report.dry_run and report.condemned["packs"] >= 2 and report.condemned["rewrite_packs"] >= 1
    )
    # What it said is what a real run then condemns.
    real = env.gc(wait=False)
    assert real.condemned == report.condemned


def _just_before_a_second(env: Env) -> None:
    """On a backend with whole-second object times, wait until the clock is late in its
    second: an object written now and another a moment later then fall on two whole
    seconds, and look a second apart."""
    while env.backend.time_resolution and time.time() % 1 < 0.8:
        time.sleep(0.02)


def test_objects_younger_than_the_grace_are_not_condemned(clock_env: Env) -> None:
    env = clock_env
    _just_before_a_second(env)
    env.put("p", st(a=rand()))
    env.put("p", st(b=rand()))
    env.put("p", st(c=rand()))
    env.forget("p", keep_last=1)

    young = env.gc(wait=False)

    assert not any(young.condemned.values()) and env.records() == []
    env.age()
    old = env.gc(wait=False)
    assert old.condemned["packs"] == 2 and old.condemned["manifests"] == 2


def test_the_sweep_deletes_nothing_until_the_grace_has_passed(clock_env: Env) -> None:
    env = clock_env
    env.put("p", st(a=rand()))
    env.put("p", st(b=rand()))
    env.forget("p", keep_last=1)
    env.age()
    _just_before_a_second(env)
    times: dict[str, float] = {}

    def note(method: str, key: str) -> None:
        if key.startswith("gc/condemned/") and method == "put_if_match":
            times.setdefault("condemned", time.time())
        elif method == "delete" and key.startswith(("packs/", "manifests/")):
            times.setdefault("first delete", time.time())

    env.gc(Hooked(env.backend, note))

    assert times["first delete"] - times["condemned"] >= GRACE - 0.01


def test_no_wait_leaves_a_pending_record_that_the_next_gc_finishes(env: Env) -> None:
    env.put("p", st(a=rand()))
    env.put("p", st(b=rand()))
    (old,) = env.packs_of("p", 1)
    env.forget("p", keep_last=1)
    env.age()

    first = env.gc(wait=False)
    (record,) = env.records()
    assert first.pending == [first.run] and record.run == first.run
    assert record.state == CONDEMNED and record.packs == {old}
    assert f"index/{old}" not in env.keys() and pack_key(old) in env.keys()
    # Within the grace the next gc leaves it alone.
    early = env.gc(wait=False)
    assert early.pending == [first.run] and not early.reclaimed
    assert pack_key(old) in env.keys()

    env.age()
    late = env.gc(wait=False)

    assert late.finished == [first.run] and late.reclaimed["packs"] == 1
    assert env.records() == [] and pack_key(old) not in env.keys()
    with env.reader() as c:
        assert c.read("p") == env.contents[("p", 2)]


def test_the_reclaimed_bytes_reported_equal_the_drop_in_pack_bytes(env: Env) -> None:
    rich_history(env)
    env.forget("", keep_last=1)
    env.age()
    before = env.pack_bytes()

    report = env.gc()

    assert report.reclaimed["pack_bytes"] == before - env.pack_bytes()
    assert report.examined["pack_bytes"] == before


def test_store_stats_space_adds_up_and_nothing_is_reclaimable_after_gc(env: Env) -> None:
    rich_history(env)

    def space() -> tuple[dict, int]:
        stats = env.client.store_stats()
        env.store.refresh_index()
        overhead = sum(
            i.size - (env.store.index.stored_in(i.key.rsplit("/", 1)[-1]) or 0)
            for i in env.backend.list_info("packs/")
        )
        parts = stats["live_bytes"] + stats["history_only_bytes"] + stats["reclaimable_bytes"]
        # The parts are blocks' bytes (and whole dead packs): what is left is pack trailers.
        assert 0 <= stats["pack_bytes"] - parts <= overhead
        return stats, overhead

    fresh, _ = space()
    assert fresh["reclaimable_bytes"] == 0 and fresh["history_only_bytes"] > 0
    plan = env.client.forget("", keep_last=1, dry_run=True)
    env.client.forget("", keep_last=1)
    forgot, overhead = space()
    assert forgot["live_bytes"] == fresh["live_bytes"]
    assert forgot["history_only_bytes"] == fresh["history_only_bytes"] - plan.freed_bytes
    assert plan.freed_bytes <= forgot["reclaimable_bytes"] <= plan.freed_bytes + overhead
    assert forgot["forgotten_versions"] > 0
    env.age()
    report = env.gc()
    after, _ = space()
    assert after["reclaimable_bytes"] == 0
    assert after["pack_bytes"] == forgot["pack_bytes"] - report.reclaimed["pack_bytes"]
    assert after["live_bytes"] == fresh["live_bytes"]
    assert after["collections_pending"] == 0


def _pack_id_of(blocks: list[tuple[str, bytes, int, str, str]]) -> str:
    writer = PackWriter()
    for block_id, stored, length, codec, checksum in blocks:
        writer.add(block_id, stored, length, codec, checksum)
    return writer.finish()[0]


def test_a_rewrite_into_a_pack_the_same_sweep_deletes_keeps_its_blocks(env: Env) -> None:
    """The copy of a pack's one live block x is a pack of x alone; an older copy of x alone
    (from an earlier rewrite) may be dead and condemned in the same run. The rewrite
    must not land its blocks in a pack that the sweep then deletes."""
    x = rand()
    env.put("a", st(x=x, y=rand(60_000)))
    env.put("b", st(x=x))
    x_loc = next(b.location for b in env.store.manifest("b").blocks if b.length == len(x))
    assert x_loc.codec == "raw"
    # A pack holding x alone, as a rewrite makes it (no nonce): its id is known now.
    x_alone = _pack_id_of([(x_loc.block_id, x, x_loc.length, x_loc.codec, x_loc.checksum)])
    # Choose w so that c's pack (x and w) sorts before x_alone: the sweep goes in id order.
    for _ in range(100):
        w = rand(40_000)
        with Store.create(MemoryBackend(), CONFIG) as scratch:  # every block new: one pack
            (c_pack,) = {
                b.location.pack
                for b in scratch.manifest(scratch.put("c", st(x=x, w=w)).path).blocks
            }
        if c_pack < x_alone:
            break
    else:
        pytest.fail("no pack id sorted first")
    env.put("a", st(n=rand()))
    env.forget("a", keep_last=1)
    env.age()
    env.gc(wait=False)  # condemns a's old pack, to be rewritten (b keeps x)
    env.put("c", st(x=x, w=w))  # x's pack is condemned: stored again, with w
    assert env.packs_of("c", 1) == {c_pack}
    env.put("d", st(x=x))  # deduplicates x against c's pack
    env.age()
    env.gc()  # the rewrite: x alone in a new pack, found through moved/
    env.put("b", st(n=rand()))
    env.put("c", st(n=rand()))
    env.forget("", keep_last=1)  # b@1 (x through the rewrite) and c@1 (w) go; d keeps x
    env.age()

    env.gc()

    with env.reader() as c:
        assert c.read("d") == env.contents[("d", 1)]
        assert c.fsck().ok


# writers meeting a collection in progress


def _condemn_old_version(env: Env, old: bytes) -> gc.Condemnation:
    """p@1 holds `old`; it is forgotten and its pack and manifest condemned (grace running)."""
    env.put("p", old)
    env.put("p", st(new=rand()))
    env.forget("p", keep_last=1)
    env.age()
    env.gc(wait=False)
    (record,) = env.records()
    assert record.packs and record.manifests
    return record


def test_a_put_sharing_blocks_with_a_condemned_pack_stores_them_again(env: Env) -> None:
    x = rand()
    record = _condemn_old_version(env, st(x=x, y=rand()))

    env.put("q", st(x=x, w=rand()))

    assert not env.packs_of("q", 1) & record.all_packs
    env.age()
    report = env.gc()
    assert report.finished == [record.run] and report.reclaimed["packs"] == len(record.packs)
    assert not any(pack_key(p) in env.keys() for p in record.packs)
    with env.reader() as c:
        assert c.read("q") == env.contents[("q", 1)]
        assert c.fsck().ok


def test_a_put_identical_to_a_condemned_version_gets_a_new_manifest_and_pack(env: Env) -> None:
    old = st(x=rand(), y=rand())
    record = _condemn_old_version(env, old)

    env.put("q", old)  # the same content and metadata as the forgotten p@1

    assert env.store.version("q").manifest not in record.manifests
    assert not env.packs_of("q", 1) & record.all_packs, "q references a condemned pack"
    env.age()
    env.gc()
    assert not any(pack_key(p) in env.keys() for p in record.packs)
    with env.reader() as c:
        assert c.read("q") == old


def test_a_put_that_checks_late_in_the_grace_and_commits_after_the_sweep_still_reads(
    env: Env, expect_warnings
) -> None:
    """A legitimate interleaving: the writer checks after the condemnation, near the end of
    the grace period, and its commit (within its commit window) lands just after the
    sweep's scan. It must not have referenced anything the sweep deletes."""
    expect_warnings("is missing from the store")  # what the read below logs if it fails
    old = st(x=rand(), y=rand())
    record = _condemn_old_version(env, old)
    condemned_at = env.backend.head(f"gc/condemned/{record.run}").modified
    swept: list[gc.GcReport] = []

    def sweep_first(method: str, key: str) -> None:
        if key == ref_key("q") and method == "put_if_absent" and not swept:
            time.sleep(max(0.0, condemned_at + GRACE + 0.01 - time.time()))
            swept.append(env.gc())

    writer = modelfs.Client(Store.open(Hooked(env.backend, sweep_first)), use_disk_cache=False)
    time.sleep(max(0.0, condemned_at + GRACE - WINDOW / 4 - time.time()))
    started = time.monotonic()
    writer.put("q", old)
    took = time.monotonic() - started
    writer.close()

    assert swept and swept[0].finished == [record.run]
    assert took < WINDOW, "the writer committed within its commit window"
    with env.reader() as c:
        assert c.read("q") == old


@pytest.mark.parametrize("change", ["rename", "chmod", "set_metadata"])
def test_changing_a_file_whose_content_is_condemned_references_a_copy(
    env: Env, change: str
) -> None:
    old = st(x=rand(), y=rand())
    record = _condemn_old_version(env, old)
    (manifest,) = record.manifests
    # A writer that checked before the condemnation commits q@1 with that content, within
    # its window: the sweep will find it; what is made from it now must not need it.
    content_hash = env.store.ref("p").versions[0].content_hash
    append_version(env.backend, "q", manifest, size=len(old), content_hash=content_hash)
    if change == "rename":
        env.client.store.rename("q", "r")
        path = "r"
    elif change == "chmod":
        env.client.store.chmod("q", 0o100600)
        path = "q"
    else:
        env.client.store.set_metadata("q", {"note": "hello"})
        path = "q"

    new = env.store.version(path)
    assert new.manifest not in record.manifests
    assert not env.packs_of(path, new.version) & record.all_packs
    env.forget("q", keep_last=0 if change == "rename" else 1)  # q@1 goes: nothing else needs it
    env.age()
    env.gc()
    assert manifest_key(manifest) not in env.keys()
    assert not any(pack_key(p) in env.keys() for p in record.all_packs)
    with env.reader() as c:
        assert c.read(path) == old
        assert c.fsck().ok


def test_a_put_whose_upload_outlasts_half_the_window_checks_again(env: Env) -> None:
    x = rand()
    env.put("p", st(x=x, y=rand()))
    env.put("p", st(z=rand()))
    env.forget("p", keep_last=1)
    env.age()
    (old,) = env.packs_of("p", 1)
    condemned: list[gc.GcReport] = []

    def condemn_meanwhile(method: str, key: str) -> None:
        if key.startswith("packs/") and method == "put_if_absent" and not condemned:
            condemned.append(env.gc(wait=False))  # the writer deduplicated x against `old`
            time.sleep(WINDOW / 2 + 0.02)

    writer = modelfs.Client(
        Store.open(Hooked(env.backend, condemn_meanwhile)), use_disk_cache=False
    )
    data = st(x=x, w=rand())
    writer.put("q", data)
    writer.close()

    assert condemned and condemned[0].condemned["packs"] == 1
    assert old not in env.packs_of("q", 1)
    env.age()
    env.gc()
    assert pack_key(old) not in env.keys()
    with env.reader() as c:
        assert c.read("q") == data


def test_a_commit_that_passes_the_window_checks_again_before_it_lands(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    x = rand()
    env.put("p", st(x=x, y=rand()))
    env.put("p", st(z=rand()))
    env.forget("p", keep_last=1)
    env.age()
    (old,) = env.packs_of("p", 1)
    condemned: list[gc.GcReport] = []

    def stall_the_commit(method: str, key: str) -> None:
        if key == ref_key("q") and method == "get_with_etag" and not condemned:
            condemned.append(env.gc(wait=False))
            time.sleep(WINDOW + 0.05)  # the ref write would now land after the window

    writer = modelfs.Client(Store.open(Hooked(env.backend, stall_the_commit)), use_disk_cache=False)
    data = st(x=x, w=rand())
    assert writer.put("q", data).version == 1
    writer.close()

    assert "took longer than the commit window" in caplog.text
    assert old not in env.packs_of("q", 1)
    env.age()
    env.gc()
    with env.reader() as c:
        assert c.read("q") == data


@pytest.mark.parametrize("change", ["tag", "rename", "chmod"])
def test_a_naming_or_metadata_change_that_passes_the_window_is_tried_again_in_a_new_one(
    env: Env, caplog: pytest.LogCaptureFixture, change: str
) -> None:
    data = st(x=rand())
    env.put("p", data)
    stalled: list[str] = []

    def stall(method: str, key: str) -> None:
        # The first compare-and-swap read of the change: its write would land too late.
        if method == "get_with_etag" and not stalled and key != CONFIG_KEY:
            stalled.append(key)
            time.sleep(WINDOW + 0.05)

    client = modelfs.Client(Store.open(Hooked(env.backend, stall)), use_disk_cache=False)
    if change == "tag":
        client.tag("p@1", "v1")
    elif change == "rename":
        client.store.rename("p", "q")
    else:
        client.store.chmod("p", 0o600)
    client.close()

    assert stalled and "took longer than the commit window; checking again" in caplog.text
    with env.reader() as c:
        if change == "tag":
            assert c.read("p@v1") == data
        elif change == "rename":
            assert c.read("q") == data and "p" not in [f.path for f in c.list()]
        else:
            assert c.store.version("p").file_mode == 0o600 and c.read("p") == data


# a collector killed at any backend call


def _state(root: Path) -> dict[str, bytes]:
    """Every object of a local store but the clock probes and the lock."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_file() and not key.startswith((".tmp", ".locks", "probe/")) and key != LOCK_KEY:
            out[key] = path.read_bytes()
    return out


def test_a_sweep_killed_at_any_backend_call_leaves_a_store_the_next_gc_finishes(
    make_env: Callable[..., Env], tmp_path: Path, expect_warnings
) -> None:
    env = make_env("local")
    rich_history(env)
    env.forget("", keep_last=1)
    with env.reader() as c:
        expected = retained(c)
    env.age()
    env.gc(wait=False)  # condemned; the sweep is what is interrupted below
    env.age()
    root = Path(env.backend.inner.root)  # type: ignore[attr-defined]
    template = tmp_path / "template"
    shutil.copytree(root, template, copy_function=shutil.copy2)

    def fresh_copy() -> LocalBackend:
        shutil.rmtree(root)
        shutil.copytree(template, root, copy_function=shutil.copy2)
        return LocalBackend(root)

    counting = FailingAt(fresh_copy())
    env.gc(counting)
    final = _state(root)
    writes = list(counting.calls)
    assert any(c.startswith("delete packs/") for c in writes)
    assert any(c.startswith("put_if_absent moved/") for c in writes)

    for n in range(1, len(writes) + 1):
        broken = FailingAt(fresh_copy(), fail_at=n)
        with pytest.raises(BackendError, match="injected failure"):
            env.gc(broken)
        assert_retained_read(env, expected, LocalBackend(root))
        env.gc(LocalBackend(root))
        assert _state(root) == final, f"after a failure at write {n}: {writes[n - 1]}"


def test_a_record_left_condemning_is_completed_by_the_next_gc(env: Env) -> None:
    rich_history(env)
    env.forget("", keep_last=1)
    env.age()

    def fail_index_deletes(method: str, key: str) -> None:
        if method == "delete" and key.startswith("index/"):
            raise BackendError("injected failure: killed while condemning")

    with pytest.raises(BackendError, match="injected"):
        env.gc(Hooked(env.backend, fail_index_deletes), wait=False)
    (stuck,) = env.records()
    assert stuck.state == CONDEMNING
    assert any(f"index/{p}" in env.keys() for p in stuck.all_packs)

    completing = env.gc(wait=False)
    (record,) = env.records()
    assert record.run == stuck.run and record.state == CONDEMNED
    assert stuck.run in completing.pending
    assert not any(f"index/{p}" in env.keys() for p in stuck.all_packs)

    env.age()
    finishing = env.gc()
    assert stuck.run in finishing.finished and env.records() == []
    assert not any(pack_key(p) in env.keys() for p in stuck.packs)
    with env.reader() as c:
        assert all(c.read(p, version=n) == d for (p, n), d in env.contents.items()
                   if env.store.ref(p).versions[n - 1].readable)  # fmt: skip
        report = c.fsck()
        assert (report.affected, report.missing_packs) == ([], [])


# one collection at a time


def test_a_second_collector_refuses_while_the_first_holds_the_lock(
    env: Env, monkeypatch: pytest.MonkeyPatch, user: str
) -> None:
    monkeypatch.setattr(gc, "LOCK_STALE", 1.5)
    env.put("p", st(a=rand()))
    env.put("p", st(b=rand()))
    env.forget("p", keep_last=1)
    env.age()
    refused: list[BaseException] = []
    tried: list[bool] = []

    def second_collector(line: str) -> None:
        if line.startswith("waiting") and not tried:
            tried.append(True)
            # Longer than LOCK_STALE: only the first one's heartbeat keeps the lock fresh.
            time.sleep(gc.LOCK_STALE + env.backend.time_resolution + 0.3)
            try:
                env.gc()
            except CollectionInProgressError as e:
                refused.append(e)

    with env.open_store() as store:
        report = gc.Collector(store, grace=GRACE, progress=second_collector).run()

    assert tried and refused, "the second collector ran"
    message = str(refused[0])
    assert f"run {report.run} by ana@gpu7 (pid {os.getpid()} on {socket.gethostname()})" in message
    assert report.finished == [report.run] and report.reclaimed["packs"] == 1
    assert LOCK_KEY not in env.keys()


def _write_lock(env: Env, *, host: str, pid: int, pid_space: str | None = None) -> None:
    """A lock as a collector writes it: on this boot and PID namespace unless told."""
    env.backend.put(
        LOCK_KEY,
        canonical_json(
            {
                "run": "20260101T000000Z-0badcafe",
                "by": "bob@gpu9",
                "host": host,
                "pid": pid,
                "pid_space": gc._pid_space() if pid_space is None else pid_space,
                "time": time.time(),
            }
        ),  # fmt: skip
    )


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(
    env: Env, expect_warnings
) -> None:
    expect_warnings("taking over the collection lock")
    dead = subprocess.Popen(["true"])
    dead.wait()
    _write_lock(env, host=socket.gethostname(), pid=dead.pid)
    env.put("p", st(a=rand()))
    env.put("p", st(b=rand()))
    env.forget("p", keep_last=1)
    env.age()

    report = env.gc()

    assert report.reclaimed["packs"] == 1 and LOCK_KEY not in env.keys()


def test_a_lock_of_a_pid_in_another_pid_namespace_of_this_host_is_not_taken_as_dead(
    env: Env,
) -> None:
    """A container that shares the host's name but not its processes (--uts=host) cannot
    tell whether the holder lives: its lock stands until it goes stale."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    _write_lock(env, host=socket.gethostname(), pid=dead.pid, pid_space="another-boot:1")
    with pytest.raises(CollectionInProgressError, match="another collection"):
        env.gc()


def test_a_stale_lock_is_taken_over_and_a_fresh_one_is_not(
    clock_env: Env, monkeypatch: pytest.MonkeyPatch, expect_warnings
) -> None:
    env = clock_env
    expect_warnings("taking over the collection lock")
    monkeypatch.setattr(gc, "LOCK_STALE", 0.5)
    _write_lock(env, host="elsewhere", pid=os.getpid())

    with pytest.raises(
        CollectionInProgressError, match="run 20260101T000000Z-0badcafe by bob@gpu9"
    ):
        env.gc()
    assert json.loads(env.backend.get(LOCK_KEY))["host"] == "elsewhere"

    time.sleep(gc.LOCK_STALE + 2 * env.backend.time_resolution + 0.1)
    report = env.gc()
    assert report.run and LOCK_KEY not in env.keys()


def test_break_lock_takes_over_a_lock_that_is_held(env: Env, expect_warnings) -> None:
    expect_warnings("taking over the collection lock")
    _write_lock(env, host="elsewhere", pid=1)
    with pytest.raises(CollectionInProgressError, match="--break-lock"):
        env.gc()

    env.gc(break_lock=True)

    assert LOCK_KEY not in env.keys()


def test_a_collector_whose_lock_was_taken_over_leaves_the_new_holders_lock(
    env: Env, expect_warnings
) -> None:
    expect_warnings("taken over by run", "lost the collection lock")
    with env.open_store() as store:
        lock = gc.CollectionLock(store, "20260101T000000Z-00000001")
        lock.acquire()
        # Another collector takes the lock over (--break-lock, or it looked stale) while
        # this one still runs; this one then finishes.
        _write_lock(env, host="elsewhere", pid=1)
        lock.release()

    assert json.loads(env.backend.get(LOCK_KEY))["run"] == "20260101T000000Z-0badcafe"


# readers of collected versions


def test_an_open_version_whose_pack_was_collected_fails_saying_so(
    env: Env, expect_warnings
) -> None:
    expect_warnings("is missing from the store")  # modelfs.reader logs the failed read
    env.put("p", st(a=rand()))
    env.put("p", st(b=rand()))
    opened = env.client.open("p", 1)  # its manifest is read; no block yet
    env.forget("p", keep_last=1)
    env.age()
    env.gc()

    with pytest.raises(ModelfsError, match="collected|missing") as raised:
        opened.read()
    assert isinstance(raised.value, (CollectedError, MissingPackError))


def test_an_open_version_whose_pack_was_rewritten_reads_kept_blocks_only(env: Env) -> None:
    x, y = rand(), rand(60_000)
    env.put("p", st(x=x, y=y))
    env.put("k", st(x=x))
    env.put("p", st(z=rand()))
    opened = env.client.open("p", 1)
    x_at = next(b.file_offset for b in opened.manifest.blocks if b.length == len(x))
    y_at = next(b.file_offset for b in opened.manifest.blocks if b.length == len(y))
    env.forget("p", keep_last=1)
    env.age()
    assert env.gc().rewritten["packs"] == 1

    opened.seek(x_at)
    assert opened.read(len(x)) == x  # moved, and found there
    opened.seek(y_at)
    with pytest.raises(CollectedError, match="was collected"):
        opened.read(len(y))


def test_a_grace_shorter_than_twice_the_commit_window_is_refused(env: Env) -> None:
    with pytest.raises(InvalidArgumentError, match=r"at least twice that \(0.4 s\)"):
        env.gc(grace=2 * WINDOW - 0.01)
    with pytest.raises(InvalidArgumentError, match="--repack"):
        env.gc(repack=0)


# the format


@pytest.mark.parametrize("first", ["forget", "gc"])
def test_a_version_3_store_becomes_version_4_at_its_first_forget_or_gc(
    make_env: Callable[..., Env], first: str
) -> None:
    env = make_env("memory", StoreConfig(version=3, commit_window=WINDOW))
    for _ in range(3):
        env.put("p", st(a=rand()))
    env.client.tag("p@1", "v1")
    assert json.loads(env.backend.get(CONFIG_KEY))["version"] == 3

    if first == "forget":
        env.forget("p", keep_last=1)
    else:
        env.gc()

    assert json.loads(env.backend.get(CONFIG_KEY))["version"] == 4
    with env.reader() as c:
        assert c.store.config.version == 4
        assert c.read("p@v1") == env.contents[("p", 1)]
        assert c.read("p") == env.contents[("p", 3)]


def test_forgotten_ref_entries_round_trip_and_others_stay_as_version_3_wrote_them(
    env: Env, user: str
) -> None:
    env.put("p", rand(1000))
    env.put("p", rand(1000))
    manifest = env.store.version("p", 1).manifest
    env.forget("p", keep_last=1)

    raw = env.backend.get(ref_key("p"))
    entries = json.loads(raw)["versions"]
    assert entries[0]["forgotten"]["by"] == "ana@gpu7"
    assert entries[0]["forgotten"]["rule"] == "keep-last 1"
    assert entries[0]["manifest"] == manifest  # kept: a name set meanwhile still finds it
    assert "forgotten" not in entries[1]
    ref = Ref.from_bytes(raw, ref_key("p"))
    assert Ref.from_bytes(ref.to_bytes(), ref_key("p")) == ref
    assert ref.to_bytes() == raw
    assert ref.versions[0].forgotten and ref.versions[0].manifest is not None


def test_fsck_after_forgetting_and_collecting_snapshots_finds_no_problem(env: Env) -> None:
    for i in range(3):
        env.put("d/f", st(f=rand()))
        env.client.record_metrics("d", {"step": i})  # snapshots 1..3
    env.forget("d", keep_last=1)
    env.age()
    env.gc()

    with env.reader() as c:
        report = c.fsck()
        assert report.ok, report.problems
        assert c.read("d@3/f") == env.contents[("d/f", 3)]
