# Shared by the *_exps_*.sh grid scripts (sourced, not run). A grid script sets $here (its
# folder) and its data (MAIN, ARGS, TARGETS, METHODS), then calls grid_main "$@".
#   $1  GPU index (CUDA_VISIBLE_DEVICES) or "cpu"
#   $2  seed
#   $3  weight file (or set WEIGHT_PATH)
# Environment: RESULTS (default results/results.jsonl) is the file every run appends to; runs
# already recorded there are skipped, so an interrupted grid is resumed by running it again.
# ONLY_METHODS="a b" restricts the methods; EXTRA_ARGS="-data_root /data" is passed to each run.

grid_usage() {
    echo "usage: $0 GPU|cpu SEED [WEIGHT_PATH]   (weights may also come from \$WEIGHT_PATH)" >&2
    exit 2
}

grid_main() {
    [ $# -ge 2 ] && [ $# -le 3 ] || grid_usage
    local gpu=$1 seed=$2 weights=${3:-${WEIGHT_PATH:-}}
    [[ $gpu == cpu || $gpu =~ ^[0-9]+$ ]] || grid_usage
    [[ $seed =~ ^[0-9]+$ ]] || grid_usage
    [ -n "$weights" ] || grid_usage
    [ -f "$weights" ] || { echo "error: weight file not found: $weights" >&2; exit 2; }
    local dev=()
    if [ "$gpu" != cpu ]; then
        export CUDA_VISIBLE_DEVICES=$gpu
        dev=(-gpu)
    fi
    local registered
    registered=" $(cd "$here" && python -c 'from methods import METHODS; print(" ".join(METHODS))') "
    local methods=("${METHODS[@]}")
    [ -z "${ONLY_METHODS:-}" ] || read -r -a methods <<< "$ONLY_METHODS"
    local extra=()
    [ -z "${EXTRA_ARGS:-}" ] || read -r -a extra <<< "$EXTRA_ARGS"
    local target method
    for target in "${TARGETS[@]}"; do
        for method in "${methods[@]}"; do
            if [[ $registered != *" $method "* ]]; then
                echo "not implemented yet, skipped: $method"
                continue
            fi
            echo "== $MAIN $method $target seed $seed"
            python "$here/$MAIN" "${ARGS[@]}" "${dev[@]}" -method "$method" $target "${extra[@]}" \
                -weight_path "$weights" -seed "$seed" -results "${RESULTS:-results/results.jsonl}" -skip_existing
        done
    done
}
