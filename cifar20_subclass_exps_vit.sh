#!/usr/bin/env bash
# CIFAR-20 sub-class forgetting, ViT (weights: a ViT trained on Cifar20, 20 classes).
# usage: cifar20_subclass_exps_vit.sh GPU[,GPU...]|cpu SEED [WEIGHT_PATH]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/grid_common.sh"

MAIN=forget_sub_class_main.py
ARGS=(-net ViT -dataset Cifar20 -superclasses 20 -subclasses 100 -b 64)
TARGETS=('-forget_class rocket' '-forget_class mushroom' '-forget_class baby' '-forget_class lamp' '-forget_class sea')
METHODS=(baseline retrain retrain_full finetune blindspot amnesiac UNSIR FisherForgetting ssd_tuning lipschitz_forgetting scrub)

grid_main "$@"
