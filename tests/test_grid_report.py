"""The report table (the grid runner's tests are in test_grid.py)."""
import json
import statistics
import subprocess
from pathlib import Path

import report

REPO = Path(__file__).resolve().parent.parent


def _record(method, seed, dr, df, mia=0.5, t=1.0, dataset="Digits"):
    return dict(setting="fullclass", dataset=dataset, net="SmallCNN", method=method, seed=seed,
                RetainTestAcc=dr, Df=df, MIA=mia, TestAcc=dr, MethodTime=t)


def test_report_mean_and_std_over_seeds_match_a_recomputation():
    recs = [_record("jit", 0, 90.0, 10.0, 0.2), _record("jit", 1, 80.0, 30.0, 0.4),
            _record("jit", 2, 85.0, 20.0, 0.9), _record("baseline", 0, 95.0, 96.0)]
    rows = {r["method"]: r for r in report.summarise(recs)}
    dr = [90.0, 80.0, 85.0]
    mia = [0.2, 0.4, 0.9]
    assert rows["jit"]["n"] == 3
    assert rows["jit"]["Dr"] == f"{statistics.mean(dr):.2f} ± {statistics.stdev(dr):.2f}"
    assert rows["jit"]["MIA"] == f"{statistics.mean(mia):.3f} ± {statistics.stdev(mia):.3f}"
    assert rows["baseline"]["Df"] == "96.00"  # a single run shows no ± term


def test_report_keeps_settings_apart():
    rows = report.summarise([_record("jit", 0, 90.0, 10.0), _record("jit", 0, 50.0, 5.0, dataset="Cifar10")])
    assert [(r["dataset"], r["Dr"]) for r in rows] == [("Digits", "90.00"), ("Cifar10", "50.00")]


def test_report_cli_prints_a_markdown_table(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(_record(m, 0, 90.0, 1.0)) for m in ("baseline", "jit")) + "\n")
    proc = subprocess.run(["python", str(REPO / "report.py"), str(path)], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0
    assert lines[0].startswith("| setting | dataset | net | recipe | method | n | Dr | Df | MIA")
    assert len(lines) == 5 and lines[-1].startswith("report: ")
    for ext in (".md", ".csv", ".png"):
        assert (tmp_path / f"r-report{ext}").stat().st_size > 0


def test_report_cli_rejects_an_empty_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    proc = subprocess.run(["python", str(REPO / "report.py"), str(tmp_path / "empty.jsonl")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no records" in proc.stderr
