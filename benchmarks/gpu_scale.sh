#!/usr/bin/env bash
# The GPU figures of docs/results/<gpu-name>/: every attention layer to 16k tokens
# (`effbench profile --breakdown`), and whole models from 32 to 512 px at patch 16 and at
# patch 8 (`effbench scale`, inference and one training step), all in bfloat16.
#
# Usage (from the repository root, on a machine with a CUDA GPU):
#   bash benchmarks/gpu_scale.sh OUTDIR [extra options for every command]
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_scale.sh OUTDIR [options]}
shift
py=${PYTHON:-python3}
mkdir -p "$out"
common=(--device cuda --dtype bfloat16)
status=0
$py -m effbench profile "${common[@]}" -n 65 257 1025 4097 16385 --breakdown \
    --min-run-time 0.2 -o "$out" "$@" || status=$?
for patch in 16 8; do
    $py -m effbench scale "${common[@]}" --res 32 512 --patch "$patch" --mode both -b 32 \
        --repeats 2 --set scale.min_run_time=0.1 -o "$out" "$@" || status=$?
done
exit $status
