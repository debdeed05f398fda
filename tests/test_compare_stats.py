"""The numbers of a tensor comparison, checked against numpy on whole arrays.

Every statistic the streamed accumulator gives must equal the same statistic
computed directly (np.linalg.norm, np.isclose, np.abs(...).max()) on the whole
arrays, whatever the chunking; results must merge exactly; integers must
compare exactly at the int64 extremes; NaN and Inf must never poison the sums;
and roll-ups must merge layers' sums (not average their ratios) and say what
identical tensors that were never read leave out. Names come from real models
(MiniLM, Llama, GPT-2, GGUF), and one test uses MiniLM's real weights.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from modelfs.compare.rollup import (
    NO_LAYER,
    by_layer,
    by_module_kind,
    layer_kind_table,
    layer_of,
    module_kind,
)
from modelfs.compare.stats import (
    DeltaAccumulator,
    DeltaStats,
    compare_bytes,
    decode,
    element_ranges,
    itemsize,
)
from modelfs.errors import InvalidArgumentError
from modelfs.store.tensorfile import DTYPE_SIZES

REL = 1e-12


def reference(a: np.ndarray, b: np.ndarray, atol: float = 0.0, rtol: float = 0.0) -> dict:
    """Each statistic straight from the whole arrays, as numpy defines it."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    finite = np.isfinite(a) & np.isfinite(b)
    fa, fb = a[finite], b[finite]
    delta = np.abs(fb - fa)
    return {
        "n": a.size,
        "nonfinite": int(np.count_nonzero(~finite)),
        "changed": int(np.count_nonzero(~np.isclose(b, a, rtol=rtol, atol=atol, equal_nan=True))),
        "max_abs": float(delta.max()) if delta.size else 0.0,
        "mean_abs": float(delta.mean()) if delta.size else 0.0,
        "rel_l2": float(np.linalg.norm(fb - fa) / np.linalg.norm(fa)),
        "cosine": float(fa @ fb / (np.linalg.norm(fa) * np.linalg.norm(fb))),
    }


def assert_matches(stats: DeltaStats, want: dict) -> None:
    assert stats.n == want["n"]
    assert stats.nonfinite == want["nonfinite"]
    assert stats.changed == want["changed"]
    for key in ("max_abs", "mean_abs", "rel_l2", "cosine"):
        assert getattr(stats, key) == pytest.approx(want[key], rel=REL, abs=1e-300), key


def bf16_round_nearest_even(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, rounding to nearest even as torch does (no NaNs here)."""
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def perturbed_fp32(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[int, float]]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n).astype(np.float32)
    b = a.copy()
    moves = {5: 0.5, 77: -1e-3, n // 2: 2.0, n - 1: 3e-7}
    for i, amount in moves.items():
        b[i] = np.float32(a[i] + amount)
    return a, b, moves


# --- decoding ---------------------------------------------------------------


def test_every_safetensors_dtype_decodes_with_its_own_element_size():
    for dtype, size in DTYPE_SIZES.items():
        assert itemsize(dtype) == size, dtype
        assert len(decode(dtype, bytes(size * 3))) == 3


def test_decode_upcasts_floats_and_widens_integers_exactly():
    f32 = np.array([1.5, -0.0, 3.4e38, 1e-45], dtype=np.float32)
    got = decode("F32", f32.tobytes())
    assert got.dtype == np.float64 and np.array_equal(got, f32.astype(np.float64))
    f16 = np.array([65504, 6e-8, -2.5], dtype=np.float16)
    assert np.array_equal(decode("F16", f16.tobytes()), f16.astype(np.float64))
    i8 = np.array([-128, 127, 0], dtype=np.int8)
    assert decode("I8", i8.tobytes()).tolist() == [-128, 127, 0]
    u32 = np.array([2**32 - 1, 7], dtype=np.uint32)
    assert decode("U32", u32.tobytes()).tolist() == [2**32 - 1, 7]
    u64 = np.array([2**64 - 1], dtype=np.uint64)
    assert decode("U64", u64.tobytes()).tolist() == [2**64 - 1]
    assert decode("BOOL", bytes([0, 1, 0])).tolist() == [False, True, False]


def test_decode_reads_little_endian_bytes():
    assert decode("I32", b"\x01\x00\x00\x00").tolist() == [1]
    assert decode("F32", b"\x00\x00\x80\x3f").tolist() == [1.0]


def test_bf16_decodes_as_the_top_half_of_a_float32():
    bits = np.array([0x3F80, 0xC000, 0x7F80, 0xFF80, 0x0001, 0x3F81], dtype="<u2")
    got = decode("BF16", bits.tobytes())
    assert got[:4].tolist() == [1.0, -2.0, math.inf, -math.inf]
    assert got[4] == 2.0**-133  # the smallest subnormal
    assert got[5] == 1.0 + 2.0**-7


def test_f8_decoding_matches_hand_values():
    e4m3 = decode("F8_E4M3", bytes([0x38, 0x7E, 0x01, 0x08, 0xB8, 0x7F, 0xFF]))
    assert e4m3[:5].tolist() == [1.0, 448.0, 2.0**-9, 2.0**-6, -1.0]
    assert np.isnan(e4m3[5:]).all()  # only S.1111.111 is NaN; no infinities
    e5m2 = decode("F8_E5M2", bytes([0x3C, 0x7B, 0x7C, 0x01, 0x7F]))
    assert e5m2[:4].tolist() == [1.0, 57344.0, math.inf, 2.0**-16]
    assert np.isnan(e5m2[4])
    e8m0 = decode("F8_E8M0", bytes([127, 0, 254, 255]))
    assert e8m0[:3].tolist() == [1.0, 2.0**-127, 2.0**127]
    assert np.isnan(e8m0[3])


def test_narrow_floats_decode_as_torch_does_for_all_bit_patterns():
    torch = pytest.importorskip("torch")
    every_byte = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    for dtype, torch_dtype in {
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E5M2": torch.float8_e5m2,
        "F8_E8M0": torch.float8_e8m0fnu,
    }.items():
        want = every_byte.view(torch_dtype).to(torch.float64).numpy()
        got = decode(dtype, bytes(range(256)))
        assert np.array_equal(got, want, equal_nan=True), dtype
    every_u16 = np.arange(65536, dtype="<u2")
    want = torch.from_numpy(every_u16.view(np.int16).copy()).view(torch.bfloat16).double()
    assert np.array_equal(decode("BF16", every_u16.tobytes()), want.numpy(), equal_nan=True)
    # and the test's own rounding is torch's
    x = np.random.default_rng(3).standard_normal(4096).astype(np.float32) * 1e3
    torch_bits = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(bf16_round_nearest_even(x), torch_bits)


def test_unknown_dtype_and_partial_elements_are_refused_by_name():
    with pytest.raises(InvalidArgumentError, match="F4_E2M1"):
        decode("F4_E2M1", b"\x00")
    with pytest.raises(InvalidArgumentError, match="C64"):
        DeltaAccumulator("F32", "C64")
    with pytest.raises(InvalidArgumentError, match="7 bytes"):
        decode("F32", bytes(7))
    acc = DeltaAccumulator("F32", "BF16")
    with pytest.raises(InvalidArgumentError, match="different element ranges"):
        acc.update(bytes(8), bytes(2))  # 2 F32 elements against 1 BF16
    with pytest.raises(InvalidArgumentError):
        DeltaAccumulator("F32", "F32", rtol=-1.0)


# --- floats against numpy ---------------------------------------------------


def test_fp32_perturbed_at_known_positions_matches_numpy():
    a, b, moves = perturbed_fp32(10_000)
    stats = compare_bytes("F32", a.tobytes(), "F32", b.tobytes())
    assert_matches(stats, reference(a, b))
    assert stats.changed == len(moves)
    assert stats.bit_identical == a.size - len(moves)
    assert stats.frac_bit_identical == pytest.approx(1 - len(moves) / a.size)
    assert stats.max_abs == pytest.approx(2.0, rel=1e-6)  # the largest move
    assert stats.frac_changed == len(moves) / a.size
    # A tolerance above the two small moves leaves the two big ones.
    tolerant = compare_bytes("F32", a.tobytes(), "F32", b.tobytes(), atol=1e-2)
    assert tolerant.changed == 2
    assert_matches(tolerant, reference(a, b, atol=1e-2))


@pytest.mark.parametrize(("atol", "rtol"), [(0.0, 1e-3), (1e-4, 1e-2), (0.02, 0.0)])
def test_tolerance_is_numpy_isclose_with_a_as_reference(atol: float, rtol: float):
    rng = np.random.default_rng(1)
    a = rng.standard_normal(5000)
    b = a * (1 + rng.uniform(-2e-2, 2e-2, a.size)) + rng.uniform(-1e-3, 1e-3, a.size)
    stats = compare_bytes("F64", a.tobytes(), "F64", b.tobytes(), atol=atol, rtol=rtol)
    assert stats.changed == int(np.count_nonzero(~np.isclose(b, a, rtol=rtol, atol=atol)))
    assert 0 < stats.changed < a.size


def test_streaming_in_odd_chunks_equals_the_whole_array():
    a, b, _ = perturbed_fp32(20_011, seed=2)
    want = reference(a, b)
    whole = compare_bytes("F32", a.tobytes(), "F32", b.tobytes())
    acc = DeltaAccumulator("F32", "F32")
    cuts = [0, 1, 4, 1001, 5000, 5001, 17_389, a.size]
    for start, end in zip(cuts, cuts[1:], strict=False):
        acc.update(a[start:end].tobytes(), b[start:end].tobytes())
    acc.update(b"", b"")  # an empty chunk changes nothing
    for stats in (acc.result(), compare_bytes("F32", a, "F32", b, budget_bytes=4 * 997)):
        assert_matches(stats, want)
        assert stats.bit_identical == whole.bit_identical
        assert stats.sum_sq_a == pytest.approx(float(np.sum(a.astype(np.float64) ** 2)), rel=REL)


def test_bf16_against_its_fp32_original():
    a = np.random.default_rng(4).standard_normal(30_000).astype(np.float32)
    bits = bf16_round_nearest_even(a)
    b = (bits.astype(np.uint32) << 16).view(np.float32)
    stats = compare_bytes("F32", a.tobytes(), "BF16", bits.tobytes(), budget_bytes=10_000)
    assert_matches(stats, reference(a, b))
    assert stats.frac_bit_identical is None  # dtypes differ: bytes say nothing
    # Round to nearest moves a value by at most half a bf16 ulp: 2**-8 relative.
    assert stats.rel_l2 < 2.0**-8
    assert stats.cosine > 1 - 2.0**-14
    relaxed = compare_bytes("F32", a.tobytes(), "BF16", bits.tobytes(), rtol=2.0**-8)
    assert relaxed.changed == 0
    assert_matches(relaxed, reference(a, b, rtol=2.0**-8))


def test_fp16_against_its_fp32_original():
    a = (np.random.default_rng(5).standard_normal(9_999) * 10).astype(np.float32)
    b = a.astype(np.float16)  # numpy rounds to nearest even
    stats = compare_bytes("F32", a.tobytes(), "F16", b.tobytes(), budget_bytes=333)
    assert_matches(stats, reference(a, b))
    assert stats.rel_l2 < 2.0**-11
    assert stats.changed > a.size // 2  # most fp32 values are not halves


# --- integers and bools -----------------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def test_int64_extremes_compare_exactly_without_overflow():
    a = np.array([INT64_MIN, INT64_MAX, 0, 2**60 + 1, -5], dtype=np.int64)
    b = np.array([INT64_MAX, INT64_MIN, 0, 2**60, -5], dtype=np.int64)
    stats = compare_bytes("I64", a.tobytes(), "I64", b.tobytes())
    # 2**60 and 2**60 + 1 are one float64: only exact integer arithmetic sees the change.
    assert stats.changed == 3
    assert stats.bit_identical == 2
    exact = [abs(int(y) - int(x)) for x, y in zip(a, b, strict=True)]
    assert stats.max_abs == float(max(exact)) == 2.0**64
    assert stats.sum_abs == pytest.approx(float(sum(exact)), rel=REL)
    assert stats.sum_sq_delta == pytest.approx(float(sum(d * d for d in exact)), rel=REL)
    assert all(math.isfinite(getattr(stats, k)) for k in ("rel_l2", "mean_abs"))


def test_u64_against_i64_compares_exactly_across_signedness():
    a = np.array([-1, 5, INT64_MIN, INT64_MAX, 7], dtype=np.int64)
    b = np.array([2**64 - 1, 5, 0, 2**63, 7], dtype=np.uint64)
    stats = compare_bytes("I64", a.tobytes(), "U64", b.tobytes())
    exact = [abs(int(y) - int(x)) for x, y in zip(a, b, strict=True)]
    assert stats.changed == sum(d > 0 for d in exact) == 3
    assert stats.max_abs == float(max(exact))
    assert stats.sum_abs == pytest.approx(float(sum(exact)), rel=REL)
    assert stats.frac_bit_identical is None


def test_small_integers_match_numpy_and_differ_by_dtype_exactly():
    rng = np.random.default_rng(6)
    a = rng.integers(-(2**15), 2**15, 4001, dtype=np.int16)
    b = a.copy()
    b[::97] = rng.integers(-(2**15), 2**15, b[::97].size, dtype=np.int16)
    stats = compare_bytes("I16", a.tobytes(), "I16", b.tobytes(), budget_bytes=202)
    assert_matches(stats, reference(a, b))
    assert stats.bit_identical == int(np.count_nonzero(a == b))
    # The same values widened to I32 on one side are equal in value, not in bytes.
    wide = compare_bytes("I16", a.tobytes(), "I32", a.astype(np.int32).tobytes())
    assert wide.changed == 0 and wide.max_abs == 0.0 and wide.frac_bit_identical is None
    assert wide.cosine == 1.0 and wide.rel_l2 == 0.0


def test_bool_tensors_compare_as_zero_and_one():
    a = np.array([True, False, True, False])
    b = np.array([True, True, False, False])
    stats = compare_bytes("BOOL", a.tobytes(), "BOOL", b.tobytes())
    assert (stats.changed, stats.bit_identical, stats.sum_abs) == (2, 2, 2.0)
    assert stats.rel_l2 == 1.0  # ||B - A|| = sqrt 2 = ||A||
    assert stats.cosine == pytest.approx(0.5)  # one shared True of sqrt2 * sqrt2


# --- NaN, Inf and zeros ----------------------------------------------------


def test_nan_and_inf_are_counted_and_kept_out_of_the_sums():
    nan_a = np.array([np.nan], dtype=np.float32)
    other_nan = (nan_a.view(np.uint32) | 1).view(np.float32)  # a NaN with another payload
    a = np.array([1, np.nan, np.nan, np.inf, np.inf, -np.inf, 2, 3], dtype=np.float32)
    b = a.copy()
    b[2] = other_nan[0]
    b[4], b[5], b[6], b[7] = -np.inf, 5, np.inf, np.float32(3.001)
    stats = compare_bytes("F32", a.tobytes(), "F32", b.tobytes())
    assert stats.nonfinite == 6
    # inf vs -inf, -inf vs 5, 2 vs inf, and the finite 3 -> 3.001; same NaNs and infs are not
    assert stats.changed == 4 == int(np.count_nonzero(~np.isclose(b, a, equal_nan=True, rtol=0)))
    assert stats.bit_identical == 3  # 1, the NaN of equal bits, inf; not the other payload
    assert stats.sum_sq_a == 1 + 9
    assert_matches(stats, reference(a, b))
    summary = stats.to_json()
    assert all(math.isfinite(v) for v in summary.values() if v is not None)
    json.dumps(summary, allow_nan=False)


def test_nan_across_dtypes_is_unchanged_but_a_new_nan_is_changed():
    a = np.array([np.nan, 1.0, 2.0], dtype=np.float32)
    bits = np.array([0x7FC0, 0x3F80, 0x7FC1], dtype="<u2")  # NaN, 1.0, NaN
    stats = compare_bytes("F32", a.tobytes(), "BF16", bits.tobytes())
    assert (stats.nonfinite, stats.changed) == (2, 1)
    assert stats.max_abs == 0.0 and stats.rel_l2 == 0.0


def test_all_zero_tensors():
    zeros, ones = np.zeros(100, np.float32), np.ones(100, np.float32)
    both = compare_bytes("F32", zeros.tobytes(), "F32", zeros.tobytes())
    assert (both.rel_l2, both.cosine, both.frac_changed, both.frac_bit_identical) == (
        0.0,
        1.0,
        0.0,
        1.0,
    )
    grew = compare_bytes("F32", zeros.tobytes(), "F32", ones.tobytes())
    assert grew.rel_l2 == math.inf and grew.cosine is None and grew.frac_changed == 1.0
    assert grew.to_json()["rel_l2"] == "inf" and grew.to_json()["cosine"] is None
    json.dumps(grew.to_json(), allow_nan=False)
    vanished = compare_bytes("F32", ones.tobytes(), "F32", zeros.tobytes())
    assert vanished.rel_l2 == 1.0 and vanished.cosine is None


def test_empty_tensor_is_unchanged():
    stats = compare_bytes("F32", b"", "F32", b"")
    assert (stats.n, stats.mean_abs, stats.rel_l2, stats.cosine, stats.frac_changed) == (
        0,
        0.0,
        0.0,
        1.0,
        0.0,
    )


# --- merging, chunking, JSON ---------------------------------------------


def test_merging_two_halves_equals_the_whole():
    a, b, _ = perturbed_fp32(10_001, seed=7)
    whole = compare_bytes("F32", a.tobytes(), "F32", b.tobytes())
    halves = [
        compare_bytes("F32", a[part].tobytes(), "F32", b[part].tobytes())
        for part in (slice(None, 4321), slice(4321, None))
    ]
    merged = halves[0] + halves[1]
    assert merged == halves[0].merge(halves[1])
    for key in ("n", "n_unread", "nonfinite", "changed", "bit_identical", "bit_comparable"):
        assert getattr(merged, key) == getattr(whole, key), key
    assert merged.max_abs == whole.max_abs
    for key in ("sum_abs", "sum_sq_delta", "sum_sq_a", "sum_sq_b", "sum_ab", "rel_l2", "cosine"):
        assert getattr(merged, key) == pytest.approx(getattr(whole, key), rel=REL), key
    assert whole + DeltaStats() == whole  # the empty comparison is neutral


def test_element_ranges_cover_the_tensor_within_the_budget():
    ranges = list(element_ranges(1000, 4, 2, budget_bytes=4 * 64 + 3))
    assert ranges[0] == (0, 64) and ranges[-1] == (960, 1000)
    assert all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:], strict=False))
    assert all((end - start) * 4 <= 4 * 64 + 3 for start, end in ranges)
    assert list(element_ranges(3, 8, 8, budget_bytes=1)) == [(0, 1), (1, 2), (2, 3)]
    assert list(element_ranges(0, 4, 4)) == []
    with pytest.raises(InvalidArgumentError):
        list(element_ranges(10, 0, 4))


def test_to_json_has_stable_keys():
    a, b, _ = perturbed_fp32(100)
    summary = compare_bytes("F32", a.tobytes(), "F32", b.tobytes()).to_json()
    assert list(summary) == [
        "n",
        "max_abs",
        "mean_abs",
        "rel_l2",
        "cosine",
        "frac_changed",
        "frac_bit_identical",
        "nonfinite",
        "n_unread",
    ]
    assert summary["n"] == 100 and summary["frac_changed"] == 0.04


# --- identical tensors never read -------------------------------------------


def test_unread_identical_is_exact_where_it_can_be_and_says_what_it_leaves_out():
    a, b, _ = perturbed_fp32(1000, seed=8)
    untouched = np.random.default_rng(9).standard_normal(3000).astype(np.float32)
    read = compare_bytes("F32", a.tobytes(), "F32", b.tobytes())
    merged = read + DeltaStats.unread_identical(untouched.size)
    truth = compare_bytes(
        "F32",
        np.concatenate([a, untouched]).tobytes(),
        "F32",
        np.concatenate([b, untouched]).tobytes(),
    )
    # Exact: an identical element has delta 0 and is bit-identical.
    assert (merged.n, merged.changed, merged.bit_identical) == (
        truth.n,
        truth.changed,
        truth.bit_identical,
    )
    assert merged.max_abs == truth.max_abs
    assert merged.mean_abs == pytest.approx(truth.mean_abs, rel=REL)
    assert merged.frac_bit_identical == pytest.approx(truth.frac_bit_identical, rel=REL)
    # Norms cover the read tensor only: rel_l2 an upper bound, cosine a lower one.
    assert merged.n_unread == untouched.size
    assert merged.rel_l2 == pytest.approx(read.rel_l2, rel=REL)
    assert merged.rel_l2 > truth.rel_l2
    assert merged.cosine < truth.cosine
    only_unread = DeltaStats.unread_identical(50) + DeltaStats.unread_identical(7)
    assert (only_unread.rel_l2, only_unread.cosine, only_unread.frac_changed) == (0.0, 1.0, 0.0)
    assert only_unread.frac_bit_identical == 1.0 and only_unread.identical


# --- tensor names -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "layer", "kind"),
    [
        ("model.layers.12.self_attn.q_proj.weight", 12, "self_attn.q_proj.weight"),
        ("model.layers.0.mlp.down_proj.weight", 0, "mlp.down_proj.weight"),
        ("model.embed_tokens.weight", None, "model.embed_tokens.weight"),
        ("lm_head.weight", None, "lm_head.weight"),
        ("encoder.layer.3.attention.self.query.weight", 3, "attention.self.query.weight"),
        ("encoder.layer.5.output.LayerNorm.bias", 5, "output.LayerNorm.bias"),
        ("embeddings.word_embeddings.weight", None, "embeddings.word_embeddings.weight"),
        ("transformer.h.7.attn.c_attn.weight", 7, "attn.c_attn.weight"),
        ("h.11.mlp.c_proj.bias", 11, "mlp.c_proj.bias"),
        ("wte.weight", None, "wte.weight"),
        ("blocks.0.mlp.fc1.weight", 0, "mlp.fc1.weight"),
        ("blk.5.attn_q.weight", 5, "attn_q.weight"),
        ("token_embd.weight", None, "token_embd.weight"),
        # T5: the first container wins; the sub-layer index stays in the kind.
        ("encoder.block.2.layer.1.DenseReluDense.wi.weight", 2, "layer.1.DenseReluDense.wi.weight"),
        # Mixtral: the expert index stays in the kind.
        (
            "model.layers.4.block_sparse_moe.experts.7.w1.weight",
            4,
            "block_sparse_moe.experts.7.w1.weight",
        ),
        # No container word: one integer is the layer (nn.Sequential), two are ambiguous.
        ("net.3.weight", 3, "weight"),
        ("features.0.1.conv.weight", None, "features.conv.weight"),
    ],
)
def test_layer_and_module_kind_of_real_names(name: str, layer: int | None, kind: str):
    assert layer_of(name) == layer
    assert module_kind(name) == kind


# --- roll-ups ---------------------------------------------------------------


def test_layer_rel_l2_merges_sums_rather_than_averaging_ratios():
    rng = np.random.default_rng(10)
    big, small = rng.standard_normal(4000) * 10, rng.standard_normal(100) * 0.1
    big_b, small_b = big + 1e-3, small * 1.5  # a tiny move of a big tensor, a big one of a small
    stats = {
        "model.layers.0.mlp.up_proj.weight": compare_bytes("F64", big, "F64", big_b),
        "model.layers.0.input_layernorm.weight": compare_bytes("F64", small, "F64", small_b),
    }
    (row,) = by_layer(stats.items())
    want = np.linalg.norm(np.concatenate([big_b - big, small_b - small])) / np.linalg.norm(
        np.concatenate([big, small])
    )
    assert row.stats.rel_l2 == pytest.approx(want, rel=REL)
    mean_of_ratios = np.mean([s.rel_l2 for s in stats.values()])
    assert abs(row.stats.rel_l2 - mean_of_ratios) > 0.1
    assert (row.label, row.tensors, row.changed_tensors, row.identical_tensors) == ("0", 2, 2, 0)


def test_rollups_of_a_minilm_fine_tune_show_the_touched_layers(minilm_tensors):
    rng = np.random.default_rng(11)
    touched = {
        "encoder.layer.5.attention.self.query.weight",
        "encoder.layer.5.attention.self.value.weight",
        "encoder.layer.2.output.dense.bias",
    }
    tuned = dict(minilm_tensors)
    for name in touched:
        weight = minilm_tensors[name]
        tuned[name] = (weight + rng.standard_normal(weight.shape) * 1e-3).astype(np.float32)

    per_tensor: list[tuple[str, DeltaStats]] = []
    for name, weight in minilm_tensors.items():
        if name in touched:
            dtype = "F32"
            stats = compare_bytes(dtype, weight, dtype, tuned[name], budget_bytes=64 << 10)
        else:  # block ids would say these are identical: nothing is read
            stats = DeltaStats.unread_identical(weight.size)
        per_tensor.append((name, stats))

    layers = by_layer(per_tensor)
    assert [row.label for row in layers] == ["0", "1", "2", "3", "4", "5", NO_LAYER]
    assert {row.label: row.changed_tensors for row in layers if row.changed_tensors} == {
        "2": 1,
        "5": 2,
    }
    layer5 = next(row for row in layers if row.label == "5")
    q, v = (f"encoder.layer.5.attention.self.{m}.weight" for m in ("query", "value"))
    a = np.concatenate([minilm_tensors[n].ravel() for n in (q, v)]).astype(np.float64)
    b = np.concatenate([tuned[n].ravel() for n in (q, v)]).astype(np.float64)
    assert layer5.stats.rel_l2 == pytest.approx(np.linalg.norm(b - a) / np.linalg.norm(a), rel=REL)
    assert layer5.unread_tensors == layer5.identical_tensors == layer5.tensors - 2
    assert layer5.stats.n == sum(w.size for n, w in minilm_tensors.items() if ".layer.5." in n)
    untouched = next(row for row in layers if row.label == "0")
    assert untouched.stats.rel_l2 == 0.0 and untouched.stats.frac_bit_identical == 1.0
    assert untouched.unread_tensors == untouched.tensors == 16
    assert layers[-1].tensors == sum(1 for n in minilm_tensors if not n.startswith("encoder."))

    kinds = {row.label: row for row in by_module_kind(per_tensor)}
    assert kinds["attention.self.query.weight"].tensors == 6
    assert kinds["attention.self.query.weight"].changed_tensors == 1
    assert kinds["embeddings.word_embeddings.weight"].changed_tensors == 0

    table = layer_kind_table(per_tensor)
    assert table.layers == tuple(row.label for row in layers)
    heat = table.grid(lambda row: row.stats.rel_l2)
    hot = {
        (table.layers[i], table.kinds[j])
        for i, line in enumerate(heat)
        for j, value in enumerate(line)
        if value
    }
    assert hot == {
        ("5", "attention.self.query.weight"),
        ("5", "attention.self.value.weight"),
        ("2", "output.dense.bias"),
    }
    assert table.cell("0", "embeddings.word_embeddings.weight") is None
    row_json = table.cell("5", "attention.self.query.weight").to_json()
    assert row_json["tensors"] == 1 and row_json["frac_changed"] > 0.99


def test_minilm_weights_against_their_bf16_copy(minilm_tensors):
    for name in ("encoder.layer.0.attention.self.key.weight", "embeddings.LayerNorm.weight"):
        a = minilm_tensors[name]
        bits = bf16_round_nearest_even(a)
        b = (bits.astype(np.uint32) << 16).view(np.float32)
        stats = compare_bytes("F32", a.tobytes(), "BF16", bits.tobytes(), budget_bytes=3 << 10)
        assert_matches(stats, reference(a, b))
        assert stats.rel_l2 < 2.0**-8 and stats.cosine > 0.9999
        assert compare_bytes("F32", a, "BF16", bits, rtol=2.0**-8).changed == 0
