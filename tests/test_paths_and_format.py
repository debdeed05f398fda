"""Stored paths and their ref keys; the config object and its format version.

A path that modelfs cannot store faithfully must be refused up front, with a
message naming what is wrong; any path it accepts must map to a valid blob key
and back unchanged, and no file's key may be a prefix of another path's key.
"""

from __future__ import annotations

import itertools
import json
import re

import pytest

from modelfs.backends.base import check_key
from modelfs.errors import FormatError, InvalidPathError, NameTooLongError, UnsupportedFormatError
from modelfs.store.format import FORMAT_VERSION, ChunkingLimits, StoreConfig
from modelfs.store.manifest import Manifest
from modelfs.store.paths import (
    NAME_MAX,
    PATH_MAX,
    dir_ref_prefix,
    normalize_path,
    path_from_ref_key,
    ref_key,
)

ODD_NAMES = [
    "model.safetensors",
    "with space/and  two",
    "ünïcödé/日本語/モデル.bin",
    "~tilde~/~",
    "100%/%41%2F",
    ".hidden/..double/...triple",
    "-dash/_under",
    "a+b=c&d?e#f",
    "emoji 🤖",
    "UPPER/lower",
    "tab\there",
    "back\\slash",
    "undecodable-\udcff\udc80",  # bytes 0xff 0x80, as os.fsdecode gives them
]


# normalize_path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("model.safetensors", "model.safetensors"),
        ("org/model/weights.bin", "org/model/weights.bin"),
        ("/leading/slash", "leading/slash"),
        ("trailing/slash/", "trailing/slash"),
        (".hidden", ".hidden"),
        ("a/..b/c..", "a/..b/c.."),
        ("ünïcödé", "ünïcödé"),
    ],
)
def test_normalize_path_accepts_ordinary_paths(path: str, expected: str) -> None:
    assert normalize_path(path) == expected


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("", "empty path"),
        ("/", "empty path"),
        ("a//b", "empty component"),
        ("..", "'..'"),
        ("a/../b", "'..'"),
        ("a/..", "'..'"),
        (".", "'.'"),
        ("a/./b", "'.'"),
        ("nul\0byte", "NUL"),
        ("lone-\ud800-surrogate", "not valid Unicode"),
    ],
)
def test_normalize_path_rejects_paths_it_cannot_store_and_says_why(path: str, problem: str) -> None:
    with pytest.raises(InvalidPathError, match=re.escape(problem)):
        normalize_path(path)


def test_normalize_path_rejects_a_non_string() -> None:
    with pytest.raises(InvalidPathError, match="must be a string"):
        normalize_path(b"bytes/path")  # type: ignore[arg-type]


def test_a_name_of_255_bytes_is_accepted_and_256_bytes_is_too_long() -> None:
    assert normalize_path("d/" + "n" * NAME_MAX) == "d/" + "n" * NAME_MAX
    with pytest.raises(NameTooLongError, match=f"longer than {NAME_MAX} bytes"):
        normalize_path("d/" + "n" * (NAME_MAX + 1))


def test_name_length_is_counted_in_utf8_bytes_not_characters() -> None:
    assert normalize_path("é" * 127)  # 254 bytes
    with pytest.raises(NameTooLongError, match="name"):
        normalize_path("é" * 128)  # 128 characters, 256 bytes


def test_a_path_over_1024_bytes_is_too_long_even_with_short_names() -> None:
    ok = "/".join(["d" * 99] * 10) + "/" + "f" * 23  # 1023 bytes
    assert len(ok) == PATH_MAX - 1
    assert normalize_path(ok) == ok
    with pytest.raises(NameTooLongError, match=f"path .* longer than {PATH_MAX} bytes"):
        normalize_path(ok + "ff")


def test_name_too_long_errors_are_invalid_path_errors_and_value_errors() -> None:
    with pytest.raises(InvalidPathError):
        normalize_path("x" * 300)
    with pytest.raises(ValueError):
        normalize_path("x" * 300)


# ref keys


@pytest.mark.parametrize("path", ODD_NAMES)
def test_ref_key_round_trips_odd_names(path: str) -> None:
    key = ref_key(path)
    assert path_from_ref_key(key) == normalize_path(path)


@pytest.mark.parametrize("path", ODD_NAMES)
def test_ref_key_is_a_valid_blob_key_of_safe_characters(path: str) -> None:
    key = ref_key(path)
    assert check_key(key) == key  # no component starts with '.', none is empty
    assert re.fullmatch(r"[A-Za-z0-9._~%/-]+", key)


def test_ref_key_accepts_equivalent_spellings_of_a_path_as_one_key() -> None:
    assert ref_key("/org/model/") == ref_key("org/model")


def test_distinct_paths_get_distinct_keys() -> None:
    paths = ["a", "A", "a b", "a%20b", "a~", "a.", "a/b", "a%2Fb", "ab"]
    keys = [ref_key(p) for p in paths]
    assert len(set(keys)) == len(keys)


def test_a_file_ref_key_is_never_a_prefix_of_another_paths_key() -> None:
    paths = ODD_NAMES + [
        "a", "a/b", "a/b/c", "ab", "a b", "a~", "a~b", "a~/b", "a%7E", "a.", "a./b", "~", "~/x",
    ]  # fmt: skip
    keys = {p: ref_key(p) for p in paths}
    for p, q in itertools.permutations(paths, 2):
        assert not keys[q].startswith(keys[p]), f"key of {p!r} is a prefix of the key of {q!r}"


def test_a_directory_prefix_matches_exactly_the_paths_under_that_directory() -> None:
    paths = ["a/b", "a/c/d", "a", "ab", "a b/c", "a~/x", "a./y", "b/a/c"]
    under = [p for p in paths if ref_key(p).startswith(dir_ref_prefix("a"))]
    assert under == ["a/b", "a/c/d"]
    assert all(ref_key(p).startswith(dir_ref_prefix("")) for p in paths)


def test_ref_key_rejects_a_name_too_long_once_escaped() -> None:
    # 100 characters, 200 UTF-8 bytes, but 600 bytes once percent-escaped.
    assert normalize_path("é" * 100)
    with pytest.raises(NameTooLongError, match="too long once escaped"):
        ref_key("é" * 100)


def test_ref_key_rejects_what_normalize_path_rejects() -> None:
    for bad in ("", "a/../b", "x\0y"):
        with pytest.raises(InvalidPathError):
            ref_key(bad)


@pytest.mark.parametrize("key", ["refs/a", "packs/ab/cd~", "a~", "refs"])
def test_path_from_ref_key_rejects_keys_that_are_not_ref_keys(key: str) -> None:
    with pytest.raises(InvalidPathError, match="not a file's ref key"):
        path_from_ref_key(key)


# StoreConfig


def test_default_config_round_trips_through_its_bytes() -> None:
    config = StoreConfig()
    assert StoreConfig.from_bytes(config.to_bytes()) == config


def test_custom_config_round_trips_through_its_bytes() -> None:
    config = StoreConfig(
        chunking=ChunkingLimits(min_size=4096, avg_size=16384, max_size=65536 + 8),
        zstd_level=19,
        pack_size=8 << 20,
    )
    again = StoreConfig.from_bytes(config.to_bytes())
    assert again == config
    assert again.to_bytes() == config.to_bytes()


def test_config_bytes_say_what_format_they_are() -> None:
    doc = json.loads(StoreConfig().to_bytes())
    assert doc["format"] == "modelfs"
    assert doc["version"] == FORMAT_VERSION
    assert doc["hash"] == "blake3-256"


def test_config_from_a_newer_modelfs_raises_unsupported_format_saying_upgrade() -> None:
    doc = json.loads(StoreConfig().to_bytes())
    doc["version"] = FORMAT_VERSION + 1
    with pytest.raises(UnsupportedFormatError, match="upgrade modelfs"):
        StoreConfig.from_bytes(json.dumps(doc).encode())


def _config_doc(**changes: object) -> bytes:
    doc = json.loads(StoreConfig().to_bytes())
    for key, value in changes.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x01\x02garbage\xff",
        b"\xff\xfe\x00",
        b"not json at all",
        b"[" * 100_000,  # nesting deep enough to exhaust the parser's recursion
        b"null",
        b"[1, 2, 3]",
        b'{"zarr_format": 3, "node_type": "group"}',
        b'{"format": "restic", "version": 1}',
        _config_doc(version=None),
        _config_doc(version="1"),
        _config_doc(hash="sha256"),
        _config_doc(chunking=None),
        _config_doc(chunking="fastcdc"),
        _config_doc(chunking={"min_size": 1, "avg_size": 2, "max_size": 3}),
        _config_doc(chunking={"bogus": 1}),
        _config_doc(compression={"codec": "zstd", "level": 99}),
        _config_doc(compression=3),
        _config_doc(pack_size="big"),
    ],
)
def test_a_garbage_or_foreign_config_raises_format_error(data: bytes) -> None:
    with pytest.raises(FormatError) as info:
        StoreConfig.from_bytes(data)
    assert not isinstance(info.value, UnsupportedFormatError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_size": 32},  # below pyfastcdc's minimum
        {"min_size": 2 << 20, "avg_size": 4 << 20},  # min over 1 MiB
        {"avg_size": 128, "min_size": 64},
        {"max_size": 32 << 20},
        {"max_size": 512, "avg_size": 256, "min_size": 64},
        {"min_size": 512 << 10, "avg_size": 256 << 10},  # min > avg
        {"avg_size": 4 << 20, "max_size": 2 << 20},  # avg > max
    ],
)
def test_invalid_chunking_limits_raise_value_error(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="block size"):
        ChunkingLimits(**kwargs)


@pytest.mark.parametrize("kwargs", [{"zstd_level": 0}, {"zstd_level": 23}, {"pack_size": 1000}])
def test_invalid_store_config_raises_value_error(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        StoreConfig(**kwargs)


def _manifest_doc(block_id: object, pack: object) -> bytes:
    row = [0, 10, block_id, pack, 0, 10, "raw", "0" * 32]
    doc = {"version": FORMAT_VERSION, "size": 10, "content_hash": "blake3:" + "0" * 64,
           "layout": "cdc", "metadata": {}, "blocks": [row]}  # fmt: skip
    return json.dumps(doc).encode()


def test_a_manifest_with_good_ids_loads() -> None:
    manifest = Manifest.from_bytes(_manifest_doc("ab" * 32, "cd" * 32))
    assert manifest.blocks[0].location.pack == "cd" * 32


@pytest.mark.parametrize(
    ("block_id", "pack"),
    [
        ("ab" * 32, "../../config" + "0" * 52),  # a key outside packs/ if it were trusted
        ("AB" * 32, "cd" * 32),  # ids are lower-case hex
        ("ab" * 32, "cd" * 31),  # too short
        ("ab" * 32, "cd" * 33),  # too long
        (12345, "cd" * 32),
        ("ab" * 32, None),
    ],
)
def test_a_manifest_naming_a_block_or_pack_by_anything_but_a_hex_id_is_refused(
    block_id: object, pack: object
) -> None:
    with pytest.raises(FormatError, match="not a hex id"):
        Manifest.from_bytes(_manifest_doc(block_id, pack))
