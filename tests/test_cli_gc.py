"""The CLI of retention and collection: `modelfs forget`, `modelfs gc`, and what `log`,
`stat` and `fsck` then say. Run as a user would (python -m modelfs), on a local store
with a short commit window so that a grace period of a second is allowed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import CLI, sha256
from test_cli import store_objects


def _versions(cli: CLI, store: Path, tmp_path: Path, path: str, n: int) -> list[bytes]:
    """n versions of path, each 1.5 MB of fresh random bytes with a metric."""
    datas = []
    for i in range(n):
        data = os.urandom(1_500_000)
        local = tmp_path / f"v{i}"
        local.write_bytes(data)
        cli("put", store, local, path, "--metric", f"accuracy={0.5 + 0.1 * (i % 3)}")
        datas.append(data)
    return datas


@pytest.fixture
def store(cli: CLI, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    cli("init", store, "--commit-window", "0.2")
    return store


def test_forget_then_gc_reclaims_the_forgotten_and_keeps_the_rest_byte_exact(
    cli: CLI, store: Path, tmp_path: Path
) -> None:
    datas = _versions(cli, store, tmp_path, "run/ckpt.bin", 5)
    other = _versions(cli, store, tmp_path, "other.bin", 1)
    cli("tag", store, "run/ckpt.bin@1", "first")

    dry = cli("forget", store, "run/", "--keep-last", "2", "--dry-run", "-v").stdout.decode()
    assert "would forget run/ckpt.bin versions 2, 3" in dry
    assert "keep 1: tag first" in dry and "keep 5: one of the last 2" in dry
    assert "a gc would then free up to 2.9 MiB of packs" in dry
    before = store_objects(store)
    assert store_objects(store) == before  # a dry run writes nothing

    out = cli("forget", store, "run/", "--keep-last", "2").stdout.decode()
    assert "forgot 2 versions" in out
    log = cli("log", store, "run/ckpt.bin").stdout.decode()
    assert log.count("forgotten (keep-last 2, by ") == 2
    refused = cli("cat", store, "run/ckpt.bin@2", check=False)
    assert refused.returncode == 1
    assert b"version 2 of run/ckpt.bin was forgotten (keep-last 2" in refused.stderr

    stat = json.loads(cli("stat", store, "--json").stdout)
    assert stat["reclaimable_bytes"] >= 3_000_000 and stat["forgotten_versions"] == 2
    fsck = cli("fsck", store).stdout.decode()  # garbage is not damage
    assert "garbage (harmless" in fsck and "no problems found" in fsck

    time.sleep(1.2)  # gc leaves alone what is younger than its grace
    report = json.loads(cli("gc", store, "--grace", "1s", "--json").stdout)
    assert report["reclaimed"]["pack_bytes"] >= 3_000_000
    assert report["reclaimed"]["manifests"] == 2
    assert report["finished"] == [report["run"]] and report["pending"] == []

    stat = json.loads(cli("stat", store, "--json").stdout)
    assert stat["reclaimable_bytes"] == 0
    for n, data in ((1, datas[0]), (4, datas[3]), (5, datas[4])):
        assert sha256(cli("cat", store, f"run/ckpt.bin@{n}").stdout) == sha256(data)
    assert cli("cat", store, "run/ckpt.bin@first").stdout == datas[0]
    assert cli("cat", store, "other.bin").stdout == other[0]
    assert "no problems found" in cli("fsck", store).stdout.decode()


def test_keep_best_by_a_metric_keeps_the_best_and_lower_is_better_with_min(
    cli: CLI, store: Path, tmp_path: Path
) -> None:
    _versions(cli, store, tmp_path, "m.bin", 5)  # accuracy 0.5 0.6 0.7 0.5 0.6
    plan = json.loads(
        cli("forget", store, "m.bin", "--keep-best", "1", "--by", "accuracy", "--dry-run",
            "--json").stdout
    )  # fmt: skip
    (entry,) = plan["paths"]
    assert entry["forget"] == [1, 2, 4]  # the best (v3) and the current (v5) stay
    plan = json.loads(
        cli("forget", store, "m.bin", "--keep-best", "2", "--by", "accuracy:min", "--dry-run",
            "--json").stdout
    )  # fmt: skip
    (entry,) = plan["paths"]
    assert sorted(int(n) for n in entry["keep"]) == [1, 4, 5]  # the two 0.5s, the current


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "say what to keep"),
        (("--keep-within", "soon"), "'soon' is not a duration"),
        (("--by", "accuracy"), "--by ranks versions for --keep-best"),
        (("--keep-best", "1"), "--keep-best needs --by"),
        (("--keep-last", "-1"), "must be 0 or more"),
    ],
)
def test_a_forget_that_cannot_be_done_says_why_and_changes_nothing(
    cli: CLI, store: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    _versions(cli, store, tmp_path, "m.bin", 3)
    before = store_objects(store)
    proc = cli("forget", store, "m.bin", *args, check=False)
    assert proc.returncode in (1, 2)
    assert message in proc.stderr.decode()
    assert store_objects(store) == before


def test_forget_of_nothing_there_is_an_error(cli: CLI, store: Path) -> None:
    proc = cli("forget", store, "nope/", "--keep-last", "1", check=False)
    assert proc.returncode == 1
    assert "nothing in the store at nope" in proc.stderr.decode()


def test_gc_refuses_a_grace_shorter_than_twice_the_commit_window(
    cli: CLI, store: Path, tmp_path: Path
) -> None:
    _versions(cli, store, tmp_path, "m.bin", 2)
    before = store_objects(store)
    proc = cli("gc", store, "--grace", "0.3s", check=False)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "grace period of 0.3 s is too short" in err and "commit window (0.2 s)" in err
    assert store_objects(store) == before


def test_gc_dry_run_and_no_wait_then_a_later_gc_finishes(
    cli: CLI, store: Path, tmp_path: Path
) -> None:
    _versions(cli, store, tmp_path, "m.bin", 3)
    cli("forget", store, "m.bin", "--keep-last", "1")
    time.sleep(1.2)
    before = store_objects(store)
    dry = cli("gc", store, "--grace", "1s", "--dry-run").stdout.decode()
    assert "would condemn 2 packs" in dry
    assert store_objects(store) == before

    first = json.loads(cli("gc", store, "--grace", "1s", "--no-wait", "--json").stdout)
    assert first["pending"] == [first["run"]] and not first["reclaimed"].get("packs")
    stat = json.loads(cli("stat", store, "--json").stdout)
    assert stat["collections_pending"] == 1
    time.sleep(1.2)
    second = json.loads(cli("gc", store, "--grace", "1s", "--json").stdout)
    assert first["run"] in second["finished"]
    assert second["reclaimed"]["packs"] == 2
    assert json.loads(cli("stat", store, "--json").stdout)["collections_pending"] == 0
