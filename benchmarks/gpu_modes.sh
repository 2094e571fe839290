#!/usr/bin/env bash
# Execution modes on a CUDA GPU, in bfloat16, each figure with its kernel time beside its wall
# time (records: fwd_kernel_ms / infer_kernel_ms, launch_bound). Parts, in the order they run
# (most wanted first):
#   env             nvidia-smi, torch, CUDA and cuDNN versions, the SDPA backends that run;
#   profile-eager   the default profile: every layer, 65 to 4,097 tokens, forward+backward;
#   local-backends  the hybrid's local branch on each backend (flex, slices, gather) beside
#                   every SDPA backend, 1,025 to 16,385 tokens (benchmarks/gpu_modes.toml);
#   profile-graphs  six layers at 65, 1,025 and 4,097 tokens, forward, replayed from CUDA
#                   graphs (`--compile-mode reduce-overhead`), so launch overhead leaves them;
#   train-224       one epoch of `effbench train` per mechanism on synthetic 224 px images
#                   (patch 16): images/s, peak memory, the SDPA backend that ran;
#   scale-eager     whole models at patch 8 from 32 to 512 px, inference and training step;
#   scale-graphs    three of them, inference, graph-replayed;
#   profile-compiled, scale-compiled   the same as the graph parts, compiled without graphs.
#
# Usage (from the repository root, on a machine with a CUDA GPU):
#   bash benchmarks/gpu_modes.sh OUTDIR [SECONDS] [PART ...]
# SECONDS (default 540) is the deadline for the whole run: each part gets what is left of it,
# and points are timed one after another (--no-interleave), so a part cut off by the deadline
# keeps the records of the points it finished. OUTDIR/parts.tsv gives each part's exit status
# and seconds. PARTs pick parts by name (default: all, in the order above). A part that fails
# does not stop the others; the exit status is the last failure's.
#
# GPU_MODES_DRY=1 runs every part on the CPU in float32 on the smallest grids: a check that
# each command line parses and runs, before device time is spent on it.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_modes.sh OUTDIR [SECONDS] [PART ...]}
budget=${2:-540}
shift $(($# < 2 ? $# : 2))
py=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"

device=cuda dtype=bfloat16 precision=bf16
lengths=(65 1025 4097)
local_lengths=(1025 4097 16385)
ladder=(32 512)
graph_models=(sdpa linformer nystrom performer hybrid window)
scale_models=(sdpa performer hybrid)
train_samples=4096 train_batch=128
if [[ ${GPU_MODES_DRY:-0} == 1 ]]; then
    device=cpu dtype=float32 precision=fp32
    lengths=(65) local_lengths=(65) ladder=(32 64) graph_models=(sdpa hybrid)
    scale_models=(sdpa) train_samples=160 train_batch=16
fi
common=(--device "$device" --dtype "$dtype")
graphs=(--compile --compile-mode reduce-overhead)
[[ $device == cpu ]] && graphs=(--compile)  # CUDA graphs need CUDA

env_part() {
    { nvidia-smi 2>&1 || echo "(no nvidia-smi)"; "$py" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
if torch.cuda.is_available():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q = torch.randn(8, 4, 1025, 32, device="cuda", dtype=torch.bfloat16)
    for b in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
              SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
        try:
            with sdpa_kernel(b):
                torch.nn.functional.scaled_dot_product_attention(q, q, q)
            print(b.name, "runs")
        except RuntimeError as e:
            print(b.name, "does not run:", str(e).splitlines()[0])
EOF
    } >"$out/env.txt" 2>&1
    printf 'env\t0\t%s\n' "$SECONDS" >>"$out/parts.tsv"
}

part() {  # part NAME COMMAND...: run under what is left of the deadline, log and time it
    local name=$1 t0 left rc
    shift
    if ((${#wanted[@]})) && [[ " ${wanted[*]} " != *" $name "* ]]; then return; fi
    left=$((budget - SECONDS))
    if ((left < 10)); then
        printf '%s\tskipped\t0\n' "$name" >>"$out/parts.tsv"
        return
    fi
    t0=$SECONDS
    echo "== $name ($left s left)"
    timeout --signal=INT --kill-after=20 "$left" "$@" >"$out/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$out/parts.tsv"
    tail -n 2 "$out/$name.log"
    ((rc == 0)) || status=$rc
}

wanted=("$@")
status=0
SECONDS=0
printf 'part\texit\tseconds\n' >"$out/parts.tsv"
env_part
part profile-eager "$py" -m effbench profile "${common[@]}" -n "${lengths[@]}" \
    --no-interleave -o "$out/profile-eager"
part local-backends "$py" -m effbench profile -s "$here/gpu_modes.toml" "${common[@]}" \
    -n "${local_lengths[@]}" --no-interleave -o "$out/local-backends"
part profile-graphs "$py" -m effbench profile "${common[@]}" "${graphs[@]}" \
    -a "${graph_models[@]}" -n "${lengths[@]}" --set profile.backward=false \
    --no-interleave -o "$out/profile-graphs"
part train-224 "$py" -m effbench train --device "$device" --precision "$precision" \
    --dataset synthetic --epochs 1 --set backbone.image_size=224 backbone.patch_size=16 \
    train.synthetic_samples="$train_samples" train.batch_size="$train_batch" train.eval_batch_size=256 \
    -o "$out/train-224"
part scale-eager "$py" -m effbench scale "${common[@]}" --res "${ladder[@]}" --patch 8 \
    --mode both -b 32 --repeats 2 --no-breakdown --no-interleave -o "$out/scale-eager"
part scale-graphs "$py" -m effbench scale "${common[@]}" "${graphs[@]}" -a "${scale_models[@]}" \
    --res "${ladder[@]}" --patch 8 --mode infer -b 32 --repeats 2 --no-breakdown \
    --no-interleave -o "$out/scale-graphs"
part profile-compiled "$py" -m effbench profile "${common[@]}" --compile \
    -a "${graph_models[@]}" -n "${lengths[@]}" --set profile.backward=false \
    --no-interleave -o "$out/profile-compiled"
part scale-compiled "$py" -m effbench scale "${common[@]}" --compile -a "${scale_models[@]}" \
    --res "${ladder[@]}" --patch 8 --mode infer -b 32 --repeats 2 --no-breakdown \
    --no-interleave -o "$out/scale-compiled"
exit $status
