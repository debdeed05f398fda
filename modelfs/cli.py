"""The modelfs command line: parses, calls the Python API, prints. No logic of its own.

Exit status: 0 success, 1 a modelfs error (message on stderr, nothing
changed), 2 bad usage, 3 fsck found problems.
"""

from __future__ import annotations

import argparse
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
from .errors import ModelfsError
from .store import ChunkingLimits, StoreConfig
from .store.store import DEFAULT_MAX_REQUESTS

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


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


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
        result = client.put(dest, source, metadata=metadata, message=args.message, progress=bar)
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


def cmd_log(args: argparse.Namespace) -> int:
    with _open(args) as client:
        versions = client.history(args.path)[::-1]  # newest first, in both forms
    if args.json:
        _print_json([Client.version_dict(v) for v in versions])
        return 0
    for v in versions:
        if v.deleted:
            print(f"v{v.version:<4} {_when(v.time)}  deleted")
        else:
            msg = f"  {v.message}" if v.message else ""
            print(f"v{v.version:<4} {_when(v.time)}  {v.size:>14}  {v.content_hash}{msg}")
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    with _open(args) as client:
        info = client.stat(args.path, args.version) if args.path else client.store_stats()
    if args.json:
        _print_json(info)
        return 0
    for key, value in info.items():
        if key.endswith("bytes") or key.startswith("logical") or key == "size":
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
            print(
                f"{result['path']} version {result['version']}: {result['blocks']} blocks verified, no problems found"
            )
        return 0
    with _open(args) as client:
        bar = ProgressBar("fsck", 0, force=args.progress)
        report = client.fsck(bar)
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
        print("no problems found" if report.ok else "PROBLEMS FOUND")
    return 0 if report.ok else 3


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

    sp = add("get", cmd_get, "copy a stored file to a local file")
    sp.add_argument("path")
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

    sp = add("log", cmd_log, "versions of a stored file, newest first")
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

    sp = add("fsck", cmd_fsck, "read and verify every block; report what is corrupt or missing")
    sp.add_argument(
        "path", nargs="?", help="check only this file (fetching every block from the store)"
    )
    sp.add_argument("--version", type=int)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # A file name that is not UTF-8 prints as the bytes it is, as ls prints it (stderr,
    # where logs go, keeps escaping them: a log stays valid UTF-8).
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
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
