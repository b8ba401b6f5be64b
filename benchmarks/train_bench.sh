#!/usr/bin/env bash
# The training benchmark on a GPU machine, in one go (fits a 10-minute slot):
#   seed recipe (1 GPU) -> medtune (1 GPU, with a one-step profile) -> medtune (2 GPUs via torchrun,
#   when the machine has them) -> the call's run in $OUT/train_bench.json.
#   OUT=/path/for/results bash benchmarks/train_bench.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
R=$OUT/train_bench.jsonl
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
LIMIT=${LIMIT:-580}
left() { echo $((LIMIT - SECONDS)); }
run() {  # run SECONDS CMD...: with a timeout capped by what is left of the slot
  local t=$1; shift
  local l; l=$(left); [ "$l" -lt 40 ] && { echo "skip (time): $*"; return 1; }
  [ "$t" -gt "$l" ] && t=$l
  echo "=== [$SECONDS s] $* (timeout $t s)"
  timeout "$t" "$@"; local rc=$?; [ $rc -ne 0 ] && echo "!!! rc=$rc: $*"; return $rc
}
nvidia-smi --query-gpu=index,name,memory.total,clocks.max.sm,power.limit --format=csv
python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'gpus', torch.cuda.device_count())"
NGPU=$(python3 -c "import torch; print(torch.cuda.device_count())")
# One GPU means one visible GPU: otherwise transformers' Trainer wraps the seed recipe in DataParallel.
run 120 env CUDA_VISIBLE_DEVICES=0 python3 benchmarks/train_bench.py --recipe seed --out "$R"
run 200 env CUDA_VISIBLE_DEVICES=0 python3 benchmarks/train_bench.py --recipe medtune --profile --out "$R"
if [ "$NGPU" -ge 2 ]; then
  run 240 python3 -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/train_bench.py --recipe medtune --out "$R"
fi
for extra in ${EXTRA_RUNS:-}; do run 200 env CUDA_VISIBLE_DEVICES=0 python3 benchmarks/train_bench.py --recipe medtune --train-set "$extra" --out "$R"; done
python3 benchmarks/train_bench.py --summarize "$R" --results-dir "$OUT"   # back home: --summarize FILE appends to results/train_bench.json
echo "total $SECONDS s"
