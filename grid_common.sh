# Shared by the *_exps_*.sh grid scripts (sourced, not run). A grid script sets $here (its
# folder) and its data (MAIN, ARGS, TARGETS, METHODS), then calls grid_main "$@".
#   $1  where runs go: a GPU index (0), a list of them (0,1,2,3: one run per GPU at a time,
#       until the grid is done), or cpu (cpu,cpu: two runs side by side on the CPU)
#   $2  seed
#   $3  weight file (or set WEIGHT_PATH)
# Environment: RESULTS (default results/results.jsonl) is the file every run appends to; runs
# already recorded there are skipped, so an interrupted grid is completed by running it again
# (a run writes its record in one piece at its end: a killed run leaves nothing behind).
# ONLY_METHODS="a b" restricts the methods; EXTRA_ARGS="-data_root /data" is passed to each run.
# With several slots each run's output goes to a log under ${RESULTS%.jsonl}-logs/ and the
# console gets one line per run. The retrain runs of the grid go first and finish before the
# others start, so that the others find the retrained model they are compared with.

grid_usage() {
    echo "usage: $0 GPU[,GPU...]|cpu[,cpu...] SEED [WEIGHT_PATH]   (weights may also come from \$WEIGHT_PATH)" >&2
    exit 2
}

grid_main() {
    [ $# -ge 2 ] && [ $# -le 3 ] || grid_usage
    local slots_arg=$1 seed=$2 weights=${3:-${WEIGHT_PATH:-}}
    [[ $slots_arg =~ ^(cpu|[0-9]+)(,(cpu|[0-9]+))*$ ]] || grid_usage
    [[ $seed =~ ^[0-9]+$ ]] || grid_usage
    [ -n "$weights" ] || grid_usage
    [ -f "$weights" ] || { echo "error: weight file not found: $weights" >&2; exit 2; }
    IFS=, read -r -a GRID_SLOTS <<< "$slots_arg"
    if [ ${#GRID_SLOTS[@]} -gt 1 ] && (( BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 501 )); then
        echo "error: running on several devices needs bash >= 5.1 (this is $BASH_VERSION)" >&2
        exit 2
    fi
    GRID_SEED=$seed GRID_WEIGHTS=$weights GRID_RESULTS=${RESULTS:-results/results.jsonl}
    GRID_LOGS=${GRID_RESULTS%.jsonl}-logs
    local known
    known=$(cd "$here" && python -c 'from methods import METHODS, RETRAIN_METHODS
print(" ".join(METHODS)); print(" ".join(RETRAIN_METHODS))')
    local registered=" $(sed -n 1p <<< "$known") " retrains=" $(sed -n 2p <<< "$known") "
    local methods=("${METHODS[@]}")
    [ -z "${ONLY_METHODS:-}" ] || read -r -a methods <<< "$ONLY_METHODS"
    GRID_EXTRA=()
    [ -z "${EXTRA_ARGS:-}" ] || read -r -a GRID_EXTRA <<< "$EXTRA_ARGS"

    local first=() rest=() target method
    for target in "${TARGETS[@]}"; do
        for method in "${methods[@]}"; do
            if [[ $registered != *" $method "* ]]; then
                echo "not implemented yet, skipped: $method"
            elif [[ $retrains == *" $method "* ]]; then
                first+=("$method|$target")
            else
                rest+=("$method|$target")
            fi
        done
    done
    GRID_FAILED=()
    declare -gA GRID_PID_SLOT=() GRID_PID_JOB=()
    trap '_grid_stop 130' INT
    trap '_grid_stop 143' TERM
    _grid_queue "${first[@]}"
    _grid_queue "${rest[@]}"
    trap - INT TERM
    if [ ${#GRID_FAILED[@]} -gt 0 ]; then
        echo "error: ${#GRID_FAILED[@]} run(s) failed (rerun the script to retry them):" >&2
        printf '  %s\n' "${GRID_FAILED[@]}" >&2
        exit 1
    fi
}

# Run the jobs ("method|target") keeping every slot busy; return when all have finished.
_grid_queue() {
    local jobs=("$@") next=0 slot pid rc
    local -A busy=()
    while [ $next -lt ${#jobs[@]} ] || [ ${#busy[@]} -gt 0 ]; do
        for slot in "${!GRID_SLOTS[@]}"; do
            if [ $next -lt ${#jobs[@]} ] && [ -z "${busy[$slot]:-}" ]; then
                # always in the background, also with one slot: bash runs a trap (stop the
                # grid) only once the foreground command is over, but interrupts a wait
                _grid_run "$slot" "${jobs[$next]}" &
                busy[$slot]=$!
                GRID_PID_SLOT[$!]=$slot
                GRID_PID_JOB[$!]=${jobs[$next]}
                next=$((next + 1))
            fi
        done
        [ ${#busy[@]} -gt 0 ] || continue
        rc=0
        if [ ${#GRID_SLOTS[@]} -eq 1 ]; then
            pid=${busy[0]}
            wait "$pid" || rc=$?
        else
            wait -n -p pid "${busy[@]}" || rc=$?  # bash >= 5.1
        fi
        slot=${GRID_PID_SLOT[$pid]}
        local where=""
        [ ${#GRID_SLOTS[@]} -eq 1 ] || where=", log $(_grid_log "${GRID_PID_JOB[$pid]}")"
        if [ $rc -ne 0 ]; then
            GRID_FAILED+=("${GRID_PID_JOB[$pid]/|/ } (exit $rc$where)")
            echo "== failed (exit $rc): ${GRID_PID_JOB[$pid]/|/ } on ${GRID_SLOTS[$slot]}"
        else
            echo "== done: ${GRID_PID_JOB[$pid]/|/ } on ${GRID_SLOTS[$slot]}"
        fi
        unset "busy[$slot]" "GRID_PID_SLOT[$pid]" "GRID_PID_JOB[$pid]"
    done
}

_grid_log() {
    local job=$1
    echo "$GRID_LOGS/${MAIN%.py}-${job//[^A-Za-z0-9._-]/_}-seed$GRID_SEED.log"
}

# One run of the grid on slot $1 (cpu or a GPU index).
_grid_run() {
    local slot=$1 method=${2%%|*} target=${2#*|} dev=() cuda=()
    local where=${GRID_SLOTS[$slot]}
    if [ "$where" != cpu ]; then
        cuda=(env CUDA_VISIBLE_DEVICES="$where")
        dev=(-gpu)
    fi
    # $target is deliberately split: it holds a flag and its value
    # shellcheck disable=SC2086
    local cmd=("${cuda[@]}" python "$here/$MAIN" "${ARGS[@]}" "${dev[@]}" -method "$method" $target "${GRID_EXTRA[@]}"
               -weight_path "$GRID_WEIGHTS" -seed "$GRID_SEED" -results "$GRID_RESULTS" -skip_existing)
    if [ ${#GRID_SLOTS[@]} -eq 1 ]; then  # one slot: the run's output on the console
        echo "== $MAIN $method $target seed $GRID_SEED"
        exec "${cmd[@]}"
    else
        local log
        log=$(_grid_log "$2")
        mkdir -p "$GRID_LOGS"
        echo "== start: $method $target seed $GRID_SEED on $where (log $log)"
        exec "${cmd[@]}" >> "$log" 2>&1
    fi
}

# Interrupted ($1: the exit status): stop the runs in flight (their records are never
# half-written) and leave.
_grid_stop() {
    local pid
    for pid in "${!GRID_PID_SLOT[@]}"; do
        kill "$pid" 2> /dev/null || true
    done
    wait
    echo "interrupted: rerun the same command to complete the grid" >&2
    exit "$1"
}
