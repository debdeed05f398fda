"""modelfs: a deduplicating, verified, content-addressed store for model files.

The Python API in brief:

    import modelfs
    store = modelfs.open_store("/data/models", create=True)
    store.put("bert.safetensors", "local/model.safetensors")
    f = store.open("bert.safetensors")          # lazy, seekable, read-only
    modelfs.save_model("bert", params, store=store)
    params = modelfs.load_model("bert", store=store)
    d = modelfs.compare_models("bert@1", "bert@champion", store=store)  # tensor by tensor
    store.forget("ckpt/", keep_last=2, keep_best=1, by="accuracy")   # retention by rule
    store.gc()                                   # reclaim what nothing kept reaches
"""

from .client import Client, init_store, open_store
from .errors import (
    CollectedError,
    CollectionInProgressError,
    CorruptionError,
    ForgottenError,
    FormatError,
    InvalidPathError,
    ModelfsError,
    NotFoundError,
    PinLimitError,
    StoreNotFoundError,
    UnsupportedFormatError,
)
from .models import load_model, save_model, select_model, update_model

__version__ = "0.1.0"

__all__ = [
    "Client", "CollectedError", "CollectionInProgressError", "CorruptionError",
    "ForgottenError", "FormatError", "InvalidPathError", "ModelfsError",
    "NotFoundError", "PinLimitError", "StoreNotFoundError", "UnsupportedFormatError", "init_store",
    "load_model", "open_store", "save_model", "select_model", "update_model",
    "compare_models", "compare_series",
]  # fmt: skip


def __getattr__(name: str) -> object:
    # Comparison is imported when first used: `import modelfs` stays quick for the CLI.
    if name == "compare_models":
        from .compare.diff import compare_models

        return compare_models
    if name == "compare_series":
        from .compare.series import compare_series

        return compare_series
    raise AttributeError(f"module 'modelfs' has no attribute {name!r}")
