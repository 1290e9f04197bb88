#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md in one command, for a short lease on a lent GPU.
#
#   bench/gpu_session.sh FACEHW_TGZ [OUT_DIR]
#
# FACEHW_TGZ: an archive holding facehw/ (train_data, val_data, the val pair file and its images), made here with
#   tar -czf .data/facehw_gpu.tgz -C ../shared/data -T list   (see docs/benchmarks.md for the list)
# Runs with whatever python3 has torch (PYTHONPATH=src, no install). Each step has its own time limit and log under
# OUT_DIR, so one failure does not lose the others; the summary table is printed last. STEPS="pack train_r34 ..."
# runs only the named steps (pack is needed by the throughput steps and the training runs). All steps take more
# than one call's 10 minutes; the open questions of issue 4 first (times estimated from the 2026-11-28 H200 runs):
#   STEPS="pack throughput throughput_fp16 throughput_recipe profile_fp16"        (about 5.5 minutes)
#   STEPS="test_gpu pack train_r34 train_r34_fp16 profile_compiled"               (about 5 minutes)
# and, with time left: STEPS="pack train_robust_ref train_cpu_recipe inference profile throughput512"
# (train_robust_ref trains the cpu_robust recipe of models/facehw.pt and brings back its model file, robust_ref.pt).
set -u
tgz=${1:?usage: bench/gpu_session.sh FACEHW_TGZ [OUT_DIR]}
out=${2:-${OUT:-gpu_out}}
mkdir -p "$out"
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH=$repo/src:$repo/bench PYTHONUNBUFFERED=1 FACEREC_CACHE=/tmp/facerec_cache
work=/tmp/facerec_gpu
rm -rf "$work" && mkdir -p "$work"
py=${PY:-python3}

step() {  # step NAME SECONDS CMD...: run with a limit, log to $out/NAME.log, note the exit status
  local name=$1 limit=$2
  shift 2
  if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then return; fi
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0))s"
  tail -n 4 "$out/$name.log"
  echo "$name $rc $((SECONDS - t0))" >>"$out/steps.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
$py -c "import torch, torchvision, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, 'cpus', __import__('os').cpu_count())" \
  | tee -a "$out/gpu.txt"
tar -xzf "$tgz" -C "$work"
data=$work/facehw
# GPU clocks, power and utilisation once a second, beside every step (sustained-load clocks vary)
nvidia-smi dmon -s pucm -d 1 >"$out/dmon.log" 2>&1 &
dmon=$!

# 1. correctness on the GPU: no host sync in the step, device-side skip, NCCL gather + DDP
step test_gpu 120 $py -m pytest -q -p no:cacheprovider "$repo/tests/test_gpu.py"
# 2. pack (decode once; 16 threads)
step pack 120 $py -m facerec pack "$data" "$work/pack"
# 3. training images/s, student vs facerec (eager and compiled), same model, batch, loss, device
step throughput 240 $py "$repo/bench/train_throughput.py" --device cuda --data "$data" --pack "$work/pack" \
  --models resnet34,resnet18 --batch-size 256 --steps 150 --warmup 30 --compile resnet34
# 4. end to end: `facerec train` from the pack, ResNet-34 recipe, compiled; images/s and time to AUC
step train_r34 240 $py -m facerec train --data "$work/pack" --out "$work/r34" --config gpu_resnet34 \
  train.epochs=10 train.compile=true train.log_every=1000
# 5. the CPU reference recipe on the GPU: time to AUC against the CPU run in docs/benchmarks.md
step train_cpu_recipe 120 $py -m facerec train --data "$work/pack" --out "$work/cpu_recipe" --config cpu \
  train.log_every=1000
# 6. inference embeddings/s
step inference 120 $py "$repo/bench/inference.py" --gpu-only --images 16384 --batch-size 512 --repeat 2
# 7. where the ResNet-34 step's time goes (kernels, device busy share, TFLOP/s)
step profile 90 $py "$repo/bench/profile_step.py" --model resnet34 --batch-size 256 --device cuda
# 7b. the same, compiled: does compile fuse the BatchNorm work away here (the trainer's gain) or not (the bench's)?
step profile_compiled 150 $py "$repo/bench/profile_step.py" --model resnet34 --batch-size 256 --device cuda --compile
# 8. the same comparison at batch 512 (eager)
step throughput512 150 $py "$repo/bench/train_throughput.py" --device cuda --data "$data" --pack "$work/pack" \
  --models resnet34 --batch-size 512 --steps 60 --warmup 6
# 9. the same comparison with the gpu_resnet34 recipe's model, loss and augmentation (what step 4 trains)
step throughput_recipe 200 $py "$repo/bench/train_throughput.py" --device cuda --data "$data" --pack "$work/pack" \
  --models resnet34 --batch-size 256 --steps 150 --warmup 30 --compile resnet34 --recipe gpu_resnet34
# 10. fp16 autocast with loss scaling instead of bf16: cuDNN then runs the BatchNorms (38% of the eager bf16 step)
step throughput_fp16 240 $py "$repo/bench/train_throughput.py" --device cuda --data "$data" --pack "$work/pack" \
  --models resnet34,resnet18 --batch-size 256 --steps 150 --warmup 30 --compile resnet34 --amp fp16
step profile_fp16 90 $py "$repo/bench/profile_step.py" --model resnet34 --batch-size 256 --device cuda --amp fp16
# 11. end to end under fp16: images/s, overflow steps and AUC against step 4
step train_r34_fp16 240 $py -m facerec train --data "$work/pack" --out "$work/r34_fp16" --config gpu_resnet34 \
  train.epochs=10 train.compile=true train.log_every=1000 train.amp=fp16
# 12. a reference-model candidate small enough to bring back (facenet_s: an 11 MB file): the cpu recipe with the
#     robust augmentation preset at 24 epochs (docs/benchmarks.md, "Domain shift"), exported into OUT_DIR to be
#     judged here on clean val, bench/shift.py and lfw_tiny against models/facehw.pt
step train_robust_ref 180 $py -m facerec train --data "$work/pack" --out "$work/robust_ref" --config cpu_robust \
  train.log_every=1000
if [ -f "$work/robust_ref/best.pt" ]; then
  $py -c "import sys; from facerec.engine.checkpoint import export_inference as e; e(sys.argv[1], sys.argv[2])" \
    "$work/robust_ref/best.pt" "$out/robust_ref.pt"
fi
kill "$dmon" 2>/dev/null

for run in r34 r34_fp16 cpu_recipe robust_ref; do
  [ -f "$work/$run/metrics.jsonl" ] || continue
  cp "$work/$run/metrics.jsonl" "$out/metrics_$run.jsonl"
  $py "$repo/bench/time_to_auc.py" "$work/$run" >>"$out/time_to_auc.log" 2>&1
done

echo "================ summary"
cat "$out/steps.txt"
grep -h -A4 "^model" "$out"/throughput*.log "$out/inference.log" 2>/dev/null
grep -h "ms/step\|device busy" "$out"/profile*.log 2>/dev/null
$py - "$work" <<'EOF'
import json, statistics, sys
from pathlib import Path
for run in ("r34", "r34_fp16", "cpu_recipe", "robust_ref"):
    f = Path(sys.argv[1]) / run / "metrics.jsonl"
    if not f.exists():
        print(run, "no metrics"); continue
    ep = [json.loads(l) for l in f.read_text().splitlines() if '"epoch"' in l]
    ep = [r for r in ep if r.get("event") == "epoch"]
    if not ep:
        print(run, "no epochs"); continue
    rates = [r["images_per_s"] for r in ep]
    later = rates[1:] or rates
    best = max(ep, key=lambda r: r.get("val_auc") or 0)
    total = sum(r["epoch_time_s"] for r in ep)
    print(f"{run}: {len(ep)} epochs, train img/s epoch1 {rates[0]:.0f}, median later {statistics.median(later):.0f}, "
          f"max {max(later):.0f}; wall {total:.0f}s; best val_auc {best.get('val_auc')} "
          f"(epoch {best['epoch']}), val_acc {best.get('val_acc')}")
    if "overflow_steps" in ep[-1]:
        print(f"  fp16 overflow steps per epoch {[r.get('overflow_steps') for r in ep]}, "
              f"final loss scale {ep[-1].get('loss_scale')}")
EOF
cat "$out/time_to_auc.log"
# the device tool returns at most 8 files: pack the logs into one (kept loose above in case the call is cut short)
shopt -s nullglob
cd "$out" || exit 0
logs=(*.log *.jsonl steps.txt)
tar -czf logs.tgz "${logs[@]}" && for f in "${logs[@]}"; do [ "$f" = session.log ] || rm -f "$f"; done
