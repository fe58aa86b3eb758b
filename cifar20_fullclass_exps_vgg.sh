#!/usr/bin/env bash
# CIFAR-20 full-class forgetting, VGG16 (weights: a VGG16 trained on Cifar20, 20 classes).
# usage: cifar20_fullclass_exps_vgg.sh GPU[,GPU...]|cpu SEED [WEIGHT_PATH]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/grid_common.sh"

MAIN=forget_full_class_main.py
ARGS=(-net VGG16 -dataset Cifar20 -classes 20 -b 128)
TARGETS=('-forget_class vehicle2' '-forget_class veg' '-forget_class people' '-forget_class electrical_devices' '-forget_class natural_scenes')
METHODS=(baseline retrain retrain_full finetune blindspot amnesiac UNSIR ssd_tuning lipschitz_forgetting scrub gkt emmn)

grid_main "$@"
