"""Stored paths and their ref keys; the config object and its format version.

A path that modelfs cannot store faithfully must be refused up front, with a
message naming what is wrong; any path it accepts must map to a valid blob key
(and, unless a name was shortened, back unchanged), and no file's key may be a
prefix of another path's key. Any name of up to 255 bytes gets a key; names
that fit a key component keep the key version 1 gave them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re

import blake3
import pytest

from modelfs.backends.base import check_key
from modelfs.errors import FormatError, InvalidPathError, NameTooLongError, UnsupportedFormatError
from modelfs.store.format import (
    FORMAT_VERSION,
    MANIFEST_VERSION,
    ChunkingLimits,
    StoreConfig,
    config_with_version,
)
from modelfs.store.manifest import Manifest
from modelfs.store.paths import (
    NAME_MAX,
    PATH_MAX,
    SHORT_PREFIX,
    describe_key,
    dir_marker_key,
    dir_ref_prefix,
    is_shortened_key,
    marker_body,
    marker_path,
    normalize_path,
    path_from_dir_marker_key,
    path_from_ref_key,
    ref_key,
)
from modelfs.store.refs import Ref, Version

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


LONG_NAMES = {
    "ascii": "n" * 255,
    "two-byte": "é" * 127 + "a",
    "three-byte": "日" * 85,
    "four-byte": "🤖" * 63 + "abc",
    "tildes": "~" * 255,
    "dots": "." * 255,
    "percents": "%" * 255,
    "spaces": " " * 255,
    "mixed": "a.b~c%d e_é-" * 19 + "x" * 8,
    "undecodable": "\udcff" * 255,  # 255 bytes 0xff, as os.fsdecode gives them
}


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def test_the_long_names_are_each_255_bytes() -> None:
    assert {_utf8_len(v) for v in LONG_NAMES.values()} == {NAME_MAX}


@pytest.mark.parametrize("name", LONG_NAMES.values(), ids=LONG_NAMES.keys())
@pytest.mark.parametrize("place", ["file", "dir", "both"])
def test_a_name_of_up_to_255_bytes_gets_a_valid_key_as_a_file_or_a_directory(
    name: str, place: str
) -> None:
    path = {"file": f"d/{name}", "dir": f"{name}/f", "both": f"{name}/{name}"}[place]
    key = ref_key(path)
    assert check_key(key) == key
    assert re.fullmatch(r"[A-Za-z0-9._~%/-]+", key)
    assert max(len(c) for c in key.split("/")) <= 255  # a local file or directory name each
    assert key.startswith(dir_ref_prefix(path.rpartition("/")[0]))
    marker = dir_marker_key(path)
    assert check_key(marker) == marker and max(len(c) for c in marker.split("/")) <= 255


def test_a_name_whose_encoding_fits_keeps_the_key_version_1_gave_it() -> None:
    assert ref_key("n" * 254) == "refs/" + "n" * 254 + "~"
    assert ref_key("n" * 255 + "/f") == "refs/" + "n" * 255 + "/f~"  # 255 fit a directory
    assert ref_key("é" * 42) == "refs/" + "%C3%A9" * 42 + "~"  # 252 bytes escaped
    assert ref_key("a.b~c") == "refs/a%2Eb%7Ec~"
    assert dir_marker_key("x y/z") == "refs/x%20y/z/~"
    assert not is_shortened_key(ref_key("n" * 254))


def test_a_name_too_long_once_encoded_is_shortened_to_its_start_a_dot_and_its_hash() -> None:
    name = "n" * 255  # 255 bytes, but 256 with the "~" that ends a file's key
    digest = blake3.blake3(name.encode()).hexdigest()
    assert ref_key(name) == f"refs/{'n' * SHORT_PREFIX}.{digest}~"
    assert ref_key(f"d/{name}/f") == f"refs/d/{'n' * 255}/f~"  # as a directory it fits
    escaped = "é" * 100  # 200 bytes, 600 once escaped: version 1 refused it
    digest = blake3.blake3(escaped.encode()).hexdigest()
    assert ref_key(escaped) == f"refs/{'%C3%A9' * 20}.{digest}~"
    assert is_shortened_key(ref_key(escaped)) and is_shortened_key(dir_ref_prefix(escaped))


@pytest.mark.parametrize("lead", range(3))
def test_a_shortened_name_is_cut_between_escapes_never_inside_one(lead: int) -> None:
    name = "a" * lead + "é" * 120
    component = ref_key(name)[len("refs/") : -1]
    start, _dot, digest = component.partition(".")
    assert re.fullmatch(r"([A-Za-z0-9_-]|%[0-9A-F]{2})+", start)
    assert SHORT_PREFIX - 2 <= len(start) <= SHORT_PREFIX
    assert digest == blake3.blake3(name.encode()).hexdigest()


def test_names_that_share_a_long_start_get_different_shortened_keys() -> None:
    names = ["n" * 254 + c for c in "abc~. "] + ["é" * 127 + "a", "é" * 127 + "b"]
    for make in (ref_key, lambda n: dir_ref_prefix(n), lambda n: ref_key(f"{n}/f")):
        keys = [make(n) for n in names]
        assert len(set(keys)) == len(keys)
    assert len({ref_key(n)[:SHORT_PREFIX] for n in names[:6]}) == 1  # only the hash differs


@pytest.mark.parametrize("name", LONG_NAMES.values(), ids=LONG_NAMES.keys())
def test_a_long_directory_name_has_one_key_prefix_whatever_lies_under_it(name: str) -> None:
    prefix = dir_ref_prefix(name)
    under = [f"{name}/x", f"{name}/{'y' * 255}", f"{name}/{name}", f"{name}/a/b/c"]
    assert all(ref_key(p).startswith(prefix) for p in under)
    assert dir_marker_key(name) == prefix + "~"
    assert dir_ref_prefix(f"{name}/{name}").startswith(prefix)
    assert dir_ref_prefix(f"{name}/{name}") == dir_ref_prefix(f"{name}/{name}/")
    # And nothing else is under it: not the file of the same name, nor its neighbours.
    others = [name, name[:-1], f"{name[:-1]}/x", f"{name}x/y" if _utf8_len(name) < 255 else "z"]
    assert not any(ref_key(p).startswith(prefix) for p in others)


def test_no_key_is_a_prefix_of_another_with_long_names_among_them() -> None:
    names = list(LONG_NAMES.values()) + ["n" * 254, "n" * 253 + "~", "a"]
    paths = names + [f"{a}/{b}" for a in names[:4] for b in names[:4]]
    keys = {p: ref_key(p) for p in paths}
    assert len(set(keys.values())) == len(paths)
    for p, q in itertools.permutations(paths, 2):
        assert not keys[q].startswith(keys[p]), f"key of {p!r} is a prefix of the key of {q!r}"


def test_a_name_of_256_bytes_is_refused_before_any_key_is_made() -> None:
    for name in ("n" * 256, "é" * 128, "é" * 127 + "ab", "日" * 85 + "a"):
        with pytest.raises(NameTooLongError, match="too long: 256 bytes, longer than 255"):
            ref_key(f"d/{name}")
        with pytest.raises(NameTooLongError, match="longer than 255"):
            dir_ref_prefix(name)


def test_four_levels_of_255_byte_names_have_the_key_lengths_the_format_gives() -> None:
    ascii_name, wide = "n" * 255, "é" * 127 + "a"
    deep_file = "/".join([ascii_name] * 4)  # three directories kept whole, the file shortened
    assert len(deep_file) == 1023 and len(ref_key(deep_file)) == 5 + 3 * 256 + 185 + 1
    assert len(dir_marker_key("/".join([wide] * 4))) == 5 + 4 * 186 + 1  # each shortened
    assert len(dir_marker_key("/".join([ascii_name] * 3 + [wide]))) == 960


@pytest.mark.parametrize(
    ("path", "key_length"),
    [
        ("/".join(["n" * 255] * 3 + ["m" * 254]), 1028),  # 1022 bytes, none shortened
        ("/".join(["n" * 255] * 3 + ["m" * 253, "xy"]), 1030),  # 1024 bytes
        ("/".join(["é"] * 200), 1405),  # 599 bytes, each 2-byte name 6 once escaped
        ("/".join(["é" * 42] * 12), 3041),  # 1019 bytes, each name 252 once escaped
    ],
)
def test_a_path_within_the_limits_gets_its_key_however_long_the_key_is(
    path: str, key_length: int
) -> None:
    # How long a key the backend holds is the store's check (test_long_names.py).
    key = ref_key(path)
    assert len(key) == key_length and check_key(key) == key
    assert max(len(c) for c in key.split("/")) <= 255
    assert path_from_ref_key(key) == path  # no name was shortened
    assert dir_marker_key(path) == dir_ref_prefix(path) + "~"


def test_a_shortened_key_cannot_be_decoded_and_says_so() -> None:
    key = ref_key("n" * 255)
    with pytest.raises(InvalidPathError, match="shortened"):
        path_from_ref_key(key)
    assert describe_key(key) == key
    with pytest.raises(InvalidPathError, match="shortened"):
        path_from_dir_marker_key(dir_marker_key("é" * 100))
    assert describe_key(ref_key("a b/c")) == "a b/c"


# what refs and directory markers name


@pytest.mark.parametrize("path", ["plain", "é" * 100, "n" * 255 + "/" + "é" * 127 + "a"])
def test_a_marker_names_its_directory_whatever_its_key(path: str) -> None:
    key = dir_marker_key(path)
    assert json.loads(marker_body(path)) == {"path": path}
    assert marker_path(key, marker_body(path)) == path


def test_a_version_1_marker_of_an_ordinary_name_is_read_from_its_key() -> None:
    assert marker_path(dir_marker_key("runs/empty"), b"{}") == "runs/empty"


@pytest.mark.parametrize(
    ("key", "body", "problem"),
    [
        (dir_marker_key("é" * 100), b"{}", "holds no path"),
        (dir_marker_key("a"), marker_body("b"), "names 'b', whose key is not"),
        (dir_marker_key("a"), b'{"path": "a/../a"}', "invalid path"),
        (dir_marker_key("a"), b'{"path": 7}', "invalid path"),
        (dir_marker_key("a"), b"[]", "not a JSON object"),
        (dir_marker_key("a"), b"garbage", "not valid JSON"),
    ],
)
def test_a_marker_that_does_not_map_back_to_its_key_is_refused(
    key: str, body: bytes, problem: str
) -> None:
    with pytest.raises(FormatError, match=re.escape(problem)):
        marker_path(key, body)


def _ref_doc(path: str) -> bytes:
    return Ref(path, (Version(1, "ab" * 32, 1.0, 10),)).to_bytes()


@pytest.mark.parametrize("path", ["a/b", "é" * 100, "n" * 255 + "/" + "n" * 255])
def test_a_ref_is_read_by_its_key_and_names_its_path(path: str) -> None:
    ref = Ref.from_bytes(_ref_doc(path), ref_key(path))
    assert ref.path == path and ref.current is not None


def test_a_ref_whose_path_does_not_map_back_to_the_key_it_was_read_from_is_refused() -> None:
    with pytest.raises(FormatError, match="whose key is not"):
        Ref.from_bytes(_ref_doc("b"), ref_key("a"))
    long = "n" * 255
    with pytest.raises(FormatError, match="whose key is not"):
        Ref.from_bytes(_ref_doc(long[:-1] + "m"), ref_key(long))
    with pytest.raises(FormatError, match="invalid path"):
        Ref.from_bytes(_ref_doc("a").replace(b'"a"', b'"/a/"'), ref_key("a"))


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


# The config object as modelfs of format version 1 wrote it (docs/FORMAT.md).
V1_CONFIG = (
    b'{"checksum":"xxh3-128","chunking":{"algorithm":"fastcdc2020","avg_size":1048576,'
    b'"max_size":4194304,"min_size":262144},"compression":{"codec":"zstd","level":3},'
    b'"format":"modelfs","hash":"blake3-256","pack_size":33554432,"version":1}'
)


def test_new_stores_are_format_version_5_and_version_1_configs_still_read() -> None:
    assert FORMAT_VERSION == 5 and StoreConfig().version == 5
    old = StoreConfig.from_bytes(V1_CONFIG)
    assert old.version == 1 and old.chunking == ChunkingLimits() and old.pack_size == 32 << 20


def test_upgrading_a_config_changes_its_version_and_nothing_else() -> None:
    upgraded = config_with_version(V1_CONFIG, 2)
    assert json.loads(upgraded) == {**json.loads(V1_CONFIG), "version": 2}
    assert StoreConfig.from_bytes(upgraded) == dataclasses.replace(StoreConfig(), version=2)
    with_extra = V1_CONFIG[:-1] + b',"written_by":"modelfs 0.1"}'
    assert json.loads(config_with_version(with_extra, 2))["written_by"] == "modelfs 0.1"


def test_manifests_keep_version_1_so_their_ids_do_not_change_with_the_store_format() -> None:
    manifest = Manifest.from_bytes(_manifest_doc("ab" * 32, "cd" * 32))
    assert MANIFEST_VERSION == 1 and json.loads(manifest.to_bytes())["version"] == 1


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
    doc = {"version": MANIFEST_VERSION, "size": 10, "content_hash": "blake3:" + "0" * 64,
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
