"""Sweep JiT over a σ × η grid (optionally over its parity switches) for one setting.

python sweep.py -setting fullclass -net SmallCNN -dataset Digits -classes 10 -forget_class 3 \
    -weight_path checkpoint/quickstart/SmallCNN-Digits.pth -sigmas 0.1,0.5,1,2 -etas 3e-4,3e-3,3e-2,0.3

Data and model are loaded once and the weights restored before every point. Each point is an
ordinary record in -results, identified by its own flags (σ, η, the switches and every flag
that changes a run), never by the sweep's -sigmas/-etas/-plot: points already recorded there
are reused, so a sweep resumes and a widened grid runs only its new points. The baseline and
a retrain (retrain_full, run once if -results holds none of the same forget target, seed,
recipe and data pipeline) are recorded too, and reused alike.
Writes the Dr–Df frontier plot to -plot and prints, per switch combination, the best Dr at
which JiT reaches Df ≤ 2 × retrain's Df + 5 points.
"""
import argparse
import copy
import itertools
import math
import os
import sys

import forget_full_class_main
import forget_random_main
import forget_sub_class_main
from cli import Parser, UserError, run_cli
from experiment import execute, prepare, target_fields
from flags import base_parser, resolve_method
from Lipschitz import GRAD_MODES, MODEL_MODES, REDUCTIONS
from records import check_results_path, read_records, record_target, run_identity
from report import retrain_index
from utils import check_writable

TASKS = {m.TASK.setting: m.TASK for m in (forget_full_class_main, forget_sub_class_main, forget_random_main)}
SWITCHES = ("jit_grad", "jit_reduction", "jit_mode")
# Flags of the sweep command, not of any one point: left out of each point's arguments, so a
# point is the same run whatever grid or plot it was asked for in (and the same run as a
# forget_*_main.py with its flags).
SWEEP_ONLY = ("sigmas", "etas", "plot", "all_switches", "setting")


def float_list(text, flag):
    """The values of a comma-separated list flag: each a finite number > 0, none empty (a
    hole such as 1,,2 is a typo, never dropped silently) and none twice."""
    items = text.split(",")
    values = []
    for i, item in enumerate(items, 1):
        if not item.strip():
            raise UserError(f"{flag} {text!r}: item {i} of {len(items)} is empty; give comma-separated numbers > 0")
        try:
            v = float(item)
        except ValueError:
            raise UserError(f"{flag} {text!r}: {item.strip()!r} is not a number") from None
        if not math.isfinite(v) or v <= 0:
            raise UserError(f"{flag} {text!r}: every value must be a finite number > 0, not {item.strip()}")
        if v in values:
            raise UserError(f"{flag} {text!r}: {v:g} is given twice")
        values.append(v)
    return values


def point_identity(setting, args_dict):
    return run_identity(setting, {k: v for k, v in args_dict.items() if k not in SWEEP_ONLY})


def find_point(records, setting, args):
    """The record in ``records`` of the run ``args`` describes, or None. Records whose args hold
    the sweep-only flags match too."""
    want = point_identity(setting, vars(args))
    return next((r for r in records if isinstance(r, dict) and isinstance(r.get("args"), dict)
                 and point_identity(r.get("setting"), r["args"]) == want), None)


def find_retrain(records, exp):
    """The retrain record in ``records`` that this sweep's points are compared with: report.py's
    choice, the retrain of their target (records.record_target), or None."""
    return retrain_index(records).get(record_target(target_fields(exp)))


# -setting picks the task whose flags the rest of the command line holds: read first on its
# own, then a parent of the whole parser, so that it is declared once and listed by -h.
SETTING = Parser(add_help=False)
SETTING.add_argument("-setting", default="fullclass", choices=list(TASKS), help="which forget_*_main.py task")


def parse_args(argv):
    task = TASKS[SETTING.parse_known_args(argv)[0].setting]
    base = base_parser(__doc__.splitlines()[0], task, with_method=False)
    p = Parser(description=base.description, parents=[SETTING, base], add_help=False)
    task.add_args(p)
    p.add_argument("-sigmas", required=True, help="comma-separated σ values, each a finite number > 0")
    p.add_argument("-etas", required=True, help="comma-separated η values, each a finite number > 0")
    p.add_argument("-all_switches", action="store_true",
                   help="also sweep every combination of -jit_grad, -jit_reduction and -jit_mode")
    p.add_argument("-plot", default="results/sweep.png", help="where to write the frontier plot (PNG)")
    args = p.parse_args(argv)
    args.method = "lipschitz_forgetting"
    return task, args


def criterion(retrain_df):
    return 2 * retrain_df + 5


def summarise(points, retrain_df):
    """Per switch combination: (best Dr among points with Df ≤ 2·retrain Df + 5, that point)."""
    out = {}
    for p in points:
        key = tuple(p["args"].get(s) for s in SWITCHES)
        ok = p["Df"] <= criterion(retrain_df)
        best = out.get(key)
        if ok and (best is None or p["RetainTestAcc"] > best["RetainTestAcc"]):
            out[key] = p
        out.setdefault(key, None)
    return out


def frontier(points):
    """Points not dominated by another with higher-or-equal Dr and lower-or-equal Df."""
    pts = sorted(points, key=lambda p: (p["Df"], -p["RetainTestAcc"]))
    front, best_dr = [], -1.0
    for p in pts:
        if p["RetainTestAcc"] > best_dr:
            front.append(p)
            best_dr = p["RetainTestAcc"]
    return front


def plot(points, baseline, retrain, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    combos = sorted({tuple(p["args"].get(s) for s in SWITCHES) for p in points})
    for i, combo in enumerate(combos):
        ps = [p for p in points if tuple(p["args"].get(s) for s in SWITCHES) == combo]
        label = "JiT " + ("parity" if combo == ("accumulate", "sum", "as_loaded") else "/".join(combo))
        ax.scatter([p["Df"] for p in ps], [p["RetainTestAcc"] for p in ps], s=25, alpha=0.8, label=label,
                   marker="os^Dv<>p"[i % 8])
    front = frontier(points)
    ax.plot([p["Df"] for p in front], [p["RetainTestAcc"] for p in front], "k--", lw=1, label="JiT frontier")
    for p in front:
        ax.annotate(f"σ={p['sigma']:g}, η={p['eta']:g}", (p["Df"], p["RetainTestAcc"]), fontsize=7,
                    xytext=(4, -8), textcoords="offset points")
    ax.scatter([baseline["Df"]], [baseline["RetainTestAcc"]], marker="*", s=200, c="tab:red", label="baseline")
    ax.scatter([retrain["Df"]], [retrain["RetainTestAcc"]], marker="X", s=150, c="tab:green",
               label=retrain["method"])
    ax.axvline(criterion(retrain["Df"]), color="tab:green", lw=0.8, ls=":", label="Df = 2·retrain + 5")
    ax.set_xlabel("Df: accuracy on the forgotten data (%)  — lower is more forgotten")
    ax.set_ylabel("Dr: accuracy on the retained test data (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    task, args = parse_args(sys.argv[1:] if argv is None else argv)
    sigmas, etas = float_list(args.sigmas, "-sigmas"), float_list(args.etas, "-etas")
    jit = resolve_method(args, task)
    check_results_path(args.results)
    check_writable(args.plot, "-plot")
    setting = task.setting
    exp = prepare(args, setting, *task.split(args))
    initial = copy.deepcopy(exp.model.state_dict())
    base = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in SWEEP_ONLY})

    def point(**changes):
        a = copy.copy(base)
        for k, v in changes.items():
            setattr(a, k, v)
        done = find_point(read_records(args.results), setting, a)
        if done is not None:
            print(f"reused: {a.method}" + (f" σ={a.sigma:g} η={a.eta:g}" if a.sigma is not None else ""))
            return done
        exp.model.load_state_dict(initial)
        return execute(exp, a, resolve_method(a, task))

    baseline = point(method="baseline")
    retrain = find_retrain(read_records(args.results), exp) or point(method="retrain_full")

    # a switch left unset on the command line is the value JiT resolved for it (its default)
    given = tuple(getattr(args, s, None) if getattr(args, s, None) is not None else getattr(jit, s.split("_", 1)[1])
                  for s in SWITCHES)
    combos = list(itertools.product(GRAD_MODES, REDUCTIONS, MODEL_MODES)) if args.all_switches else [given]
    points = [point(sigma=s, eta=e, **dict(zip(SWITCHES, c)))
              for c in combos for s in sigmas for e in etas]

    for name, r in (("baseline", baseline), (retrain["method"], retrain)):
        if r.get("diverged"):
            raise UserError(f"the {name} run diverged ({r.get('diverged_reason')}): nothing to compare JiT with")
    diverged = [p for p in points if p.get("diverged")]
    points = [p for p in points if not p.get("diverged")]

    title = (f"JiT on {args.dataset}/{args.net}, {setting}, forget {exp.forget}, seed {args.seed}, "
             f"N={jit.n_samples}")
    try:
        plot(points, baseline, retrain, args.plot, title)
    except OSError as e:  # checked writable before the sweep: a full disk, or a folder gone meanwhile
        raise UserError(f"every point is recorded in {args.results}, but the plot {args.plot} could not be "
                        f"written ({e.strerror or e}); rerun the same command to draw it") from None
    print(f"\nbaseline: Dr {baseline['RetainTestAcc']:.2f}  Df {baseline['Df']:.2f}")
    print(f"{retrain['method']}: Dr {retrain['RetainTestAcc']:.2f}  Df {retrain['Df']:.2f}  "
          f"-> target Df ≤ {criterion(retrain['Df']):.2f}")
    for combo, best in summarise(points, retrain["Df"]).items():
        name = "parity" if combo == ("accumulate", "sum", "as_loaded") else "/".join(combo)
        if best is None:
            print(f"JiT {name}: no point reaches the target Df")
        else:
            print(f"JiT {name}: best Dr {best['RetainTestAcc']:.2f} at Df {best['Df']:.2f} "
                  f"(σ={best['sigma']:g}, η={best['eta']:g})")
    if diverged:
        print(f"{len(diverged)} point(s) diverged (left out): " +
              ", ".join(f"σ={p['sigma']:g} η={p['eta']:g}" for p in diverged))
    print(f"plot: {args.plot}\nrecords: {args.results}")


if __name__ == "__main__":
    run_cli(main)
