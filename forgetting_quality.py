"""Forgetting quality: the first NeurIPS unlearning competition's per-example score F of each method.

python forgetting_quality.py fullclass -net SmallCNN -dataset Digits -classes 10 -forget_class 3 \
    -weight_path checkpoint/quickstart/SmallCNN-Digits.pth -K 16 -methods lipschitz_forgetting,finetune,retrain_full

For one setting, data set, net and forget target: K models retrained from scratch without the
forget set (retrain_full, seeds 0..K-1) and, per method, K runs of the method on the one
original model (seeds 0..K-1). Every forget example's logit-scaled confidence under the 2K
models gives its ε and the forgetting quality F (metrics.forget_score); one record per method
goes to -results with F, the competition's final score F × (Dr/Dr_retrain) × (Test/Test_retrain),
the ε histogram and the times. See docs/forgetting-quality.md.

The retrained models are saved in -fq_cache, named by everything that changes them, and reused
by every method and every later call (an interrupted call resumes from them). They train here one
after another, or as separate runs of this command spread over GPU slots (-slots 0,1,2,3) or
SLURM jobs (-slurm). retrain_full in -methods is the floor: the K retrained models split in two
halves, one compared with the other (at K/2 models a side). The score needs K_SIDE models a side,
derived from metrics.forget_score: -K is at least that, twice that with retrain_full (-h).
"""
import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch

import forget_full_class_main
import forget_random_main
import forget_sub_class_main
import hparams
import launch
import metrics
import records
from cli import Parser, UserError, int_in, run_cli
from evaluation import Diverged, check_finite, logits_of
from experiment import prepare, reseed, run_method, target_fields
from flags import base_parser, resolve_method
from methods import METHODS
from records import append_record, check_results_path
from retrained import RetrainStore
from utils import check_writable, device_name, library_versions, load_weights, now_iso

TASKS = {m.TASK.setting: m.TASK for m in (forget_full_class_main, forget_sub_class_main, forget_random_main)}
DEFAULT_METHODS = ("baseline", "lipschitz_forgetting", "finetune", "ssd_tuning", "scrub", "retrain_full")
RETRAIN = "retrain_full"
SCRIPT = os.path.abspath(__file__)


def smallest_side(limit=64):
    """The fewest models a side at which the forgetting quality can be above 0: the smallest K at
    which two sets of K identical models (ε = 0 on every example, nothing tells them apart) score
    F > 0. Below it the ε buckets that earn points are empty, and every method scores F = 0."""
    for k in range(2, limit):
        if metrics.forget_score(np.zeros((k, 1)), np.zeros((k, 1))).score > 0:
            return k
    raise AssertionError(f"metrics.forget_score awards no point below {limit} models a side")


K_SIDE = smallest_side()
# K retrains plus K runs of every method, each a full training on the largest nets: far more than
# any published use of the score (hundreds of models a side), and the most whose work can finish.
K_MAX = 1024
K_HELP = (f"models per side: K retrains and K runs of each method, {K_SIDE}..{K_MAX}; retrain_full's floor compares "
          f"two halves of the K retrains, so it needs K >= {2 * K_SIDE}. With fewer than {K_SIDE} models a side "
          f"the score is 0 for any method")


def fq_flags():
    """The flags of this command, beside every forget main's."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-K", type=int_in(K_SIDE, K_MAX), default=16, help=K_HELP)
    p.add_argument("-methods", default=",".join(DEFAULT_METHODS), help="comma-separated methods to score")
    p.add_argument("-fq_cache", default="checkpoint/forgetting_quality",
                   help="folder of the K retrained models, reused by later calls")
    p.add_argument("-slots", default=None,
                   help="train the missing retrains as separate runs, one per slot at a time "
                        "(e.g. 0,1,2,3 for GPUs, or cpu,cpu); unset: in this process, one after another")
    launch.add_launch_flags(p, detach=False)
    p.add_argument("-retrain_only", type=int_in(0), default=None, help=argparse.SUPPRESS)  # one spread-out retrain
    return p


def parser():
    """One sub-command per setting, each with its forget main's flags (its -b default, its JiT
    table, its own flags) and this command's."""
    description = f"{__doc__.splitlines()[0]} -K: {K_HELP}."
    p = Parser(description=description)
    settings = p.add_subparsers(dest="setting", required=True, metavar="SETTING",
                                help=f"which forget main's task: {', '.join(TASKS)}")
    common = fq_flags()
    for name, task in TASKS.items():
        base = base_parser(description, task, with_method=False)
        task.add_args(base)
        settings.add_parser(name, parents=[base, common], add_help=False, description=description,
                            help=f"the task of {task_script(task)}")
    return p


def task_script(task):
    return next(f"{m.__name__}.py" for m in (forget_full_class_main, forget_sub_class_main, forget_random_main)
                if m.TASK is task)


def parse_args(argv):
    args = parser().parse_args(argv)
    args.method = RETRAIN  # resolve_method reads it
    return TASKS[args.setting], args


def method_list(text):
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise UserError(f"-methods {text!r}: an item is empty; give comma-separated method names")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise UserError(f"-methods: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    twice = [n for n in names if names.count(n) > 1]
    if twice:
        raise UserError(f"-methods: {twice[0]} is given twice")
    return names


def hparams_of(args, setting, task, method):
    a = copy.copy(args)
    a.method = method
    return resolve_method(a, task)


def retrain_identity(exp, retrain_hp):
    """(identity, target) of the K retrained models, each named by its model seed besides. The
    target (records.record_target) is that of the runs compared with them; the identity adds
    everything else that changes a retrain: the retain loader's batch, the retrain's
    hyperparameters and the original model's file (the retrains are what the models unlearned
    from that file are compared with, and a new original is a new experiment)."""
    head = target_fields(exp)
    target = records.record_target(head)
    flags = dict(target, method=RETRAIN, b=exp.args.b, weights=os.path.basename(exp.args.weight_path or ""),
                 retrain=json.dumps(hparams.as_record(retrain_hp), sort_keys=True))
    return records.run_identity(exp.setting, flags), target


def train_retrain(exp, retrain_hp, seed, store, key):
    """Retrained model ``seed``, trained from a fresh initialisation and saved in ``store``;
    returns the seconds it took."""
    data = reseed(exp, seed)
    model = exp.build_fresh().to(exp.device)
    t0 = time.perf_counter()
    try:
        model = METHODS[RETRAIN].fn(model, data, retrain_hp, exp.device)
        check_finite(model)
    except FloatingPointError as e:  # Diverged included
        raise UserError(f"retrain seed {seed} diverged ({e}); change the retrain schedule") from None
    try:
        store.save(model.state_dict(), *key, seed)
    except OSError as e:
        raise UserError(f"cannot save retrained model {store.path(*key, seed)}: {e.strerror or e}") from None
    return time.perf_counter() - t0


def ensure_retrains(args, exp, retrain_hp, store, key, argv):
    """Train the missing retrained models (``key``: retrain_identity's); returns (seconds spent,
    how many were trained)."""
    paths = [store.path(*key, k) for k in range(args.K)]
    missing = [k for k, p in enumerate(paths) if not os.path.isfile(p)]
    cached = args.K - len(missing)
    print(f"retrained models: {cached} of {args.K} cached in {args.fq_cache}"
          + (f", {len(missing)} to train" if missing else ""), flush=True)
    if not missing:
        return 0.0, 0
    t0 = time.perf_counter()
    if args.slots is None and args.executor == "slots":
        for i, k in enumerate(missing, 1):
            secs = train_retrain(exp, retrain_hp, k, store, key)
            print(f"retrain {i}/{len(missing)}: seed {k}, {secs:.1f} s -> {paths[k]}", flush=True)
    else:
        spread(args, missing, paths, argv)
    return time.perf_counter() - t0, len(missing)


def spread(args, missing, paths, argv):
    """The missing retrains as runs of this command with -retrain_only SEED, through launch.py."""
    logs = os.path.join(args.fq_cache, "logs")
    runs = [launch.Run(cmd=(sys.executable, SCRIPT, *argv, "-retrain_only", str(k)), name=f"retrain seed {k}",
                       log=os.path.join(logs, os.path.basename(paths[k])[:-4] + ".log")) for k in missing]
    executor = launch.executor_from_flags(args, os.path.join(args.fq_cache, "jobs"), "fq-retrain",
                                          gpus_per_node=1 if args.gpu else 0)
    slots = launch.parse_slots(args.slots) if args.slots else ["cpu"]
    outcomes = launch.run_grid(runs, slots, executor=executor, job_gpus=1 if args.gpu else 0)
    failed = [o for o in outcomes if not o.ok or not os.path.isfile(paths[int(o.run.name.split()[-1])])]
    if failed:
        raise UserError(f"{len(failed)} of {len(runs)} retrain run(s) failed; first: {failed[0].run.name} "
                        f"(log {failed[0].run.log})")


def outputs(model, exp):
    """(forget-set confidences [M], retain test accuracy, test accuracy) of one model, the
    accuracies exact, in %, as evaluate_split's RetainTestAccExact and TestAccExact."""
    check_finite(model)
    amp = exp.args.amp
    lg, y = logits_of(model, exp.subset["forget_train"], exp.workers, exp.device, "forget set", amp)
    conf = metrics.logit_scaled_confidence(lg.float(), y)
    if not torch.isfinite(conf).all():
        raise Diverged("non-finite outputs on the forget set")
    test = logits_of(model, exp.test, exp.workers, exp.device, "test set", amp)
    source, idx = exp.split["retain_valid"]
    # retain_valid is part of the test set in every setting: its logits come from the same forward
    lg_r, y_r = test if source == "test" else logits_of(model, exp.train, exp.workers, exp.device, "train", amp)
    idx = torch.as_tensor(idx, dtype=torch.long)
    accs = [metrics.exact_accuracy((lg.argmax(1) == y).numpy()) for lg, y in ((lg_r[idx], y_r[idx]), test)]
    return [conf, *accs]


def histogram(eps, k):
    """Counts of ε in the competition's buckets: [0, 0.5), [0.5, 1), ... up to ceil(log(K − 1)),
    and the rest up to the cap (no points)."""
    bound = max(0.0, math.ceil(math.log(k - 1)))
    edges = [i * 0.5 for i in range(int(2 * bound) + 1)] + [metrics.FORGET_EPS_CAP]
    counts, _ = np.histogram(eps, bins=edges)
    return dict(edges=edges, counts=[int(c) for c in counts])


def score(confs_u, confs_r, acc_u, acc_r):
    f, eps = metrics.forget_score(np.stack(confs_u), np.stack(confs_r))
    dr_u, test_u = np.mean([a[0] for a in acc_u]), np.mean([a[1] for a in acc_u])
    dr_r, test_r = np.mean([a[0] for a in acc_r]), np.mean([a[1] for a in acc_r])
    final = f * (dr_u / dr_r if dr_r > 0 else 0.0) * (test_u / test_r if test_r > 0 else 0.0)
    return f, final, eps, dict(RetainTestAccExact=float(dr_u), TestAccExact=float(test_u),
                               RetrainRetainTestAccExact=float(dr_r), RetrainTestAccExact=float(test_r))


def floor_halves(k):
    """The retrained seeds of the floor's two sides: 0..h−1 against h..2h−1, h = K // 2 (with an
    odd K the last retrain sits out), so that both sides have h models and share none."""
    h = k // 2
    return list(range(h)), list(range(h, 2 * h))


def unlearned_side(exp, method, hp, initial, k):
    """K runs of ``method``, run k from the original weights ``initial`` with seed k: (their
    forget-set confidences, their accuracies, seconds in the method, seconds evaluating, why a
    run diverged or None; the lists stop at the first run that diverged)."""
    confs, accs, method_time, eval_time = [], [], 0.0, 0.0
    for seed in range(k):
        exp.model.load_state_dict(initial)
        model, secs, reason = run_method(exp, method, hp, seed)
        method_time += secs
        t1 = time.perf_counter()
        try:
            if model is None:
                raise Diverged(reason)
            c, *acc = outputs(model, exp)
        except Diverged as e:
            return confs, accs, method_time, eval_time, f"seed {seed}: {e}"
        eval_time += time.perf_counter() - t1
        confs.append(c.cpu())
        accs.append(acc)
        print(f"{method} {seed + 1}/{k}: {secs:.1f} s, Dr {acc[0]:.1f} Test {acc[1]:.1f}", flush=True)
    return confs, accs, method_time, eval_time, None


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    task, args = parse_args(argv)
    methods = method_list(args.methods)
    if RETRAIN in methods and args.K < 2 * K_SIDE:
        raise UserError(f"-K {args.K}: retrain_full's floor compares two halves of the K retrains, and the score "
                        f"needs {K_SIDE} models a side, so it needs -K >= {2 * K_SIDE} (or leave retrain_full out "
                        "of -methods)")
    setting = task.setting
    retrain_hp = hparams_of(args, setting, task, RETRAIN)
    method_hp = {m: hparams_of(args, setting, task, m) for m in methods}
    store = RetrainStore(args.fq_cache)
    if args.retrain_only is not None:
        exp = prepare(args, setting, *task.split(args))
        key = retrain_identity(exp, retrain_hp)
        path = store.path(*key, args.retrain_only)
        if not os.path.isfile(path):
            secs = train_retrain(exp, retrain_hp, args.retrain_only, store, key)
            print(f"retrain seed {args.retrain_only}: {secs:.1f} s -> {path}")
        return
    check_results_path(args.results)
    check_writable(os.path.join(args.fq_cache, "retrained.pth"), "-fq_cache")
    if args.slots is not None:
        launch.parse_slots(args.slots)
    exp = prepare(args, setting, *task.split(args))
    initial = copy.deepcopy(exp.model.state_dict())
    key = retrain_identity(exp, retrain_hp)
    retrain_time, trained = ensure_retrains(args, exp, retrain_hp, store, key, argv)

    t0 = time.perf_counter()
    ref_confs, ref_acc = [], []
    model = exp.build_fresh().to(exp.device)
    for k in range(args.K):
        load_weights(model, store.path(*key, k), args.net, exp.num_classes)
        c, *acc = outputs(model, exp)
        ref_confs.append(c.cpu())
        ref_acc.append(acc)
    ref_time = time.perf_counter() - t0

    base = dict(kind="forgetting_quality", **target_fields(exp), forget_id=exp.target_id, K=args.K, n_forget=len(ref_confs[0]))
    for method in methods:
        hp = method_hp[method]
        if method == RETRAIN:
            left, right = floor_halves(args.K)
            confs_u, acc_u = [ref_confs[i] for i in left], [ref_acc[i] for i in left]
            confs_r, acc_r = [ref_confs[i] for i in right], [ref_acc[i] for i in right]
            method_time, eval_time, diverged = 0.0, 0.0, None
            print(f"{method}: the floor, retrained seeds {left[0]}..{left[-1]} against {right[0]}..{right[-1]}",
                  flush=True)
        else:
            confs_u, acc_u, method_time, eval_time, diverged = unlearned_side(exp, method, hp, initial, args.K)
            confs_r, acc_r = ref_confs, ref_acc
        compared = len(confs_r)
        record = dict(base, method=method, K_compared=compared, diverged=diverged is not None,
                      **{k: getattr(hp, k) for k in METHODS[method].top_level})
        if diverged is None:
            t1 = time.perf_counter()
            f, final, eps, accs = score(confs_u, confs_r, acc_u, acc_r)
            eval_time += time.perf_counter() - t1
            record.update(F=f, FinalScore=final, **accs, EpsHistogram=histogram(eps, compared),
                          EpsMedian=float(np.median(eps)))
        else:
            record["diverged_reason"] = diverged
        record.update(RetrainTime=retrain_time, RetrainsTrained=trained, RetrainEvalTime=ref_time,
                      MethodTime=method_time, EvalTime=eval_time,
                      hparams=hparams.as_record(hp), retrain_hparams=hparams.as_record(retrain_hp),
                      args={k: v for k, v in vars(args).items() if k != "method"}, versions=library_versions(),
                      code=records.code_version(), device=device_name(exp.device), time=now_iso())
        path = append_record(args.results, record)
        if diverged is None:
            print(f"{method}: F {f:.3f}  final {final:.3f}  Dr {accs['RetainTestAccExact']:.2f}  "
                  f"Test {accs['TestAccExact']:.2f}  method {method_time:.1f}s  eval {eval_time:.1f}s -> {path}",
                  flush=True)
        else:
            print(f"warning: {method} diverged ({diverged}); recorded with diverged=true and no score -> {path}",
                  file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
