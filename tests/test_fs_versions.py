"""Version views (.modelfs/at/) and metric xattrs, without FUSE (tests/fsdriver.py).

Each test stores versions, tags and aliases through a Store on the same
in-memory backend (another program, as far as the mount knows) and checks
what a program reading through the mount gets: bytes, listings, xattrs,
errnos, and the versions the store holds afterwards.
"""

from __future__ import annotations

import errno
import logging
import os

import pyfuse3
import pytest
from fsdriver import PID_BASE, Ctx, FSError, history_sizes, new_store, started, trio_test

from modelfs.backends import MemoryBackend
from modelfs.store import Store
from modelfs.store.addresses import resolve
from modelfs.store.naming import measure, name_version

WRITER, READER, OTHER = PID_BASE + 1, PID_BASE + 2, PID_BASE + 3
AT = ".modelfs/at"
O_WB = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


@pytest.fixture
def backend() -> MemoryBackend:
    return new_store()


def put(backend: MemoryBackend, files: dict[str, bytes]) -> None:
    with Store.open(backend) as store:
        for path, data in files.items():
            store.put(path, data)


def alias(backend: MemoryBackend, address: str, name: str, *, tag: bool = False) -> None:
    with Store.open(backend) as store:
        name_version(store, address, name, alias=not tag)


def content_hash(backend: MemoryBackend, address: str) -> str:
    with Store.open(backend) as store:
        return resolve(store, address).content_hash


# reading versions


@trio_test
async def test_a_file_version_reads_by_number_tag_and_hash(backend, fs_mounts) -> None:
    put(backend, {"m.bin": b"one" * 1000})
    alias(backend, "m.bin", "good", tag=True)
    put(backend, {"m.bin": b"two" * 2000})
    k = await started(fs_mounts(backend))
    h1 = content_hash(backend, "m.bin@1")
    assert await k.read_file(f"{AT}/m.bin@good", READER) == b"one" * 1000
    assert await k.read_file(f"{AT}/m.bin@1", READER) == b"one" * 1000
    assert await k.read_file(f"{AT}/m.bin@{h1[:20]}", READER) == b"one" * 1000
    assert await k.read_file(f"{AT}/m.bin@2", READER) == b"two" * 2000
    assert await k.read_file(f"{AT}/m.bin", READER) == b"two" * 2000  # a plain name: current
    assert (await k.stat(f"{AT}/m.bin@good", READER)).st_size == 3000
    assert await k.getxattr(f"{AT}/m.bin@good", "user.modelfs.version", READER) == b"1"
    assert await k.getxattr(f"{AT}/m.bin@good", "user.modelfs.content_hash", READER) == (
        h1.encode()
    )
    assert await k.getxattr(f"{AT}/m.bin@good", "user.modelfs.path", READER) == b"m.bin"
    assert await k.listxattr(f"{AT}/m.bin@2", READER) == [
        "user.modelfs.content_hash", "user.modelfs.path", "user.modelfs.version",
    ]  # fmt: skip


@trio_test
async def test_a_directory_version_lists_and_reads_its_snapshot(backend, fs_mounts) -> None:
    put(backend, {"bert/config.json": b"{}", "bert/sub/model.bin": b"old" * 100})
    alias(backend, "bert", "champion")  # snapshot 1
    put(backend, {"bert/sub/model.bin": b"new" * 100, "bert/extra.txt": b"x"})
    k = await started(fs_mounts(backend))
    assert await k.listdir(".modelfs", READER) == ["stats"]  # at/ is reached, not listed
    assert await k.listdir(AT, READER) == ["bert"]  # the live tree's names
    assert await k.listdir(f"{AT}/bert", READER) == ["config.json", "extra.txt", "sub"]
    assert await k.listdir(f"{AT}/bert@champion", READER) == ["config.json", "sub"]
    assert await k.listdir(f"{AT}/bert@champion/sub", READER) == ["model.bin"]
    assert await k.read_file(f"{AT}/bert@champion/sub/model.bin", READER) == b"old" * 100
    assert await k.read_file(f"{AT}/bert@1/config.json", READER) == b"{}"
    assert await k.read_file(f"{AT}/bert@latest/sub/model.bin", READER) == b"new" * 100
    assert await k.read_file(f"{AT}/bert/sub/model.bin@1", READER) == b"old" * 100
    snap = content_hash(backend, "bert@1")
    assert await k.getxattr(f"{AT}/bert@champion", "user.modelfs.version", READER) == b"1"
    assert await k.getxattr(f"{AT}/bert@champion", "user.modelfs.content_hash", READER) == (
        snap.encode()
    )
    inner = f"{AT}/bert@champion/sub/model.bin"
    assert await k.getxattr(inner, "user.modelfs.version", READER) == b"1"
    assert await k.getxattr(inner, "user.modelfs.path", READER) == b"bert/sub/model.bin"


@trio_test
async def test_an_open_reader_keeps_its_version_while_the_alias_moves(backend, fs_mounts) -> None:
    put(backend, {"bert/model.bin": b"A" * 5000})
    alias(backend, "bert", "champion")
    k = await started(fs_mounts(backend))
    path = f"{AT}/bert@champion/model.bin"
    fh = await k.open(path, os.O_RDONLY, READER)
    first = await k.stat(path, READER)
    put(backend, {"bert/model.bin": b"B" * 7000})
    alias(backend, "bert", "champion")  # now snapshot 2
    assert await k.read(fh) == b"A" * 5000
    assert await k.read_file(path, READER) == b"B" * 7000  # the next open follows it
    moved = await k.stat(path, READER)
    assert moved.st_ino != first.st_ino and moved.st_size == 7000  # its own inode and size
    assert await k.read(fh) == b"A" * 5000
    await k.close(fh)
    # An alias is asked again at every use; a pinned version may be cached.
    assert (await k.stat(f"{AT}/bert@champion", READER)).entry_timeout == 0
    assert (await k.stat(f"{AT}/bert@1", READER)).entry_timeout > 0


@trio_test
async def test_names_holding_an_at_sign_are_listed_and_reached_with_latest(
    backend, fs_mounts
) -> None:
    put(backend, {"odd@dir/we@ird.bin": b"one", "odd@dir/sub/m.bin": b"m"})
    put(backend, {"odd@dir/we@ird.bin": b"two"})
    k = await started(fs_mounts(backend))
    assert await k.listdir(AT, READER) == ["odd@dir@latest"]
    live = f"{AT}/odd@dir@latest"
    assert await k.listdir(live, READER) == ["sub", "we@ird.bin@latest"]
    # Every name listed is reached, and the selectors work below it.
    assert await k.read_file(f"{live}/we@ird.bin@latest", READER) == b"two"
    assert await k.read_file(f"{live}/we@ird.bin@1", READER) == b"one"
    assert await k.read_file(f"{live}/sub/m.bin", READER) == b"m"
    assert await k.getxattr(f"{live}/we@ird.bin@1", "user.modelfs.path", READER) == (
        b"odd@dir/we@ird.bin"
    )


@trio_test
async def test_a_versions_xattrs_show_its_metrics_and_metadata(backend, fs_mounts) -> None:
    with Store.open(backend) as store:
        store.put("m.bin", b"one", metadata={"user.note": "first"}, metrics={"acc": 0.7})
        store.put("m.bin", b"two", metrics={"acc": 0.8})
        measure(store, "m.bin@1", {"f1": 0.5})
        store.put("d/x.bin", b"x")
        name_version(store, "d", "best", alias=False)
        measure(store, "d@best", {"score": 3})
    k = await started(fs_mounts(backend))
    one = f"{AT}/m.bin@1"
    assert await k.listxattr(one, READER) == [
        "user.metric.acc", "user.metric.f1", "user.modelfs.content_hash", "user.modelfs.path",
        "user.modelfs.version", "user.note",
    ]  # fmt: skip
    assert await k.getxattr(one, "user.metric.f1", READER) == b"0.5"
    assert await k.getxattr(one, "user.note", READER) == b"first"
    assert await k.getxattr(f"{AT}/m.bin@2", "user.metric.acc", READER) == b"0.8"
    assert await k.getxattr(f"{AT}/d@best", "user.metric.score", READER) == b"3"


# refusals


@trio_test
async def test_every_change_in_the_view_is_refused_with_erofs(backend, fs_mounts) -> None:
    put(backend, {"d/m.bin": b"weights"})
    alias(backend, "d", "best")
    before = dict(backend._blobs)
    k = await started(fs_mounts(backend))
    f = f"{AT}/d@best/m.bin"
    attempts = {
        "open for writing": k.open(f, os.O_RDWR, WRITER),
        "create": k.open(f"{AT}/d@best/new", O_WB, WRITER),
        "create in at/": k.open(f"{AT}/new", O_WB, WRITER),
        "truncate": k.truncate(f, 0, WRITER),
        "chmod": k.chmod(f, 0o600, WRITER),
        "touch": k.touch(f, WRITER),
        "setxattr": k.setxattr(f, "user.metric.loss", b"1", WRITER),
        "removexattr": k.removexattr(f, "user.modelfs.path", WRITER),
        "unlink": k.unlink(f, WRITER),
        "rename": k.rename(f, f"{AT}/d@best/other", WRITER),
        "rename out": k.rename(f, "other", WRITER),
        "mkdir": k.mkdir(f"{AT}/d@best/newdir", WRITER),
    }
    got = {}
    for what, attempt in attempts.items():
        try:
            await attempt
            got[what] = 0
        except FSError as e:
            got[what] = e.errno
    assert got == dict.fromkeys(attempts, errno.EROFS)
    assert await k.read_file(f, READER) == b"weights"
    assert history_sizes(backend, "d/m.bin") == [7]
    assert dict(backend._blobs) == before  # nothing written to the store


@trio_test
async def test_an_address_that_resolves_to_nothing_is_enoent_and_says_why(
    backend, fs_mounts, caplog
) -> None:
    put(backend, {"m.bin": b"m"})
    k = await started(fs_mounts(backend))
    for name in ("m.bin@nothing", "m.bin@9", "none@1", "m.bin@blake3:00000000", "m.bin@latest/x"):
        with pytest.raises(FSError) as e:
            await k.stat(f"{AT}/{name}", READER)
        assert e.value.errno in (errno.ENOENT, errno.ENOTDIR), name
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("m.bin@nothing" in m and "no tag or alias" in m for m in infos), infos
    assert any("none@1" in m for m in infos), infos


# metrics as xattrs


@trio_test
async def test_metric_xattrs_set_get_list_remove_and_make_no_version(backend, fs_mounts) -> None:
    k = await started(fs_mounts(backend))
    await k.write_file("m.bin", b"weights", WRITER)
    await k.setxattr("m.bin", "user.note", b"hi", WRITER)  # other user.*: metadata, a version
    assert history_sizes(backend, "m.bin") == [7, 7]
    await k.setxattr("m.bin", "user.metric.accuracy", b"0.91", OTHER)
    await k.setxattr("m.bin", "user.metric.epoch", b"3", OTHER)
    await k.setxattr("m.bin", "user.metric.optimizer", b"adamw", OTHER)
    assert history_sizes(backend, "m.bin") == [7, 7]  # no new version
    with Store.open(backend) as store:
        assert resolve(store, "m.bin").metrics == {
            "accuracy": 0.91, "epoch": 3, "optimizer": "adamw"
        }  # fmt: skip
        assert resolve(store, "m.bin@1").metrics == {}
    assert await k.getxattr("m.bin", "user.metric.accuracy", READER) == b"0.91"
    assert await k.getxattr("m.bin", "user.metric.epoch", READER) == b"3"
    assert await k.listxattr("m.bin", READER) == [
        "user.metric.accuracy", "user.metric.epoch", "user.metric.optimizer", "user.note",
    ]  # fmt: skip
    await k.removexattr("m.bin", "user.metric.epoch", OTHER)
    with pytest.raises(FSError) as e:
        await k.getxattr("m.bin", "user.metric.epoch", READER)
    assert e.value.errno == pyfuse3.ENOATTR
    with pytest.raises(FSError) as e:
        await k.removexattr("m.bin", "user.metric.epoch", OTHER)
    assert e.value.errno == pyfuse3.ENOATTR
    assert history_sizes(backend, "m.bin") == [7, 7]
    # Recorded by another program (the CLI's `modelfs measure`): shown at once.
    with Store.open(backend) as store:
        measure(store, "m.bin", {"f1": 0.5})
    assert await k.getxattr("m.bin", "user.metric.f1", READER) == b"0.5"
    # A new version has its own metrics.
    await k.write_file("m.bin", b"weights2", WRITER)
    assert await k.listxattr("m.bin", READER) == ["user.note"]


@trio_test
async def test_a_bad_metric_name_or_value_is_einval_and_says_why(
    backend, fs_mounts, caplog
) -> None:
    k = await started(fs_mounts(backend))
    await k.write_file("m.bin", b"weights", WRITER)
    for name, value in (("user.metric.9bad", b"1"), ("user.metric.size", b"1"),
                        ("user.metric.x", b"y" * 2000)):  # fmt: skip
        with pytest.raises(FSError) as e:
            await k.setxattr("m.bin", name, value, OTHER)
        assert e.value.errno == errno.EINVAL
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("'9bad'" in m and "not allowed" in m for m in infos), infos
    assert any("'size'" in m and "reserved" in m for m in infos), infos
    assert history_sizes(backend, "m.bin") == [7]


@trio_test
async def test_a_metric_set_while_writing_lands_on_the_committed_version(
    backend, fs_mounts
) -> None:
    k = await started(fs_mounts(backend))
    await k.write_file("w.bin", b"x" * 10, WRITER)
    fh = await k.open("w.bin", O_WB, WRITER)
    await k.write(fh, 0, b"new data")
    await k.setxattr("w.bin", "user.metric.loss", b"0.25", OTHER)  # joins the session
    assert await k.getxattr("w.bin", "user.metric.loss", OTHER) == b"0.25"
    with Store.open(backend) as store:
        assert resolve(store, "w.bin").metrics == {}  # nothing committed yet
    await k.close(fh)
    assert history_sizes(backend, "w.bin") == [10, 8]
    with Store.open(backend) as store:
        v = store.version("w.bin")
        assert v.metrics == {"loss": 0.25}  # recorded in the commit itself
        assert resolve(store, "w.bin@1").metrics == {}
        assert store.manifest("w.bin").metadata == {}
    assert await k.getxattr("w.bin", "user.metric.loss", READER) == b"0.25"


@trio_test
async def test_a_view_entry_is_read_only_also_through_its_inode(backend, fs_mounts) -> None:
    put(backend, {"m.bin": b"m"})
    k = await started(fs_mounts(backend))
    attr = await k.stat(f"{AT}/m.bin@1", READER)
    assert attr.st_mode & 0o222 == 0
    with pytest.raises(pyfuse3.FUSEError) as e:
        await k.ops.setxattr(attr.st_ino, b"user.a", b"1", Ctx(WRITER))
    assert e.value.errno == errno.EROFS


@trio_test
async def test_a_forgotten_view_entry_is_found_again(backend, fs_mounts) -> None:
    put(backend, {"d/m.bin": b"m" * 10})
    alias(backend, "d", "best")
    k = await started(fs_mounts(backend))
    listed = await k.listdir(f"{AT}/d@best", READER)
    attr = await k.stat(f"{AT}/d@best", READER)
    await k.ops.forget([(attr.st_ino, 1 << 20)])  # the kernel let go of the directory
    assert await k.listdir(f"{AT}/d@best", READER) == listed == ["m.bin"]
    assert await k.read_file(f"{AT}/d@best/m.bin", READER) == b"m" * 10
