"""Version views and metric xattrs through a real mount, on every backend.

Few and fast: the rules are tested in tests/test_fs_versions.py; these check
that the kernel and real programs (transformers, safetensors, torch) get
them: an aliased directory loads exactly, an open file keeps its version
while the alias moves, the next open follows it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

import modelfs
from modelfs.store.addresses import resolve
from modelfs.store.naming import name_version

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")


def errno_of(fn, *args) -> int:
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    raise AssertionError(f"{fn.__name__}{args} succeeded")


def tiny_bert(seed: int):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=32,
    )  # fmt: skip
    return transformers.BertModel(config).eval()


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_an_aliased_model_directory_loads_exactly_that_version(
    store_url: str, mount_store, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = mount_store(store_url)
    champion, later = tiny_bert(1), tiny_bert(2)
    champion.save_pretrained(m.path / "bert")
    with modelfs.open_store(store_url, cache_dir=tmp_path / "other") as c:
        name_version(c.store, "bert", "champion", alias=True)
        snapshot = resolve(c.store, "bert@champion")
    later.save_pretrained(m.path / "bert")  # the live directory moves on
    view = m.path / ".modelfs" / "at" / "bert@champion"
    loaded = transformers.AutoModel.from_pretrained(view)
    assert same_weights(loaded, champion) and not same_weights(loaded, later)
    assert same_weights(transformers.AutoModel.from_pretrained(m.path / "bert"), later)
    with safetensors_torch.safe_open(view / "model.safetensors", "pt") as f:
        name = "embeddings.word_embeddings.weight"
        assert torch.equal(f.get_tensor(name), champion.state_dict()[name])
    assert os.getxattr(view, "user.modelfs.version") == str(snapshot.version).encode()
    assert os.getxattr(view, "user.modelfs.content_hash") == snapshot.content_hash.encode()
    assert "config.json" in os.listdir(view)
    # Read-only, and an address of nothing is no file.
    assert errno_of(open, view / "config.json", "r+b") == errno.EROFS
    assert errno_of(open, view / "new.txt", "wb") == errno.EROFS
    assert errno_of(os.unlink, view / "config.json") == errno.EROFS
    assert errno_of(os.stat, m.path / ".modelfs" / "at" / "bert@nothing") == errno.ENOENT


def test_an_open_file_keeps_its_version_while_the_alias_moves(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    m = mount_store(store_url)
    ck = m.path / "ck"
    ck.mkdir()
    first = {"w": torch.arange(100_000, dtype=torch.float32)}
    torch.save(first, ck / "m.pt")
    with modelfs.open_store(store_url, cache_dir=tmp_path / "other") as c:
        name_version(c.store, "ck/m.pt", "best", alias=True)
        h1 = resolve(c.store, "ck/m.pt@1").content_hash
        view = m.path / ".modelfs" / "at" / "ck" / "m.pt@best"
        with open(view, "rb") as reader:
            head = reader.read(4096)
            torch.save({"w": torch.zeros(50_000)}, ck / "m.pt")
            name_version(c.store, "ck/m.pt@2", "best", alias=True)
            assert torch.load(view)["w"].shape == (50_000,)  # the next open follows it
            reader.seek(0)
            assert reader.read(4096) == head
            reader.seek(0)
            assert torch.equal(torch.load(reader)["w"], first["w"])  # whole, still the old one
    pinned = m.path / ".modelfs" / "at" / "ck" / f"m.pt@{h1}"
    assert torch.equal(torch.load(pinned)["w"], first["w"])
    assert os.getxattr(pinned, "user.modelfs.version") == b"1"
    assert os.getxattr(view, "user.modelfs.version") == b"2"
    assert sorted(os.listdir(m.path / ".modelfs" / "at" / "ck")) == ["m.pt"]


def test_metric_xattrs_record_metrics_without_a_version(
    store_url: str, mount_store, tmp_path: Path
) -> None:
    m = mount_store(store_url)
    p = m.path / "model.bin"
    p.write_bytes(b"weights")
    os.setxattr(p, "user.metric.accuracy", b"0.91")
    os.setxattr(p, "user.metric.epoch", b"3")
    assert os.getxattr(p, "user.metric.accuracy") == b"0.91"
    assert sorted(os.listxattr(p)) == ["user.metric.accuracy", "user.metric.epoch"]
    os.removexattr(p, "user.metric.epoch")
    assert os.listxattr(p) == ["user.metric.accuracy"]
    assert errno_of(os.setxattr, p, "user.metric.size", b"1") == errno.EINVAL
    with open(m.path / "w.bin", "wb") as f:  # set while writing: on the committed version
        f.write(b"data")
        os.setxattr(m.path / "w.bin", "user.metric.loss", b"0.25")
    with modelfs.open_store(store_url, cache_dir=tmp_path / "other") as c:
        assert len(c.history("model.bin")) == 1
        assert resolve(c.store, "model.bin").metrics == {"accuracy": 0.91}
        assert len(c.history("w.bin")) == 1
        assert c.store.version("w.bin").metrics == {"loss": 0.25}
    assert os.getxattr(m.path / "w.bin", "user.metric.loss") == b"0.25"
