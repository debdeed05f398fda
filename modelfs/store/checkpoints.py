"""Reading a model file's tensor table by random access: safetensors, torch.save zips, GGUF.

This module owns recognising a model file's format (`sniff`) and learning, for
every tensor, its name, dtype, C-order shape and where its bytes lie in the file
(`safetensors_layout`, `torch_layout`, `gguf_layout`, or `model_layout` for any
of them), reading only headers, a zip's directory and local headers and torch's
pickle, never tensor data. A file is reached through `read(offset, length)` and
its size, so a file in the store (read by range) and a local file (`LocalFile`)
serve alike. It also turns GGUF's quantized blocks into numbers (`dequantize`).

Every offset, length and count taken from a file is checked against the file
size (and a sanity bound) before it is used, so a truncated or malformed file
raises FormatError saying what is wrong and where, never IndexError,
struct.error or a giant allocation.

Dtypes are safetensors strings ("F32", "BF16", "I64", ...), plus "C64"/"C128"
for torch's complex tensors and "GGUF_<type>" ("GGUF_Q8_0") for GGUF's
quantized blocks; `tensor_nbytes` knows the size of each.

Caveats:
- torch: only the zip format of torch.save (PyTorch >= 1.6) is read. The legacy
  format, TorchScript archives, and quantized, sparse, nested or subclassed
  tensors are refused with FormatError. Storages and tensors outside containers
  of dicts, lists and tuples are not found, and objects that are neither
  tensors nor scalars are left out.
- torch: a file without a `byteorder` record (older PyTorch) is taken as
  little-endian, as torch.load on a little-endian machine takes it.
- torch: each storage costs one small read of its local zip header; a caller on
  a slow store should pass a `read` that caches or coalesces.
- GGUF: the header is read in windows (64 KiB, doubling to 4 MiB), so up to one
  window past the header's end may be read. GGUF v1 and big-endian GGUF are
  refused. Dequantizing quantized types needs the gguf package.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pickletools import genops  # reads opcodes; nothing here unpickles
from types import ModuleType
from typing import Any, TypeAlias

import numpy as np

from ..errors import FormatError, InvalidArgumentError
from .tensorfile import DTYPE_SIZES, TensorLayout, TensorSpan, header_size_needed, parse_layout

log = logging.getLogger(__name__)

ReadAt: TypeAlias = Callable[[int, int], bytes]
"""read(offset, length) -> exactly `length` bytes of the file from `offset`."""

MetadataValue: TypeAlias = (
    "str | int | float | bool | None | tuple[MetadataValue, ...] | ArraySummary"
)

# Bytes per element of every non-block dtype this module reports.
ITEMSIZES: dict[str, int] = {**DTYPE_SIZES, "C64": 8, "C128": 16}

# Sanity bounds on what a header may claim, so a corrupt count cannot make us
# loop for hours or allocate gigabytes before the truncation is noticed.
MAX_ZIP_DIRECTORY = 256 << 20  # a million entries of 256 bytes
MAX_PICKLE_SIZE = 256 << 20
MAX_GGUF_HEADER = 512 << 20  # LLM vocabularies make headers of a few MiB
MAX_GGUF_COUNT = 1 << 24  # tensors, metadata keys, elements of one string array
MAX_NDIM = 64
SHOWN_ARRAY_LENGTH = 64  # longer GGUF metadata arrays become an ArraySummary


# -- What the readers return -------------------------------------------------------------------


@dataclass(frozen=True)
class ArraySummary:
    """A GGUF metadata array too long to show: its element type, length and a digest."""

    element_type: str  # GGUF's name for it: "STRING", "INT32", "ARRAY", ...
    length: int
    sha256: str  # of the array's encoding in the file, so equal arrays have equal digests

    def __str__(self) -> str:
        return f"[{self.length} x {self.element_type}, sha256 {self.sha256[:16]}]"


@dataclass(frozen=True)
class StorageView:
    """Where a torch tensor's elements lie in its storage, the zip entry `<archive>/data/<key>`.

    Element i of the tensor (a C-order index tuple) is storage element
    offset + sum(i[d] * stride[d]); elements have the tensor's dtype.
    """

    key: str
    start: int  # absolute offset of the storage's first byte in the file
    end: int
    offset: int  # in elements
    stride: tuple[int, ...]  # in elements


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a model file.

    `span` is set when the tensor's bytes are one contiguous C-order run of the
    file (always for safetensors and GGUF); for a torch tensor that is a strided
    view (a transpose, a column slice) it is None and `storage` says where its
    elements are (`read_tensor_bytes` gathers them). For a GGUF_* dtype the
    span's itemsize means nothing: its length is `nbytes`.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]  # C order: slowest-varying dimension first
    span: TensorSpan | None
    storage: StorageView | None = None  # torch only

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.dtype, self.shape)


@dataclass(frozen=True)
class ModelLayout:
    """The tensor table of one model file."""

    format: str  # "safetensors", "torch" or "gguf"
    tensors: tuple[TensorInfo, ...]  # in the file's order
    metadata: dict[str, MetadataValue]

    def by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}


class LocalFile:
    """A local file as a random-access reader: `read(offset, length)` and `size`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        parts = []
        while length > 0:
            chunk = os.pread(self._fd, length, offset)  # Linux returns at most 2 GiB per call
            if not chunk:
                break
            parts.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LocalFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- Recognising a format ------------------------------------------------------------------------

GGUF_MAGIC = b"GGUF"
ZIP_LOCAL_MAGIC = b"PK\x03\x04"
# torch.save's legacy (non-zip) format starts by pickling this magic number.
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_TORCH_PICKLE = re.compile(r"([^/]+)/data\.pkl")


def sniff(read: ReadAt, size: int) -> str:
    """The format of a file: "safetensors", "torch", "gguf" or "bytes" (anything else).

    This names the format only: the layout function for it may still refuse a
    variant it does not read (a legacy torch file, GGUF v1) with FormatError.
    """
    head = _read_exact(read, size, 0, min(size, len(LEGACY_TORCH_MAGIC)), "the file's first bytes")
    if head.startswith(GGUF_MAGIC):
        return "gguf"
    if head.startswith(LEGACY_TORCH_MAGIC):
        return "torch"
    if head.startswith(ZIP_LOCAL_MAGIC) and _looks_like_torch_zip(read, size):
        return "torch"
    if _safetensors_or_none(read, size) is not None:
        return "safetensors"
    return "bytes"


def model_layout(read: ReadAt, size: int) -> ModelLayout | None:
    """The tensor table of a file of any format read here, or None for plain bytes."""
    kind = sniff(read, size)
    if kind == "safetensors":
        return safetensors_layout(read, size)
    if kind == "torch":
        return torch_layout(read, size)
    if kind == "gguf":
        return gguf_layout(read, size)
    return None


def _looks_like_torch_zip(read: ReadAt, size: int) -> bool:
    # torch.save writes data.pkl first, so its local header at 0 settles it cheaply,
    # even for a file truncated before its directory (torch_layout then says so).
    try:
        fixed = _read_exact(read, size, 0, 30, "the first zip local header")
        (name_len,) = struct.unpack_from("<H", fixed, 26)
        name = _read_exact(read, size, 30, name_len, "the first zip entry's name")
        if _TORCH_PICKLE.fullmatch(name.decode("utf-8", "replace")):
            return True
        zip_dir = _read_zip_directory(read, size)
    except FormatError as e:
        log.debug("a zip, but not a torch checkpoint: %s", e)
        return False
    return any(_TORCH_PICKLE.fullmatch(n) for n in zip_dir.entries)


# -- safetensors -----------------------------------------------------------------------------------


def safetensors_layout(read: ReadAt, size: int) -> ModelLayout:
    """The tensor table of a safetensors file (tensorfile.parse_layout, read by range)."""
    layout = _safetensors_or_none(read, size)
    if layout is None:
        raise FormatError(f"not a safetensors file ({size} bytes): its header does not parse")
    return layout


def _safetensors_or_none(read: ReadAt, size: int) -> ModelLayout | None:
    if size < 10:
        return None
    first9 = _read_exact(read, size, 0, 9, "the safetensors header length")
    need = header_size_needed(first9[:8])
    # A JSON header starts with '{': checking it first spares reading a random
    # file's "header" of up to 100 MiB.
    if need <= 8 or need > size or first9[8:9] != b"{":
        return None
    head = first9 + _read_exact(read, size, 9, need - 9, "the safetensors header")
    layout = parse_layout(head, size)
    if layout is None:
        return None
    tensors = tuple(TensorInfo(s.name, s.dtype, s.shape, s) for s in layout.tensors)
    return ModelLayout("safetensors", tensors, dict(layout.metadata))


# -- Zip archives (torch.save) ---------------------------------------------------------------------

_EOCD = struct.Struct("<4sHHHHIIH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_CENTRAL_HEADER = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_U32_MAX, _U16_MAX = 0xFFFFFFFF, 0xFFFF


@dataclass(frozen=True)
class _ZipEntry:
    name: str
    raw_name: bytes
    flags: int
    method: int  # 0: stored, 8: deflated
    compressed_size: int
    size: int
    header_offset: int  # of the local file header


@dataclass(frozen=True)
class _ZipDirectory:
    entries: dict[str, _ZipEntry]
    data_end: int  # where the central directory starts: every entry's data ends before


def _read_zip_directory(read: ReadAt, size: int) -> _ZipDirectory:
    eocd_pos = _find_end_record(read, size)
    eocd = _EOCD.unpack(_read_exact(read, size, eocd_pos, _EOCD.size, "the zip end record"))
    _, disk, dir_disk, _, count, dir_size, dir_offset, _ = eocd
    dir_end = eocd_pos
    locator_pos = eocd_pos - _ZIP64_LOCATOR.size
    if locator_pos >= 0:
        locator = _read_exact(read, size, locator_pos, _ZIP64_LOCATOR.size, "the zip64 locator")
        if locator[:4] == b"PK\x06\x07":
            # Zip64 (over 4 GiB or 65535 entries): the 64-bit record holds the true values.
            _, _, record_pos, _ = _ZIP64_LOCATOR.unpack(locator)
            if record_pos > locator_pos - _ZIP64_EOCD.size:
                raise FormatError(f"the zip64 end record at offset {record_pos} is out of place")
            record = _ZIP64_EOCD.unpack(
                _read_exact(read, size, record_pos, _ZIP64_EOCD.size, "the zip64 end record")
            )
            if record[0] != b"PK\x06\x06":
                raise FormatError(f"no zip64 end record at offset {record_pos}")
            disk, dir_disk, count, dir_size, dir_offset = record[4], record[5], *record[7:10]
            dir_end = record_pos
    if disk != 0 or dir_disk != 0:
        raise FormatError("a zip split over several disks is not read")
    if dir_size > MAX_ZIP_DIRECTORY:
        raise FormatError(f"the zip directory claims {dir_size} bytes, over {MAX_ZIP_DIRECTORY}")
    if dir_offset + dir_size != dir_end:
        raise FormatError(
            f"the zip directory ({dir_size} bytes at offset {dir_offset}) does not end where "
            f"the end record begins (offset {dir_end}): bytes prepended, or a corrupt record"
        )
    if count > dir_size // _CENTRAL_HEADER.size:
        raise FormatError(f"the zip end record claims {count} entries in {dir_size} bytes")
    raw = _read_exact(read, size, dir_offset, dir_size, "the zip central directory")
    entries: dict[str, _ZipEntry] = {}
    pos = 0
    for index in range(count):
        where = f"zip directory entry {index} (offset {dir_offset + pos})"
        fixed = _unpack_within(_CENTRAL_HEADER, raw, pos, where)
        if fixed[0] != b"PK\x01\x02":
            raise FormatError(f"{where}: not a central directory header")
        flags, method = fixed[3], fixed[4]
        csize, usize, name_len, extra_len, comment_len = fixed[8:13]
        disk_start, header_offset = fixed[13], fixed[16]
        pos += _CENTRAL_HEADER.size
        if pos + name_len + extra_len + comment_len > len(raw):
            raise FormatError(f"{where}: name or extra field runs past the directory")
        raw_name = raw[pos : pos + name_len]
        extra = raw[pos + name_len : pos + name_len + extra_len]
        pos += name_len + extra_len + comment_len
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        usize, csize, header_offset, disk_start = _apply_zip64_extra(
            extra, usize, csize, header_offset, disk_start, f"{where} ({name!r})"
        )
        if disk_start != 0:
            raise FormatError(f"zip entry {name!r} lies on another disk")
        if header_offset + _LOCAL_HEADER.size > dir_offset:
            raise FormatError(
                f"zip entry {name!r}: local header offset {header_offset} is past its data"
            )
        if name in entries:
            raise FormatError(f"the zip has two entries named {name!r}")
        entries[name] = _ZipEntry(name, raw_name, flags, method, csize, usize, header_offset)
    return _ZipDirectory(entries, dir_offset)


def _find_end_record(read: ReadAt, size: int) -> int:
    if size < _EOCD.size:
        raise FormatError(f"not a zip: {size} bytes is too short for an end record")
    # Usually the record ends the file; a zip comment (up to 64 KiB) may follow it.
    last = _read_exact(read, size, size - _EOCD.size, _EOCD.size, "the zip end record")
    if last[:4] == b"PK\x05\x06" and last[-2:] == b"\0\0":
        return size - _EOCD.size
    tail_len = min(size, _EOCD.size + _U16_MAX)
    tail = _read_exact(read, size, size - tail_len, tail_len, "the zip end record and comment")
    pos = tail.rfind(b"PK\x05\x06")
    while pos >= 0:
        if pos + _EOCD.size <= len(tail):
            (comment_len,) = struct.unpack_from("<H", tail, pos + 20)
            if pos + _EOCD.size + comment_len == len(tail):
                return size - tail_len + pos
        pos = tail.rfind(b"PK\x05\x06", 0, pos)
    raise FormatError("not a zip, or truncated: no end of central directory record")


def _apply_zip64_extra(
    extra: bytes, usize: int, csize: int, offset: int, disk: int, where: str
) -> tuple[int, int, int, int]:
    """Sizes and offset with the zip64 extra field's 64-bit values for those saturated."""
    if _U32_MAX not in (usize, csize, offset) and disk != _U16_MAX:
        return usize, csize, offset, disk
    body = _zip64_extra_body(extra, where)
    at = 0

    def next_field(width: int, what: str) -> int:
        nonlocal at
        if at + width > len(body):
            raise FormatError(f"{where}: the zip64 extra field lacks the {what}")
        value = int.from_bytes(body[at : at + width], "little")
        at += width
        return value

    # Only the saturated fields are present, in this order.
    if usize == _U32_MAX:
        usize = next_field(8, "size")
    if csize == _U32_MAX:
        csize = next_field(8, "compressed size")
    if offset == _U32_MAX:
        offset = next_field(8, "header offset")
    if disk == _U16_MAX:
        disk = next_field(4, "disk number")
    return usize, csize, offset, disk


def _zip64_extra_body(extra: bytes, where: str) -> bytes:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        if len(body) < length:
            raise FormatError(f"{where}: extra field {tag:#x} runs past its end")
        if tag == 0x0001:
            return body
        pos += 4 + length
    raise FormatError(f"{where}: 32-bit fields are saturated but there is no zip64 extra field")


def _stored_data_start(read: ReadAt, size: int, entry: _ZipEntry, data_end: int) -> int:
    """The absolute offset of a stored (uncompressed) entry's bytes, from its local header."""
    if entry.flags & 0x1:
        raise FormatError(f"zip entry {entry.name!r} is encrypted")
    if entry.method != 0:
        raise FormatError(
            f"zip entry {entry.name!r} is compressed (zip method {entry.method}); torch.save "
            "stores every entry uncompressed, so this file was re-zipped and its tensors "
            "cannot be read in place"
        )
    if entry.compressed_size != entry.size:
        raise FormatError(
            f"zip entry {entry.name!r} is stored but its sizes differ "
            f"({entry.compressed_size} and {entry.size})"
        )
    # The local header's extra field (torch pads it to align the data to 64 bytes)
    # may differ from the directory's, so its own lengths decide where data begins.
    where = f"the local header of {entry.name!r} at offset {entry.header_offset}"
    local = _read_exact(
        read, size, entry.header_offset, _LOCAL_HEADER.size + len(entry.raw_name), where
    )
    sig, _, _, method, _, _, _, _, _, name_len, extra_len = _LOCAL_HEADER.unpack_from(local)
    if sig != ZIP_LOCAL_MAGIC:
        raise FormatError(f"{where}: not a local file header")
    if local[_LOCAL_HEADER.size :] != entry.raw_name or name_len != len(entry.raw_name):
        raise FormatError(f"{where}: names another entry than the directory says")
    if method != entry.method:
        raise FormatError(f"{where}: compression method {method} disagrees with the directory")
    start = entry.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    if start + entry.size > data_end:
        raise FormatError(
            f"zip entry {entry.name!r}: {entry.size} bytes at offset {start} run past "
            f"the central directory at {data_end}"
        )
    return start


def _read_stored_entry(read: ReadAt, size: int, zip_dir: _ZipDirectory, name: str) -> bytes:
    entry = zip_dir.entries[name]
    start = _stored_data_start(read, size, entry, zip_dir.data_end)
    return _read_exact(read, size, start, entry.size, f"zip entry {name!r}")


# -- torch.save checkpoints ------------------------------------------------------------------------


def torch_layout(read: ReadAt, size: int) -> ModelLayout:
    """The tensors of a torch.save checkpoint (zip format), without torch and without its data.

    Names: dict keys joined by '.' down nested dicts, list and tuple items by
    their index ({"model": {"fc.weight": t}, "ema": [t2]} gives "model.fc.weight"
    and "ema.0"; a tensor saved alone is named ""). Scalars (numbers, strings,
    None, and lists or tuples of them) become metadata under the same names.
    The pickle is never unpickled: its opcodes are followed on a stack of plain
    values (_interpret), and the only globals it may name are those torch.save
    writes for tensors, each a stand-in that records: anything else is refused, as
    torch.load(weights_only=True) would, and no code from the file ever runs.
    """
    head = _read_exact(read, size, 0, min(size, len(LEGACY_TORCH_MAGIC)), "the file's first bytes")
    if head.startswith(LEGACY_TORCH_MAGIC):
        raise FormatError(
            "a torch.save file in the legacy format (PyTorch < 1.6, or "
            "_use_new_zipfile_serialization=False): its tensors' bytes cannot be located "
            "without loading it; re-save it with torch.save's default format"
        )
    zip_dir = _read_zip_directory(read, size)
    pickles = [n for n in zip_dir.entries if _TORCH_PICKLE.fullmatch(n)]
    if len(pickles) != 1:
        raise FormatError(
            "not a torch.save checkpoint: "
            + ("no <archive>/data.pkl entry" if not pickles else f"several data.pkl ({pickles})")
        )
    pickle_name = pickles[0]
    archive = pickle_name[: -len("/data.pkl")]
    _check_byteorder(read, size, zip_dir, f"{archive}/byteorder")

    entry = zip_dir.entries[pickle_name]
    if entry.size > MAX_PICKLE_SIZE:
        raise FormatError(f"{pickle_name} is {entry.size} bytes, over {MAX_PICKLE_SIZE}")
    root = _unpickle_weights(_read_stored_entry(read, size, zip_dir, pickle_name), pickle_name)

    flat = _Flattened()
    _flatten(root, "", flat, set(), 0)
    records, metadata = flat.tensors, flat.metadata

    # Each storage's entry, checked once, in file order so reads move forward.
    storages: dict[str, tuple[_StorageRecord, int, int]] = {}
    for key, storage in sorted(
        {r.storage.key: r.storage for _, r in records}.items(),
        key=lambda kv: _storage_entry(zip_dir, archive, kv[0]).header_offset,
    ):
        entry = _storage_entry(zip_dir, archive, key)
        start = _stored_data_start(read, size, entry, zip_dir.data_end)
        nbytes = storage.numel * ITEMSIZES[storage.dtype]
        if entry.size != nbytes:
            raise FormatError(
                f"{entry.name}: {entry.size} bytes, but the pickle says {storage.numel} "
                f"elements of {storage.dtype} ({nbytes} bytes)"
            )
        storages[key] = (storage, start, start + nbytes)

    tensors = []
    for name, record in records:
        storage, start, end = storages[record.storage.key]
        if record.storage != storage:
            raise FormatError(
                f"tensor {name!r}: storage {storage.key} is described twice, differently"
            )
        tensors.append(_torch_tensor_info(name, record, start, end))
    return ModelLayout("torch", tuple(tensors), metadata)


def _check_byteorder(read: ReadAt, size: int, zip_dir: _ZipDirectory, name: str) -> None:
    if name not in zip_dir.entries:
        return  # older PyTorch wrote none; torch.load then assumes the reader's own order
    if zip_dir.entries[name].size > 16:
        raise FormatError(f"{name} holds {zip_dir.entries[name].size} bytes, not a byte order")
    order = _read_stored_entry(read, size, zip_dir, name)
    if order == b"big":
        raise FormatError(
            f"{name} says the checkpoint was written on a big-endian machine: its tensors' "
            "bytes are big-endian, and only little-endian tensors are read"
        )
    if order != b"little":
        raise FormatError(f"{name} holds {order[:16]!r}, neither 'little' nor 'big'")


def _storage_entry(zip_dir: _ZipDirectory, archive: str, key: str) -> _ZipEntry:
    name = f"{archive}/data/{key}"
    entry = zip_dir.entries.get(name)
    if entry is None:
        raise FormatError(f"the pickle names storage {key!r}, but the zip has no entry {name!r}")
    return entry


def _torch_tensor_info(name: str, record: _TensorRecord, start: int, end: int) -> TensorInfo:
    itemsize = ITEMSIZES[record.dtype]
    numel = math.prod(record.shape)
    storage_elements = (end - start) // itemsize
    if numel == 0:
        last = record.offset - 1  # an empty tensor may sit at the storage's very end
    else:
        last = record.offset + sum(
            (n - 1) * s for n, s in zip(record.shape, record.stride, strict=True)
        )
    if last >= storage_elements:
        raise FormatError(
            f"tensor {name!r} (shape {record.shape}, offset {record.offset}, stride "
            f"{record.stride}) reaches element {last} of a storage of {storage_elements}"
        )
    view = StorageView(record.storage.key, start, end, record.offset, record.stride)
    span = None
    if _is_c_contiguous(record.shape, record.stride):
        first = start + record.offset * itemsize
        span = TensorSpan(name, record.dtype, record.shape, first, first + numel * itemsize)
    return TensorInfo(name, record.dtype, record.shape, span, view)


def _is_c_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    if math.prod(shape) == 0:
        return True
    expected = 1
    for n, s in zip(reversed(shape), reversed(stride), strict=True):
        if n != 1 and s != expected:  # a dimension of size 1 may have any stride
            return False
        expected *= n
    return True


# Following the pickle: the globals it may name map to harmless stand-ins that only record.


@dataclass(frozen=True)
class _StorageType:
    dtype: str  # "U8" for UntypedStorage, whose numel counts bytes
    untyped: bool


@dataclass(frozen=True)
class _StorageRecord:
    key: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class _TorchDtype:
    name: str
    dtype: str

    def __str__(self) -> str:
        return f"torch.{self.name}"


@dataclass(frozen=True)
class _TensorRecord:
    storage: _StorageRecord
    dtype: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass(frozen=True)
class _TensorType:
    name: str  # torch.Tensor or torch.nn.parameter.Parameter, as _rebuild_from_type_v2's new_type


class _OrderedDict(dict):  # type: ignore[type-arg]
    """collections.OrderedDict; a state_dict's `_metadata` attribute lands in __dict__."""


_TORCH_DTYPES = {
    "float32": "F32", "float": "F32", "float64": "F64", "double": "F64",
    "float16": "F16", "half": "F16", "bfloat16": "BF16",
    "int8": "I8", "uint8": "U8", "int16": "I16", "short": "I16", "int32": "I32", "int": "I32",
    "int64": "I64", "long": "I64", "uint16": "U16", "uint32": "U32", "uint64": "U64",
    "bool": "BOOL", "float8_e5m2": "F8_E5M2", "float8_e4m3fn": "F8_E4M3",
    "float8_e8m0fnu": "F8_E8M0", "complex64": "C64", "cfloat": "C64",
    "complex128": "C128", "cdouble": "C128",
}  # fmt: skip
_TORCH_STORAGE_TYPES = {
    "FloatStorage": "F32", "DoubleStorage": "F64", "HalfStorage": "F16",
    "BFloat16Storage": "BF16", "LongStorage": "I64", "IntStorage": "I32",
    "ShortStorage": "I16", "CharStorage": "I8", "ByteStorage": "U8", "BoolStorage": "BOOL",
    "ComplexFloatStorage": "C64", "ComplexDoubleStorage": "C128",
}  # fmt: skip


def _ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or len(value) > MAX_NDIM:
        raise FormatError(f"a tensor's {what} is not a tuple of at most {MAX_NDIM} integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise FormatError(f"a tensor's {what} {value!r} is not all non-negative integers")
    return tuple(value)


def _tensor_record(
    storage: object, offset: object, size: object, stride: object, dtype: str | None
) -> _TensorRecord:
    if not isinstance(storage, _StorageRecord):
        raise FormatError("a tensor's storage is not a storage of the checkpoint")
    (offset_,) = _ints((offset,), "storage offset")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise FormatError(f"a tensor's size {shape} and stride {strides} differ in length")
    return _TensorRecord(storage, dtype or storage.dtype, offset_, shape, strides)


def _rebuild_tensor_v2(
    storage: object, offset: object, size: object, stride: object, *rest: object
) -> _TensorRecord:
    # rest: requires_grad, backward_hooks and optional metadata, none of which matter here.
    return _tensor_record(storage, offset, size, stride, None)


def _rebuild_tensor_v3(
    storage: object,
    offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    hooks: object,
    dtype: object,
    *metadata: object,
) -> _TensorRecord:
    # torch writes dtypes new since storages were typed (float8, uint16...) this way,
    # over an UntypedStorage whose numel counts bytes.
    if not isinstance(dtype, _TorchDtype):
        raise FormatError("_rebuild_tensor_v3 was given no dtype")
    if isinstance(storage, _StorageRecord) and storage.dtype != "U8":
        raise FormatError("_rebuild_tensor_v3 was given a typed storage")
    return _tensor_record(storage, offset, size, stride, dtype.dtype)


def _rebuild_parameter(data: object, *rest: object) -> object:
    return data  # a Parameter's bytes are its tensor's; requires_grad and hooks do not matter


def _rebuild_from_type_v2(func: object, new_type: object, args: object, state: object) -> object:
    if func not in _REBUILD_FUNCTIONS or not isinstance(new_type, _TensorType):
        raise FormatError("_rebuild_from_type_v2 wraps something other than a plain tensor")
    if not isinstance(args, tuple):
        raise FormatError("_rebuild_from_type_v2 was given arguments that are not a tuple")
    return func(*args)  # type: ignore[operator]


def _codecs_encode(text: object, encoding: object = "utf-8") -> bytes:
    # Protocol 2 pickles bytes as _codecs.encode(str, "latin1"); no other codec is run.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise FormatError("_codecs.encode is only followed for bytes pickled as latin1 text")
    return text.encode("latin1")


def _bytearray(*args: object) -> bytearray:
    # Guarded: bytearray(10**12) would be a giant allocation from a tiny pickle.
    if not args:
        return bytearray()
    if isinstance(args[0], bytes) and len(args) == 1:
        return bytearray(args[0])
    if isinstance(args[0], str) and len(args) == 2 and args[1] in ("latin1", "latin-1"):
        return bytearray(args[0].encode("latin1"))
    raise FormatError("builtins.bytearray is only followed for bytes")


def _torch_device(*args: object) -> str:
    if not all(isinstance(a, str | int) for a in args):
        raise FormatError("torch.device was given arguments that are not a name and an index")
    return ":".join(str(a) for a in args)


_REBUILD_FUNCTIONS = (_rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)


def _allowed_globals() -> dict[tuple[str, str], object]:
    allowed: dict[tuple[str, str], object] = {
        ("collections", "OrderedDict"): _OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): _TensorType("torch.Tensor"),
        ("torch.nn.parameter", "Parameter"): _TensorType("torch.nn.parameter.Parameter"),
        ("torch.storage", "UntypedStorage"): _StorageType("U8", untyped=True),
        ("torch", "Size"): tuple,
        ("torch", "device"): _torch_device,
        ("_codecs", "encode"): _codecs_encode,
    }
    for name, dtype in _TORCH_STORAGE_TYPES.items():
        allowed["torch", name] = _StorageType(dtype, untyped=False)
    for name, dtype in _TORCH_DTYPES.items():
        allowed["torch", name] = _TorchDtype(name, dtype)
    # Protocol 2 writes Python 3's builtins under their Python 2 module name.
    for module in ("builtins", "__builtin__"):
        allowed[module, "set"] = set
        allowed[module, "frozenset"] = frozenset
        allowed[module, "complex"] = complex
        allowed[module, "bytearray"] = _bytearray
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()


def _find_global(module: str, name: str, where: str) -> Any:
    found = _ALLOWED_GLOBALS.get((module, name))
    if found is None:
        raise FormatError(
            f"{where} names the global {module}.{name}: only weights are read, "
            "as torch.load(weights_only=True) would"
        )
    return found


def _persistent_load(pid: Any, where: str) -> _StorageRecord:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
        raise FormatError(f"{where}: persistent id {pid!r:.80} is not a storage")
    _, storage_type, key, _location, numel = pid
    if not isinstance(storage_type, _StorageType):
        raise FormatError(f"{where}: storage {key!r:.40} has no storage type")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise FormatError(f"{where}: storage {key!r:.40} has a bad key or size")
    return _StorageRecord(key, storage_type.dtype, numel)


# Opcodes whose argument is the value they push (pickletools decodes it from the data,
# whose length bounds it: a declared length past the end is an error, not an allocation).
_PUSH_ARG = frozenset({
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
    "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
})  # fmt: skip
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


def _interpret(data: bytes, where: str) -> object:
    """Follow a pickle's opcodes (pickletools.genops) on a stack of plain values, as
    torch's weights_only unpickler does: no unpickler runs, no class outside
    _ALLOWED_GLOBALS is ever reached, and every callable is one of those stand-ins."""
    stack: list[Any] = []
    marks: list[list[Any]] = []
    memo: dict[int, Any] = {}

    def pop_mark() -> list[Any]:
        nonlocal stack
        items, stack = stack, marks.pop()
        return items

    for opcode, arg, pos in genops(data):
        name = opcode.name
        if name in _PUSH_ARG:
            stack.append(arg)
        elif name in _CONSTANTS:
            stack.append(_CONSTANTS[name])
        elif name in ("PROTO", "FRAME"):
            continue
        elif name == "STOP":
            if len(stack) != 1 or marks:
                raise FormatError(f"{where}: the pickle ends with {len(stack)} values left")
            return stack[0]
        elif name == "MARK":
            marks.append(stack)
            stack = []
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name == "BYTEARRAY8":
            stack.append(bytearray(arg))
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "EMPTY_SET":
            stack.append(set())
        # pop_mark() rebinds stack: take the items first, then append to the stack it restores.
        elif name == "LIST":
            items = pop_mark()
            stack.append(items)
        elif name == "TUPLE":
            items = pop_mark()
            stack.append(tuple(items))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "DICT":
            items = pop_mark()
            stack.append(dict(zip(items[::2], items[1::2], strict=True)))
        elif name == "FROZENSET":
            items = pop_mark()
            stack.append(frozenset(items))
        elif name == "APPEND":
            value = stack.pop()
            stack[-1].append(value)
        elif name == "APPENDS":
            items = pop_mark()
            stack[-1].extend(items)
        elif name == "ADDITEMS":
            items = pop_mark()
            stack[-1].update(items)
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            stack[-1][key] = value
        elif name == "SETITEMS":
            items = pop_mark()
            target = stack[-1]
            for key, value in zip(items[::2], items[1::2], strict=True):
                target[key] = value
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name == "GLOBAL":
            module, _, qualname = arg.partition(" ")
            stack.append(_find_global(module, qualname, where))
        elif name == "STACK_GLOBAL":
            qualname, module = stack.pop(), stack.pop()
            if not isinstance(module, str) or not isinstance(qualname, str):
                raise FormatError(f"{where}: a global at byte {pos} is not named by strings")
            stack.append(_find_global(module, qualname, where))
        elif name == "REDUCE":
            args, func = stack.pop(), stack.pop()
            if not isinstance(args, tuple):
                raise FormatError(f"{where}: a call at byte {pos} has no argument tuple")
            stack.append(func(*args))
        elif name == "NEWOBJ":
            args, cls = stack.pop(), stack.pop()
            if not (isinstance(cls, type) and isinstance(args, tuple)):
                raise FormatError(f"{where}: NEWOBJ at byte {pos} builds no class of ours")
            stack.append(cls.__new__(cls, *args))
        elif name == "BUILD":
            state, target = stack.pop(), stack[-1]
            if isinstance(target, _OrderedDict) and isinstance(state, dict):
                target.__dict__.update(state)  # a state_dict's _metadata
            else:
                raise FormatError(f"{where}: BUILD at byte {pos} sets state this does not read")
        elif name == "BINPERSID":
            stack.append(_persistent_load(stack.pop(), where))
        else:  # PERSID, INST, OBJ, EXT*, out-of-band buffers, NEWOBJ_EX...: not torch's
            raise FormatError(f"{where}: the opcode {name} at byte {pos} is not followed")
    raise FormatError(f"{where}: the pickle has no STOP")


def _unpickle_weights(data: bytes, where: str) -> object:
    _check_pickle_opcodes(data, where)
    try:
        return _interpret(data, where)
    except FormatError:
        raise
    except Exception as e:  # a malformed pickle: an empty stack, a bad memo index, a stand-in
        raise FormatError(f"{where}: not a pickle this reader can follow: {e!r:.200}") from None


def _check_pickle_opcodes(data: bytes, where: str) -> None:
    """Refuse, before following it, a pickle with memo indices that skip ahead or
    extension codes: writers number memo slots in order and torch.save uses none,
    so either means a file made to mislead a reader."""
    slots = 0
    try:
        for opcode, arg, pos in genops(data):
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                if arg > slots:
                    raise FormatError(f"{where}: memo index {arg} at byte {pos} skips ahead")
                slots += arg == slots
            elif opcode.name == "MEMOIZE":
                slots += 1
            elif opcode.name in ("EXT1", "EXT2", "EXT4"):
                raise FormatError(f"{where}: extension code at byte {pos} is not followed")
    except FormatError:
        raise
    except Exception as e:  # pickletools raises ValueError and friends on malformed input
        raise FormatError(f"{where}: malformed pickle: {e!r:.200}") from None


_SCALARS = (str, int, float, bool, bytes, type(None))


@dataclass
class _Flattened:
    tensors: list[tuple[str, _TensorRecord]] = field(default_factory=list)
    metadata: dict[str, MetadataValue] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)

    def add(self, name: str, value: _TensorRecord | MetadataValue) -> None:
        if name in self.names:
            raise FormatError(f"two values of the checkpoint are both named {name!r}")
        self.names.add(name)
        if isinstance(value, _TensorRecord):
            self.tensors.append((name, value))
        else:
            self.metadata[name] = value


def _flatten(obj: object, name: str, out: _Flattened, open_ids: set[int], depth: int) -> None:
    if isinstance(obj, _TensorRecord):
        out.add(name, obj)
        return
    if isinstance(obj, _SCALARS) or isinstance(obj, _TorchDtype | complex):
        out.add(name, _scalar(obj))
        return
    if isinstance(obj, set | frozenset):
        obj = tuple(sorted(obj, key=repr))
    if not isinstance(obj, dict | list | tuple):
        return  # a storage alone, a bytearray: not a tensor, and nothing to show
    if depth >= MAX_NDIM or id(obj) in open_ids:
        raise FormatError(f"the checkpoint's containers nest too deep, or in a cycle, at {name!r}")
    if isinstance(obj, list | tuple) and all(isinstance(v, _SCALARS) for v in obj):
        out.add(name, tuple(_scalar(v) for v in obj))
        return
    open_ids.add(id(obj))
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for key, value in items:
        key_text = key if isinstance(key, str) else str(key)
        _flatten(value, f"{name}.{key_text}" if name else key_text, out, open_ids, depth + 1)
    open_ids.discard(id(obj))


def _scalar(value: object) -> MetadataValue:
    if isinstance(value, bytes):
        return value.hex() if len(value) <= 64 else f"<{len(value)} bytes>"
    if isinstance(value, _TorchDtype | complex):
        return str(value)
    return value  # type: ignore[return-value]


# -- GGUF --------------------------------------------------------------------------------------------

GGUF_DEFAULT_ALIGNMENT = 32

# GGML tensor types: id -> (name, elements per block, bytes per block). Used when
# the gguf package is missing; gguf's own table (which may know newer types) wins.
_GGML_TYPES_FALLBACK: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}  # fmt: skip
# GGML types whose elements are plain little-endian numbers, by safetensors name.
_GGML_PLAIN = frozenset({"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"})

_GGUF_SCALARS: dict[int, tuple[str, struct.Struct]] = {
    0: ("UINT8", struct.Struct("<B")), 1: ("INT8", struct.Struct("<b")),
    2: ("UINT16", struct.Struct("<H")), 3: ("INT16", struct.Struct("<h")),
    4: ("UINT32", struct.Struct("<I")), 5: ("INT32", struct.Struct("<i")),
    6: ("FLOAT32", struct.Struct("<f")), 7: ("BOOL", struct.Struct("<B")),
    10: ("UINT64", struct.Struct("<Q")), 11: ("INT64", struct.Struct("<q")),
    12: ("FLOAT64", struct.Struct("<d")),
}  # fmt: skip
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


@functools.cache
def _gguf_module() -> ModuleType | None:
    try:
        import gguf  # here, not at the top: optional, and a quarter of a second to import
    except ImportError:
        return None
    return gguf


@functools.cache
def _ggml_types() -> dict[int, tuple[str, int, int]]:
    types = dict(_GGML_TYPES_FALLBACK)
    gguf = _gguf_module()
    if gguf is not None:
        for qtype, (block, type_size) in gguf.GGML_QUANT_SIZES.items():
            types[int(qtype)] = (qtype.name, block, type_size)
    return types


def _ggml_dtype(name: str) -> str:
    return name if name in _GGML_PLAIN else f"GGUF_{name}"


@functools.cache
def _gguf_blocks() -> dict[str, tuple[int, int]]:
    return {_ggml_dtype(n): (block, size) for n, block, size in _ggml_types().values()}


def gguf_block_size(dtype: str) -> tuple[int, int]:
    """(elements per block, bytes per block) of a GGUF_* dtype, e.g. (32, 34) for GGUF_Q8_0."""
    found = _gguf_blocks().get(dtype) if dtype.startswith("GGUF_") else None
    if found is None:
        raise InvalidArgumentError(f"{dtype!r} is not a GGUF block type")
    return found


def tensor_nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    """The bytes a tensor of this dtype and C-order shape occupies in its file."""
    numel = math.prod(shape)
    if dtype in ITEMSIZES:
        return numel * ITEMSIZES[dtype]
    block, type_size = gguf_block_size(dtype)
    if not shape or shape[-1] % block:
        raise InvalidArgumentError(
            f"a {dtype} tensor's last dimension must be a multiple of {block}, not shape {shape}"
        )
    return numel // block * type_size


class _HeaderCursor:
    """Reads a header front to back through a buffered window of the file.

    Windows start small and double, so a small header costs one read and a
    header of many MiB (an LLM vocabulary) a handful.
    """

    FIRST_WINDOW = 64 << 10
    MAX_WINDOW = 4 << 20

    def __init__(self, read: ReadAt, size: int, what: str) -> None:
        self._read, self.size, self._what = read, size, what
        self.pos = 0
        self._buf, self._buf_start = b"", 0
        self._window = self.FIRST_WINDOW

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > self.size:
            raise FormatError(
                f"{self._what}: {what} at offset {self.pos} needs {n} bytes, past the end "
                f"of the file ({self.size} bytes): truncated or corrupt"
            )
        if end > MAX_GGUF_HEADER:
            raise FormatError(
                f"{self._what}: {what} at offset {self.pos} is past {MAX_GGUF_HEADER} bytes"
            )
        buf_end = self._buf_start + len(self._buf)
        if end > buf_end:
            # Keep the unread tail and read on from where the buffer ends.
            keep = self._buf[self.pos - self._buf_start :] if self.pos < buf_end else b""
            from_ = max(self.pos, buf_end)
            length = min(max(end - from_, self._window), self.size - from_)
            more = _read_exact(self._read, self.size, from_, length, self._what)
            self._buf, self._buf_start = keep + more, self.pos
            self._window = min(self._window * 2, self.MAX_WINDOW)
        at = self.pos - self._buf_start
        self.pos = end
        return self._buf[at : at + n]

    def unpack(self, fmt: struct.Struct, what: str) -> Any:
        return fmt.unpack(self.take(fmt.size, what))[0]

    def string(self, what: str, errors: str = "strict") -> str:
        n = self.unpack(_U64, f"the length of {what}")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8", errors)
        except UnicodeDecodeError:
            raise FormatError(
                f"{self._what}: {what} at offset {self.pos - n} is not UTF-8"
            ) from None


def gguf_layout(read: ReadAt, size: int) -> ModelLayout:
    """The tensors and metadata of a GGUF file (version 2 or 3, little-endian).

    GGUF lists a tensor's dimensions fastest-varying first; shapes here are in
    C order (that list reversed), like numpy, torch and safetensors. Metadata
    keeps numbers, strings and bools as they are, arrays of up to
    SHOWN_ARRAY_LENGTH elements as tuples and longer ones as an ArraySummary.
    """
    cur = _HeaderCursor(read, size, "GGUF header")
    if cur.take(4, "the magic") != GGUF_MAGIC:
        raise FormatError("not a GGUF file: no GGUF magic")
    version = cur.unpack(_U32, "the version")
    if version not in (2, 3):
        if version & 0xFFFF == 0 and int.from_bytes(version.to_bytes(4, "little"), "big") in (
            1,
            2,
            3,
        ):
            raise FormatError("a big-endian GGUF file: only little-endian GGUF is read")
        if version == 1:
            raise FormatError("GGUF version 1 (32-bit counts) is not read; re-convert the model")
        raise FormatError(f"GGUF version {version} is not read (versions 2 and 3 are)")
    n_tensors = cur.unpack(_U64, "the tensor count")
    n_kv = cur.unpack(_U64, "the metadata count")
    # A tensor info takes at least 24 bytes and a key/value 13: larger counts cannot fit.
    if n_tensors > min(MAX_GGUF_COUNT, cur.remaining // 24):
        raise FormatError(f"GGUF header claims {n_tensors} tensors in a file of {size} bytes")
    if n_kv > min(MAX_GGUF_COUNT, cur.remaining // 13):
        raise FormatError(f"GGUF header claims {n_kv} metadata keys in a file of {size} bytes")

    metadata: dict[str, MetadataValue] = {}
    for index in range(n_kv):
        key = cur.string(f"metadata key {index}")
        vtype = cur.unpack(_U32, f"the type of {key!r}")
        if key in metadata:
            raise FormatError(f"GGUF metadata key {key!r} appears twice")
        metadata[key] = _gguf_value(cur, vtype, key, 0)

    alignment = metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if (
        not isinstance(alignment, int)
        or isinstance(alignment, bool)
        or not 0 < alignment <= 1 << 30
        or alignment & (alignment - 1)
    ):
        raise FormatError(f"GGUF general.alignment {alignment!r} is not a power of two")

    types = _ggml_types()
    infos: list[tuple[str, tuple[int, ...], str, int, int]] = []
    names: set[str] = set()
    for index in range(n_tensors):
        name = cur.string(f"the name of tensor {index}")
        n_dims = cur.unpack(_U32, f"the dimension count of {name!r}")
        if n_dims > MAX_NDIM:
            raise FormatError(f"GGUF tensor {name!r} claims {n_dims} dimensions")
        dims = tuple(cur.unpack(_U64, f"a dimension of {name!r}") for _ in range(n_dims))
        type_id = cur.unpack(_U32, f"the type of {name!r}")
        offset = cur.unpack(_U64, f"the offset of {name!r}")
        if type_id not in types:
            raise FormatError(f"GGUF tensor {name!r} has GGML type {type_id}, unknown here")
        type_name, block, type_size = types[type_id]
        if block > 1 and (not dims or dims[0] % block):
            raise FormatError(
                f"GGUF tensor {name!r}: its row of {dims[0]} is not a whole number of "
                f"{type_name} blocks of {block}"
            )
        if offset % alignment:
            raise FormatError(
                f"GGUF tensor {name!r}: offset {offset} is not aligned to {alignment}"
            )
        if name in names:
            raise FormatError(f"GGUF file has two tensors named {name!r}")
        names.add(name)
        nbytes = math.prod(dims) // block * type_size
        infos.append((name, dims, _ggml_dtype(type_name), offset, nbytes))

    data_start = -(-cur.pos // alignment) * alignment
    tensors = []
    for name, dims, dtype, offset, nbytes in infos:
        start = data_start + offset
        if start + nbytes > size:
            raise FormatError(
                f"GGUF tensor {name!r}: {nbytes} bytes at offset {start} run past the end "
                f"of the file ({size} bytes): truncated?"
            )
        shape = dims[::-1]
        tensors.append(
            TensorInfo(name, dtype, shape, TensorSpan(name, dtype, shape, start, start + nbytes))
        )
    return ModelLayout("gguf", tuple(tensors), metadata)


def _gguf_value(cur: _HeaderCursor, vtype: int, key: str, depth: int) -> MetadataValue:
    if vtype in _GGUF_SCALARS:
        type_name, fmt = _GGUF_SCALARS[vtype]
        value = cur.unpack(fmt, f"the value of {key!r}")
        return _gguf_bool(value, key) if type_name == "BOOL" else value
    if vtype == _GGUF_STRING:
        # backslashreplace: a value that is not UTF-8 still shows, and stays distinct.
        return cur.string(f"the value of {key!r}", errors="backslashreplace")
    if vtype == _GGUF_ARRAY:
        if depth >= 4:
            raise FormatError(f"GGUF metadata {key!r} nests arrays over 4 deep")
        return _gguf_array(cur, key, depth)
    raise FormatError(f"GGUF metadata {key!r} has value type {vtype}, unknown here")


def _gguf_bool(value: int, key: str) -> bool:
    if value not in (0, 1):
        raise FormatError(f"GGUF metadata {key!r} holds {value} as a bool")
    return bool(value)


def _gguf_array(cur: _HeaderCursor, key: str, depth: int) -> MetadataValue:
    etype = cur.unpack(_U32, f"the element type of {key!r}")
    count = cur.unpack(_U64, f"the length of {key!r}")
    digest = hashlib.sha256(struct.pack("<IQ", etype, count))
    shown = count <= SHOWN_ARRAY_LENGTH
    values: list[MetadataValue] = []
    if etype in _GGUF_SCALARS:
        type_name, fmt = _GGUF_SCALARS[etype]
        raw = cur.take(count * fmt.size, f"the elements of {key!r}")  # take bounds the size
        digest.update(raw)
        if shown:
            values = [v for (v,) in fmt.iter_unpack(raw)]
            if type_name == "BOOL":
                values = [_gguf_bool(v, key) for v in values]  # type: ignore[arg-type]
    elif etype in (_GGUF_STRING, _GGUF_ARRAY):
        type_name = "STRING" if etype == _GGUF_STRING else "ARRAY"
        smallest = 8 if etype == _GGUF_STRING else 12
        if count > min(MAX_GGUF_COUNT, cur.remaining // smallest):
            raise FormatError(
                f"GGUF metadata {key!r} claims {count} elements; the file is too short"
            )
        for _ in range(count):
            if etype == _GGUF_STRING:
                n = cur.unpack(_U64, f"a string's length in {key!r}")
                raw = cur.take(n, f"a string in {key!r}")
                digest.update(_U64.pack(n) + raw)
                value: MetadataValue = raw.decode("utf-8", "backslashreplace") if shown else None
            else:
                value = _gguf_array(cur, key, depth + 1)
                digest.update(repr(value).encode())
            if shown:
                values.append(value)
    else:
        raise FormatError(f"GGUF metadata {key!r} is an array of value type {etype}, unknown here")
    if shown:
        return tuple(values)
    return ArraySummary(type_name, count, digest.hexdigest())


# -- Tensor values -----------------------------------------------------------------------------------

_NUMPY_DTYPES = {
    "F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "i1", "U8": "u1", "I16": "<i2",
    "U16": "<u2", "I32": "<i4", "U32": "<u4", "I64": "<i8", "U64": "<u8", "BOOL": "u1",
}  # fmt: skip


def dequantize(dtype: str, raw: bytes | memoryview, shape: tuple[int, ...]) -> np.ndarray:
    """A tensor's values from its raw bytes: float32 (float64 for F64 and integers).

    Plain dtypes (F16, BF16, F32, F64, integers, BOOL) are decoded with numpy;
    GGUF_* block types with gguf.quants.dequantize, which needs the gguf package.
    """
    expected = tensor_nbytes(dtype, shape)
    if len(raw) != expected:
        raise InvalidArgumentError(
            f"a {dtype} tensor of shape {shape} has {expected} bytes, not {len(raw)}"
        )
    if dtype == "BF16":
        halves = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return halves.view(np.float32).reshape(shape)
    if dtype in _NUMPY_DTYPES:
        values = np.frombuffer(raw, dtype=_NUMPY_DTYPES[dtype]).reshape(shape)
        wide = np.float32 if dtype in ("F16", "F32") else np.float64
        return values.astype(wide)
    if not dtype.startswith("GGUF_"):
        raise InvalidArgumentError(f"cannot turn {dtype} bytes into numbers")
    gguf = _gguf_module()
    if gguf is None:
        raise FormatError(f"dequantizing {dtype} needs the gguf package (pip install gguf)")
    block, type_size = gguf_block_size(dtype)
    qtype = gguf.GGMLQuantizationType[dtype.removeprefix("GGUF_")]
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(*shape[:-1], shape[-1] // block * type_size)
    try:
        values = gguf.quants.dequantize(blocks, qtype)
    except NotImplementedError:
        raise FormatError(f"the gguf package cannot dequantize {dtype}") from None
    return np.asarray(values, dtype=np.float32).reshape(shape)


def torch_cuts(read: ReadAt, size: int) -> TensorLayout | None:
    """Where the store cuts a torch.save zip (chunking.layout_cuts): at each storage's
    bytes, as it cuts safetensors at each tensor's. torch names the archive after the
    file and writes a local header before every storage, so content-defined blocks
    mix each tensor with headers that differ between checkpoints of other names; cut
    at the storages, every unchanged tensor keeps its blocks (dedup, and a diff that
    decides it from block ids). None if the file is no torch.save zip read here."""
    if size < len(ZIP_LOCAL_MAGIC) or read(0, len(ZIP_LOCAL_MAGIC)) != ZIP_LOCAL_MAGIC:
        return None
    try:
        layout = torch_layout(read, size)
    except Exception as e:  # any zip may be put: what this cannot read is cut as bytes
        # A put never fails for how it would have cut the file: a zip that is no
        # checkpoint read here (FormatError), or one that trips the reader otherwise
        # (which would be a bug here, not in the file), is cut by content.
        log.log(logging.DEBUG if isinstance(e, FormatError) else logging.WARNING,
                "not cut as a torch checkpoint: %s", e)  # fmt: skip
        return None
    storages: dict[str, TensorSpan] = {}
    for t in layout.tensors:
        s = t.storage
        if s is None or s.end <= s.start or s.key in storages:
            continue
        dtype = t.dtype if t.dtype in DTYPE_SIZES else "U8"  # complex: cut by bytes
        n = (s.end - s.start) // DTYPE_SIZES[dtype]
        storages[s.key] = TensorSpan(s.key, dtype, (n,), s.start, s.end)
    spans = sorted(storages.values(), key=lambda x: x.start)
    if not spans or any(b.start < a.end for a, b in zip(spans, spans[1:], strict=False)):
        return None
    return TensorLayout(spans[0].start, tuple(spans), {})


def read_tensor_bytes(tensor: TensorInfo, read: ReadAt, size: int) -> bytes:
    """A tensor's bytes in C order: its span, or its strided elements gathered from its storage."""
    if tensor.span is not None:
        span = tensor.span
        return _read_exact(read, size, span.start, span.end - span.start, f"tensor {tensor.name!r}")
    view = tensor.storage
    if view is None:
        raise InvalidArgumentError(f"tensor {tensor.name!r} has neither a span nor a storage")
    itemsize = ITEMSIZES[tensor.dtype]
    # Read only the run of the storage that the view touches.
    last = view.offset + sum((n - 1) * s for n, s in zip(tensor.shape, view.stride, strict=True))
    first_byte = view.start + view.offset * itemsize
    raw = _read_exact(
        read, size, first_byte, (last + 1 - view.offset) * itemsize, f"tensor {tensor.name!r}"
    )
    elements = np.frombuffer(raw, dtype=np.dtype((np.void, itemsize)))
    strided = np.lib.stride_tricks.as_strided(
        elements, tensor.shape, tuple(s * itemsize for s in view.stride), writeable=False
    )
    return np.ascontiguousarray(strided).tobytes()


# -- Reading by range ----------------------------------------------------------------------------------


def _read_exact(read: ReadAt, size: int, offset: int, length: int, what: str) -> bytes:
    if offset < 0 or length < 0 or offset + length > size:
        raise FormatError(
            f"{what}: {length} bytes at offset {offset} lie past the end of the file "
            f"({size} bytes): truncated or corrupt"
        )
    if length == 0:
        return b""
    data = read(offset, length)
    if len(data) != length:
        raise FormatError(
            f"{what}: got {len(data)} of {length} bytes at offset {offset}; "
            f"the file is shorter than its size ({size} bytes) says"
        )
    return bytes(data)


def _unpack_within(fmt: struct.Struct, buf: bytes, pos: int, where: str) -> tuple[Any, ...]:
    if pos + fmt.size > len(buf):
        raise FormatError(f"{where}: runs past the end of the zip directory")
    return fmt.unpack_from(buf, pos)


__all__ = [
    "ArraySummary", "ITEMSIZES", "LocalFile", "MetadataValue", "ModelLayout", "ReadAt",
    "StorageView", "TensorInfo", "dequantize", "gguf_block_size", "gguf_layout",
    "model_layout", "read_tensor_bytes", "safetensors_layout", "sniff", "tensor_nbytes",
    "torch_layout",
]  # fmt: skip
