"""Sweep JiT over a σ × η grid (optionally over its parity switches) for one setting.

python sweep.py -setting fullclass -net SmallCNN -dataset Digits -classes 10 -forget_class 3 \
    -weight_path checkpoint/quickstart/SmallCNN-Digits.pth -sigmas 0.1,0.5,1,2 -etas 3e-4,3e-3,3e-2,0.3

Data and model are loaded once and the weights restored before every point. Each point is an
ordinary record in -results (points already recorded there are reused, so a sweep resumes);
the baseline and a retrain (retrain_full, run once if -results holds none) are recorded too.
Writes the Dr–Df frontier plot to -plot and prints, per switch combination, the best Dr at
which JiT reaches Df ≤ 2 × retrain's Df + 5 points.
"""
import copy
import itertools
import os
import sys

import forget_full_class_main
import forget_random_main
import forget_sub_class_main
from experiment import base_parser, execute, prepare, recorded, resolve_jit
from Lipschitz import GRAD_MODES, MODEL_MODES, REDUCTIONS
from report import retrain_index, target_key
from utils import Parser, UserError, cli, read_records

MAINS = {m.SETTING: m for m in (forget_full_class_main, forget_sub_class_main, forget_random_main)}
SWITCHES = ("jit_grad", "jit_reduction", "jit_mode")


def float_list(text):
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise UserError(f"σ and η values must be > 0: {text!r}")
    return values


def parse_args(argv):
    pre = Parser(add_help=False)
    pre.add_argument("-setting", default="fullclass", choices=list(MAINS))
    known, _ = pre.parse_known_args(argv)
    main = MAINS[known.setting]
    p = base_parser(__doc__.splitlines()[0], batch_size=main.BATCH, with_method=False)
    p.add_argument("-setting", default="fullclass", choices=list(MAINS), help="which forget_*_main.py task")
    main.add_task_args(p)
    p.add_argument("-sigmas", required=True, help="comma-separated σ values")
    p.add_argument("-etas", required=True, help="comma-separated η values")
    p.add_argument("-all_switches", action="store_true",
                   help="also sweep every combination of -jit_grad, -jit_reduction and -jit_mode")
    p.add_argument("-plot", default="results/sweep.png", help="where to write the frontier plot (PNG)")
    args = p.parse_args(argv)
    args.method = "lipschitz_forgetting"
    return main, args


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
    main_module, args = parse_args(sys.argv[1:] if argv is None else argv)
    sigmas, etas = float_list(args.sigmas), float_list(args.etas)
    resolve_jit(args, main_module.JIT)
    setting = main_module.SETTING
    exp = prepare(args, setting, *main_module.task(args))
    initial = copy.deepcopy(exp.model.state_dict())

    def point(**changes):
        a = copy.copy(args)
        for k, v in changes.items():
            setattr(a, k, v)
        done = recorded(a, setting)
        if done is not None:
            print(f"reused: {a.method} σ={a.sigma:g} η={a.eta:g}")
            return done
        exp.model.load_state_dict(initial)
        return execute(exp, a)

    baseline = point(method="baseline")
    key = target_key(dict(setting=setting, dataset=args.dataset, net=args.net, forget=exp.forget, seed=args.seed))
    retrain = retrain_index(read_records(args.results)).get(key) or point(method="retrain_full")

    combos = (list(itertools.product(GRAD_MODES, REDUCTIONS, MODEL_MODES)) if args.all_switches
              else [(args.jit_grad, args.jit_reduction, args.jit_mode)])
    points = [point(sigma=s, eta=e, **dict(zip(SWITCHES, c)))
              for c in combos for s in sigmas for e in etas]

    for name, r in (("baseline", baseline), (retrain["method"], retrain)):
        if r.get("diverged"):
            raise UserError(f"the {name} run diverged ({r.get('diverged_reason')}): nothing to compare JiT with")
    diverged = [p for p in points if p.get("diverged")]
    points = [p for p in points if not p.get("diverged")]

    title = (f"JiT on {args.dataset}/{args.net}, {setting}, forget {exp.forget}, seed {args.seed}, "
             f"N={args.n_samples}")
    plot(points, baseline, retrain, args.plot, title)
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
    cli(main)
