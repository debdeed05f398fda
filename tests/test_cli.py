"""The modelfs command line, end to end, as a user runs it, on real MiniLM weights.

Every command's normal use and its --json form, then bad input: each must
exit 1 with a message on stderr that names the problem, and change nothing
(the listing, the history and the store's objects are compared before and
after; a failed get leaves no destination or temporary file).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import CLI, sha256
from storeobjects import StoreObjects

import modelfs
from modelfs.models import encode_model
from modelfs.store.format import pack_key

PATH = "minilm/model.safetensors"


def as_json(proc) -> object:
    return json.loads(proc.stdout)


def store_objects(store: str | Path) -> dict[str, tuple[object, ...]]:
    """Every object of a store (local or S3) with what changes when it is written."""
    with StoreObjects(str(store)) as objects:
        return objects.snapshot()


def flip_byte(store: str, key: str, offset: int) -> None:
    with StoreObjects(store) as objects:
        objects.flip_byte(key, offset)


def middle_block(store: str) -> SimpleNamespace:
    """The file offset and pack location of a block in the middle of MiniLM, from the store."""
    with modelfs.open_store(store, use_disk_cache=False) as c:
        m = c.store.manifest(PATH)
    b = m.blocks[len(m.blocks) // 2]
    return SimpleNamespace(
        file_offset=b.file_offset,
        pack=pack_key(b.location.pack),
        pack_offset=b.location.offset,
    )


@pytest.fixture(scope="module")
def module_cli(tmp_path_factory: pytest.TempPathFactory) -> CLI:
    return CLI(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture(scope="module")
def finetuned_path(
    tmp_path_factory: pytest.TempPathFactory, minilm_tensors: dict[str, np.ndarray]
) -> Path:
    """MiniLM with its last encoder layer changed, as a safetensors file."""
    tensors = {
        name: arr * np.float32(1.01) if name.startswith("encoder.layer.5.") else arr
        for name, arr in minilm_tensors.items()
    }
    path = tmp_path_factory.mktemp("finetuned") / "model.safetensors"
    path.write_bytes(encode_model(tensors))
    return path


@pytest.fixture(scope="module")
def two_versions(
    module_cli: CLI,
    tmp_path_factory: pytest.TempPathFactory,
    minilm_path: Path,
    finetuned_path: Path,
) -> SimpleNamespace:
    """A store with MiniLM as version 1 of PATH and its fine-tuned copy as version 2.

    Shared by the tests that only read it; returns the store and what the two puts printed.
    """
    store = str(tmp_path_factory.mktemp("cli") / "store")
    module_cli("init", store)
    first = module_cli("put", store, minilm_path, PATH, "-m", "base")
    second = module_cli("put", store, finetuned_path, PATH, "--json", "-m", "fine-tuned")
    return SimpleNamespace(store=store, first=first.stdout.decode(), second=as_json(second))


@pytest.fixture
def small_store(cli: CLI, store_url: str, tmp_path: Path) -> SimpleNamespace:
    """A store with one small file, notes/a.txt, and a local file to put."""
    local = tmp_path / "local.bin"
    local.write_bytes(b"some local bytes\n")
    cli("put", store_url, local, "notes/a.txt")
    return SimpleNamespace(store=store_url, local=local)


@pytest.fixture
def minilm_store(cli: CLI, store_url: str, minilm_path: Path) -> str:
    """A store of the test's own with MiniLM at PATH."""
    cli("put", store_url, minilm_path, PATH)
    return store_url


# creating a store


def test_init_creates_a_store_and_refuses_a_second_time(cli: CLI, tmp_path: Path) -> None:
    store = tmp_path / "new-store"

    first = cli("init", store)
    assert "initialised" in first.stdout.decode()
    assert cli("ls", store).stdout == b""
    objects = store_objects(store)

    again = cli("init", store, check=False)

    assert again.returncode == 1
    assert "already holds a modelfs store" in again.stderr.decode()
    assert store_objects(store) == objects


# putting


def test_put_prints_the_version_and_dedup_figures(two_versions: SimpleNamespace) -> None:
    m = re.search(
        r"^minilm/model\.safetensors version 1: .* in (\d+) blocks \(safetensors\); (\d+) new, .* uploaded, .* saved by dedup and compression",
        two_versions.first,
    )
    assert m, two_versions.first
    assert m.group(1) == m.group(2)  # a first put: every block is new


def test_put_json_reports_the_result_fields(
    two_versions: SimpleNamespace, finetuned_path: Path
) -> None:
    r = two_versions.second
    assert {
        "path",
        "version",
        "size",
        "blocks",
        "new_blocks",
        "new_bytes",
        "uploaded_bytes",
        "manifest",
        "layout",
    } <= set(r)
    assert (r["path"], r["version"], r["size"], r["layout"]) == (
        PATH,
        2,
        finetuned_path.stat().st_size,
        "safetensors",
    )


def test_put_of_a_modified_copy_uploads_few_bytes(two_versions: SimpleNamespace) -> None:
    r = two_versions.second
    assert 0 < r["uploaded_bytes"] <= r["new_bytes"] < 0.2 * r["size"]
    assert r["new_blocks"] < r["blocks"] // 4


def test_put_from_standard_input(cli: CLI, store_url: str, minilm_path: Path) -> None:
    cli("put", store_url, "-", "from-stdin.safetensors", input=minilm_path.read_bytes())

    assert sha256(cli("cat", store_url, "from-stdin.safetensors").stdout) == sha256(minilm_path)


def test_put_attaches_message_and_metadata(cli: CLI, small_store: SimpleNamespace) -> None:
    cli(
        "put",
        small_store.store,
        small_store.local,
        "tagged.bin",
        "-m",
        "trained 3 epochs",
        "--meta",
        "user.accuracy=0.91",
    )

    info = as_json(cli("stat", small_store.store, "tagged.bin", "--json"))

    assert info["message"] == "trained 3 epochs"
    assert info["metadata"] == {"user.accuracy": "0.91"}


# reading


def test_ls_lists_current_files(
    module_cli: CLI, two_versions: SimpleNamespace, finetuned_path: Path
) -> None:
    store = two_versions.store
    size = finetuned_path.stat().st_size

    assert module_cli("ls", store).stdout.decode() == PATH + "\n"
    assert module_cli("ls", store, "minilm").stdout.decode() == PATH + "\n"
    assert module_cli("ls", store, "elsewhere").stdout == b""
    (line,) = module_cli("ls", store, "-l").stdout.decode().splitlines()
    assert re.fullmatch(
        rf"\s*{size}\s+v2\s+\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\s+{re.escape(PATH)}", line
    )
    (entry,) = as_json(module_cli("ls", store, "--json"))
    assert (entry["path"], entry["version"], entry["size"]) == (PATH, 2, size)


def test_cat_writes_the_file_to_standard_output(
    module_cli: CLI, two_versions: SimpleNamespace, minilm_path: Path, finetuned_path: Path
) -> None:
    assert sha256(module_cli("cat", two_versions.store, PATH).stdout) == sha256(finetuned_path)
    assert sha256(module_cli("cat", two_versions.store, PATH, "--version", "1").stdout) == sha256(
        minilm_path
    )


def test_get_to_a_path_and_into_a_directory(
    module_cli: CLI, two_versions: SimpleNamespace, tmp_path: Path, finetuned_path: Path
) -> None:
    module_cli("get", two_versions.store, PATH, tmp_path / "copy.safetensors")
    (tmp_path / "dir").mkdir()
    module_cli("get", two_versions.store, PATH, tmp_path / "dir", "-q")

    assert sha256(tmp_path / "copy.safetensors") == sha256(finetuned_path)
    assert sha256(tmp_path / "dir" / "model.safetensors") == sha256(finetuned_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.safetensors", "dir"]
    assert [p.name for p in (tmp_path / "dir").iterdir()] == ["model.safetensors"]


def test_get_of_an_old_version(
    module_cli: CLI, two_versions: SimpleNamespace, tmp_path: Path, minilm_path: Path
) -> None:
    out = module_cli(
        "get", two_versions.store, PATH, tmp_path / "old.safetensors", "--version", "1"
    )

    assert sha256(tmp_path / "old.safetensors") == sha256(minilm_path)
    assert "version 1" in out.stdout.decode() + out.stderr.decode()


def test_log_lists_versions_newest_first(
    module_cli: CLI, two_versions: SimpleNamespace, minilm_path: Path, finetuned_path: Path
) -> None:
    lines = module_cli("log", two_versions.store, PATH).stdout.decode().splitlines()
    assert [line.split()[0] for line in lines] == ["v2", "v1"]
    assert lines[0].endswith("fine-tuned") and lines[1].endswith("base")

    versions = as_json(module_cli("log", two_versions.store, PATH, "--json"))
    assert [(v["version"], v["size"], v["message"], v["deleted"]) for v in versions] == [
        (2, finetuned_path.stat().st_size, "fine-tuned", False),
        (1, minilm_path.stat().st_size, "base", False),
    ]
    assert all(v["content_hash"].startswith("blake3:") for v in versions)


def test_stat_of_a_file(module_cli: CLI, two_versions: SimpleNamespace, minilm_path: Path) -> None:
    text = module_cli("stat", two_versions.store, PATH, "--version", "1").stdout.decode()
    assert re.search(r"layout: safetensors", text)
    assert re.search(rf"size: {minilm_path.stat().st_size} \(", text)

    info = as_json(module_cli("stat", two_versions.store, PATH, "--version", "1", "--json"))
    assert (info["path"], info["version"], info["size"], info["layout"]) == (
        PATH,
        1,
        minilm_path.stat().st_size,
        "safetensors",
    )
    assert info["blocks"] == info["unique_blocks"] > 1
    assert info["compression_ratio"] > 1
    assert info["stored_bytes"] < info["size"]


def test_stat_of_the_whole_store(
    module_cli: CLI, two_versions: SimpleNamespace, minilm_path: Path, finetuned_path: Path
) -> None:
    info = as_json(module_cli("stat", two_versions.store, "--json"))

    assert (info["files"], info["versions"]) == (1, 2)
    assert (
        info["logical_bytes_all_versions"]
        == minilm_path.stat().st_size + finetuned_path.stat().st_size
    )
    assert info["compression_ratio"] > 1
    # Two near-identical versions take little more room than one.
    assert info["dedup_ratio"] > 1.5
    assert info["unique_bytes"] < 1.2 * minilm_path.stat().st_size


def test_rm_removes_the_file_from_ls_but_keeps_its_history(
    cli: CLI, small_store: SimpleNamespace
) -> None:
    store = small_store.store

    out = cli("rm", store, "notes/a.txt")

    assert "deleted as version 2" in out.stdout.decode()
    assert cli("ls", store).stdout == b""
    assert as_json(cli("ls", store, "--json")) == []
    assert [v["deleted"] for v in as_json(cli("log", store, "notes/a.txt", "--json"))] == [
        True,
        False,
    ]
    assert "deleted" in cli("log", store, "notes/a.txt").stdout.decode().splitlines()[0]
    assert cli("cat", store, "notes/a.txt", "--version", "1").stdout == b"some local bytes\n"


# checking


def test_fsck_passes_a_good_store_and_fails_after_a_corrupt_pack_byte(
    cli: CLI, minilm_store: str
) -> None:
    good = cli("fsck", minilm_store)
    assert good.returncode == 0
    assert "no problems found" in good.stdout.decode()

    block = middle_block(minilm_store)
    flip_byte(minilm_store, block.pack, block.pack_offset + 5)
    bad = cli("fsck", minilm_store, check=False)

    assert bad.returncode == 3
    out = bad.stdout.decode()
    assert f"affected: {PATH} version 1 at offset {block.file_offset}" in out
    assert "PROBLEMS FOUND" in out
    report = as_json(cli("fsck", minilm_store, "--json", check=False))
    assert report["ok"] is False
    assert [(a["path"], a["offset"]) for a in report["affected"]] == [(PATH, block.file_offset)]


# bad input: exit 1, a message naming the problem, nothing changed


def assert_refused(cli: CLI, store: str, args: list[object], problem: str) -> None:
    """Run a command that must fail, and check the store did not change."""
    before = (
        cli("ls", store, "--json").stdout,
        cli("log", store, "notes/a.txt", "--json").stdout,
        store_objects(store),
    )

    proc = cli(*args, check=False)

    assert proc.returncode == 1, proc.stderr.decode()
    assert problem in proc.stderr.decode()
    assert proc.stdout == b""
    after = (
        cli("ls", store, "--json").stdout,
        cli("log", store, "notes/a.txt", "--json").stdout,
        store_objects(store),
    )
    assert after == before


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["cat", "{store}", "no/such.bin"], "no such file in the store: no/such.bin"),
        (
            ["get", "{store}", "no/such.bin", "{dest}/out.bin"],
            "no such file in the store: no/such.bin",
        ),
        (
            ["get", "{store}", "notes/a.txt", "{dest}/out.bin", "--version", "7"],
            "notes/a.txt has no version 7",
        ),
        (["cat", "{store}", "notes/a.txt", "--version", "7"], "notes/a.txt has no version 7"),
        (["log", "{store}", "no/such.bin"], "no such file in the store: no/such.bin"),
        (["stat", "{store}", "no/such.bin"], "no such file in the store: no/such.bin"),
        (["rm", "{store}", "no/such.bin"], "no such file in the store: no/such.bin"),
        (["put", "{store}", "{local}", "../escape.bin"], "contains '..'"),
        (["put", "{store}", "{local}", "notes/../../escape.bin"], "contains '..'"),
        (["get", "{store}", "notes/../notes/a.txt", "{dest}/out.bin"], "contains '..'"),
        (["put", "{store}", "{local}", "notes/" + "x" * 256], "longer than 255 bytes"),
        (["put", "{store}", "{local}", "notes/a.txt/under-a-file"], "notes/a.txt is a file"),
        (["put", "{store}", "{local}", "notes"], "notes: it is a directory"),
        (["put", "{store}", "{dest}/missing.bin", "m.bin"], "no such local file"),
        (["put", "{store}", "{dest}", "m.bin"], "is a directory"),
        (["put", "{store}", "-"], "needs a destination PATH"),
        (["put", "{store}", "{local}", "m.bin", "--meta", "novalue"], "--meta takes KEY=VALUE"),
    ],
    ids=lambda v: (
        v if isinstance(v, str) else " ".join(v[:1] + v[2:]).replace("{", "").replace("}", "")[:60]
    ),
)
def test_bad_input_is_refused_and_changes_nothing(
    cli: CLI, small_store: SimpleNamespace, tmp_path: Path, args: list[str], problem: str
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    subst = {"{store}": small_store.store, "{local}": str(small_store.local), "{dest}": str(dest)}
    argv = [re.sub(r"\{\w+\}", lambda m: subst[m.group(0)], a) for a in args]

    assert_refused(cli, small_store.store, argv, problem)

    assert list(dest.iterdir()) == []  # no destination, no temporary file


def test_a_missing_store_is_refused_and_not_created(cli: CLI, tmp_path: Path) -> None:
    local = tmp_path / "local.bin"
    local.write_bytes(b"x")
    for args in (
        ["ls", tmp_path / "nostore"],
        ["put", tmp_path / "nostore", local, "x.bin"],
        ["fsck", tmp_path / "nostore"],
    ):
        proc = cli(*args, check=False)
        assert proc.returncode == 1
        assert f"no store at '{tmp_path / 'nostore'}'" in proc.stderr.decode()
    assert not (tmp_path / "nostore").exists()

    (tmp_path / "empty").mkdir()
    proc = cli("ls", tmp_path / "empty", check=False)
    assert proc.returncode == 1
    assert "no modelfs store" in proc.stderr.decode()
    assert list((tmp_path / "empty").iterdir()) == []


def test_a_store_of_a_newer_format_is_refused_and_left_alone(
    cli: CLI, small_store: SimpleNamespace, tmp_path: Path
) -> None:
    with StoreObjects(small_store.store) as store_objects_:
        doc = json.loads(store_objects_.read("config"))
        doc["version"] += 1
        store_objects_.write("config", json.dumps(doc).encode())
    objects = store_objects(small_store.store)

    for args in (
        ["ls", small_store.store],
        ["cat", small_store.store, "notes/a.txt"],
        ["put", small_store.store, small_store.local, "new.bin"],
    ):
        proc = cli(*args, check=False)
        assert proc.returncode == 1
        stderr = proc.stderr.decode()
        assert f"format version {doc['version']}" in stderr and "upgrade modelfs" in stderr

    assert store_objects(small_store.store) == objects


def test_get_of_a_corrupt_block_leaves_no_destination_file(
    cli: CLI, minilm_store: str, tmp_path: Path
) -> None:
    block = middle_block(minilm_store)
    flip_byte(minilm_store, block.pack, block.pack_offset + 5)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "existing.safetensors").write_bytes(b"an older download")

    for target in (dest / "model.safetensors", dest, dest / "existing.safetensors"):
        proc = cli("get", minilm_store, PATH, target, check=False)

        assert proc.returncode == 1
        assert re.search(
            rf"{re.escape(PATH)} at offset {block.file_offset}\b", proc.stderr.decode()
        )
        assert proc.stdout == b""
        assert [p.name for p in dest.iterdir()] == [
            "existing.safetensors"
        ]  # nothing new, no temp file
        assert (dest / "existing.safetensors").read_bytes() == b"an older download"


# files that only look like safetensors


def damage_header(data: bytes, how: str) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    if how == "not-json":
        return data[:8] + b"X" + data[9:]
    if how == "garbled-json":
        return data[: 8 + n // 2] + b"\0\0\0\0" + data[8 + n // 2 + 4 :]
    if how == "length-past-end":
        return struct.pack("<Q", len(data)) + data[8:]
    if how == "huge-length":
        return struct.pack("<Q", 2**63 + 5) + data[8:]
    if how == "truncated-in-header":
        return data[: 8 + n // 2]
    raise AssertionError(how)


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "how", ["not-json", "garbled-json", "length-past-end", "huge-length", "truncated-in-header"]
)
def test_damaged_safetensors_header_is_stored_as_plain_bytes(
    cli: CLI, store_url: str, tmp_path: Path, minilm_path: Path, how: str
) -> None:
    local = tmp_path / "damaged.safetensors"
    local.write_bytes(damage_header(minilm_path.read_bytes(), how))

    put = as_json(cli("put", store_url, local, "damaged.safetensors", "--json"))
    info = as_json(cli("stat", store_url, "damaged.safetensors", "--json"))
    cli("get", store_url, "damaged.safetensors", tmp_path / "back.safetensors")

    assert put["layout"] == info["layout"] == "cdc"
    assert info["size"] == local.stat().st_size
    assert hashlib.sha256((tmp_path / "back.safetensors").read_bytes()).hexdigest() == sha256(local)


def test_a_name_that_is_not_utf8_lists_and_logs_as_its_bytes(store_url: str, cli, tmp_path) -> None:
    name = b"run/\xff\xfe weights.bin".decode("utf-8", "surrogateescape")  # as os.fsdecode gives it
    with modelfs.open_store(store_url, use_disk_cache=False) as c:
        c.put(name, b"data")
    assert b"run/\xff\xfe weights.bin" in cli("ls", store_url).stdout
    assert cli("log", store_url, name).stdout.startswith(b"v1 ")
    out = tmp_path / "out.bin"
    cli("get", store_url, name, out)
    assert out.read_bytes() == b"data"
