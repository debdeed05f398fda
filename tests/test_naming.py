"""Tags, aliases, metrics and selection, as users reach them: the Python API, then the CLI.

A tag names one version and never moves; an alias moves and logs every move;
metrics are recorded at put or later (no new version); selection ranks
versions by them. Every read takes an address (PATH@N, PATH@NAME,
PATH@blake3:HEX, PATH@latest, DIR@NAME/FILE) and says which version it got.
Bad input is refused with a message naming the problem, and the store's
objects are compared before and after: nothing changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import CLI
from storeobjects import StoreObjects

import modelfs
from modelfs.backends import MemoryBackend
from modelfs.errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidArgumentError,
    IsADirectoryError_,
    NotFoundError,
)
from modelfs.store import Store, StoreConfig
from modelfs.store.paths import names_key
from modelfs.store.query import QueryError
from modelfs.store.registry import Target, who

CK = "ck/m.bin"


def memory_client(config: StoreConfig | None = None) -> modelfs.Client:
    return modelfs.Client(Store.create(MemoryBackend(), config), use_disk_cache=False)


@pytest.fixture
def c() -> Iterator[modelfs.Client]:
    """A store in memory with ck/m.bin at versions 1..4 (acc 0.6..0.9, one of them on mnli)."""
    client = memory_client()
    for i in range(1, 5):
        client.put(CK, bytes([i]) * 1000, message=f"run {i}",
                   metrics={"acc": round(0.5 + i / 10, 2), "ds": "mnli" if i == 3 else "sst2"})  # fmt: skip
    yield client
    client.close()


def objects(client: modelfs.Client) -> dict[str, bytes]:
    """Every object of the store, to show that a refused change wrote nothing."""
    backend = client.store.backend
    return {k: backend.get(k) for k in backend.list("")}


# tags


def test_a_tag_names_one_version_and_reads_back_by_address(c: modelfs.Client) -> None:
    named = c.tag(f"{CK}@2", "v1", message="first release")

    assert (named.kind, named.target.path, named.target.version) == ("tag", CK, 2)
    with c.open(f"{CK}@v1") as f:
        assert f.read() == bytes([2]) * 1000
        assert (f.path, f.version, f.pinned) == (CK, 2, f"{CK}@2")
        assert f.content_hash == named.target.content_hash == c.history(CK)[1].content_hash
    r = c.resolve(f"{CK}@v1")
    assert r.describe() == f"{CK}@2 {named.target.content_hash} (tag v1)"
    assert c.read(f"{CK}@{named.target.content_hash[:20]}") == bytes([2]) * 1000
    assert c.read(f"{CK}@latest") == bytes([4]) * 1000
    assert [(n.name, n.message, n.by) for n in c.names(CK)] == [("v1", "first release", who())]


def test_a_tag_never_moves_and_the_refusal_changes_nothing(c: modelfs.Client) -> None:
    c.tag(f"{CK}@2", "v1")
    c.tag(f"{CK}@2", "v1")  # the same version again: no change, no error
    before = objects(c)

    with pytest.raises(
        AlreadyExistsError, match=r"tag ck/m.bin@v1 already names ck/m.bin@2.*never moves"
    ):
        c.tag(f"{CK}@3", "v1")

    assert objects(c) == before
    assert c.resolve(f"{CK}@v1").version == 2
    assert [e.action for e in c.names_log(CK)] == ["tag"]


def test_an_alias_moves_and_its_log_keeps_every_move(c: modelfs.Client) -> None:
    first = c.alias(f"{CK}@1", "champion", message="baseline")
    c.alias(f"{CK}@3", "champion", message="better on mnli")
    c.alias(CK, "champion", message="current", expect=f"{CK}@3")

    assert c.resolve(f"{CK}@champion").pinned == f"{CK}@4"
    log = c.names_log(CK, "champion")
    assert [(e.action, e.before and e.before.version, e.after.version, e.message, e.by)
            for e in log] == [
        ("alias", None, 1, "baseline", who()),
        ("alias", 1, 3, "better on mnli", who()),
        ("alias", 3, 4, "current", who()),
    ]  # fmt: skip
    assert log[0].after == first.target
    assert len(c.history(CK)) == 4  # naming makes no version


def test_an_alias_moved_meanwhile_is_not_moved_by_expect(c: modelfs.Client) -> None:
    c.alias(f"{CK}@1", "champion")
    c.alias(f"{CK}@2", "champion")
    before = objects(c)

    with pytest.raises(ConflictError, match="names ck/m.bin@2, not ck/m.bin@1"):
        c.alias(f"{CK}@4", "champion", expect=f"{CK}@1")

    assert objects(c) == before


def test_removing_a_tag_or_an_alias_is_logged_and_the_name_stops_resolving(
    c: modelfs.Client,
) -> None:
    c.tag(f"{CK}@1", "v1")
    c.alias(f"{CK}@2", "champion")

    assert c.untag(CK, "v1", message="withdrawn").version == 1
    assert c.unalias(CK, "champion", message="retired").version == 2

    assert c.names(CK) == []
    events = c.names_log(CK)
    assert [(e.action, e.name, e.before and e.before.version, e.after, e.message)
            for e in events[2:]] == [
        ("untag", "v1", 1, None, "withdrawn"),
        ("unalias", "champion", 2, None, "retired"),
    ]  # fmt: skip
    with pytest.raises(NotFoundError, match="has no tag or alias 'champion'"):
        c.open(f"{CK}@champion")
    with pytest.raises(NotFoundError, match="has no alias 'champion'"):
        c.unalias(CK, "champion")
    with pytest.raises(NotFoundError, match="has no tag 'v2'"):
        c.untag(CK, "v2")


def test_eight_clients_moving_one_alias_at_once_all_land_in_its_log(
    store_url: str,
) -> None:
    with modelfs.open_store(store_url, use_disk_cache=False) as setup:
        for i in range(8):
            setup.put(CK, bytes([i]) * 100)

    def move(i: int) -> None:
        with modelfs.open_store(store_url, use_disk_cache=False) as mine:
            mine.alias(f"{CK}@{i + 1}", "champion", message=f"mover {i}")

    with ThreadPoolExecutor(8) as pool:
        for done in [pool.submit(move, i) for i in range(8)]:
            done.result()  # a mover's exception fails the test

    with modelfs.open_store(store_url, use_disk_cache=False) as check:
        log = check.names_log(CK, "champion")
        current = [n for n in check.names(CK) if n.name == "champion"]
    assert sorted(e.message for e in log) == [f"mover {i}" for i in range(8)]
    assert log[0].before is None
    for earlier, later in zip(log, log[1:], strict=False):
        assert later.before == earlier.after  # each move replaced the one before it
    assert len(current) == 1 and current[0].target == log[-1].after


# directories


@pytest.fixture
def bert(c: modelfs.Client) -> modelfs.Client:
    c.put("bert/config.json", b'{"layers": 12}')
    c.put("bert/model.safetensors", b"weights v1")
    return c


def test_an_alias_of_a_directory_names_a_snapshot_and_its_files_read_through_it(
    bert: modelfs.Client,
) -> None:
    named = bert.alias("bert", "champion", message="first good one")
    bert.put("bert/model.safetensors", b"weights v2")
    bert.put("bert/config.json", b'{"layers": 24}')

    assert named.target == Target("bert", 1, named.target.content_hash, True)
    with bert.open("bert@champion/config.json") as f:
        assert f.read() == b'{"layers": 12}'
        assert (f.path, f.version) == ("bert/config.json", 1)
    assert bert.read("bert@champion/model.safetensors") == b"weights v1"
    assert bert.read("bert/model.safetensors") == b"weights v2"
    assert [(i.path, i.version) for i in bert.list("bert@champion")] == [
        ("bert/config.json", 1), ("bert/model.safetensors", 1),
    ]  # fmt: skip
    info = bert.stat("bert@champion")
    assert (info["version"], info["files"], info["names"]) == (1, 2, ["bert@champion"])
    with pytest.raises(IsADirectoryError_, match="not a file"):
        bert.open("bert@champion")
    # The alias moves to the directory as it is now: a second snapshot.
    assert bert.alias("bert", "champion").target.version == 2
    assert bert.read("bert@champion/model.safetensors") == b"weights v2"
    assert bert.read("bert@1/model.safetensors") == b"weights v1"


# metrics


def test_metrics_recorded_later_merge_with_those_of_the_put_and_make_no_version(
    c: modelfs.Client,
) -> None:
    r = c.record_metrics(f"{CK}@2", {"f1": 0.81, "acc": 0.75, "ds": None}, message="re-eval")

    assert r.metrics == {"acc": 0.75, "f1": 0.81}
    assert len(c.history(CK)) == 4
    assert c.stat(f"{CK}@2")["metrics"] == {"acc": 0.75, "f1": 0.81}
    assert c.stat(CK, version=1)["metrics"] == {"acc": 0.6, "ds": "sst2"}
    assert c.metrics_by_version(CK)[2] == {"acc": 0.75, "f1": 0.81}
    assert c.names_log(CK)[-1].metrics == {"f1": 0.81, "acc": 0.75, "ds": None}
    c.tag(f"{CK}@2", "v1")
    assert c.stat(f"{CK}@v1")["names"] == ["ck/m.bin@v1"]
    assert c.names_by_version(CK) == {2: ["ck/m.bin@v1"]}


# selection


def test_select_ranks_one_files_versions_by_where_order_by_and_limit(c: modelfs.Client) -> None:
    chosen = c.select(CK, where="acc >= 0.7 and ds == 'sst2'", order_by="-acc", limit=2)

    assert [x.address for x in chosen.ranked] == [f"{CK}@4", f"{CK}@2"]
    assert (chosen.considered, chosen.matched) == (4, 2)
    assert [x.address for x in c.select(CK).ranked][0] == f"{CK}@4"  # newest first


def test_select_over_a_prefix_moves_the_directorys_alias_to_the_best_in_one_call(
    c: modelfs.Client,
) -> None:
    c.put("ck/other.bin", b"other", metrics={"acc": 0.95, "ds": "mnli"})

    chosen = c.select("ck/", where="ds == 'mnli'", order_by="-acc", all_versions=True,
                      alias="best", message="nightly")  # fmt: skip

    assert [x.address for x in chosen.ranked] == ["ck/other.bin@1", f"{CK}@3"]
    [best] = c.names("ck")
    assert (best.name, best.target.path, best.message) == ("best", "ck/other.bin", "nightly")
    assert c.read("ck@best") == b"other"
    # Only current versions by default.
    assert [x.address for x in c.select("ck/", order_by="acc").ranked] == [
        f"{CK}@4", "ck/other.bin@1",
    ]  # fmt: skip


def test_select_with_an_alias_and_no_match_changes_nothing(c: modelfs.Client) -> None:
    c.alias(f"{CK}@1", "best")
    before = objects(c)

    with pytest.raises(
        NotFoundError, match="no version of ck/m.bin matches 'acc > 5'.*not changed"
    ):
        c.select(CK, where="acc > 5", alias="best")

    assert objects(c) == before


# bad input


def _put_weird(client: modelfs.Client) -> None:
    client.put("weird@name.bin", b"odd")


BAD: list[tuple[str, Callable[[modelfs.Client], object], type[Exception], str]] = [
    ("unknown tag", lambda c: c.open(f"{CK}@nope"), NotFoundError,
     "ck/m.bin has no tag or alias 'nope' (it has: v1)"),
    ("tag moved", lambda c: c.tag(f"{CK}@4", "v1"), AlreadyExistsError, "a tag never moves"),
    ("alias to a missing version", lambda c: c.alias(f"{CK}@9", "champion"), NotFoundError,
     "ck/m.bin has no version 9 (versions 1..4)"),
    ("alias of a missing path", lambda c: c.alias("no/such.bin", "x"), NotFoundError,
     "no such file or directory in the store: no/such.bin"),
    ("malformed where", lambda c: c.select(CK, where="acc >> 1", alias="best"), QueryError,
     "expected a value after '>'"),
    ("malformed order-by", lambda c: c.select(CK, order_by="-"), QueryError, "order-by"),
    ("metric name starting with a digit", lambda c: c.record_metrics(CK, {"1abc": 1}),
     InvalidArgumentError, "metric name '1abc' is not allowed"),
    ("reserved metric name", lambda c: c.record_metrics(CK, {"version": 1}),
     InvalidArgumentError, "metric name 'version' is reserved"),
    ("NaN", lambda c: c.record_metrics(CK, {"acc": float("nan")}), InvalidArgumentError,
     "not a finite number"),
    ("bool", lambda c: c.record_metrics(CK, {"acc": True}), InvalidArgumentError,
     "is not a number or a string"),
    ("bad metric at put", lambda c: c.put(CK, b"x", metrics={"acc": float("inf")}),
     InvalidArgumentError, "not a finite number"),
    ("hash that matches nothing", lambda c: c.read(f"{CK}@blake3:00000000"), NotFoundError,
     "no version of ck/m.bin has content blake3:00000000"),
    ("a selector that is no name", lambda c: c.read(f"{CK}@-x"), InvalidArgumentError,
     "is neither a version number, a tag or alias name"),
    ("version and an address", lambda c: c.open(f"{CK}@1", version=2), InvalidArgumentError,
     "do not give a version as well"),
    ("a tag removed as an alias", lambda c: c.unalias(CK, "v1"), NotFoundError,
     "has no alias 'v1'"),
    ("a name that is all digits", lambda c: c.tag(CK, "123"), InvalidArgumentError,
     "not only digits"),
    ("an @ in a file name", lambda c: c.read("weird@name.bin"), NotFoundError,
     "write weird@name.bin@latest"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "call", "error", "problem"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_its_reason_and_changes_nothing(
    c: modelfs.Client, what: str, call: Callable, error: type[Exception], problem: str
) -> None:
    c.tag(f"{CK}@2", "v1")
    _put_weird(c)
    before = objects(c)

    with pytest.raises(error) as raised:
        call(c)

    assert problem in str(raised.value)
    assert objects(c) == before
    assert [n.name for n in c.names(CK)] == ["v1"] and len(c.history(CK)) == 4


def test_a_file_with_an_at_sign_in_its_name_is_reached_with_latest(c: modelfs.Client) -> None:
    c.put("weird@name.bin", b"one")
    c.put("weird@name.bin", b"two")

    assert c.read("weird@name.bin@latest") == b"two"
    assert c.read("weird@name.bin@1") == b"one"
    c.tag("weird@name.bin@1", "first")
    assert c.read("weird@name.bin@first") == b"one"


def test_names_with_an_at_sign_at_every_level_are_reached_with_latest(c: modelfs.Client) -> None:
    c.put("odd@dir/we@ird.bin", b"one")
    c.put("odd@dir/we@ird.bin", b"two")

    assert c.read("odd@dir@latest/we@ird.bin@latest") == b"two"
    assert c.read("odd@dir@latest/we@ird.bin@1") == b"one"
    c.tag("odd@dir@latest/we@ird.bin@1", "first")
    assert c.read("odd@dir@latest/we@ird.bin@first") == b"one"
    got = c.resolve("odd@dir@latest/we@ird.bin@first")
    assert got.path == "odd@dir/we@ird.bin" and got.pinned == "odd@dir@latest/we@ird.bin@1"
    assert c.read(got.pinned) == b"one"  # what output shows can be given back as it is
    assert [n for n in c.names_by_version("odd@dir@latest/we@ird.bin@latest")[1]] == [
        "odd@dir@latest/we@ird.bin@first"
    ]
    with pytest.raises(NotFoundError, match="write odd@dir@latest/we@ird.bin@latest"):
        c.read("odd@dir/we@ird.bin")


def test_a_damaged_names_record_hides_names_not_versions_until_fsck_repair_sets_it_aside(
    c: modelfs.Client, caplog: pytest.LogCaptureFixture, expect_warnings: Callable[..., None]
) -> None:
    expect_warnings("its names and later metrics are not shown")
    c.alias(f"{CK}@2", "champion")
    c.record_metrics(f"{CK}@2", {"f1": 0.5})
    backend = c.store.backend
    key = names_key(CK, is_dir=False)
    backend.put(key, b'{"broken')

    # The versions read as before, with the metrics recorded at put; a warning says why
    # the rest is missing.
    assert c.read(f"{CK}@2") == bytes([2]) * 1000 and c.read(CK) == bytes([4]) * 1000
    assert c.metrics_by_version(CK)[2] == {"acc": 0.7, "ds": "sst2"}
    assert "its names and later metrics are not shown" in caplog.text
    # What decides by names refuses, naming the record and the way out; nothing changes.
    before = objects(c)
    for refused in (lambda: c.read(f"{CK}@champion"), lambda: c.alias(f"{CK}@3", "champion"),
                    lambda: c.record_metrics(f"{CK}@3", {"f1": 0.6}), lambda: c.select(CK)):  # fmt: skip
        with pytest.raises(modelfs.ModelfsError, match=r"names record .*fsck --repair"):
            refused()
    assert objects(c) == before
    report = c.fsck()
    assert not report.ok and any(key in p for p in report.problems)

    repaired = c.fsck(repair=True)
    assert repaired.ok and len(repaired.repaired) == 1
    (aside,) = [k for k in backend.list("damaged/")]
    assert backend.get(aside) == b'{"broken' and c.fsck().ok
    c.alias(f"{CK}@3", "champion")
    assert c.resolve(f"{CK}@champion").version == 3


def test_a_format_2_store_is_upgraded_to_3_at_its_first_tag() -> None:
    client = memory_client(StoreConfig(version=2))
    client.put(CK, b"old")
    assert client.store.config.version == 2  # a plain put needs nothing new

    client.tag(CK, "v1")

    assert client.store.config.version == 3
    reopened = Store.open(client.store.backend)
    assert reopened.config.version == 3
    assert client.read(f"{CK}@v1") == b"old"


# models


def test_models_carry_metrics_and_load_by_name_or_by_selection(c: modelfs.Client) -> None:
    for i, acc in enumerate([0.7, 0.9, 0.8]):
        modelfs.save_model("clf", {"w": np.full(4, i, np.float32)}, store=c,
                           metrics={"acc": acc})  # fmt: skip
    c.tag("clf.safetensors@2", "release")

    best = modelfs.select_model("clf", store=c, where="acc > 0.75", order_by="-acc")
    assert (best.path, best.version, best.metrics) == ("clf.safetensors", 2, {"acc": 0.9})
    assert best.content_hash == c.history("clf.safetensors")[1].content_hash
    assert modelfs.load_model("clf", store=c, select="acc > 0", order_by="acc")["w"][0] == 0
    assert modelfs.load_model("clf", store=c, version="release")["w"][0] == 1
    assert modelfs.load_model("clf", store=c, version=3)["w"][0] == 2
    assert modelfs.load_model("clf", store=c, version=best.content_hash)["w"][0] == 1
    with pytest.raises(NotFoundError, match="no version of clf.safetensors matches 'acc > 1'"):
        modelfs.select_model("clf", store=c, where="acc > 1")
    with pytest.raises(InvalidArgumentError, match="not both"):
        modelfs.load_model("clf", store=c, version=1, select="acc > 0")


def test_load_model_loads_a_sharded_directory_model_from_one_version(c: modelfs.Client) -> None:
    from modelfs.models import encode_model

    def save(step: int) -> None:
        shards = {
            "model-00001-of-00002.safetensors": {"a": np.full(3, step, np.float32)},
            "model-00002-of-00002.safetensors": {"b": np.full(2, -step, np.float32)},
        }
        index = {"weight_map": {k: name for name, t in shards.items() for k in t}}
        c.put("hf/config.json", b"{}")
        c.put("hf/model.safetensors.index.json", json.dumps(index).encode())
        for name, tensors in shards.items():
            c.put(f"hf/{name}", encode_model(tensors))

    save(1)
    c.tag("hf", "v1")
    save(2)
    c.record_metrics("hf@v1", {"acc": 0.9})
    old = modelfs.load_model("hf", store=c, version="v1")
    assert {k: v.tolist() for k, v in old.items()} == {"a": [1, 1, 1], "b": [-1, -1]}
    assert modelfs.load_model("hf", store=c)["b"].tolist() == [-2, -2]  # as it is now
    assert modelfs.load_model("hf", store=c, version=1)["a"].tolist() == [1, 1, 1]
    assert modelfs.load_model("hf", store=c, select="acc > 0.5")["a"].tolist() == [1, 1, 1]
    c.put("hf/model.safetensors.index.json", b'{"no": "map"}')
    with pytest.raises(modelfs.FormatError, match="is not a shard index"):
        modelfs.load_model("hf", store=c)
    c.put("bare/config.json", b"{}")
    with pytest.raises(NotFoundError, match="neither model.safetensors nor"):
        modelfs.load_model("bare", store=c)


# the command line


def _run(cli: CLI, *args: object) -> str:
    return cli(*args).stdout.decode()


@pytest.fixture
def cli_store(local_store_url: str, tmp_path: Path) -> str:
    """A local store with ck/m.bin versions 1..3 (acc 0.7, 0.9, 0.8) and bert/ (two files),
    written through the API (quicker than through the CLI, whose put --metric is tested below)."""
    with modelfs.open_store(local_store_url, use_disk_cache=False) as client:
        for i, acc in enumerate([0.7, 0.9, 0.8], 1):
            (tmp_path / f"m{i}.bin").write_bytes(bytes([i]) * 100)
            client.put(CK, bytes([i]) * 100, metrics={"acc": acc, "ds": "sst2"}, message=f"run {i}")
        client.put("bert/config.json", b'{"layers": 12}')
        client.put("bert/model.safetensors", bytes([1]) * 100)
    return local_store_url


def test_cli_tags_aliases_and_their_log(cli: CLI, cli_store: str, tmp_path: Path) -> None:
    s = cli_store
    assert _run(cli, "tag", s, CK, "v1", "--version", "2", "-m", "release").startswith(
        "tag ck/m.bin@v1 -> ck/m.bin@2 blake3:"
    )
    cli("alias", s, "bert", "champion", "-m", "first")
    cli("put", s, tmp_path / "m2.bin", "bert/model.safetensors")
    cli("alias", s, "bert", "champion", "-m", "second")

    got = _run(cli, "get", s, f"{CK}@v1", tmp_path / "out.bin", "-q")
    hash2 = json.loads(_run(cli, "log", s, CK, "--json"))[1]["content_hash"]
    assert (
        got == f"ck/m.bin@2 {hash2}\n" and (tmp_path / "out.bin").read_bytes() == bytes([2]) * 100
    )
    cat = cli("cat", s, "bert@1/model.safetensors")
    assert cat.stdout == bytes([1]) * 100
    assert cat.stderr.decode().startswith("bert/model.safetensors@1 blake3:")
    assert cli("cat", s, "bert@champion/model.safetensors").stdout == bytes([2]) * 100
    assert _run(cli, "ls", s, "bert@1").split() == ["bert/config.json", "bert/model.safetensors"]

    log = _run(cli, "alias", "log", s, "bert", "champion").splitlines()
    assert len(log) == 2 and "(none) -> bert@1" in log[0] and log[0].endswith("first")
    assert "bert@1 blake3:" in log[1] and "-> bert@2 blake3:" in log[1] and "second" in log[1]
    tags = _run(cli, "tags", s).splitlines()
    assert [t.split()[:4] for t in tags] == [
        ["alias", "bert@champion", "->", "bert@2"], ["tag", "ck/m.bin@v1", "->", "ck/m.bin@2"],
    ]  # fmt: skip
    assert "[acc=0.9 ds=sst2]" in tags[1]
    assert _run(cli, "tags", s, "ck").splitlines() == tags[1:]

    cli("alias", "rm", s, "bert", "champion", "-m", "retired")
    cli("untag", s, CK, "v1")
    assert _run(cli, "tags", s) == ""
    events = json.loads(_run(cli, "alias", "log", s, "bert", "champion", "--json"))
    assert [e["action"] for e in events] == ["alias", "alias", "unalias"]
    assert events[-1]["message"] == "retired" and events[-1]["from"]["version"] == 2


def test_cli_metrics_show_in_log_and_stat_and_make_no_version(
    cli: CLI, cli_store: str, tmp_path: Path
) -> None:
    s = cli_store
    cli("put", s, tmp_path / "m1.bin", "other.bin", "--metric", "acc=0.5", "--metric", "ds=x")
    assert "acc=0.5 ds=x" in _run(cli, "log", s, "other.bin")
    out = _run(cli, "metric", s, f"{CK}@1", "f1=0.5", "note=baseline", "--delete", "ds")
    assert out.startswith("ck/m.bin@1 blake3:") and out.rstrip().endswith(
        "acc=0.7 f1=0.5 note=baseline"
    )
    cli("tag", s, f"{CK}@1", "base")

    log = _run(cli, "log", s, CK).splitlines()
    assert [line.split()[0] for line in log] == ["v3", "v2", "v1"]
    assert "acc=0.7 f1=0.5 note=baseline  [ck/m.bin@base]  run 1" in log[2]
    assert "acc=0.8 ds=sst2  run 3" in log[0]
    stat = _run(cli, "stat", s, f"{CK}@base")
    assert "address: ck/m.bin@1 blake3:" in stat
    assert "metrics: acc=0.7 f1=0.5 note=baseline" in stat and "names: ck/m.bin@base" in stat
    assert json.loads(_run(cli, "stat", s, CK, "--json"))["metrics"] == {"acc": 0.8, "ds": "sst2"}
    assert "verified, no problems found" in _run(cli, "fsck", s, f"{CK}@base")


def test_cli_select_ranks_and_moves_an_alias_in_the_same_step(cli: CLI, cli_store: str) -> None:
    s = cli_store
    out = _run(cli, "select", s, CK, "--where", "acc > 0.75", "--order-by", "-acc", "--limit",
               "1", "--alias", "best", "-m", "nightly")  # fmt: skip
    lines = out.splitlines()
    assert lines[0].startswith("ck/m.bin@2 blake3:") and lines[0].endswith("acc=0.9 ds=sst2")
    assert lines[1].startswith("alias ck/m.bin@best -> ck/m.bin@2")
    assert cli("cat", s, f"{CK}@best").stdout == bytes([2]) * 100

    rows = json.loads(_run(cli, "select", s, CK, "--order-by", "acc", "--json"))
    assert [(r["address"], r["metrics"]["acc"]) for r in rows] == [
        (f"{CK}@1", 0.7), (f"{CK}@3", 0.8), (f"{CK}@2", 0.9),
    ]  # fmt: skip
    csv_lines = _run(cli, "select", s, "ck/", "--csv").splitlines()
    assert csv_lines[0].endswith(",acc,ds") and csv_lines[1].startswith(f"{CK}@3,")
    assert len(csv_lines) == 2  # the current version only, without --all-versions


CLI_BAD = [
    (["cat", "{s}", f"{CK}@nope"], "ck/m.bin has no tag or alias 'nope' (it has: v1)"),
    (["tag", "{s}", CK, "v1", "--version", "3"], "a tag never moves"),
    (["alias", "{s}", CK, "champion", "--version", "9"], "ck/m.bin has no version 9"),
    (["select", "{s}", CK, "--where", "acc >> 1"], "expected a value after '>' at column 6\n"
     "  acc >> 1\n       ^"),
    (["metric", "{s}", CK, "1abc=2"], "metric name '1abc' is not allowed"),
    (["metric", "{s}", CK, "version=2"], "metric name 'version' is reserved"),
    (["metric", "{s}", CK, "acc=nan"], "metric acc: 'nan' is not a finite number"),
    (["put", "{s}", "{local}", CK, "--metric", "acc"], "is not NAME=VALUE"),
    (["get", "{s}", f"{CK}@blake3:00000000", "{dest}"], "no version of ck/m.bin has content"),
    (["get", "{s}", f"{CK}@1", "{dest}", "--version", "2"], "do not give a version as well"),
    (["alias", "rm", "{s}", CK, "v1"], "ck/m.bin has no alias 'v1'"),
    (["select", "{s}", CK, "--where", "acc > 5", "--alias", "best"], "no version of ck/m.bin"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "problem"), CLI_BAD, ids=[" ".join(a[:1] + a[2:]) for a, _ in CLI_BAD]
)
def test_cli_bad_input_exits_1_naming_the_problem_and_changes_nothing(
    cli: CLI, cli_store: str, tmp_path: Path, args: list[str], problem: str
) -> None:
    cli("tag", cli_store, f"{CK}@2", "v1")
    subst = {"{s}": cli_store, "{local}": str(tmp_path / "m1.bin"), "{dest}": str(tmp_path / "d")}
    with StoreObjects(cli_store) as before_objects:
        before = before_objects.snapshot()

    proc = cli(*[subst.get(a, a) for a in args], check=False)

    assert proc.returncode == 1, proc.stderr.decode()
    assert problem in proc.stderr.decode()
    assert proc.stdout == b""
    with StoreObjects(cli_store) as after_objects:
        assert after_objects.snapshot() == before
    assert not (tmp_path / "d").exists()


def test_cli_moves_a_directorys_alias_to_a_version_under_it_and_logs_a_directory(
    cli: CLI, cli_store: str
) -> None:
    """`alias STORE run champion --target run/step-2` moves run@champion (the name stays the
    directory's); `log STORE DIR` lists the directory's snapshots with their names."""
    s = cli_store
    cli("alias", s, "ck", "best", "--target", f"{CK}@2", "-m", "first pick")
    assert cli("cat", s, "ck@best").stdout == bytes([2]) * 100
    cli("alias", s, "ck", "best", "--target", f"{CK}@3")
    assert cli("cat", s, "ck@best").stdout == bytes([3]) * 100
    moves = _run(cli, "alias", "log", s, "ck", "best").splitlines()
    assert len(moves) == 2 and f"{CK}@2" in moves[1] and f"{CK}@3" in moves[1]
    assert f"{CK}@best" not in _run(cli, "tags", s)  # no alias was made on the file itself
    before = _run(cli, "tags", s)
    for bad, why in (
        (("--target", "bert"), "outside ck"),
        (("--target", f"{CK}@9"), "no version 9"),
        (("--target", CK, "--version", "1"), "not both"),
    ):
        proc = cli("alias", s, "ck", "best", *bad, check=False)
        assert proc.returncode == 1 and why in proc.stderr.decode()
    assert _run(cli, "tags", s) == before
    cli("alias", s, "bert", "champion")
    assert "has no snapshots" in cli("log", s, "ck", check=False).stderr.decode()
    (line,) = _run(cli, "log", s, "bert").splitlines()
    assert line.startswith("s1 ") and "2 files" in line and "[bert@champion]" in line


def test_cli_fsck_reports_a_damaged_names_record_and_repair_sets_it_aside(
    cli: CLI, cli_store: str
) -> None:
    s = cli_store
    cli("alias", s, f"{CK}@2", "champion")
    record = Path(s.removeprefix("file://")) / names_key(CK, is_dir=False)
    record.write_bytes(b"\x00not json")

    assert _run(cli, "log", s, CK).splitlines()[0].split()[0] == "v3"  # versions still read
    refused = cli("cat", s, f"{CK}@champion", check=False)
    assert refused.returncode == 1 and b"fsck --repair" in refused.stderr
    found = cli("fsck", s, check=False)
    assert found.returncode == 3 and f"problem: names record {names_key(CK, is_dir=False)}" in (
        found.stdout.decode()
    )
    repaired = _run(cli, "fsck", s, "--repair")
    assert "repaired: names record" in repaired and "set aside at damaged/meta/" in repaired
    assert _run(cli, "fsck", s).endswith("no problems found\n")
    cli("alias", s, f"{CK}@3", "champion")
    assert cli("cat", s, f"{CK}@champion").stdout == bytes([3]) * 100
