"""The small tools gpu_check.sh uses: random weights of a registered net, and the peak host
memory of a script run."""
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO

import models


@pytest.mark.slow  # a script in a subprocess, or VGG16 and a ViT built
def test_random_weights_load_strict_into_the_net(tmp_path):
    out = tmp_path / "w.pth"
    proc = subprocess.run([sys.executable, "tools/random_weights.py", "SmallCNN", "7", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    models.SmallCNN(7).load_state_dict(torch.load(out, weights_only=True), strict=True)
    bad = subprocess.run([sys.executable, "tools/random_weights.py", "NoNet", "7", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode != 0 and bad.stderr.startswith("usage:")


def test_peak_memory_passes_the_arguments_on_and_reports_even_on_failure(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import sys\nbuf = bytearray(64 * 2**20)\nsys.exit(int(sys.argv[1]))\n")
    for code in (0, 3):
        out = tmp_path / f"m{code}.json"
        proc = subprocess.run([sys.executable, "tools/peak_memory.py", str(out), str(script), str(code)], cwd=REPO,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == code, proc.stderr
        peak = json.loads(out.read_text())
        assert peak["peak_host_gib_main_process"] >= 64 / 1024


@pytest.mark.slow  # a script in a subprocess, or VGG16 and a ViT built
def test_peak_memory_runs_a_main_of_the_repository_from_its_root_without_pythonpath(tmp_path):
    # the main imports its neighbours (datasets, experiment, ...), as under `python MAIN`
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / "m.json"
    proc = subprocess.run([sys.executable, "tools/peak_memory.py", str(out), "forget_full_class_main.py", "-h"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "-forget_class" in proc.stdout
    assert json.loads(out.read_text())["peak_host_gib_main_process"] > 0
