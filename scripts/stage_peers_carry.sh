#!/usr/bin/env bash
# Stage what benchmarks/train_vs_peers.sh needs on the lent H200 (no network; at most 64 MiB per call,
# with the repository): one git-ignored folder, .carry-peers/site, a trimmed `pip install --target`
# site of the packages the device image lacks, for its Python 3.12 (torch 2.11, transformers 5.17,
# peft, accelerate 1.15 come from the image):
#   unsloth + unsloth_zoo (their training code; the Studio web app and CLI are removed),
#   bitsandbytes (only its CUDA 13.0 and CPU libraries kept: the image's torch is cu130),
#   trl 1.15 (Unsloth 2026.10.9 accepts trl <= 1.15 and transformers <= 5.17, the image's),
#   datasets 5.2 (Unsloth's metadata says < 5, but its code only rejects 4.4-4.5; 5.2 is the version
#   that already ran on this image with its fsspec, 2026-12-02, while 4.8 wants fsspec <= 2026.2),
#   liger-kernel, cut-cross-entropy, tyro (+ docstring-parser, typeguard), msgspec,
#   pydantic (medtune's config), dill, multiprocess.
# Not carried: xformers, flash-attn, torchao, diffusers, hf_transfer (optional in Unsloth; it uses
# torch's SDPA / varlen flash attention without them).
# Run from the repository root of a checkout, with the project's virtualenv active (any Python
# with pip); prints the folder's size. Usage: bash scripts/stage_peers_carry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.carry-peers
PY="${PYTHON:-python}"
rm -rf "$DEST" && mkdir -p "$DEST/wheels"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
target=(--python-version 3.12 --implementation cp --only-binary=:all: "${platforms[@]}")
"$PY" -m pip download -q --no-deps "${target[@]}" -d "$DEST/wheels" \
  unsloth==2026.10.9 unsloth_zoo==2026.10.9 bitsandbytes==0.50.2 trl==1.15.0 datasets==5.2.0 \
  liger-kernel==0.8.5 cut-cross-entropy==25.1.1 tyro==1.0.17 docstring-parser==0.17.0 typeguard==4.4.4 \
  msgspec==0.22.0 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 \
  dill==0.4.1 multiprocess==0.70.19
"$PY" -m pip install -q --no-deps --no-compile "${target[@]}" --target "$DEST/site" "$DEST"/wheels/*.whl
rm -rf "$DEST/wheels" "$DEST/site/studio" "$DEST/site/unsloth_cli" "$DEST/site/bin"
find "$DEST/site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*_cuda130.so' ! -name '*_cpu.so' -delete
find "$DEST/site" -name '__pycache__' -prune -exec rm -rf {} +
"$PY" - "$DEST/site" > "$DEST/VERSIONS.txt" <<'EOF'
import pathlib, sys
for meta in sorted(pathlib.Path(sys.argv[1]).glob("*.dist-info")):
    print(meta.name.removesuffix(".dist-info"))
EOF
cat "$DEST/VERSIONS.txt"
du -sh "$DEST"
