#!/usr/bin/env bash
# The whole GPU check in one command, sized for one short lease (at most 360 s on one H200):
#   timeout 480 ./gpu_check.sh OUT_DIR [GPU_INDEX]      (GPU_INDEX "cpu": a dry run at toy sizes)
# on generated data (nothing is downloaded); Python is ${PYTHON:-python3}. Parts, in order:
#   bench-fp32, bench-bf16  bench.py --sizes check: JiT on 500 images, evaluation with MIA over
#                           60,000 VGG16 / 5,000 ViT images (per image), ...   -> OUT/bench.jsonl
#   tests                   the CUDA test tier (pytest -m gpu)                 -> OUT/gpu-tests.txt
#   data, pretrain, resume  CIFAR-100 files (100 + 20 images per class), VGG16 pretrained for
#                           2 epochs with -gpu, stopped after its first epoch and continued
#                           with -resume
#   grid, report            the cifar100_fullclass_vgg grid for one target (rocket), every method,
#                           ten runs at a time on the GPU, budgets cut   -> OUT/grid.jsonl, grid-report.md
#   vit-data, vit-weights,  peak host memory of a ViT forget run (baseline, -amp) over 50,000 +
#   vit-memory              10,000 images at 224x224          -> OUT/vit-memory.json, OUT/vit.jsonl
# Every part has its own time budget (BUDGET below, enforced with timeout; they add up to at
# most 360 s with each part's kill grace); a part writes into OUT as soon as it ends, so
# a kill at any moment leaves every finished part's files. OUT/summary.txt has one line per
# part, OUT/logs.txt the last lines of each part's log. Checkpoints and data live in a
# temporary folder, removed on every exit; the parts' processes are stopped with the script.
set -uo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ] || { [ $# -eq 2 ] && ! [[ $2 =~ ^([0-9]+|cpu)$ ]]; }; then
    echo "usage: $0 OUT_DIR [GPU_INDEX|cpu]" >&2
    exit 2
fi
if [ -e "$1" ] && [ -n "$(ls -A "$1" 2> /dev/null)" ]; then
    echo "error: $1 is not empty (its results would be mixed with this check's): give a new folder" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd) || exit 2
gpu=${2:-0}
py=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled PYTHONDONTWRITEBYTECODE=1

# seconds per part on one H200; with GRACE each they add up to at most 360
declare -A BUDGET=([gpu]=3 [bench-fp32]=60 [bench-bf16]=40 [tests]=85 [data]=5 [pretrain]=18 [resume]=18
                   [grid]=62 [report]=4 [vit-data]=8 [vit-weights]=8 [vit-memory]=35)
GRACE=1  # after a part's budget, TERM; GRACE seconds later, KILL
total=$(( $(IFS=+; echo "${BUDGET[*]}") + GRACE * ${#BUDGET[@]} ))
[ "$total" -le 360 ] || { echo "error: the budgets add up to $total s, over 360" >&2; exit 2; }

if [ "$gpu" = cpu ]; then
    # the same steps on the CPU at toy sizes: checks the script, measures nothing
    # (the small CNN instead of VGG16; the benchmark at its smoke sizes, both models in fp32 and
    # VGG16 alone in bf16; budgets x10 for a slow CPU)
    scale=${BUDGET_SCALE:-10} dev=() bench=(--device cpu --sizes smoke) slots=cpu,cpu
    per_class=(2 1) net=SmallCNN vit=(SmallCNN 2 1) only="baseline retrain_full lipschitz_forgetting"
else
    export CUDA_VISIBLE_DEVICES=$gpu
    scale=${BUDGET_SCALE:-1} dev=(-gpu) bench=(--device cuda --sizes check) per_class=(100 20)
    slots=$gpu$(printf ",$gpu%.0s" {1..9}) net=VGG16 vit=(ViT 500 100) only=""
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 2
export TMPDIR=$tmp  # the parts' own temporary files (torch's caches, ...) go with it
child="" failed=0

cleanup() {
    if [ -n "$child" ]; then  # a part in flight: its whole process group (timeout makes one per part)
        kill -TERM -- "-$child" 2> /dev/null
        sleep "$GRACE"
        kill -KILL -- "-$child" 2> /dev/null
        wait "$child" 2> /dev/null
    fi
    rm -rf "$tmp"
}
stop() {
    trap '' INT TERM  # once: a TERM to the process group reaches this shell twice
    echo "$1" >> "$out/summary.txt"
    exit "$2"
}
trap cleanup EXIT
trap 'stop interrupted 130' INT
trap 'stop terminated 143' TERM

summary() { echo "$*" | tee -a "$out/summary.txt"; }

# start NAME CMD...: run CMD within NAME's budget in its own process group, its output in
# $tmp/NAME.log; sets $child
start() {
    local name=$1
    shift
    timeout -k "$GRACE" "$(( BUDGET[$name] * scale ))" "$@" < /dev/null > "$tmp/$name.log" 2>&1 &
    child=$!
}

# finish NAME T0 [EXPECTED_EXIT]: wait for the part, then its summary line ("NAME: ok ..." or
# "NAME: FAILED ...", with what note_NAME says, if defined) and the tail of its log
finish() {
    local name=$1 t0=$2 expected=${3:-0} rc what note=""
    wait "$child"
    rc=$?
    child=""
    declare -F "note_$name" > /dev/null && note=$("note_$name" 2> /dev/null)
    what=ok
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        what="FAILED (exit $rc: over its budget)"
    elif [ "$rc" != "$expected" ]; then
        what="FAILED (exit $rc)"
    fi
    [ "$what" = ok ] || failed=$((failed + 1))
    summary "$name: $what in $((SECONDS - t0)) s (budget $(( BUDGET[$name] * scale )) s)${note:+: $note}"
    { echo "== $name (exit $rc)"; tail -n 12 "$tmp/$name.log" | cut -c 1-300; } >> "$out/logs.txt"
    [ "$what" = ok ]
}

# part NAME CMD...: start and finish
part() {
    local t0=$SECONDS
    start "$@"
    finish "$1" "$t0"
}

note_gpu() { head -1 "$tmp/gpu.log"; }
note_pretrain() { echo "$net, stopped after $(grep "^epoch 1/2" "$tmp/pretrain.log")"; }
note_resume() { grep -E "^(resuming|epoch 2/2|error)" "$tmp/resume.log" | tr '\n' ' '; }
note_grid() { echo "$(wc -l < "$tmp/grid.jsonl") records"; }
note_vit-memory() { echo "${vit[0]}, $((vit[1] * 100)) + $((vit[2] * 100)) images: $(cat "$out/vit-memory.json")"; }

cd "$here"
summary "gpu_check.sh $gpu, $py, budgets add up to $((total * scale)) s"
if [ "$gpu" != cpu ]; then
    part gpu nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

# 1. the benchmark (its JSON lines go to OUT as each figure ends)
for prec in fp32 bf16; do
    t0=$SECONDS
    amp=() models=()
    [ "$prec" = bf16 ] && amp=(--amp)
    [ "$gpu" = cpu ] && [ "$prec" = bf16 ] && models=(--models VGG16)
    timeout -k "$GRACE" "$(( BUDGET[bench-$prec] * scale ))" "$py" bench.py "${bench[@]}" "${amp[@]}" "${models[@]}" \
        < /dev/null >> "$out/bench.jsonl" 2> "$tmp/bench-$prec.log" &
    child=$!
    finish "bench-$prec" "$t0"
done

# 2. the CUDA test tier (on the CPU: collected and skipped)
t0=$SECONDS
start tests "$py" -m pytest -q -m gpu -p no:cacheprovider --basetemp "$tmp/pytest" -rs --tb=short tests/test_cuda.py tests/test_evaluation_wiring.py
finish tests "$t0"
tail -c 60000 "$tmp/tests.log" > "$out/gpu-tests.txt"

# 3. generated CIFAR-100, VGG16 pretrained on it (stopped after epoch 1, resumed), the grid
data=$tmp/data
pretrain=("$py" pretrain_model.py -net "$net" -dataset Cifar100 -classes 100 "${dev[@]}" -epochs 2
          -data_root "$data" -out "$tmp/pretrained.pth")
part data "$py" tools/fake_cifar.py "$data" -dataset cifar100 -train_per_class "${per_class[0]}" \
    -test_per_class "${per_class[1]}" -learnable
t0=$SECONDS
start pretrain "${pretrain[@]}"
while kill -0 "$child" 2> /dev/null && ! grep -qs "^epoch 1/2" "$tmp/pretrain.log"; do sleep 0.2; done
kill -TERM -- "-$child" 2> /dev/null  # stopped after its first epoch (exit 143, as intended)
finish pretrain "$t0" 143
t0=$SECONDS
start resume "${pretrain[@]}" -resume "$tmp/pretrained-resume.pth"
finish resume "$t0"

if [ -f "$tmp/pretrained.pth" ]; then
    # one target, every method (the dry run: three), on the slots
    NET=$net "$py" -c 'import json, os, grid; g = grid.GRIDS["cifar100_fullclass_vgg"]
args = g.args.replace("-net VGG16", "-net " + os.environ["NET"])
print(json.dumps(dict(about=g.about, main=g.main, args=args, targets=g.targets[:1], methods=g.methods)))' \
        > "$tmp/grid.json"
    t0=$SECONDS
    RESULTS=$tmp/grid.jsonl ONLY_METHODS=$only \
        EXTRA_ARGS="-data_root $data -retrain_epochs 1 -gkt_batches 20 -relearn_max_steps 10 -retrain_dir $tmp/retrained" \
        start grid "$py" grid.py "$tmp/grid.json" "$slots" 0 "$tmp/pretrained.pth"
    finish grid "$t0"
    cp "$tmp/grid.jsonl" "$out/grid.jsonl" 2> /dev/null
    part report "$py" report.py "$tmp/grid.jsonl" -out "$tmp/grid-report" && cp "$tmp/grid-report.md" "$out/"
else
    summary "grid: FAILED (not run: no pretrained $net)"
    failed=$((failed + 1))
fi

# 4. host memory of a forget run over CIFAR-100-sized data
rm -rf "$data" "$tmp/retrained"
part vit-data "$py" tools/fake_cifar.py "$data" -dataset cifar100 -train_per_class "${vit[1]}" \
    -test_per_class "${vit[2]}"
part vit-weights "$py" tools/random_weights.py "${vit[0]}" 100 "$tmp/vit.pth"
t0=$SECONDS
start vit-memory "$py" tools/peak_memory.py "$out/vit-memory.json" forget_full_class_main.py -net "${vit[0]}" \
    -dataset Cifar100 -classes 100 "${dev[@]}" -amp -method baseline -forget_class rocket \
    -weight_path "$tmp/vit.pth" -data_root "$data" -results "$out/vit.jsonl" -relearn_max_steps 0 \
    -retrain_dir "$tmp/retrained"
finish vit-memory "$t0"
summary "done in $SECONDS s, $failed part(s) failed"
[ "$failed" = 0 ]
