"""The modelfs command line: parses, calls the Python API, prints. No logic of its own.

Every command that reads takes an address where it takes a path
(PATH@N, PATH@NAME, PATH@blake3:HEX, PATH@latest, DIR@NAME/FILE) and shows the
version it resolved to (`PATH@N blake3:...`), so that a script can pin it.

Exit status: 0 success, 1 a modelfs error (message on stderr, nothing
changed), 2 bad usage, 3 fsck found problems, 4 a diff --fail-if matched.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TextIO

from .backends.retry import DEFAULT_MAX_ELAPSED
from .client import DEFAULT_CACHE_SIZE, Client, default_cache_dir, init_store, open_store
from .errors import InvalidArgumentError, ModelfsError, NotFoundError
from .store import ChunkingLimits, StoreConfig
from .store.addresses import Resolved, parse_address
from .store.format import DEFAULT_COMMIT_WINDOW
from .store.gc import DEFAULT_GRACE, DEFAULT_MAX_UNUSED, DEFAULT_REPACK
from .store.metrics import Value, check_name, format_value, parse_assignment
from .store.naming import owner_of
from .store.paths import version_address
from .store.registry import Event, Name, load_record
from .store.retention import DEFAULT_ALIAS_HISTORY, Policy, parse_duration
from .store.store import DEFAULT_MAX_REQUESTS
from .units import human
from .warmup import DEFAULT_JOBS, find_mount

log = logging.getLogger("modelfs")


def parse_size(text: str) -> int:
    """'10G', '512M', '4096' -> bytes (binary units)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units and t[-1] != "" else (t, "")
    try:
        value = float(num) * units[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (try 512M or 10G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return int(value)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0: {text!r}")
    return value


def duration(text: str) -> float:
    """An argparse type: 30d, 12h, 1h30m, 90s or seconds (retention.parse_duration)."""
    try:
        return parse_duration(text)
    except InvalidArgumentError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class ProgressBar:
    """Bytes done, total and rate on one stderr line; silent when stderr is not a terminal."""

    def __init__(
        self, label: str, total: int, stream: TextIO = sys.stderr, force: bool = False
    ) -> None:
        self.label, self.total, self.stream = label, total, stream
        self.enabled = force or stream.isatty()
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.2 or self.done >= self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-6)
        if self.total:
            pct = 100 * self.done / self.total
            done = f"{human(self.done)} / {human(self.total)} ({pct:3.0f}%)"
        else:  # size unknown (standard input, fsck)
            done = human(self.done)
        self.stream.write(f"\r{self.label}: {done} {human(rate)}/s   ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def s3_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "endpoint_url": args.endpoint_url, "region_name": args.region,
        "profile_name": args.profile,
    }  # fmt: skip


def _open(args: argparse.Namespace) -> Client:
    return open_store(
        args.store, cache_dir=args.cache_dir, cache_size=args.cache_size,
        max_requests=args.max_requests, retry_seconds=args.retry_seconds,
        s3_options=s3_options(args),
    )  # fmt: skip


def cmd_init(args: argparse.Namespace) -> int:
    config = StoreConfig(
        chunking=ChunkingLimits(
            min_size=args.min_block_size, avg_size=args.avg_block_size, max_size=args.max_block_size
        ),
        zstd_level=args.zstd_level,
        pack_size=args.pack_size,
        commit_window=args.commit_window,
    )
    init_store(
        args.store, config, unsafe_single_writer=args.unsafe_single_writer,
        s3_options=s3_options(args),
    )  # fmt: skip
    print(f"initialised modelfs store at {args.store}")
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    metadata = {}
    for item in args.meta or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ModelfsError(f"--meta takes KEY=VALUE, not {item!r}")
        metadata[key] = value
    metrics = dict(parse_assignment(a) for a in args.metric or [])
    local = args.local
    if local == "-":
        source: Any = sys.stdin.buffer
        total = 0
        dest = args.path
        if not dest:
            raise ModelfsError("reading standard input needs a destination PATH")
    else:
        if not os.path.exists(local):
            raise ModelfsError(f"no such local file: {local}")
        if os.path.isdir(local):
            raise ModelfsError(f"{local} is a directory; put takes one file")
        source, total = local, os.path.getsize(local)
        dest = args.path or os.path.basename(local)
    with _open(args) as client:
        bar = ProgressBar(f"put {dest}", total, force=args.progress)
        result = client.put(
            dest, source, metadata=metadata, message=args.message, progress=bar, metrics=metrics
        )
        bar.close()
    if args.json:
        _print_json(asdict(result))
    else:
        saved = result.size - result.uploaded_bytes
        print(
            f"{result.path} version {result.version}: {human(result.size)} in {result.blocks} blocks "
            f"({result.layout}); {result.new_blocks} new, {human(result.uploaded_bytes)} uploaded, "
            f"{human(saved)} saved by dedup and compression; "
            f"{human(result.size / max(result.seconds, 1e-6))}/s"
        )
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with _open(args) as client, client.open(args.path, args.version) as f:
        if args.local == "-":
            _copy(f, sys.stdout.buffer, None)
            sys.stdout.buffer.flush()
            print(f"{f.pinned} {f.content_hash}", file=sys.stderr)
            return 0
        dest = args.local or os.path.basename(f.path)
        if os.path.isdir(dest):
            dest = os.path.join(dest, os.path.basename(f.path))
        parent = os.path.dirname(os.path.abspath(dest))
        if not os.path.isdir(parent):
            raise ModelfsError(f"cannot write {dest}: directory {parent} does not exist")
        bar = ProgressBar(f"get {f.path}", f.size, force=args.progress)
        # Write beside the destination and rename: a failed read leaves nothing half-written.
        fd, tmp = tempfile.mkstemp(
            dir=os.path.dirname(os.path.abspath(dest)), prefix=".modelfs-get-"
        )
        try:
            with os.fdopen(fd, "wb") as out:
                _copy(f, out, bar)
            os.replace(tmp, dest)
        except BaseException:
            os.unlink(tmp)
            raise
        bar.close()
    print(f"{f.pinned} {f.content_hash}")  # what was got, for a script to pin
    if not args.quiet:
        print(f"{f.path} version {f.version} -> {dest} ({human(f.size)}, verified)")
    return 0


def _copy(src: Any, dst: Any, progress: Callable[[int], None] | None) -> None:
    while chunk := src.read(16 << 20):
        dst.write(chunk)
        if progress:
            progress(len(chunk))


def cmd_cat(args: argparse.Namespace) -> int:
    with _open(args) as client, client.open(args.path, args.version) as f:
        _copy(f, sys.stdout.buffer, None)
    sys.stdout.buffer.flush()
    print(f"{f.pinned} {f.content_hash}", file=sys.stderr)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with _open(args) as client:
        files = client.list(args.prefix)
    if args.json:
        _print_json([asdict(f) for f in files])
        return 0
    for f in files:
        if args.long:
            print(f"{f.size:>14}  v{f.version:<4} {_when(f.time)}  {f.path}")
        else:
            print(f.path)
    return 0


def _log_dir(args: argparse.Namespace, client: Client, no_file: NotFoundError) -> int:
    """A directory's history: its numbered snapshots, with their metrics and names."""
    path = parse_address(args.path).path
    record = load_record(client.store.backend, path, is_dir=True)
    if record is None or not record.snapshots:
        if client.store.is_dir(path):
            raise NotFoundError(
                f"directory {path} has no snapshots yet: naming or measuring it takes one "
                f"(modelfs tag/alias/metric STORE {path} ...)"
            )
        raise no_file
    names: dict[int, list[str]] = {}
    for n in record.names.values():
        if n.target.path == path and n.target.is_dir:
            names.setdefault(n.target.version, []).append(version_address(path, n.name))
    rows = [
        {"version": s.version, "time": s.time, "files": s.files, "size": s.size,
         "content_hash": s.content_hash, "snapshot": s.snapshot,
         "metrics": record.metrics_of(s.version), "names": sorted(names.get(s.version, []))}
        for s in reversed(record.snapshots)
    ]  # fmt: skip
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        shown = _metrics_text(r["metrics"])
        extra = (f"  {shown}" if shown else "") + (
            f"  [{', '.join(r['names'])}]" if r["names"] else ""
        )
        print(f"s{r['version']:<4} {_when(r['time'])}  {r['size']:>14}  {r['content_hash']}  "
              f"{r['files']} files{extra}")  # fmt: skip
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    with _open(args) as client:
        try:
            versions = client.history(args.path)[::-1]  # newest first, in both forms
        except NotFoundError as e:
            return _log_dir(args, client, e)
        metrics = client.metrics_by_version(args.path)
        names = client.names_by_version(args.path)
    if args.json:
        _print_json([
            {**Client.version_dict(v), "metrics": metrics.get(v.version, {}),
             "names": names.get(v.version, [])}
            for v in versions
        ])  # fmt: skip
        return 0
    for v in versions:
        if v.deleted:
            print(f"v{v.version:<4} {_when(v.time)}  deleted")
        elif v.forgotten:
            print(f"v{v.version:<4} {_when(v.time)}  forgotten ({v.forgotten_note()})")
        else:
            shown = _metrics_text(metrics.get(v.version))
            extra = f"  {shown}" if shown else ""
            if names.get(v.version):
                extra += f"  [{', '.join(names[v.version])}]"
            msg = f"  {v.message}" if v.message else ""
            print(f"v{v.version:<4} {_when(v.time)}  {v.size:>14}  {v.content_hash}{extra}{msg}")
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    with _open(args) as client:
        info = client.stat(args.path, args.version) if args.path else client.store_stats()
    if args.json:
        _print_json(info)
        return 0
    if args.path:
        print(f"{'address':>28}: {info['path']}@{info['version']} {info['content_hash']}")
    for key, value in info.items():
        if key == "metrics":
            value = _metrics_text(value)
        elif key == "names":
            value = ", ".join(value)
        elif key.endswith("bytes") or key.startswith("logical") or key == "size":
            value = f"{value} ({human(value)})"
        elif isinstance(value, float) and key.endswith("ratio"):
            value = f"{value:.3f}"
        elif key == "time":
            value = _when(value)
        print(f"{key:>28}: {value}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with _open(args) as client:
        v = client.delete(args.path)
    print(f"{args.path}: deleted as version {v.version}; earlier versions remain in its history")
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    if args.path:
        with _open(args) as client:
            result = client.verify(args.path, args.version)
        if args.json:
            _print_json({**result, "ok": True})
        else:
            print(f"{result['path']}@{result['version']} {result['content_hash']}")
            print(
                f"{result['path']} version {result['version']}: {result['blocks']} blocks verified, no problems found"
            )
        return 0
    with _open(args) as client:
        bar = ProgressBar("fsck", 0, force=args.progress)
        report = client.fsck(bar, repair=args.repair)
        bar.close()
    if args.json:
        _print_json({**asdict(report), "ok": report.ok})
    else:
        print(
            f"checked {report.packs_checked} packs, {report.blocks_checked} blocks "
            f"({human(report.bytes_checked)}), {report.versions_checked} versions of "
            f"{report.files_checked} files"
        )
        for p in report.problems:
            print(f"problem: {p}")
        for p in report.missing_packs:
            print(f"missing pack: {p}")
        for why in report.corrupt_blocks.values():
            print(f"corrupt: {why}")
        for a in report.affected:
            where = f" version {a['version']}" if "version" in a else ""
            at = f" at offset {a['offset']}" if "offset" in a else ""
            print(f"affected: {a['path']}{where}{at}: {a['problem']}")
        for r in report.repaired:
            print(f"repaired: {r}")
        g = report.garbage
        if g.get("reclaimable_bytes") or g.get("collections_pending"):
            print(
                f"garbage (harmless; `modelfs gc` reclaims it): "
                f"{human(g.get('reclaimable_bytes', 0))} that no kept version reaches, "
                f"{g.get('packs_without_index', 0)} packs without an index object, "
                f"{g.get('forgotten_versions', 0)} forgotten versions, "
                f"{g.get('collections_pending', 0)} collections pending"
            )
        print("no problems found" if report.ok else "PROBLEMS FOUND")
    return 0 if report.ok else 3


def cmd_forget(args: argparse.Namespace) -> int:
    policy = Policy(
        keep_last=args.keep_last, keep_within=args.keep_within, keep_best=args.keep_best,
        by=args.by, alias_history=args.keep_alias_history,
    )  # fmt: skip
    with _open(args) as client:
        plan = client.forget(args.target, policy, dry_run=args.dry_run)
    if args.json:
        _print_json(plan.to_json())
        return 0
    for p in plan.plans:
        what = "snapshots" if p.is_dir else "versions"
        shown = ", ".join(str(n) for n in p.forget)
        print(
            f"{'would forget' if args.dry_run else 'forgot'} {p.path}{'/' if p.is_dir else ''} {what} {shown}"
        )
        if args.verbose:
            for n, why in sorted(p.keep.items()):
                print(f"  keep {n}: {why}")
    if not plan.plans:
        print(f"nothing to forget under {plan.target or 'the store'} ({policy.describe()})")
    elif args.dry_run:
        print(
            f"{plan.versions} versions and {plan.snapshots} snapshots would be forgotten "
            f"({policy.describe()}); a gc would then free up to {human(plan.freed_bytes or 0)} of "
            f"packs and {human(plan.freed_manifest_bytes or 0)} of manifests"
        )
    else:
        print(
            f"forgot {plan.versions} versions and {plan.snapshots} snapshots "
            f"({policy.describe()}); `modelfs gc {args.store}` reclaims their space"
        )
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    tty = args.progress or sys.stderr.isatty()

    def progress(line: str) -> None:
        if tty and not args.json:
            sys.stderr.write(f"gc: {line}\n")
            sys.stderr.flush()

    with _open(args) as client:
        report = client.gc(
            dry_run=args.dry_run, wait=not args.no_wait, progress=progress, grace=args.grace,
            repack=args.repack, max_unused=args.max_unused, break_lock=args.break_lock,
        )  # fmt: skip
    if args.json:
        _print_json(report.to_json())
        return 0
    ex, c, r, w = report.examined, report.condemned, report.reclaimed, report.rewritten
    print(
        f"examined {ex.get('versions', 0)} versions of {ex.get('refs', 0)} files, "
        f"{ex.get('packs', 0)} packs ({human(ex.get('pack_bytes', 0))}), "
        f"{ex.get('manifests', 0)} manifests; {human(report.live_bytes)} live"
    )
    verb = "would condemn" if report.dry_run else "condemned"
    print(
        f"{verb} {c.get('packs', 0)} packs ({human(c.get('pack_bytes', 0))}), "
        f"{c.get('rewrite_packs', 0)} to rewrite ({human(c.get('rewrite_dead_bytes', 0))} dead), "
        f"{c.get('manifests', 0)} manifests, {c.get('snapshots', 0)} snapshots"
    )
    if not report.dry_run:
        print(
            f"reclaimed {human(r.get('pack_bytes', 0) + r.get('manifest_bytes', 0))}: "
            f"{r.get('packs', 0)} packs deleted, {w.get('packs', 0)} rewritten "
            f"({human(w.get('copied_bytes', 0))} copied), {r.get('manifests', 0)} manifests"
        )
        if any(report.kept.values()):
            print(f"kept (a writer reached them during the grace period): {report.kept}")
        if report.pending:
            print(
                f"pending: {', '.join(report.pending)} (condemned; the next gc after the "
                f"grace period of {report.grace:g} s deletes what is still unreachable)"
            )
    return 0


def _metrics_text(metrics: dict[str, Value] | None) -> str:
    return " ".join(f"{k}={format_value(v)}" for k, v in sorted((metrics or {}).items()))


def _at(path: str, version: int | None) -> str:
    """The address of a path's version given as --version N (an address as it is)."""
    if version is None:
        return path
    if "@" in path:
        raise InvalidArgumentError(
            f"{path!r} is an address with its own version: do not give --version as well"
        )
    return f"{path}@{version}"


def _resolved_line(r: Resolved) -> str:
    metrics = _metrics_text(r.metrics)
    return r.describe() + (f"  {metrics}" if metrics else "")


def _name_line(owner: str, n: Name) -> str:
    msg = f"  {n.message}" if n.message else ""
    return (
        f"{n.kind} {owner}@{n.name} -> {n.target} {n.target.content_hash}  "
        f"{_when(n.time)} by {n.by}{msg}"
    )


def _named_address(args: argparse.Namespace) -> tuple[str, str | None]:
    """The address to name and the name's owner: PATH[@--version], or --target under PATH."""
    if args.target is None:
        return _at(args.path, args.version), None
    if args.version is not None:
        raise InvalidArgumentError("give --version or --target, not both")
    return args.target, args.path


def cmd_tag(args: argparse.Namespace) -> int:
    with _open(args) as client:
        address, owner = _named_address(args)
        named = client.tag(address, args.name, args.message, owner=owner)
        owner = owner or owner_of(parse_address(address))
    print(_name_line(owner, named))
    return 0


def cmd_untag(args: argparse.Namespace) -> int:
    with _open(args) as client:
        target = client.untag(args.path, args.name, args.message)
    print(f"removed tag {args.path}@{args.name} (it named {target} {target.content_hash})")
    return 0


def cmd_alias(args: argparse.Namespace) -> int:
    with _open(args) as client:
        address, owner = _named_address(args)
        named = client.alias(address, args.name, args.message, expect=args.expect, owner=owner)
        owner = owner or owner_of(parse_address(address))
    print(_name_line(owner, named))
    return 0


def cmd_alias_rm(args: argparse.Namespace) -> int:
    with _open(args) as client:
        target = client.unalias(args.path, args.name, args.message)
    print(f"removed alias {args.path}@{args.name} (it named {target} {target.content_hash})")
    return 0


def _event_line(e: Event) -> str:
    before = f"{e.before} {e.before.content_hash}" if e.before is not None else "(none)"
    after = f"{e.after} {e.after.content_hash}" if e.after is not None else "(removed)"
    msg = f"  {e.message}" if e.message else ""
    return f"{_when(e.time)}  {e.action:<8} {e.name}: {before} -> {after}  by {e.by}{msg}"


def cmd_alias_log(args: argparse.Namespace) -> int:
    with _open(args) as client:
        events = client.names_log(args.path, args.name)
    if not events:
        raise NotFoundError(f"{args.path} has no tag or alias {args.name!r}, and never had one")
    if args.json:
        _print_json([e.to_json() for e in events])
        return 0
    for e in events:
        print(_event_line(e))
    return 0


def cmd_tags(args: argparse.Namespace) -> int:
    with _open(args) as client:
        found = client.names_under(args.path or "")
        metrics = [
            client.resolve(version_address(owner, n.name)).metrics or {} for owner, n in found
        ]
    if args.json:
        _print_json([
            {"owner": owner, "name": n.name, "kind": n.kind, "target": n.target.to_json(),
             "time": n.time, "by": n.by, "message": n.message, "metrics": m}
            for (owner, n), m in zip(found, metrics, strict=True)
        ])  # fmt: skip
        return 0
    for (owner, n), m in zip(found, metrics, strict=True):
        shown = _metrics_text(m)
        print(_name_line(owner, n) + (f"  [{shown}]" if shown else ""))
    return 0


def cmd_metric(args: argparse.Namespace) -> int:
    change: dict[str, Value | None] = dict(parse_assignment(a) for a in args.assignments)
    for name in args.delete or []:
        change[check_name(name)] = None
    with _open(args) as client:
        resolved = client.record_metrics(args.address, change, args.message)
    if args.json:
        _print_json({"address": resolved.pinned, "content_hash": resolved.content_hash,
                     "metrics": resolved.metrics})  # fmt: skip
        return 0
    print(_resolved_line(resolved))
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    if args.json and args.csv:
        raise InvalidArgumentError("give --json or --csv, not both")
    with _open(args) as client:
        chosen = client.select(
            args.target, where=args.where, order_by=args.order_by, limit=args.limit,
            all_versions=args.all_versions, alias=args.alias, message=args.message,
        )  # fmt: skip
    if not chosen.ranked:
        clause = f" matches {args.where!r}" if args.where else " exists"
        raise NotFoundError(f"no version of {args.target}{clause} ({chosen.considered} looked at)")
    rows = [
        {"address": c.address, "path": c.path, "version": c.version, "dir": c.is_dir,
         "content_hash": c.content_hash, "time": c.time, "size": c.size,
         "message": c.message, "metrics": c.metrics}
        for c in chosen.ranked
    ]  # fmt: skip
    if args.json:
        _print_json(rows)
    elif args.csv:
        names = sorted({k for c in chosen.ranked for k in c.metrics})
        out = csv.writer(sys.stdout)
        fields = ["address", "path", "version", "dir", "content_hash", "time", "size", "message"]
        out.writerow(fields + names)
        for row in rows:
            out.writerow([row[f] for f in fields] + [row["metrics"].get(k, "") for k in names])
    else:
        for c in chosen.ranked:
            metrics = _metrics_text(c.metrics)
            print(f"{c.address} {c.content_hash}  {_when(c.time)}  {metrics}".rstrip())
    print(f"{len(chosen.ranked)} shown, {chosen.matched} matched, {chosen.considered} looked at",
          file=sys.stderr)  # fmt: skip
    if args.alias:
        best = chosen.ranked[0]
        owner = parse_address(args.target.strip("/")).path if args.target.strip("/") else ""
        line = f"alias {version_address(owner, args.alias)} -> {best.address} {best.content_hash}"
        print(line, file=sys.stderr if args.json or args.csv else sys.stdout)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from .compare import report
    from .compare.diff import compare_models
    from .compare.series import compare_series

    if args.json and args.csv:
        raise InvalidArgumentError("give --json or --csv, not both")
    if args.series is None and (args.a is None or args.b is None):
        raise InvalidArgumentError("give two models to compare (A B), or --series SPEC")
    if args.series is not None and args.a is not None:
        raise InvalidArgumentError("give two models or --series, not both")
    if args.fail_if is not None:
        report.check_gate(args.fail_if)  # a bad clause fails now, before anything is read
    client = None if args.store == "-" else _open(args)
    bar = ProgressBar("diff", 0, force=args.progress)
    try:
        if args.series is not None:
            if client is None:
                raise InvalidArgumentError("a series is read from a store: give one, not -")
            result: Any = compare_series(
                args.series, store=client, numbers=args.numbers, atol=args.atol, rtol=args.rtol,
                renames=tuple(args.rename or ()), progress=bar,
            )  # fmt: skip
        else:
            result = compare_models(
                args.a, args.b, store=client, atol=args.atol, rtol=args.rtol,
                renames=args.rename or (), progress=bar,
            )  # fmt: skip
    finally:
        bar.close()
        if client is not None:
            client.close()
    series = args.series is not None
    if args.plot:
        (report.plot_series if series else report.plot)(result, args.plot)
    if args.json:
        _print_json(result.to_json())
    elif args.csv:
        sys.stdout.write(report.series_csv(result) if series else report.csv_text(result))
    else:
        text = (
            report.series_text(result)
            if series
            else report.text(result, top=None if args.all else args.top)
        )
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if args.plot:
        print(f"plot written to {args.plot}", file=sys.stderr)
    if args.fail_if is not None:
        diffs = [s.diff for s in result.steps] if series else [result]
        failing = [row for d in diffs for row in report.failing(d, args.fail_if)]
        if failing:
            names = ", ".join(sorted({str(r["name"]) for r in failing})[:5])
            print(f"modelfs: --fail-if {args.fail_if!r} matched {len(failing)} tensors: {names}",
                  file=sys.stderr)  # fmt: skip
            return 4
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    from .mount import MountOptions, run_foreground, start_background

    opts = MountOptions(
        store=args.store, mountpoint=args.mountpoint, cache_dir=args.cache_dir,
        cache_size=args.cache_size, read_only=args.read_only, allow_other=args.allow_other,
        refresh_interval=args.refresh_interval, fuse_options=args.o or [],
        max_requests=args.max_requests, retry_seconds=args.retry_seconds,
        s3_options=s3_options(args),
    )  # fmt: skip
    if args.foreground:
        run_foreground(opts, args.ready_fd)
        return 0
    from .mount import check_fuse_available, check_mountpoint

    check_fuse_available()  # fail fast, in the caller's terminal
    check_mountpoint(args.mountpoint)
    log_file = args.log_file or os.path.join(
        args.cache_dir or str(default_cache_dir(args.store)), "mount.log"
    )
    note = start_background(args.argv, log_file)
    if note:
        print(f"modelfs: {note}", file=sys.stderr)
    print(f"mounted {args.store} at {args.mountpoint} (log: {log_file})")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from .mount import sync_staged

    committed, failed = sync_staged(
        args.store, args.cache_dir, max_requests=args.max_requests,
        retry_seconds=args.retry_seconds, s3_options=s3_options(args),
    )  # fmt: skip
    for path in committed:
        print(f"committed {path}")
    for path in failed:
        print(f"still staged (commit failed): {path}", file=sys.stderr)
    if not committed and not failed:
        print("nothing to commit")
    return 1 if failed else 0


def cmd_umount(args: argparse.Namespace) -> int:
    from .mount import unmount

    unmount(args.mountpoint, timeout=args.timeout)
    print(f"unmounted {args.mountpoint}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    path = os.path.join(args.mountpoint, ".modelfs", "stats")
    try:
        with open(path) as f:
            stats = json.load(f)
    except FileNotFoundError:
        raise ModelfsError(f"{args.mountpoint} is not a modelfs mount") from None
    if args.json:
        _print_json(stats)
        return 0
    for key, value in stats.items():
        if isinstance(value, int) and ("bytes" in key or key.startswith("disk_cache")):
            value = f"{value} ({human(value)})"
        print(f"{key:>22}: {value}")
    return 0


def _warmup_target(args: argparse.Namespace) -> tuple[Client, list[str]]:
    """The store and cache that warmup's paths name, and the paths as store paths: those
    of the mount they lie in, or --store's (with its cache directory)."""
    if args.store is not None:
        client = open_store(
            args.store, cache_dir=args.cache_dir, cache_size=args.cache_size or DEFAULT_CACHE_SIZE,
            max_requests=args.max_requests, retry_seconds=args.retry_seconds,
            s3_options=s3_options(args),
        )  # fmt: skip
        return client, list(args.paths)
    if not args.paths:
        raise InvalidArgumentError("give a path in a modelfs mount, or --store URL")
    located = []
    for path in args.paths:
        found = find_mount(path)
        if found is None:
            raise InvalidArgumentError(
                f"{path} is not in a modelfs mount: give paths in a mount, or --store URL "
                "(and --cache-dir) with paths in the store"
            )
        located.append(found)
    mounts = sorted({m.mountpoint for m, _ in located})
    if len(mounts) > 1:
        raise InvalidArgumentError(
            f"the paths lie in {len(mounts)} mounts ({', '.join(mounts)}): warm each separately"
        )
    mount = located[0][0]
    if args.cache_dir is not None and os.path.abspath(args.cache_dir) != mount.cache_dir:
        raise InvalidArgumentError(
            f"paths in the mount at {mount.mountpoint} go to its cache ({mount.cache_dir}): "
            "--cache-dir is for --store"
        )
    client = open_store(
        mount.store, cache_dir=mount.cache_dir, cache_size=args.cache_size or mount.cache_size,
        max_requests=args.max_requests, retry_seconds=args.retry_seconds,
        s3_options=s3_options(args),
    )  # fmt: skip
    return client, [path for _, path in located]


def cmd_warmup(args: argparse.Namespace) -> int:
    if args.pin + args.unpin + args.list > 1:
        raise InvalidArgumentError("give one of --pin, --unpin and --list")
    if not args.paths and not args.list:
        raise InvalidArgumentError("give the files or directories to warm up")
    client, paths = _warmup_target(args)
    with client:
        if args.list:
            return _list_pins(client, paths, args)
        if args.unpin:
            removed = client.unpin(paths)
            if args.json:
                _print_json([{"path": p.meta.get("path"), "version": p.meta.get("version"),
                              "bytes": p.bytes} for p in removed])  # fmt: skip
            for p in removed if not args.json else ():
                print(f"unpinned {p.meta.get('path')}@{p.meta.get('version')} ({human(p.bytes)})")
            if not removed and not args.json:
                print("nothing was pinned there")
            return 0
        bar = ProgressBar("warmup", 0, force=args.progress)

        def planned(total: int) -> None:
            bar.total = total

        summary = client.warmup(paths, pin=args.pin, progress=bar, on_plan=planned, jobs=args.jobs)
        bar.close()
    if args.json:
        _print_json(summary.to_json())
        return 0
    s = summary
    pinned = f"; pinned {s.pinned} files" if s.pinned else ""
    print(
        f"warmed {s.files} files ({human(s.bytes)}, {s.blocks} blocks): {s.blocks_cached} "
        f"blocks already cached, {s.blocks_fetched} fetched ({human(s.bytes_fetched)}) in "
        f"{s.seconds:.1f} s, {s.mb_per_s:.0f} MB/s{pinned}"
    )
    return 0


def _list_pins(client: Client, paths: list[str], args: argparse.Namespace) -> int:
    prefixes = [p.strip("/") for p in paths]
    pins = [
        p for p in client.pins()
        if not prefixes or any(
            not pre or p.meta.get("path") == pre or str(p.meta.get("path")).startswith(pre + "/")
            for pre in prefixes
        )
    ]  # fmt: skip
    cache = client.reader.disk_cache
    assert cache is not None
    rows = [
        {"path": p.meta.get("path"), "version": p.meta.get("version"), "blocks": len(p.blocks),
         "cached_blocks": sum(cache.contains(b) for b in p.blocks), "bytes": p.bytes,
         "time": p.time}
        for p in pins
    ]  # fmt: skip
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        print(
            f"{r['path']}@{r['version']}  {human(r['bytes'])}  {r['cached_blocks']} of "
            f"{r['blocks']} blocks cached  pinned {_when(r['time'])}"
        )
    print(
        f"pinned in all: {human(cache.pinned_bytes())} of the cache limit "
        f"{human(cache.max_bytes)} ({cache.directory})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelfs", description="A deduplicating, verified store for model files."
    )
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("store", help="store URL: a path, file:///abs/path or s3://bucket/prefix")
    common.add_argument(
        "--cache-dir", help="local block cache directory (default ~/.cache/modelfs/...)"
    )
    common.add_argument(
        "--cache-size", type=parse_size, default=DEFAULT_CACHE_SIZE, help="cache limit, e.g. 10G"
    )
    common.add_argument(
        "--max-requests", type=positive_int, default=DEFAULT_MAX_REQUESTS, metavar="N",
        help=f"requests to the store in flight at once (default {DEFAULT_MAX_REQUESTS})",
    )  # fmt: skip
    common.add_argument(
        "--retry-seconds", type=seconds, default=DEFAULT_MAX_ELAPSED, metavar="SECONDS",
        help="how long to retry a failing request to an S3 store before giving up "
        f"(default {DEFAULT_MAX_ELAPSED:.0f})",
    )  # fmt: skip
    common.add_argument(
        "--endpoint-url", metavar="URL",
        help="S3 endpoint (default: AWS_ENDPOINT_URL or the AWS configuration)",
    )  # fmt: skip
    common.add_argument("--region", help="S3 region (default: the AWS configuration)")
    common.add_argument(
        "--profile", help="AWS profile for the credentials (never pass secrets as arguments)"
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument(
        "--progress", action="store_true", help="show progress even when not on a terminal"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[common], help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("init", cmd_init, "create an empty store")
    defaults = ChunkingLimits()
    sp.add_argument("--min-block-size", type=parse_size, default=defaults.min_size)
    sp.add_argument("--avg-block-size", type=parse_size, default=defaults.avg_size)
    sp.add_argument("--max-block-size", type=parse_size, default=defaults.max_size)
    sp.add_argument("--zstd-level", type=int, default=StoreConfig().zstd_level)
    sp.add_argument("--pack-size", type=parse_size, default=StoreConfig().pack_size)
    sp.add_argument(
        "--commit-window", type=seconds, default=DEFAULT_COMMIT_WINDOW, metavar="SECONDS",
        help="the longest a writer may take from checking what a gc condemned to making its "
        f"commit visible (default {DEFAULT_COMMIT_WINDOW:g}); gc's grace must be twice this",
    )  # fmt: skip
    sp.add_argument("--unsafe-single-writer", action="store_true",
                    help="allow a server that ignores conditional writes (only one writer at a time!)")  # fmt: skip

    sp = add("put", cmd_put, "store a local file as the next version of PATH")
    sp.add_argument("local", help="local file, or - for standard input")
    sp.add_argument("path", nargs="?", help="path in the store (default: the file's name)")
    sp.add_argument("-m", "--message", default="", help="a note kept with the version")
    sp.add_argument(
        "--meta",
        action="append",
        metavar="KEY=VALUE",
        help="metadata, e.g. user.metric.accuracy=0.91",
    )
    sp.add_argument(
        "--metric", action="append", metavar="NAME=VALUE",
        help="a metric recorded with the version, e.g. accuracy=0.913 (repeatable)",
    )  # fmt: skip

    sp = add("get", cmd_get, "copy a stored file to a local file")
    sp.add_argument("path", help="a path or an address (PATH@N, PATH@NAME, DIR@NAME/FILE...)")
    sp.add_argument(
        "local", nargs="?", help="destination file or directory, or - for standard output"
    )
    sp.add_argument("--version", type=int, help="a past version (default: current)")
    sp.add_argument("-q", "--quiet", action="store_true")

    sp = add("cat", cmd_cat, "write a stored file to standard output")
    sp.add_argument("path")
    sp.add_argument("--version", type=int)

    sp = add("ls", cmd_ls, "list stored files")
    sp.add_argument("prefix", nargs="?", default="", help="a directory in the store")
    sp.add_argument("-l", "--long", action="store_true", help="sizes, versions and times")

    sp = add("log", cmd_log, "versions of a stored file, newest first, with metrics and names")
    sp.add_argument("path")

    sp = add("stat", cmd_stat, "blocks, dedup and compression of a file, or of the whole store")
    sp.add_argument("path", nargs="?")
    sp.add_argument("--version", type=int)

    sp = add("rm", cmd_rm, "delete a file (its history is kept)")
    sp.add_argument("path")

    sp = add("mount", cmd_mount, "mount a store as a directory tree (in the background by default)")
    sp.add_argument("mountpoint")
    sp.add_argument("--read-only", action="store_true", help="refuse every write")
    sp.add_argument(
        "--allow-other", action="store_true", help="let other users (and containers) read it"
    )
    sp.add_argument(
        "--foreground", action="store_true", help="stay in the foreground; log to stderr"
    )
    sp.add_argument(
        "-o", action="append", metavar="OPTION[,OPTION]", help="extra FUSE mount options"
    )
    sp.add_argument(
        "--refresh-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how stale listings and attributes may be (open always sees the newest version)",
    )
    sp.add_argument("--log-file", help="the daemon's log (default CACHE_DIR/mount.log)")
    sp.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    add("sync", cmd_sync, "commit files a stopped mount left staged in its cache directory")

    sp = sub.add_parser("umount", help="unmount, waiting for the daemon to finish")
    sp.add_argument("mountpoint")
    sp.add_argument("--timeout", type=float, default=60.0)
    sp.set_defaults(fn=cmd_umount)

    sp = sub.add_parser("stats", help="a mount's cache and traffic figures")
    sp.add_argument("mountpoint")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_stats)

    sp = sub.add_parser(
        "warmup", help="fetch files into the local cache ahead of use (and pin them there)",
        description="Fetch files, or every file under directories, into the disk cache that "
        "a mount reads: PATHs in a running mount, or with --store, paths in that store.",
    )  # fmt: skip
    sp.add_argument("paths", nargs="*", metavar="PATH", help="files or directories")
    sp.add_argument("--store", metavar="URL", help="PATHs are paths in this store, not a mount")
    sp.add_argument("--cache-dir", help="with --store: the cache (default that of the store)")
    sp.add_argument("--cache-size", type=parse_size,
                    help="cache limit (default the mount's, or 10G)")  # fmt: skip
    sp.add_argument("--pin", action="store_true", help="pin them: eviction never removes them")
    sp.add_argument("--unpin", action="store_true", help="remove their pins; fetch nothing")
    sp.add_argument("--list", action="store_true", help="list the pins (under PATHs)")
    sp.add_argument("--jobs", type=positive_int, default=DEFAULT_JOBS, metavar="N",
                    help=f"batches fetched at once (default {DEFAULT_JOBS})")  # fmt: skip
    sp.add_argument("--max-requests", type=positive_int, default=DEFAULT_MAX_REQUESTS,
                    metavar="N", help="requests to the store in flight at once")  # fmt: skip
    sp.add_argument("--retry-seconds", type=seconds, default=DEFAULT_MAX_ELAPSED,
                    metavar="SECONDS", help="how long to retry a failing S3 request")  # fmt: skip
    sp.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint")
    sp.add_argument("--region", help="S3 region")
    sp.add_argument("--profile", help="AWS profile for the credentials")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument(
        "--progress", action="store_true", help="show progress even when not on a terminal"
    )
    sp.set_defaults(fn=cmd_warmup)

    sp = add(
        "forget", cmd_forget, "remove versions from their histories by rule (gc reclaims the space)"
    )
    sp.add_argument("target", help="a file, a directory (everything under it), or / for the store")
    sp.add_argument("--keep-last", type=int, metavar="N", help="keep each path's N newest versions")
    sp.add_argument("--keep-within", type=duration, metavar="DURATION",
                    help="keep versions committed within this long (30d, 12h, 1h30m)")  # fmt: skip
    sp.add_argument(
        "--keep-best", type=int, metavar="K", help="keep the K best versions --by a metric"
    )
    sp.add_argument("--by", metavar="METRIC[:min]",
                    help="the metric --keep-best ranks by: higher is better, or METRIC:min")  # fmt: skip
    sp.add_argument("--keep-alias-history", type=duration, default=DEFAULT_ALIAS_HISTORY,
                    metavar="DURATION",
                    help="keep what an alias named within this long (default 7d)")  # fmt: skip
    sp.add_argument("--dry-run", action="store_true",
                    help="say what would be forgotten and what a gc would then free")  # fmt: skip
    sp.add_argument(
        "-v", "--verbose", action="store_true", help="also say why each kept version is kept"
    )

    sp = add(
        "gc", cmd_gc, "delete what no kept version, name or snapshot reaches; writers may go on"
    )
    sp.add_argument(
        "--dry-run", action="store_true", help="say what would be condemned; change nothing"
    )
    sp.add_argument("--grace", type=duration, default=DEFAULT_GRACE, metavar="DURATION",
                    help=f"how long condemned objects wait before deletion (default {DEFAULT_GRACE:g} s; "
                    "at least twice the store's commit window)")  # fmt: skip
    sp.add_argument("--repack", type=float, default=DEFAULT_REPACK, metavar="FRACTION",
                    help=f"rewrite packs at least this dead (default {DEFAULT_REPACK})")  # fmt: skip
    sp.add_argument("--max-unused", type=float, default=DEFAULT_MAX_UNUSED, metavar="FRACTION",
                    help="when gc deletes or rewrites anything else, rewrite more packs, the most "
                    "dead first, until at most this share of the unreachable bytes stays "
                    f"(default {DEFAULT_MAX_UNUSED})")  # fmt: skip
    sp.add_argument("--no-wait", action="store_true",
                    help="condemn and return; the next gc after the grace period deletes")  # fmt: skip
    sp.add_argument("--break-lock", action="store_true",
                    help="take the collection lock from a collector you know is dead")  # fmt: skip

    sp = add("fsck", cmd_fsck, "read and verify every block; report what is corrupt or missing")
    sp.add_argument(
        "path", nargs="?", help="check only this file (fetching every block from the store)"
    )
    sp.add_argument("--version", type=int)
    sp.add_argument(
        "--repair", action="store_true",
        help="set damaged names records aside (under damaged/), so that their files can be "
        "named and measured again; their tags, aliases and later metrics are lost",
    )  # fmt: skip

    sp = add("tag", cmd_tag, "name a version with a tag, which never moves")
    sp.add_argument("path", help="a file or directory, or an address of one of its versions")
    sp.add_argument("name")
    sp.add_argument("--version", type=int, help="a past version (default: current)")
    sp.add_argument("-m", "--message", default="", help="why, kept in the names log")
    sp.add_argument(
        "--target", metavar="ADDRESS",
        help="name this version of a path under PATH (the name still belongs to PATH)",
    )  # fmt: skip

    sp = add("untag", cmd_untag, "remove a tag (the removal is logged)")
    sp.add_argument("path")
    sp.add_argument("name")
    sp.add_argument("-m", "--message", default="")

    sp = add(
        "alias", cmd_alias, "point an alias (a name that moves, every move logged) at a version"
    )
    sp.add_argument("path", help="a file or directory, or an address of one of its versions")
    sp.add_argument("name")
    sp.add_argument("--version", type=int, help="a past version (default: current)")
    sp.add_argument("-m", "--message", default="", help="why, kept in the names log")
    sp.add_argument(
        "--expect", metavar="ADDRESS", help="move it only if it still names this version"
    )
    sp.add_argument(
        "--target", metavar="ADDRESS",
        help="point it at this version of a path under PATH: alias STORE run champion "
        "--target run/step-2",
    )  # fmt: skip

    sp = add("alias log", cmd_alias_log, "every change of a tag or alias, oldest first")
    sp.add_argument("path")
    sp.add_argument("name")

    sp = add("alias rm", cmd_alias_rm, "remove an alias (the removal is logged)")
    sp.add_argument("path")
    sp.add_argument("name")
    sp.add_argument("-m", "--message", default="")

    sp = add("tags", cmd_tags, "tags and aliases, with their targets and metrics")
    sp.add_argument("path", nargs="?", help="of this file or directory and what is under it")

    sp = add("metric", cmd_metric, "record metrics of a version (makes no new version)")
    sp.add_argument("address", help="a path (its current version) or an address")
    sp.add_argument("assignments", nargs="*", metavar="NAME=VALUE")
    sp.add_argument("--delete", action="append", metavar="NAME", help="remove a metric")
    sp.add_argument("-m", "--message", default="", help="a note kept in the names log")

    sp = add("select", cmd_select, "rank the versions of a file, or under a prefix, by metrics")
    sp.add_argument("target", metavar="PATH_OR_PREFIX",
                    help="a file (all its versions) or a prefix such as checkpoints/")  # fmt: skip
    sp.add_argument("--where", help="e.g. \"accuracy > 0.9 and dataset == 'sst2'\"")
    sp.add_argument("--order-by", help="comma-separated fields, '-' for descending: -accuracy")
    sp.add_argument("--limit", type=positive_int, metavar="K", help="show at most K")
    sp.add_argument("--all-versions", action="store_true",
                    help="every version under a prefix, not only the current ones")  # fmt: skip
    sp.add_argument("--csv", action="store_true", help="comma-separated output")
    sp.add_argument("--alias", metavar="NAME", help="point this alias at the best one")
    sp.add_argument("-m", "--message", default="", help="for the alias's log")

    sp = add("diff", cmd_diff, "compare two models tensor by tensor, or drift over a series")
    sp.add_argument("a", nargs="?", metavar="A",
                    help="an address (bert@champion, m.safetensors@3), STORE_URL::ADDRESS, "
                    "or a local path starting with ./ or /")  # fmt: skip
    sp.add_argument("b", nargs="?", metavar="B", help="the model to compare with A, as A")
    sp.add_argument("--series", metavar="SPEC",
                    help="PATH (all its versions), PATH@N..M, or PREFIX/ of checkpoints")  # fmt: skip
    sp.add_argument("--numbers", action="store_true",
                    help="with --series: measure each change (default: changed or not, from "
                    "block ids alone)")  # fmt: skip
    sp.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default 0)")
    sp.add_argument("--rtol", type=float, default=0.0, help="relative tolerance (default 0)")
    sp.add_argument("--rename", action="append", metavar="OLD=NEW",
                    help="tensor-name prefix map, e.g. 'model.=' (repeatable)")  # fmt: skip
    sp.add_argument("--top", type=positive_int, default=20, metavar="N",
                    help="show the N tensors that changed most (default 20)")  # fmt: skip
    sp.add_argument("--all", action="store_true", help="show every tensor that differs")
    sp.add_argument("--csv", action="store_true", help="one row per tensor, comma-separated")
    sp.add_argument("--plot", metavar="FILE.png",
                    help="a heatmap of relative change by layer and module kind")  # fmt: skip
    sp.add_argument("--fail-if", metavar="EXPR",
                    help="exit 4 if any tensor matches, e.g. \"rel_l2 > 1e-3\"")  # fmt: skip
    return p


# Subcommands of a command that takes a positional store first (alias log STORE ...):
# argparse cannot tell them from a store, so they are told apart here, before parsing.
_TWO_WORD = {"alias": ("log", "rm")}


def _prepare_argv(argv: list[str]) -> list[str]:
    """Join two-word commands, and keep `--order-by -accuracy` from reading as an option."""
    argv = list(argv)
    for i in range(len(argv) - 1):
        if argv[i] == "--order-by" and argv[i + 1].startswith("-"):
            argv[i : i + 2] = [f"--order-by={argv[i + 1]}"]
            break
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is None or first + 1 >= len(argv):
        return argv
    if argv[first + 1] in _TWO_WORD.get(argv[first], ()):
        return [*argv[:first], f"{argv[first]} {argv[first + 1]}", *argv[first + 2 :]]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    # A file name that is not UTF-8 prints as the bytes it is, as ls prints it (stderr,
    # where logs go, keeps escaping them: a log stays valid UTF-8).
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    parser = build_parser()
    argv = _prepare_argv(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    args.argv = [a for a in argv if a not in ("-v", "-vv", "--verbose")]
    # A mount daemon logs what it does (to its log file); commands only warn.
    verbosity = args.verbose + (1 if args.command == "mount" else 0)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbosity, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except ModelfsError as e:
        print(f"modelfs: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    except OSError as e:  # local files: permission denied, disk full, missing directory
        print(f"modelfs: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("modelfs: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
