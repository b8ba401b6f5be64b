#!/usr/bin/env bash
# medtune vs Unsloth vs plain TRL vs the seed recipe on one GPU, in one time-boxed call, plus the
# throughput on/off arms, the profile and the 8B memory rows (the package benchmarks/peers).
#   bash scripts/stage_peers_carry.sh                           # here: builds .carry-peers/site
#   OUT=/path LIMIT=555 bash benchmarks/train_vs_peers.sh         # on the GPU machine
#   TINY=1 OUT=/tmp/x bash benchmarks/train_vs_peers.sh           # CPU plumbing check (tiny model; Unsloth rows fail)
#   ARMS="medtune medtune-8b-lora-gc" ... bash benchmarks/train_vs_peers.sh   # only these arms, in this file's order
# FlashAttention-4 (issue 28): with flash-attn-4 importable (FA4_SITE: a `pip install --target` folder)
# the defaults take it on sm90/sm100; the -varlen arms are the same rows on torch's varlen kernel.
# Back home: python -m benchmarks.peers table OUT/train_vs_peers.jsonl --append records the call in
# benchmarks/results/train_vs_peers.json (ratios are taken within a call only).
# Each arm runs in its own process under `timeout`, is skipped when the time left is short, and
# appends its row to $OUT/train_vs_peers.jsonl as soon as it ends (a failed or cut arm leaves an
# error row), so a later failure or the end of the slot never loses finished rows. The table and
# $OUT/train_vs_peers.json come last. Arms in priority order: the four systems on the same 1B
# workload, the throughput on/off arms, QLoRA 8B and LoRA 8B, the all-linear r=16 rows, the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/train-vs-peers}
mkdir -p "$OUT"
R=$OUT/train_vs_peers.jsonl
LIMIT=${LIMIT:-555}
SITE=${PEERS_SITE:-$PWD/.carry-peers/site}
[ -n "${TINY:-}" ] && SITE=${PEERS_SITE:-}  # CPU check: this machine's own packages
BASE=${PEERS_BASE:-/tmp/medtune-peers/base-1b}
# The image's torch/transformers/peft/accelerate; the carried site adds what it lacks. A --target
# install skips nvidia-cutlass-dsl's .pth, so its dsl_packages folder goes on the path by hand.
FA4=${FA4_SITE:+$FA4_SITE:$FA4_SITE/nvidia_cutlass_dsl/dsl_packages:}
export PYTHONPATH="$PWD/src:$PWD:$FA4$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export UNSLOTH_DISABLE_STATISTICS=1 PEERS_COMMAND="${PEERS_COMMAND:-OUT=\$OUT LIMIT=$LIMIT bash benchmarks/train_vs_peers.sh}"
PY=(python3 -m benchmarks.peers)
# TINY=1: every arm on a tiny model on CPU with a few steps (these flags come last and win).
EXTRA=()
[ -n "${TINY:-}" ] && EXTRA=(--tiny --warmup 1 --steps 1 --examples 24 --tokens-per-micro-batch 512 --accumulation 1)
left() { echo $((LIMIT - SECONDS)); }
arm() {  # arm TIMEOUT MIN TAG ARGS...: one row; skipped when less than MIN seconds are left
  local t=$1 min=$2 tag=$3; shift 3
  # ARMS="tag ...": run only these arms (a later call for the rows an earlier one had no time for).
  if [ -n "${ARMS:-}" ] && [[ " $ARMS " != *" $tag "* ]]; then return; fi
  local l; l=$(left)
  if [ "$l" -lt "$min" ]; then
    echo "--- skip $tag: $l s left (needs ~$min)"
    echo "{\"tag\": \"$tag\", \"skipped\": \"$l s left of the slot\"}" >> "$R"; return
  fi
  [ "$t" -gt "$l" ] && t=$l
  echo "=== [$SECONDS s] $tag (timeout $t s)"
  timeout -k 5 "$t" "${PY[@]}" run --tag "$tag" --out "$R" "$@" "${EXTRA[@]}"; local rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "{\"tag\": \"$tag\", \"error\": \"timed out after $t s\"}" >> "$R"
  fi
  echo "--- [$SECONDS s] $tag done (rc=$rc)"
}
{
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv 2>/dev/null || echo "no nvidia-smi"
python3 -c "import sys, torch, transformers, peft, accelerate; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
cat "$SITE/../VERSIONS.txt" 2>/dev/null | tr '\n' ' '; echo
echo "=== [$SECONDS s] make-base"
timeout 90 "${PY[@]}" make-base --shape 1b --dir "$BASE" ${TINY:+--tiny} || echo "!!! make-base failed"
# (a)-(d): the same 1B workload, LoRA r=8 on q/k/v/o; medtune at its shipped defaults, with a profile.
arm 130 60 medtune         --system medtune --base "$BASE" --profile
arm 110 50 medtune-varlen  --system medtune --base "$BASE" --set attention=varlen
arm 170 80 unsloth         --system unsloth --base "$BASE"
arm 120 50 trl             --system trl     --base "$BASE"
arm 100 45 seed            --system seed    --base "$BASE"
# Throughput on/off (each against the defaults row): Liger's fused kernels (norms, SwiGLU, rotary,
# fused linear cross-entropy); the two host syncs removed in this issue put back (blocking batch
# copies, the Trainer's per-micro-batch NaN/Inf loss check).
arm 90 45 medtune-liger-off    --system medtune --base "$BASE" --set liger_kernels=off --no-heldout
arm 80 40 medtune-host-syncs   --system medtune --base "$BASE" --no-heldout \
  --trainer-arg 'accelerator_config={"non_blocking": false}' --trainer-arg logging_nan_inf_filter=true
# Liger's kernels under torch.compile: medtune now keeps only the fused linear cross-entropy. Call 5
# (2026-12-03) measured the steps there one at a time, with these --trainer-arg values before the
# defaults took the last: liger_kernel_config={"rms_norm": false} (the previous defaults, the arm
# below), {"rms_norm": false, "swiglu": false}, and {"rms_norm": false, "swiglu": false, "rope": false}.
arm 90 45 medtune-liger-previous --system medtune --base "$BASE" --no-heldout --trainer-arg 'liger_kernel_config={"rms_norm": false}'
# PEFT casts each LoRA input to the adapter's fp32 before its (autocast: bf16) matmul; under autocast
# skipping that cast is the same arithmetic (Inductor rounds once to bf16 either way), minus a copy.
arm 90 45 medtune-no-input-cast --system medtune --base "$BASE" --no-heldout --no-input-cast
# q/k/v (and a LoRA gate/up pair) as one GEMM group (medtune.train.fused_projections, the default under
# compile since session 8): off, the previous defaults; with dropout 0 too; and the all-linear adapter.
arm 90 45 medtune-unfused          --system medtune --base "$BASE" --no-heldout --set fused_projections=off
arm 90 45 medtune-unfused-dropout0 --system medtune --base "$BASE" --no-heldout --set fused_projections=off --lora-dropout 0
arm 90 50 medtune-all-r16-unfused  --system medtune --base "$BASE" --no-heldout --lora all-r16 --set fused_projections=off
# The frozen gate/up pair of each MLP as one GEMM too (session 9), at 16k and at 32k micro-batches.
arm 90 45 medtune-frozen-mlp     --system medtune --base "$BASE" --no-heldout --fuse-frozen-mlp
arm 90 45 medtune-32k-frozen-mlp --system medtune --base "$BASE" --no-heldout --fuse-frozen-mlp --set max_tokens_per_batch=32768 --accumulation 2
# Inductor's coordinate-descent tuning of its generated kernels (call 5: still compiling after 120 s).
arm 120 60 medtune-coord-descent --system medtune --base "$BASE" --no-heldout --inductor coordinate_descent_tuning=true
# Inductor: autotuned block sizes for its generated (pointwise) kernels; horizontal fusion of
# independent kernels into one launch (combo kernels). Session 9.
arm 120 60 medtune-pointwise-autotune --system medtune --base "$BASE" --no-heldout --inductor max_autotune_pointwise=true
arm 100 50 medtune-combo-kernels      --system medtune --base "$BASE" --no-heldout --inductor combo_kernels=true
# Memory and bigger bases: 8B shape, random weights made in GPU memory, 8,192-token micro-batches.
arm 100 45 medtune-8b-qlora-gc --system medtune --shape 8b --quantize nf4 --set gradient_checkpointing=true \
  --tokens-per-micro-batch 8192 --accumulation 1 --warmup 2 --steps 4 --no-heldout
arm 110 50 medtune-8b-lora-gc  --system medtune --shape 8b --set gradient_checkpointing=true --set compile=off \
  --tokens-per-micro-batch 8192 --accumulation 1 --warmup 2 --steps 4 --no-heldout
# The all-linear r=16 workload.
arm 90 50 medtune-all-r16  --system medtune --base "$BASE" --lora all-r16
arm 150 80 unsloth-all-r16 --system unsloth --base "$BASE" --lora all-r16
# More rows, as time allows.
arm 110 60 medtune-8b-lora     --system medtune --shape 8b --tokens-per-micro-batch 8192 --accumulation 1 --warmup 2 --steps 4 --no-heldout
arm 90 45 medtune-8b-qlora     --system medtune --shape 8b --quantize nf4 --tokens-per-micro-batch 8192 --accumulation 1 --warmup 2 --steps 4 --no-heldout
arm 90 45 medtune-32k          --system medtune --base "$BASE" --set max_tokens_per_batch=32768 --accumulation 2 --no-heldout
arm 90 50 medtune-3b-lora      --system medtune --shape 3b --warmup 2 --steps 4 --no-heldout
arm 90 50 medtune-3b-lora-varlen --system medtune --shape 3b --warmup 2 --steps 4 --no-heldout --set attention=varlen
arm 110 50 medtune-8b-lora-gc-varlen --system medtune --shape 8b --set gradient_checkpointing=true --set compile=off \
  --tokens-per-micro-batch 8192 --accumulation 1 --warmup 2 --steps 4 --no-heldout --set attention=varlen
arm 100 45 medtune-8b-qlora-gc-varlen --system medtune --shape 8b --quantize nf4 --set gradient_checkpointing=true \
  --tokens-per-micro-batch 8192 --accumulation 1 --warmup 2 --steps 4 --no-heldout --set attention=varlen
# Unsloth's own fast LoRA path needs dropout 0: both systems without dropout.
arm 150 80 unsloth-dropout0    --system unsloth --base "$BASE" --lora-dropout 0
arm 90 45 medtune-dropout0     --system medtune --base "$BASE" --lora-dropout 0
# Without dropout and with 32k-token micro-batches (the same tokens per step): what the speed options
# reach together, at 2x the activation memory.
arm 90 45 medtune-32k-dropout0 --system medtune --base "$BASE" --set max_tokens_per_batch=32768 --accumulation 2 --lora-dropout 0 --no-heldout
echo "=== [$SECONDS s] table"
"${PY[@]}" table "$R"
echo "total $SECONDS s"
} 2>&1 | grep --line-buffered -v -E "FutureWarning|UserWarning|warnings.warn|^\s*$" | tee "$OUT/log.txt"
