#!/usr/bin/env bash
# CIFAR-10 random forgetting (0.165% of the training set, ~83 images), ViT (weights: a ViT trained on Cifar10).
# usage: cifar10_random_exps_vit.sh GPU[,GPU...]|cpu SEED [WEIGHT_PATH]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/grid_common.sh"

MAIN=forget_random_main.py
ARGS=(-net ViT -dataset Cifar10 -classes 10 -b 128)
TARGETS=('-forget_perc 0.00165')
METHODS=(baseline retrain retrain_full finetune blindspot amnesiac FisherForgetting ssd_tuning lfssd_tuning lipschitz_forgetting scrub)

grid_main "$@"
