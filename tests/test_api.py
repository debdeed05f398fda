"""The Python API: opening stores, stored files as file objects, and the model helpers.

save_model / load_model / update_model are checked against the reference
safetensors library and on real MiniLM weights; bad input must fail with an
error that names the problem and leave the store as it was.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

import modelfs
from modelfs.models import model_path

PATH = "minilm/model.safetensors"


@pytest.fixture
def minilm_client(minilm_store: str, tmp_path: Path) -> Iterator[modelfs.Client]:
    with modelfs.open_store(minilm_store, cache_dir=tmp_path / "cache") as c:
        yield c


def assert_same_arrays(got: dict, want: dict) -> None:
    """Same names, dtypes, shapes and bytes (so NaN payloads and -0.0 count too)."""
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        g = got[name]
        assert isinstance(g, np.ndarray), name
        assert (g.dtype, g.shape) == (w.dtype, w.shape), name
        assert g.tobytes() == w.tobytes(), name


# opening stores


def test_open_store_on_a_missing_store_raises_store_not_found(tmp_path: Path) -> None:
    with pytest.raises(modelfs.StoreNotFoundError, match="nowhere"):
        modelfs.open_store(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()

    (tmp_path / "empty").mkdir()
    with pytest.raises(modelfs.StoreNotFoundError, match="empty"):
        modelfs.open_store(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_open_store_with_create_makes_a_store_and_keeps_an_existing_one(tmp_path: Path) -> None:
    url = tmp_path / "new" / "store"
    with modelfs.open_store(url, create=True, cache_dir=tmp_path / "cache") as c:
        c.put("a.bin", b"kept")

    with modelfs.open_store(url, create=True, cache_dir=tmp_path / "cache") as c:
        assert c.read("a.bin") == b"kept"
    with modelfs.open_store(f"file://{url}", cache_dir=tmp_path / "cache") as c:
        assert [f.path for f in c.list()] == ["a.bin"]


def test_init_store_twice_refuses_and_keeps_the_store(tmp_path: Path) -> None:
    url = tmp_path / "store"
    modelfs.init_store(url)
    with modelfs.open_store(url, cache_dir=tmp_path / "cache") as c:
        c.put("a.bin", b"kept")

    with pytest.raises(modelfs.ModelfsError, match="already holds a modelfs store"):
        modelfs.init_store(url)

    with modelfs.open_store(url, cache_dir=tmp_path / "cache") as c:
        assert c.read("a.bin") == b"kept"


# stored files as file objects


def test_stored_file_seeks_from_start_current_and_end(
    minilm_client: modelfs.Client, minilm_bytes: bytes
) -> None:
    size = len(minilm_bytes)
    with minilm_client.open(PATH) as f:
        assert (f.readable(), f.seekable(), f.writable()) == (True, True, False)
        assert f.seek(1000) == 1000 and f.tell() == 1000
        assert f.read(16) == minilm_bytes[1000:1016]
        assert f.tell() == 1016
        assert f.seek(-16, io.SEEK_CUR) == 1000
        assert f.read(8) == minilm_bytes[1000:1008]
        assert f.seek(5_000_000, io.SEEK_CUR) == 5_001_008
        assert f.read(3) == minilm_bytes[5_001_008:5_001_011]
        assert f.seek(-8, io.SEEK_END) == size - 8
        assert f.read() == minilm_bytes[-8:]
        assert f.tell() == size
        with pytest.raises(ValueError):
            f.seek(-1)
        assert f.tell() == size


def test_stored_file_reads_past_the_end_return_empty(
    minilm_client: modelfs.Client, minilm_bytes: bytes
) -> None:
    size = len(minilm_bytes)
    with minilm_client.open(PATH) as f:
        f.seek(size - 3)
        assert f.read(100) == minilm_bytes[-3:]
        assert f.read(100) == b""
        assert f.read() == b""
        f.seek(size + 1000)
        assert f.read(10) == b""
        assert f.tell() == size + 1000


def test_stored_file_read_all_and_readinto(
    minilm_client: modelfs.Client, minilm_bytes: bytes
) -> None:
    with minilm_client.open(PATH) as f:
        assert f.read() == minilm_bytes

        f.seek(4096)
        buf = bytearray(10_000)
        assert f.readinto(buf) == 10_000
        assert buf == minilm_bytes[4096:14096]

        f.seek(len(minilm_bytes) - 5)
        buf = bytearray(b"x" * 10)
        assert f.readinto(buf) == 5
        assert buf == minilm_bytes[-5:] + b"xxxxx"
        assert f.readinto(memoryview(buf)) == 0


def test_closed_stored_file_refuses_reads(minilm_client: modelfs.Client) -> None:
    with minilm_client.open(PATH) as f:
        pass
    assert f.closed
    with pytest.raises(ValueError):
        f.read(10)


def test_stored_file_works_under_buffered_reader(
    minilm_client: modelfs.Client, minilm_bytes: bytes
) -> None:
    with io.BufferedReader(minilm_client.open(PATH), buffer_size=256 * 1024) as f:
        assert f.peek(8)[:8] == minilm_bytes[:8]
        parts, pos = [], 0
        for n in [1, 7, 100_000, 3, 5 << 20, 12345]:
            parts.append(f.read(n))
            pos += n
        f.seek(40_000_000)
        tail = f.read()
    assert b"".join(parts) == minilm_bytes[:pos]
    assert tail == minilm_bytes[40_000_000:]


def test_reference_safetensors_loads_what_was_read(
    minilm_client: modelfs.Client, minilm_tensors: dict
) -> None:
    loaded = safetensors.numpy.load(minilm_client.read(PATH))
    assert_same_arrays(loaded, minilm_tensors)


def test_read_refuses_a_negative_range(minilm_client: modelfs.Client) -> None:
    with pytest.raises(ValueError, match="invalid range"):
        minilm_client.read(PATH, -1, 10)
    with pytest.raises(ValueError, match="invalid range"):
        minilm_client.read(PATH, 0, -10)


def test_nul_in_a_path_is_refused_and_stores_nothing(client: modelfs.Client) -> None:
    # The CLI cannot pass a NUL on argv, so this is its only way in.
    with pytest.raises(modelfs.InvalidPathError, match="NUL"):
        client.put("models/a\0b.bin", b"x")
    with pytest.raises(modelfs.InvalidPathError, match="NUL"):
        client.read("models/a\0b.bin")
    assert client.list() == []


# save_model / load_model


def numpy_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "w.f32": rng.normal(size=(17, 5)).astype(np.float32),
        "w.f16": rng.normal(size=(3, 4, 2)).astype(np.float16),
        "w.f64": np.array([np.nan, np.inf, -np.inf, -0.0, 1e-300], np.float64),
        "i.i64": np.arange(-5, 5, dtype=np.int64).reshape(2, 5),
        "i.i32": np.array([2**31 - 1, -(2**31)], np.int32),
        "i.i8": np.array([-128, 127], np.int8),
        "u.u8": np.arange(256, dtype=np.uint8),
        "b.bool": np.array([True, False, True]),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0,), np.float32),
        "empty.2d": np.zeros((3, 0), np.int64),
        "big.endian": np.arange(6, dtype=">i4"),
        "transposed": np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not contiguous
    }


def test_save_and_load_model_round_trip_numpy_exactly(client: modelfs.Client) -> None:
    params = numpy_params()

    result = modelfs.save_model("tiny", params, store=client)
    loaded = modelfs.load_model("tiny", store=client)

    assert result.path == "tiny.safetensors" and result.version == 1
    want = dict(params, **{"big.endian": np.arange(6, dtype="<i4")})  # stored little-endian
    assert_same_arrays(loaded, want)
    assert loaded["big.endian"].tolist() == list(range(6))


def test_load_model_holds_a_model_once_in_memory_and_its_tensors_are_writable(
    tmp_path: Path,
) -> None:
    import tracemalloc

    rng = np.random.default_rng(7)
    params = {f"layer{i}.weight": rng.normal(size=(1024, 1024)).astype("<f4") for i in range(48)}
    size = sum(a.nbytes for a in params.values())  # 201 MB
    url = f"file://{tmp_path}/store"
    with modelfs.open_store(url, create=True, use_disk_cache=False) as writer:
        modelfs.save_model("big", params, store=writer)
    with modelfs.open_store(url, use_disk_cache=False) as reader:
        tracemalloc.start()
        try:
            loaded = modelfs.load_model("big", store=reader)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # One buffer of the file that the arrays view, beside what does not grow with the
    # model (the 128 MiB block cache, a 64 MiB read step, readahead): not a bytes copy of
    # the file and a copy of every tensor on top (2.67x here before: 537 MB).
    assert peak < size + (256 << 20), (peak, size)
    assert_same_arrays(loaded, params)
    w = loaded["layer3.weight"]
    w[0, 0] = 5.0  # a model to train: its tensors take writes
    assert w[0, 0] == 5.0 and loaded["layer4.weight"][0, 0] == params["layer4.weight"][0, 0]


def test_saved_model_is_a_file_the_reference_safetensors_reads(client: modelfs.Client) -> None:
    params = numpy_params()
    del params["big.endian"]
    modelfs.save_model("tiny", params, store=client, metadata={"epoch": "3"})

    data = client.read(model_path("tiny"))

    assert_same_arrays(safetensors.numpy.load(data), params)
    assert client.stat(model_path("tiny"))["layout"] == "safetensors"


def test_save_and_load_model_round_trip_torch_including_bfloat16(client: modelfs.Client) -> None:
    gen = torch.Generator().manual_seed(0)
    params = {
        "w.bf16": torch.randn(64, 33, generator=gen).to(torch.bfloat16),
        "w.f16": torch.randn(7, generator=gen).to(torch.float16),
        "w.f32": torch.randn(3, 3, generator=gen),
        "i.i64": torch.arange(10),
        "mask": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 4),
        "strided": torch.arange(12.0).reshape(3, 4).t(),  # not contiguous
    }

    modelfs.save_model("torchy", params, store=client)
    loaded = modelfs.load_model("torchy", store=client)

    assert sorted(loaded) == sorted(params)
    for name, want in params.items():
        got = loaded[name]
        assert isinstance(got, torch.Tensor), name
        assert (got.dtype, got.shape) == (want.dtype, want.shape), name
        assert torch.equal(got, want), name
    reference = safetensors.torch.load(client.read("torchy.safetensors"))
    assert torch.equal(reference["w.bf16"], params["w.bf16"])


def test_load_model_can_return_numpy_for_a_torch_model(client: modelfs.Client) -> None:
    modelfs.save_model("torchy", {"w": torch.arange(6, dtype=torch.float32)}, store=client)

    loaded = modelfs.load_model("torchy", store=client, framework="numpy")

    assert isinstance(loaded["w"], np.ndarray)
    assert loaded["w"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="framework"):
        modelfs.load_model("torchy", store=client, framework="jax")


def test_load_model_of_an_old_version(client: modelfs.Client) -> None:
    modelfs.save_model("m", {"w": np.zeros(3, np.float32)}, store=client)
    modelfs.save_model("m", {"w": np.ones(3, np.float32)}, store=client)

    assert modelfs.load_model("m", store=client)["w"].tolist() == [1, 1, 1]
    assert modelfs.load_model("m", store=client, version=1)["w"].tolist() == [0, 0, 0]
    with pytest.raises(modelfs.NotFoundError, match="nope.safetensors"):
        modelfs.load_model("nope", store=client)


# update_model


def test_update_model_merges_into_a_new_version_and_uploads_only_the_change(
    client: modelfs.Client, minilm_tensors: dict[str, np.ndarray]
) -> None:
    modelfs.save_model("minilm", minilm_tensors, store=client)
    changed = "encoder.layer.3.intermediate.dense.weight"
    new_weight = minilm_tensors[changed] * np.float32(0.5)
    head = np.arange(768, dtype=np.float32).reshape(2, 384)

    result = modelfs.update_model(
        "minilm", {changed: new_weight, "classifier.weight": head}, store=client
    )
    loaded = modelfs.load_model("minilm", store=client)

    assert result.version == 2
    assert [v.version for v in client.history("minilm.safetensors")] == [1, 2]
    want = dict(minilm_tensors, **{changed: new_weight, "classifier.weight": head})
    assert_same_arrays(loaded, want)
    assert_same_arrays(modelfs.load_model("minilm", store=client, version=1), minilm_tensors)
    # Only the changed and new tensors (and the header) are new blocks.
    change = new_weight.nbytes + head.nbytes
    assert change <= result.new_bytes <= change + 64 * 1024


def test_update_model_of_a_torch_model_keeps_torch_and_metadata(client: modelfs.Client) -> None:
    modelfs.save_model(
        "t",
        {"a": torch.ones(4), "b": torch.zeros(2, dtype=torch.bfloat16)},
        store=client,
        metadata={"epoch": "1"},
    )

    modelfs.update_model("t", {"a": torch.full((4,), 2.0)}, store=client)
    loaded = modelfs.load_model("t", store=client)

    assert torch.equal(loaded["a"], torch.full((4,), 2.0))
    assert torch.equal(loaded["b"], torch.zeros(2, dtype=torch.bfloat16))
    header = safetensors.torch.load(client.read("t.safetensors"))
    assert sorted(header) == ["a", "b"]


def test_update_model_of_a_missing_model_raises_not_found(client: modelfs.Client) -> None:
    with pytest.raises(modelfs.NotFoundError, match="ghost.safetensors"):
        modelfs.update_model("ghost", {"w": np.zeros(1)}, store=client)
    assert client.list() == []


# where the store comes from


def test_store_comes_from_modelfs_store_when_not_given(
    monkeypatch: pytest.MonkeyPatch, store_url: str, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELFS_STORE", store_url)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    modelfs.save_model("envy", {"w": np.arange(3, dtype=np.int32)})

    assert modelfs.load_model("envy")["w"].tolist() == [0, 1, 2]
    with modelfs.open_store(store_url, cache_dir=tmp_path / "cache") as c:
        assert [f.path for f in c.list()] == ["envy.safetensors"]


def test_no_store_given_and_no_modelfs_store_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MODELFS_STORE", raising=False)
    for call in (
        lambda: modelfs.save_model("m", {"w": np.zeros(1)}),
        lambda: modelfs.load_model("m"),
        lambda: modelfs.update_model("m", {"w": np.zeros(1)}),
    ):
        with pytest.raises(modelfs.ModelfsError, match="MODELFS_STORE"):
            call()


# bad input


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({}, "non-empty"),
        ([("w", np.zeros(2))], "dict"),
        ({1: np.zeros(2)}, "tensor name 1"),
        ({"": np.zeros(2)}, "tensor name ''"),
        ({"__metadata__": np.zeros(2)}, "__metadata__"),
        (
            {"ok": np.zeros(2), "objs": np.array([object(), None], dtype=object)},
            "'objs' has dtype object",
        ),
        ({"strings": np.array(["a", "b"])}, "'strings' has dtype <U1"),
        ({"complex": np.zeros(2, np.complex64)}, "'complex' has dtype complex64"),
    ],
)
def test_invalid_params_are_refused_and_store_nothing(
    client: modelfs.Client, params: object, problem: str
) -> None:
    modelfs.save_model("m", {"w": np.zeros(2, np.float32)}, store=client)

    with pytest.raises((ValueError, TypeError), match=problem):
        modelfs.save_model("m", params, store=client)  # type: ignore[arg-type]
    if isinstance(params, dict) and params:
        with pytest.raises((ValueError, TypeError), match=problem):
            modelfs.update_model("m", params, store=client)

    assert [v.version for v in client.history("m.safetensors")] == [1]
    assert modelfs.load_model("m", store=client)["w"].tolist() == [0, 0]
    assert [f.path for f in client.list()] == ["m.safetensors"]
