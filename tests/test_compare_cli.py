"""`modelfs diff` on the command line, on each backend: what a user types, what comes back,
and the exit status CI gates on."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CLI
from safetensors.numpy import save_file

QUERY = "encoder.layer.3.attention.self.query.weight"


@pytest.fixture
def two_versions(
    cli: CLI, store_url: str, minilm_path: Path, minilm_tensors, tmp_path: Path
) -> str:
    changed = dict(minilm_tensors)
    changed[QUERY] = changed[QUERY] * np.float32(1.5)
    save_file(changed, str(tmp_path / "b.safetensors"))
    cli("put", store_url, minilm_path, "m/model.safetensors")
    cli("put", store_url, tmp_path / "b.safetensors", "m/model.safetensors")
    cli("tag", store_url, "m/model.safetensors@1", "base")
    return store_url


def test_diff_prints_what_changed_and_its_json_and_csv_say_the_same(
    cli: CLI, two_versions: str
) -> None:
    s = two_versions
    out = cli("diff", s, "m/model.safetensors@base", "m/model.safetensors").stdout.decode()
    assert out.startswith("m/model.safetensors@1 blake3:")
    assert "1 changed" in out and "103 identical" in out and QUERY in out
    assert "untouched: 6 of 7 layers (0, 1, 2, 4, 5, the tensors with no layer)" in out

    doc = json.loads(cli("diff", s, "m/model.safetensors@1", "m/model.safetensors@2", "--json")
                     .stdout)  # fmt: skip
    assert doc["schema"] == 1 and doc["counts"] == {"identical": 103, "changed": 1}
    (changed,) = [t for t in doc["tensors"] if t["status"] == "changed"]
    assert changed["name"] == QUERY and changed["stats"]["rel_l2"] == pytest.approx(0.5)
    assert doc["bytes_read"] == 2 * 384 * 384 * 4  # the changed tensor, from both sides

    rows = list(csv.DictReader(io.StringIO(
        cli("diff", s, "m/model.safetensors@1", "m/model.safetensors@2", "--csv").stdout.decode()
    )))  # fmt: skip
    assert len(rows) == 104 and [r["name"] for r in rows if r["status"] == "changed"] == [QUERY]


def test_diff_fail_if_exits_4_for_ci_and_a_bad_clause_exits_1_before_reading(
    cli: CLI, two_versions: str
) -> None:
    s, a, b = two_versions, "m/model.safetensors@1", "m/model.safetensors@2"
    assert cli("diff", s, a, b, "--fail-if", "rel_l2 > 0.9", check=False).returncode == 0
    gate = cli("diff", s, a, b, "--fail-if", "rel_l2 > 1e-3", check=False)
    assert gate.returncode == 4 and QUERY.encode() in gate.stderr
    bad = cli("diff", s, a, b, "--fail-if", "rel_l2 >", check=False)
    assert bad.returncode == 1 and b"expected a value after '>'" in bad.stderr
    assert bad.stdout == b""
    for args, message in (
        ([a], b"give two models"),
        ([a, "m/model.safetensors@7"], b"no version 7"),
        ([a, b, "--rename", "nothing"], b"OLD_PREFIX=NEW_PREFIX"),
    ):
        refused = cli("diff", s, *args, check=False)
        assert refused.returncode == 1 and message in refused.stderr, refused.stderr


def test_diff_series_and_plots(
    cli: CLI, two_versions: str, minilm_path: Path, tmp_path: Path
) -> None:
    s = two_versions
    cli("put", s, minilm_path, "m/model.safetensors")  # back to the original: step 2 undoes 1
    out = cli("diff", s, "--series", "m/model.safetensors").stdout.decode()
    assert out.startswith("series m/model.safetensors: 3 versions, 2 steps")
    assert "layer 3   step 1 (@1 -> @2)" in out and "moved at 2 of 2 steps" in out
    doc = json.loads(cli("diff", s, "--series", "m/model.safetensors@1..3", "--numbers",
                         "--json", "--plot", tmp_path / "series.png").stdout)  # fmt: skip
    assert doc["numbers"] and len(doc["steps"]) == 2 and doc["layer_drift"]["0"] == [0.0, 0.0]
    assert (tmp_path / "series.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cli("diff", s, "m/model.safetensors@1", "m/model.safetensors@2", "--plot", tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 10_000


def test_diff_of_two_local_files_needs_no_store(
    cli: CLI, minilm_path: Path, tmp_path: Path
) -> None:
    same = cli("diff", "-", str(minilm_path), str(minilm_path)).stdout.decode()
    assert same.rstrip().endswith(
        "identical, 104 tensors (the same file content: its hash decided)"
    )
    refused = cli("diff", "-", "m/model.safetensors", str(minilm_path), check=False)
    assert refused.returncode == 1 and b"no store is open" in refused.stderr
