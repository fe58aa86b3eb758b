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

Forgetting-quality records (forgetting_quality.py, kind "forgetting_quality") get a table of
their own, OUT-fq.md: per setting, data set, net, forget target, K and method, the newest
record's F, final score, mean Dr/Test of the unlearned and of the retrained models and the
median ε; and one plot per setting, OUT-eps-SETTING-DATASET-NET-TARGET-KK.png: the share of
forget examples in each of the competition's ε buckets, per method (retrain_full: the
retrain-vs-retrain floor).
"""
import csv
import json
import math
import os
import sys
from collections import OrderedDict

import numpy as np

from cli import Parser, UserError, run_cli
from registry import RETRAIN_METHODS  # torch-free: reading records never loads a method
from utils import check_writable

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


def recipe(r):
    """The record's -recipe (records written before it existed ran neither exactly; they count as
    the reference's)."""
    return r.get("recipe") or "reference"


def label(r):
    """The method, for JiT its σ, η and any switch that is not the reference's, and the recipe
    when it is not the default."""
    suffix = "" if recipe(r) == "reference" else f" [{recipe(r)}]"
    if r["method"] != "lipschitz_forgetting":
        return r["method"] + suffix
    args = r.get("args", {})
    # an unset switch (absent or null) is the reference's behaviour
    switches = [f"{k.split('_')[1]}={args[k]}" for k, v in PARITY.items() if args.get(k) not in (None, v)]
    return "JiT " + ", ".join([f"σ={r['sigma']:g}", f"η={r['eta']:g}"] + switches) + suffix


def target_key(r):
    """Runs compared with each other (and with their retrain): the same target, seed and recipe."""
    return (r["setting"], r["dataset"], r["net"], str(r.get("forget")), r.get("seed"), recipe(r))


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
    save_figure(fig, path)


def save_figure(fig, path):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_markdown(rows, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(markdown(rows) + "\n")


def write(records, out):
    rows = summarise(records)
    write_markdown(rows, out + ".md")
    with open(out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(records, out + ".png")
    return rows


# ---- forgetting quality (forgetting_quality.py) ---------------------------------------------

FQ_KIND = "forgetting_quality"
FQ_COLUMNS = [("F", "F", "{:.3f}"), ("final score", "FinalScore", "{:.3f}"), ("Dr", "RetainTestAccExact", "{:.2f}"),
              ("Test", "TestAccExact", "{:.2f}"), ("Dr retrain", "RetrainRetainTestAccExact", "{:.2f}"),
              ("Test retrain", "RetrainTestAccExact", "{:.2f}"), ("median ε", "EpsMedian", "{:.2f}"),
              ("method time (s)", "MethodTime", "{:.1f}")]


def is_fq(r):
    return r.get("kind") == FQ_KIND


def fq_groups(records):
    """{(setting, data set, net, forget target, K): {method: newest record}}; a later record
    of the same method (a rerun) replaces an earlier one."""
    groups = OrderedDict()
    for r in records:
        key = (r["setting"], r["dataset"], r["net"], str(r.get("forget")), r.get("K"))
        groups.setdefault(key, OrderedDict())[r["method"]] = r
    return groups


def fq_rows(records):
    rows = []
    for (setting, dataset, net, forget, k), by_method in fq_groups(records).items():
        for method, r in by_method.items():
            name = f"{method} (floor, K/2)" if method in RETRAIN_METHODS else method
            row = OrderedDict(setting=setting, dataset=dataset, net=net, forget=forget, K=k, method=name)
            for col, key, spec in FQ_COLUMNS:
                v = r.get(key)
                row[col] = "diverged" if r.get("diverged") else (spec.format(v) if _number(v) else "–")
            rows.append(row)
    return rows


def fq_plot_path(out, key):
    safe = "-".join("".join(c if c.isalnum() or c in "._" else "_" for c in str(part)) for part in key[:4])
    return f"{out}-eps-{safe}-K{key[4]}.png"


def fq_plot(by_method, key, path):
    """Grouped bars: per ε bucket, the share of forget examples of each method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(m, r) for m, r in by_method.items()
             if isinstance(r.get("EpsHistogram"), dict) and not r.get("diverged")]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(shown))
    colours = iter(["tab:blue", "tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                    "tab:cyan", "tab:gray"])  # green is the floor's
    ticks = []
    for i, (method, r) in enumerate(shown):
        h = r["EpsHistogram"]
        try:
            counts = np.asarray(h.get("counts", []), dtype=float)
            edges = [float(e) for e in h.get("edges", [])]
        except (TypeError, ValueError):  # a hand-edited or foreign record: no bars, no traceback
            continue
        if counts.ndim != 1 or len(edges) != len(counts) + 1 or not counts.sum() > 0:
            continue
        # bars sit at their lower edge's bucket, so methods scored at another K (the floor at
        # K/2, whose last bucket starts earlier) share the axis
        x = np.asarray(edges[:-1]) / 0.5 + (i - (len(shown) - 1) / 2) * width
        labels = [f"[{a:g}, {b:g})" for a, b in zip(edges[:-1], edges[1:])]
        labels[-1] = f"≥ {edges[-2]:g}"
        if len(labels) > len(ticks):
            ticks = labels
        floor = method in RETRAIN_METHODS
        name = f"{method}: retrain vs retrain at K/2 (last bar ≥ {edges[-2]:g})" if floor else method
        ax.bar(x, counts / counts.sum(), width, label=f"{name}, F={r['F']:.3f}" if _number(r.get("F")) else name,
               **(dict(color="tab:green", hatch="//") if floor else dict(color=next(colours, "grey"))))
    ax.set_xticks(np.arange(len(ticks)), ticks, fontsize=8)
    setting, dataset, net, forget, k = key
    ax.set_title(f"per-example ε, {setting} · {dataset} · {net} · forget {forget} · K={k}", fontsize=9)
    ax.set_xlabel("ε bucket (worth 1, 1/2, 1/4, … points; the last, none)")
    ax.set_ylabel("share of forget examples")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def write_fq(records, out):
    """OUT-fq.md and one ε plot per setting; returns (rows, plot paths)."""
    rows = fq_rows(records)
    write_markdown(rows, out + "-fq.md")
    paths = []
    for key, by_method in fq_groups(records).items():
        paths.append(fq_plot_path(out, key))
        fq_plot(by_method, key, paths[-1])
    return rows, paths


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
    fq = [r for r in records if is_fq(r)]
    records = [r for r in records if not is_fq(r)]
    if fq:
        check_writable(out + "-fq.md", "-out")
        for key in fq_groups(fq):
            check_writable(fq_plot_path(out, key), "-out")
    try:
        rows = write(records, out) if records else None
        fq_out = write_fq(fq, out) if fq else None
    except OSError as e:  # checked writable above: a full disk, or a folder gone meanwhile
        raise UserError(f"cannot write the report {out}.*: {e.strerror or e}") from None
    if rows is not None:
        print(markdown(rows))
        print(f"report: {out}.md, {out}.csv, {out}.png")
    if fq_out is not None:
        print(("\n" if rows is not None else "") + "forgetting quality:\n" + markdown(fq_out[0]))
        print(f"forgetting quality: {out}-fq.md, " + ", ".join(fq_out[1]))

if __name__ == "__main__":
    run_cli(main)
