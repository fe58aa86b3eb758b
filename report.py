"""Summarise result records (JSON lines written by the forget_*_main.py scripts and sweep.py).

python report.py results/results.jsonl [more.jsonl ...] [-out results/report]
Prints a markdown table and writes OUT.md, OUT.csv and OUT.png (Dr vs Df per row, retrain
marked). A row holds fixed everything that changes a result but the seed and the forget target:
setting, data set, net, recipe, method (JiT's named by σ, η and non-parity switches) and, in a
"variant" column shown when needed, any other result-changing flag that differs between rows
of the same method; values: mean ± std over the row's records (its seeds and forget targets).
Dr = RetainTestAcc, Df and accuracies in %, MIA a fraction, time = MethodTime in seconds.
Δ columns: the run's value minus that of the retrain record (retrain_full preferred, the last
one read) with the same setting, data set, net, forget target, seed, recipe and data pipeline,
averaged over the runs that have one.
Runs that diverged (non-finite weights or outputs) have no metrics: when there are any, a
"diverged" column counts them per row, and the means are over the other runs. A null value
in a record means "not a number" (or not measured) and is left out of the means, as are
NaN/Infinity tokens (records are written as strict JSON; these tokens are read all the same).
Lines that are not records (not JSON, not an object, missing setting/dataset/net/method,
non-numeric metrics) are skipped and counted; a binary file stops the report. A run recorded
more than once (the same file given twice, a run appended again) counts once: the last
record read of each run identity is kept.
A method with more than SHOWN_ROWS rows for one setting, data set, net and recipe (a σ × η
grid) is printed, in OUT.md as on screen, by the rows on its Dr–Df frontier (at most
SHOWN_ROWS, evenly spread) and a line counting the others; OUT.csv holds every row, and the
plot draws the method as one series naming only those rows.

Forgetting-quality records (forgetting_quality.py, kind "forgetting_quality") get a table of
their own, OUT-fq.md: per setting, data set, net, forget target, K, recipe, seed and variant
(one call of forgetting_quality.py) and method, the newest record's F, final score, mean
Dr/Test of the unlearned and of the retrained models and the median ε; and one plot per call,
OUT-eps-SETTING-DATASET-NET-TARGET-KK[-RECIPE][-sSEED][-VARIANT].png: the share of forget
examples in each of the competition's ε buckets, per method (retrain_full: the
retrain-vs-retrain floor).

Every output must be a regular file or a path that can be created, and none of the inputs.
"""
import csv
import hashlib
import json
import math
import os
import sys
from collections import OrderedDict

import numpy as np

from cli import Parser, UserError, run_cli
from records import parse_lines, recipe_of, record_target, run_identity
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


def read_file(path):
    """The records of one results file. Lines that are not records are skipped, and one
    line on stderr counts them; a file that is binary, unreadable or holds no record at all
    raises UserError naming it."""
    if os.path.exists(path) and not (os.path.isfile(path) or os.path.isdir(path)):
        # a named pipe would block the read until a writer came, a device never ends
        raise UserError(f"{path} is not a regular file (a pipe, device or socket), not a results file")
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
    for i, r, why in parse_lines(data):
        why = why or problem(r)
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


def flags_of(r):
    """{flag: value as text} of every flag that can change ``r``'s result, as the run identity
    (records.run_identity, the one definition) holds them; None for a record without its flags."""
    args = r.get("args")
    return dict(run_identity(r["setting"], args).flags) if isinstance(args, dict) else None


def identity(r):
    """Two records with the same identity are one run recorded twice (a file read twice, a run
    appended again): its kind, method and result-changing flags, or for a record that does not
    carry its flags, the whole record."""
    flags = flags_of(r)
    if flags is None:
        return json.dumps(r, sort_keys=True)
    return (r.get("kind"), r["setting"], r["method"], tuple(sorted(flags.items())))


def deduplicate(records):
    """One record per run identity, the last one read (the newest when files are given oldest
    first), at the place of the first; one line on stderr counts what was dropped."""
    last = OrderedDict()
    for r in records:
        last[identity(r)] = r
    dropped = len(records) - len(last)
    if dropped:
        print(f"dropped {dropped} duplicate record(s): the same run read more than once", file=sys.stderr)
    return list(last.values())


def method_label(r):
    """The method, for JiT with its σ, η and any switch that differs from the authors' code."""
    if r["method"] != "lipschitz_forgetting":
        return r["method"]
    args = r.get("args", {})
    # an unset switch (absent or null) behaves as the authors' code
    switches = [f"{k.split('_')[1]}={args[k]}" for k, v in PARITY.items() if args.get(k) not in (None, v)]
    return "JiT " + ", ".join([f"σ={r['sigma']:g}", f"η={r['eta']:g}"] + switches)


def label(r):
    """method_label, and the recipe when it is not the default."""
    return method_label(r) + ("" if recipe_of(r) == "reference" else f" [{recipe_of(r)}]")


# Flags a column or the method's label already shows, and the ones a row of the main table
# averages over (its seeds and forget targets): left out of a row's variant.
SHOWN = {"setting", "dataset", "net", "method", "recipe"}
JIT_SHOWN = {"sigma", "eta", *PARITY}
AVERAGED = {"seed", "forget_class", "forget_perc"}


def variant(r, hidden):
    """The flags of ``r`` that change its result and no column shows, as a sorted tuple (None
    when the record does not carry its flags)."""
    flags = flags_of(r)
    if flags is None:
        return None
    if r["method"] == "lipschitz_forgetting":
        hidden = hidden | JIT_SHOWN
    return tuple(sorted((k, v) for k, v in flags.items() if k not in hidden))


def variant_texts(keys):
    """{key: text}: for keys that agree but in their last element (a variant), the flags whose
    values differ between those variants, as "flag=value, ..." ("" where there is no other)."""
    buckets = OrderedDict()
    for key in keys:
        buckets.setdefault(key[:-1], []).append(key)
    texts = {}
    for members in buckets.values():
        known = [dict(k[-1]) for k in members if k[-1] is not None]
        names = sorted({n for flags in known for n in flags})
        differ = [n for n in names if len({flags.get(n, "–") for flags in known}) > 1]
        for key in members:
            if len(members) == 1:
                texts[key] = ""
            elif key[-1] is None:
                texts[key] = "flags not recorded"
            else:
                flags = dict(key[-1])
                texts[key] = ", ".join(f"{n}={flags.get(n, '–')}" for n in differ)
    return texts


def retrain_index(records):
    """records.record_target -> the retrain record its runs are compared with: retrain_full
    preferred to retrain, the last one read of its kind, never a diverged one."""
    index = {}
    records = usable([r for r in records if isinstance(r, dict) and r.get("method") in RETRAIN_METHODS])
    for name in reversed(RETRAIN_METHODS):
        for r in records:
            if r["method"] == name and not r.get("diverged"):
                index[record_target(r)] = r
    return index


def row_key(r):
    """What a row of the main table holds fixed: everything that changes a result but the seed
    and the forget target, which it averages over."""
    return (r["setting"], r["dataset"], r["net"], recipe_of(r), method_label(r), variant(r, SHOWN | AVERAGED))


def row_groups(records):
    """OrderedDict row_key -> its records, and {row_key: variant text}."""
    groups = OrderedDict()
    for r in records:
        groups.setdefault(row_key(r), []).append(r)
    return groups, variant_texts(groups)


def _mean(values):
    return sum(values) / len(values) if values else None


def summarise(records, with_means=False, grouped=None):
    """The rows of the main table (with_means: and, per row, its mean Dr and Df or None);
    ``grouped``: row_groups(records), when the caller has it."""
    gold = retrain_index(records)
    any_diverged = any(r.get("diverged") for r in records)
    groups, texts = grouped or row_groups(records)
    with_variant = any(texts.values())
    rows, means = [], []
    for key, rs in groups.items():
        setting, dataset, net, rec, method = key[:5]
        row = OrderedDict(setting=setting, dataset=dataset, net=net, recipe=rec, method=method)
        if with_variant:
            row["variant"] = texts[key]
        row["n"] = len(rs)
        if any_diverged:
            row["diverged"] = sum(bool(r.get("diverged")) for r in rs)
        for name, key_, spec in COLUMNS + EXTRA:
            row[name] = fmt([float(r[key_]) for r in rs if r.get(key_) is not None], spec)
        retrains = [(r, gold.get(record_target(r))) for r in rs]
        for name, key_, spec in GAPS:
            row[name] = fmt([float(r[key_]) - float(g[key_]) for r, g in retrains
                             if g is not None and r.get(key_) is not None and g.get(key_) is not None], spec)
        rows.append(row)
        means.append((_mean([float(r["RetainTestAcc"]) for r in rs if r.get("RetainTestAcc") is not None]),
                      _mean([float(r["Df"]) for r in rs if r.get("Df") is not None])))
    return (rows, means) if with_means else rows


# A method with more rows than this in one panel (a σ × η grid) is shown by its best rows: the
# printed table and OUT.md list those, the plot names only those; OUT.csv holds every row.
SHOWN_ROWS = 10


def pick(points, limit=SHOWN_ROWS):
    """Indices of the points (mean Dr, mean Df) worth naming: all of them up to ``limit``;
    beyond, those no other point beats on both (higher-or-equal Dr at lower-or-equal Df),
    evenly spaced along that frontier from least to most forgotten when there are more."""
    if len(points) <= limit:
        return list(range(len(points)))
    ranked = sorted((i for i, (dr, df) in enumerate(points) if dr is not None and df is not None),
                    key=lambda i: (points[i][1], -points[i][0]))
    front, best = [], -math.inf
    for i in ranked:
        if points[i][0] > best:
            front.append(i)
            best = points[i][0]
    if len(front) > limit:
        front = [front[round(j * (len(front) - 1) / (limit - 1))] for j in range(limit)]
    return sorted(front)


def family(row):
    return (row["setting"], row["dataset"], row["net"], row["recipe"],
            "JiT" if row["method"].startswith("JiT ") else row["method"])


def condense(rows, means, csv_path):
    """The rows to print: a method with more than SHOWN_ROWS rows in one setting, data set, net
    and recipe gives its picked rows and one line saying how many more ``csv_path`` holds."""
    members = OrderedDict()
    for i, row in enumerate(rows):
        members.setdefault(family(row), []).append(i)
    keep, more = set(), {}
    for idxs in members.values():
        chosen = [idxs[j] for j in pick([means[i] for i in idxs])]
        keep.update(chosen)
        if len(chosen) < len(idxs):
            more[chosen[-1] if chosen else idxs[-1]] = len(idxs) - len(chosen)
    out = []
    for i, row in enumerate(rows):
        if i in keep:
            out.append(row)
        if i in more:
            blank = OrderedDict((k, "") for k in row)
            blank.update(setting=row["setting"], dataset=row["dataset"], net=row["net"], recipe=row["recipe"],
                         method=f"… {more[i]} more {family(row)[-1]} rows (every row: {csv_path})")
            out.append(blank)
    return out


def markdown(rows):
    if not rows:
        return "(no records)"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def plot(records, path, grouped=None):
    """One panel per (setting, data set, net): mean Dr against mean Df per row of the table
    (``grouped``: row_groups(records), when the caller has it), one colour per method and
    recipe; a method with many rows (a σ × η grid) is one series whose picked points alone are
    named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups, texts = grouped or row_groups(records)
    panels = OrderedDict()
    for key, rs in groups.items():
        rs = [r for r in rs if not r.get("diverged") and r.get("Df") is not None and r.get("RetainTestAcc") is not None]
        if not rs:
            continue
        setting, dataset, net, rec, method = key[:5]
        fam = (rec, "JiT" if method.startswith("JiT ") else method)
        name = method + (f" [{rec}]" if rec != "reference" else "") + (f" ({texts[key]})" if texts[key] else "")
        panels.setdefault((setting, dataset, net), OrderedDict()).setdefault(fam, []).append((name, rs))
    if not panels:
        panels[("no run with metrics", "", "")] = OrderedDict()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    for ax, ((setting, dataset, net), families) in zip(axes[0], panels.items()):
        for (rec, method), members in families.items():
            df = [mean_std([r["Df"] for r in rs]) for _, rs in members]
            dr = [mean_std([r["RetainTestAcc"] for r in rs]) for _, rs in members]
            style = dict(marker="X", s=140, c="tab:green", zorder=3) if method in RETRAIN_METHODS else (
                dict(marker="*", s=180, c="tab:red", zorder=3) if method == "baseline" else
                dict(marker=".", s=40, c="tab:blue", alpha=0.6) if method == "JiT" else dict(marker="o", s=40))
            if rec != "reference":
                style.update(edgecolors="black", linewidths=0.8)
            named = pick([(d[0], f[0]) for d, f in zip(dr, df)])
            series = f"{method} [{rec}]" if rec != "reference" else method
            ax.scatter([f[0] for f in df], [d[0] for d in dr],
                       label=f"{series} ({len(members)} rows)" if len(named) < len(members) else None, **style)
            spread = [i for i, (_, rs) in enumerate(members) if len(rs) > 1]
            if spread and len(members) <= SHOWN_ROWS:
                ax.errorbar([df[i][0] for i in spread], [dr[i][0] for i in spread], xerr=[df[i][1] for i in spread],
                            yerr=[dr[i][1] for i in spread], fmt="none", ecolor="grey", lw=0.8)
            for i in named:
                ax.annotate(members[i][0], (df[i][0], dr[i][0]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7)
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
    """OUT.md (the condensed table), OUT.csv (every row) and OUT.png; returns the condensed rows."""
    grouped = row_groups(records)
    rows, means = summarise(records, with_means=True, grouped=grouped)
    shown = condense(rows, means, out + ".csv")
    write_markdown(shown, out + ".md")
    with open(out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(records, out + ".png", grouped)
    return shown


# ---- forgetting quality (forgetting_quality.py) ---------------------------------------------

FQ_KIND = "forgetting_quality"
FQ_COLUMNS = [("F", "F", "{:.3f}"), ("final score", "FinalScore", "{:.3f}"), ("Dr", "RetainTestAccExact", "{:.2f}"),
              ("Test", "TestAccExact", "{:.2f}"), ("Dr retrain", "RetrainRetainTestAccExact", "{:.2f}"),
              ("Test retrain", "RetrainTestAccExact", "{:.2f}"), ("median ε", "EpsMedian", "{:.2f}"),
              ("method time (s)", "MethodTime", "{:.1f}")]


def is_fq(r):
    return r.get("kind") == FQ_KIND


# A forgetting-quality table holds one call of forgetting_quality.py: its forget target, K,
# recipe and seed are columns; the flags it was called with, other than those, are its variant.
# JiT's σ, η and switches are in its row's label, so they are left out for every method alike:
# one call's records share one variant.
FQ_SHOWN = SHOWN | {"seed", "K", "forget_class", "forget_perc"} | JIT_SHOWN


def fq_groups(records):
    """{(setting, data set, net, forget target, K, recipe, seed, variant): {method: newest
    record}}; a later record of the same method (a rerun) replaces an earlier one."""
    groups = OrderedDict()
    for r in records:
        key = (r["setting"], r["dataset"], r["net"], str(r.get("forget")), r.get("K"), recipe_of(r), r.get("seed"),
               variant(r, FQ_SHOWN))
        groups.setdefault(key, OrderedDict())[r["method"]] = r
    return groups


def fq_rows(records):
    groups = fq_groups(records)
    texts = variant_texts(groups)
    with_variant = any(texts.values())
    rows = []
    for key, by_method in groups.items():
        setting, dataset, net, forget, k, rec, seed = key[:7]
        for method, r in by_method.items():
            name = f"{method} (floor, K/2)" if method in RETRAIN_METHODS else method
            row = OrderedDict(setting=setting, dataset=dataset, net=net, forget=forget, K=k, recipe=rec, seed=seed)
            if with_variant:
                row["variant"] = texts[key]
            row["method"] = name
            for col, key_, spec in FQ_COLUMNS:
                v = r.get(key_)
                row[col] = "diverged" if r.get("diverged") else (spec.format(v) if _number(v) else "–")
            rows.append(row)
    return rows


def fq_plot_paths(out, keys):
    """{key: OUT-eps-SETTING-DATASET-NET-TARGET-KK[-RECIPE][-sSEED][-VARIANT].png}, one file per
    key: a variant is named by a hash of its flags, and names that come out the same (after
    unsafe characters become _) are numbered."""
    def safe(part):
        return "".join(c if c.isalnum() or c in "._" else "_" for c in str(part))

    paths, taken = {}, set()
    for key in keys:
        setting, dataset, net, forget, k, rec, seed, var = key
        name = "-".join(safe(p) for p in (setting, dataset, net, forget)) + f"-K{safe(k)}"
        name += ("" if rec == "reference" else f"-{safe(rec)}") + ("" if seed is None else f"-s{safe(seed)}")
        if var:
            name += "-" + hashlib.sha1(repr(var).encode()).hexdigest()[:8]
        path, n = f"{out}-eps-{name}.png", 1
        while path in taken:
            n += 1
            path = f"{out}-eps-{name}-{n}.png"
        taken.add(path)
        paths[key] = path
    return paths


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
    setting, dataset, net, forget, k, rec, seed = key[:7]
    ax.set_title(f"per-example ε, {setting} · {dataset} · {net} · forget {forget} · K={k} · {rec} · seed {seed}",
                 fontsize=9)
    ax.set_xlabel("ε bucket (worth 1, 1/2, 1/4, … points; the last, none)")
    ax.set_ylabel("share of forget examples")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def write_fq(records, out):
    """OUT-fq.md and one ε plot per call of forgetting_quality.py; returns (rows, plot paths)."""
    rows = fq_rows(records)
    write_markdown(rows, out + "-fq.md")
    groups = fq_groups(records)
    paths = fq_plot_paths(out, groups)
    for key, by_method in groups.items():
        fq_plot(by_method, key, paths[key])
    return rows, list(paths.values())


def check_output(path, inputs):
    """check_writable for -out's files (which refuses a FIFO, which would block the report
    forever, and a device such as /dev/null, which would swallow it), and an existing one must
    not be one of the inputs, which would be overwritten."""
    if os.path.exists(path) and any(os.path.exists(f) and os.path.samefile(f, path) for f in inputs):
        raise UserError(f"-out {path} is one of the results files read: give another -out")
    check_writable(path, "-out")


def main(argv=None):
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="results JSON-lines files (a run read twice counts once)")
    p.add_argument("-out", default=None, metavar="PREFIX",
                   help="write PREFIX.md, PREFIX.csv and PREFIX.png (default: FILE-report next to the first file)")
    args = p.parse_args(argv)
    out = os.path.splitext(args.files[0])[0] + "-report" if args.out is None else args.out
    if not out.strip():
        raise UserError("-out is empty: give a path prefix such as results/report")
    if out.endswith(("/", os.sep)):
        raise UserError(f"-out {out} names a folder: give a path prefix such as {out}report")
    for ext in (".md", ".csv", ".png"):
        check_output(out + ext, args.files)
    records = []
    for f in args.files:
        records += read_file(f)
    records = deduplicate(records)
    fq = [r for r in records if is_fq(r)]
    records = [r for r in records if not is_fq(r)]
    if fq:
        check_output(out + "-fq.md", args.files)
        for path in fq_plot_paths(out, fq_groups(fq)).values():
            check_output(path, args.files)
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
