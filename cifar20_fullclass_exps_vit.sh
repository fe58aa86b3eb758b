#!/usr/bin/env bash
exec "${PYTHON:-python3}" "$(dirname "$0")/grid.py" cifar20_fullclass_vit "$@"
