"""bench.py as a smoke test: it runs on the CPU at its smoke sizes and prints one JSON line per
figure (timings are measured by hand, never asserted here)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_smoke_cpu_prints_every_figure_for_both_models():
    proc = subprocess.run([sys.executable, "bench.py", "--device", "cpu", "--sizes", "smoke"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    figures = {(r["model"], r["figure"]) for r in lines}
    for net in ("VGG16", "ViT"):
        for fig in ("forward_limit", "jit", "eval", "e2e", "mia_bs1"):
            assert (net, fig) in figures
    assert all(r["seconds"] > 0 and r["peak_host_gib"] > 0 for r in lines)
