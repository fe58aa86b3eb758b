#!/usr/bin/env bash
# Quickstart on scikit-learn's bundled digits (no download): pretrain the small CNN once
# (cached in checkpoint/quickstart/), forget digit 3 with every registered method, print a table.
#   ./quickstart.sh        on the CPU (about 3 minutes on 2 cores)
#   ./quickstart.sh 0      on GPU 0
#   PYTHON=/path/to/python ./quickstart.sh    another interpreter (default: python3)
#   RECIPE=corrected ./quickstart.sh    each method as its paper describes it (default: reference,
#                                       the authors' code as it runs, defects included; docs/parity.md)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
if [ $# -gt 1 ] || { [ $# -eq 1 ] && ! [[ $1 =~ ^[0-9]+$ ]]; }; then
    echo "usage: $0 [GPU_INDEX]" >&2
    exit 2
fi
py=${PYTHON:-python3}
recipe=${RECIPE:-reference}
if [ "$recipe" != reference ] && [ "$recipe" != corrected ]; then
    echo "RECIPE must be reference or corrected (got $recipe)" >&2
    exit 2
fi
dev=()
if [ $# -eq 1 ]; then
    export CUDA_VISIBLE_DEVICES=$1
    dev=(-gpu)
fi

weights=checkpoint/quickstart/SmallCNN-Digits.pth
if [ ! -f "$weights" ]; then
    echo "== pretraining SmallCNN on Digits (once; cached in $weights)"
    "$py" pretrain_model.py -net SmallCNN -dataset Digits -classes 10 -out "$weights" "${dev[@]}"
fi

results=results/quickstart-$(date +%Y%m%d-%H%M%S).jsonl
# baseline and the retrains first (the others are compared with the retrained model), JiT last
read -r -a methods <<< "$("$py" -c 'from methods import METHODS, RETRAIN_METHODS
print(" ".join(sorted(METHODS, key=lambda m: (m not in ("baseline", *RETRAIN_METHODS), m == "lipschitz_forgetting"))))')"
for method in "${methods[@]}"; do
    echo "== $method"
    "$py" forget_full_class_main.py -net SmallCNN -dataset Digits -classes 10 -forget_class 3 \
        -method "$method" -weight_path "$weights" -seed 0 -recipe "$recipe" -results "$results" "${dev[@]}"
done
# JiT a second time, at the σ, η and switches that sweep.py found best on this model (eval mode,
# gradients cleared per batch; docs/sweeps.md): chosen on Digits itself, not the paper's values
echo "== lipschitz_forgetting (σ, η, switches chosen on Digits by sweep.py)"
"$py" forget_full_class_main.py -net SmallCNN -dataset Digits -classes 10 -forget_class 3 \
    -method lipschitz_forgetting -sigma 0.5 -eta 0.01 -jit_mode eval -jit_grad per_batch \
    -weight_path "$weights" -seed 0 -recipe "$recipe" -results "$results" "${dev[@]}"

echo
echo "Forgetting digit 3, recipe $recipe (Dr: accuracy on the other test digits; Df: on test images of 3; %):"
"$py" report.py "$results"   # also writes the table as .md/.csv and the Dr-Df plot as .png
echo "records: $results"
