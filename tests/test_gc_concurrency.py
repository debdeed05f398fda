"""Collection under load (format 4): `modelfs gc` in another process while writers, in
threads, processes and mounts, save new versions that deduplicate against old blocks,
even ones a collection has condemned; a gc killed at any moment; two gcs at once; a
mount reading a version as it is forgotten and collected.

After each round every retained version, and every tagged one, reads back byte for
byte as its writer recorded it, no committed version is missing, and `modelfs fsck`
exits 0. No wrong bytes, ever: a read either returns the right ones or fails clearly.

The files are made of 256 KiB pieces, each a deterministic function of its number, so
that any process can rebuild a version from its recipe (the numbers of its pieces); a
new version is an older recipe (often of a version already forgotten) with one or two
pieces replaced by new ones, which makes writers deduplicate against blocks that a
collection may be condemning at that moment.

This file is also a script for the other processes of those tests:
`python test_gc_concurrency.py writer|collector JSON` writes versions (one JSON line
per commit on stdout) or forgets and collects until a stop file appears (one JSON line
per collection), each with a Store of its own: another machine's view of the store;
`gc-dies-condemning` is a gc that SIGKILLs itself just after writing its record.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import blake3
import pytest
from mounting import wait_until

import modelfs
from modelfs.errors import ForgottenError
from modelfs.store.gc import iter_records
from modelfs.store.retention import Policy

pytestmark = pytest.mark.slow  # each runs writers and collections for seconds

PIECE = 256 << 10
PIECES = 16  # a file of 4 MiB
WINDOW = 0.2  # the stores' commit window, seconds
GRACE = 0.5  # gc --grace: the shortest the window allows (twice it) plus a little
# Small blocks and packs: many packs, each shared by a few versions, so that a
# collection finds packs wholly dead and packs mostly dead (rewritten) at once.
INIT_OPTIONS = (
    "--commit-window", str(WINDOW), "--min-block-size", "16K", "--avg-block-size", "64K",
    "--max-block-size", "256K", "--pack-size", "1M",
)  # fmt: skip
# The tests' random choices (not their timing): MODELFS_GC_SEED=N repeats them.
SEED = int(os.environ.get("MODELFS_GC_SEED", random.randrange(1 << 32)))


# content


@functools.lru_cache(maxsize=128)
def piece(n: int) -> bytes:
    return hashlib.shake_256(b"modelfs gc test piece %d" % n).digest(PIECE)


def content(recipe: list[int]) -> bytes:
    return b"".join(piece(n) for n in recipe)


def mutate(rng: random.Random, recipe: list[int], fresh: Iterator[int]) -> list[int]:
    """An older recipe with one or two of its pieces replaced by new ones."""
    out = list(recipe)
    for _ in range(rng.randint(1, 2)):
        out[rng.randrange(len(out))] = next(fresh)
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Committed:
    """What a writer committed: the version number the store gave it and its bytes' hashes."""

    path: str
    version: int
    sha256: str
    blake3: str
    recipe: list[int]
    writer: str
    tag: str | None = None

    @classmethod
    def of(cls, path: str, version: int, recipe: list[int], writer: str) -> Committed:
        data = content(recipe)
        return cls(path, version, sha256(data), blake3.blake3(data).hexdigest(), recipe, writer)


# the writers and the collector (in threads here, or in processes of their own)


def write_versions(
    client: modelfs.Client,
    *,
    writer: str,
    paths: list[str],
    known: list[list[int]],
    count: int,
    seed: int,
    fresh_from: int,
    pause: float,
    emit: Callable[[Committed], None],
    tag_share: float = 0.25,
    rollback_share: float = 0.3,
) -> None:
    """Save `count` new versions, each an older recipe (from `known` or from this writer's
    own) slightly changed, to paths chosen at random; tag some of them just after. Some
    are an older recipe unchanged (a rollback): the same manifest as a version that may
    be forgotten, and condemned, by now."""
    rng = random.Random(seed)
    known = [list(r) for r in known]
    fresh = itertools.count(fresh_from)
    for i in range(count):
        path = rng.choice(paths)
        older = rng.choice(known)
        recipe = list(older) if rng.random() < rollback_share else mutate(rng, older, fresh)
        result = client.put(path, content(recipe), message=f"{writer} #{i}")
        committed = Committed.of(path, result.version, recipe, writer)
        if rng.random() < tag_share:
            name = f"{writer}-{i}"
            try:
                client.tag(f"{path}@{result.version}", name)
                committed.tag = name
            except ForgottenError:
                pass  # another writer's commits made it old, and it was forgotten first
        emit(committed)
        known.append(recipe)
        time.sleep(rng.uniform(0, pause))


def collect_until(
    client: modelfs.Client,
    *,
    paths: list[str],
    stop: Path,
    seed: int,
    grace: float,
    emit: Callable[[dict], None],
) -> None:
    """Forget (keep-last 1 or 2, on some paths or the whole store) and collect, with
    random pauses, until the stop file exists. Most collections wait out their grace
    and sweep; some only condemn (--no-wait), for the next one to finish."""
    rng = random.Random(seed)
    while not stop.exists():
        time.sleep(rng.uniform(0, 0.3))
        targets = ["/"] if rng.random() < 0.2 else rng.sample(paths, rng.randint(1, len(paths)))
        keep = rng.choice((1, 2, 2))
        forgot = sum(client.forget(t, Policy(keep_last=keep)).versions for t in targets)
        time.sleep(rng.uniform(0, 0.2))
        wait = rng.random() < 0.75
        report = client.gc(grace=grace, wait=wait)
        emit({
            "forgot": forgot, "wait": wait, "run": report.run, "condemned": report.condemned,
            "reclaimed": report.reclaimed, "rewritten": report.rewritten, "kept": report.kept,
            "finished": report.finished, "pending": report.pending,
        })  # fmt: skip


def _script_main(role: str, spec: dict) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    url = spec.pop("url")
    with modelfs.open_store(url, use_disk_cache=False) as client:
        if role == "writer":
            write_versions(client, **spec, emit=lambda c: print(json.dumps(asdict(c)), flush=True))
        elif role == "collector":
            stop = Path(spec.pop("stop"))
            collect_until(
                client, **spec, stop=stop, emit=lambda r: print(json.dumps(r), flush=True)
            )
        elif role == "gc-dies-condemning":  # SIGKILLed just after its record is written
            from modelfs.store import gc

            def die(*args: object) -> None:
                os.kill(os.getpid(), signal.SIGKILL)

            gc.Collector._mark_condemned = die  # type: ignore[method-assign]
            client.gc(grace=spec["grace"])
        else:
            raise SystemExit(f"unknown role {role}")


# processes and threads that a test starts, all stopped after it


class Processes:
    """Every process a test starts; teardown kills those still running."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def script(self, role: str, spec: dict) -> subprocess.Popen:
        return self.popen([sys.executable, str(Path(__file__).resolve()), role, json.dumps(spec)])

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        p = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, **kwargs,
        )  # fmt: skip
        self.started.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.started:
            if p.poll() is None:
                p.kill()
            try:
                p.communicate(timeout=30)
            except (subprocess.TimeoutExpired, ValueError):
                pass


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    yield procs
    procs.stop_all()


def finish(p: subprocess.Popen, what: str, timeout: float = 180) -> str:
    """Wait for a script process; its stdout. It must have exited 0."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(
            f"{what} did not finish in {timeout} s\nstderr: {err[-4000:]}"
        ) from None
    assert p.returncode == 0, f"{what} exited {p.returncode}\nstderr: {err[-6000:]}"
    return out


class Helpers:
    """Helper threads: an exception in any of them fails the test (at join)."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def start(self, name: str, fn: Callable[..., None], *args, **kwargs) -> None:
        def run() -> None:
            try:
                fn(*args, **kwargs)
            except BaseException:
                self.errors.append(f"{name}:\n{traceback.format_exc()}")

        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def join(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self.threads if t.is_alive()]
        assert not self.errors, "helper threads failed:\n" + "\n".join(self.errors)
        assert not stuck, f"helper threads still running after {timeout} s: {stuck}"
        self.threads.clear()


class GcRun:
    """`modelfs gc --progress` in a process of its own, its progress lines timed as they come."""

    def __init__(self, procs: Processes, url: str, env: dict[str, str], *args: str) -> None:
        argv = [sys.executable, "-m", "modelfs", "gc", url, "--grace", str(GRACE), "--progress"]
        self.proc = procs.popen([*argv, *args], env=env)
        self.lines: list[tuple[float, str]] = []
        self.stdout = ""
        self.ended: float | None = None
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._changed.notify_all()
        with self._changed:
            self.ended = time.monotonic()
            self._changed.notify_all()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read()

    def wait_line(self, text: str, after: float = 0.0, timeout: float = 60) -> float | None:
        """When a stderr line containing text came (after the time `after`); None if the
        process ended without one."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for t, line in self.lines:
                    if t >= after and text in line:
                        return t
                if self.ended is not None:
                    return None
                left = deadline - time.monotonic()
                assert left > 0, f"no gc line with {text!r} in {timeout} s: {self.lines}"
                self._changed.wait(left)

    def kill(self) -> bool:
        """SIGKILL it; whether it was still running."""
        if self.proc.poll() is not None:
            return False
        os.kill(self.proc.pid, signal.SIGKILL)
        return True

    def wait(self, timeout: float = 120) -> int:
        rc = self.proc.wait(timeout=timeout)
        for t in self._readers:
            t.join(timeout=30)
        return rc

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first_line_at(self) -> float | None:
        """When its first progress line came: it held the collection lock from then on."""
        times = [t for t, line in self.lines if line.startswith("gc: ")]
        return times[0] if times else None

    def last_line_at(self) -> float | None:
        times = [t for t, line in self.lines if line.startswith("gc: ")]
        return times[-1] if times else None


# stores and checks


@pytest.fixture(params=["file", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new store with a commit window of 0.2 s and small blocks and packs, made with
    `modelfs init` as a user would (file:// in tmp_path, or a prefix of the session's bucket)."""
    if request.param == "s3":
        url = f"s3://{request.getfixturevalue('s3_bucket')}/{uuid.uuid4().hex[:16]}"
    else:
        url = f"file://{tmp_path / 'store'}"
    proc = subprocess.run(
        [sys.executable, "-m", "modelfs", "init", url, *INIT_OPTIONS],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return url


def check_store(url: str, records: list[Committed], cli, *, fsck: bool = True) -> dict:
    """Every committed version is in its history with its content hash; each one not
    forgotten, and each tagged one, reads back byte for byte (from the store: a fresh
    client, no disk cache); no version exists that no writer committed; fsck exits 0."""
    committed = {(r.path, r.version): r for r in records}
    assert len(committed) == len(records), "two commits were given the same version number"
    counts = {"retained": 0, "forgotten": 0, "tagged": 0}
    with modelfs.open_store(url, use_disk_cache=False) as reader:
        for path in sorted({r.path for r in records}):
            numbers = [v.version for v in reader.history(path)]
            mine = sorted(n for p, n in committed if p == path)
            assert numbers == mine, f"{path}: history {numbers}, committed {mine}"
        histories = {p: reader.history(p) for p in {r.path for r in records}}
        for r in records:
            v = histories[r.path][r.version - 1]
            assert v.version == r.version and v.manifest is not None
            assert v.content_hash == f"blake3:{r.blake3}", f"{r} is recorded as {v}"
            if v.forgotten:
                counts["forgotten"] += 1
            else:
                counts["retained"] += 1
                got = sha256(reader.read(r.path, version=r.version))
                assert got == r.sha256, f"{r.path} version {r.version} reads other bytes ({r})"
            if r.tag is not None:
                counts["tagged"] += 1
                got = sha256(reader.read(f"{r.path}@{r.tag}"))
                assert got == r.sha256, f"{r.path}@{r.tag} reads other bytes ({r})"
    if fsck:
        proc = cli("fsck", url, "--json", check=False)
        out = proc.stdout.decode(errors="replace")
        assert proc.returncode == 0, (
            f"fsck exited {proc.returncode}\n{out[-6000:]}\n{proc.stderr!r}"
        )
        counts["garbage"] = json.loads(out)["garbage"]
    return counts


def put_recipes(
    client: modelfs.Client, path: str, recipes: list[list[int]], writer: str
) -> list[Committed]:
    out = []
    for recipe in recipes:
        result = client.put(path, content(recipe))
        out.append(Committed.of(path, result.version, recipe, writer))
    return out


def add_garbage(
    client: modelfs.Client, paths: list[str], rng: random.Random, fresh: Iterator[int]
) -> list[Committed]:
    """Per path, two versions of new pieces, then a current one keeping two pieces of each
    (so their packs are mostly dead: rewritten) and new ones; then forget all but the
    current version of every path (a tagged one stays)."""
    records = []
    for path in paths:
        v1 = [next(fresh) for _ in range(PIECES)]
        v2 = [next(fresh) for _ in range(PIECES)]
        v3 = rng.sample(v1, 2) + rng.sample(v2, 2) + [next(fresh) for _ in range(PIECES - 4)]
        records += put_recipes(client, path, [v1, v2, v3], "garbage")
    tagged = records[0]
    client.tag(f"{tagged.path}@{tagged.version}", f"keep-{tagged.version}")
    tagged.tag = f"keep-{tagged.version}"
    client.forget("/", Policy(keep_last=1))
    return records


def settle(url: str, grace: float = GRACE) -> None:
    """Wait until what was written so far is older than the grace period by the store's
    clock (S3's is exact to the second), and so is every collection's grace."""
    time.sleep(grace + (1.1 if url.startswith("s3:") else 0.1))


def gc_json(cli, url: str, *args: str) -> dict:
    proc = cli("gc", url, "--grace", str(GRACE), "--json", *args, check=False)
    assert proc.returncode == 0, f"gc exited {proc.returncode}: {proc.stderr!r}"
    return json.loads(proc.stdout)


def collect_everything(cli, url: str) -> list[dict]:
    """gc until no collection is pending (each one sweeps what earlier ones condemned)."""
    reports = []
    for _ in range(4):
        settle(url)
        reports.append(gc_json(cli, url))
        if not reports[-1]["pending"]:
            return reports
    raise AssertionError(f"collections still pending after {len(reports)} gcs: {reports}")


def assert_collected(cli, url: str, client: modelfs.Client) -> dict:
    """Nothing left for a collection to do: a dry run condemns nothing, no collection is
    pending, every pack has its index object, and what is not reclaimed is dead bytes
    in packs below the rewrite threshold."""
    dry = gc_json(cli, url, "--dry-run")
    condemned = {k: v for k, v in dry["condemned"].items() if v}
    assert not condemned, f"a gc after the last one would still condemn {condemned}"
    stats = client.store_stats()
    assert stats["collections_pending"] == 0, stats
    fsck = cli("fsck", url, "--json", check=False)
    report = json.loads(fsck.stdout)
    assert fsck.returncode == 0 and report["ok"], report
    assert report["garbage"]["packs_without_index"] == 0, report["garbage"]
    assert report["garbage"]["collections_pending"] == 0, report["garbage"]
    # A pack less than --repack (0.2) dead is kept whole by design.
    assert stats["reclaimable_bytes"] < 0.2 * stats["pack_bytes"], stats
    return stats


# 1. writers in threads and processes, gc in another process, many rounds


ROUNDS = 4
VERSIONS_PER_WRITER = 5


def test_writers_deduplicating_against_condemned_blocks_lose_nothing_while_gc_runs(
    store_url: str, tmp_path: Path, cli, processes: Processes
) -> None:
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    paths = [f"ckpt/shard-{i}.safetensors.bin" for i in range(4)]
    fresh = itertools.count(0)
    records: list[Committed] = []
    records_lock = threading.Lock()

    def emit(c: Committed) -> None:
        with records_lock:
            records.append(c)

    collections: list[dict] = []
    started = time.monotonic()
    with modelfs.open_store(store_url, cache_dir=tmp_path / "cache") as client:
        for path in paths:  # the "checkpoints" every later version descends from
            base = [next(fresh) for _ in range(PIECES)]
            records += put_recipes(client, path, [base, mutate(rng, base, fresh)], "base")
        for round_ in range(ROUNDS):
            stop = tmp_path / f"stop-{round_}"
            collector = processes.script("collector", {
                "url": store_url, "paths": paths, "stop": str(stop), "seed": rng.randrange(1 << 32),
                "grace": GRACE,
            })  # fmt: skip
            known = [r.recipe for r in records]  # forgotten ones too
            writers = [
                processes.script(
                    "writer",
                    {
                        "url": store_url,
                        "writer": f"r{round_}p{k}",
                        "paths": paths,
                        "known": known,
                        "count": VERSIONS_PER_WRITER,
                        "seed": rng.randrange(1 << 32),
                        "fresh_from": 1_000_000 * (10 * round_ + k + 1),
                        "pause": 0.25,
                    },
                )  # fmt: skip
                for k in range(2)
            ]
            helpers = Helpers()
            for k in range(2):
                helpers.start(
                    f"writer thread {k}", write_versions, client, writer=f"r{round_}t{k}",
                    paths=paths, known=known, count=VERSIONS_PER_WRITER,
                    seed=rng.randrange(1 << 32), fresh_from=1_000_000 * (10 * round_ + k + 5),
                    pause=0.25, emit=emit,
                )  # fmt: skip
            helpers.join()
            for k, w in enumerate(writers):
                out = finish(w, f"writer process {k} of round {round_}")
                records += [Committed(**json.loads(line)) for line in out.splitlines()]
            stop.touch()
            out = finish(collector, f"collector of round {round_}")
            ran = [json.loads(line) for line in out.splitlines()]
            assert ran, f"no collection ran alongside the writers of round {round_}"
            collections += ran
            counts = check_store(store_url, records, cli)
            print(f"round {round_}: {len(records)} versions, {len(ran)} collections, {counts}")
        # Then everything old goes: the last versions and the tagged ones stay.
        cli("forget", store_url, "/", "--keep-last", "1")
        collections += collect_everything(cli, store_url)
        counts = check_store(store_url, records, cli)
        stats = assert_collected(cli, store_url, client)
    total = {k: sum(c["reclaimed"].get(k, 0) for c in collections) for k in ("packs", "manifests")}
    rewritten = sum(c["rewritten"].get("packs", 0) for c in collections)
    kept = sum(sum(c["kept"].values()) for c in collections)
    print(
        f"{len(collections)} collections: reclaimed {total}, {rewritten} packs rewritten, "
        f"{kept} condemned objects kept (reached during the grace); {counts}; "
        f"{stats['pack_bytes']} bytes of packs left; {time.monotonic() - started:.0f} s"
    )
    assert total["packs"] > 0, "the collections deleted nothing"


# 2. two mounts writing while gc runs


def _write_through_mount_with_cp(
    mountpoint: Path,
    local: Path,
    paths: list[str],
    known: list[list[int]],
    seed: int,
    fresh_from: int,
    emit,
) -> None:
    rng = random.Random(seed)
    fresh = itertools.count(fresh_from)
    known = [list(r) for r in known]
    for i in range(5):
        recipe = mutate(rng, rng.choice(known), fresh)
        src = local / f"cp-{i}.bin"
        src.write_bytes(content(recipe))
        path = rng.choice(paths)
        subprocess.run(["cp", str(src), str(mountpoint / path)], check=True, timeout=120)
        emit(path, recipe, "cp")
        known.append(recipe)
        time.sleep(rng.uniform(0, 0.3))


def _write_through_mount_slowly(
    mountpoint: Path, paths: list[str], known: list[list[int]], seed: int, fresh_from: int, emit
) -> None:
    """open/write piece by piece; some sessions last longer than the grace period, so
    their early uploads may be condemned before their commit."""
    rng = random.Random(seed)
    fresh = itertools.count(fresh_from)
    known = [list(r) for r in known]
    for _ in range(5):
        recipe = mutate(rng, rng.choice(known), fresh)
        path = rng.choice(paths)
        slow = rng.random() < 0.5
        with open(mountpoint / path, "wb") as f:
            for n in recipe:
                f.write(piece(n))
                if slow:
                    time.sleep(0.05)  # 16 pieces: 0.8 s, longer than the grace
        emit(path, recipe, "write")
        known.append(recipe)
        time.sleep(rng.uniform(0, 0.3))


def test_two_mounts_writing_while_gc_runs_lose_nothing(
    store_url: str, tmp_path: Path, cli, processes: Processes, mount_store
) -> None:
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    # The two mounts' writers share these paths (a session of each mount per save); the cp
    # has paths of its own (two writers of one path in one mount share one session).
    shared = [f"shard-{i}.bin" for i in range(3)]
    own = ["cp-0.bin", "cp-1.bin"]
    paths = shared + own
    fresh = itertools.count(0)
    base = [[next(fresh) for _ in range(PIECES)] for _ in paths]
    with modelfs.open_store(store_url, use_disk_cache=False) as client:
        for path, recipe in zip(paths, base, strict=True):
            put_recipes(client, path, [recipe], "base")
    a = mount_store(store_url, "--cache-size", "64M", name="a")
    b = mount_store(store_url, "--cache-size", "64M", name="b")
    written: list[tuple[str, list[int], str]] = []
    lock = threading.Lock()

    def emit(path: str, recipe: list[int], how: str) -> None:
        with lock:
            written.append((path, recipe, how))

    stop = tmp_path / "stop"
    collector = processes.script("collector", {
        "url": store_url, "paths": paths, "stop": str(stop), "seed": rng.randrange(1 << 32),
        "grace": GRACE,
    })  # fmt: skip
    local = tmp_path / "local"
    local.mkdir()
    helpers = Helpers()
    helpers.start("cp into mount b", _write_through_mount_with_cp, b.path, local, own, base,
                  rng.randrange(1 << 32), 1_000_000, emit)  # fmt: skip
    helpers.start("writes into mount a", _write_through_mount_slowly, a.path, shared, base,
                  rng.randrange(1 << 32), 2_000_000, emit)  # fmt: skip
    helpers.start("writes into mount b", _write_through_mount_slowly, b.path, shared, base,
                  rng.randrange(1 << 32), 3_000_000, emit)  # fmt: skip
    helpers.join()
    stop.touch()
    collections = [json.loads(line) for line in finish(collector, "collector").splitlines()]

    # Each file written and closed is a version whose content hash is that of its bytes.
    records: list[Committed] = []
    with modelfs.open_store(store_url, use_disk_cache=False) as reader:
        for path, recipe in zip(paths, base, strict=True):
            records.append(Committed.of(path, 1, recipe, "base"))
        for path, recipe, how in written:
            c = Committed.of(path, 0, recipe, how)

            def committed(c: Committed = c) -> bool:
                found = [
                    v.version for v in reader.history(c.path)
                    if v.content_hash == f"blake3:{c.blake3}"
                ]  # fmt: skip
                c.version = found[0] if found else 0
                return bool(found)

            assert wait_until(committed, 30), f"{path} as written by {how} was never committed"
            records.append(c)
    # A content written twice to one path (a cp of the same recipe) would show once.
    assert len({(r.path, r.blake3) for r in records}) == len(records)
    counts = check_store(store_url, records, cli)
    # A third reader, a mount of its own, sees each path's newest version whole.
    c = mount_store(store_url, "--read-only", name="c")
    for path in paths:
        newest = max((r for r in records if r.path == path), key=lambda r: r.version)
        assert sha256((c.path / path).read_bytes()) == newest.sha256, path
    rewritten = sum(r["rewritten"].get("packs", 0) for r in collections)
    reclaimed = sum(r["reclaimed"].get("packs", 0) for r in collections)
    print(f"{len(written)} files written, {len(collections)} collections "
          f"(reclaimed {reclaimed} packs, rewrote {rewritten}); {counts}")  # fmt: skip
    condemned = sum(r["condemned"].get("packs", 0) + r["condemned"].get("rewrite_packs", 0)
                    for r in collections)  # fmt: skip
    assert condemned > 0, "the collections condemned nothing while the mounts wrote"


# 3. a gc killed with SIGKILL at random moments


KILL_PHASES = ("start", "scan", "mark", "grace", "sweep-scan", "sweep", "sweep")


def collection_state(client: modelfs.Client) -> str:
    """What a killed collector left: its lock, and each record's state and how many of
    the packs it condemned are still there (fewer: killed while sweeping)."""
    backend = client.store.backend
    packs = {k.rsplit("/", 1)[-1] for k in backend.list("packs/")}
    parts = ["lock"] if list(backend.list("gc/lock")) else []
    for record in iter_records(client.store):
        left = len(record.all_packs & packs)
        parts.append(f"{record.state} {left}/{len(record.all_packs)} packs")
    return ", ".join(parts) or "nothing"


def _packs_change(run: GcRun, client: modelfs.Client) -> float | None:
    """When the gc's own sweep first deleted or wrote a pack (None: it ended first)."""
    if run.wait_line("waiting") is None:
        return None
    before = set(client.store.backend.list("packs/"))
    while run.proc.poll() is None:
        if set(client.store.backend.list("packs/")) != before:
            return time.monotonic()
        time.sleep(0.002)
    return None


def _kill_in(
    run: GcRun, phase: str, rng: random.Random, client: modelfs.Client, pack_seconds: float
) -> str:
    """SIGKILL the gc at a random moment of a phase; what happened."""
    if phase == "start":
        time.sleep(rng.uniform(0, 0.6))
    elif phase == "scan":
        if run.wait_line("scanning refs and names") is None:
            return "ended first"
        time.sleep(rng.uniform(0, 0.05))
    elif phase == "mark":  # deleting the condemned packs' index objects
        if run.wait_line("condemned ") is None:
            return "ended first"
        time.sleep(rng.uniform(0, 0.02))
    elif phase == "grace":
        if run.wait_line("waiting") is None:
            return "ended first"
        time.sleep(rng.uniform(0, GRACE))
    elif phase == "sweep-scan":
        waiting = run.wait_line("waiting")
        if waiting is None or run.wait_line("scanning refs and names", after=waiting) is None:
            return "ended first"
        time.sleep(rng.uniform(0, 0.05))
    else:  # among the deletions and copies of packs
        if _packs_change(run, client) is None:
            return "ended first"
        time.sleep(rng.uniform(0, pack_seconds * 0.6))
    return "killed" if run.kill() else "ended first"


def test_a_gc_killed_at_any_moment_leaves_a_consistent_store_and_the_next_one_finishes(
    store_url: str, tmp_path: Path, cli, processes: Processes
) -> None:
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    paths = [f"run/ckpt-{i}.bin" for i in range(3)]
    fresh = itertools.count(0)
    records: list[Committed] = []
    outcomes: list[tuple[str, str, str]] = []
    with modelfs.open_store(store_url, cache_dir=tmp_path / "cache") as client:
        # A first, whole collection: how long its sweep spends on packs, to aim kills there.
        records += add_garbage(client, paths, rng, fresh)
        settle(store_url)
        run = GcRun(processes, store_url, cli.env)
        first_change = _packs_change(run, client)
        assert run.wait() == 0, run.stderr
        assert first_change is not None and run.ended is not None, run.stderr
        pack_seconds = run.ended - first_change
        check_store(store_url, records, cli)
        if store_url.startswith("file:"):
            phases = list(KILL_PHASES)
        else:  # slower: fewer, the sweep among them
            phases = ["sweep", *rng.sample([p for p in KILL_PHASES if p != "sweep"], 1)]
        rng.shuffle(phases)
        left = "nothing"
        unfinished = []
        for phase in phases:
            records += add_garbage(client, paths, rng, fresh)
            settle(store_url)
            run = GcRun(processes, store_url, cli.env)
            what = _kill_in(run, phase, rng, client, pack_seconds)
            rc = run.wait()
            if what == "ended first":
                assert rc == 0, run.stderr
            if left.startswith("lock") and run.first_line_at() is not None:
                # The killed collector's lock, taken over: its pid is gone on this host.
                assert "taking over the collection lock" in run.stderr, run.stderr
            left = collection_state(client)
            outcomes.append((phase, what, left))
            # Garbage is fine; damage is not.
            check_store(store_url, records, cli)
            if phase == "start":
                continue  # the next round's gc meets what this one left (a kill in turn)
            # The next gc takes the dead collector's lock over by itself and finishes its
            # work: no collection is left pending (each can be done twice; see gc.py).
            following = GcRun(processes, store_url, cli.env)
            assert following.wait() == 0, f"the gc after a killed one failed:\n{following.stderr}"
            if left.startswith("lock"):
                assert "taking over the collection lock" in following.stderr, following.stderr
            after = collection_state(client)
            if after != "nothing":
                unfinished.append(f"killed in {phase} ({what}), leaving {left}: the next gc "
                                  f"left {after}\n{following.stderr}")  # fmt: skip
            left = after
            check_store(store_url, records, cli)
        reports = collect_everything(cli, store_url)
        check_store(store_url, records, cli)
        stats = assert_collected(cli, store_url, client)
    print(f"packs take {pack_seconds:.3f} s of a sweep; kills: {outcomes}; then "
          f"{len(reports)} gcs; {stats['pack_bytes']} bytes of packs, "
          f"{stats['reclaimable_bytes']} reclaimable")  # fmt: skip
    assert sum(1 for _, what, _ in outcomes if what == "killed") >= len(outcomes) // 2, outcomes
    assert not unfinished, "\n".join(unfinished)


@pytest.mark.backend_independent
@pytest.mark.parametrize("killed", ["condemning", "waiting"])
def test_the_gc_right_after_a_killed_one_finishes_its_work(
    killed: str, store_url: str, tmp_path: Path, cli, processes: Processes
) -> None:
    """A collector SIGKILLed just after writing its record (state condemning, before the
    index objects go), or while it waits out its grace period; `modelfs gc` run again at
    once takes its lock over, completes its record, waits out the grace and sweeps it:
    nothing is left pending for yet another gc."""
    rng = random.Random(SEED)
    grace = 3.0  # long enough that the next gc starts within the killed one's grace
    with modelfs.open_store(store_url, cache_dir=tmp_path / "cache") as client:
        paths = [f"c/ckpt-{i}.bin" for i in range(2)]
        records = add_garbage(client, paths, rng, itertools.count())
        settle(store_url, grace)
        if killed == "condemning":
            dying = processes.script("gc-dies-condemning", {"url": store_url, "grace": grace})
            dying.communicate(timeout=120)
            assert dying.returncode == -signal.SIGKILL
        else:
            run = GcRun(processes, store_url, cli.env, "--grace", str(grace))
            assert run.wait_line("waiting") is not None, run.stderr
            assert run.kill()
            run.wait()
        left = collection_state(client)
        assert left.startswith(f"lock, {'condemning' if killed == 'condemning' else 'condemned'} ")
        report = gc_json(cli, store_url, "--grace", str(grace))
        check_store(store_url, records, cli)
        assert report["pending"] == [], (
            f"the gc right after one killed while {killed} left it pending ({left}): {report}"
        )
        assert collection_state(client) == "nothing", collection_state(client)


# 4. two collections at once


@pytest.mark.backend_independent  # the lock is a create-only write, tested on S3 elsewhere
def test_two_gcs_at_once_either_refuse_clearly_or_both_succeed_and_do_no_harm(
    store_url: str, tmp_path: Path, cli, processes: Processes
) -> None:
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    paths = [f"pair/ckpt-{i}.bin" for i in range(2)]
    fresh = itertools.count(0)
    records: list[Committed] = []
    records_lock = threading.Lock()
    results: list[str] = []

    def emit(c: Committed) -> None:
        with records_lock:
            records.append(c)

    with modelfs.open_store(store_url, cache_dir=tmp_path / "cache") as client:
        for i in range(3):
            records += add_garbage(client, paths, rng, fresh)
            settle(store_url)
            helpers = Helpers()  # a writer too, deduplicating against what is condemned
            helpers.start(
                "writer", write_versions, client, writer=f"i{i}", paths=paths,
                known=[r.recipe for r in records], count=3, seed=rng.randrange(1 << 32),
                fresh_from=1_000_000 * (i + 1), pause=0.3, emit=emit,
            )  # fmt: skip
            first = GcRun(processes, store_url, cli.env)
            time.sleep(rng.uniform(0, 0.4))
            second = GcRun(processes, store_url, cli.env)
            runs = [(first, first.wait()), (second, second.wait())]
            helpers.join()
            succeeded = []
            for run, rc in runs:
                if rc == 0:
                    succeeded.append(run)
                    continue
                assert rc == 1 and "another collection" in run.stderr, (
                    f"a gc beside another exited {rc} without saying why clearly:\n{run.stderr}"
                )
                # It refused before it changed anything: it never reported any progress.
                assert not any(line.startswith("gc: ") for line in run.stderr.splitlines())
            assert succeeded, "both gcs failed"
            if len(succeeded) == 2:  # then one ran after the other: the lock excludes
                a, b = sorted(succeeded, key=lambda r: r.first_line_at() or 0.0)
                a_last, b_first = a.last_line_at(), b.first_line_at()
                assert a_last is None or b_first is None or b_first >= a_last, (
                    "two collections ran at once:\n" + a.stderr + "\n---\n" + b.stderr
                )
            results.append("both" if len(succeeded) == 2 else "one refused")
            check_store(store_url, records, cli)
        collect_everything(cli, store_url)
        check_store(store_url, records, cli)
        assert_collected(cli, store_url, client)
    print(f"outcomes: {results}")
    assert "one refused" in results, "the second gc never met the first: the test proves nothing"


# 5. a mount reading a version as it is forgotten and collected


@pytest.mark.parametrize("store_url", ["file", "s3"], indirect=True)
def test_a_mount_reading_a_version_as_it_is_collected_never_returns_wrong_bytes(
    store_url: str, tmp_path: Path, cli, processes: Processes, mount_store
) -> None:
    size = 40 << 20
    shared = 8 << 20  # v2 keeps v1's first 8 MiB: those packs are rewritten, not deleted
    v1 = os.urandom(size)
    v2 = v1[:shared] + os.urandom(size - shared)
    grace = 4.0
    with modelfs.open_store(store_url, use_disk_cache=False) as client:
        client.put("big.bin", v1)
    written = time.monotonic()
    m = mount_store(store_url, "--cache-size", "4M", name="reader", allow_errors=True)
    region = 64 << 10
    slots = list(range(0, size - region, 2 << 20))  # 2 MiB apart: no readahead reaches the next
    rng = random.Random(SEED)
    rng.shuffle(slots)
    before, during, after = slots[:2], slots[2:8], slots[8:]
    fd = os.open(m.path / "big.bin", os.O_RDONLY)
    try:
        for off in before:
            assert os.pread(fd, region, off) == v1[off : off + region]
        with modelfs.open_store(store_url, use_disk_cache=False) as client:
            client.put("big.bin", v2)  # the open handle stays on version 1
        cli("forget", store_url, "big.bin", "--keep-last", "1")
        time.sleep(max(0.0, written + grace + 1.2 - time.monotonic()))  # v1 old enough
        run = GcRun(processes, store_url, cli.env, "--grace", str(grace))
        assert run.wait_line("waiting") is not None, run.stderr
        # Condemned, not yet deleted: reads still return version 1's bytes.
        for off in during:
            assert os.pread(fd, region, off) == v1[off : off + region], off
        assert run.proc.poll() is None, "the gc ended before the reads in its grace period"
        assert run.wait() == 0, run.stderr
        # Swept: each read of a region never read before returns the right bytes (a
        # rewritten pack is followed) or fails with ESTALE; never other bytes.
        outcomes = {"bytes": 0, "ESTALE": 0}
        for off in after + during + before:
            try:
                got = os.pread(fd, region, off)
            except OSError as e:
                assert e.errno == errno.ESTALE, f"read at {off} failed with {e!r}, not ESTALE"
                outcomes["ESTALE"] += 1
                continue
            assert got == v1[off : off + region], f"wrong bytes at {off} after the sweep"
            outcomes["bytes"] += 1
        # What version 2 shares was copied out of the rewritten packs: still readable.
        for off in range(0, shared - (1 << 20), 1 << 20):
            assert os.pread(fd, 4096, off + 8192) == v1[off + 8192 : off + 8192 + 4096], off
    finally:
        os.close(fd)
    # A new open gets the current version.
    assert sha256((m.path / "big.bin").read_bytes()) == sha256(v2)
    print(f"after the sweep: {outcomes}")
    assert outcomes["ESTALE"] > 0, "no read after the sweep reached the store"
    # The refusal is logged once per read, saying why; a collected version is no damage,
    # so nothing is logged as an error (let alone as a corrupt block).
    assert "collected while it was open" in m.log, m.log[-3000:]
    errors = [line for line in m.log.splitlines() if " ERROR " in line or "Traceback" in line]
    assert not errors, "reads of a collected version were logged as errors:\n" + "\n".join(
        errors[:4]
    )


if __name__ == "__main__":
    _script_main(sys.argv[1], json.loads(sys.argv[2]))
