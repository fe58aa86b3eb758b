#!/usr/bin/env bash
# Check this checkout on one CUDA GPU, end to end, on generated data (nothing is downloaded):
#   ./gpu_check.sh OUT_DIR [GPU_INDEX]
# 1. bench.py on the GPU for VGG16 and ViT, fp32 and --amp          -> OUT/bench.jsonl
# 2. CIFAR-100 files in the python format (random images, 100 per class for training, 20 for
#    testing), a VGG16 pretrained on them for 2 epochs with -gpu (and a run stopped after its
#    first epoch and continued with -resume), then
#    cifar100_fullclass_exps_vgg.sh on the GPU over every target and method, six runs at a time
#    on the one GPU (slots 0,0,0,0,0,0 for GPU 0: most of a run is process start-up), with the retrain
#    and pseudo-batch budgets cut so that it fits in minutes           -> OUT/grid.jsonl, OUT/grid-report.md
# 3. the peak host memory of a ViT CIFAR-100 forget run (baseline, -amp, 50,000 + 10,000
#    images evaluated at 224x224)                                      -> OUT/vit-memory.json
# Each part has its own time limit (PART_LIMIT seconds, default 200) so one slow part cannot
# swallow the others; OUT/summary.txt says what finished. GPU_INDEX "cpu" is a dry run of the
# same steps on the CPU at toy sizes (to check the script itself, not to measure anything).
set -uo pipefail
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 OUT_DIR [GPU_INDEX]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
gpu=${2:-0}
limit=${PART_LIMIT:-200}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ "$gpu" = cpu ]; then
    dev=() bench=(--device cpu --sizes small) slot=cpu full=(6 1) per_class=(5 2)
else
    export CUDA_VISIBLE_DEVICES=$gpu
    dev=(-gpu) bench=(--device cuda) slot=$gpu,$gpu,$gpu,$gpu,$gpu,$gpu full=(500 100) per_class=(100 20)
fi
cd "$here"
summary() { echo "$*" | tee -a "$out/summary.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1
summary "gpu: $(cat "$out/gpu.txt")"

# 1. the benchmark
for amp in "" "--amp"; do
    t0=$SECONDS
    timeout "$limit" python bench.py "${bench[@]}" $amp >> "$out/bench.jsonl" 2>> "$out/bench.err"
    summary "bench ${amp:-fp32}: exit $? in $((SECONDS - t0)) s"
done

# 2. generated CIFAR-100, a brief -gpu pretraining, the VGG16 full-class grid
data=$out/data
# CIFAR-100 files in the python format under $1: $2 training and $3 test images per class,
# random around a class-dependent grey level (something for a network to learn)
write_cifar100() {
    python tools/fake_cifar.py "$1" -dataset cifar100 -train_per_class "$2" -test_per_class "$3" -learnable
}
write_cifar100 "$data" "${per_class[@]}"
t0=$SECONDS
timeout "$limit" python pretrain_model.py -net VGG16 -dataset Cifar100 -classes 100 "${dev[@]}" -epochs 2 \
    -data_root "$data" -out "$out/vgg16-cifar100.pth" > "$out/pretrain.log" 2>&1
summary "pretrain VGG16 ${dev[*]} 2 epochs: exit $? in $((SECONDS - t0)) s: $(tail -1 "$out/pretrain.log")"
# -resume on the device: stop a 2-epoch run after its first epoch, then continue it
t0=$SECONDS
python pretrain_model.py -net VGG16 -dataset Cifar100 -classes 100 "${dev[@]}" -epochs 2 -data_root "$data" \
    -out "$out/resume-check.pth" > "$out/resume.log" 2>&1 &
pid=$!
while kill -0 $pid 2> /dev/null && ! grep -q "^epoch 1/2" "$out/resume.log"; do sleep 0.2; done
kill $pid 2> /dev/null; wait $pid 2> /dev/null
timeout "$limit" python pretrain_model.py -net VGG16 -dataset Cifar100 -classes 100 "${dev[@]}" -epochs 2 \
    -data_root "$data" -out "$out/resume-check.pth" -resume "$out/resume-check-resume.pth" >> "$out/resume.log" 2>&1
summary "pretrain -resume ${dev[*]}: exit $? in $((SECONDS - t0)) s: $(grep -E "^(resuming|epoch 2/2|error)" "$out/resume.log" | tr '\n' ' ')"
if [ -f "$out/vgg16-cifar100.pth" ]; then
    t0=$SECONDS
    RESULTS=$out/grid.jsonl EXTRA_ARGS="-data_root $data -retrain_epochs 1 -gkt_batches 20 -relearn_max_steps 10 -retrain_dir $out/retrained" \
        PYTHON=python timeout "$limit" ./cifar100_fullclass_exps_vgg.sh "$slot" 0 "$out/vgg16-cifar100.pth" > "$out/grid.log" 2>&1
    summary "cifar100_fullclass_exps_vgg.sh $slot: exit $? in $((SECONDS - t0)) s, $(wc -l < "$out/grid.jsonl" 2>/dev/null || echo 0) records"
    python report.py "$out/grid.jsonl" -out "$out/grid-report" > /dev/null 2>&1
fi

# 3. host memory of a ViT forget run over the whole of CIFAR-100-sized data
write_cifar100 "$data/cifar-100-full" "${full[@]}"
python tools/random_weights.py ViT 100 "$out/vit-random.pth"
t0=$SECONDS
timeout "$limit" python tools/peak_memory.py "$out/vit-memory.json" forget_full_class_main.py -net ViT \
    -dataset Cifar100 -classes 100 "${dev[@]}" -amp -method baseline -forget_class rocket \
    -weight_path "$out/vit-random.pth" -data_root "$data/cifar-100-full" -results "$out/vit.jsonl" \
    -relearn_max_steps 0 -retrain_dir "$out/rt" > "$out/vit-memory.log" 2>&1
summary "ViT forget run ($((full[0] * 100)) + $((full[1] * 100)) images at 224, -amp): exit $? in $((SECONDS - t0)) s: $(cat "$out/vit-memory.json" 2>/dev/null)"
# the weights are not results: leave only logs, records and reports in OUT
rm -rf "$data" "$out"/*.pth "$out/retrained" "$out/rt"
