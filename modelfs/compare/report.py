"""Showing a comparison to people and to programs: text, CSV, records and heatmaps.

This module owns how a ModelDiff (diff.py) or a Series (series.py) is shown;
it computes nothing the engine does not. `rows` flattens a diff into one
record per tensor (what `--fail-if` clauses and the CSV are made of),
`text` and `series_text` are what a terminal shows, `plot` and
`plot_series` draw PNG heatmaps.

How numbers read in text: three significant digits, scientific below 1e-3
and from 1e3 on (`1.23e-05`); fractions as percentages; a cosine within 1e-3
of 1 as `1-2.3e-07`, since three digits would show every fine-tune as 1.
A layer or module-kind row that holds identical tensors never read shows its
rel L2 as an upper bound (`≤`) and its cosine as a lower bound (`≥`), as
rollup.py explains.

Caveats:
- matplotlib is optional: only plot and plot_series import it, and raise
  ModelfsError when it is missing.
- A diff made without numbers has no rel L2 to draw: plot refuses it (plot_series
  draws the share of tensors changed instead).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import textwrap
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentError, ModelfsError
from ..store.query import Where, parse_where
from ..units import human
from .diff import (
    ABSENT,
    ADDED,
    CHANGED,
    IDENTICAL,
    INCOMPARABLE,
    REMOVED,
    RESHAPED,
    RETYPED,
    ModelDiff,
)
from .rollup import NO_LAYER, layer_kind_table, layer_label, module_kind
from .series import Series
from .stats import DeltaStats

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Record = dict[str, int | float | str | None]

# The columns of rows() and csv_text(), in this order; the CLI's --fail-if sees these names.
COLUMNS = (
    "name", "status", "layer", "kind", "dtype_a", "dtype_b", "shape_a", "shape_b",
    "decided_by", "file_a", "file_b",
    "n", "max_abs", "mean_abs", "rel_l2", "cosine", "frac_changed", "frac_bit_identical",
    "nonfinite",
)  # fmt: skip
STAT_COLUMNS = COLUMNS[COLUMNS.index("n") :]
SERIES_COLUMNS = ("step", "a", "b", "tensor", "layer", "status")

NAME_WIDTH = 56  # longer tensor names are cut in the middle, so columns stay aligned
VALUE_WIDTH = 48  # metadata and config values, shortened the same way
ELLIPSIS = "…"
STRUCTURAL = (ADDED, REMOVED, RESHAPED, RETYPED, INCOMPARABLE)
MEASURED = (CHANGED, RESHAPED, RETYPED)  # differing tensors that may have numbers
STATUS_ORDER = (CHANGED, RESHAPED, RETYPED, INCOMPARABLE, ADDED, REMOVED, IDENTICAL)
MAX_LAYERS_PER_STEP = 8  # series_text names at most this many moved layers per step
NEUTRAL, OVERFLOW = "#c8c8c8", "#202020"  # heatmap cells: identical (0); inf (A was zero)


# -- records -------------------------------------------------------------------------------------


def rows(diff: ModelDiff) -> list[Record]:
    """One flat record per tensor, keys COLUMNS, None where a value is unknown.

    Numbers stay numbers (an inf rel_l2 is float inf, not the string "inf" of
    to_json) so that where-clauses compare them; shapes are strings like
    "384x1536" ("()" for a scalar)."""
    out = []
    for t in diff.tensors:
        record: Record = {
            "name": t.name,
            "status": t.status,
            "layer": layer_label(t.name),
            "kind": module_kind(t.name),
            "dtype_a": t.dtype_a,
            "dtype_b": t.dtype_b,
            "shape_a": _shape(t.shape_a),
            "shape_b": _shape(t.shape_b),
            "decided_by": t.decided_by or None,
            "file_a": t.file_a or None,  # '' is a single-file model's only file
            "file_b": t.file_b or None,
        }
        record.update(_stat_fields(t.stats))
        out.append(record)
    return out


def _stat_fields(s: DeltaStats | None) -> Record:
    if s is None:
        return dict.fromkeys(STAT_COLUMNS)
    return {
        "n": s.n, "max_abs": s.max_abs, "mean_abs": s.mean_abs, "rel_l2": s.rel_l2,
        "cosine": s.cosine, "frac_changed": s.frac_changed,
        "frac_bit_identical": s.frac_bit_identical, "nonfinite": s.nonfinite,
    }  # fmt: skip


def _shape(shape: tuple[int, ...] | None) -> str | None:
    if shape is None:
        return None
    return "x".join(str(d) for d in shape) if shape else "()"


def check_gate(clause: str) -> Where:
    """A --fail-if clause, parsed and checked: QueryError if it does not parse, and
    InvalidArgumentError if it names a field no row has (a gate on `rel_l3` would never
    fail: a typo must not pass CI)."""
    where = parse_where(clause)
    unknown = sorted(where.fields - set(COLUMNS))
    if unknown:
        raise InvalidArgumentError(
            f"--fail-if {clause!r}: no tensor has a field {unknown[0]!r}; the fields are "
            + ", ".join(COLUMNS)
        )
    return where


def failing(diff: ModelDiff, clause: str) -> list[Record]:
    """The rows() that the where-clause matches (store/query.py's language); the clause is
    checked first (check_gate), even when the diff has no tensors."""
    where = check_gate(clause)
    return [r for r in rows(diff) if where.matches(r)]


def csv_text(diff: ModelDiff) -> str:
    """rows() as CSV: a header line, then one line per tensor; unknown values are empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for record in rows(diff):
        writer.writerow({k: "" if v is None else v for k, v in record.items()})
    return buffer.getvalue()


# -- numbers as text -----------------------------------------------------------------------------


def number(x: float | None) -> str:
    """A compact number: 3 significant digits, scientific below 1e-3 and from 1e3."""
    if x is None:
        return "-"
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e3 else f"{x:.2e}"


def percent(x: float | None) -> str:
    """A fraction as a percentage that never rounds a change away (>99.9%, <0.01%)."""
    if x is None:
        return "-"
    if x == 0 or x == 1:
        return f"{x * 100:.0f}%"
    if x * 100 < 0.01:
        return "<0.01%"
    shown = f"{x * 100:.3g}%"
    return ">99.9%" if shown == "100%" else shown


def cosine(x: float | None) -> str:
    """A cosine; within 1e-3 of 1 as `1-d` (3 digits would show 0.9999997 as 1)."""
    if x is None or x == 1 or not 0 < 1 - x < 1e-3:
        return number(x)
    return f"1-{1 - x:.1e}"


def size(n: int) -> str:
    """Bytes in binary units, as every command shows them."""
    return human(n)


def shorten(text: str, width: int) -> str:
    """text cut in the middle to width characters, with an ellipsis."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + ELLIPSIS + text[len(text) - (width - 1 - head) :]


def _value(v: Any) -> str:
    if v is ABSENT:
        return "(absent)"
    if v is None:
        return "null"
    try:
        shown = json.dumps(v, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        shown = str(v)
    return shorten(" ".join(shown.split()), VALUE_WIDTH)


def _table(headers: Sequence[str], body: Iterable[Sequence[str]], left: int = 1) -> list[str]:
    """Aligned lines, indented by two; the first `left` columns align left, the rest right."""
    body = list(body)
    widths = [max(len(r[i]) for r in [headers, *body]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return ("  " + "  ".join(parts)).rstrip()

    return [line(headers), *(line(r) for r in body)]


def _layer_name(label: str) -> str:
    return "no layer" if label == NO_LAYER else f"layer {label}"


# -- a diff as text ------------------------------------------------------------------------------


def text(diff: ModelDiff, *, top: int | None = 20) -> str:
    """What `modelfs diff A B` prints: a header, then structure, metadata, configs, other
    files, the tensors that differ (the `top` largest rel L2 first; all when None) and roll-ups
    by layer and by module kind. An identical pair is one line."""
    if top is not None and top < 0:
        raise InvalidArgumentError(f"top must be >= 0 or None, not {top}")
    if diff.identical:
        return _identical_line(diff) + "\n"
    lines = [_header(diff)]
    for section in (
        _structure(diff),
        _changes("metadata", diff.metadata),
        *(_changes(name, changes) for name, changes in diff.configs.items()),
        _files(diff),
        _tensor_table(diff, top),
        _rollup(diff, "layer", layer_label, untouched=True),
        _rollup(diff, "module kind", module_kind, untouched=False),
    ):
        if section:
            lines += ["", *section]
    return "\n".join(lines) + "\n"


def _identical_line(diff: ModelDiff) -> str:
    where = f"{diff.a} -> {diff.b}: identical"
    if not diff.tensors:
        n = len(diff.files)
        return f"{where} ({n} file{'s' * (n != 1)}, compared as bytes)"
    n = len(diff.tensors)
    how = {t.decided_by for t in diff.tensors}
    if how == {"blocks"} and diff.bytes_read == 0:
        return f"{where}, {n} tensors (decided from block ids, without reading tensor data)"
    if how <= {"blocks", "hash"} and diff.bytes_read == 0:
        return f"{where}, {n} tensors (the same file content: its hash decided)"
    return f"{where}, {n} tensors (read {size(diff.bytes_read)} to compare)"


def _header(diff: ModelDiff) -> str:
    if diff.tensors:
        counts, total, what = diff.counts(), len(diff.tensors), "tensor"
    else:
        counts, total, what = {}, len(diff.files), "file"
        for f in diff.files:
            counts[f.status] = counts.get(f.status, 0) + 1
    ordered = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts) - set(STATUS_ORDER))
    shown = ", ".join(f"{counts[s]} {s}" for s in ordered)
    return (
        f"{diff.a} -> {diff.b}: {total} {what}{'s' * (total != 1)}: {shown}; "
        f"read {size(diff.bytes_read)}"
    )


def _structure(diff: ModelDiff) -> list[str]:
    moved = [t for t in diff.tensors if t.status in STRUCTURAL]
    if not moved:
        return []
    moved.sort(key=lambda t: (STRUCTURAL.index(t.status), t.name))
    body = []
    for t in moved:
        a = f"{t.dtype_a} {_shape(t.shape_a)}" if t.dtype_a is not None else ""
        b = f"{t.dtype_b} {_shape(t.shape_b)}" if t.dtype_b is not None else ""
        what = f"{a} -> {b}" if a and b else a or b
        body.append((t.status, shorten(t.name, NAME_WIDTH), what))
    return ["structure:", *_table(("status", "tensor", "dtype shape"), body, left=3)[1:]]


def _changes(title: str, changes: Sequence[Any]) -> list[str]:
    if not changes:
        return []
    return [f"{title}:", *(f"  {c.key}: {_value(c.a)} -> {_value(c.b)}" for c in changes)]


def _files(diff: ModelDiff) -> list[str]:
    differ = [f for f in diff.files if f.status != IDENTICAL]
    if not differ:
        return []
    body = []
    for f in differ:
        if f.status == CHANGED:
            what = f"{_bytes(f.size_a)} -> {_bytes(f.size_b)}"
            if f.changed_bytes is not None:
                what += f", {f.changed_bytes:,} bytes differ"
            if f.changed_blocks is not None:
                what += f", {f.changed_blocks:,} blocks new"
        else:
            what = _bytes(f.size_b if f.status == ADDED else f.size_a)
        body.append((shorten(f.name or "(the file)", NAME_WIDTH), f.status, what))
    title = "files that differ:" if diff.tensors == [] else "other files that differ:"
    return [title, *_table(("file", "status", "size"), body, left=3)[1:]]


def _bytes(n: int | None) -> str:
    return "?" if n is None else f"{n:,} bytes"


def _by_rel_l2(rel_l2: float | None, name: str) -> tuple[int, float, str]:
    """Sort key: the largest rel L2 first (inf first of all), unknown (None, NaN) last."""
    if rel_l2 is None or math.isnan(rel_l2):
        return (1, 0.0, name)
    return (0, -rel_l2, name)


def _tensor_table(diff: ModelDiff, top: int | None) -> list[str]:
    differ = [t for t in diff.tensors if t.status in MEASURED]
    if not differ:
        return []
    differ.sort(key=lambda t: _by_rel_l2(t.stats.rel_l2 if t.stats else None, t.name))
    shown = differ if top is None else differ[:top]
    body = [(shorten(t.name, NAME_WIDTH), t.status, *_stat_cells(t.stats)) for t in shown]
    title = f"tensors that differ ({len(differ)} of {len(diff.tensors)}, largest rel L2 first):"
    if all(t.stats is None for t in differ):
        title = f"tensors that differ ({len(differ)} of {len(diff.tensors)}, not measured):"
    headers = ("name", "status", "max|Δ|", "mean|Δ|", "rel L2", "cosine", "changed", "bit-same")
    out = [title, *_table(headers, body, left=2)]
    if len(shown) < len(differ):
        out.append(f"  ... {len(differ) - len(shown)} more left out; --all shows them")
    return out


def _stat_cells(s: DeltaStats | None) -> tuple[str, ...]:
    if s is None:
        return ("-",) * 6
    return (
        number(s.max_abs), number(s.mean_abs), number(s.rel_l2), cosine(s.cosine),
        percent(s.frac_changed), percent(s.frac_bit_identical),
    )  # fmt: skip


def _rollup(diff: ModelDiff, what: str, key: Callable[[str], str], *, untouched: bool) -> list[str]:
    """Rows of the groups (layers or module kinds) where some tensor differs, with the merged
    statistics of their measured tensors; then how many groups were untouched."""
    groups: dict[str, list[str]] = {}  # label -> statuses, in first-seen order
    stats: dict[str, DeltaStats] = {}
    unread: dict[str, int] = {}
    measured: set[str] = set()  # groups where a differing tensor has numbers
    for t in diff.tensors:
        label = key(t.name)
        groups.setdefault(label, []).append(t.status)
        if t.stats is not None:
            stats[label] = stats.get(label, DeltaStats()) + t.stats
            unread[label] = unread.get(label, 0) + (t.stats.n_unread > 0)
            if t.status != IDENTICAL:
                measured.add(label)
    labels = list(groups)
    if what == "layer":
        labels.sort(key=lambda x: (1, 0) if x == NO_LAYER else (0, int(x)))
    touched = [x for x in labels if any(s != IDENTICAL for s in groups[x])]
    if what != "layer":  # kinds have no natural order: the most moved first
        touched.sort(key=lambda x: _by_rel_l2(stats[x].rel_l2 if x in measured else None, ""))
    if not touched:
        return []
    body, any_bound = [], False
    for label in touched:
        statuses = groups[label]
        row: tuple[str, ...] = (
            shorten(label, NAME_WIDTH),
            f"{sum(s != IDENTICAL for s in statuses)}/{len(statuses)}",
        )
        if label in measured:
            s, bound = stats[label], unread.get(label, 0) > 0 and stats[label].n_read > 0
            any_bound = any_bound or bound
            row += (
                number(s.max_abs), number(s.mean_abs),
                ("≤" if bound else "") + number(s.rel_l2),
                ("≥" if bound else "") + cosine(s.cosine),
                percent(s.frac_changed),
            )  # fmt: skip
        else:
            row += ("-",) * 5
        body.append(row)
    headers = (what, "differ", "max|Δ|", "mean|Δ|", "rel L2", "cosine", "changed")
    plural = "module kinds" if what == "module kind" else "layers"
    out = [f"by {what} ({len(touched)} of {len(labels)} {plural} differ):", *_table(headers, body)]
    if any_bound:
        out.append("  (≤, ≥: bounds over the tensors read; identical ones were not)")
    rest = [x for x in labels if x not in touched]
    if untouched:
        if rest:
            names = [x for x in rest if x != NO_LAYER]
            if NO_LAYER in rest:
                names.append("the tensors with no layer")
            out.append(f"  untouched: {len(rest)} of {len(labels)} layers ({', '.join(names)})")
        else:
            out.append("  untouched: none, every layer differs")
    elif rest:
        out.append(f"  untouched: {len(rest)} of {len(labels)} {plural}")
    return out


# -- a series as text and CSV --------------------------------------------------------------------


def version_labels(models: Sequence[str]) -> list[str]:
    """Short names of a series' versions: `@N` when all are versions of one path, else each
    path's last component (a PREFIX/ series of checkpoints)."""
    pinned = [m.split(" ", 1)[0] for m in models]
    paths = {p.rpartition("@")[0] for p in pinned}
    if len(paths) == 1 and all("@" in p for p in pinned) and "" not in paths:
        return ["@" + p.rpartition("@")[2] for p in pinned]
    # A live directory's pinned address ends in its content hash: its name says enough.
    last = [p.rstrip("/").rsplit("/", 1)[-1].split("@blake3:", 1)[0] for p in pinned]
    return (
        last if len(set(last)) == len(last) else [p.rstrip("/").rsplit("/", 1)[-1] for p in pinned]
    )


def series_text(series: Series) -> str:
    """What `modelfs diff --series` prints: each step's moved layers (rel L2 with numbers, the
    share of the layer's tensors changed without), the frozen tensors by layer, and the step
    where each layer moved most."""
    names = version_labels(series.models)
    drift = series.layer_drift()
    amount = number if series.numbers else percent
    measure = "rel L2 per layer" if series.numbers else "share of each layer's tensors changed"
    lines = [
        f"series {series.spec}: {len(series.models)} versions, {len(series.steps)} steps "
        f"({measure})"
    ]
    step_names = [f"{names[i]} -> {names[i + 1]}" for i in range(len(series.steps))]
    # With numbers, a layer's rel L2 leaves out its unread identical tensors: an upper bound.
    bounded = [
        {r.label for r in step.diff.by_layer() if r.unread_tensors and r.stats.n_read}
        if series.numbers else set()
        for step in series.steps
    ]  # fmt: skip

    def shown_amount(step: int, layer: str, value: float) -> str:
        return ("≤" if layer in bounded[step] else "") + amount(value)

    width = max((len(s) for s in step_names), default=0)
    for i, step in enumerate(series.steps):
        counts = step.diff.counts()
        total = len(step.diff.tensors)
        differ = total - counts.get(IDENTICAL, 0)
        head = f"  step {i + 1}  {step_names[i].ljust(width)}  "
        if differ == 0 and step.diff.identical:
            lines.append(head + "nothing changed")
            continue
        shown = ", ".join(
            f"{counts[s]} {s}" for s in STATUS_ORDER if s in counts and s != IDENTICAL
        )
        moved = [(layer, row[i]) for layer, row in drift.items() if row[i]]
        moved.sort(key=lambda m: _by_rel_l2(m[1], m[0]))
        named = ", ".join(
            f"{_layer_name(layer)} {shown_amount(i, layer, v)}"
            for layer, v in moved[:MAX_LAYERS_PER_STEP]
        )
        if len(moved) > MAX_LAYERS_PER_STEP:
            named += f", and {len(moved) - MAX_LAYERS_PER_STEP} more layers"
        summary = f"{differ} of {total} tensors differ ({shown})"
        if not step.diff.tensors:  # files that are no model: compared as bytes
            changed = [f for f in step.diff.files if f.status != IDENTICAL]
            summary = f"{len(changed)} of {len(step.diff.files)} files differ (compared as bytes)"
        elif not step.diff.identical and differ == 0:
            summary = f"tensors identical; only {_what_else(step.diff)} changed"
        lines.append(head + summary + (f": {named}" if named else ""))
    if any(bounded):
        lines.append(
            "  (≤: an upper bound; identical tensors were not read, so a layer's norm ||A|| "
            "counts only its changed tensors)"
        )
    lines += ["", *_frozen(series)]
    lines += ["", "where each layer moved most:"]
    body = []
    for layer, row in drift.items():
        steps = [j for j, v in enumerate(row) if v]
        if not steps:
            body.append((_layer_name(layer), "never moved", "", ""))
            continue
        best = min(steps, key=lambda j: _by_rel_l2(row[j], ""))
        body.append(
            (_layer_name(layer), f"step {best + 1} ({step_names[best]})",
             shown_amount(best, layer, row[best]),
             f"moved at {len(steps)} of {len(row)} steps")
        )  # fmt: skip
    lines += _table(("layer", "most at", "amount", "moves"), body, left=2)[1:]
    return "\n".join(lines) + "\n"


def _what_else(diff: ModelDiff) -> str:
    """What differs in a diff whose tensors are all identical."""
    parts = ["metadata"] if diff.metadata else []
    parts += [name for name, changes in diff.configs.items() if changes]
    if any(f.status != IDENTICAL for f in diff.files):
        parts.append("other files")
    return ", ".join(parts) or "other files"


def _frozen(series: Series) -> list[str]:
    frozen = series.frozen()
    total = len(series.tensor_names())
    if not frozen:
        return [f"frozen (identical at every step): none of {total} tensors"]
    per_layer: dict[str, list[str]] = {}
    for name in frozen:
        per_layer.setdefault(layer_label(name), []).append(name)
    sizes: dict[str, int] = {}
    for name in series.tensor_names():
        sizes[layer_label(name)] = sizes.get(layer_label(name), 0) + 1
    out = [f"frozen (identical at every step): {len(frozen)} of {total} tensors"]
    for layer in series.layers():
        names = per_layer.get(layer, [])
        if not names:
            continue
        if len(names) == sizes[layer]:
            whole = "its only tensor" if len(names) == 1 else f"all {len(names)} tensors"
            out.append(f"  {_layer_name(layer)}: {whole}")
        else:
            listed = ", ".join(shorten(n, NAME_WIDTH) for n in names[:3])
            more = f", and {len(names) - 3} more" if len(names) > 3 else ""
            out.append(f"  {_layer_name(layer)}: {len(names)} of {sizes[layer]} ({listed}{more})")
    return out


def series_csv(series: Series) -> str:
    """The series in long format: one line per step and tensor (step counts from 1), with
    rel_l2 as a last column when the series was measured (empty where it was not)."""
    columns = SERIES_COLUMNS + (("rel_l2",) if series.numbers else ())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for i, step in enumerate(series.steps):
        for t in step.diff.tensors:
            line: list[Any] = [i + 1, step.a, step.b, t.name, layer_label(t.name), t.status]
            if series.numbers:
                line.append("" if t.stats is None else t.stats.rel_l2)
            writer.writerow(line)
    return buffer.getvalue()


# -- heatmaps ------------------------------------------------------------------------------------


def plot(diff: ModelDiff, path: str | os.PathLike[str]) -> None:
    """A PNG heatmap of rel L2 by layer (rows) and module kind (columns), log-scaled; grey
    cells are identical, blank ones have no such tensor."""
    unmeasured = [t.name for t in diff.tensors if t.status in MEASURED and t.stats is None]
    if unmeasured:
        raise InvalidArgumentError(
            f"{len(unmeasured)} tensors that differ were not measured (compared without "
            "numbers): there is no rel L2 to plot; compare with numbers"
        )
    table = layer_kind_table(diff.compared())
    if not table.layers:
        raise InvalidArgumentError("no tensor was compared: nothing to plot")
    grid = table.grid(lambda row: row.stats.rel_l2)
    _heatmap(
        path, grid,
        rows=[_axis_layer(x) for x in table.layers], columns=list(table.kinds),
        title="relative L2 change ||B-A|| / ||A||, by layer and module kind",
        subject=(diff.a, diff.b), xlabel="module kind", ylabel="layer", log=True,
        bar_label="rel L2", missing="no such tensor",
    )  # fmt: skip


def plot_series(series: Series, path: str | os.PathLike[str]) -> None:
    """A PNG heatmap of each layer (rows) at each step (columns): rel L2 on a log scale with
    numbers, else the share of the layer's tensors changed (0..1)."""
    drift = series.layer_drift()
    if not drift or not series.steps:
        raise InvalidArgumentError(f"{series.spec}: no step to plot")
    names = [x.lstrip("@") for x in version_labels(series.models)]
    steps = [f"{names[i]}→{names[i + 1]}" for i in range(len(series.steps))]
    measure = "relative L2 change" if series.numbers else "share of the layer's tensors changed"
    _heatmap(
        path, [drift[layer] for layer in drift],
        rows=[_axis_layer(x) for x in drift], columns=steps,
        title=f"{measure}, each version against the one before",
        subject=(series.spec,), xlabel="versions", ylabel="layer", log=series.numbers,
        bar_label="rel L2" if series.numbers else "tensors changed",
        missing="layer absent",
    )  # fmt: skip


def _axis_layer(label: str) -> str:
    return "none" if label == NO_LAYER else label


def _matplotlib() -> tuple[type[Figure], Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ModelfsError("plotting needs matplotlib: pip install matplotlib") from None
    return Figure, FigureCanvasAgg


def _heatmap(
    path: str | os.PathLike[str],
    grid: Sequence[Sequence[float | None]],
    *,
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    subject: tuple[str, ...],
    xlabel: str,
    ylabel: str,
    log: bool,
    bar_label: str,
    missing: str,
) -> None:
    """Draws grid (rows x columns; None is a missing cell) to a PNG at path. subject: what
    was compared (A and B, or a series), shown under the title."""
    Figure, FigureCanvasAgg = _matplotlib()
    import numpy as np
    from matplotlib.colors import ListedColormap, LogNorm, Normalize
    from matplotlib.patches import Patch

    values = np.array([[np.nan if v is None else float(v) for v in r] for r in grid], float)
    values = values.reshape(len(rows), len(columns))
    zero, over = values == 0, np.isposinf(values)
    positive = np.isfinite(values) & (values > 0)

    # Sizes in inches from the labels, so that constrained layout never has to squeeze.
    columns = [shorten(c, 40) for c in columns]
    font = 8 if len(columns) <= 24 else 6
    char = font * 0.62 / 72
    cell = min(0.32, max(0.06, 18 / max(len(columns), 1)))
    row_cell = min(0.32, max(0.06, 16 / max(len(rows), 1)))
    width = 1.2 + max(len(r) for r in rows) * char + len(columns) * cell + 1.4
    height = 1.4 + len(rows) * row_cell + max(len(c) for c in columns) * char + 0.5
    width, height = min(max(width, 5.0), 40.0), min(max(height, 3.5), 40.0)

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # Agg for this figure only: pyplot's global backend is untouched
    ax = fig.add_subplot()
    ax.set_facecolor("white")  # missing cells stay blank
    extent = (-0.5, len(columns) - 0.5, len(rows) - 0.5, -0.5)
    common = {"aspect": "auto", "interpolation": "nearest", "extent": extent}
    for mask, colour in ((zero, NEUTRAL), (over, OVERFLOW)):
        if mask.any():
            ax.imshow(np.ma.masked_where(~mask, np.zeros_like(values)),
                      cmap=ListedColormap([colour]), vmin=0, vmax=1, **common)  # fmt: skip
    if positive.any():
        low, high = float(values[positive].min()), float(values[positive].max())
        if log:
            norm: Normalize = LogNorm(
                low / 10 if low == high else low, high * 10 if low == high else high
            )
        else:
            norm = Normalize(0.0, 1.0)
        image = ax.imshow(
            np.ma.masked_where(~positive, values), cmap="viridis", norm=norm, **common
        )
        bar = fig.colorbar(image, ax=ax, shrink=0.9)
        bar.set_label(bar_label + (" (log scale)" if log else ""), fontsize=font + 1)
        bar.ax.tick_params(labelsize=font)

    every_x = max(1, math.ceil(len(columns) / 60))
    every_y = max(1, math.ceil(len(rows) / 80))
    upright = max(len(c) for c in columns) * char <= cell * every_x * 0.9
    ax.set_xticks(
        range(0, len(columns), every_x), columns[::every_x], rotation=0 if upright else 90,
        fontsize=font,
    )  # fmt: skip
    ax.set_yticks(range(0, len(rows), every_y), rows[::every_y], fontsize=font)
    ax.set_xticks([x - 0.5 for x in range(len(columns) + 1)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(len(rows) + 1)], minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel(xlabel, fontsize=font + 1)
    ax.set_ylabel(ylabel, fontsize=font + 1)
    # Prose wraps; model labels (paths, hashes) are cut in the middle instead.
    fit = max(24, int(width * 72 / ((font + 1) * 0.6)) - 4)
    side = (fit - 3) // len(subject)
    heading = [*textwrap.wrap(title, fit), " → ".join(shorten(x, side) for x in subject)]
    ax.set_title("\n".join(heading), fontsize=font + 1, loc="left")

    legend = [Patch(facecolor=NEUTRAL, label="identical (0)")] if zero.any() else []
    if over.any():
        legend.append(Patch(facecolor=OVERFLOW, label="inf (A was zero)"))
    if (np.isnan(values)).any():
        legend.append(Patch(facecolor="white", edgecolor="#888888", label=missing))
    if legend:
        fig.legend(handles=legend, loc="outside lower center", ncols=len(legend),
                   fontsize=font, frameon=False)  # fmt: skip
    fig.savefig(os.fspath(path), format="png")


__all__ = [
    "COLUMNS", "csv_text", "failing", "plot", "plot_series", "rows",
    "series_csv", "series_text", "text", "version_labels",
]  # fmt: skip
