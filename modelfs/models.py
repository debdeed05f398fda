"""save_model, load_model, update_model: dicts of tensors in, safetensors files out.

For code that mounts nothing. A model is stored as a safetensors file (never
pickle) at NAME.safetensors in the store, which is split at tensor
boundaries, so update_model's new version uploads only the tensors that
changed. load_model also loads a directory model, as Hugging Face lays one
out (DIR/model.safetensors, or the shards DIR/model.safetensors.index.json
names), all from one version of the directory. Tensors are numpy arrays, or torch tensors when torch is installed;
load_model returns the kind that was saved unless told otherwise.

Versions can carry metrics (save_model(..., metrics={"accuracy": 0.91})), and
load_model takes a version as a number, a tag or alias name or blake3:<hex>,
or picks the best version by its metrics (select= a where-clause, order_by=);
select_model says which version that is without loading it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .client import Client, open_store
from .errors import FormatError, InvalidArgumentError, ModelfsError, NotFoundError
from .store import PutResult
from .store.addresses import Resolved
from .store.metrics import Value
from .store.paths import version_address
from .store.snapshots import join
from .store.tensorfile import DTYPE_SIZES, TensorBytes, encode_header, parse_layout

FRAMEWORK_KEY = "modelfs.framework"

_NUMPY_TO_DTYPE = {
    np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8",
    np.dtype(np.int16): "I16", np.dtype(np.uint16): "U16", np.dtype(np.float16): "F16",
    np.dtype(np.int32): "I32", np.dtype(np.uint32): "U32", np.dtype(np.float32): "F32",
    np.dtype(np.int64): "I64", np.dtype(np.uint64): "U64", np.dtype(np.float64): "F64",
}  # fmt: skip
_DTYPE_TO_NUMPY = {v: k for k, v in _NUMPY_TO_DTYPE.items()}


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def _tensor_bytes(name: str, value: Any) -> tuple[TensorBytes, str]:
    torch = _torch()
    if torch is not None and isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        dtype = {
            torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
            torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
            torch.float32: "F32", torch.int64: "I64", torch.float64: "F64",
        }.get(t.dtype)  # fmt: skip
        if dtype is None:
            raise InvalidArgumentError(
                f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot hold"
            )
        raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.empty(0, np.uint8)
        return TensorBytes(dtype, tuple(t.shape), raw.tobytes()), "torch"
    arr = np.asarray(value)
    if arr.dtype.name == "bfloat16":  # ml_dtypes
        dtype = "BF16"
    else:
        dtype = _NUMPY_TO_DTYPE.get(
            arr.dtype.newbyteorder("=") if arr.dtype.byteorder == ">" else arr.dtype
        )
    if dtype is None:
        raise InvalidArgumentError(
            f"tensor {name!r} has dtype {arr.dtype}, which safetensors cannot hold"
        )
    # asarray, not ascontiguousarray: that turns a 0-d (scalar) tensor into shape (1,).
    arr = np.asarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False), order="C")
    return TensorBytes(dtype, arr.shape, arr.tobytes()), "numpy"


def encode_model(params: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file holding params."""
    if not isinstance(params, Mapping) or not params:
        raise InvalidArgumentError("params must be a non-empty dict of tensor name to tensor")
    tensors: dict[str, TensorBytes] = {}
    kinds = set()
    for name, value in params.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise InvalidArgumentError(f"invalid tensor name {name!r}")
        tensors[name], kind = _tensor_bytes(name, value)
        kinds.add(kind)
    meta = dict(metadata or {})
    meta[FRAMEWORK_KEY] = "torch" if "torch" in kinds else "numpy"
    header = encode_header(tensors, meta)
    return header + b"".join(tensors[n].data for n in sorted(tensors))


_READ_STEP = 64 << 20


def _read_whole(client: Client, address: str) -> bytearray:
    """A stored file's bytes, read straight into one buffer that the tensors loaded from it
    then share (no copy of the file: a model costs its size in memory, once)."""
    with client.open(address) as f:
        buffer = bytearray(f.size)
        view = memoryview(buffer)
        done = 0
        while done < len(buffer):
            # In steps: a read of the whole file would hold every decoded block at once.
            n = f.readinto(view[done : done + _READ_STEP])
            if not n:
                raise FormatError(f"{address} ended after {done} of {len(buffer)} bytes")
            done += n
    return buffer


def decode_model(data: bytes | bytearray, framework: str | None = None) -> dict[str, Any]:
    """The tensors of a safetensors file, as numpy arrays or torch tensors. From a
    bytearray the tensors are views of it, writable, with no copy; from bytes, copies."""
    layout = parse_layout(data, len(data))
    if layout is None:
        raise FormatError("not a valid safetensors file")
    framework = framework or layout.metadata.get(FRAMEWORK_KEY, "numpy")
    torch = _torch() if framework == "torch" else None
    if framework == "torch" and torch is None:
        framework = "numpy"
    out: dict[str, Any] = {}
    shared = isinstance(data, bytearray)  # ours to hand out: tensors view it
    whole = memoryview(data)
    for t in layout.tensors:
        raw = whole[t.start : t.end]
        if torch is not None:
            tdtype = {
                "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
                "F16": torch.float16, "BF16": torch.bfloat16, "I32": torch.int32,
                "F32": torch.float32, "I64": torch.int64, "F64": torch.float64,
            }.get(t.dtype)  # fmt: skip
            if tdtype is None:
                raise FormatError(f"tensor {t.name!r} has dtype {t.dtype}, which torch cannot hold")
            tensor = (
                torch.frombuffer(raw if shared else bytearray(raw), dtype=tdtype)
                if len(raw)
                else torch.empty(0, dtype=tdtype)
            )
            out[t.name] = tensor.reshape(t.shape)
            continue
        np_dtype = _DTYPE_TO_NUMPY.get(t.dtype)
        if np_dtype is None and t.dtype == "BF16":
            try:
                import ml_dtypes  # type: ignore[import-not-found]

                np_dtype = np.dtype(ml_dtypes.bfloat16)
            except ImportError:
                raise FormatError(
                    f"tensor {t.name!r} is bfloat16, which numpy cannot hold: "
                    "install torch or ml_dtypes, or pass framework='torch'"
                ) from None
        if np_dtype is None or DTYPE_SIZES.get(t.dtype) != np_dtype.itemsize:
            raise FormatError(f"tensor {t.name!r} has dtype {t.dtype}, which numpy cannot hold")
        array = np.frombuffer(raw, dtype=np_dtype.newbyteorder("<")).reshape(t.shape)
        out[t.name] = array if shared else array.copy()
    return out


def model_path(name: str) -> str:
    return name if name.endswith(".safetensors") else name + ".safetensors"


WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"  # a sharded model's weight_map


def _stored_file(client: Client, name: str) -> bool:
    try:
        client.store.ref(model_path(name))
        return True
    except NotFoundError:
        return False


def _load_directory(client: Client, resolved: Resolved, framework: str | None) -> dict[str, Any]:
    """The tensors of a directory version: its model.safetensors, or every shard its
    index names, each at the version the snapshot holds (so shards never mix versions)."""
    snap = resolved.snapshot
    assert snap is not None

    def read(inner: str, whole: bool = False) -> bytes | bytearray:
        f = snap.file(inner)
        if f is None:
            raise NotFoundError(f"{resolved.pinned} holds no {inner}")
        address = version_address(join(snap.path, inner), f.version)
        return _read_whole(client, address) if whole else client.read(address)

    if snap.file(WEIGHTS_FILE) is not None:
        return decode_model(read(WEIGHTS_FILE, whole=True), framework)
    if snap.file(INDEX_FILE) is None:
        raise NotFoundError(
            f"{resolved.pinned} is a directory with neither {WEIGHTS_FILE} nor {INDEX_FILE}"
        )
    try:
        weight_map = json.loads(read(INDEX_FILE))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise FormatError(f"{resolved.pinned}/{INDEX_FILE} is not a shard index: {e}") from None
    out: dict[str, Any] = {}
    for shard in shards:
        for key, tensor in decode_model(read(shard, whole=True), framework).items():
            if key in out:
                raise FormatError(f"{resolved.pinned}: tensor {key!r} is in two shards")
            out[key] = tensor
    return out


def _client(store: str | os.PathLike[str] | Client | None) -> tuple[Client, bool]:
    if isinstance(store, Client):
        return store, False
    url = store if store is not None else os.environ.get("MODELFS_STORE")
    if not url:
        raise ModelfsError("no store given: pass store=URL or set MODELFS_STORE")
    return open_store(url, create=True), True


def save_model(
    name: str,
    params: Mapping[str, Any],
    *,
    store: str | os.PathLike[str] | Client | None = None,
    metadata: Mapping[str, str] | None = None,
    message: str = "",
    metrics: Mapping[str, Value] | None = None,
) -> PutResult:
    """Store params (name -> tensor) as a new version of NAME.safetensors, with metrics
    (name -> number or string) recorded in the same commit."""
    data = encode_model(params, metadata)
    client, owned = _client(store)
    try:
        return client.put(model_path(name), data, message=message, metrics=metrics)
    finally:
        if owned:
            client.close()


def _selection_target(client: Client, name: str) -> str:
    """What select_model ranks: a prefix as given; NAME.safetensors if it is stored; else
    the directory NAME (a model of several files)."""
    if name.endswith("/"):
        return name
    path = model_path(name)
    try:
        client.store.ref(path)
        return path
    except NotFoundError:
        pass
    if client.store.is_dir(name):
        return name + "/"
    raise NotFoundError(f"no model {name!r} in the store: neither {path} nor a directory {name}/")


def _select(client: Client, name: str, where: str | None, order_by: str | None) -> Resolved:
    target = _selection_target(client, name)
    chosen = client.select(target, where=where, order_by=order_by, limit=1,
                           all_versions=True)  # fmt: skip
    if not chosen.ranked:
        clause = f" matches {where!r}" if where else " exists"
        raise NotFoundError(
            f"no version of {target}{clause} ({chosen.considered} versions looked at)"
        )
    return client.resolve(chosen.ranked[0].address)


def select_model(
    name_or_prefix: str,
    *,
    store: str | os.PathLike[str] | Client | None = None,
    where: str | None = None,
    order_by: str | None = None,
) -> Resolved:
    """The best version of a model (NAME.safetensors, or a directory, or every version under
    a prefix ending in '/') that matches where, ranked by order_by (default: newest first):
    its path, version, content_hash and metrics; `.pinned` is an address of just it.
    NotFoundError if none matches."""
    client, owned = _client(store)
    try:
        return _select(client, name_or_prefix, where, order_by)
    finally:
        if owned:
            client.close()


def load_model(
    name: str,
    *,
    store: str | os.PathLike[str] | Client | None = None,
    version: int | str | None = None,
    framework: str | None = None,
    select: str | None = None,
    order_by: str | None = None,
) -> dict[str, Any]:
    """The tensors of a stored model; framework 'numpy' or 'torch'.

    name: NAME.safetensors, or a directory model (DIR/model.safetensors or the shards
    of DIR/model.safetensors.index.json). version: a number, a tag or alias name, or
    blake3:<hex> (default: the current version; of a directory, its snapshot).
    select (a where-clause) and order_by instead pick the best version of the model
    by its metrics (as select_model does), which is then loaded exactly."""
    if framework not in (None, "numpy", "torch"):
        raise InvalidArgumentError(f"framework must be 'numpy' or 'torch', not {framework!r}")
    if version is not None and (select is not None or order_by is not None):
        raise InvalidArgumentError("give a version or select/order_by, not both")
    if isinstance(version, bool) or not isinstance(version, int | str | None):
        raise InvalidArgumentError(f"version must be a number or a name, not {version!r}")
    client, owned = _client(store)
    try:
        if select is not None or order_by is not None:
            best = _select(client, name, select, order_by)
            if best.is_dir:
                return _load_directory(client, best, framework)
            data = _read_whole(client, best.pinned)
        elif (
            name.endswith(".safetensors")
            or _stored_file(client, name)
            or (not client.store.is_dir(name))
        ):
            path = model_path(name)
            data = _read_whole(
                client, version_address(path, version) if version is not None else path
            )
        else:
            address = version_address(name, version) if version is not None else name
            resolved = client.resolve(address)
            if not resolved.is_dir:
                raise NotFoundError(f"{address} is {resolved.pinned}, not a directory model")
            return _load_directory(client, resolved, framework)
    finally:
        if owned:
            client.close()
    return decode_model(data, framework)


def update_model(
    name: str,
    new_params: Mapping[str, Any],
    *,
    store: str | os.PathLike[str] | Client | None = None,
    message: str = "",
) -> PutResult:
    """Merge new_params into the current version and store the result as a new version.

    Tensors not named in new_params are kept; only changed tensors make new blocks.
    """
    client, owned = _client(store)
    try:
        data = client.read(model_path(name))
        layout = parse_layout(data, len(data))
        if layout is None:
            raise FormatError(f"{model_path(name)} is not a valid safetensors file")
        current = decode_model(data)
        merged = {**current, **dict(new_params)}
        meta = {k: v for k, v in layout.metadata.items() if k != FRAMEWORK_KEY}
        return client.put(model_path(name), encode_model(merged, meta), message=message)
    finally:
        if owned:
            client.close()
