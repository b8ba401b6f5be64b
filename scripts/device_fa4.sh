#!/usr/bin/env bash
# Issue 28 on the GPU machine, in one call after `stage_fa4_carry.sh keep DIR` (the call before):
# install FlashAttention-4 from the carried wheels, run the FA4 GPU test, the attention kernels at the
# three head shapes, and the peer harness rows (defaults = FA4 vs -varlen = torch's kernel).
#   DIR=/root/h1 OUT=... LIMIT=330 ARMS="medtune medtune-varlen" bash scripts/device_fa4.sh
#   SKIP_GPU_TEST=1 KERNELS=flash,fa4,fa4-direct ... (a later call: the test has passed, the op is priced)
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=${DIR:-/root/h1}
OUT=${OUT:-runs/fa4}
mkdir -p "$OUT"
[ -d "$DIR/site/flash_attn" ] || bash scripts/stage_fa4_carry.sh install "$DIR" 2>&1 | grep -v -i "warning" | tail -3
export FA4_SITE=$DIR/site PEERS_SITE=$DIR/peers/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/src:$PWD:$FA4_SITE:$FA4_SITE/nvidia_cutlass_dsl/dsl_packages:$PEERS_SITE"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv,noheader
python3 -c "import time; t = time.time(); import flash_attn.cute; print(f'flash_attn.cute imported in {time.time() - t:.1f} s')"
# SKIP_GPU_TEST=1 / SKIP_KERNELS=1 leave a part out; KERNELS picks the attention kernels (fa4-direct: FA4
# without medtune's torch.library op, to price the op).
if [ -z "${SKIP_GPU_TEST:-}" ]; then
  echo "=== [$SECONDS s] GPU test"
  timeout 200 python3 -m pytest -q -s -p no:cacheprovider -rs tests/test_train_fa4_gpu.py 2>&1 | tee "$OUT/gpu_test.txt" | grep -v -i warn | tail -8
fi
if [ -z "${SKIP_KERNELS:-}" ]; then
  echo "=== [$SECONDS s] attention kernels"
  timeout 150 python3 benchmarks/attention_kernels.py --kernels "${KERNELS:-flash,fa4}" --shapes "${SHAPES:-1b,3b,8b}" --results-dir "$OUT" 2>&1 | tee "$OUT/attention_kernels.txt" | tail -12
fi
echo "=== [$SECONDS s] peers"
PEERS_COMMAND="DIR=$DIR OUT=\$OUT LIMIT=${LIMIT:-330} ARMS=\"${ARMS:-}\" bash scripts/device_fa4.sh" \
  OUT=$OUT LIMIT=${LIMIT:-330} bash benchmarks/train_vs_peers.sh > "$OUT/peers_log.txt" 2>&1
grep -E "^===|^---|real tok/s|FAILED|skip|Error|error" "$OUT/peers_log.txt" | tail -30
echo "total $SECONDS s"
