"""Benchmark JiT and evaluation against the hardware's limit, on synthetic CIFAR-100-shaped
data with randomly initialised VGG16 (32×32) and ViT-B/16 (224×224).

python bench.py --device cuda [--amp]          # full sizes: 500 forget images, 60,000 evaluated
python bench.py --device cuda --sizes check    # gpu_check.sh's: ViT evaluated on 5,000 images, no e2e
python bench.py --device cpu --sizes small     # a small CPU machine
python bench.py --device cpu --sizes smoke     # every figure once, as fast as it runs (the tests)
Prints one JSON line per figure: seconds, images/s, seconds per image, peak GPU and host
memory; the eval line also gives the seconds for 60,000 images at the measured rate. Figures:
forward_limit (plain batched forward, no data loading), jit (JiT on the forget images, N=25,
batch 128), eval (accuracy, MIA and ZRF over train + test through the real data path), e2e
(JiT then evaluation, as a forget run does), mia_bs1 (the authors' one-image-at-a-time
MIA forward, timed on a subset and extrapolated to the evaluated count).
"""
import argparse
import copy
import json
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

import datasets
import metrics
from evaluation import evaluate_split
from images import ArrayImages, ImageTransform
from Lipschitz import jit_unlearn
from models import VGG16, ViT

SIZES = {  # per net: forget images, N, train images, test images, batch-size-1 images, forward batches
    "full": {"VGG16": dict(forget=500, n=25, train=50000, test=10000, bs1=2000, fwd_batch=1024, fwd_iters=20),
             "ViT": dict(forget=500, n=25, train=50000, test=10000, bs1=200, fwd_batch=256, fwd_iters=5)},
    # the GPU check's (gpu_check.sh): JiT at full size, the ViT evaluation on a twelfth of the
    # images, without the e2e figure (JiT + evaluation again): sized for the check's 60 s fp32 budget
    "check": {"VGG16": dict(forget=500, n=25, train=50000, test=10000, bs1=1000, fwd_batch=1024, fwd_iters=20,
                            e2e=False),
              "ViT": dict(forget=500, n=25, train=4000, test=1000, bs1=100, fwd_batch=256, fwd_iters=5, e2e=False)},
    "small": {"VGG16": dict(forget=32, n=4, train=900, test=100, bs1=100, fwd_batch=128, fwd_iters=2),
              "ViT": dict(forget=2, n=1, train=6, test=2, bs1=2, fwd_batch=2, fwd_iters=1)},
    # every figure once at the least size that runs its code (the test suite's smoke test)
    "smoke": {"VGG16": dict(forget=4, n=2, train=40, test=10, bs1=4, fwd_batch=4, fwd_iters=1),
              "ViT": dict(forget=2, n=1, train=6, test=2, bs1=2, fwd_batch=2, fwd_iters=1)},
}


def synthetic(n, size, classes=100, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    return ArrayImages(images, np.arange(n) % classes, transform=ImageTransform(size))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def peak(device):
    gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB (Linux)
    return {"peak_gpu_gib": None if gpu is None else round(gpu, 3), "peak_host_gib": round(host, 3)}


def emit(figure, net, device, amp, images, seconds, **extra):
    line = dict(figure=figure, model=net, device=str(device), amp=amp, images=images,
                seconds=round(seconds, 4), images_per_s=round(images / seconds, 1) if seconds > 0 else None,
                seconds_per_image=float(f"{seconds / images:.4g}"))
    line.update(extra)
    line.update(peak(device))
    print(json.dumps(line), flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return line


def bench_net(net, sizes, device, amp, workers):
    s = sizes[net]
    size = 224 if net == "ViT" else 32
    torch.manual_seed(0)
    model = (ViT(100) if net == "ViT" else VGG16(100)).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

    x = torch.randn(s["fwd_batch"], 3, size, size, device=device)
    model.eval()
    with torch.no_grad(), autocast:
        model(x)  # warm-up (cuDNN autotuning, lazy init)
        t, _ = timed(lambda: [model(x) for _ in range(s["fwd_iters"])], device)
    emit("forward_limit", net, device, amp, s["fwd_batch"] * s["fwd_iters"], t, batch=s["fwd_batch"])

    train, test = synthetic(s["train"], size), synthetic(s["test"], size, seed=1)
    split = datasets.split_full_class(train, test, 0)
    forget = np.flatnonzero(np.arange(len(train)) < s["forget"])  # the first `forget` images
    split["forget_train"] = ("train", forget)
    split["retain_train"] = ("train", np.setdiff1d(np.arange(len(train)), forget))
    forget_dl = DataLoader(Subset(train, forget), batch_size=128, num_workers=workers)

    def jit():
        m = copy.deepcopy(model).train()
        jit_unlearn(m, forget_dl, 0.5, 3e-4, s["n"], device=device, progress=False, amp=amp)
        return m

    t, unlearned = timed(jit, device)
    emit("jit", net, device, amp, s["forget"], t, n_samples=s["n"], batch=128)

    def evaluate(m):
        scores, forget_logits = evaluate_split(m, train, test, split, 128, workers, device, amp)
        gold = metrics.predict(model, DataLoader(Subset(train, forget), 512), device, amp)[0]
        scores["ZRF"] = float(1 - metrics.JSDiv(F.softmax(forget_logits, -1), F.softmax(gold, -1)))
        return scores

    t, _ = timed(lambda: evaluate(unlearned), device)
    n_eval = len(train) + len(test)
    emit("eval", net, device, amp, n_eval, t, metrics="accuracy, MIA (+AUC), ZRF",
         seconds_for_60000=round(t / n_eval * 60000, 2))

    if s.get("e2e", True):
        t, _ = timed(lambda: evaluate(jit()), device)
        emit("e2e", net, device, amp, s["forget"], t, note="JiT + full evaluation")

    one = DataLoader(Subset(train, np.arange(s["bs1"])), batch_size=1, num_workers=workers)
    t, _ = timed(lambda: metrics.predict(model, one, device, amp), device)
    emit("mia_bs1", net, device, amp, s["bs1"], t, extrapolated_seconds_for_eval=round(t / s["bs1"] * n_eval, 2),
         eval_images=n_eval)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--sizes", default="full", choices=list(SIZES))
    p.add_argument("--models", default="VGG16,ViT", help="comma-separated: VGG16, ViT")
    p.add_argument("--workers", type=int, default=None, help="data-loader workers (default: 0 on CPU, 8 on GPU)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench.py: error: --device cuda but no CUDA device is available")
    device = torch.device(args.device)
    workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    for net in args.models.split(","):
        if net not in SIZES[args.sizes]:
            sys.exit(f"bench.py: error: unknown model {net!r} (VGG16, ViT)")
        bench_net(net, SIZES[args.sizes], device, args.amp, workers)


if __name__ == "__main__":
    main()
