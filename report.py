"""Summarise result records (JSON lines written by the forget_*_main.py scripts and sweep.py).

python report.py results/results.jsonl [more.jsonl ...] [-out results/report]
Prints a markdown table and writes OUT.md, OUT.csv and OUT.png (Dr vs Df per method, retrain
marked). Rows: setting, data set, net and method (JiT runs also by σ, η and non-parity
switches); values: mean ± std over every record in the row (seeds and forget targets).
Dr = RetainTestAcc, Df and accuracies in %, MIA a fraction, time = MethodTime in seconds.
Δ columns: the run's value minus that of the retrain record (retrain_full preferred) with the
same setting, data set, net, forget target and seed, averaged over the runs that have one.
Runs that diverged (non-finite weights or outputs) have no metrics: when there are any, a
"diverged" column counts them per row, and the means are over the other runs. A null value
in a record means "not a number" (or not measured) and is left out of the means, as are
NaN/Infinity tokens in files written before records became strict JSON.
Lines that are not records (not JSON, not an object, missing setting/dataset/net/method,
non-numeric metrics) are skipped and counted; a binary file stops the report.
"""
import csv
import json
import math
import os
import sys
from collections import OrderedDict

from registry import RETRAIN_METHODS  # torch-free: reading records never loads a method
from utils import Parser, UserError, check_writable, cli

COLUMNS = [("Dr", "RetainTestAcc", "{:.2f}"), ("Df", "Df", "{:.2f}"), ("MIA", "MIA", "{:.3f}"),
           ("Test", "TestAcc", "{:.2f}"), ("time (s)", "MethodTime", "{:.2f}")]
GAPS = [("ΔDr", "RetainTestAcc", "{:+.2f}"), ("ΔDf", "Df", "{:+.2f}"), ("ΔMIA", "MIA", "{:+.3f}")]
EXTRA = [("MIA AUC", "MIAEntropyAUC", "{:.3f}"), ("JS→retrain", "JSToRetrain", "{:.4f}")]
PARITY = {"jit_grad": "accumulate", "jit_reduction": "sum", "jit_mode": "as_loaded"}
IDENTITY = ("setting", "dataset", "net", "method")
METRICS = tuple(dict.fromkeys(key for _, key, _ in COLUMNS + GAPS + EXTRA))


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def problem(r):
    """Why ``r`` cannot be summarised, or None if it can."""
    if not isinstance(r, dict):
        return f"a JSON {type(r).__name__}, not an object"
    missing = [k for k in IDENTITY if not isinstance(r.get(k), str)]
    if missing:
        return "no text " + ", ".join(missing)
    for key in METRICS + ("sigma", "eta"):
        if r.get(key) is not None and not _number(r[key]):
            return f"non-numeric {key} {r[key]!r}"[:120]
    if r["method"] == "lipschitz_forgetting" and not (_number(r.get("sigma")) and _number(r.get("eta"))):
        return "a JiT record without numeric sigma and eta"
    if not isinstance(r.get("args", {}), dict):
        return "args is not an object"
    if r.get("seed") is not None and not _number(r["seed"]):
        return f"non-numeric seed {r['seed']!r}"[:120]
    return None


def usable(records):
    """The records ``problem`` finds nothing wrong with."""
    return [r for r in records if problem(r) is None]


def _no_constant(name):
    return None  # NaN, Infinity, -Infinity: not a number, as a strict writer records null


def read_file(path):
    """The records of one results file. Lines that are not records are skipped, and one
    line on stderr counts them; a file that is binary, unreadable or holds no record at all
    raises UserError naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"results file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a results file") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if b"\0" in data:
        line = data[:data.index(b"\0")].count(b"\n") + 1
        raise UserError(f"{path} is not a JSON-lines text file (binary data at line {line})")
    records, bad = [], []
    for i, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            r = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except UnicodeDecodeError:
            bad.append((i, "not UTF-8 text"))
            continue
        except (ValueError, RecursionError):
            bad.append((i, "not JSON"))
            continue
        why = problem(r)
        if why:
            bad.append((i, why))
        else:
            records.append(r)
    if not records:
        detail = f" ({len(bad)} bad line(s), first at line {bad[0][0]}: {bad[0][1]})" if bad else ""
        raise UserError(f"no records in {path}{detail}")
    if bad:
        print(f"skipped {len(bad)} bad line(s) in {path}: first at line {bad[0][0]} ({bad[0][1]})", file=sys.stderr)
    return records


def mean_std(values):
    n = len(values)
    m = sum(values) / n
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return m, s


def fmt(values, spec):
    if not values:
        return ""
    m, s = mean_std(values)
    return spec.format(m) if len(values) == 1 else f"{spec.format(m)} ± {s:.{spec.split('.')[1][0]}f}"


def label(r):
    """The method, and for JiT its σ, η and any switch that is not the reference's."""
    if r["method"] != "lipschitz_forgetting":
        return r["method"]
    args = r.get("args", {})
    # an unset switch (absent or null) is the reference's behaviour
    switches = [f"{k.split('_')[1]}={args[k]}" for k, v in PARITY.items() if args.get(k) not in (None, v)]
    return "JiT " + ", ".join([f"σ={r['sigma']:g}", f"η={r['eta']:g}"] + switches)


def target_key(r):
    return (r["setting"], r["dataset"], r["net"], str(r.get("forget")), r.get("seed"))


def retrain_index(records):
    """(setting, data, net, target, seed) -> the retrain record (retrain_full preferred, latest)."""
    index = {}
    records = usable(records)
    for name in reversed(RETRAIN_METHODS):
        for r in records:
            if r["method"] == name and not r.get("diverged"):
                index[target_key(r)] = r
    return index


def summarise(records):
    gold = retrain_index(records)
    any_diverged = any(r.get("diverged") for r in records)
    groups = OrderedDict()
    for r in records:
        groups.setdefault((r["setting"], r["dataset"], r["net"], label(r)), []).append(r)
    rows = []
    for (setting, dataset, net, method), rs in groups.items():
        row = OrderedDict(setting=setting, dataset=dataset, net=net, method=method, n=len(rs))
        if any_diverged:
            row["diverged"] = sum(bool(r.get("diverged")) for r in rs)
        for name, key, spec in COLUMNS + EXTRA:
            row[name] = fmt([float(r[key]) for r in rs if r.get(key) is not None], spec)
        for name, key, spec in GAPS:
            pairs = [(r, gold[target_key(r)]) for r in rs
                     if target_key(r) in gold and r.get(key) is not None and gold[target_key(r)].get(key) is not None]
            row[name] = fmt([float(r[key]) - float(g[key]) for r, g in pairs], spec)
        rows.append(row)
    return rows


def markdown(rows):
    if not rows:
        return "(no records)"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def plot(records, path):
    """One panel per (setting, data set, net): mean Dr against mean Df per row label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = OrderedDict()
    for r in records:
        if r.get("diverged") or r.get("Df") is None or r.get("RetainTestAcc") is None:
            continue
        panels.setdefault((r["setting"], r["dataset"], r["net"]), OrderedDict()).setdefault(label(r), []).append(r)
    if not panels:
        panels[("no run with metrics", "", "")] = OrderedDict()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    for ax, ((setting, dataset, net), by_label) in zip(axes[0], panels.items()):
        for name, rs in by_label.items():
            df = mean_std([r["Df"] for r in rs])
            dr = mean_std([r["RetainTestAcc"] for r in rs])
            style = dict(marker="X", s=140, c="tab:green", zorder=3) if name in RETRAIN_METHODS else (
                dict(marker="*", s=180, c="tab:red", zorder=3) if name == "baseline" else
                dict(marker=".", s=40, c="tab:blue", alpha=0.6) if name.startswith("JiT") else dict(marker="o", s=40))
            ax.scatter([df[0]], [dr[0]], **style)
            if len(rs) > 1:
                ax.errorbar(df[0], dr[0], xerr=df[1], yerr=dr[1], fmt="none", ecolor="grey", lw=0.8)
            ax.annotate(name, (df[0], dr[0]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_title(f"{setting} · {dataset} · {net}", fontsize=9)
        ax.set_xlabel("Df (%) — lower is more forgotten")
        ax.set_ylabel("Dr (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(records, out):
    rows = summarise(records)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".md", "w") as f:
        f.write(markdown(rows) + "\n")
    with open(out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(records, out + ".png")
    return rows


def main(argv=None):
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="results JSON-lines files")
    p.add_argument("-out", default=None, metavar="PREFIX",
                   help="write PREFIX.md, PREFIX.csv and PREFIX.png (default: FILE-report next to the first file)")
    args = p.parse_args(argv)
    out = os.path.splitext(args.files[0])[0] + "-report" if args.out is None else args.out
    if not out.strip():
        raise UserError("-out is empty: give a path prefix such as results/report")
    if out.endswith(("/", os.sep)):
        raise UserError(f"-out {out} names a folder: give a path prefix such as {out}report")
    for ext in (".md", ".csv", ".png"):
        check_writable(out + ext, "-out")
    records = []
    for f in args.files:
        records += read_file(f)
    try:
        rows = write(records, out)
    except OSError as e:  # checked writable above: a full disk, or a folder gone meanwhile
        raise UserError(f"cannot write the report {out}.*: {e.strerror or e}") from None
    print(markdown(rows))
    print(f"report: {out}.md, {out}.csv, {out}.png")


if __name__ == "__main__":
    cli(main)
