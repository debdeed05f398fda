"""Format 3 on the store: names records, snapshot objects, metrics in refs, the upgrade, fsck.

The API and CLI over them are tested in test_naming.py; these are the objects'
rules from docs/FORMAT.md (Names records, Directory snapshots), checked on an
in-memory store and, where a backend matters, on both real backends.
"""

from __future__ import annotations

import itertools
import json
import threading

import pytest

from modelfs.backends import MemoryBackend
from modelfs.errors import FormatError, InvalidArgumentError, UnsupportedFormatError
from modelfs.store import Store, StoreConfig
from modelfs.store import format as store_format
from modelfs.store.addresses import resolve
from modelfs.store.naming import log_of, measure, name_version
from modelfs.store.paths import names_key
from modelfs.store.registry import NamesRecord, load_record
from modelfs.store.snapshots import SNAPSHOTS_PREFIX, take_snapshot


@pytest.fixture
def store() -> Store:
    s = Store.create(MemoryBackend())
    s.put("bert/config.json", b'{"hidden": 8}')
    s.put("bert/model.safetensors", b"w" * 1000)
    return s


def test_a_version_2_store_becomes_version_3_at_its_first_name_and_older_readers_refuse_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = MemoryBackend()
    old = Store.create(backend, StoreConfig(version=2))
    old.put("m.bin", b"x" * 100)
    assert json.loads(backend.get("config"))["version"] == 2
    ref_before = backend.get("refs/m%2Ebin~")
    assert b"metrics" not in ref_before  # a version-2 reader reads what a version-3 one wrote
    store = Store.open(backend)
    name_version(store, "m.bin", "v1", alias=False)
    assert json.loads(backend.get("config"))["version"] == 3
    assert resolve(Store.open(backend), "m.bin@v1").version == 1
    monkeypatch.setattr(store_format, "FORMAT_VERSION", 2)
    with pytest.raises(UnsupportedFormatError, match="upgrade modelfs"):
        Store.open(backend)


def test_a_put_with_metrics_upgrades_first_and_a_put_without_does_not() -> None:
    backend = MemoryBackend()
    store = Store.create(backend, StoreConfig(version=2))
    store.put("a.bin", b"a")
    assert json.loads(backend.get("config"))["version"] == 2
    store.put("a.bin", b"b", metrics={"loss": 0.5})
    assert json.loads(backend.get("config"))["version"] == 3
    assert [v.metrics for v in Store.open(backend).history("a.bin")] == [None, {"loss": 0.5}]


def test_a_bad_metric_at_put_stores_nothing(store: Store) -> None:
    before = sorted(store.backend.list(""))
    for bad in ({"version": 1}, {"acc": float("nan")}, {"acc": True}, {"1acc": 1}, {"": 1}):
        with pytest.raises(InvalidArgumentError):
            store.put("new.bin", b"n" * 10, metrics=bad)
    assert sorted(store.backend.list("")) == before


def test_a_names_record_read_from_another_paths_key_is_refused(store: Store) -> None:
    name_version(store, "bert/config.json", "v1", alias=False)
    data = store.backend.get(names_key("bert/config.json", is_dir=False))
    store.backend.put(names_key("bert/model.safetensors", is_dir=False), data)
    with pytest.raises(FormatError, match="whose key is not"):
        load_record(store.backend, "bert/model.safetensors", is_dir=False)


def test_a_snapshot_is_content_addressed_and_checked_on_read(store: Store) -> None:
    name_version(store, "bert", "champion", alias=True)
    (key,) = store.backend.list(SNAPSHOTS_PREFIX)
    snap = take_snapshot(store, "bert")
    assert key.endswith(snap.id) and [f.path for f in snap.files] == [
        "config.json", "model.safetensors"
    ]  # fmt: skip
    # The same files at other version numbers have the same content hash.
    store.put("bert/config.json", b"changed")
    store.put("bert/config.json", b'{"hidden": 8}')
    again = take_snapshot(store, "bert")
    assert again.id != snap.id and again.content_hash == snap.content_hash
    store.backend.put(key, store.backend.get(key).replace(b"config", b"konfig"))
    with pytest.raises(FormatError, match="does not match its id"):
        resolve(Store.open(store.backend), "bert@champion")


def test_naming_a_directory_unchanged_reuses_its_snapshot_number(store: Store) -> None:
    name_version(store, "bert", "a", alias=True)
    name_version(store, "bert", "b", alias=True)
    record = load_record(store.backend, "bert", is_dir=True)
    assert record is not None and len(record.snapshots) == 1
    store.put("bert/model.safetensors", b"v" * 1000)
    name_version(store, "bert", "a", alias=True)
    record = load_record(store.backend, "bert", is_dir=True)
    assert [s.version for s in record.snapshots] == [1, 2]
    assert resolve(store, "bert@b").version == 1 and resolve(store, "bert@a").version == 2


def test_metrics_recorded_later_merge_over_those_of_the_commit_and_can_be_removed(
    store: Store,
) -> None:
    store.put("m.bin", b"x", metrics={"acc": 0.5, "dataset": "sst2"})
    measure(store, "m.bin@1", {"acc": 0.75, "f1": 0.7})
    assert resolve(store, "m.bin").metrics == {"acc": 0.75, "dataset": "sst2", "f1": 0.7}
    measure(store, "m.bin@1", {"dataset": None})
    assert resolve(store, "m.bin").metrics == {"acc": 0.75, "f1": 0.7}
    assert [v.version for v in store.history("m.bin")] == [1]  # no new version
    assert [e.action for e in log_of(store, "m.bin")] == ["metrics", "metrics"]


def test_concurrent_alias_moves_all_land_in_the_log_and_the_last_is_current(
    store: Store,
) -> None:
    for i in range(7):
        store.put("m.bin", bytes([i]) * 10)
    errors: list[BaseException] = []

    def mover(version: int) -> None:
        try:
            for _ in range(3):
                name_version(Store.open(store.backend), f"m.bin@{version}", "best", alias=True)
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)

    threads = [threading.Thread(target=mover, args=(v,)) for v in range(1, 8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    moves = log_of(store, "m.bin", "best")
    # Each of the 7 versions became the target at least once; every move starts where the
    # one before it ended; the current target is the last move's.
    assert {m.after.version for m in moves} == set(range(1, 8))
    assert all(a.after == b.before for a, b in itertools.pairwise(moves))
    assert resolve(store, "m.bin@best").version == moves[-1].after.version


def test_fsck_names_a_tag_whose_target_is_broken_and_a_missing_snapshot(store: Store) -> None:
    name_version(store, "bert/config.json", "v1", alias=False)
    name_version(store, "bert", "champion", alias=True)
    assert store.fsck().ok
    key = names_key("bert/config.json", is_dir=False)
    doc = json.loads(store.backend.get(key))
    doc["names"]["v1"]["target"]["version"] = 9
    store.backend.put(key, json.dumps(doc).encode())
    (snap_key,) = store.backend.list(SNAPSHOTS_PREFIX)
    store.backend.delete(snap_key)
    report = Store.open(store.backend).fsck()
    assert not report.ok
    text = "\n".join(report.problems)
    assert "tag bert/config.json@v1 names bert/config.json@9" in text
    assert "snapshot 1 of bert" in text and "missing" in text


def test_a_record_round_trips_byte_for_byte(store: Store) -> None:
    name_version(store, "bert", "v1", alias=False, message="first")
    measure(store, "bert@v1", {"acc": 0.9})
    key = names_key("bert", is_dir=True)
    data = store.backend.get(key)
    assert NamesRecord.from_bytes(data, key).to_bytes() == data


def test_a_chmod_an_xattr_or_a_rename_keeps_the_versions_metrics(store: Store) -> None:
    """The same content is the same model: its measurements stay with it."""
    store.put("m.bin", b"x" * 10, metrics={"acc": 0.5})
    measure(store, "m.bin", {"f1": 0.25})
    store.chmod("m.bin", 0o100600)
    store.set_metadata("m.bin", {"user.note": "n"})
    assert resolve(store, "m.bin").version == 3
    assert resolve(store, "m.bin").metrics == {"acc": 0.5, "f1": 0.25}
    store.rename("m.bin", "moved.bin")
    assert resolve(store, "moved.bin").metrics == {"acc": 0.5, "f1": 0.25}
