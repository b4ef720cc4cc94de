#!/usr/bin/env bash
# The GPU benchmark behind BENCHMARKS.md. Run on the GPU machine from the repository root, with
# crema's release binary in .device/ (../shared/gpu/pack.sh) and ../shared/gpu/torch_anchor.py
# copied to .device/: PyTorch's reference steps first, then `crema bench` on every models/ net in
# strict fp32 and in TF32, each row set beside PyTorch's figure from this same run.
set -u
cd "$(dirname "$0")/.."
[ -f .device/env.sh ] && source .device/env.sh
CREMA=${CREMA:-.device/crema}
PY=${PY:-/opt/torch/.venv/bin/python}
ANCHOR=${ANCHOR:-.device/torch_anchor.py}
OUT=${OUT:-/tmp}
mkdir -p "$OUT"
echo "== PyTorch (torch_anchor.py)"
"$PY" "$ANCHOR" | tee "$OUT/torch.jsonl"
for mode in strict tf32; do
  echo "== crema bench, $mode"
  if [ $mode = tf32 ]; then export CREMA_TF32=1; else unset CREMA_TF32; fi
  "$CREMA" bench --gpu 0 --torch "$OUT/torch.jsonl" --iterations "${ITERATIONS:-20}" 2>"$OUT/bench_$mode.log" \
    || { echo "crema bench failed:"; tail -5 "$OUT/bench_$mode.log"; }
done
# With several GPUs, the data-parallel scaling table of BENCHMARKS.md (TF32, same batch per GPU).
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "${GPUS:-0}" -gt 1 ]; then
  echo "== crema bench, data-parallel scaling on $GPUS GPUs"
  NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} "$CREMA" bench --gpu all --tf32 --iterations "${ITERATIONS:-20}" \
    models/caffenet/deploy.prototxt:256 models/resnet50/deploy.prototxt:64 models/googlenet/deploy.prototxt:128 \
    2>"$OUT/bench_scaling.log" || { echo "crema bench --gpu all failed:"; tail -5 "$OUT/bench_scaling.log"; }
fi
