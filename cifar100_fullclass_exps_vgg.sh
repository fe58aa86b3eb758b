#!/usr/bin/env bash
# CIFAR-100 full-class forgetting, VGG16 (weights: a VGG16 trained on Cifar100, 100 classes).
# usage: cifar100_fullclass_exps_vgg.sh GPU[,GPU...]|cpu SEED [WEIGHT_PATH]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/grid_common.sh"

MAIN=forget_full_class_main.py
ARGS=(-net VGG16 -dataset Cifar100 -classes 100 -b 128)
TARGETS=('-forget_class rocket' '-forget_class mushroom' '-forget_class baby' '-forget_class lamp' '-forget_class sea')
METHODS=(baseline retrain retrain_full finetune blindspot amnesiac UNSIR ssd_tuning lipschitz_forgetting scrub gkt emmn)

grid_main "$@"
