"""Selection end to end: a real MiniLM fine-tune, saved through a mount, ranked and aliased.

The checkpoints of a short real fine-tune (scripts/finetune.py) are saved by
transformers' save_pretrained through a real mount as Hugging Face
directories, measured (mean cosine similarity of held-out paraphrase pairs,
computed with torch) and ranked with `modelfs select`; the champion loads
with AutoModel from `.modelfs/at/run@champion`, exactly. Then an alias moved
by many writers at once keeps a whole log, and bad input through the CLI is
refused with its reason and changes nothing.

Caveat: `modelfs alias` and Client.alias name the alias after the address's
whole path (`modelfs alias STORE run/step-2 champion` makes
`run/step-2@champion`), so `run@champion` is moved to a chosen checkpoint
with `modelfs select run/ --where "path == 'run/step-K'" --alias champion`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest
from conftest import CLI
from storeobjects import StoreObjects

import modelfs

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import finetune  # noqa: E402

STEPS = 3
# Held out: subjects the fine-tune never saw, in its own paraphrase templates.
HELD_OUT = [
    (a.format(s=s), b.format(s=s)) for a, b in finetune.TEMPLATES for s in ("rabbit", "nurse")
]


@pytest.fixture(scope="module")
def checkpoints(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(checkpoint paths, the fine-tune's mean training loss of each): 3 checkpoints of one
    step each, kept in pytest's cache between runs (finetune.py checks their sha256)."""
    cache = request.config.cache
    out = cache.mkdir("finetune-frozen") if cache is not None else tmp_path_factory.mktemp("ft")
    paths = finetune.make_checkpoints(out, "frozen", n=STEPS, steps_per_checkpoint=1)
    losses = json.loads((out / "frozen-manifest.json").read_text())["losses"]
    return paths, [losses[p.name] for p in paths]


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(finetune.MINILM_DIR, local_files_only=True)


def hf_model(checkpoint: Path, step: int):
    """The checkpoint as a transformers BertModel; its config says which step it is."""
    model = transformers.AutoModel.from_pretrained(finetune.MINILM_DIR, local_files_only=True)
    missing, unexpected = model.load_state_dict(load_file(str(checkpoint)), strict=False)
    assert missing == [] and set(unexpected) <= {"embeddings.position_ids"}
    model.config.finetune_step = step
    return model.eval()


def held_out_similarity(model, tokenizer) -> float:
    """Mean cosine similarity of the mean-pooled embeddings of the held-out paraphrase pairs."""
    with torch.no_grad():
        embedded = []
        for side in zip(*HELD_OUT, strict=True):
            enc = tokenizer(list(side), padding=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            embedded.append((hidden * mask).sum(1) / mask.sum(1))
        return torch.nn.functional.cosine_similarity(*embedded).mean().item()


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def differing(a, b) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


def run_json(cli: CLI, *args: object):
    return json.loads(cli(*args, "--json").stdout)


def test_the_best_fine_tuned_checkpoint_is_selected_loaded_exactly_and_its_alias_moves(
    store_url: str, mount_store, cli: CLI, checkpoints, tokenizer, monkeypatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    paths, losses = checkpoints
    m = mount_store(store_url)
    s = store_url
    models, similarity = {}, {}
    for k, (path, loss) in enumerate(zip(paths, losses, strict=True), 1):
        models[k] = hf_model(path, k)
        similarity[k] = held_out_similarity(models[k], tokenizer)
        directory = m.path / "run" / f"step-{k}"
        models[k].save_pretrained(directory)
        assert sorted(os.listdir(directory)) == ["config.json", "model.safetensors"]
        cli("metric", s, f"run/step-{k}", f"cos_sim={similarity[k]!r}", "-m", "held-out")
        os.setxattr(directory / "model.safetensors", "user.metric.loss", repr(loss).encode())
    assert len(set(similarity.values())) == STEPS, similarity  # the steps are told apart
    best = max(similarity, key=similarity.get)
    other = min(similarity, key=similarity.get)

    # The training loss set through the mount ranks the weight files.
    rows = run_json(cli, "select", s, "run/", "--where", "has(loss)", "--order-by", "loss")
    by_loss = sorted(range(1, STEPS + 1), key=lambda k: losses[k - 1])
    assert [(r["address"], r["metrics"]) for r in rows] == [
        (f"run/step-{k}/model.safetensors@1", {"loss": losses[k - 1]}) for k in by_loss
    ]

    out = cli("select", s, "run/", "--where", "cos_sim > -1", "--order-by", "-cos_sim",
              "--alias", "champion", "-m", "best held-out").stdout.decode().splitlines()  # fmt: skip
    assert [line.split()[0] for line in out[:STEPS]] == [
        f"run/step-{k}@1" for k in sorted(similarity, key=similarity.get, reverse=True)
    ]
    assert out[STEPS].startswith(f"alias run@champion -> run/step-{best}@1 blake3:")

    view = m.path / ".modelfs" / "at" / "run@champion"
    loaded = transformers.AutoModel.from_pretrained(view)
    assert differing(loaded, models[best]) == []
    assert differing(loaded, models[other]), "the champion loaded the wrong checkpoint"
    assert loaded.config.finetune_step == best
    assert os.getxattr(view, "user.modelfs.path") == f"run/step-{best}".encode()
    old_hash = sha256_of(m.path / "run" / f"step-{best}" / "model.safetensors")
    new_hash = sha256_of(m.path / "run" / f"step-{other}" / "model.safetensors")
    assert old_hash != new_hash

    with open(view / "model.safetensors", "rb") as reader:
        digest = hashlib.sha256(reader.read(1 << 20))
        cli("select", s, "run/", "--where", f"path == 'run/step-{other}'", "--alias", "champion",
            "-m", "moved")  # fmt: skip
        while chunk := reader.read(8 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == old_hash  # the open file kept its version
    assert sha256_of(view / "model.safetensors") == new_hash  # the next open follows the alias
    assert transformers.AutoModel.from_pretrained(view).config.finetune_step == other

    log = run_json(cli, "alias", "log", s, "run", "champion")
    assert [(e.get("from", {}).get("path"), e["to"]["path"], e["message"]) for e in log] == [
        (None, f"run/step-{best}", "best held-out"),
        (f"run/step-{best}", f"run/step-{other}", "moved"),
    ]


# many writers at once


def where(step: int, version: int) -> str:
    return f"path == 'run/step-{step}' and version == {version}"


def test_one_alias_moved_by_threads_while_two_mounts_measure_and_read_keeps_a_whole_log(
    local_store_url: str, mount_store, cli: CLI, checkpoints, tmp_path: Path
) -> None:
    paths, _ = checkpoints
    s = local_store_url
    base = json.loads((finetune.MINILM_DIR / "config.json").read_text())
    configs = {k: json.dumps({**base, "finetune_step": k}, indent=2).encode() for k in (1, 2, 3)}
    # Every move names a version no other move names: an alias set to what it already
    # names is no move (and not logged). Each save of a step adds a trainer_state.json,
    # so the step's directory gets a new snapshot with the same config and weights.
    moves_per_thread = 6
    targets = [(n % 3 + 1, n // 3 + 1) for n in range(4 * moves_per_thread + 1)]
    with modelfs.open_store(s, use_disk_cache=False) as setup:
        for k, path in enumerate(paths, 1):
            setup.put(f"run/step-{k}/config.json", configs[k])
            setup.put(f"run/step-{k}/model.safetensors", path)
        for k, v in sorted(targets, key=lambda t: t[1]):
            setup.put(f"run/step-{k}/trainer_state.json", json.dumps({"save": v}).encode())
            assert setup.record_metrics(f"run/step-{k}", {"save": v}).version == v
        setup.select("run/", where=where(*targets[-1]), all_versions=True, alias="champion",
                     message="start")  # fmt: skip
    mounts = [mount_store(s), mount_store(s)]

    errors: list[BaseException] = []
    moving = threading.Event()
    moving.set()
    reads = [0, 0]

    def guarded(fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - collected, and they fail the test
            errors.append(e)

    def mover(i: int) -> None:
        with modelfs.open_store(s, cache_dir=tmp_path / f"mover{i}") as mine:
            for j in range(moves_per_thread):
                mine.select("run/", where=where(*targets[i * moves_per_thread + j]),
                            all_versions=True, alias="champion", message=f"mover {i} move {j}")  # fmt: skip

    def measurer(n: int) -> None:
        j = 0
        while moving.is_set():
            k = j % 3 + 1
            target = mounts[n].path / "run" / f"step-{k}" / "model.safetensors"
            os.setxattr(target, f"user.metric.probe{n}", str(j).encode())
            j += 1

    def reader(n: int) -> None:
        view = mounts[n].path / ".modelfs" / "at" / "run@champion" / "config.json"
        while moving.is_set():
            data = view.read_bytes()
            assert data in configs.values(), data[:200]
            reads[n] += 1

    helpers = [threading.Thread(target=guarded, args=(f, n)) for f in (measurer, reader)
               for n in (0, 1)]  # fmt: skip
    movers = [threading.Thread(target=guarded, args=(mover, i)) for i in range(4)]
    for t in helpers + movers:
        t.start()
    for t in movers:
        t.join(120)
    moving.clear()
    for t in helpers:
        t.join(60)
    assert not any(t.is_alive() for t in helpers + movers), "a thread hung"
    assert not errors, errors
    assert all(reads), reads

    log = run_json(cli, "alias", "log", s, "run", "champion")
    expected = {"start"} | {
        f"mover {i} move {j}" for i in range(4) for j in range(moves_per_thread)
    }
    assert len(log) == len(expected) and {e["message"] for e in log} == expected
    assert log[0]["message"] == "start" and "from" not in log[0]
    for earlier, later in zip(log, log[1:], strict=False):
        assert later["from"] == earlier["to"], (earlier, later)
    current = [t for t in run_json(cli, "tags", s) if t["name"] == "champion"]
    assert len(current) == 1 and current[0]["owner"] == "run"
    assert current[0]["target"] == log[-1]["to"]
    step = int(log[-1]["to"]["path"].rsplit("-", 1)[1])
    for m in mounts:  # and both mounts read the last target
        view = m.path / ".modelfs" / "at" / "run@champion" / "config.json"
        assert view.read_bytes() == configs[step]
    # The metrics set through the mounts landed, on the files and not as new versions.
    with modelfs.open_store(s, use_disk_cache=False) as check:
        assert len(check.history("run/step-1/model.safetensors")) == 1
        got = check.resolve("run/step-1/model.safetensors").metrics
        assert {"probe0", "probe1"} <= set(got), got


# bad input


CLI_BAD = [
    ("an unknown tag", ["cat", "{s}", "run/step-1@nope"],
     "run/step-1 has no tag or alias 'nope'"),
    ("a tag moved to another version", ["tag", "{s}", "run/step-1/config.json", "v1",
     "--version", "2"], "a tag never moves"),
    ("an alias of a missing version", ["alias", "{s}", "run/step-1/config.json", "champion",
     "--version", "99"], "run/step-1/config.json has no version 99"),
    ("a malformed where-clause", ["select", "{s}", "run/", "--where", "cos_sim >> 1"],
     "expected a value after '>' at column 10\n  cos_sim >> 1\n           ^"),
    ("a bad metric name", ["metric", "{s}", "run/step-1", "1abc=2"],
     "metric name '1abc' is not allowed"),
    ("a reserved metric name", ["metric", "{s}", "run/step-1", "size=2"],
     "metric name 'size' is reserved"),
    ("a bad metric value", ["metric", "{s}", "run/step-1", "cos_sim=inf"],
     "metric cos_sim: 'inf' is not a finite number"),
    ("a version that does not exist", ["cat", "{s}", "run/step-1/config.json@7"],
     "run/step-1/config.json has no version 7"),
    ("a content hash that matches nothing", ["cat", "{s}", "run@blake3:00000000/config.json"],
     "no version of run has content"),
    ("a name with an @ without @latest", ["cat", "{s}", "run/notes@v2.json"],
     "write run/notes@v2.json@latest"),
]  # fmt: skip


def store_state(cli: CLI, store: str) -> tuple:
    """What `modelfs tags` and `modelfs log` show, and every object of the store."""
    logs = [
        cli("log", store, p).stdout for p in ("run/step-1/config.json", "run/notes@v2.json@latest")
    ]
    with StoreObjects(store) as objects:
        return cli("tags", store).stdout, logs, objects.snapshot()


@pytest.fixture(scope="module")
def named_run(checkpoints, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple]:
    """A local store with run/step-1 (a real checkpoint, two versions of its config, a tag,
    an alias and a metric) and run/notes@v2.json, and its state; each test gets a copy."""
    paths, _ = checkpoints
    store = tmp_path_factory.mktemp("named-run") / "store"
    modelfs.init_store(str(store))
    config = (finetune.MINILM_DIR / "config.json").read_bytes()
    with modelfs.open_store(str(store), use_disk_cache=False) as setup:
        setup.put("run/step-1/config.json", config)
        setup.put("run/step-1/config.json", config + b"\n")
        setup.put("run/step-1/model.safetensors", paths[0])
        setup.put("run/notes@v2.json", b'{"note": 1}')
        setup.record_metrics("run/step-1", {"cos_sim": 0.5})
        setup.tag("run/step-1/config.json@1", "v1")
        setup.alias("run/step-1", "champion")
    state = store_state(CLI(tmp_path_factory.mktemp("xdg")), str(store))
    assert b"alias run/step-1@champion -> run/step-1@1" in state[0]
    assert b"tag run/step-1/config.json@v1 -> run/step-1/config.json@1" in state[0]
    return store, state


@pytest.mark.parametrize(("what", "args", "problem"), CLI_BAD, ids=[b[0] for b in CLI_BAD])
def test_bad_input_through_the_cli_is_refused_naming_the_problem_and_changes_nothing(
    named_run, cli: CLI, tmp_path: Path, what: str, args: list[str], problem: str
) -> None:
    template, before = named_run
    s = str(tmp_path / "store")
    shutil.copytree(template, s)
    with StoreObjects(s) as objects:
        objects_before = objects.snapshot()  # a copy's tokens (inode, mtime) are its own

    proc = cli(*[s if a == "{s}" else a for a in args], check=False)

    assert proc.returncode == 1, proc
    assert problem in proc.stderr.decode(), proc.stderr.decode()
    assert proc.stdout == b""
    tags, logs, objects_after = store_state(cli, s)
    assert (tags, logs) == before[:2]
    assert objects_after == objects_before


def test_a_name_holding_an_at_sign_reads_with_latest(named_run, cli: CLI) -> None:
    store, _ = named_run
    got = cli("cat", store, "run/notes@v2.json@latest")
    assert got.stdout == b'{"note": 1}'
    assert got.stderr.decode().startswith("run/notes@v2.json@1 blake3:")
