"""modelfs: a deduplicating, verified, content-addressed store for model files.

The Python API in brief:

    import modelfs
    store = modelfs.open_store("/data/models", create=True)
    store.put("bert.safetensors", "local/model.safetensors")
    f = store.open("bert.safetensors")          # lazy, seekable, read-only
    modelfs.save_model("bert", params, store=store)
    params = modelfs.load_model("bert", store=store)
"""

from .client import Client, init_store, open_store
from .errors import (
    CorruptionError,
    FormatError,
    InvalidPathError,
    ModelfsError,
    NotFoundError,
    StoreNotFoundError,
    UnsupportedFormatError,
)
from .models import load_model, save_model, select_model, update_model

__version__ = "0.1.0"

__all__ = [
    "Client", "CorruptionError", "FormatError", "InvalidPathError", "ModelfsError",
    "NotFoundError", "StoreNotFoundError", "UnsupportedFormatError", "init_store",
    "load_model", "open_store", "save_model", "select_model", "update_model",
]  # fmt: skip
