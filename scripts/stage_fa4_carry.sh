#!/usr/bin/env bash
# FlashAttention-4 (flash-attn-4 4.0.0b40, CuTe DSL) for the GPU machine, which has no network and
# takes at most 64 MiB per call with the repository, while nvidia-cutlass-dsl-libs-cu13 alone is a
# 92 MB wheel. So two git-ignored folders for two back-to-back calls (the machine stays warm ~30 s):
#   .carry-fa4a/  the small wheels + the first 50,000,000 bytes of the cu13 wheel
#   .carry-fa4b/  the rest of the cu13 wheel, extras for the image's gaps (pytest, rich, einops) and
#                 the peers site of scripts/stage_peers_carry.sh as one tgz (Liger, pydantic, datasets, Unsloth)
# Here (repo root, venv active):  bash scripts/stage_fa4_carry.sh
# Device, call 1 (carry .carry-fa4a):  bash scripts/stage_fa4_carry.sh keep DIR      # copies it to DIR
# Device, call 2 (carry .carry-fa4b):  bash scripts/stage_fa4_carry.sh install DIR   # DIR/site (FA4), DIR/peers/site
# `pip install --target` skips nvidia-cutlass-dsl's .pth, so DIR/site/nvidia_cutlass_dsl/dsl_packages must
# go on PYTHONPATH by hand (benchmarks/train_vs_peers.sh does that for FA4_SITE=DIR/site).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
CU13=nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
FIRST=50000000
case "${1:-stage}" in
  stage)
    target=(--python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64
            --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform any)
    rm -rf .carry-fa4a .carry-fa4b /tmp/fa4-wheels && mkdir -p .carry-fa4a .carry-fa4b /tmp/fa4-wheels
    "$PY" -m pip download -q --pre --no-deps "${target[@]}" -d /tmp/fa4-wheels "flash-attn-4==4.0.0b40" \
      nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1 \
      nvidia-cutlass-dsl-libs-cu13==4.8.1 quack-kernels==0.6.5 apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5
    "$PY" -m pip download -q --no-deps "${target[@]}" -d .carry-fa4b/extra pytest==8.4.2 pluggy==1.6.0 iniconfig==2.1.0 \
      einops==0.8.1 rich==14.2.0 markdown-it-py==4.0.0 mdurl==0.1.2 pygments==2.19.2
    find /tmp/fa4-wheels -name '*.whl' ! -name "$CU13" -exec mv {} .carry-fa4a/ \;
    head -c "$FIRST" "/tmp/fa4-wheels/$CU13" > .carry-fa4a/cu13.part1
    tail -c +"$((FIRST + 1))" "/tmp/fa4-wheels/$CU13" > .carry-fa4b/cu13.part2
    sha256sum "/tmp/fa4-wheels/$CU13" | cut -d' ' -f1 > .carry-fa4b/cu13.sha256
    [ -d .carry-peers/site ] || bash scripts/stage_peers_carry.sh
    tar czf .carry-fa4b/peers-site.tgz -C .carry-peers site VERSIONS.txt
    du -sh .carry-fa4a .carry-fa4b;;
  keep)
    mkdir -p "$2" && cp -r .carry-fa4a/. "$2/";;
  install)
    DIR=$2
    cat "$DIR/cu13.part1" .carry-fa4b/cu13.part2 > "$DIR/$CU13"
    echo "$(cat .carry-fa4b/cu13.sha256)  $DIR/$CU13" | sha256sum -c --quiet
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$DIR/site" "$DIR"/*.whl
    for extra in .carry-fa4b/extra/*.whl; do  # only what the image lacks
      module=$(basename "$extra" | cut -d- -f1 | tr 'A-Z' 'a-z' | sed 's/markdown_it_py/markdown_it/')
      python3 -c "import $module" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --target "$DIR/site" "$extra"
    done
    mkdir -p "$DIR/peers" && tar xzf .carry-fa4b/peers-site.tgz -C "$DIR/peers"
    echo "FA4 site: $DIR/site; peers site: $DIR/peers/site";;
  *) echo "usage: $0 [stage | keep DIR | install DIR]" >&2; exit 2;;
esac
