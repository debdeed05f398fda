"""modelfs against the mounts users would pick instead, on one SeaweedFS, in one run.

Peers (scripts/peers.py): JuiceFS (SQLite metadata, zstd), rclone mount
(--vfs-cache-mode full), s3fs-fuse, and modelfs itself, each over its own
bucket of the same SeaweedFS, reading and writing the same files. Every
timed workload runs `repeats` times, the peers in a rotated order each time,
and the report quotes medians and the ratio of modelfs to each peer.

Workloads (cold = tool cache emptied, fresh mount, page cache dropped):
  write        copy the model file into the mount until it is durable
  read_cold    sequential read, 16 MiB at a time
  read_warm    the same from the tool's disk cache (remounted, page cache dropped)
  read_page    the same again at once (kernel page cache)
  first_tensor safetensors safe_open + get_tensor of a tensor deep in the file, cold
  load_cold    safetensors load_file of the whole model, cold; load_warm from the disk cache
  resources    the daemon's peak RSS, and its CPU seconds per GiB of the cold read
  series       five checkpoints of a real MiniLM fine-tune (frozen layers, full), each
               written to a fresh bucket: bytes in the bucket after each checkpoint
  bf16         MiniLM in bf16 written to a fresh bucket: bytes stored / raw size

Caveats:
- All on one 2-core machine: the tools compete with SeaweedFS for the CPU, so
  absolute figures are low; the ratios measured in one run are the result.
- "Bytes uploaded per checkpoint" is the growth of the bucket per checkpoint;
  a tool that rewrote objects would upload more than that.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peers import Peer, make_peers

CHUNK = 16 << 20
MB = 1e6
GIB = 1 << 30


def drop_page_cache() -> None:
    """Drop the kernel page cache (root), so the next read comes from the mount's daemon."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        raise RuntimeError(f"cannot drop the page cache ({e}): run the benchmark as root") from e


def read_all(path: Path) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            n += len(chunk)
    return n


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (and their waited-for children) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def peak_rss(pids: list[int]) -> int:
    """The sum of the processes' peak resident set sizes (VmHWM), in bytes."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def daemon_pids(peer: Peer, timeout: float = 5.0) -> list[int]:
    """The peer's daemon processes; a daemon may take a moment to show up under its name."""
    deadline = time.monotonic() + timeout
    while not (pids := peer.daemon_pids()) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not pids:
        raise RuntimeError(f"no daemon process found for {peer.name}")
    return pids


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def cold_mount(peer: Peer) -> Path:
    peer.unmount()
    peer.drop_cache()
    drop_page_cache()
    return peer.mount()


def warm_mount(peer: Peer) -> Path:
    peer.unmount()
    drop_page_cache()
    return peer.mount()


def write_durable(peer: Peer, source: Path, name: str) -> float:
    """Seconds to copy source into the mount until the tool says it is in the bucket."""
    target = peer.mountpoint / name
    size = source.stat().st_size

    def copy() -> None:
        with open(source, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        peer.wait_durable(target, size)

    return timed(copy)


def one_repeat(peer: Peer, source: Path, tensor: str, r: int) -> dict[str, float]:
    """Every timed workload once on peer, with a file of its own for this repeat."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    size = source.stat().st_size
    name = f"model-{r}.safetensors"
    out: dict[str, float] = {}
    peer.mount()
    read_all(source)  # the source is in the page cache: the write measures the mount
    out["write"] = size / write_durable(peer, source, name) / MB

    mnt = cold_mount(peer)
    pids = daemon_pids(peer)
    cpu0 = cpu_seconds(pids)
    out["read_cold"] = size / timed(lambda: read_all(mnt / name)) / MB
    out["cpu_s_per_gib"] = (cpu_seconds(pids) - cpu0) / (size / GIB)
    out["read_page"] = size / timed(lambda: read_all(mnt / name)) / MB
    out["rss_mb"] = peak_rss(pids) / MB  # the daemon that wrote nothing, read it all
    mnt = warm_mount(peer)
    out["read_warm"] = size / timed(lambda: read_all(mnt / name)) / MB

    mnt = cold_mount(peer)

    def first_tensor() -> None:
        with safe_open(str(mnt / name), "np") as f:
            f.get_tensor(tensor)

    out["first_tensor_s"] = timed(first_tensor)
    mnt = cold_mount(peer)
    out["load_cold_s"] = timed(lambda: load_file(str(mnt / name)))
    mnt = warm_mount(peer)
    out["load_warm_s"] = timed(lambda: load_file(str(mnt / name)))
    peer.unmount()
    return out


def stored_series(peer: Peer, files: list[Path]) -> list[int]:
    """Bucket bytes after each file is written into a fresh mount, durably."""
    peer.setup()
    peer.mount()
    sizes = []
    try:
        for i, f in enumerate(files, 1):
            write_durable(peer, f, f"checkpoint-{i}.safetensors")
            sizes.append(peer.bucket_bytes())
    finally:
        peer.unmount()
    return sizes


def run(
    server: Any,
    work: Path,
    models: list[Path],
    tensor: str,
    series: dict[str, list[Path]],
    bf16: Path,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """All workloads on all peers; models[r] is the file of repeat r (content differs)."""
    peers = make_peers(server, work / "main")
    results: dict[str, Any] = {"versions": {}, "runs": {p.name: [] for p in peers}}
    try:
        for p in peers:
            p.setup()
            results["versions"][p.name] = p.version()
        for r, model in enumerate(models):
            order = peers[r % len(peers) :] + peers[: r % len(peers)]
            for p in order:
                log(f"repeat {r + 1}/{len(models)}: {p.name}")
                results["runs"][p.name].append(one_repeat(p, model, tensor, r))
        results["median"] = {
            name: {k: statistics.median(run[k] for run in runs) for k in runs[0]}
            for name, runs in results["runs"].items()
        }
    finally:
        for p in peers:
            p.unmount()
    results["series"] = {}
    for mode, files in series.items():
        log(f"checkpoint series ({mode})")
        results["series"][mode] = {
            p.name: stored_series(p, files) for p in make_peers(server, work / f"series-{mode}")
        }
    log("bf16")
    raw = bf16.stat().st_size
    results["bf16"] = {
        p.name: {"raw": raw, "stored": stored_series(p, [bf16])[0]}
        for p in make_peers(server, work / "bf16")
    }
    return results


# the report

HIGHER_IS_BETTER = {
    "write": "write MB/s", "read_cold": "cold read MB/s", "read_warm": "warm read MB/s",
    "read_page": "page-cache re-read MB/s",
}  # fmt: skip
LOWER_IS_BETTER = {
    "first_tensor_s": "time to first tensor, cold (s)", "load_cold_s": "load_file, cold (s)",
    "load_warm_s": "load_file, warm (s)", "rss_mb": "daemon peak RSS (MB)",
    "cpu_s_per_gib": "daemon CPU s per GiB read",
}  # fmt: skip
GOALS = {  # issue 5: modelfs / JuiceFS
    "read_cold": (">=", 1.5), "read_warm": (">=", 1.0), "first_tensor_s": ("<=", 0.5),
    "write": (">=", 1.0),
}  # fmt: skip


def ratio_table(results: dict[str, Any]) -> list[str]:
    med = results["median"]
    peers = [n for n in med if n != "modelfs"]
    lines = [
        "| measurement | " + " | ".join(med) + " | " + " | ".join(f"vs {p}" for p in peers) + " |",
        "|---" * (1 + len(med) + len(peers)) + "|",
    ]
    for key, label in {**HIGHER_IS_BETTER, **LOWER_IS_BETTER}.items():
        cells = [f"{med[n][key]:.2f}" if med[n][key] < 10 else f"{med[n][key]:.0f}" for n in med]
        ratios = [
            f"{med['modelfs'][key] / med[p][key]:.2f}x" if med[p][key] else "-" for p in peers
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return lines


def series_table(results: dict[str, Any]) -> list[str]:
    lines = []
    for mode, by_peer in results["series"].items():
        names = list(by_peer)
        lines += [
            f"Checkpoint series, {mode}: MB in the bucket after each checkpoint "
            "(the growth is what each checkpoint uploaded)",
            "",
            "| checkpoint | " + " | ".join(names) + " |",
            "|---" * (1 + len(names)) + "|",
        ]
        n = len(next(iter(by_peer.values())))
        for i in range(n):
            lines.append(
                f"| {i + 1} | " + " | ".join(f"{by_peer[p][i] / MB:.1f}" for p in names) + " |"
            )
        last = {p: by_peer[p][-1] for p in names}
        lines.append(
            "| modelfs / peer | "
            + " | ".join(f"{last['modelfs'] / last[p]:.2f}x" for p in names)
            + " |"
        )
        lines.append("")
    bf = results["bf16"]
    lines += [
        "MiniLM in bf16: stored / raw size",
        "",
        "| " + " | ".join(bf) + " |",
        "|---" * len(bf) + "|",
        "| " + " | ".join(f"{v['stored'] / v['raw']:.3f}" for v in bf.values()) + " |",
        "",
    ]
    return lines


def goals(results: dict[str, Any]) -> list[str]:
    med = results["median"]
    lines = ["| goal (modelfs vs JuiceFS) | wanted | measured | met |", "|---|---|---|---|"]
    for key, (op, want) in GOALS.items():
        got = med["modelfs"][key] / med["juicefs"][key]
        ok = got >= want if op == ">=" else got <= want
        label = {**HIGHER_IS_BETTER, **LOWER_IS_BETTER}[key]
        lines.append(f"| {label} | {op} {want}x | {got:.2f}x | {'yes' if ok else 'NO'} |")
    frozen = results["series"].get("frozen")
    if frozen:
        got = frozen["modelfs"][-1] / frozen["juicefs"][-1]
        ok = got <= 0.3
        lines.append(
            f"| bucket bytes, frozen series | <= 0.3x | {got:.2f}x | {'yes' if ok else 'NO'} |"
        )
    bf = results["bf16"]["modelfs"]
    got = bf["stored"] / bf["raw"]
    lines.append(
        f"| bf16 stored / raw (modelfs) | <= {1 / 1.5:.3f} | {got:.3f} | "
        f"{'yes' if got <= 1 / 1.5 else 'NO'} |"
    )
    return lines


def write_chart(results: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med = results["median"]
    keys = list(HIGHER_IS_BETTER) + ["first_tensor_s", "load_cold_s", "load_warm_s"]
    peers = [n for n in med if n != "modelfs"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(peers)
    for i, p in enumerate(peers):
        # Always "how many times better modelfs is": speed ratio, or time ratio inverted.
        values = [
            med["modelfs"][k] / med[p][k]
            if k in HIGHER_IS_BETTER
            else med[p][k] / med["modelfs"][k]
            for k in keys
        ]
        ax.bar([x + i * width for x in range(len(keys))], values, width, label=f"vs {p}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([x + width * (len(peers) - 1) / 2 for x in range(len(keys))])
    ax.set_xticklabels(keys, rotation=20)
    ax.set_ylabel("modelfs advantage (x, higher is better)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("modelfs against each peer, medians on one SeaweedFS")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


HAND_WRITTEN = "<!-- written by hand below: scripts/bench.py --peers keeps it -->\n"


def write_report(results: dict[str, Any], meta: dict[str, Any], md: Path, png: Path) -> None:
    """docs/BENCHMARKS.md: when, where, which versions, the tables, the goals; and the chart."""
    write_chart(results, png)
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    text = [
        "# modelfs against JuiceFS, rclone mount and s3fs-fuse",
        "",
        f"Measured {meta['date']} by `{meta['command']}` (scripts/bench.py --peers) at commit "
        f"{meta['commit']}, on {meta['machine']}.",
        "",
        f"Versions: {versions}; SeaweedFS {meta['seaweedfs']}, on the same machine, every "
        "listener on loopback; each tool over a bucket of its own.",
        "",
        f"Model: {meta['model']}. Medians of {meta['repeats']} repeats, the tools in a rotated "
        "order each time; each repeat writes a file of its own (no tool sees the same bytes "
        "twice). Cold: the tool's cache emptied, a fresh mount, the kernel page cache dropped.",
        "",
        f"![modelfs against each peer]({png.name})",
        "",
        "| goal (issue 5) | wanted | measured | met |",
        *goals(results)[1:],
        "",
        "Medians (ratios: modelfs / peer; above 1 is better for speeds, below 1 for times, "
        "memory and CPU):",
        "",
        *ratio_table(results),
        "",
        *series_table(results),
        *meta.get("notes", []),
    ]
    # The analysis below the marker is written by hand: a new run keeps it.
    kept = ""
    if md.exists() and HAND_WRITTEN in md.read_text():
        kept = md.read_text().split(HAND_WRITTEN, 1)[1]
    md.write_text("\n".join(text) + "\n" + HAND_WRITTEN + kept)
