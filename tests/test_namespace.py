"""The store's namespace operations that a filesystem needs: directories, rename,
metadata-only versions, and the tree scan that mounts refresh from."""

from __future__ import annotations

import pytest

import modelfs
from modelfs.errors import (
    AlreadyExistsError,
    DirectoryNotEmptyError,
    IsADirectoryError_,
    NotADirectoryError_,
    NotFoundError,
)


def test_mkdir_makes_an_empty_directory_that_scan_and_is_dir_see(client: modelfs.Client) -> None:
    store = client.store
    store.mkdir("runs/empty")
    tree = store.scan()
    assert {"runs", "runs/empty"} <= tree.dirs and "runs/empty" in tree.explicit_dirs
    assert tree.children("runs") == (["empty"], [])
    assert store.is_dir("runs/empty") and store.is_dir("runs")
    assert client.list("runs") == []
    with pytest.raises(AlreadyExistsError):
        store.mkdir("runs/empty")


def test_rmdir_refuses_a_directory_with_files_and_removes_an_empty_one(
    client: modelfs.Client,
) -> None:
    store = client.store
    store.mkdir("d")
    client.put("d/f", b"x")
    with pytest.raises(DirectoryNotEmptyError):
        store.rmdir("d")
    client.delete("d/f")
    store.rmdir("d")
    assert "d" not in store.scan().dirs
    with pytest.raises(NotFoundError):
        store.rmdir("d")


def test_file_and_directory_names_cannot_collide(client: modelfs.Client) -> None:
    client.put("a", b"file")
    with pytest.raises(NotADirectoryError_):
        client.store.mkdir("a/b")
    with pytest.raises(AlreadyExistsError):
        client.store.mkdir("a")
    client.store.mkdir("dir")
    with pytest.raises(IsADirectoryError_):
        client.put("dir", b"x")


def test_rename_moves_content_without_uploading_and_keeps_both_histories(
    client: modelfs.Client, minilm_path
) -> None:
    client.put("ckpt", b"older checkpoint")
    client.put("ckpt.tmp", minilm_path)
    objects_before = set(client.store.backend.list("packs/")) | set(
        client.store.backend.list("index/")
    )

    v = client.store.rename("ckpt.tmp", "ckpt")

    assert v.version == 2
    objects_after = set(client.store.backend.list("packs/")) | set(
        client.store.backend.list("index/")
    )
    assert objects_after == objects_before  # nothing uploaded
    assert client.read("ckpt") == minilm_path.read_bytes()
    assert client.read("ckpt", version=1) == b"older checkpoint"
    assert [f.path for f in client.list()] == ["ckpt"]
    assert client.history("ckpt.tmp")[-1].deleted
    assert client.store.manifest("ckpt").blocks == client.store.manifest("ckpt.tmp", 1).blocks


def test_rename_of_a_missing_file_changes_nothing(client: modelfs.Client) -> None:
    client.put("keep", b"k")
    with pytest.raises(NotFoundError):
        client.store.rename("missing", "keep")
    assert client.read("keep") == b"k" and len(client.history("keep")) == 1


def test_set_metadata_makes_a_version_with_the_same_blocks(client: modelfs.Client) -> None:
    client.put("m.bin", b"weights" * 1000, metadata={"user.a": "1"})
    v = client.store.set_metadata("m.bin", {"user.a": "1", "user.metric.accuracy": "0.91"})
    assert v.version == 2
    m1, m2 = client.store.manifest("m.bin", 1), client.store.manifest("m.bin", 2)
    assert m2.metadata == {"user.a": "1", "user.metric.accuracy": "0.91"}
    assert m1.blocks == m2.blocks and client.read("m.bin") == b"weights" * 1000
    # The same metadata again is not a new version.
    assert client.store.set_metadata("m.bin", dict(m2.metadata)).version == 2


def test_scan_sees_changes_made_by_another_client(store_url: str, tmp_path) -> None:
    with (
        modelfs.open_store(store_url, cache_dir=tmp_path / "a") as a,
        modelfs.open_store(store_url, cache_dir=tmp_path / "b") as b,
    ):
        a.put("x/one", b"1")
        assert set(b.store.scan().files) == {"x/one"}
        a.put("x/one", b"11")
        a.put("two", b"2")
        tree = b.store.scan()
        assert tree.files["x/one"].version == 2 and tree.files["x/one"].size == 2
        assert set(tree.files) == {"x/one", "two"}
        a.delete("x/one")
        tree = b.store.scan()
        assert set(tree.files) == {"two"} and "x" not in tree.dirs
