"""scripts/finetune.py: the checkpoint series of a real MiniLM fine-tune the benchmark stores.

Small runs (2 checkpoints of 1 step each) of the real training loop, compared
tensor by tensor with the original MiniLM weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import finetune  # noqa: E402

TRAINED_IN_FROZEN = ("encoder.layer.5.", "pooler.")


def _header(path: Path) -> bytes:
    """The safetensors header: names, dtypes, shapes and offsets of every tensor, and metadata."""
    with open(path, "rb") as f:
        return f.read(int.from_bytes(f.read(8), "little"))


def _tensors(path: Path) -> dict[str, np.ndarray]:
    with safe_open(str(path), "np") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def _differing(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> set[str]:
    return {name for name in a if a[name].tobytes() != b[name].tobytes()}


@pytest.fixture(scope="module")
def original(minilm_path: Path) -> dict[str, np.ndarray]:
    return _tensors(minilm_path)


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return finetune.make_checkpoints(
        tmp_path_factory.mktemp("frozen"), "frozen", n=2, steps_per_checkpoint=1
    )


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return finetune.make_checkpoints(
        tmp_path_factory.mktemp("full"), "full", n=2, steps_per_checkpoint=1
    )


def test_checkpoints_keep_the_layout_of_the_original_file(
    frozen: list[Path], full: list[Path], minilm_path: Path
) -> None:
    assert len(frozen) == 2 and len(full) == 2
    reference = load_file(str(minilm_path))
    for path in frozen + full:
        # Same names, dtypes, shapes, order, offsets and metadata: byte-identical headers.
        assert _header(path) == _header(minilm_path), path.name
        assert path.stat().st_size == minilm_path.stat().st_size
        loaded = load_file(str(path))
        assert list(loaded) == list(reference)
        for name, t in loaded.items():
            assert (t.dtype, t.shape) == (reference[name].dtype, reference[name].shape), name
            assert bool(t.isfinite().all()), name


def test_frozen_mode_changes_only_the_top_layer_and_the_pooler(
    frozen: list[Path], original: dict[str, np.ndarray]
) -> None:
    trained = {name for name in original if name.startswith(TRAINED_IN_FROZEN)}
    assert len(trained) == 18  # 16 tensors of encoder.layer.5, 2 of the pooler
    checkpoints = [_tensors(p) for p in frozen]
    for tensors in checkpoints:
        assert _differing(original, tensors) == trained
    # Training goes on between checkpoints: the second differs from the first in each of them.
    assert _differing(checkpoints[0], checkpoints[1]) == trained


def test_full_mode_changes_almost_every_float_tensor(
    full: list[Path], original: dict[str, np.ndarray]
) -> None:
    floats = {name for name, t in original.items() if t.dtype == np.float32}
    assert len(floats) == 103
    checkpoints = [_tensors(p) for p in full]
    for tensors in checkpoints:
        changed = _differing(original, tensors)
        assert changed <= floats, "an integer buffer (position_ids) changed"
        assert len(changed) >= 100, sorted(floats - changed)
        # The changes are real training updates, not rounding noise: the embeddings
        # and the bottom layer move by far more than an fp32 ulp.
        for name in (
            "embeddings.word_embeddings.weight",
            "encoder.layer.0.attention.self.query.weight",
        ):
            assert np.abs(tensors[name] - original[name]).max() > 1e-6, name
    assert len(_differing(checkpoints[0], checkpoints[1])) >= 100


def test_a_second_call_returns_the_cached_checkpoints_and_new_parameters_retrain(
    tmp_path: Path,
) -> None:
    import torch

    threads = torch.get_num_threads()
    first = finetune.make_checkpoints(tmp_path, "frozen", n=2, steps_per_checkpoint=1, seed=0)
    assert torch.get_num_threads() == threads, "the caller's thread count was changed"
    stamps = [p.stat().st_mtime_ns for p in first]
    digests = [finetune._sha256(p) for p in first]
    manifest = json.loads((tmp_path / "frozen-manifest.json").read_text())
    assert manifest["files"] == {p.name: d for p, d in zip(first, digests, strict=True)}

    again = finetune.make_checkpoints(tmp_path, "frozen", n=2, steps_per_checkpoint=1, seed=0)
    assert again == first
    assert [p.stat().st_mtime_ns for p in again] == stamps, "retrained instead of using the cache"

    # Another seed trains again, into other weights.
    other = finetune.make_checkpoints(tmp_path, "frozen", n=2, steps_per_checkpoint=1, seed=1)
    assert [finetune._sha256(p) for p in other] != digests

    # Back to seed 0: trains again and, with fixed seeds, gives the same bytes as the first time.
    replay = finetune.make_checkpoints(tmp_path, "frozen", n=2, steps_per_checkpoint=1, seed=0)
    assert [p.stat().st_mtime_ns for p in replay] != stamps
    assert [finetune._sha256(p) for p in replay] == digests

    # A damaged checkpoint is not served from the cache: it is made again.
    with open(replay[1], "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    repaired = finetune.make_checkpoints(tmp_path, "frozen", n=2, steps_per_checkpoint=1, seed=0)
    assert [finetune._sha256(p) for p in repaired] == digests


def test_the_script_prints_what_it_made(
    frozen: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # The module's run again, through the command line: from the cache, a line per file.
    stamps = [p.stat().st_mtime_ns for p in frozen]
    assert (
        finetune.main([str(frozen[0].parent), "--mode", "frozen", "--n", "2", "--steps", "1"]) == 0
    )
    out = capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in frozen] == stamps
    for path in frozen:
        assert (
            f"{path.name}: 90.9 MB, 18 of 104 tensors (7.7 MB) differ from MiniLM, loss" in out
        ), out


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        finetune.make_checkpoints(tmp_path, "partial")
    with pytest.raises(ValueError):
        finetune.make_checkpoints(tmp_path, "full", n=0)
    assert list(tmp_path.iterdir()) == []
