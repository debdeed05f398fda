"""Comparing two models tensor by tensor, reading only what differs.

compare_models(a, b) opens both sides (sources.py), learns each file's tensor
table by range (store/checkpoints.py), matches tensors by name (after --rename prefix
maps), and for each pair decides:

- identical from block ids alone, when both are store files: the blocks that
  hold the tensor on each side have the same ids at the same offsets from the
  tensor's start (content-addressed blocks: same id, same bytes). No fetch.
- identical from whole-file hashes, when the two files are the same content.
- otherwise, read both in aligned chunks (stats.element_ranges), prefetching the
  next chunk while the current one is compared, into DeltaStats (stats.py):
  memory stays bounded by a few chunks whatever the model's size.

Structure comes first: tensors added, removed, reshaped or with another dtype,
the files' metadata (safetensors __metadata__, GGUF keys), and for directories
a JSON diff of config.json and generation_config.json and which other files
differ. A file that is no model format is compared by bytes (blocks that
differ, bytes that differ), not refused.

Caveats:
- A torch tensor stored as a strided view, and a quantized GGUF tensor, are
  read whole (not in chunks) to be compared.
- Tensors whose dtype differs are compared by value (upcast to float64), never
  by bits; tensors whose shape differs but whose element count matches are
  compared flattened, and marked reshaped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..client import Client
from ..errors import FormatError, InvalidArgumentError
from ..store.checkpoints import (
    ModelLayout,
    TensorInfo,
    dequantize,
    model_layout,
    read_tensor_bytes,
    tensor_nbytes,
)
from ..store.format import block_id
from ..store.tensorfile import MAX_HEADER_SIZE
from .rollup import RollupRow, by_layer, by_module_kind
from .sources import Model, ModelFile, Opener
from .stats import DEFAULT_CHUNK_BYTES, DeltaAccumulator, DeltaStats, element_ranges, itemsize

log = logging.getLogger(__name__)

CONFIG_FILES = ("config.json", "generation_config.json")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")

# How a tensor pair came out.
IDENTICAL, CHANGED, ADDED, REMOVED = "identical", "changed", "added", "removed"
RESHAPED, RETYPED, INCOMPARABLE = "reshaped", "dtype", "incomparable"


@dataclass(frozen=True)
class TensorPlace:
    """Where one side's tensor lives: its file and its entry in that file's table."""

    file: ModelFile
    info: TensorInfo


@dataclass
class TensorDiff:
    """One tensor name, compared."""

    name: str  # after renaming
    status: str  # identical, changed, added, removed, reshaped, dtype, incomparable
    dtype_a: str | None = None
    dtype_b: str | None = None
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    stats: DeltaStats | None = None  # None for added, removed and incomparable
    decided_by: str = ""  # blocks, hash or data
    file_a: str = ""
    file_b: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "status": self.status,
            "dtype_a": self.dtype_a, "dtype_b": self.dtype_b,
            "shape_a": list(self.shape_a) if self.shape_a is not None else None,
            "shape_b": list(self.shape_b) if self.shape_b is not None else None,
            "decided_by": self.decided_by, "file_a": self.file_a, "file_b": self.file_b,
            "stats": self.stats.to_json() if self.stats is not None else None,
        }  # fmt: skip


@dataclass
class FileDiff:
    """A file of a directory model (or a whole file that is no model), compared as bytes."""

    name: str
    status: str  # identical, changed, added, removed
    size_a: int | None = None
    size_b: int | None = None
    changed_bytes: int | None = None  # of a byte-level diff: bytes that differ
    changed_blocks: int | None = None  # of a byte-level diff between store files

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Absent:
    """The value of a key one side does not have (JSON null is None, a value)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()
WHOLE = "(the whole file)"  # the key of a change of a JSON document's top level


@dataclass
class Change:
    """One difference in metadata or a JSON config: a key path, its two values (ABSENT where
    a side has no such key)."""

    key: str
    a: Any
    b: Any

    def to_json(self) -> dict[str, Any]:
        """{"key", "a", "b"}, leaving out the side that does not have the key."""
        out: dict[str, Any] = {"key": self.key}
        if self.a is not ABSENT:
            out["a"] = _jsonable(self.a)
        if self.b is not ABSENT:
            out["b"] = _jsonable(self.b)
        return out


@dataclass
class ModelDiff:
    """Everything compare_models found. to_json() is the stable schema of `diff --json`."""

    a: str
    b: str
    tensors: list[TensorDiff] = field(default_factory=list)
    metadata: list[Change] = field(default_factory=list)
    configs: dict[str, list[Change]] = field(default_factory=dict)
    files: list[FileDiff] = field(default_factory=list)
    bytes_read: int = 0  # tensor bytes read from both sides to compare them

    @property
    def identical(self) -> bool:
        return (
            all(t.status == IDENTICAL for t in self.tensors)
            and not self.metadata
            and not any(self.configs.values())
            and all(f.status == IDENTICAL for f in self.files)
        )

    def compared(self) -> list[tuple[str, DeltaStats]]:
        return [(t.name, t.stats) for t in self.tensors if t.stats is not None]

    def by_layer(self) -> list[RollupRow]:
        return by_layer(self.compared())

    def by_module_kind(self) -> list[RollupRow]:
        return by_module_kind(self.compared())

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.status] = out.get(t.status, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "a": self.a,
            "b": self.b,
            "identical": self.identical,
            "counts": self.counts(),
            "tensors": [t.to_json() for t in self.tensors],
            "metadata": [c.to_json() for c in self.metadata],
            "configs": {k: [c.to_json() for c in v] for k, v in self.configs.items()},
            "files": [f.to_json() for f in self.files],
            "layers": [r.to_json() for r in self.by_layer()],
            "module_kinds": [r.to_json() for r in self.by_module_kind()],
            "bytes_read": self.bytes_read,
        }


@dataclass(frozen=True)
class Options:
    atol: float = 0.0
    rtol: float = 0.0
    renames: tuple[tuple[str, str], ...] = ()  # (old prefix, new prefix), applied to both sides
    numbers: bool = True  # False: decide changed or not only, reading no tensor data
    chunk_bytes: int = DEFAULT_CHUNK_BYTES


def parse_rename(text: str) -> tuple[str, str]:
    """`--rename OLD=NEW`: tensor names starting with OLD start with NEW instead."""
    if "=" not in text:
        raise InvalidArgumentError(f"--rename {text!r}: write OLD_PREFIX=NEW_PREFIX")
    old, _, new = text.partition("=")
    if not old:
        raise InvalidArgumentError(f"--rename {text!r}: the prefix to replace is empty")
    return old, new


def compare_models(
    a: str,
    b: str,
    *,
    store: Client | None = None,
    atol: float = 0.0,
    rtol: float = 0.0,
    renames: Iterable[str | tuple[str, str]] = (),
    numbers: bool = True,
    progress: Callable[[int], None] | None = None,
) -> ModelDiff:
    """Compare model b against model a, tensor by tensor (see the module docstring).

    a and b are addresses in `store`, STORE_URL::ADDRESS, or local paths ('./', '/')."""
    if atol < 0 or rtol < 0 or not np.isfinite(atol) or not np.isfinite(rtol):
        raise InvalidArgumentError(f"atol and rtol must be finite and >= 0, not {atol}, {rtol}")
    pairs = tuple(parse_rename(r) if isinstance(r, str) else tuple(r) for r in renames)
    options = Options(atol, rtol, pairs, numbers)  # type: ignore[arg-type]
    with Opener(store) as opener:
        model_a, model_b = opener.open(a), opener.open(b)
        return diff_models(model_a, model_b, options, progress)


def diff_models(
    a: Model, b: Model, options: Options, progress: Callable[[int], None] | None = None
) -> ModelDiff:
    result = ModelDiff(a.label, b.label)
    tensors_a, files_a = _tensors_of(a, options)
    tensors_b, files_b = _tensors_of(b, options)
    if not tensors_a and not tensors_b:
        # Neither side holds a model format: compare the files as bytes.
        result.files = _file_diffs(a, b, set(a.files), set(b.files))
        return result
    if not tensors_a or not tensors_b:
        empty, other = (a.label, b.label) if not tensors_a else (b.label, a.label)
        raise FormatError(
            f"{empty} holds no tensors that modelfs reads (safetensors, torch.save or GGUF), "
            f"but {other} does: compare two models, or two files of any kind"
        )
    _structure(result, tensors_a, tensors_b)
    result.metadata = _metadata_changes(files_a, files_b)
    if a.is_dir or b.is_dir:
        result.configs = {
            name: _json_changes(_read_json(a, name), _read_json(b, name))
            for name in CONFIG_FILES
            if name in a.files or name in b.files
        }
        model_names = {p.file.name for p in tensors_a.values()} | {
            p.file.name for p in tensors_b.values()
        } | set(SHARD_INDEXES) | set(CONFIG_FILES)  # fmt: skip
        result.files = _file_diffs(
            a, b, set(a.files) - model_names, set(b.files) - model_names, bytes_diff=False
        )
    to_read = []
    for t in result.tensors:
        if t.status in (ADDED, REMOVED, INCOMPARABLE):
            continue
        pa, pb = tensors_a[t.name], tensors_b[t.name]
        if _decide_without_reading(t, pa, pb, options):
            if progress is not None:
                progress(pa.info.nbytes + pb.info.nbytes)
        else:
            to_read.append((t, pa, pb))
    for i, (t, pa, pb) in enumerate(to_read):
        if i + 1 < len(to_read):  # a run of small changed tensors: one round trip each, overlapped
            _prefetch_start(*to_read[i + 1][1:], options)
        t.decided_by = "data"
        t.stats = _delta(pa, pb, options, result)
        if t.stats.identical and t.status == CHANGED:
            t.status = IDENTICAL
        if progress is not None:
            progress(pa.info.nbytes + pb.info.nbytes)
    return result


# -- what each side holds ------------------------------------------------------------------------


def _renamed(name: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def _layout(f: ModelFile, label: str) -> ModelLayout | None:
    where = f"{label}/{f.name}" if f.name else label
    try:
        layout = model_layout(f.read, f.size)
    except FormatError as e:
        raise FormatError(f"{where}: {e}") from None
    if layout is None:
        problem = _broken_safetensors(f)
        if problem is not None:
            raise FormatError(f"{where}: {problem}")
    return layout


def _broken_safetensors(f: ModelFile) -> str | None:
    """Why a file that starts like safetensors is not one (a cut-short download, most
    often), or None if it does not look like one at all."""
    head = f.read(0, min(f.size, 9))
    if len(head) < 9 or head[8:9] != b"{":
        return None
    n = int.from_bytes(head[:8], "little")
    if n > MAX_HEADER_SIZE:
        return None
    if 8 + n > f.size:
        return f"a safetensors header of {n} bytes in a file of {f.size}: truncated"
    try:
        header = json.loads(f.read(8, n))
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return "a safetensors header that is not valid: corrupt"
    if 8 + n + end > f.size:
        return f"tensor data ends at byte {8 + n + end} but the file has {f.size}: truncated"
    return "a safetensors header that does not describe the file: corrupt"


def _tensors_of(
    model: Model, options: Options
) -> tuple[dict[str, TensorPlace], dict[str, ModelLayout]]:
    """The tensors of a model by (renamed) name, and the layout of each file holding some
    (learnt once per model: a series compares each version twice)."""
    known = model.tables.get(options.renames)
    if known is not None:
        return known  # type: ignore[return-value]
    model.tables[options.renames] = found = _read_tables(model, options)
    return found


def _read_tables(
    model: Model, options: Options
) -> tuple[dict[str, TensorPlace], dict[str, ModelLayout]]:
    names, required = _weight_files(model)
    # Several checkpoints that no index joins (a diffusers pipeline's unet/ and vae/) each
    # hold their own tensors: name them FILE:TENSOR, so that conv_in.weight of one is
    # not taken for the other's.
    qualify = model.is_dir and len(names) > 1 and not _shards(model)
    places: dict[str, TensorPlace] = {}
    layouts: dict[str, ModelLayout] = {}
    for name in names:
        f = model.files[name]
        try:
            layout = _layout(f, model.label)
        except FormatError:
            if required:
                raise
            # A guess by suffix that is no checkpoint (training_args.bin pickles no
            # tensors): one of the directory's other files, compared by content.
            log.info("%s/%s: not a checkpoint modelfs reads; compared as a file", model.label, name)
            continue
        if layout is None:
            if required and model.is_dir:
                raise FormatError(f"{model.label}: {name} is not a model file")
            continue
        layouts[name] = layout
        for info in layout.tensors:
            key = _renamed(info.name, options.renames)
            key = f"{name}:{key}" if qualify else key
            if key in places:
                where = places[key].file.name or model.label
                raise FormatError(
                    f"{model.label}: tensor {key!r} is in both {where} and {name or model.label}"
                )
            places[key] = TensorPlace(f, info)
    return places, layouts


def _weight_files(model: Model) -> tuple[list[str], bool]:
    """The files holding a model's tensors, and whether each must be one: a single file;
    the shards an index names; else the safetensors files (a Hugging Face repository that
    also ships pytorch_model.bin holds the same tensors twice); else every file whose
    suffix says checkpoint, any of which may turn out to be something else."""
    if not model.is_dir:
        return [""], True
    shards = _shards(model)
    if shards:
        return shards, True
    safetensors = [n for n in model.files if n.endswith(".safetensors")]
    if safetensors:
        return safetensors, True
    return [n for n in model.files if n.endswith(MODEL_SUFFIXES)], False


def _shards(model: Model) -> list[str]:
    """The files a sharded checkpoint's index names, if the directory has an index."""
    for index in SHARD_INDEXES:
        if index in model.files:
            f = model.files[index]
            try:
                weight_map = json.loads(f.read(0, f.size))["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise FormatError(f"{model.label}: {index} is not a shard index: {e}") from None
            missing = [s for s in shards if s not in model.files]
            if missing:
                raise FormatError(f"{model.label}: {index} names {missing[0]}, which is not there")
            return shards
    return []


# -- structure -----------------------------------------------------------------------------------


def _structure(
    result: ModelDiff, a: Mapping[str, TensorPlace], b: Mapping[str, TensorPlace]
) -> None:
    for name in sorted(set(a) | set(b)):
        pa, pb = a.get(name), b.get(name)
        t = TensorDiff(name, CHANGED)
        if pa is not None:
            t.dtype_a, t.shape_a, t.file_a = pa.info.dtype, pa.info.shape, pa.file.name
        if pb is not None:
            t.dtype_b, t.shape_b, t.file_b = pb.info.dtype, pb.info.shape, pb.file.name
        if pa is None:
            t.status = ADDED
        elif pb is None:
            t.status = REMOVED
        elif _elements(pa.info) != _elements(pb.info):
            t.status = INCOMPARABLE
        result.tensors.append(t)


def _elements(info: TensorInfo) -> int:
    return int(np.prod(info.shape, dtype=np.int64)) if info.shape else 1


def _metadata_changes(a: Mapping[str, ModelLayout], b: Mapping[str, ModelLayout]) -> list[Change]:
    """Metadata keys, each under its file's name when a side has several model files (a
    directory of one model.safetensors compares with a single file key by key)."""

    def keyed(layouts: Mapping[str, ModelLayout]) -> dict[str, Any]:
        several = len(layouts) > 1
        return {f"{name}:{k}" if several else k: v
                for name, lay in layouts.items() for k, v in lay.metadata.items()}  # fmt: skip

    return _json_changes(keyed(a), keyed(b))


def _read_json(model: Model, name: str) -> Any:
    f = model.files.get(name)
    if f is None:
        return ABSENT
    try:
        return json.loads(f.read(0, f.size))
    except ValueError as e:
        raise FormatError(f"{model.label}: {name} is not JSON: {e}") from None


def _json_changes(a: Any, b: Any, key: str = "") -> list[Change]:
    """The differences between two JSON values, as key paths (`a.b[2]`)."""
    if a is ABSENT or b is ABSENT:
        return [] if a is b else [Change(key or WHOLE, a, b)]
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            sub = f"{key}.{k}" if key else str(k)
            if k not in a:
                out.append(Change(sub, ABSENT, b[k]))
            elif k not in b:
                out.append(Change(sub, a[k], ABSENT))
            else:
                out.extend(_json_changes(a[k], b[k], sub))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [c for i, (x, y) in enumerate(zip(a, b, strict=True))
                for c in _json_changes(x, y, f"{key}[{i}]")]  # fmt: skip
    if a == b and type(a) is type(b):
        return []
    return [Change(key or WHOLE, a, b)]


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _file_diffs(
    a: Model, b: Model, names_a: set[str], names_b: set[str], *, bytes_diff: bool = True
) -> list[FileDiff]:
    out = []
    for name in sorted(names_a | names_b):
        fa, fb = a.files.get(name), b.files.get(name)
        if fa is None or fb is None:
            status = ADDED if fa is None else REMOVED
            out.append(FileDiff(name, status, fa.size if fa else None, fb.size if fb else None))
            continue
        same = fa.size == fb.size and fa.whole_hash() == fb.whole_hash()
        d = FileDiff(name, IDENTICAL if same else CHANGED, fa.size, fb.size)
        if not same and bytes_diff:
            d.changed_bytes, d.changed_blocks = _byte_diff(fa, fb)
        out.append(d)
    return out


def _byte_diff(a: ModelFile, b: ModelFile) -> tuple[int, int | None]:
    """Bytes that differ (a size difference counts as changed bytes); for two store files,
    also the blocks of b that a does not have."""
    blocks = None
    if a.manifest is not None and b.manifest is not None:
        have = {x.location.block_id for x in a.manifest.blocks}
        blocks = sum(1 for x in b.manifest.blocks if x.location.block_id not in have)
    common, changed = min(a.size, b.size), abs(a.size - b.size)
    step = 8 << 20
    for offset in range(0, common, step):
        n = min(step, common - offset)
        x = np.frombuffer(a.read(offset, n), np.uint8)
        y = np.frombuffer(b.read(offset, n), np.uint8)
        changed += int(np.count_nonzero(x != y))
    return changed, blocks


# -- numbers -------------------------------------------------------------------------------------


def _block_placement(place: TensorPlace) -> list[tuple[int, int, str]] | None:
    """The blocks holding a tensor's bytes, by offset from the tensor's start, or None if
    they are not known (a local file, a strided view)."""
    manifest, span = place.file.manifest, place.info.span
    if manifest is None or span is None:
        return None
    return [
        (b.file_offset - span.start, b.length, b.location.block_id)
        for b in manifest.blocks_for(span.start, span.end - span.start)
    ]


def identical_without_reading(pa: TensorPlace, pb: TensorPlace) -> str | None:
    """How a tensor pair is known identical without reading it ('blocks', 'hash'), or None."""
    if pa.info.dtype != pb.info.dtype or pa.info.shape != pb.info.shape:
        return None
    if pa.info.span is None or pb.info.span is None:
        return None
    placement_a, placement_b = _block_placement(pa), _block_placement(pb)
    if placement_a is not None and placement_a == placement_b:
        return "blocks"
    fa, fb = pa.file, pb.file
    if (
        fa.size == fb.size and pa.info.span.start == pb.info.span.start
        and fa.whole_hash() == fb.whole_hash()
    ):  # fmt: skip
        return "hash"  # the same file: a local one is hashed once, then every tensor is free
    # One side in the store, the other local: hash the local bytes where the store's
    # blocks lie. Reads the local side only; the store side is fetched only if it differs.
    if (placement_a is None) != (placement_b is None):
        stored, local = (pa, pb) if placement_a is not None else (pb, pa)
        placement = placement_a if placement_a is not None else placement_b
        assert placement is not None and local.info.span is not None
        start, f = local.info.span.start, local.file
        for offset, length, block in placement:
            if not 0 <= start + offset <= start + offset + length <= f.size:
                return None
            if block_id(f.read(start + offset, length)) != block:
                return None
        return "blocks"
    return None


def _decide_without_reading(
    t: TensorDiff, pa: TensorPlace, pb: TensorPlace, options: Options
) -> bool:
    """Settle what needs no tensor data (identity from blocks or hashes; without numbers,
    a difference of blocks); False if the pair must be read."""
    a, b = pa.info, pb.info
    if a.shape != b.shape:
        t.status = RESHAPED
    elif a.dtype != b.dtype:
        t.status = RETYPED
    how = identical_without_reading(pa, pb)
    if how is not None:
        t.status, t.decided_by = IDENTICAL, how
        t.stats = DeltaStats.unread_identical(_elements(a))
        return True
    if not options.numbers and pa.file.manifest is not None and pb.file.manifest is not None:
        t.decided_by = "blocks"  # its blocks differ; no tensor data is read
        return True
    return False


def _prefetch_start(pa: TensorPlace, pb: TensorPlace, options: Options) -> None:
    """Start fetching the first chunk of a pair that will be read next."""
    for place in (pa, pb):
        span, prefetch = place.info.span, place.file.prefetch
        if span is not None and prefetch is not None:
            prefetch(span.start, min(span.end - span.start, options.chunk_bytes))


def _is_quantized(info: TensorInfo) -> bool:
    return info.dtype.startswith("GGUF_")


def _delta(pa: TensorPlace, pb: TensorPlace, options: Options, result: ModelDiff) -> DeltaStats:
    a, b = pa.info, pb.info
    if a.span is None or b.span is None or _is_quantized(a) or _is_quantized(b):
        raw_a, dtype_a = _whole(pa)
        raw_b, dtype_b = _whole(pb)
        result.bytes_read += tensor_nbytes(a.dtype, a.shape) + tensor_nbytes(b.dtype, b.shape)
        acc = DeltaAccumulator(dtype_a, dtype_b, atol=options.atol, rtol=options.rtol)
        for lo, hi in element_ranges(_elements(a), itemsize(dtype_a), itemsize(dtype_b)):
            ia, ib = itemsize(dtype_a), itemsize(dtype_b)
            acc.update(raw_a[lo * ia : hi * ia], raw_b[lo * ib : hi * ib])
        return acc.result()
    ia, ib = itemsize(a.dtype), itemsize(b.dtype)
    acc = DeltaAccumulator(a.dtype, b.dtype, atol=options.atol, rtol=options.rtol)
    ranges = list(element_ranges(_elements(a), ia, ib, options.chunk_bytes))
    for i, (lo, hi) in enumerate(ranges):
        if i + 1 < len(ranges):  # fetch the next chunk while this one is compared
            nlo, nhi = ranges[i + 1]
            for place, size in ((pa, ia), (pb, ib)):
                if place.file.prefetch is not None:
                    place.file.prefetch(place.info.span.start + nlo * size, (nhi - nlo) * size)
        chunk_a = pa.file.read(a.span.start + lo * ia, (hi - lo) * ia)
        chunk_b = pb.file.read(b.span.start + lo * ib, (hi - lo) * ib)
        if len(chunk_a) != (hi - lo) * ia or len(chunk_b) != (hi - lo) * ib:
            raise FormatError(f"tensor {a.name!r}: the file ends inside it (truncated)")
        result.bytes_read += len(chunk_a) + len(chunk_b)
        acc.update(chunk_a, chunk_b)
    return acc.result()


def _whole(place: TensorPlace) -> tuple[bytes, str]:
    """A tensor's bytes whole, and the dtype to read them as (quantized ones dequantized)."""
    info, f = place.info, place.file
    if _is_quantized(info):
        raw = f.read(info.span.start, info.span.end - info.span.start) if info.span else b""
        values = dequantize(info.dtype, raw, info.shape)
        return np.ascontiguousarray(values, dtype="<f8").tobytes(), "F64"
    return read_tensor_bytes(info, f.read, f.size), info.dtype
