"""Rolling per-tensor comparisons up into layers and module kinds.

This module owns reading a layer index and a module kind out of a tensor name
(`layer_of`, `module_kind`) and grouping (name, DeltaStats) pairs by them:
`by_layer`, `by_module_kind`, and `layer_kind_table` (layer x module kind, for
a heatmap of which layers a fine-tune touched). Groups merge their tensors'
sums exactly (DeltaStats +), so a layer's rel_l2 is sqrt(sum ||delta||^2) /
sqrt(sum ||A||^2) over its tensors.

Tensors with no layer index (embeddings, final norms, heads) go under the
layer label NO_LAYER ("-"), placed after the numbered layers.

Identical tensors that were never read (DeltaStats.unread_identical) count in
`tensors` and `identical_tensors` and also in `unread_tensors`; a row's rel_l2
and cosine then cover only its read tensors (an upper and a lower bound), as
stats.py explains, and `unread_tensors` says how many were left out.

Caveats:
- Stacks that share layer numbers are merged: an encoder-decoder's
  `encoder.layers.3` and `decoder.layers.3` (T5, BART, Whisper), or a
  vision tower's and a language model's layer 3, fall in one layer row.
- The module kind keeps any index below the layer (T5's `layer.1.`, a MoE
  model's `experts.7.`), so each expert or sub-layer is its own kind.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .stats import DeltaStats

NO_LAYER = "-"

# Name components that are followed by the index of a repeated block:
# Llama/Mistral `layers`, BERT `layer`, GPT-2/Falcon/Bloom `h`, ViT/RWKV `blocks`,
# T5 `block`, GGUF `blk`, CLIP `resblocks`, diffusion transformers' `transformer_blocks`.
LAYER_CONTAINERS = frozenset(
    {
        "layers",
        "layer",
        "h",
        "blocks",
        "block",
        "blk",
        "resblocks",
        "transformer_blocks",
        "single_transformer_blocks",
    }
)

_INTEGER = re.compile(r"[0-9]+")


def _layer_position(parts: list[str]) -> int | None:
    """The index in parts of the component that is the layer number, if any.

    The first container word followed by an integer wins (T5's
    `block.0.layer.1` is layer 0). With no container word, a name with exactly
    one integer component (an nn.Sequential stack, `net.3.weight`, or a
    container word not listed) takes that integer as its layer; with two or
    more the name is ambiguous and has no layer.
    """
    for i, part in enumerate(parts[:-1]):
        if part in LAYER_CONTAINERS and _INTEGER.fullmatch(parts[i + 1]):
            return i + 1
    integers = [i for i, part in enumerate(parts) if _INTEGER.fullmatch(part)]
    return integers[0] if len(integers) == 1 else None


def layer_of(name: str) -> int | None:
    """The layer index in a tensor name: `model.layers.12.mlp.up_proj.weight` -> 12."""
    parts = name.split(".")
    position = _layer_position(parts)
    return None if position is None else int(parts[position])


def module_kind(name: str) -> str:
    """What a tensor is within its layer: the name after the layer index.

    `encoder.layer.3.attention.self.query.weight` -> `attention.self.query.weight`.
    A name with no layer (or nothing after it) loses its integer components instead.
    """
    parts = name.split(".")
    position = _layer_position(parts)
    if position is not None and position + 1 < len(parts):
        return ".".join(parts[position + 1 :])
    return ".".join(part for part in parts if not _INTEGER.fullmatch(part))


def layer_label(name: str) -> str:
    """The layer of a tensor as a row label: its index as text, or NO_LAYER."""
    layer = layer_of(name)
    return NO_LAYER if layer is None else str(layer)


@dataclass(frozen=True)
class RollupRow:
    """The merged comparison of a group of tensors."""

    label: str  # the layer label (an index or NO_LAYER) or the module kind
    stats: DeltaStats
    tensors: int
    changed_tensors: int  # with at least one element changed beyond tolerance
    identical_tensors: int  # bit-identical throughout, read or not
    unread_tensors: int  # identical and never read: outside rel_l2's and cosine's sums

    def add(self, stats: DeltaStats) -> RollupRow:
        """This row with one more tensor."""
        return RollupRow(
            label=self.label,
            stats=self.stats + stats,
            tensors=self.tensors + 1,
            changed_tensors=self.changed_tensors + (stats.changed > 0),
            identical_tensors=self.identical_tensors + stats.identical,
            unread_tensors=self.unread_tensors + (stats.n_unread > 0),
        )

    def to_json(self) -> dict[str, Any]:
        """label, tensors, changed_tensors, identical_tensors, unread_tensors, then the
        keys of DeltaStats.to_json."""
        return {
            "label": self.label,
            "tensors": self.tensors,
            "changed_tensors": self.changed_tensors,
            "identical_tensors": self.identical_tensors,
            "unread_tensors": self.unread_tensors,
            **self.stats.to_json(),
        }


def _empty_row(label: str) -> RollupRow:
    return RollupRow(label, DeltaStats(), 0, 0, 0, 0)


def _layer_order(label: str) -> tuple[int, int]:
    return (1, 0) if label == NO_LAYER else (0, int(label))


def by_layer(tensors: Iterable[tuple[str, DeltaStats]]) -> list[RollupRow]:
    """One row per layer, in layer order, then the NO_LAYER row if any tensor has no layer."""
    rows: dict[str, RollupRow] = {}
    for name, stats in tensors:
        label = layer_label(name)
        rows[label] = rows.get(label, _empty_row(label)).add(stats)
    return [rows[label] for label in sorted(rows, key=_layer_order)]


def by_module_kind(tensors: Iterable[tuple[str, DeltaStats]]) -> list[RollupRow]:
    """One row per module kind, across layers, in the order kinds first appear."""
    rows: dict[str, RollupRow] = {}
    for name, stats in tensors:
        kind = module_kind(name)
        rows[kind] = rows.get(kind, _empty_row(kind)).add(stats)
    return list(rows.values())


@dataclass(frozen=True)
class LayerKindTable:
    """Rows are layers (in layer order, NO_LAYER last), columns module kinds (first seen first).

    A cell is None where that layer has no tensor of that kind.
    """

    layers: tuple[str, ...]
    kinds: tuple[str, ...]
    cells: dict[tuple[str, str], RollupRow]

    def cell(self, layer: str, kind: str) -> RollupRow | None:
        return self.cells.get((layer, kind))

    def grid(self, value: Callable[[RollupRow], float | None]) -> list[list[float | None]]:
        """value(cell) for every layer (rows) and kind (columns); None for missing cells.

        For a heatmap of rel_l2: `table.grid(lambda row: row.stats.rel_l2)`.
        """
        return [
            [None if (row := self.cell(layer, kind)) is None else value(row) for kind in self.kinds]
            for layer in self.layers
        ]


def layer_kind_table(tensors: Iterable[tuple[str, DeltaStats]]) -> LayerKindTable:
    """The layer x module kind table of a comparison: one cell per (layer, kind) present."""
    cells: dict[tuple[str, str], RollupRow] = {}
    kinds: dict[str, None] = {}  # a dict keeps first-seen order
    for name, stats in tensors:
        layer, kind = layer_label(name), module_kind(name)
        kinds.setdefault(kind)
        cells[layer, kind] = cells.get((layer, kind), _empty_row(kind)).add(stats)
    layers = sorted({layer for layer, _ in cells}, key=_layer_order)
    return LayerKindTable(tuple(layers), tuple(kinds), cells)
