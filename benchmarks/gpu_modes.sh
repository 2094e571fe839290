#!/usr/bin/env bash
# Execution modes on a CUDA GPU, in bfloat16, each figure with its kernel time beside its wall
# time (records: fwd_kernel_ms / infer_kernel_ms, launch_bound):
#   1. the default profile (every layer, 65 to 4,097 tokens), eager, compiled and graph-
#      replayed (`--compile-mode reduce-overhead`);
#   2. whole models at patch 8 from 32 to 512 px, eager, compiled and graph-replayed;
#   3. the hybrid's local branch on each backend (gather, slices, flex) and every SDPA backend
#      from 1,025 to 16,385 tokens (benchmarks/gpu_modes.toml);
#   4. one epoch of `effbench train` per mechanism on synthetic 224 px images (patch 16):
#      images/s, peak memory and the SDPA backend that ran.
#
# Usage (from the repository root, on a machine with a CUDA GPU):
#   bash benchmarks/gpu_modes.sh OUTDIR
# Each part writes under OUTDIR/<part>/; a part that fails does not stop the others, and the
# exit status is the last failure's.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_modes.sh OUTDIR}
py=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
status=0
common=(--device cuda --dtype bfloat16)
modes=("eager:" "compiled:--compile" "graphs:--compile --compile-mode reduce-overhead")

for m in "${modes[@]}"; do
    name=${m%%:*}
    read -r -a flags <<<"${m#*:}"
    $py -m effbench profile "${common[@]}" "${flags[@]}" -o "$out/profile-$name" || status=$?
    $py -m effbench scale "${common[@]}" "${flags[@]}" --res 32 512 --patch 8 --mode both \
        -b 32 --repeats 2 --no-breakdown -o "$out/scale-p8-$name" || status=$?
done

$py -m effbench profile -s "$here/gpu_modes.toml" "${common[@]}" -o "$out/local-backends" \
    || status=$?

$py -m effbench train --device cuda --precision bf16 --dataset synthetic --epochs 1 \
    --set backbone.image_size=224 backbone.patch_size=16 train.synthetic_samples=4096 \
    train.batch_size=128 train.eval_batch_size=256 -o "$out/train-224" || status=$?
exit $status
