"""modelfs against the mounts users would pick instead, on one SeaweedFS, in one run.

Peers (scripts/peers.py): JuiceFS (SQLite metadata, zstd), rclone mount
(--vfs-cache-mode full), s3fs-fuse, and modelfs itself, each over its own
bucket of the same SeaweedFS, reading and writing the same files; and, for
the full load without a mount, Run:ai Model Streamer (scripts/runai_peer.py).
Every timed workload runs `repeats` times, the peers in a rotated order each
time, and the report quotes medians and the ratio of modelfs to each peer.
A scenario is one such comparison: on loopback, or with SeaweedFS behind a
rate-limited link (scripts/netlink.py); each has its own results and panel.

Workloads (cold = tool cache emptied, fresh mount, page cache dropped):
  write          copy a new model into the mount until it is durable
  ckpt_write     then the next checkpoint (10% of the tensors changed), beside it,
                 until durable; ckpt_stored_mb: the bucket's growth by it
  read_cold      sequential read of the new model, 16 MiB at a time
  read_warm      the same from the tool's disk cache (remounted, page cache dropped)
  read_page      the same again at once (kernel page cache)
  read_ft_cold   the checkpoint read as a fine-tune on a node whose cache holds the
                 base: cold mount, the base read whole, only the page cache dropped,
                 then the fine-tune read; ft_served_mb: what the store sent for it
  first_tensor   safetensors safe_open + get_tensor of a tensor deep in the file, cold
  load_cold      safetensors load_file of the whole model, cold; load_warm from the disk cache
  many           NODES mounts with caches of their own read the model at once: the wall
                 time until all have it, and the bytes the store sent (the link's
                 counter, so on links only)
  resources      the daemon's peak RSS, and its CPU seconds per GiB of the cold read
  full loads     modelfs.load_model (no mount, empty cache) against Run:ai Model
                 Streamer, each in a fresh process, from the same SeaweedFS
  series         five checkpoints of a real MiniLM fine-tune (frozen layers, full), each
                 written to a fresh bucket: bytes in the bucket after each checkpoint
  bf16           MiniLM in bf16 written to a fresh bucket: bytes stored / raw size

Caveats:
- All on one 2-core machine: the tools compete with SeaweedFS for the CPU, so
  absolute figures are low; the ratios measured in one run are the result.
- "Bytes uploaded per checkpoint" is the growth of the bucket per checkpoint;
  a tool that rewrote objects would upload more than that.
- The nodes of "many" share one machine's CPUs and page cache; JuiceFS's nodes
  share its SQLite metadata file (separate machines would need a metadata server).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
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


NODES = 4  # "many readers": mounts with caches of their own, standing for nodes


def _served(link: Any) -> int | None:
    """Bytes the store has sent so far: the link's counter (None on loopback, where the
    store's traffic to clients cannot be told from its parts' traffic to each other)."""
    return link.served_bytes() if link is not None else None


def _delta(after: int | None, before: int | None) -> float | None:
    return None if after is None or before is None else (after - before) / MB


def one_repeat(
    peer: Peer, source: Path, finetune: Path, tensor: str, r: int, link: Any = None
) -> dict[str, float | None]:
    """Every timed workload once on peer, with files of their own for this repeat.

    source is a new model; finetune is it with 10% of its tensors changed (the
    next checkpoint, or a fine-tune of it as a base model).
    """
    from safetensors import safe_open
    from safetensors.numpy import load_file

    size, ft_size = source.stat().st_size, finetune.stat().st_size
    name, ft_name = f"model-{r}.safetensors", f"model-{r}-ft.safetensors"
    out: dict[str, float | None] = {}
    peer.mount()
    read_all(source)  # the source is in the page cache: the write measures the mount
    out["write"] = size / write_durable(peer, source, name) / MB
    # The next checkpoint, beside the last one (as training writes ckpt-2 beside ckpt-1).
    read_all(finetune)
    stored = peer.bucket_bytes()
    out["ckpt_write"] = ft_size / write_durable(peer, finetune, ft_name) / MB
    out["ckpt_stored_mb"] = (peer.bucket_bytes() - stored) / MB

    mnt = cold_mount(peer)
    pids = daemon_pids(peer)
    cpu0 = cpu_seconds(pids)
    out["read_cold"] = size / timed(lambda: read_all(mnt / name)) / MB
    out["cpu_s_per_gib"] = (cpu_seconds(pids) - cpu0) / (size / GIB)
    out["read_page"] = size / timed(lambda: read_all(mnt / name)) / MB
    out["rss_mb"] = peak_rss(pids) / MB  # the daemon that wrote nothing, read it all
    mnt = warm_mount(peer)
    out["read_warm"] = size / timed(lambda: read_all(mnt / name)) / MB

    # A fine-tune on a node whose cache holds its base: the base read whole first (it
    # fills the tool's cache), then only the kernel's page cache dropped.
    mnt = cold_mount(peer)
    read_all(mnt / name)
    drop_page_cache()
    before = _served(link)
    out["read_ft_cold"] = ft_size / timed(lambda: read_all(mnt / ft_name)) / MB
    out["ft_served_mb"] = _delta(_served(link), before)

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
    out.update(many_readers(peer, name, link))
    return out


def many_readers(peer: Peer, name: str, link: Any = None) -> dict[str, float | None]:
    """NODES mounts of peer's filesystem, each with an empty cache of its own, read the
    same file whole at the same time: the wall time until all have it, and the bytes the
    store served meanwhile."""
    nodes = [peer.node(i) for i in range(NODES)]
    try:
        for n in nodes:
            n.drop_cache()
        drop_page_cache()
        mounts = _each(lambda n: n.mount(), nodes)  # untimed: at once, as nodes would
        before = _served(link)
        errors: list[BaseException] = []

        def read(path: Path) -> None:
            try:
                read_all(path)
            except BaseException as e:  # raised below, in this thread
                errors.append(e)

        threads = [threading.Thread(target=read, args=(m / name,)) for m in mounts]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        if errors:
            raise errors[0]
        served_mb = _delta(_served(link), before)
    finally:
        _each(lambda n: n.unmount(), nodes)
    return {"many_s": wall, "many_served_mb": served_mb}


def _each(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """fn of each item, in threads at once; the first error is raised after all are done."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(items)) as pool:
        futures = [pool.submit(fn, x) for x in items]
    return [f.result() for f in futures]


def full_loads(
    modelfs_peer: Any, server: Any, work: Path, source: Path, r: int
) -> dict[str, dict[str, Any]]:
    """A full load into memory of repeat r's model from the bucket, without a mount, each
    loader in a fresh process with the page cache dropped: modelfs.load_model (an empty
    cache dir) from the modelfs peer's store, and Run:ai Model Streamer from a plain object
    of the same bytes (uploaded here, untimed)."""
    from peers import _clean_env

    name = f"model-{r}.safetensors"
    bucket = server.new_bucket()
    server.client().upload_file(str(source), bucket, name)
    env = {
        **modelfs_peer._env(),
        # Path-style requests, as SeaweedFS wants (with an address:port endpoint Run:ai's
        # SDK picks them anyway; see runai_peer.py).
        "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
        "RUNAI_STREAMER_LOG_LEVEL": "WARNING",
    }
    cache = work / f"load-cache-{r}"
    loaders = {
        "modelfs_load_model": ["modelfs", modelfs_peer.url, name, str(cache)],
        "runai": ["runai", f"s3://{bucket}/{name}"],
    }
    order = list(loaders) if r % 2 == 0 else list(loaders)[::-1]
    out: dict[str, dict[str, Any]] = {}
    for key in order:
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        drop_page_cache()
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("runai_peer.py")), *loaders[key]],
            env=_clean_env(**env), capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            out[key] = {"error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}"}
            continue
        got = json.loads(lines[-1])
        if got["bytes"] <= 0 or got["tensors"] <= 0:
            got["error"] = f"loaded nothing: {got}"
        out[key] = got
    shutil.rmtree(cache, ignore_errors=True)
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


def _median(values: list[Any]) -> float | None:
    numbers = [v for v in values if v is not None]
    return statistics.median(numbers) if numbers else None


def run_scenario(
    server: Any,
    work: Path,
    models: list[Path],
    finetunes: list[Path],
    tensor: str,
    link: Any = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """All timed workloads on all peers over `server` (reached through `link` if given);
    models[r] and finetunes[r] are the files of repeat r (content differs between repeats)."""
    peers = make_peers(server, work)
    modelfs_peer = peers[0]
    results: dict[str, Any] = {
        "link": link.describe() if link is not None else None,
        "versions": {}, "runs": {p.name: [] for p in peers}, "loads": [],
    }  # fmt: skip
    if link is not None:
        log(f"{link.rate}: measuring the link (boto3 up and down)")
        results["link"]["measured"] = link.probe(min(256 << 20, 4 * models[0].stat().st_size))
    try:
        for p in peers:
            p.setup()
            results["versions"][p.name] = p.version()
        for r, (model, ft) in enumerate(zip(models, finetunes, strict=True)):
            order = peers[r % len(peers) :] + peers[: r % len(peers)]
            for p in order:
                log(f"repeat {r + 1}/{len(models)}: {p.name}")
                try:
                    results["runs"][p.name].append(one_repeat(p, model, ft, tensor, r, link))
                except Exception as e:
                    # The daemon's log says why; it is in the work dir, which goes at the end.
                    raise RuntimeError(f"{p.name}, repeat {r + 1}: {e!r}\n{p.log_tail()}") from e
            log(f"repeat {r + 1}/{len(models)}: full loads (modelfs.load_model, Run:ai)")
            results["loads"].append(full_loads(modelfs_peer, server, work, model, r))
    finally:
        for p in peers:
            p.unmount()
    results["median"] = {
        name: {k: _median([run[k] for run in runs]) for k in runs[0]}
        for name, runs in results["runs"].items()
    }
    load_median: dict[str, Any] = {}
    for key in ("modelfs_load_model", "runai"):
        runs = [x[key] for x in results["loads"]]
        ok = [x for x in runs if "error" not in x]
        load_median[key] = (
            {k: statistics.median(x[k] for x in ok) for k in ("seconds", "peak_rss_bytes")}
            if ok
            else {"error": runs[0]["error"]}
        )
    results["load_median"] = load_median
    return results


def run_bytes(
    server: Any,
    work: Path,
    series: dict[str, list[Path]],
    bf16: Path,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """What each tool stores: checkpoint series (bucket bytes after each) and bf16 MiniLM."""
    results: dict[str, Any] = {"series": {}}
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

SPEEDS = {  # MB/s: higher is better
    "read_cold": "cold read of a new model",
    "read_ft_cold": "cold read of a fine-tune, base cached",
    "read_warm": "warm read (the tool's disk cache)",
    "read_page": "re-read from the page cache",
    "write": "write of a new model, until durable",
    "ckpt_write": "checkpoint write (10% changed), until durable",
}
TIMES = {  # lower is better
    "first_tensor_s": "time to first tensor",
    "load_cold_s": "full load (load_file), cold",
    "load_warm_s": "full load (load_file), warm",
    "many_s": f"{NODES} nodes reading at once, cold",
    "rss_mb": "daemon peak RSS",
    "cpu_s_per_gib": "daemon CPU per GiB read",
}
UNITS = {"first_tensor_s": "s", "load_cold_s": "s", "load_warm_s": "s", "many_s": "s",
         "rss_mb": "MB", "cpu_s_per_gib": "CPU s"}  # fmt: skip
EXTRA = {  # reported, not ratios of merit
    "ckpt_stored_mb": "bucket growth by the checkpoint (MB)",
    "ft_served_mb": "served by the store for the fine-tune read (MB)",
    "many_served_mb": f"served by the store to the {NODES} nodes (MB)",
}
RUNAI = "full load vs Run:ai Model Streamer"
# Issue 14's goals, modelfs against JuiceFS in the same run: (wanted on loopback, on a link).
# Speeds: modelfs / JuiceFS at least; times and memory: modelfs / JuiceFS at most.
GOALS: dict[str, tuple[str, float, float]] = {
    "first_tensor_s": ("<=", 0.5, 0.5),
    "read_cold": (">=", 1.0, 1.15),
    "read_ft_cold": (">=", 3.0, 5.0),
    "read_warm": (">=", 1.3, 1.3),
    "write": (">=", 1.0, 1.1),
    "ckpt_write": (">=", 3.0, 5.0),
    "runai": (">=", 1.0, 1.0),  # Run:ai's seconds / modelfs.load_model's
    "rss_mb": ("<=", 1.0, 1.0),
}


def label(key: str) -> str:
    return {**SPEEDS, **TIMES, **EXTRA, "runai": RUNAI}[key]


def scenario_title(name: str, sc: dict[str, Any]) -> str:
    if sc["link"] is None:
        return "loopback"
    m = sc["link"].get("measured", {})
    return (
        f"a {sc['link']['rate']} link (measured: {m.get('download_mb_per_s', 0):.0f} MB/s down, "
        f"{m.get('upload_mb_per_s', 0):.0f} MB/s up)"
    )


def runai_ratio(sc: dict[str, Any]) -> float | None:
    """Run:ai's seconds over modelfs.load_model's (a speed ratio: above 1, modelfs is faster)."""
    lm = sc["load_median"]
    if "error" in lm["runai"] or "error" in lm["modelfs_load_model"]:
        return None
    return lm["runai"]["seconds"] / lm["modelfs_load_model"]["seconds"]


def ratio(sc: dict[str, Any], key: str, peer: str = "juicefs") -> float | None:
    """modelfs / peer of a median (Run:ai's row: Run:ai / modelfs)."""
    if key == "runai":
        return runai_ratio(sc) if peer == "juicefs" else None
    med = sc["median"]
    if peer not in med:  # not in this run (--tools)
        return None
    a, b = med["modelfs"].get(key), med[peer].get(key)
    return a / b if a is not None and b else None


def advantage(key: str, x: float | None) -> float | None:
    """How many times better modelfs is: a speed ratio as it is, a time ratio inverted."""
    if x is None or x <= 0:
        return None
    return x if key in SPEEDS or key == "runai" else 1 / x


def goal_rows(sc: dict[str, Any]) -> list[dict[str, Any]]:
    linked = sc["link"] is not None
    rows = []
    for key, (op, loop_want, link_want) in GOALS.items():
        want = link_want if linked else loop_want
        got = ratio(sc, key)
        met = None if got is None else (got >= want if op == ">=" else got <= want)
        # The margin: how far past the goal (+) or short of it (-), as a share of the goal.
        margin = None
        if got is not None:
            margin = got / want - 1 if op == ">=" else want / got - 1
        rows.append({"key": key, "op": op, "want": want, "got": got, "met": met,
                     "margin": margin})  # fmt: skip
    return rows


def goals_table(sc: dict[str, Any]) -> list[str]:
    lines = ["| goal (issue 14), modelfs vs JuiceFS | wanted | measured | met | margin |",
             "|---|---|---|---|---|"]  # fmt: skip
    for g in goal_rows(sc):
        kind = "speed" if g["key"] in SPEEDS or g["key"] == "runai" else "time"
        if g["key"] == "rss_mb":
            kind = "memory"
        what = label(g["key"]) + (" (vs Run:ai)" if g["key"] == "runai" else "")
        if g["got"] is None:
            err = sc["load_median"]["runai"].get("error", "") if g["key"] == "runai" else ""
            lines.append(f"| {what} | {g['op']} {g['want']}x {kind} | - | not measured"
                         f"{': ' + err.splitlines()[-1][:120] if err else ''} | |")  # fmt: skip
            continue
        lines.append(
            f"| {what} | {g['op']} {g['want']}x {kind} | {g['got']:.2f}x | "
            f"{'met' if g['met'] else 'MISSED'} | {g['margin']:+.0%} |"
        )
    return lines


def _cell(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.0f}"


def ratio_table(sc: dict[str, Any]) -> list[str]:
    med = sc["median"]
    peers = [n for n in med if n != "modelfs"]
    lines = [
        "| measurement | " + " | ".join(med) + " | " + " | ".join(f"vs {p}" for p in peers) + " |",
        "|---" * (1 + len(med) + len(peers)) + "|",
    ]
    for key in [*SPEEDS, *TIMES, *EXTRA]:
        unit = "MB/s" if key in SPEEDS else UNITS.get(key, "")
        cells = [_cell(med[n].get(key)) for n in med]
        ratios = ["-" if key in EXTRA or (x := ratio(sc, key, p)) is None else f"{x:.2f}x"
                  for p in peers]  # fmt: skip
        text = label(key) + (f", {unit}" if unit and key not in EXTRA else "")
        lines.append(f"| {text} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return lines


def load_table(sc: dict[str, Any]) -> list[str]:
    lm = sc["load_median"]
    lines = ["| full load into memory, from the bucket, cold | seconds | peak RSS (MB) |",
             "|---|---|---|"]  # fmt: skip
    for key, what in (("modelfs_load_model", "modelfs.load_model (no mount)"),
                      ("runai", "Run:ai Model Streamer (SafetensorsStreamer)")):  # fmt: skip
        x = lm[key]
        if "error" in x:
            lines.append(f"| {what} | failed: {x['error'].strip().splitlines()[-1][:200]} | |")
        else:
            lines.append(f"| {what} | {x['seconds']:.2f} | {x['peak_rss_bytes'] / MB:.0f} |")
    x = runai_ratio(sc)
    if x is not None:
        lines.append(f"| Run:ai / modelfs | {x:.2f}x | |")
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
    frozen = results["series"].get("frozen")
    if frozen:
        got = frozen["modelfs"][-1] / frozen["juicefs"][-1]
        lines.append(f"Frozen series, bucket bytes, modelfs / JuiceFS: {got:.2f}x (issue 5: "
                     f"<= 0.3x, {'met' if got <= 0.3 else 'MISSED'}).")  # fmt: skip
    got = results["bf16"]["modelfs"]["stored"] / results["bf16"]["modelfs"]["raw"]
    lines += [f"bf16 stored / raw (modelfs): {got:.3f} (issue 5: <= 0.667, "
              f"{'met' if got <= 1 / 1.5 else 'MISSED'}).", ""]  # fmt: skip
    return lines


CHART_ROWS = ["first_tensor_s", "read_cold", "read_ft_cold", "read_warm", "read_page", "write",
              "ckpt_write", "load_cold_s", "runai", "many_s", "rss_mb"]  # fmt: skip


def write_chart(results: dict[str, Any], png: Path) -> None:
    """One panel per scenario: for each measurement, how many times better modelfs is
    than each peer (log scale, 1x = equal), with the goal against JuiceFS marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    scenarios = results["scenarios"]
    peers = ["juicefs", "rclone", "s3fs"]
    colors = {"juicefs": "tab:blue", "rclone": "tab:orange", "s3fs": "tab:green",
              "runai": "tab:purple"}  # fmt: skip
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6.5 * len(scenarios), 6.5),
                             sharey=True, squeeze=False)  # fmt: skip
    height = 0.8 / len(peers)
    ticks = [0.125, 0.25, 0.5, 1, 2, 4, 8, 16]
    for ax, (name, sc) in zip(axes[0], scenarios.items(), strict=True):
        lo, hi = 0.5, 2.0
        for row, key in enumerate(CHART_ROWS):
            for i, p in enumerate(peers):
                adv = advantage(key, ratio(sc, key, p))
                if adv is None:
                    continue
                lo, hi = min(lo, adv), max(hi, adv)
                color = colors["runai"] if key == "runai" else colors[p]
                ax.barh(row + (i - 1) * height, adv, height, left=0, color=color,
                        label=f"vs {p}" if row == 0 else None)  # fmt: skip
            g = GOALS.get(key)
            if g is not None:
                want = g[2] if sc["link"] is not None else g[1]
                want_adv = want if key in SPEEDS or key == "runai" else 1 / want
                ax.plot([want_adv], [row - height], marker="|", markersize=22, color="red",
                        markeredgewidth=2.5, label="goal vs JuiceFS" if key == "first_tensor_s"
                        else None)  # fmt: skip
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlim(min(lo / 1.5, 0.4), max(hi * 1.5, 2.5))
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{t:g}x" for t in ticks])
        ax.set_title(scenario_title(name, sc), fontsize=10)
        ax.set_xlabel("modelfs's advantage (higher is better; 1x = the same)")
    axes[0][0].set_yticks(range(len(CHART_ROWS)))
    axes[0][0].set_yticklabels([label(k) for k in CHART_ROWS], fontsize=9)
    axes[0][0].invert_yaxis()
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(plt.Rectangle((0, 0), 1, 1, color=colors["runai"]))
    labels.append("vs Run:ai (full load)")
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.suptitle("modelfs against each peer, medians on one SeaweedFS per scenario")
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(png, dpi=100)
    plt.close(fig)


HAND_WRITTEN = "<!-- written by hand below: scripts/bench.py --peers keeps it -->\n"


def goals_summary(results: dict[str, Any]) -> list[str]:
    """The goals table of every scenario, as printed at the end of a run."""
    lines = []
    for name, sc in results["scenarios"].items():
        lines += [f"Goals on {scenario_title(name, sc)}:", "", *goals_table(sc), ""]
    return lines


def write_report(results: dict[str, Any], meta: dict[str, Any], md: Path, png: Path) -> None:
    """docs/BENCHMARKS.md: when, where, which versions, per scenario the goals, the medians
    and the full loads; the bytes each tool stores; and the chart."""
    write_chart(results, png)
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    text = [
        "# modelfs against JuiceFS, rclone mount and s3fs-fuse",
        "",
        f"Measured {meta['date']} by `{meta['command']}` (scripts/bench.py --peers) at commit "
        f"{meta['commit']}, on {meta['machine']}.",
        "",
        f"Versions: {versions}; SeaweedFS {meta['seaweedfs']}, on the same machine; each tool "
        "over a bucket of its own. Scenarios: SeaweedFS on loopback, and SeaweedFS in a network "
        "namespace of its own reached through a veth pair that tc's tbf limits to the rate "
        "both ways (scripts/netlink.py); every tool, and every byte, goes through the link.",
        "",
        f"Model: {meta['model']}. Medians of {meta['repeats']} repeats, the tools in a rotated "
        "order each time; each repeat writes files of its own (no tool sees the same bytes "
        "twice). Cold: the tool's cache emptied, a fresh mount, the kernel page cache dropped.",
        "",
        "Workloads: a new model written until durable, read cold, warm (the tool's disk "
        "cache, after a remount) and from the page cache; the next checkpoint (10% of the "
        "tensors changed) written beside it until durable; that checkpoint read as a "
        "fine-tune on a node whose cache holds the base (the base read whole first, then only "
        "the page cache dropped); a deep tensor through safe_open; safetensors load_file "
        f"through the mount; {NODES} mounts with caches of their own (standing for nodes) "
        "reading the new model at once; and without a mount, modelfs.load_model against Run:ai "
        "Model Streamer, each in a fresh process, from the same SeaweedFS.",
        "",
        f"![modelfs against each peer]({png.name})",
        "",
    ]
    for name, sc in results["scenarios"].items():
        title = scenario_title(name, sc)
        text += [f"## {title[0].upper()}{title[1:]}", ""]
        if sc["link"] is not None:
            lk, m = sc["link"], sc["link"]["measured"]
            text += [
                f"Link: tbf rate {lk['rate']} each way, burst {lk['tbf_burst_bytes'] / 1e6:.1f} "
                f"MB, queue {lk['tbf_limit_bytes'] / 1e6:.1f} MB. A plain boto3 transfer of "
                f"{m['bytes'] / MB:.0f} MB through it: {m['download_mb_per_s']:.0f} MB/s down "
                f"({m['download_mbit_on_wire']:.0f} Mbit/s on the wire), "
                f"{m['upload_mb_per_s']:.0f} MB/s up ({m['upload_mbit_on_wire']:.0f} Mbit/s).",
                "",
            ]
        text += [
            *goals_table(sc), "",
            "Medians (ratios: modelfs / peer; above 1 is better for speeds, below 1 for times, "
            "memory and CPU):", "",
            *ratio_table(sc), "",
            *load_table(sc), "",
        ]  # fmt: skip
    text += ["## What each tool stores (loopback)", "", *series_table(results),
             *meta.get("notes", [])]  # fmt: skip
    # The analysis below the marker is written by hand: a new run keeps it.
    kept = ""
    if md.exists() and HAND_WRITTEN in md.read_text():
        kept = md.read_text().split(HAND_WRITTEN, 1)[1]
    md.write_text("\n".join(text) + "\n" + HAND_WRITTEN + kept)
