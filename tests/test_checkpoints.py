"""Tensor tables of torch.save checkpoints, GGUF and safetensors files, read by random access.

Files are written by their own tools (torch.save, gguf.GGUFWriter, safetensors)
and read back through a reader that counts what it reads, so each test checks
both the table (against the tool's own view of the file) and that only the
table's bytes were read. Malformed files must give FormatError, nothing else.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import struct
import zipfile
import zlib
from pathlib import Path

import gguf
import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import MINILM

from modelfs.errors import FormatError, InvalidArgumentError
from modelfs.store import checkpoints as formats
from modelfs.store.checkpoints import (
    ArraySummary,
    LocalFile,
    dequantize,
    gguf_layout,
    model_layout,
    read_tensor_bytes,
    sniff,
    tensor_nbytes,
    torch_layout,
)


class CountingReader:
    """A file in memory read by range, counting the bytes and calls it served."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self.bytes_read = 0
        self.calls = 0
        self.ranges: list[tuple[int, int]] = []

    def read(self, offset: int, length: int) -> bytes:
        assert offset >= 0 and length >= 0 and offset + length <= self.size, (offset, length)
        self.bytes_read += length
        self.calls += 1
        self.ranges.append((offset, offset + length))
        return self.data[offset : offset + length]

    def overlapping_reads(self) -> list[tuple[int, int]]:
        ranges = sorted(self.ranges)
        return [b for a, b in zip(ranges, ranges[1:], strict=False) if b[0] < a[1]]


def torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def layout_of(data: bytes) -> formats.ModelLayout:
    reader = CountingReader(data)
    return torch_layout(reader.read, reader.size)


def rezip(data: bytes, *, replace: dict[str, bytes] | None = None, drop: str = "",
          deflate: str = "") -> bytes:  # fmt: skip
    """The zip `data` rewritten by Python's zipfile, with entries replaced, dropped or deflated."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename == drop:
                continue
            body = (replace or {}).get(info.filename, src.read(info))
            method = zipfile.ZIP_DEFLATED if info.filename == deflate else zipfile.ZIP_STORED
            dst.writestr(info.filename, body, compress_type=method)
    return out.getvalue()


def zip64(data: bytes) -> bytes:
    """The zip `data` rewritten with every size and offset in zip64 fields, data 64-aligned."""
    out = bytearray()
    central = bytearray()
    with zipfile.ZipFile(io.BytesIO(data)) as src:
        infos = [(i.filename.encode(), src.read(i)) for i in src.infolist()]
    for name, body in infos:
        offset = len(out)
        crc = zlib.crc32(body)
        local_extra = struct.pack("<HHQQ", 1, 16, len(body), len(body))
        pad = -(offset + 30 + len(name) + len(local_extra) + 4) % 64
        local_extra += struct.pack("<HH", 0x4650, pad) + b"Z" * pad  # torch's "FB" padding
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 45, 0, 0, 0, 0, crc,
                           0xFFFFFFFF, 0xFFFFFFFF, len(name), len(local_extra))  # fmt: skip
        out += name + local_extra + body
        extra = struct.pack("<HHQQQ", 1, 24, len(body), len(body), offset)
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 45, 0, 0, 0, 0, crc,
                               0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra), 0, 0, 0, 0,
                               0xFFFFFFFF)  # fmt: skip
        central += name + extra
    dir_offset = len(out)
    out += central
    record_offset = len(out)
    out += struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, len(infos), len(infos),
                       len(central), dir_offset)  # fmt: skip
    out += struct.pack("<4sIQI", b"PK\x06\x07", 0, record_offset, 1)
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                       0xFFFFFFFF, 0)  # fmt: skip
    return bytes(out)


def assert_spans_hold(data: bytes, expected: dict[str, torch.Tensor]) -> formats.ModelLayout:
    """Every tensor's table entry reads back as exactly the tensor's bytes."""
    layout = layout_of(data)
    found = layout.by_name()
    assert list(found) == list(expected)
    reader = CountingReader(data)
    for name, t in expected.items():
        info = found[name]
        assert info.shape == tuple(t.shape), name
        assert info.nbytes == t.numel() * t.element_size(), name
        assert read_tensor_bytes(info, reader.read, reader.size) == tensor_bytes(t), name
        if info.span is not None:
            assert data[info.span.start : info.span.end] == tensor_bytes(t), name
    return layout


# -- torch.save ----------------------------------------------------------------------------------

DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int8: "I8", torch.uint8: "U8", torch.int16: "I16", torch.int32: "I32",
    torch.int64: "I64", torch.bool: "BOOL", torch.uint16: "U16", torch.uint32: "U32",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.complex64: "C64",
}  # fmt: skip


def test_torch_dtypes_map_to_safetensors_names_and_spans_hold_the_bytes() -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = {
        f"t.{name}": (torch.randn(3, 5, generator=gen) * 10).to(dtype)
        for dtype, name in DTYPES.items()
    }
    layout = assert_spans_hold(torch_bytes(tensors), tensors)
    assert {t.name: t.dtype for t in layout.tensors} == {f"t.{n}": n for n in DTYPES.values()}
    assert all(t.span is not None for t in layout.tensors)
    assert layout.format == "torch"


def test_torch_strided_views_have_no_span_but_their_storage_reads_back() -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {
        "transposed": base.t(),  # shares base's storage, strides (1, 6)
        "column": base[:, 2],
        "row": base[2],  # a contiguous run inside the storage: has a span
        "base": base,
    }
    layout = assert_spans_hold(torch_bytes(tensors), tensors)
    found = layout.by_name()
    assert found["transposed"].span is None
    assert found["transposed"].storage.stride == (1, 6)
    assert found["column"].span is None
    assert (found["column"].storage.offset, found["column"].storage.stride) == (2, (6,))
    assert found["row"].span.start == found["base"].span.start + 12 * 4
    # One storage holds them all.
    assert len({t.storage.key for t in layout.tensors}) == 1


def test_torch_tensors_sharing_a_storage_each_get_their_own_run() -> None:
    flat = torch.arange(10, dtype=torch.int64)
    weight = torch.randn(4, 4)
    tensors = {"head": flat[:4], "tail": flat[4:], "emb": weight, "tied": weight}
    layout = assert_spans_hold(torch_bytes(tensors), tensors)
    found = layout.by_name()
    assert found["tail"].span.start == found["head"].span.end
    assert found["head"].storage.key == found["tail"].storage.key
    assert found["emb"].span == formats.TensorSpan(
        "emb", "F32", (4, 4), found["tied"].span.start, found["tied"].span.end
    )


def test_torch_nested_containers_are_named_with_dots_and_scalars_become_metadata() -> None:
    t1, t2, t3 = torch.ones(2), torch.zeros(3), torch.full((1,), 7.0)
    checkpoint = {
        "model": {"encoder": {"w": t1}},
        "ema": [t2, {"m": t3}],
        "epoch": 3,
        "lr": 0.5,
        "arch": "tiny",
        "betas": (0.9, 0.99),
        "dtype": torch.float16,
        7: None,
    }
    layout = assert_spans_hold(
        torch_bytes(checkpoint), {"model.encoder.w": t1, "ema.0": t2, "ema.1.m": t3}
    )
    assert layout.metadata == {
        "epoch": 3, "lr": 0.5, "arch": "tiny", "betas": (0.9, 0.99),
        "dtype": "torch.float16", "7": None,
    }  # fmt: skip


def test_torch_module_state_dict_and_parameters() -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)
    )
    state = module.state_dict()  # includes BatchNorm's int64 scalar num_batches_tracked
    layout = assert_spans_hold(torch_bytes(state), dict(state))
    assert layout.by_name()["2.num_batches_tracked"].shape == ()
    # Parameters themselves (not .data) go through torch._utils._rebuild_parameter.
    params = dict(module.named_parameters())
    assert_spans_hold(torch_bytes(params), params)


def test_torch_minilm_checkpoint_is_tabled_reading_a_sliver_of_it(tmp_path: Path) -> None:
    weights = safetensors.torch.load_file(MINILM)
    path = tmp_path / "minilm.pt"
    torch.save(weights, path)
    data = path.read_bytes()
    reader = CountingReader(data)
    layout = torch_layout(reader.read, reader.size)
    assert reader.bytes_read < len(data) / 1000, reader.bytes_read
    assert [t.name for t in layout.tensors] == list(weights)
    for info in layout.tensors:
        assert data[info.span.start : info.span.end] == tensor_bytes(weights[info.name])
    # The same through a local file.
    with LocalFile(path) as local:
        assert torch_layout(local.read, local.size) == layout
        assert sniff(local.read, local.size) == "torch"


def test_torch_zip64_directories_and_padded_local_headers_are_followed() -> None:
    tensors = {"a": torch.randn(5, 3), "b": torch.arange(7, dtype=torch.int32)}
    data = zip64(torch_bytes(tensors))
    # The rewritten file is a valid checkpoint for torch itself.
    loaded = torch.load(io.BytesIO(data), weights_only=True)
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    layout = assert_spans_hold(data, tensors)
    assert all(t.span.start % 64 == 0 for t in layout.tensors)


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def evil_checkpoint(pickle_bytes: bytes) -> bytes:
    """A zip laid out like torch.save's, holding the given pickle."""
    legit = torch_bytes({"w": torch.ones(2)})
    with zipfile.ZipFile(io.BytesIO(legit)) as z:
        pickle_name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
    return rezip(legit, replace={pickle_name: pickle_bytes})


@pytest.mark.parametrize("kind", ["reduce", "protocol0", "inside-state-dict"])
def test_torch_pickle_with_a_foreign_global_is_refused_and_nothing_runs(
    tmp_path: Path, kind: str
) -> None:
    marker = tmp_path / "ran"
    if kind == "reduce":
        payload = pickle.dumps(Evil(marker), protocol=2)
    elif kind == "protocol0":
        payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    else:
        payload = pickle.dumps({"w": [1, 2], "hook": Evil(marker)}, protocol=2)
    data = evil_checkpoint(payload)
    reader = CountingReader(data)
    assert sniff(reader.read, reader.size) == "torch"
    with pytest.raises(FormatError, match=r"(posix|os)\.system.*weights_only"):
        torch_layout(reader.read, reader.size)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        # LONG_BINPUT 2**31: the C unpickler would grow its memo to 16 GiB.
        (b"\x80\x02]r\xf0\xff\xff\x7f.", "memo index"),
        # BINBYTES8 of a petabyte: the C unpickler allocates before it reads.
        (b"\x80\x04\x8e" + (1 << 50).to_bytes(8, "little") + b".", "bytes8"),
        # EXT1: the copyreg registry, a way to name globals without find_class's names.
        (b"\x80\x02\x82\x01.", "extension code"),
        (b"\x80\x02(X\x01\x00\x00\x00a", "malformed pickle"),
    ],
)
def test_torch_pickle_that_would_allocate_wildly_or_is_cut_short_is_refused(
    payload: bytes, message: str
) -> None:
    with pytest.raises(FormatError, match=f"data.pkl: .*{message}"):
        layout_of(evil_checkpoint(payload))


def test_torch_truncated_files_give_format_error_at_every_length() -> None:
    data = torch_bytes({"a": torch.randn(3, 2), "b": {"c": torch.ones(4, dtype=torch.bfloat16)}})
    for cut in range(len(data)):
        reader = CountingReader(data[:cut])
        with pytest.raises(FormatError):
            torch_layout(reader.read, reader.size)
        assert sniff(reader.read, reader.size) in ("torch", "bytes")


def test_torch_any_flipped_byte_gives_a_table_or_format_error() -> None:
    data = torch_bytes({"a": torch.randn(3, 2), "n": 5, "b": [torch.ones(2, dtype=torch.int8)]})
    rng = random.Random(0)
    outcomes = set()
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= rng.randrange(1, 256)
        try:
            layout_of(bytes(damaged))
            outcomes.add("table")
        except FormatError:
            outcomes.add("error")
    assert outcomes == {"table", "error"}  # tensor bytes may change freely; headers may not


def test_torch_deflated_storage_entry_is_refused() -> None:
    data = torch_bytes({"a": torch.zeros(1000)})
    name = next(n for n in zipfile.ZipFile(io.BytesIO(data)).namelist() if n.endswith("/data/0"))
    with pytest.raises(FormatError, match=r"data/0.*compressed"):
        layout_of(rezip(data, deflate=name))
    # Stored as Python's zipfile writes it, the same checkpoint reads fine.
    assert layout_of(rezip(data)).tensors[0].shape == (1000,)


def test_torch_legacy_format_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"a": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    reader = CountingReader(path.read_bytes())
    assert sniff(reader.read, reader.size) == "torch"
    with pytest.raises(FormatError, match="legacy"):
        torch_layout(reader.read, reader.size)


def test_torch_big_endian_checkpoint_is_refused() -> None:
    data = torch_bytes({"a": torch.ones(3)})
    name = next(n for n in zipfile.ZipFile(io.BytesIO(data)).namelist() if n.endswith("byteorder"))
    with pytest.raises(FormatError, match="big-endian"):
        layout_of(rezip(data, replace={name: b"big"}))
    # Without a byteorder record (older PyTorch) little-endian is assumed.
    assert layout_of(rezip(data, drop=name)).tensors[0].name == "a"


def test_torch_missing_storage_entry_and_plain_zip_are_refused() -> None:
    data = torch_bytes({"a": torch.ones(3), "b": torch.ones(2)})
    name = next(n for n in zipfile.ZipFile(io.BytesIO(data)).namelist() if n.endswith("/data/1"))
    with pytest.raises(FormatError, match=r"no entry .*data/1"):
        layout_of(rezip(data, drop=name))
    plain = io.BytesIO()
    with zipfile.ZipFile(plain, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(FormatError, match="data.pkl"):
        layout_of(plain.getvalue())


# -- GGUF ------------------------------------------------------------------------------------------

TOKENS = [f"tok{i}" for i in range(200)]


def write_gguf(path: Path, *, alignment: int | None = None, big: int = 0,
               tokens: list[str] = TOKENS, endianess: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE
               ) -> dict[str, np.ndarray]:  # fmt: skip
    """A small GGUF model; returns the float32 values each tensor was made from."""
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(path, arch="llama", endianess=endianess)
    if alignment:
        writer.add_custom_alignment(alignment)
    writer.add_uint8("test.u8", 7)
    writer.add_int32("test.i32", -5)
    writer.add_uint64("test.u64", 1 << 40)
    writer.add_float32("test.f32", 0.5)
    writer.add_float64("test.f64", 0.125)
    writer.add_bool("test.flag", True)
    writer.add_string("test.name", "héllo")
    writer.add_array("test.ints", [1, 2, 3])
    writer.add_array("test.floats", [0.25, 0.75])
    writer.add_array("tokenizer.ggml.tokens", tokens)
    values = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((2, 8)).astype(np.float32),
        "q8": rng.standard_normal((4, 64)).astype(np.float32),
        "q4": rng.standard_normal((2, 32)).astype(np.float32),
        "bf16": rng.standard_normal((3, 4)).astype(np.float32),
        "i32": np.arange(6, dtype=np.int32).reshape(2, 3),
    }
    writer.add_tensor("f32", values["f32"])
    writer.add_tensor("f16", values["f16"].astype(np.float16))
    Q = gguf.GGMLQuantizationType
    for name, qtype in (("q8", Q.Q8_0), ("q4", Q.Q4_0), ("bf16", Q.BF16)):
        writer.add_tensor(name, gguf.quants.quantize(values[name], qtype), raw_dtype=qtype)
    writer.add_tensor("i32", values["i32"])
    if big:
        values["big"] = rng.standard_normal(big).astype(np.float32)
        writer.add_tensor("big", values["big"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return values


def test_gguf_table_agrees_with_gguf_reader(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path)
    data = path.read_bytes()
    reader = CountingReader(data)
    layout = gguf_layout(reader.read, reader.size)
    theirs = gguf.GGUFReader(path)
    assert [t.name for t in layout.tensors] == [t.name for t in theirs.tensors]
    for ours, their in zip(layout.tensors, theirs.tensors, strict=True):
        assert ours.shape == tuple(int(d) for d in reversed(their.shape.tolist()))
        assert ours.span.start == their.data_offset
        assert ours.span.end - ours.span.start == their.n_bytes == ours.nbytes
        assert data[ours.span.start : ours.span.end] == their.data.tobytes()
    assert {t.name: t.dtype for t in layout.tensors} == {
        "f32": "F32", "f16": "F16", "q8": "GGUF_Q8_0", "q4": "GGUF_Q4_0", "bf16": "BF16",
        "i32": "I32",
    }  # fmt: skip
    assert layout.by_name()["q8"].shape == (4, 64)  # C order: 4 rows of 64


def test_gguf_metadata_of_every_kind(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path)
    reader = CountingReader(path.read_bytes())
    meta = gguf_layout(reader.read, reader.size).metadata
    theirs = gguf.GGUFReader(path)
    for key in ("test.u8", "test.i32", "test.u64", "test.f32", "test.f64", "test.flag",
                "test.name", "general.architecture"):  # fmt: skip
        assert meta[key] == theirs.fields[key].contents(), key
    assert meta["test.flag"] is True
    assert meta["test.name"] == "héllo"
    assert meta["test.ints"] == (1, 2, 3)
    assert meta["test.floats"] == (0.25, 0.75)
    tokens = meta["tokenizer.ggml.tokens"]
    assert isinstance(tokens, ArraySummary)
    assert (tokens.element_type, tokens.length) == ("STRING", len(TOKENS))
    # The digest tells a vocabulary with one token changed from the original.
    other = tmp_path / "other.gguf"
    write_gguf(other, tokens=[*TOKENS[:-1], "changed"])
    reader2 = CountingReader(other.read_bytes())
    assert gguf_layout(reader2.read, reader2.size).metadata["tokenizer.ggml.tokens"] != tokens
    same = tmp_path / "same.gguf"
    write_gguf(same)
    reader3 = CountingReader(same.read_bytes())
    assert gguf_layout(reader3.read, reader3.size).metadata["tokenizer.ggml.tokens"] == tokens


def test_gguf_custom_alignment_places_the_data(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, alignment=256)
    data = path.read_bytes()
    reader = CountingReader(data)
    layout = gguf_layout(reader.read, reader.size)
    assert layout.metadata["general.alignment"] == 256
    theirs = gguf.GGUFReader(path)
    assert [t.span.start for t in layout.tensors] == [t.data_offset for t in theirs.tensors]
    assert all(t.span.start % 256 == 0 for t in layout.tensors)


def test_gguf_table_is_read_without_the_tensor_data(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, big=2_000_000)  # 8 MB of data after a header of a few KiB
    data = path.read_bytes()
    reader = CountingReader(data)
    layout = gguf_layout(reader.read, reader.size)
    assert reader.bytes_read < len(data) / 100
    assert reader.calls <= 2
    assert layout.by_name()["big"].shape == (2_000_000,)


def test_gguf_header_over_many_windows_is_read_once(tmp_path: Path) -> None:
    path = tmp_path / "vocab.gguf"
    tokens = [f"token-{i:06d}" for i in range(30_000)]  # a header of about 600 KiB
    write_gguf(path, tokens=tokens, big=500_000)
    data = path.read_bytes()
    reader = CountingReader(data)
    layout = gguf_layout(reader.read, reader.size)
    header_end, _ = gguf_data_bounds(data)
    assert header_end > 500_000
    # Windows of 64, 128, 256, 512 KiB: no byte twice, and at most one window too many.
    assert reader.calls == 4
    assert reader.overlapping_reads() == []
    assert reader.bytes_read < header_end + 512 * 1024
    theirs = gguf.GGUFReader(path)
    assert [t.span.start for t in layout.tensors] == [t.data_offset for t in theirs.tensors]
    assert layout.metadata["tokenizer.ggml.tokens"].length == 30_000


def test_gguf_dequantize_matches_gguf_and_numpy(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    values = write_gguf(path)
    data = path.read_bytes()
    reader = CountingReader(data)
    found = gguf_layout(reader.read, reader.size).by_name()
    for name, qtype in (("q8", gguf.GGMLQuantizationType.Q8_0),
                        ("q4", gguf.GGMLQuantizationType.Q4_0)):  # fmt: skip
        info = found[name]
        raw = data[info.span.start : info.span.end]
        ours = dequantize(info.dtype, raw, info.shape)
        blocks = np.frombuffer(raw, dtype=np.uint8).reshape(info.shape[0], -1)
        assert ours.dtype == np.float32 and ours.shape == info.shape
        np.testing.assert_array_equal(ours, gguf.quants.dequantize(blocks, qtype))
        # Quantization error only: the values are close to what was written.
        assert np.abs(ours - values[name]).max() < 0.25
    raw = data[found["f16"].span.start : found["f16"].span.end]
    np.testing.assert_array_equal(
        dequantize("F16", raw, (2, 8)), values["f16"].astype(np.float16).astype(np.float32)
    )
    raw = data[found["bf16"].span.start : found["bf16"].span.end]
    np.testing.assert_allclose(dequantize("BF16", raw, (3, 4)), values["bf16"], rtol=1 / 128)
    with pytest.raises(InvalidArgumentError, match="bytes"):
        dequantize("GGUF_Q8_0", raw, (4, 64))
    with pytest.raises(InvalidArgumentError, match="multiple of 32"):
        tensor_nbytes("GGUF_Q8_0", (4, 33))


def test_gguf_fallback_type_table_matches_gguf_package() -> None:
    sizes = {int(t): (t.name, *gguf.GGML_QUANT_SIZES[t]) for t in gguf.GGML_QUANT_SIZES}
    fallback = formats._GGML_TYPES_FALLBACK
    shared = fallback.keys() & sizes.keys()
    assert len(shared) >= 30
    assert {k: sizes[k] for k in shared} == {k: fallback[k] for k in shared}


def test_gguf_table_without_the_gguf_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path)
    reader = CountingReader(path.read_bytes())
    with_package = gguf_layout(reader.read, reader.size)
    monkeypatch.setattr(formats, "_gguf_module", lambda: None)
    formats._ggml_types.cache_clear()
    formats._gguf_blocks.cache_clear()
    try:
        assert gguf_layout(reader.read, reader.size) == with_package
        q8 = with_package.by_name()["q8"]
        raw = reader.data[q8.span.start : q8.span.end]
        with pytest.raises(FormatError, match="needs the gguf package"):
            dequantize(q8.dtype, raw, q8.shape)
    finally:
        formats._ggml_types.cache_clear()
        formats._gguf_blocks.cache_clear()


def gguf_data_bounds(data: bytes) -> tuple[int, int]:
    """Where the first tensor's data begins (all before is header) and the last one's ends."""
    reader = CountingReader(data)
    spans = [t.span for t in gguf_layout(reader.read, reader.size).tensors]
    return min(s.start for s in spans), max(s.end for s in spans)


def test_gguf_truncated_or_corrupt_headers_give_format_error(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path)
    data = path.read_bytes()
    header_end, data_end = gguf_data_bounds(data)
    for cut in [*range(0, header_end, 3), data_end - 1]:
        reader = CountingReader(data[:cut])
        with pytest.raises(FormatError):
            gguf_layout(reader.read, reader.size)
    rng = random.Random(1)
    for _ in range(1500):
        damaged = bytearray(data)
        damaged[rng.randrange(header_end)] ^= rng.randrange(1, 256)
        reader = CountingReader(bytes(damaged))
        try:
            gguf_layout(reader.read, reader.size)
        except FormatError:
            pass

    def patched(offset: int, fmt: str, value: int) -> bytes:
        out = bytearray(data)
        struct.pack_into(fmt, out, offset, value)
        return bytes(out)

    cases = {
        "tensors": patched(8, "<Q", 1 << 40),  # tensor count
        "metadata": patched(16, "<Q", 1 << 40),  # metadata key count
        "version 1": patched(4, "<I", 1),
        "version 9": patched(4, "<I", 9),
        "past the end": patched(24, "<Q", 1 << 62),  # the first key's length
    }
    for message, damaged_data in cases.items():
        reader = CountingReader(damaged_data)
        with pytest.raises(FormatError, match=message):
            gguf_layout(reader.read, reader.size)


def test_gguf_big_endian_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.gguf"
    write_gguf(path, endianess=gguf.GGUFEndian.BIG)
    reader = CountingReader(path.read_bytes())
    assert sniff(reader.read, reader.size) == "gguf"
    with pytest.raises(FormatError, match="big-endian"):
        gguf_layout(reader.read, reader.size)


# -- sniff and model_layout ------------------------------------------------------------------------


def test_sniff_tells_each_format_and_everything_else_is_bytes(tmp_path: Path) -> None:
    tensors = {"w": torch.randn(4, 4), "b": torch.zeros(4)}
    safetensors_path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(tensors, safetensors_path)
    gguf_path = tmp_path / "m.gguf"
    write_gguf(gguf_path)
    plain_zip = io.BytesIO()
    with zipfile.ZipFile(plain_zip, "w") as z:
        z.writestr("a/b.txt", "not a checkpoint")
    rng = random.Random(2)
    cases = {
        "safetensors": safetensors_path.read_bytes(),
        "torch": torch_bytes(tensors),
        "gguf": gguf_path.read_bytes(),
        "bytes": plain_zip.getvalue(),
    }
    for expected, data in cases.items():
        reader = CountingReader(data)
        assert sniff(reader.read, reader.size) == expected
    for size in (0, 3, 9, 100, 5000):
        reader = CountingReader(bytes(rng.randrange(256) for _ in range(size)))
        assert sniff(reader.read, reader.size) == "bytes"
        assert model_layout(reader.read, reader.size) is None
    # A file whose first 8 bytes announce a header it does not have.
    reader = CountingReader(struct.pack("<Q", 50) + b"{" + b"x" * 60)
    assert sniff(reader.read, reader.size) == "bytes"


def test_model_layout_dispatches_and_agrees_across_formats(tmp_path: Path) -> None:
    tensors = {"b": torch.zeros(4), "w": torch.randn(4, 4, dtype=torch.float64)}
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})
    via_safetensors = model_layout(*reader_of(path.read_bytes()))
    via_torch = model_layout(*reader_of(torch_bytes(tensors)))
    assert via_safetensors.format == "safetensors" and via_torch.format == "torch"
    assert via_safetensors.metadata == {"format": "pt"}
    for layout, data in ((via_safetensors, path.read_bytes()), (via_torch, torch_bytes(tensors))):
        found = layout.by_name()
        for name, t in tensors.items():
            assert (found[name].dtype, found[name].shape) == (DTYPES[t.dtype], tuple(t.shape))
            span = found[name].span
            assert data[span.start : span.end] == tensor_bytes(t)


def reader_of(data: bytes) -> tuple[formats.ReadAt, int]:
    reader = CountingReader(data)
    return reader.read, reader.size


def test_short_reads_are_reported_not_trusted() -> None:
    data = torch_bytes({"a": torch.ones(3)})
    with pytest.raises(FormatError, match="shorter than its size"):
        torch_layout(lambda offset, length: data[offset : offset + length], len(data) + 100)


def test_a_hostile_torch_zip_put_in_the_store_is_stored_as_bytes_and_nothing_runs(
    tmp_path: Path,
) -> None:
    """The store reads a torch zip's table at put, to cut it at its storages: a pickle
    with a foreign global is refused there too, and the file is stored as plain bytes."""
    import modelfs
    from modelfs.backends import MemoryBackend
    from modelfs.store import Store

    marker = tmp_path / "ran"
    data = evil_checkpoint(pickle.dumps({"w": [1, 2], "hook": Evil(marker)}, protocol=2))
    with modelfs.Client(Store.create(MemoryBackend()), use_disk_cache=False) as client:
        put = client.put("evil.pt", data)
        assert put.layout == "cdc" and client.read("evil.pt") == data
        good = torch_bytes({"w": torch.ones(1000)})
        assert client.put("good.pt", good).layout == "torch" and client.read("good.pt") == good
    assert not marker.exists()
