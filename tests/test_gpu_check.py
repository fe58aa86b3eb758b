"""gpu_check.sh: its dry run on the CPU (every part ends well; OUT holds only the few small files
a lease brings back; the temporary folder is gone; bench.py at its smoke sizes prints every
figure for both models, timings never asserted), its budgets and its refusal of a used OUT."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PARTS = {"bench-fp32", "bench-bf16", "tests", "data", "pretrain", "resume", "grid", "report", "vit-data",
         "vit-weights", "vit-memory"}
OUT_FILES = {"summary.txt", "bench.jsonl", "gpu-tests.txt", "grid.jsonl", "grid-report.md", "vit-memory.json",
             "vit.jsonl", "logs.txt"}


def _run(out, *args, tmpdir=None, timeout=60):
    env = dict(os.environ, PYTHON=sys.executable)
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run([str(REPO / "gpu_check.sh"), str(out), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_the_budgets_of_the_parts_add_up_to_at_most_360_s_with_their_kill_grace():
    text = (REPO / "gpu_check.sh").read_text()
    budgets = dict(re.findall(r"\[([a-z0-9-]+)\]=(\d+)", re.search(r"declare -A BUDGET=\(([^)]*)\)", text).group(1)))
    grace = int(re.search(r"^GRACE=(\d+)", text, re.M).group(1))
    assert set(budgets) == PARTS | {"gpu"}
    assert sum(map(int, budgets.values())) + grace * len(budgets) <= 360


def test_a_folder_that_holds_files_is_refused_and_left_as_it_is(tmp_path):
    (tmp_path / "earlier.txt").write_text("x")
    proc = _run(tmp_path, "cpu")
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["earlier.txt"]
    assert _run(tmp_path / "new", "gpu0").returncode == 2


@pytest.mark.slow
def test_the_dry_run_ends_every_part_well_and_leaves_only_the_small_files(tmp_path):
    out, tmpdir = tmp_path / "out", tmp_path / "tmp"
    tmpdir.mkdir()
    proc = _run(out, "cpu", tmpdir=tmpdir, timeout=1800)
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stderr[-2000:]
    lines = {line.split(":")[0]: line for line in summary.splitlines() if line.split(":")[0] in PARTS}
    assert set(lines) == PARTS
    assert all(": ok in " in line for line in lines.values()), summary
    files = list(out.iterdir())
    assert {f.name for f in files} == OUT_FILES
    assert all(f.is_file() and f.stat().st_size <= 2**20 for f in files)
    assert not list(tmpdir.iterdir()), "the temporary folder (checkpoints, data) is left behind"
    bench = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    assert {(r["figure"], r["amp"]) for r in bench} >= {("jit", False), ("eval", False), ("jit", True), ("eval", True)}
    figures = {(r["model"], r["figure"]) for r in bench if not r["amp"]}
    for net in ("VGG16", "ViT"):
        for fig in ("forward_limit", "jit", "eval", "e2e", "mia_bs1"):
            assert (net, fig) in figures
    assert all(r["seconds"] > 0 and r["peak_host_gib"] > 0 for r in bench)
    grid = [json.loads(line) for line in (out / "grid.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in grid) == ["baseline", "lipschitz_forgetting", "retrain_full"]
    assert not any(r["diverged"] for r in grid)
    assert json.loads((out / "vit-memory.json").read_text())["peak_host_gib_main_process"] > 0
    tier = (out / "gpu-tests.txt").read_text()  # no CUDA here: the tier is collected and skipped
    assert re.search(r"\d+ skipped", tier) and not re.search(r"failed|error", tier), tier
