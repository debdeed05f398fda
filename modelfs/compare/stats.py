"""How far tensor B is from tensor A: streamed element-wise statistics that merge exactly.

This module owns the numbers of a comparison and nothing else: decoding raw
little-endian safetensors bytes (`decode`), cutting a tensor pair into aligned
chunks (`element_ranges`), accumulating one pair chunk by chunk
(`DeltaAccumulator`) and the result (`DeltaStats`). A result holds only running
sums and counts, so results of chunks, tensors, layers or whole models merge
exactly by adding them (`a + b`): a layer's relative L2 is
sqrt(sum ||B-A||^2) / sqrt(sum ||A||^2) over its tensors, never a mean of ratios.

Rules every statistic follows:

- Arithmetic is float64. Floats are upcast exactly (F8, F16, BF16, F32 all fit
  in float64); each chunk is summed with numpy's pairwise sum and chunk sums
  are added, so streaming in any chunk size agrees with a whole-array
  computation to about 1e-12 relative.
- "Changed" is numpy.isclose(B, A, rtol, atol, equal_nan=True) negated, with A
  as the reference: |B - A| > atol + rtol * |A|. The defaults (0, 0) count any
  change of value; -0.0 and +0.0 are the same value.
- NaN and Inf: an element pair where A or B is not finite is counted in
  `nonfinite` and left out of every sum (|delta|, squares, products), so one NaN
  never turns a statistic into NaN. Such a pair is unchanged when both are NaN
  (any payload) or both are the same infinity; otherwise it is changed. Bit
  identity is counted on the raw bytes as for any other element.
- Integers and BOOL are compared exactly when both sides are integer or BOOL:
  |B - A| is computed as an unsigned 64-bit magnitude, which cannot overflow,
  even between INT64_MIN and INT64_MAX or between I64 and U64, so "changed"
  and equality are exact. The magnitude, A and B are then converted to float64
  for the sums, which rounds values beyond 2**53 (relative error 1e-16).
  An integer tensor compared with a float tensor goes through float64 instead.
- Bit identity compares raw element bytes and is only counted when both
  dtypes are the same; `frac_bit_identical` is None where no element could be
  compared so.

Identical tensors are usually decided elsewhere, from block ids, and never
read: `DeltaStats.unread_identical(n)` stands for one. Its delta sums are
exactly zero, which is true, but its ||A||^2, ||B||^2 and A.B are unknown and
are left out (`n_unread` says how many elements that is). So in a merge that
includes unread tensors, `rel_l2` and `cosine` describe the tensors that were
read: `rel_l2` is then an upper bound of the true figure (the unread ||A||^2
would only grow the denominator) and `cosine` a lower bound (identical parts
pull it towards 1). Every other statistic (max_abs, mean_abs, frac_changed,
frac_bit_identical) stays exact, since an identical element has delta 0.

Caveats:
- F64 values beyond about 1e154 overflow the squared sums to inf (and deltas
  beyond the float64 range to inf); only F64 tensors can hold such values.
- `nonfinite` counts read elements only: an unread identical tensor's NaNs are
  not known.
- U64 values and int64 values beyond 2**53 lose precision in the sums (never
  in equality or "changed" between two integer tensors).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError

BytesLike = bytes | bytearray | memoryview

PIECE_ELEMENTS = 1 << 18  # measured at once: 2 MiB per float64 temporary
DEFAULT_CHUNK_BYTES = 8 << 20  # per side: two 8 MiB chunks decode to at most 32 MiB of float64

# How each safetensors dtype's raw little-endian bytes are read before decoding.
_STORAGE: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in {
        "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
        "F8_E5M2": "u1", "F8_E4M3": "u1", "F8_E8M0": "u1",
        "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
        "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1",
        "BOOL": "u1",
    }.items()
}  # fmt: skip

FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E5M2", "F8_E4M3", "F8_E8M0"})
INTEGER_DTYPES = frozenset({"I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"})


def _f8_e4m3fn_table() -> np.ndarray:
    # OCP E4M3 as safetensors and torch (float8_e4m3fn) use it: bias 7, no
    # infinities, and only S.1111.111 is NaN (so the largest value is 448).
    table = np.empty(256, dtype=np.float64)
    for byte in range(256):
        sign = -1.0 if byte & 0x80 else 1.0
        exponent, mantissa = (byte >> 3) & 0xF, byte & 0x7
        if exponent == 0xF and mantissa == 0x7:
            table[byte] = math.nan
        elif exponent == 0:
            table[byte] = sign * math.ldexp(mantissa, -9)  # subnormal: m/8 * 2**-6
        else:
            table[byte] = sign * math.ldexp(8 + mantissa, exponent - 10)  # (1 + m/8) * 2**(e-7)
    return table


# E5M2 is exactly the top byte of an IEEE half (same exponent, 2 of its 10 mantissa bits).
_F8_E5M2 = (np.arange(256, dtype=np.uint16) << 8).view(np.float16).astype(np.float64)
_F8_E4M3 = _f8_e4m3fn_table()
# E8M0 (the MX scale type): an unsigned power of two 2**(byte-127); 0xFF is NaN.
_F8_E8M0 = np.where(
    np.arange(256) == 255, np.nan, np.ldexp(1.0, np.arange(256, dtype=np.int32) - 127)
)
_F8_TABLES = {"F8_E5M2": _F8_E5M2, "F8_E4M3": _F8_E4M3, "F8_E8M0": _F8_E8M0}


def itemsize(dtype: str) -> int:
    """Bytes per element of a safetensors dtype this module can decode."""
    return _storage(dtype).itemsize


def _storage(dtype: str) -> np.dtype:
    try:
        return _STORAGE[dtype]
    except KeyError:
        raise InvalidArgumentError(f"cannot compare tensors of dtype {dtype!r}") from None


def _elements(dtype: str, raw: BytesLike) -> np.ndarray:
    """The raw elements of a chunk, as stored, after checking it holds whole elements."""
    storage = _storage(dtype)
    nbytes = memoryview(raw).nbytes  # not len(): a typed memoryview counts items
    if nbytes % storage.itemsize:
        raise InvalidArgumentError(
            f"a {dtype} chunk of {nbytes} bytes is not a whole number of "
            f"{storage.itemsize}-byte elements"
        )
    return np.frombuffer(raw, dtype=storage)


def decode(dtype: str, raw: BytesLike) -> np.ndarray:
    """The values of little-endian safetensors elements.

    Floats come back as float64 (exactly), integers as int64 (U64 as uint64),
    BOOL as bool. An unknown dtype, or bytes that are not whole elements,
    raise InvalidArgumentError.
    """
    stored = _elements(dtype, raw)
    if dtype in _F8_TABLES:
        return _F8_TABLES[dtype][stored]
    if dtype in FLOAT_DTYPES:
        if dtype == "BF16":
            # A bfloat16 is the top half of a float32.
            stored = (stored.astype(np.uint32) << 16).view(np.float32)
        with np.errstate(invalid="ignore"):  # a signalling NaN stays a NaN, quietly
            return stored.astype(np.float64)
    if dtype == "BOOL":
        return stored != 0
    if dtype == "U64":
        return stored.astype(np.uint64)
    return stored.astype(np.int64)


def element_ranges(
    n_elements: int, itemsize_a: int, itemsize_b: int, budget_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[tuple[int, int]]:
    """[start, end) element ranges covering a tensor pair, each at most budget_bytes per side.

    Byte ranges follow as start * itemsize .. end * itemsize on each side. A
    budget smaller than one element still yields one element per range.
    """
    if n_elements < 0 or itemsize_a < 1 or itemsize_b < 1 or budget_bytes < 1:
        raise InvalidArgumentError(
            f"bad chunking: {n_elements} elements of {itemsize_a} and {itemsize_b} bytes, "
            f"budget {budget_bytes} bytes"
        )
    step = max(1, budget_bytes // max(itemsize_a, itemsize_b))
    for start in range(0, n_elements, step):
        yield start, min(start + step, n_elements)


@dataclass(frozen=True)
class DeltaStats:
    """Running sums of a comparison of B against A, over any number of element pairs.

    `DeltaStats()` is the empty comparison, the neutral element of `+`. The
    float sums cover the finite pairs that were read (n - n_unread - nonfinite
    of them); see the module docstring for what unread elements mean.
    """

    n: int = 0  # element pairs compared, read or known identical
    n_unread: int = 0  # of n, pairs known identical without being read
    nonfinite: int = 0  # read pairs where A or B is NaN or +-Inf: left out of the sums
    changed: int = 0  # pairs with |B - A| > atol + rtol * |A| (or a nonfinite mismatch)
    bit_identical: int = 0  # pairs whose raw bytes are equal, among bit_comparable
    bit_comparable: int = 0  # pairs from tensors whose two dtypes are the same
    sum_abs: float = 0.0  # sum |B - A|
    max_abs: float = 0.0  # max |B - A|
    sum_sq_delta: float = 0.0  # sum (B - A)^2
    sum_sq_a: float = 0.0  # sum A^2 over read pairs
    sum_sq_b: float = 0.0  # sum B^2 over read pairs
    sum_ab: float = 0.0  # sum A * B over read pairs

    @classmethod
    def unread_identical(cls, n_elements: int) -> DeltaStats:
        """A tensor known to be identical (same dtype, shape and bytes) and never read."""
        if n_elements < 0:
            raise InvalidArgumentError(f"negative element count {n_elements}")
        return cls(
            n=n_elements, n_unread=n_elements, bit_identical=n_elements, bit_comparable=n_elements
        )

    def merge(self, other: DeltaStats) -> DeltaStats:
        """The statistics of both sets of element pairs together."""
        merged = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        merged["max_abs"] = max(self.max_abs, other.max_abs)
        return DeltaStats(**merged)

    def __add__(self, other: DeltaStats) -> DeltaStats:
        if not isinstance(other, DeltaStats):
            return NotImplemented
        return self.merge(other)

    @property
    def n_read(self) -> int:
        return self.n - self.n_unread

    @property
    def identical(self) -> bool:
        """Every element pair is bit-identical (so both dtypes are the same)."""
        return self.bit_comparable == self.n and self.bit_identical == self.n

    @property
    def mean_abs(self) -> float:
        """Mean |B - A| over finite pairs, unread ones included (their delta is exactly 0)."""
        finite = self.n - self.nonfinite
        return self.sum_abs / finite if finite else 0.0

    @property
    def rel_l2(self) -> float:
        """||B - A|| / ||A||; 0.0 when both are zero, inf when only ||A|| is.

        With unread tensors merged in, an upper bound: ||A|| covers read pairs only.
        """
        if self.sum_sq_a == 0.0:
            return 0.0 if self.sum_sq_delta == 0.0 else math.inf
        return math.sqrt(self.sum_sq_delta) / math.sqrt(self.sum_sq_a)

    @property
    def cosine(self) -> float | None:
        """A.B / (||A|| ||B||) over read finite pairs, clamped to [-1, 1].

        1.0 when both norms are zero (this includes a comparison with nothing
        read), None when exactly one is: the direction of a zero vector is
        undefined. With unread tensors merged in, a lower bound.
        """
        if self.sum_sq_a == 0.0 and self.sum_sq_b == 0.0:
            return 1.0
        if self.sum_sq_a == 0.0 or self.sum_sq_b == 0.0:
            return None
        # One square root of the product, so that identical tensors give exactly 1.0
        # (sqrt(x * x) == x); two roots where the product overflows or underflows.
        denominator = math.sqrt(self.sum_sq_a * self.sum_sq_b)
        if not 0.0 < denominator < math.inf:
            denominator = math.sqrt(self.sum_sq_a) * math.sqrt(self.sum_sq_b)
        return min(1.0, max(-1.0, self.sum_ab / denominator))

    @property
    def frac_changed(self) -> float:
        """The fraction of element pairs changed beyond tolerance (0.0 of nothing)."""
        return self.changed / self.n if self.n else 0.0

    @property
    def frac_bit_identical(self) -> float | None:
        """The fraction of bit-identical pairs, None when no pair had one dtype on both sides."""
        return self.bit_identical / self.bit_comparable if self.bit_comparable else None

    def to_json(self) -> dict[str, Any]:
        """The summary as strict JSON values, under keys that do not change.

        Keys: n, n_unread, nonfinite (counts); max_abs, mean_abs, rel_l2,
        frac_changed (numbers); cosine, frac_bit_identical (number or null,
        null when undefined as above). A non-finite number (rel_l2 when A is
        zero and B is not; an F64 overflow) is written as the string "inf",
        "-inf" or "nan", so json.dumps(..., allow_nan=False) accepts the result.
        """
        return {
            "n": self.n,
            "max_abs": _json_number(self.max_abs),
            "mean_abs": _json_number(self.mean_abs),
            "rel_l2": _json_number(self.rel_l2),
            "cosine": _json_number(self.cosine),
            "frac_changed": _json_number(self.frac_changed),
            "frac_bit_identical": _json_number(self.frac_bit_identical),
            "nonfinite": self.nonfinite,
            "n_unread": self.n_unread,
        }


def _json_number(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


class DeltaAccumulator:
    """Compares tensor B against tensor A chunk by chunk, holding only running sums.

    Each `update` gets the raw bytes of the same element range of both
    tensors; each chunk must hold whole elements of its dtype and both must
    hold the same number of elements (else InvalidArgumentError). Chunks may
    come in any sizes and in any order: the counts depend only on which
    elements were covered, the sums too up to float rounding.
    """

    def __init__(self, dtype_a: str, dtype_b: str, *, atol: float = 0.0, rtol: float = 0.0):
        for dtype in (dtype_a, dtype_b):
            _storage(dtype)  # refuse an unknown dtype now, not at the first chunk
        if not (math.isfinite(atol) and math.isfinite(rtol) and atol >= 0 and rtol >= 0):
            raise InvalidArgumentError(f"tolerances must be finite and >= 0: {atol=}, {rtol=}")
        self.dtype_a, self.dtype_b = dtype_a, dtype_b
        self.atol, self.rtol = float(atol), float(rtol)
        self._stats = DeltaStats()

    def update(self, raw_a: BytesLike, raw_b: BytesLike) -> None:
        # Measured in pieces of PIECE_ELEMENTS: the float64 temporaries of a piece stay at
        # a few MiB however large the chunks read are (an 8 MiB chunk made ~130 MB of them).
        ia, ib = itemsize(self.dtype_a), itemsize(self.dtype_b)
        if len(raw_a) % ia or len(raw_b) % ib or len(raw_a) // ia != len(raw_b) // ib:
            self._stats = self._stats + self._chunk(raw_a, raw_b)  # says what is wrong
            return
        va, vb = memoryview(raw_a).cast("B"), memoryview(raw_b).cast("B")
        n = len(raw_a) // ia
        for lo in range(0, max(n, 1), PIECE_ELEMENTS):
            hi = min(n, lo + PIECE_ELEMENTS)
            self._stats = self._stats + self._chunk(va[lo * ia : hi * ia], vb[lo * ib : hi * ib])

    def result(self) -> DeltaStats:
        return self._stats

    def _chunk(self, raw_a: BytesLike, raw_b: BytesLike) -> DeltaStats:
        a, b = decode(self.dtype_a, raw_a), decode(self.dtype_b, raw_b)
        if len(a) != len(b):
            raise InvalidArgumentError(
                f"chunks cover different element ranges: {len(a)} {self.dtype_a} elements "
                f"against {len(b)} {self.dtype_b}"
            )
        n = len(a)
        bit_identical = bit_comparable = 0
        if self.dtype_a == self.dtype_b:
            # Compare the stored elements as unsigned integers of their width:
            # bytes equal exactly when these are, NaN payloads and -0.0 included.
            width = np.dtype(f"<u{itemsize(self.dtype_a)}")
            bit_identical = int(
                np.count_nonzero(np.frombuffer(raw_a, width) == np.frombuffer(raw_b, width))
            )
            bit_comparable = n

        nonfinite = nonfinite_changed = 0
        if self.dtype_a in INTEGER_DTYPES and self.dtype_b in INTEGER_DTYPES:
            abs_delta = _exact_abs_difference(_as_integers(a), _as_integers(b))
            a, b = a.astype(np.float64), b.astype(np.float64)
        else:
            a, b = a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)
            finite = np.isfinite(a) & np.isfinite(b)
            nonfinite = n - int(np.count_nonzero(finite))
            if nonfinite:
                odd_a, odd_b = a[~finite], b[~finite]
                same = (odd_a == odd_b) | (np.isnan(odd_a) & np.isnan(odd_b))
                nonfinite_changed = nonfinite - int(np.count_nonzero(same))
                a, b = a[finite], b[finite]
            with np.errstate(over="ignore"):  # only F64 extremes overflow (module caveats)
                abs_delta = np.abs(b - a)

        with np.errstate(over="ignore", invalid="ignore"):
            if self.atol == 0 and self.rtol == 0:  # the default: no tolerance array to make
                beyond = int(np.count_nonzero(abs_delta))
            else:
                beyond = int(np.count_nonzero(abs_delta > self.atol + self.rtol * np.abs(a)))
            return DeltaStats(
                n=n,
                nonfinite=nonfinite,
                changed=beyond + nonfinite_changed,
                bit_identical=bit_identical,
                bit_comparable=bit_comparable,
                sum_abs=float(np.sum(abs_delta)),
                max_abs=float(np.max(abs_delta)) if len(abs_delta) else 0.0,
                # Dot products: the sums of squares and products without their temporaries.
                sum_sq_delta=float(np.dot(abs_delta, abs_delta)),
                sum_sq_a=float(np.dot(a, a)),
                sum_sq_b=float(np.dot(b, b)),
                sum_ab=float(np.dot(a, b)),
            )


def _as_integers(values: np.ndarray) -> np.ndarray:
    """int64, or uint64 for U64: what _exact_abs_difference works on."""
    return values.astype(np.int64) if values.dtype == np.bool_ else values


def _exact_abs_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|b - a| of int64/uint64 arrays, computed exactly, as float64.

    The magnitude of a difference of two 64-bit integers of one signedness
    fits in uint64, and max - min taken in wrapping uint64 arithmetic is that
    magnitude exactly, so nothing overflows; it is rounded only when made float.
    """
    if a.dtype == b.dtype:
        high, low = np.maximum(a, b), np.minimum(a, b)
        return (high.view(np.uint64) - low.view(np.uint64)).astype(np.float64)
    # One int64 side, one uint64 (I64 against U64): a negative signed value is
    # below every unsigned one, so the magnitude is u + |s| (it may exceed
    # uint64, so float64); elsewhere both fit in uint64.
    signed, unsigned = (a, b) if a.dtype == np.int64 else (b, a)
    out = np.empty(len(a), dtype=np.float64)
    negative = signed < 0
    out[negative] = unsigned[negative].astype(np.float64) - signed[negative].astype(np.float64)
    s, u = signed[~negative].view(np.uint64), unsigned[~negative]
    out[~negative] = (np.maximum(s, u) - np.minimum(s, u)).astype(np.float64)
    return out


def compare_bytes(
    dtype_a: str,
    data_a: BytesLike,
    dtype_b: str,
    data_b: BytesLike,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    budget_bytes: int = DEFAULT_CHUNK_BYTES,
) -> DeltaStats:
    """Compares two tensors' raw bytes already in memory, in chunks of budget_bytes per side."""
    size_a, size_b = itemsize(dtype_a), itemsize(dtype_b)
    view_a, view_b = memoryview(data_a).cast("B"), memoryview(data_b).cast("B")
    n_elements = len(view_a) // size_a
    if len(view_a) != n_elements * size_a or len(view_b) != n_elements * size_b:
        raise InvalidArgumentError(
            f"{len(view_a)} bytes of {dtype_a} and {len(view_b)} bytes of {dtype_b} "
            "do not hold the same number of elements"
        )
    accumulator = DeltaAccumulator(dtype_a, dtype_b, atol=atol, rtol=rtol)
    for start, end in element_ranges(n_elements, size_a, size_b, budget_bytes):
        accumulator.update(
            view_a[start * size_a : end * size_a], view_b[start * size_b : end * size_b]
        )
    return accumulator.result()
