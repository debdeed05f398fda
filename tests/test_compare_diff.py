"""compare_models and compare_series on real weights: what differs, by how much, and what it
cost to find out (blocks fetched, requests sent).

MiniLM is compared with copies whose changes are known (perturbed tensors, one
removed and one added, a bf16 copy, a torch.save copy, a sharded copy) and with
itself; every statistic is checked against numpy on the whole arrays. A series
of real fine-tune checkpoints shows its frozen layers unchanged at every step.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from storeobjects import WrappedBackend

import modelfs
from modelfs.backends import MemoryBackend
from modelfs.compare.diff import ABSENT, compare_models
from modelfs.compare.series import compare_series
from modelfs.errors import FormatError, InvalidArgumentError, NotFoundError, StoreNotFoundError
from modelfs.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import finetune  # noqa: E402

QUERY = "encoder.layer.3.attention.self.query.weight"
DENSE = "encoder.layer.1.output.dense.weight"
BIAS = "pooler.dense.bias"


class PackBytes(WrappedBackend):
    """Counts the bytes of packs read: what a comparison fetched of the models' blocks."""

    def __init__(self, inner: MemoryBackend) -> None:
        super().__init__(inner)
        self.fetched = 0
        self.ref_reads = 0
        self._lock = threading.Lock()

    def get(self, key: str, byte_range=None) -> bytes:
        data = super().get(key, byte_range)
        with self._lock:
            if key.startswith("packs/"):
                self.fetched += len(data)
            self.ref_reads += key.startswith("refs/")
        return data

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        with self._lock:
            self.ref_reads += key.startswith("refs/")
        return super().get_with_etag(key)


@pytest.fixture
def packs() -> PackBytes:
    return PackBytes(MemoryBackend())


@pytest.fixture
def client(packs: PackBytes) -> Iterator[modelfs.Client]:
    c = modelfs.Client(Store.create(packs), use_disk_cache=False)
    yield c
    c.close()


def stored_bytes(client: modelfs.Client, path: str, version: int, names: list[str]) -> int:
    """The stored (compressed) bytes of the blocks holding some tensors of a version."""
    from modelfs.store.checkpoints import safetensors_layout

    with client.open(path, version) as f:
        layout = safetensors_layout(lambda o, n: client.read(path, o, n, version), f.size)
        manifest = f.manifest
    spans = [t.span for t in layout.tensors if t.name in names]
    blocks = {b.location.block_id: b.location.stored_length
              for s in spans for b in manifest.blocks_for(s.start, s.end - s.start)}  # fmt: skip
    return sum(blocks.values())


def perturbed(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """MiniLM with two tensors changed by known amounts, one removed and one added."""
    out = dict(tensors)
    out[QUERY] = tensors[QUERY] + np.float32(0.01)
    dense = tensors[DENSE].copy()
    dense[3, :10] *= -1  # ten elements flip sign
    out[DENSE] = dense
    del out[BIAS]
    out["classifier.weight"] = np.ones((2, 384), np.float32)
    return out


def expected(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    d = b64 - a64
    return {
        "max_abs": float(np.abs(d).max()),
        "mean_abs": float(np.abs(d).mean()),
        "rel_l2": float(np.linalg.norm(d) / np.linalg.norm(a64)),
        "cosine": float(a64.ravel() @ b64.ravel() / (np.linalg.norm(a64) * np.linalg.norm(b64))),
        "frac_changed": float(np.mean(~np.isclose(b64, a64, rtol=0, atol=0))),
        "frac_bit_identical": float(np.mean(a.view(np.uint32) == b.view(np.uint32))),
    }


def test_a_perturbed_copy_in_the_store_shows_every_change_reading_only_the_changed_tensors(
    client: modelfs.Client, packs: PackBytes, minilm_path: Path, minilm_tensors, tmp_path: Path
) -> None:
    changed = perturbed(minilm_tensors)
    save_file(changed, str(tmp_path / "b.safetensors"))
    client.put("m/model.safetensors", minilm_path)
    client.put("m/model.safetensors", tmp_path / "b.safetensors")
    fetched = packs.fetched

    d = compare_models("m/model.safetensors@1", "m/model.safetensors@2", store=client)
    fetched = packs.fetched - fetched

    by_name = {t.name: t for t in d.tensors}
    assert d.counts() == {"identical": 101, "changed": 2, "added": 1, "removed": 1}
    assert by_name[BIAS].status == "removed" and by_name["classifier.weight"].status == "added"
    for name in (QUERY, DENSE):
        got = by_name[name].stats.to_json()
        for key, value in expected(minilm_tensors[name], changed[name]).items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
    assert by_name[DENSE].stats.changed == 10
    # The identical tensors were decided from block ids; only the two changed ones were read.
    assert {t.decided_by for t in d.tensors if t.status == "identical"} == {"blocks"}
    changed_bytes = (minilm_tensors[QUERY].nbytes + minilm_tensors[DENSE].nbytes) * 2
    assert d.bytes_read == changed_bytes
    changed_stored = sum(
        stored_bytes(client, "m/model.safetensors", v, [QUERY, DENSE]) for v in (1, 2)
    )
    assert changed_stored <= fetched <= 1.1 * changed_stored + 64 * 1024  # + the two headers
    layers = {r.label: r for r in d.by_layer()}
    assert {label for label, r in layers.items() if r.changed_tensors} == {"1", "3"}
    json.dumps(d.to_json(), allow_nan=False)  # the --json schema is strict JSON


def test_a_model_against_itself_is_identical_with_no_block_fetched(
    client: modelfs.Client, packs: PackBytes, minilm_path: Path
) -> None:
    client.put("m/model.safetensors", minilm_path)
    client.tag("m/model.safetensors", "v1")
    client.put("copy/model.safetensors", minilm_path)  # another path, the same blocks
    before = packs.fetched

    d = compare_models("m/model.safetensors@v1", "copy/model.safetensors", store=client)
    fetched = packs.fetched - before

    assert d.identical and d.counts() == {"identical": 104} and d.bytes_read == 0
    # The header (the same on both sides, read once), and no byte of tensor data.
    assert 0 < fetched <= 64 * 1024
    assert d.a.startswith("m/model.safetensors@1 blake3:") and "(tag v1)" in d.a


def test_a_local_file_against_the_store_reads_only_what_differs_from_the_store(
    client: modelfs.Client, minilm_path: Path, minilm_tensors, tmp_path: Path
) -> None:
    client.put("m/model.safetensors", minilm_path)
    b = tmp_path / "b.safetensors"
    save_file(perturbed(minilm_tensors), str(b))
    d = compare_models("m/model.safetensors", str(b), store=client)
    assert d.counts() == {"identical": 101, "changed": 2, "added": 1, "removed": 1}
    assert d.bytes_read == (minilm_tensors[QUERY].nbytes + minilm_tensors[DENSE].nbytes) * 2


def test_a_bf16_copy_differs_in_dtype_by_its_rounding_only(
    client: modelfs.Client, minilm_path: Path, minilm_bf16_path: Path, minilm_tensors
) -> None:
    d = compare_models(str(minilm_path), str(minilm_bf16_path))
    floats = [t for t in d.tensors if t.dtype_a == "F32"]
    assert floats and all(t.status == "dtype" and t.dtype_b == "BF16" for t in floats)
    worst = max(t.stats.rel_l2 for t in floats)
    assert 0 < worst < 2**-8  # bf16 keeps 8 bits of mantissa: relative error below 2^-8
    ints = [t for t in d.tensors if t.dtype_a == "I64"]
    assert all(t.status == "identical" for t in ints)


def test_a_torch_save_copy_has_the_same_values_as_the_safetensors_original(
    minilm_path: Path, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    torch.save(load_file(str(minilm_path)), tmp_path / "model.pt")
    d = compare_models(str(minilm_path), str(tmp_path / "model.pt"))
    assert d.counts() == {"identical": 104} and d.bytes_read > 0  # read: no shared blocks


def test_a_sharded_directory_is_compared_tensor_by_tensor_across_shards(
    client: modelfs.Client, minilm_tensors, tmp_path: Path
) -> None:
    def save_sharded(tensors: dict[str, np.ndarray], config: dict) -> None:
        names = sorted(tensors)
        shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
                  "model-00002-of-00002.safetensors": names[len(names) // 2 :]}  # fmt: skip
        for shard, keys in shards.items():
            local = tmp_path / shard
            save_file({k: tensors[k] for k in keys}, str(local))
            client.put(f"hf/{shard}", local)
        index = {"weight_map": {k: s for s, keys in shards.items() for k in keys}}
        client.put("hf/model.safetensors.index.json", json.dumps(index).encode())
        client.put("hf/config.json", json.dumps(config).encode())
        client.put("hf/tokenizer.json", b"{}")

    save_sharded(minilm_tensors, {"hidden_size": 384, "layers": [1, 2]})
    client.tag("hf", "v1")
    changed = dict(minilm_tensors)
    changed[QUERY] = changed[QUERY] * np.float32(2)
    save_sharded(changed, {"hidden_size": 384, "layers": [1, 3], "new": True})
    client.put("hf/tokenizer.json", b'{"x": 1}')

    d = compare_models("hf@v1", "hf", store=client)
    assert [t.name for t in d.tensors if t.status != "identical"] == [QUERY]
    assert d.tensors[[t.name for t in d.tensors].index(QUERY)].stats.rel_l2 == pytest.approx(1.0)
    assert [(c.key, c.a, c.b) for c in d.configs["config.json"]] == [
        ("layers[1]", 2, 3), ("new", ABSENT, True),
    ]  # fmt: skip
    assert [(f.name, f.status) for f in d.files] == [("tokenizer.json", "changed")]


def test_files_that_are_no_model_get_a_byte_level_summary(
    client: modelfs.Client, tmp_path: Path
) -> None:
    a, b = bytearray(range(256)) * 4096, bytearray(range(256)) * 4096
    b[1000:1010] = b"\xff" * 10
    client.put("blob.bin", bytes(a))
    client.put("blob.bin", bytes(b))
    d = compare_models("blob.bin@1", "blob.bin@2", store=client)
    assert not d.tensors and [(f.status, f.changed_bytes) for f in d.files] == [("changed", 10)]


def test_bad_operands_get_an_error_naming_the_problem(
    client: modelfs.Client, minilm_path: Path, tmp_path: Path
) -> None:
    client.put("m/model.safetensors", minilm_path)
    client.put("notes.txt", b"hello")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(minilm_path.read_bytes()[: 1 << 20])
    cases = [
        (("m/model.safetensors@9", "m/model.safetensors"), NotFoundError, "no version 9"),
        (("m/model.safetensors@nope", "m/model.safetensors"), NotFoundError, "no tag or alias"),
        ((str(tmp_path / "missing.safetensors"), "m/model.safetensors"), NotFoundError,
         "no such local file"),
        (("m/model.safetensors", "notes.txt"), FormatError, "holds no tensors"),
        (("m/model.safetensors", str(truncated)), FormatError, "truncated"),
        (("::x", "m/model.safetensors"), InvalidArgumentError, "STORE_URL::ADDRESS"),
        (("s3://::x", "m/model.safetensors"), StoreNotFoundError, "invalid S3 store URL"),
    ]  # fmt: skip
    for (a, b), error, message in cases:
        with pytest.raises(error, match=message):
            compare_models(a, b, store=client)
    with pytest.raises(InvalidArgumentError, match="OLD_PREFIX=NEW_PREFIX"):
        compare_models("m/model.safetensors", "m/model.safetensors", store=client, renames=["x"])


def test_renamed_tensors_match_through_a_prefix_map(
    client: modelfs.Client, minilm_tensors, tmp_path: Path
) -> None:
    save_file(minilm_tensors, str(tmp_path / "a.safetensors"))
    save_file({"bert." + k: v for k, v in minilm_tensors.items()}, str(tmp_path / "b.safetensors"))
    a, b = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    assert compare_models(a, b).counts() == {"added": 104, "removed": 104}
    assert compare_models(a, b, renames=["bert.="]).counts() == {"identical": 104}


@pytest.fixture(scope="module")
def frozen_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return finetune.make_checkpoints(
        tmp_path_factory.mktemp("frozen"), "frozen", n=3, steps_per_checkpoint=1
    )


def test_a_fine_tune_series_shows_its_frozen_layers_unchanged_at_every_step(
    client: modelfs.Client, packs: PackBytes, frozen_series: list[Path], minilm_path: Path
) -> None:
    client.put("run/model.safetensors", minilm_path)
    for checkpoint in frozen_series:
        client.put("run/model.safetensors", checkpoint)
    fetched, refs = packs.fetched, packs.ref_reads

    series = compare_series("run/model.safetensors", store=client)
    assert packs.ref_reads - refs == 1  # one read of the ref for every version

    assert len(series.steps) == 3 and series.models[0].startswith("run/model.safetensors@1 ")
    drift = series.layer_drift()
    for layer in ("0", "1", "2", "3", "4"):
        assert drift[layer] == [0.0, 0.0, 0.0], layer  # frozen: no tensor changed
    assert all(x == 1.0 for x in drift["5"])  # trained: every tensor moves at every step
    frozen = series.frozen()
    assert not [n for n in frozen if n.startswith(("encoder.layer.5.", "pooler."))]
    assert all(n in frozen for n in series.tensor_names() if n.startswith("encoder.layer.0."))
    assert packs.fetched - fetched <= 4 * 64 * 1024  # headers only: no tensor data
    with_numbers = compare_series("run/model.safetensors@2..4", store=client, numbers=True)
    assert len(with_numbers.steps) == 2
    assert all(v > 0 for v in with_numbers.layer_drift()["5"])
    assert with_numbers.layer_drift()["0"] == [0.0, 0.0]


def test_a_version_in_another_store_is_compared_by_url(
    client: modelfs.Client, minilm_path: Path, minilm_tensors, tmp_path: Path
) -> None:
    other = f"file://{tmp_path / 'other-store'}"
    modelfs.init_store(other)
    save_file(perturbed(minilm_tensors), str(tmp_path / "b.safetensors"))
    with modelfs.open_store(other) as c:
        c.put("m/model.safetensors", tmp_path / "b.safetensors")
    client.put("m/model.safetensors", minilm_path)
    d = compare_models("m/model.safetensors", f"{other}::m/model.safetensors@1", store=client)
    assert d.b.startswith(f"{other}::m/model.safetensors@1 blake3:")
    assert d.counts() == {"identical": 101, "changed": 2, "added": 1, "removed": 1}


def test_gguf_files_compare_quantized_tensors_by_their_values(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64)).astype(np.float32)

    def write(path: Path, weights: np.ndarray, arch: str) -> None:
        writer = gguf.GGUFWriter(str(path), arch)
        writer.add_tensor("blk.0.attn_q.weight", weights)
        q = gguf.quants.quantize(weights, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor("blk.1.ffn.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    write(tmp_path / "a.gguf", w, "llama")
    changed = w.copy()
    changed[0] += 0.5
    write(tmp_path / "b.gguf", changed, "mistral")
    d = compare_models(str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf"))
    by_name = {t.name: t for t in d.tensors}
    assert by_name["blk.0.attn_q.weight"].stats.max_abs == pytest.approx(0.5)
    assert by_name["blk.1.ffn.weight"].dtype_a == "GGUF_Q8_0"
    assert 0 < by_name["blk.1.ffn.weight"].stats.rel_l2 < 0.2  # dequantized, then compared
    assert ("general.architecture", "llama", "mistral") in [(c.key, c.a, c.b) for c in d.metadata]


def test_a_series_over_a_prefix_takes_its_checkpoints_in_natural_order(
    client: modelfs.Client,
) -> None:
    from modelfs.models import encode_model

    base = {f"model.layers.{i}.w": np.full(4, i, np.float32) for i in range(3)}
    for step in (1, 2, 10):
        tensors = dict(base)
        tensors["model.layers.2.w"] = np.full(4, step, np.float32)  # only layer 2 trains
        client.put(f"run/step-{step}/model.safetensors", encode_model(tensors))
        client.put(f"run/step-{step}/config.json", b'{"step": %d}' % step)

    series = compare_series("run/", store=client)

    assert [m.split("@")[0] for m in series.models] == ["run/step-1", "run/step-2", "run/step-10"]
    assert series.layer_drift() == {"0": [0.0, 0.0], "1": [0.0, 0.0], "2": [1.0, 1.0]}
    assert [c.key for c in series.steps[1].diff.configs["config.json"]] == ["step"]
    with pytest.raises(InvalidArgumentError, match="two versions or more"):
        compare_series("run/step-1/model.safetensors", store=client)
    with pytest.raises(NotFoundError, match="nothing stored under it"):
        compare_series("nothing/", store=client)


def test_a_repository_with_safetensors_and_other_checkpoints_compares_the_safetensors(
    client: modelfs.Client, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    from modelfs.models import encode_model

    def save(version: int) -> None:
        w = {"conv_in.weight": np.full(4, version, np.float32)}
        client.put("hf/model.safetensors", encode_model({"x.w": np.full(4, version, np.float32)}))
        torch.save({"lr": 0.1 * version}, tmp_path / "args.bin")  # no tensors: not weights
        client.put("hf/training_args.bin", tmp_path / "args.bin")
        client.put("pipe/unet/diffusion_pytorch_model.safetensors", encode_model(w))
        client.put("pipe/vae/diffusion_pytorch_model.safetensors", encode_model(w))

    save(1)
    client.tag("hf", "v1")
    client.tag("pipe", "v1")
    save(2)
    repo = compare_models("hf@v1", "hf", store=client)
    assert [(t.name, t.status) for t in repo.tensors] == [("x.w", "changed")]
    assert [(f.name, f.status) for f in repo.files] == [("training_args.bin", "changed")]
    pipe = compare_models("pipe@v1", "pipe", store=client)
    assert [t.name for t in pipe.tensors] == [
        "unet/diffusion_pytorch_model.safetensors:conv_in.weight",
        "vae/diffusion_pytorch_model.safetensors:conv_in.weight",
    ]


def test_torch_checkpoints_are_cut_at_their_tensors_so_they_dedup_and_diff_by_blocks(
    client: modelfs.Client, packs: PackBytes, minilm_path: Path, tmp_path: Path
) -> None:
    """torch.save names the archive after the file and puts a header before every tensor:
    stored as content-defined blocks, two checkpoints of other names shared almost no
    block. Cut at each storage, they share every unchanged tensor's."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    weights = load_file(str(minilm_path))
    torch.save(weights, tmp_path / "checkpoint-100.pt")
    weights[QUERY] = weights[QUERY] * 1.5
    torch.save(weights, tmp_path / "checkpoint-200.pt")
    first = client.put("run/model.pt", tmp_path / "checkpoint-100.pt")
    second = client.put("run/model.pt", tmp_path / "checkpoint-200.pt")
    assert client.store.manifest("run/model.pt").layout == "torch"
    changed = weights[QUERY].numel() * 4
    assert second.uploaded_bytes < 2 * changed < first.uploaded_bytes / 20  # the one tensor

    before = packs.fetched
    d = compare_models("run/model.pt@1", "run/model.pt@2", store=client)
    assert d.counts() == {"identical": 103, "changed": 1}
    assert {t.decided_by for t in d.tensors if t.status == "identical"} == {"blocks"}
    assert packs.fetched - before < 3 * changed  # the changed tensor, both sides, compressed


def test_a_series_of_a_directorys_snapshots_by_range(client: modelfs.Client) -> None:
    from modelfs.models import encode_model

    for step in (1, 2, 3):
        client.put("hf/model.safetensors", encode_model({"layers.0.w": np.full(4, step % 2, np.float32),
                                                        "layers.1.w": np.zeros(4, np.float32)}))  # fmt: skip
        client.tag("hf", f"s{step}")  # snapshots 1, 2, 3
    series = compare_series("hf@1..3", store=client)
    assert [m.split()[0] for m in series.models] == ["hf@1", "hf@2", "hf@3"]
    assert series.layer_drift() == {"0": [1.0, 1.0], "1": [0.0, 0.0]}
    with pytest.raises(NotFoundError, match=r"hf has no snapshot 4 \(snapshots 1\.\.3\)"):
        compare_series("hf@2..4", store=client)
