"""How a comparison is shown: `modelfs diff`'s text, CSV, --fail-if records and heatmaps.

Every diff here is real: compare_models on a MiniLM copy perturbed in known
tensors of known layers (by known amounts, one removed, one added, one
reshaped, one made F16), and compare_series on a small model stored four times
in an in-memory store, where known layers change at known steps. The tests
read what a user would read.
"""

from __future__ import annotations

import csv
import io
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import MINILM
from safetensors.numpy import load_file, save_file

import modelfs
from modelfs.backends import MemoryBackend
from modelfs.compare import report
from modelfs.compare.diff import ModelDiff, compare_models
from modelfs.compare.series import Series, compare_series
from modelfs.errors import InvalidArgumentError, ModelfsError
from modelfs.models import encode_model
from modelfs.store import Store
from modelfs.store.query import QueryError

QUERY = "encoder.layer.3.attention.self.query.weight"  # scaled by 1.01: rel L2 0.01
BIAS = "encoder.layer.5.output.dense.bias"  # 10 of 384 elements + 1e-4
RETYPED = "encoder.layer.2.attention.self.value.bias"  # F32 -> F16
RESHAPED = "encoder.layer.1.attention.self.key.bias"  # 384 -> 1x384, same values
ADDED = "encoder.layer.5.adapter.weight"
REMOVED = "pooler.dense.bias"
PNG = b"\x89PNG\r\n\x1a\n"

Perturbed = tuple[ModelDiff, dict[str, np.ndarray]]


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory: pytest.TempPathFactory) -> Perturbed:
    """MiniLM against a perturbed copy of it (numbers measured), and the original tensors."""
    original = load_file(MINILM)
    b = dict(original)
    b[QUERY] = original[QUERY] * np.float32(1.01)
    bias = original[BIAS].copy()
    bias[:10] += np.float32(1e-4)
    b[BIAS] = bias
    b[RETYPED] = original[RETYPED].astype(np.float16)
    b[RESHAPED] = original[RESHAPED].reshape(1, 384)
    del b[REMOVED]
    b[ADDED] = np.ones((4, 384), np.float32)
    path = tmp_path_factory.mktemp("report") / "b.safetensors"
    save_file(b, str(path), metadata={"format": "pt", "step": "100"})  # MiniLM has format: pt
    return compare_models(str(MINILM), str(path)), original


def _section(out: str, title: str) -> list[str]:
    """The lines of the text section whose title starts with title, up to the blank line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return lines[start:end]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# -- text ----------------------------------------------------------------------------------------


def test_text_header_counts_statuses_and_bytes_read(perturbed: Perturbed) -> None:
    diff, _ = perturbed
    header = report.text(diff).splitlines()[0]
    assert header.startswith(f"{MINILM} -> ")
    assert "105 tensors: 2 changed, 1 reshaped, 1 dtype, 1 added, 1 removed, 99 identical" in header
    assert re.search(r"read \d+\.\d MiB$", header)


def test_text_lists_structure_with_shapes_and_dtypes_then_metadata(perturbed: Perturbed) -> None:
    diff, _ = perturbed
    out = report.text(diff)
    structure = _section(out, "structure:")
    assert [line.split()[0] for line in structure[1:]] == ["added", "removed", "reshaped", "dtype"]
    assert structure[1].split() == ["added", ADDED, "F32", "4x384"]
    assert structure[2].split() == ["removed", REMOVED, "F32", "384"]
    assert structure[3].split() == ["reshaped", RESHAPED, "F32", "384", "->", "F32", "1x384"]
    assert structure[4].split() == ["dtype", RETYPED, "F32", "384", "->", "F16", "384"]
    assert _section(out, "metadata:") == ["metadata:", '  step: (absent) -> "100"']
    assert out.index("structure:") < out.index("metadata:") < out.index("tensors that differ")


def test_text_table_puts_the_most_changed_tensor_first_in_aligned_columns(
    perturbed: Perturbed,
) -> None:
    diff, _ = perturbed
    table = _section(report.text(diff), "tensors that differ")
    assert table[0] == "tensors that differ (4 of 105, largest rel L2 first):"
    header, body = table[1], table[2:]
    assert header.split() == [
        "name", "status", "max|Δ|", "mean|Δ|", "rel", "L2", "cosine", "changed", "bit-same",
    ]  # fmt: skip
    assert [row.split()[0] for row in body] == [QUERY, BIAS, RETYPED, RESHAPED]  # 4e-4, 3e-4
    first = body[0].split()
    assert first[1] == "changed" and first[4] == "0.01" and first[6] == "100%"
    assert body[3].split()[4] == "0"  # reshaped, same values
    assert len({len(line) for line in table[1:]}) == 1  # right-aligned to one edge


def test_text_top_leaves_tensors_out_and_says_so(perturbed: Perturbed) -> None:
    diff, _ = perturbed
    table = _section(report.text(diff, top=1), "tensors that differ")
    assert table[2].split()[0] == QUERY
    assert table[3:] == ["  ... 3 more left out; --all shows them"]
    assert "left out" not in report.text(diff, top=None)
    assert "left out" not in report.text(diff)  # 4 tensors differ, fewer than the default 20


def test_text_rolls_up_changed_layers_and_names_the_untouched_ones(perturbed: Perturbed) -> None:
    diff, _ = perturbed
    out = report.text(diff)
    layers = _section(out, "by layer")
    assert layers[0] == "by layer (5 of 7 layers differ):"
    assert [line.split()[0] for line in layers[2:-1]] == ["1", "2", "3", "5", "-"]
    assert layers[-1] == "  untouched: 2 of 7 layers (0, 4)"
    layer5 = layers[2:-1][3].split()
    assert layer5[1] == "2/17"  # the bias and the added adapter
    kinds = _section(out, "by module kind")
    assert kinds[2].split()[0] == "attention.self.query.weight"  # the most moved kind first
    assert kinds[-1].startswith("  untouched: ")


def test_long_tensor_names_are_cut_in_the_middle_and_keep_columns_aligned(tmp_path: Path) -> None:
    long = "model.layers.0." + "very_long_module_name." * 5 + "weight"
    short = "model.layers.0.w"
    a = {long: np.ones(16, np.float32), short: np.ones(16, np.float32)}
    b = {long: np.full(16, 2, np.float32), short: np.full(16, 1.5, np.float32)}
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    diff = compare_models(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"))
    table = _section(report.text(diff), "tensors that differ")[1:]
    cut = table[1].split()[0]
    assert len(cut) == report.NAME_WIDTH and "…" in cut
    assert cut.startswith("model.layers.0.very") and cut.endswith("name.weight")
    assert table[2].split()[0] == short
    assert len({len(line) for line in table}) == 1


def test_an_identical_pair_is_one_line_and_says_when_no_tensor_data_was_read(
    tmp_path: Path,
) -> None:
    params = {"model.layers.0.w": np.ones((8, 8), np.float32), "embed": np.zeros(8, np.float32)}
    client = modelfs.Client(Store.create(MemoryBackend()), use_disk_cache=False)
    client.put("m.safetensors", encode_model(params))
    client.put("m.safetensors", encode_model(params))
    stored = compare_models("m.safetensors@1", "m.safetensors@2", store=client)
    out = report.text(stored)
    assert out.count("\n") == 1
    assert out.startswith("m.safetensors@1 blake3:")
    assert out.endswith(
        ": identical, 2 tensors (decided from block ids, without reading tensor data)\n"
    )

    (tmp_path / "a.safetensors").write_bytes(encode_model(params))
    (tmp_path / "b.safetensors").write_bytes(encode_model(params))
    local = compare_models(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"))
    out = report.text(local)
    assert out.count("\n") == 1
    # Two local files of the same content: hashed once each, no tensor decoded.
    assert out.endswith(": identical, 2 tensors (the same file content: its hash decided)\n")
    (tmp_path / "b.safetensors").write_bytes(encode_model(params, {"other": "metadata"}))
    out = report.text(
        compare_models(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"))
    )
    assert "identical, 2 tensors" not in out and "other" in out  # the metadata differs
    out = report.text(
        compare_models("m.safetensors@1", str(tmp_path / "b.safetensors"), store=client)
    )
    # The tensors are the same; the header (in the same block) is not: they are read.
    assert "identical, 2 tensors" not in out and "(absent)" in out
    client.close()


@pytest.mark.parametrize(
    ("shown", "expected"),
    [
        (report.number(0.000123), "1.23e-04"), (report.number(0.0123), "0.0123"),
        (report.number(12345.0), "1.23e+04"), (report.number(0.0), "0"),
        (report.number(float("inf")), "inf"), (report.number(None), "-"),
        (report.percent(1e-7), "<0.01%"), (report.percent(0.99999), ">99.9%"),
        (report.percent(1.0), "100%"), (report.percent(0.026), "2.6%"),
        (report.cosine(1 - 2e-7), "1-2.0e-07"), (report.cosine(0.5), "0.5"),
        (report.cosine(1.0), "1"), (report.cosine(None), "-"),
    ],
)  # fmt: skip
def test_numbers_are_compact_and_never_round_a_change_away(shown: str, expected: str) -> None:
    assert shown == expected


# -- records, CSV, --fail-if ---------------------------------------------------------------------


def test_rows_hold_numbers_as_numbers_and_none_where_unknown(perturbed: Perturbed) -> None:
    diff, original = perturbed
    by_name = {r["name"]: r for r in report.rows(diff)}
    assert len(by_name) == 105
    query = by_name[QUERY]
    assert list(query) == list(report.COLUMNS)
    assert (query["status"], query["layer"], query["kind"]) == (
        "changed", "3", "attention.self.query.weight",
    )  # fmt: skip
    assert (query["shape_a"], query["shape_b"], query["decided_by"]) == (
        "384x384",
        "384x384",
        "data",
    )
    assert query["rel_l2"] == pytest.approx(0.01, rel=1e-5)
    assert query["n"] == 384 * 384 and query["frac_changed"] == 1.0
    bias = by_name[BIAS]
    a = original[BIAS].astype(np.float64)
    delta = (original[BIAS][:10] + np.float32(1e-4)).astype(np.float64) - a[:10]
    assert bias["rel_l2"] == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(a), rel=1e-9)
    assert bias["frac_bit_identical"] == pytest.approx(374 / 384)
    added = by_name[ADDED]
    assert (added["dtype_a"], added["shape_a"], added["dtype_b"], added["shape_b"]) == (
        None, None, "F32", "4x384",
    )  # fmt: skip
    assert all(added[k] is None for k in report.STAT_COLUMNS)
    assert by_name["embeddings.LayerNorm.bias"]["layer"] == "-"


def test_csv_parses_back_with_the_rows_values(perturbed: Perturbed) -> None:
    diff, _ = perturbed
    text = report.csv_text(diff)
    reader = csv.DictReader(io.StringIO(text))
    assert tuple(reader.fieldnames or ()) == report.COLUMNS
    parsed = {r["name"]: r for r in reader}
    assert len(parsed) == 105
    assert parsed[QUERY]["status"] == "changed"
    assert float(parsed[QUERY]["rel_l2"]) == pytest.approx(0.01, rel=1e-5)
    assert parsed[QUERY]["shape_a"] == "384x384"
    assert parsed[REMOVED]["dtype_b"] == "" and parsed[REMOVED]["rel_l2"] == ""
    assert parsed[RETYPED]["dtype_b"] == "F16"
    assert parsed["encoder.layer.0.output.dense.weight"]["rel_l2"] == "0.0"


def test_failing_returns_exactly_the_perturbed_tensors(perturbed: Perturbed) -> None:
    diff, _ = perturbed
    assert {r["name"] for r in report.failing(diff, "rel_l2 > 1e-6")} == {QUERY, BIAS, RETYPED}
    assert [r["name"] for r in report.failing(diff, "rel_l2 > 1e-3")] == [QUERY]
    assert [r["name"] for r in report.failing(diff, 'status in ("added", "removed")')] == [
        ADDED, REMOVED,
    ]  # fmt: skip
    assert [r["name"] for r in report.failing(diff, 'layer == "5" and not has(rel_l2)')] == [ADDED]
    assert report.failing(diff, "cosine < 0.5") == []


def test_a_bad_fail_if_clause_raises_query_error_with_a_caret(perturbed: Perturbed) -> None:
    diff, _ = perturbed
    with pytest.raises(QueryError) as caught:
        report.failing(diff, "rel_l2 >")
    message = str(caught.value)
    assert message.startswith("bad where-clause: ")
    assert message.splitlines()[1:] == ["  rel_l2 >", "          ^"]  # at the end: a value needed
    with pytest.raises(QueryError):
        report.failing(ModelDiff("a", "b"), "rel_l2 >>> 1")  # refused even with no tensors


# -- heatmaps ------------------------------------------------------------------------------------


def test_plot_draws_a_png_heatmap_of_layers_by_module_kinds(
    perturbed: Perturbed, tmp_path: Path
) -> None:
    diff, _ = perturbed
    path = tmp_path / "diff.png"
    report.plot(diff, path)
    width, height = _png_size(path)
    assert width > 800 and height > 400 and width > height  # 25 kinds across, 7 layers down
    assert path.stat().st_size > 10_000


def test_plot_refuses_a_diff_without_numbers(perturbed: Perturbed, tmp_path: Path) -> None:
    client = modelfs.Client(Store.create(MemoryBackend()), use_disk_cache=False)
    client.put("m.safetensors", MINILM)
    changed = dict(perturbed[1])
    changed[QUERY] = changed[QUERY] * np.float32(2)
    save_file(changed, str(tmp_path / "b.safetensors"))
    client.put("m.safetensors", tmp_path / "b.safetensors")
    unmeasured = compare_models("m.safetensors@1", "m.safetensors@2", store=client, numbers=False)
    client.close()
    with pytest.raises(InvalidArgumentError, match="compare with numbers"):
        report.plot(unmeasured, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_without_matplotlib_says_what_to_install(
    perturbed: Perturbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    diff, _ = perturbed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with pytest.raises(ModelfsError, match="pip install matplotlib"):
        report.plot(diff, tmp_path / "x.png")


def test_importing_report_does_not_import_matplotlib() -> None:
    code = "import sys, modelfs.compare.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- a series ------------------------------------------------------------------------------------

SERIES_PATH = "ck/m.safetensors"
Q0, UP0 = "model.layers.0.attn.q.weight", "model.layers.0.mlp.up.weight"
Q1, UP1 = "model.layers.1.attn.q.weight", "model.layers.1.mlp.up.weight"


@pytest.fixture(scope="module")
def series_store() -> Iterator[tuple[modelfs.Client, list[dict[str, np.ndarray]]]]:
    """ck/m.safetensors at 4 versions: @2 scales layer 0's q by 1.01; @3 shifts layer 1's up by
    0.1 and scales layer 0's q by 1.001; @4 changes metadata only. Layer 2 and the embedding
    never change."""
    rng = np.random.default_rng(7)
    v1 = {
        f"model.layers.{i}.{k}": rng.standard_normal((32, 32)).astype(np.float32)
        for i in range(3)
        for k in ("attn.q.weight", "mlp.up.weight")
    }
    v1["embed.weight"] = rng.standard_normal((50, 32)).astype(np.float32)
    v2 = {**v1, Q0: v1[Q0] * np.float32(1.01)}
    v3 = {**v2, UP1: v2[UP1] + np.float32(0.1), Q0: v2[Q0] * np.float32(1.001)}
    client = modelfs.Client(Store.create(MemoryBackend()), use_disk_cache=False)
    for params, meta in ((v1, None), (v2, None), (v3, None), (v3, {"note": "same"})):
        client.put(SERIES_PATH, encode_model(params, meta))
    yield client, [v1, v2, v3, v3]
    client.close()


@pytest.fixture(scope="module")
def series_pair(series_store: tuple[modelfs.Client, list]) -> tuple[Series, Series]:
    client, _ = series_store
    return (
        compare_series(SERIES_PATH, store=client),
        compare_series(SERIES_PATH, store=client, numbers=True),
    )


def test_series_text_without_numbers_shows_steps_frozen_layers_and_where_each_moved(
    series_pair: tuple[Series, Series],
) -> None:
    out = report.series_text(series_pair[0]).splitlines()
    assert out[0] == (
        "series ck/m.safetensors: 4 versions, 3 steps (share of each layer's tensors changed)"
    )
    assert out[1] == "  step 1  @1 -> @2  1 of 7 tensors differ (1 changed): layer 0 50%"
    assert out[2] == (
        "  step 2  @2 -> @3  2 of 7 tensors differ (2 changed): layer 0 50%, layer 1 50%"
    )
    assert out[3] == "  step 3  @3 -> @4  tensors identical; only metadata changed"
    text = "\n".join(out)
    assert "frozen (identical at every step): 5 of 7 tensors" in text
    assert f"  layer 0: 1 of 2 ({UP0})" in out
    assert f"  layer 1: 1 of 2 ({Q1})" in out
    assert "  layer 2: all 2 tensors" in out
    assert "  no layer: its only tensor" in out
    moved = _section(text, "where each layer moved most:")
    assert moved[1].split() == ["layer", "0", "step", "1", "(@1", "->", "@2)", "50%",
                                "moved", "at", "2", "of", "3", "steps"]  # fmt: skip
    assert moved[2].split()[:4] == ["layer", "1", "step", "2"]
    assert moved[3].split() == ["layer", "2", "never", "moved"]
    assert moved[4].split() == ["no", "layer", "never", "moved"]


def test_series_text_with_numbers_orders_a_steps_layers_by_rel_l2(
    series_pair: tuple[Series, Series],
) -> None:
    out = report.series_text(series_pair[1]).splitlines()
    assert out[0].endswith("(rel L2 per layer)")
    # Layer 1 moved by about 0.1 / 1, layer 0 by 0.001 of one of its two tensors.
    assert re.fullmatch(
        r"  step 2  @2 -> @3  2 of 7 tensors differ \(2 changed\): "
        r"layer 1 ≤0\.\d+, layer 0 ≤[\d.e-]+",  # ≤: the unread identical tensors left out
        out[2],
    )
    moved = _section("\n".join(out), "where each layer moved most:")
    assert moved[1].split()[:4] == ["layer", "0", "step", "1"]  # 1.01 beats 1.001
    assert out[4].startswith("  (≤: an upper bound; identical tensors were not read")


def test_series_csv_is_long_format_with_rel_l2_when_measured(
    series_pair: tuple[Series, Series], series_store: tuple[modelfs.Client, list]
) -> None:
    _, versions = series_store
    plain, measured = series_pair
    rows = list(csv.DictReader(io.StringIO(report.series_csv(plain))))
    assert list(rows[0]) == ["step", "a", "b", "tensor", "layer", "status"]
    assert len(rows) == 3 * 7
    changed = {(r["step"], r["tensor"]) for r in rows if r["status"] != "identical"}
    assert changed == {("1", Q0), ("2", Q0), ("2", UP1)}
    assert rows[0]["a"].startswith("ck/m.safetensors@1 blake3:")
    assert {r["layer"] for r in rows if r["tensor"] == "embed.weight"} == {"-"}

    rows = list(csv.DictReader(io.StringIO(report.series_csv(measured))))
    assert list(rows[0])[-1] == "rel_l2"
    up1 = next(r for r in rows if r["step"] == "2" and r["tensor"] == UP1)
    a = versions[1][UP1].astype(np.float64)
    b = versions[2][UP1].astype(np.float64)
    assert float(up1["rel_l2"]) == pytest.approx(np.linalg.norm(b - a) / np.linalg.norm(a))
    assert all(float(r["rel_l2"]) == 0 for r in rows if r["status"] == "identical")


def test_plot_series_draws_layers_by_steps_with_and_without_numbers(
    series_pair: tuple[Series, Series], tmp_path: Path
) -> None:
    for series, name in zip(series_pair, ("plain.png", "measured.png"), strict=True):
        path = tmp_path / name
        report.plot_series(series, path)
        width, height = _png_size(path)
        assert width >= 400 and height >= 300
        assert path.stat().st_size > 5_000


def test_version_labels_are_short() -> None:
    assert report.version_labels(["ck/m@1 blake3:aa", "ck/m@2 blake3:bb"]) == ["@1", "@2"]
    assert report.version_labels(["ck/step-2@1 blake3:aa", "ck/step-10@3 blake3:bb"]) == [
        "step-2@1", "step-10@3",
    ]  # fmt: skip


def test_a_gate_on_a_field_no_tensor_has_is_refused_not_passed(perturbed: Perturbed) -> None:
    diff, _ = perturbed
    with pytest.raises(InvalidArgumentError, match="no tensor has a field 'rel_l3'"):
        report.failing(diff, "rel_l3 > 1e-3")
    assert report.failing(diff, "status == 'removed'")  # a known field still works
