"""Extended attributes of files in the mount, by namespace.

- `user.metric.NAME`: a metric of the file's version (store/metrics.py). Getting
  one shows the current version's value (numbers as metrics.format_value writes
  them); setting or removing one records it on the current version without a
  new version, or, during a write session, on the version the session commits.
- `user.modelfs.*` on version views (versions.py): what an entry resolved to.
- Any other `user.*`: the file's metadata; a change is a new version with the
  same blocks.

Caveats:
- A `user.metric.*` key in a version's metadata (set before metrics existed)
  still shows, unless a metric of that name hides it.
"""

from __future__ import annotations

from ..store import Store, Version
from ..store.format import NAMES_VERSION
from ..store.metrics import Value, check_name, check_value, format_value, parse_value
from ..store.registry import load_record, record_metrics
from .staging import METRIC_KEY_PREFIX

USER_PREFIX = "user."
METRIC_PREFIX = "user.metric."


def metric_name(key: str) -> str | None:
    """The metric an xattr name stands for (None: not a metric's)."""
    return key[len(METRIC_PREFIX) :] if key.startswith(METRIC_PREFIX) else None


def metric_value(name: str, value: bytes) -> Value:
    """An xattr's value as a metric's, checked (InvalidArgumentError naming the problem)."""
    check_name(name)
    return check_value(name, parse_value(value.decode("utf-8", "surrogateescape")))


def as_xattrs(metrics: dict[str, Value]) -> dict[str, str]:
    return {METRIC_PREFIX + k: format_value(v) for k, v in metrics.items()}


def committed_metrics(store: Store, path: str, version: Version) -> dict[str, Value]:
    """A committed version's metrics: recorded with it, updated since. Blocking."""
    record = load_record(store.backend, path, is_dir=False, damaged_ok=True)
    if record is None:
        return dict(version.metrics or {})
    return record.metrics_of(version.version, version.metrics)


def record_metric(store: Store, path: str, version: int, name: str, value: Value | None) -> None:
    """Record (None: remove) a metric of a committed version; no new version. Blocking.

    naming.measure does the same for an address; a path is used here as it is (a
    name holding an '@' would read as an address there).
    """
    store.require_version(NAMES_VERSION, f"recording metrics of {path}@{version}")
    record_metrics(store.backend, path, False, version, {name: value})


def staged_xattrs(metadata: dict[str, str]) -> dict[str, str]:
    """The xattrs of a file being written, from its staged metadata."""
    found = {k: v for k, v in metadata.items() if k.startswith(USER_PREFIX)}
    cut = len(METRIC_KEY_PREFIX)
    found.update(
        {METRIC_PREFIX + k[cut:]: v for k, v in metadata.items() if k.startswith(METRIC_KEY_PREFIX)}
    )
    return found


def staged_key(name: str) -> str:
    """Where a metric set during a write session waits in the staged metadata."""
    return METRIC_KEY_PREFIX + name
