"""Drift over a checkpoint series: each step compared with the one before it.

A series is a list of model versions, in order:

    PATH                 every live version of a stored file (or every snapshot of a
                         directory), oldest first
    PATH@N..PATH@M       versions N to M of one path (`PATH@N..M` too)
    PREFIX/              the models right under a directory of checkpoints (its files,
                         or its subdirectories), in natural order (step-2 before step-10)

Each consecutive pair is compared as compare_models does. Without numbers
(the default for a series) a step reads no tensor data: which tensors changed
is decided from block ids alone (a tensor's blocks are the same, or not), so
a history of hundreds of versions costs one manifest and a header per
version. With numbers, each changed tensor is read and measured.

Caveats:
- Without numbers, "changed" means "its blocks differ": two byte-identical
  tensors stored with different block boundaries (a file first stored
  without its safetensors layout) show as changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..client import Client
from ..errors import InvalidArgumentError, NotFoundError
from ..store.addresses import parse_address
from ..store.paths import version_address
from ..store.refs import Version
from ..store.registry import load_record
from .diff import CHANGED, IDENTICAL, ModelDiff, Options, diff_models, parse_rename
from .rollup import NO_LAYER, layer_label
from .sources import Model, Opener

MAX_STEPS = 10_000  # a series longer than this is refused, not read for hours


@dataclass
class SeriesStep:
    """One step of a series: version b compared with version a, the one before it."""

    a: str  # the earlier model, as resolved (`PATH@N blake3:<hex>`)
    b: str
    diff: ModelDiff

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "diff": self.diff.to_json()}


@dataclass
class Series:
    """Every step of a series. `changed()` and `layer_drift()` are its tables."""

    spec: str  # what was asked for
    models: list[str]  # each version, as resolved, in order
    steps: list[SeriesStep] = field(default_factory=list)
    numbers: bool = False

    def tensor_names(self) -> list[str]:
        names: dict[str, None] = {}
        for step in self.steps:
            for t in step.diff.tensors:
                names.setdefault(t.name, None)
        return sorted(names)

    def changed(self) -> dict[str, list[str]]:
        """For each tensor, its status at each step (identical, changed, added, ...)."""
        out: dict[str, list[str]] = {name: [] for name in self.tensor_names()}
        for step in self.steps:
            status = {t.name: t.status for t in step.diff.tensors}
            for name, row in out.items():
                row.append(status.get(name, ""))
        return out

    def layers(self) -> list[str]:
        labels = {layer_label(name) for name in self.tensor_names()}
        numbered = sorted((x for x in labels if x != NO_LAYER), key=int)
        return numbered + ([NO_LAYER] if NO_LAYER in labels else [])

    def layer_drift(self) -> dict[str, list[float | None]]:
        """For each layer, at each step: its relative L2 change (with numbers), or the
        fraction of its tensors that changed (without)."""
        out: dict[str, list[float | None]] = {layer: [] for layer in self.layers()}
        for step in self.steps:
            rows = {r.label: r for r in step.diff.by_layer()}
            per_layer: dict[str, list[str]] = {}
            for t in step.diff.tensors:
                per_layer.setdefault(layer_label(t.name), []).append(t.status)
            for layer, row in out.items():
                if self.numbers:
                    r = rows.get(layer)
                    row.append(r.stats.rel_l2 if r is not None else None)
                else:
                    statuses = per_layer.get(layer, [])
                    row.append(
                        sum(s != IDENTICAL for s in statuses) / len(statuses) if statuses else None
                    )
        return out

    def frozen(self) -> list[str]:
        """Tensors identical at every step: what training never touched."""
        return [n for n, row in self.changed().items() if row and all(s == IDENTICAL for s in row)]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "series": self.spec,
            "models": self.models,
            "numbers": self.numbers,
            "changed": self.changed(),
            "layer_drift": self.layer_drift(),
            "frozen": self.frozen(),
            "steps": [s.to_json() for s in self.steps],
        }


_RANGE = re.compile(r"^(?P<path>.+)@(?P<first>\d+)\.\.(?:(?P=path)@)?(?P<last>\d+)$")


def _file_versions(client: Client, spec: str) -> tuple[str, list[Version]] | None:
    """A series of one file's versions (PATH, PATH@N..M): its path and versions from one
    read of its ref; None if spec names no file's versions."""
    m = _RANGE.match(spec)
    text = m["path"] if m else spec
    if spec.endswith("/") or (not m and parse_address(text).selector not in (None, "latest")):
        return None
    path = parse_address(text).path
    try:
        ref = client.store.ref(path)
    except NotFoundError:
        return None  # a directory's snapshots, or nothing (series_addresses says which)
    if not m:
        return path, [v for v in ref.versions if v.readable]
    first, last = int(m["first"]), int(m["last"])
    if first >= last:
        raise InvalidArgumentError(f"{spec}: a range runs from an older version to a newer one")
    versions = [ref.get(n) for n in range(first, last + 1)]  # NotFoundError names a gap
    deleted = [v.version for v in versions if v.deleted]
    if deleted:
        raise NotFoundError(f"{spec}: version {deleted[0]} of {path} is a deletion")
    return path, versions


def series_addresses(client: Client, spec: str) -> list[str]:
    """The addresses of a series' versions, in order (see the module docstring)."""
    found = _file_versions(client, spec)
    if found is not None:
        path, versions = found
        return [version_address(path, v.version) for v in versions]
    m = _RANGE.match(spec)
    if m:  # versions of a directory: its numbered snapshots
        first, last = int(m["first"]), int(m["last"])
        if first >= last:
            raise InvalidArgumentError(f"{spec}: a range runs from an older version to a newer one")
        return [version_address(m["path"], n) for n in range(first, last + 1)]
    if spec.endswith("/"):
        return _under(client, spec)
    address = parse_address(spec)
    if address.selector is not None:
        raise InvalidArgumentError(
            f"{spec}: a series is a PATH (all its versions), PATH@N..M, or a PREFIX/"
        )
    path = address.path
    record = load_record(client.store.backend, path, is_dir=True)
    if record is not None and record.snapshots:
        return [version_address(path, s.version) for s in record.snapshots]
    raise NotFoundError(f"{spec}: no file with versions and no directory with snapshots")


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _under(client: Client, prefix: str) -> list[str]:
    norm = prefix.strip("/")
    entries: set[str] = set()
    for f in client.store.list(norm):
        rest = f.path[len(norm) + 1 :] if norm else f.path
        entries.add(rest.split("/", 1)[0])
    if not entries:
        raise NotFoundError(f"{prefix}: nothing stored under it")
    return [f"{norm}/{e}" if norm else e for e in sorted(entries, key=_natural)]


def compare_series(
    spec: str,
    *,
    store: Client,
    numbers: bool = False,
    atol: float = 0.0,
    rtol: float = 0.0,
    renames: tuple[str, ...] = (),
    progress: Callable[[int], None] | None = None,
) -> Series:
    """Drift over a series of versions (see the module docstring)."""
    found = _file_versions(store, spec)
    addresses = series_addresses(store, spec) if found is None else [
        version_address(found[0], v.version) for v in found[1]
    ]  # fmt: skip
    if len(addresses) < 2:
        raise InvalidArgumentError(f"{spec}: a series needs two versions or more, it has one")
    if len(addresses) > MAX_STEPS:
        raise InvalidArgumentError(
            f"{spec}: {len(addresses)} versions; compare at most {MAX_STEPS} (use PATH@N..M)"
        )
    options = Options(atol, rtol, tuple(parse_rename(r) for r in renames), numbers)
    with Opener(store) as opener:
        series = Series(spec, [], numbers=numbers)
        previous: Model | None = None
        for i, address in enumerate(addresses):
            model = (
                opener.open(address)
                if found is None
                else opener.file_version(found[0], found[1][i])
            )
            series.models.append(model.label)
            if previous is not None:
                diff = diff_models(previous, model, options)
                series.steps.append(SeriesStep(previous.label, model.label, diff))
                if progress is not None:
                    progress(1)
            previous = model
    return series


__all__ = ["CHANGED", "IDENTICAL", "Series", "SeriesStep", "compare_series", "series_addresses"]
