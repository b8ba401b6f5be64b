#!/usr/bin/env bash
# Set up the one pinned llama.cpp that medtune uses for conversion, quantization and inference.
#
#   bash scripts/setup-llama-cpp.sh          # with the project's virtualenv active
#
# What it does (idempotent; a second run takes seconds):
#   1. Gets the llama-cpp-python sdist (pinned version below). The sdist vendors the full llama.cpp
#      tree at the exact commit it builds, so converter, quantizer and runtime always agree.
#      Looked for in $MEDTUNE_LLAMA_SDIST, then the cache, then fetched with
#      `pip download --no-deps --no-binary :all: llama-cpp-python==VERSION` (package index only).
#   2. Extracts the converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py, conversion/,
#      gguf-py/) to $CACHE/llama.cpp-VERSION/ (medtune finds them there; LLAMA_CPP_DIR overrides).
#   3. Builds llama-cpp-python from that sdist into the active Python, once, and caches the wheel
#      under $CACHE/wheels/ keyed by version + CMake flags + compiler; later runs reinstall it.
#      Plain quantization goes through llama.cpp's C API (llama_model_quantize) in that library.
#   4. Builds four of llama.cpp's own tools from the same tree with the same flags, once, cached
#      under $CACHE/tools/llama.cpp-tools-VERSION-KEY/bin (KEY = the wheel's key):
#      llama-imatrix (importance matrix on calibration text), llama-quantize (quantizing with it),
#      llama-perplexity (perplexity and KL divergence against the 16-bit file) and llama-server
#      (what `medtune serve` runs for GGUF files: continuous batching, OpenAI API, /metrics). Only
#      these targets (and the static ggml/llama/common libraries they link) are compiled, in one
#      build tree, so ggml and llama are compiled once for all four. The server is built offline:
#      LLAMA_USE_PREBUILT_UI=OFF (its default downloads llama.cpp's web UI; medtune has its own
#      page), no curl, no OpenSSL. What the server adds, measured from the build's own timings
#      (ninja's log) on 2 cores shared with other jobs (load average 6-8): the four tools took
#      1497 s; the server's own sources (464 CPU-s) and the mtmd library only it links (482 CPU-s)
#      are 946 of the 2991 CPU-seconds compiled, about a third, so ~470 s of that wall time
#      (cpp-httplib is not counted: llama-common links it for the other tools too).
#      MEDTUNE_LLAMA_TOOLS=0 skips this step (export then needs LLAMA_CPP_TOOLS_DIR).
#
# Why these build flags (x86-64):
#   A default build uses GGML_NATIVE=ON (-march=native). On AMX-capable CPUs that turns on ggml's
#   AMX kernels, and GCC 12.2 miscompiles their tile set-up (ldtilecfg faults: segfaults on quantized
#   models, ~400x slowdown on F16; upstream llama.cpp issue #20824). ggml's runtime dispatch
#   (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS) is no cure here: it builds 13 CPU variants (far too
#   slow to build on small machines) and picks its "sapphirerapids" AMX variant on exactly the CPUs
#   that crash, and llama-cpp-python does not load dynamic backends by itself.
#   So: GGML_NATIVE=OFF and every ISA switch set explicitly from what THIS machine's CPU reports in
#   /proc/cpuinfo (SSE4.2, AVX, F16C, FMA, AVX2, BMI2, AVX-VNNI, AVX512F/VBMI/VNNI/BF16), and AMX
#   always OFF. The wheel is built where it runs, and the cache key includes the flag set, so a
#   cache shared with a machine whose CPU has fewer features never hands it an unusable wheel.
#   MEDTUNE_LLAMA_CPU=avx2 builds the x86-64-v3 set (AVX2/FMA/F16C/BMI2; runs on any x86-64 from
#   ~2013 on) and MEDTUNE_LLAMA_CPU=baseline builds with no SIMD beyond SSE2 (any x86-64), for
#   wheels meant to be copied to other machines. On non-x86 CPUs the upstream default (native) is
#   kept: the AMX problem is x86-only.
#   Your own CMAKE_ARGS (e.g. CMAKE_ARGS="-DGGML_CUDA=on") are appended after ours, so they win.
#
# Environment: MEDTUNE_CACHE_DIR (default ~/.cache/medtune), MEDTUNE_LLAMA_SDIST (a local sdist),
#   LLAMA_CPP_DIR (your llama.cpp checkout for the converter), CMAKE_ARGS, MEDTUNE_LLAMA_CPU,
#   MEDTUNE_LLAMA_REBUILD=1 (ignore the cached wheel and tools), MEDTUNE_LLAMA_TOOLS=0 (skip step 4),
#   PYTHON (default: python of the active venv).
set -euo pipefail

VERSION="0.3.36"   # keep in sync with LLAMA_CPP_PYTHON_VERSION in src/medtune/llamacpp.py
PY="${PYTHON:-python}"
CACHE="${MEDTUNE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/medtune}"
SDIST_DIR="$CACHE/sdist"
SDIST="$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz"
TREE="$CACHE/llama.cpp-$VERSION"
say() { printf '[setup-llama-cpp] %s\n' "$*"; }
die() { printf '[setup-llama-cpp] error: %s\n' "$*" >&2; exit 1; }

"$PY" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null \
  || die "needs Python >= 3.10 as '$PY' (activate the project's virtualenv or set PYTHON)"
[ -n "${VIRTUAL_ENV:-}" ] || say "note: no virtualenv active; installing into $("$PY" -c 'import sys; print(sys.prefix)')"
mkdir -p "$SDIST_DIR" "$CACHE/wheels"

# ---- 1. the sdist ---------------------------------------------------------------------------
if [ ! -s "$SDIST" ]; then
  if [ -n "${MEDTUNE_LLAMA_SDIST:-}" ] && [ -s "$MEDTUNE_LLAMA_SDIST" ]; then
    say "using sdist $MEDTUNE_LLAMA_SDIST"
    cp "$MEDTUNE_LLAMA_SDIST" "$SDIST.part" && mv "$SDIST.part" "$SDIST"
  else
    say "fetching llama-cpp-python==$VERSION sdist from the package index"
    tmp="$(mktemp -d "$SDIST_DIR/dl.XXXXXX")"
    "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp" \
      || die "could not download the llama-cpp-python==$VERSION sdist; set MEDTUNE_LLAMA_SDIST=/path/to/llama_cpp_python-$VERSION.tar.gz"
    mv "$tmp"/llama_cpp_python-"$VERSION".tar.gz "$SDIST" && rm -rf "$tmp"
  fi
fi

# ---- 2. the converter tree ------------------------------------------------------------------
# The marker names what was extracted: a tree from an older script (no LoRA converter) is redone.
TREE_LAYOUT="llama-cpp-python $VERSION: convert_hf_to_gguf.py convert_lora_to_gguf.py conversion gguf-py"
if [ "$(cat "$TREE/.complete" 2>/dev/null)" != "$TREE_LAYOUT" ]; then
  say "extracting the llama.cpp converters to $TREE"
  tmp="$(mktemp -d "$CACHE/tree.XXXXXX")"
  top="llama_cpp_python-$VERSION/vendor/llama.cpp"
  tar -xzf "$SDIST" -C "$tmp" \
    "$top/convert_hf_to_gguf.py" "$top/convert_lora_to_gguf.py" "$top/conversion" "$top/gguf-py" \
    "$top/requirements" "$top/requirements.txt" "$top/LICENSE"
  rm -rf "$TREE"
  mv "$tmp/$top" "$TREE" && rm -rf "$tmp"
  echo "$TREE_LAYOUT" > "$TREE/.complete"
fi
# The converters put their own gguf-py first on sys.path; their other imports must be in this Python.
missing="$("$PY" - <<'EOF'
import importlib.util
need = {"numpy": "numpy", "torch": "torch", "sentencepiece": "sentencepiece",
        "safetensors": "safetensors", "transformers": "transformers", "yaml": "pyyaml",
        "tqdm": "tqdm", "jinja2": "jinja2"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
EOF
)"
if [ -n "$missing" ]; then
  say "installing the converter's Python needs: $missing"
  "$PY" -m pip install --quiet $missing
fi

# ---- 3. the runtime -------------------------------------------------------------------------
arch="$(uname -m)"
ours=""
if [ "$arch" = "x86_64" ] || [ "$arch" = "amd64" ]; then
  flags=" $( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true) | cut -d: -f2) "  # none (e.g. macOS): baseline
  has() { case "$flags" in *" $1 "*) echo ON;; *) echo OFF;; esac; }
  case "${MEDTUNE_LLAMA_CPU:-host}" in
    host)
      isa="-DGGML_SSE42=$(has sse4_2) -DGGML_AVX=$(has avx) -DGGML_F16C=$(has f16c) -DGGML_FMA=$(has fma)"
      isa="$isa -DGGML_AVX2=$(has avx2) -DGGML_BMI2=$(has bmi2) -DGGML_AVX_VNNI=$(has avx_vnni)"
      isa="$isa -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VBMI=$(has avx512vbmi)"
      isa="$isa -DGGML_AVX512_VNNI=$(has avx512_vnni) -DGGML_AVX512_BF16=$(has avx512_bf16)";;
    avx2)
      isa="-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_F16C=ON -DGGML_FMA=ON -DGGML_AVX2=ON -DGGML_BMI2=ON"
      isa="$isa -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF";;
    baseline)
      isa="-DGGML_SSE42=OFF -DGGML_AVX=OFF -DGGML_F16C=OFF -DGGML_FMA=OFF -DGGML_AVX2=OFF -DGGML_BMI2=OFF"
      isa="$isa -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF";;
    *) die "MEDTUNE_LLAMA_CPU must be host, avx2 or baseline (got '${MEDTUNE_LLAMA_CPU}')";;
  esac
  ours="-DGGML_NATIVE=OFF $isa -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
fi
# Multimodal (mtmd) is not used by medtune; skipping it saves a third of the build.
ours="$ours -DLLAVA_BUILD=OFF -DCMAKE_BUILD_TYPE=Release"
cmake_args="$(echo "$ours ${CMAKE_ARGS:-}" | tr -s ' ' | sed 's/^ //; s/ $//')"
cc_id="$( (${CC:-cc} --version 2>/dev/null || true) | head -1)"
key="$(printf '%s|%s|%s|%s' "$VERSION" "$cmake_args" "$cc_id" "$arch" | sha256sum | cut -c1-16)"
wheel_dir="$CACHE/wheels/llama-cpp-python-$VERSION-$key"

installed="$("$PY" - <<'EOF' 2>/dev/null || true
import importlib.metadata, json, pathlib
try:
    dist = importlib.metadata.distribution("llama_cpp_python")
except importlib.metadata.PackageNotFoundError:
    raise SystemExit
stamp = pathlib.Path(dist.locate_file("llama_cpp")) / "medtune_build.json"
print(json.loads(stamp.read_text())["key"] if stamp.exists() else "unknown-" + dist.version)
EOF
)"
if [ "$installed" = "$key" ] && [ -z "${MEDTUNE_LLAMA_REBUILD:-}" ]; then
  say "llama-cpp-python $VERSION already installed with these flags (key $key)"
else
  wheel="$(ls "$wheel_dir"/llama_cpp_python-*.whl 2>/dev/null | head -1 || true)"
  if [ -z "$wheel" ] || [ -n "${MEDTUNE_LLAMA_REBUILD:-}" ]; then
    say "building llama-cpp-python $VERSION (one time, several minutes on 2 cores)"
    say "CMAKE_ARGS: $cmake_args"
    tmp="$(mktemp -d "$CACHE/wheels/build.XXXXXX")"
    start=$(date +%s)
    CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
      "$PY" -m pip wheel --no-deps --no-cache-dir "$SDIST" -w "$tmp" > "$tmp/build.log" 2>&1 \
      || { tail -40 "$tmp/build.log" >&2; die "build failed; full log: $tmp/build.log"; }
    rm -rf "$wheel_dir"; mkdir -p "$wheel_dir"
    mv "$tmp"/llama_cpp_python-*.whl "$wheel_dir"/ && mv "$tmp/build.log" "$wheel_dir"/ && rm -rf "$tmp"
    printf '{"version": "%s", "key": "%s", "cmake_args": "%s", "compiler": "%s", "build_seconds": %s}\n' \
      "$VERSION" "$key" "$cmake_args" "$cc_id" "$(( $(date +%s) - start ))" > "$wheel_dir/build.json"
    wheel="$(ls "$wheel_dir"/llama_cpp_python-*.whl | head -1)"
    say "built in $(( $(date +%s) - start )) s; cached $wheel"
  else
    say "installing cached wheel $wheel"
  fi
  "$PY" -m pip install --quiet --force-reinstall --no-deps "$wheel"
  "$PY" -m pip install --quiet "typing-extensions>=4.5.0" "numpy>=1.20.0" "diskcache>=5.6.1" "jinja2>=2.11.3"
  # Record the flags inside the installed package so medtune can report (and check) them.
  "$PY" - "$wheel_dir/build.json" <<'EOF'
import importlib.metadata, pathlib, shutil, sys
dist = importlib.metadata.distribution("llama_cpp_python")
shutil.copy(sys.argv[1], pathlib.Path(dist.locate_file("llama_cpp")) / "medtune_build.json")
EOF
fi

# ---- 4. llama.cpp's tools: llama-imatrix, llama-quantize, llama-perplexity, llama-server ------
# Same tree, same CMake flags as the wheel (so the tools and the runtime agree on kernels and
# numerics), static libraries so the binaries stand alone. Only these four targets are built.
TOOLS="llama-imatrix llama-quantize llama-perplexity llama-server"
TOOLS_RECIPE="tools-v2: $TOOLS; -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF"
tools_dir="$CACHE/tools/llama.cpp-tools-$VERSION-$key"
if [ "${MEDTUNE_LLAMA_TOOLS:-1}" = "0" ]; then
  say "skipping llama.cpp's tools (MEDTUNE_LLAMA_TOOLS=0); export needs LLAMA_CPP_TOOLS_DIR then"
elif [ "$(cat "$tools_dir/.complete" 2>/dev/null)" = "$TOOLS_RECIPE" ] && [ -z "${MEDTUNE_LLAMA_REBUILD:-}" ]; then
  say "llama.cpp tools already built: $tools_dir/bin"
else
  command -v cmake >/dev/null 2>&1 || die "cmake is needed to build llama.cpp's tools (apt-get install cmake)"
  say "building llama.cpp's $TOOLS (one time, a few minutes on 2 cores)"
  mkdir -p "$CACHE/tools"
  tmp="$(mktemp -d "$CACHE/tools/build.XXXXXX")"
  start=$(date +%s)
  tar -xzf "$SDIST" -C "$tmp" "llama_cpp_python-$VERSION/vendor/llama.cpp" --exclude='*/.git' \
    --exclude="llama_cpp_python-$VERSION/vendor/llama.cpp/models" --exclude="llama_cpp_python-$VERSION/vendor/llama.cpp/docs"
  src="$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp"
  generator=()
  command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
  # shellcheck disable=SC2086  # $cmake_args is a list of flags
  { cmake -S "$src" -B "$tmp/build" "${generator[@]}" $cmake_args -DBUILD_SHARED_LIBS=OFF \
      -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    && cmake --build "$tmp/build" --config Release -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" --target $TOOLS; } \
    > "$tmp/build.log" 2>&1 || { tail -40 "$tmp/build.log" >&2; die "building llama.cpp's tools failed; full log: $tmp/build.log"; }
  rm -rf "$tools_dir"; mkdir -p "$tools_dir/bin"
  for tool in $TOOLS; do cp "$tmp/build/bin/$tool" "$tools_dir/bin/"; done
  mv "$tmp/build.log" "$tools_dir/" && rm -rf "$tmp"
  printf '{"version": "%s", "key": "%s", "cmake_args": "%s", "compiler": "%s", "tools": "%s", "build_seconds": %s}\n' \
    "$VERSION" "$key" "$cmake_args" "$cc_id" "$TOOLS" "$(( $(date +%s) - start ))" > "$tools_dir/build.json"
  echo "$TOOLS_RECIPE" > "$tools_dir/.complete"
  say "built llama.cpp's tools in $(( $(date +%s) - start )) s: $tools_dir/bin"
fi
if [ "${MEDTUNE_LLAMA_TOOLS:-1}" != "0" ]; then
  "$tools_dir/bin/llama-quantize" --help > /dev/null 2>&1 || [ $? -eq 1 ] \
    || die "$tools_dir/bin/llama-quantize does not run; rebuild with MEDTUNE_LLAMA_REBUILD=1"
  "$tools_dir/bin/llama-server" --version > /dev/null 2>&1 \
    || die "$tools_dir/bin/llama-server does not run; rebuild with MEDTUNE_LLAMA_REBUILD=1"
fi

# ---- smoke check: the library loads and has no AMX kernels -----------------------------------
"$PY" - <<'EOF' || die "the installed llama.cpp runtime does not load (see above)"
import llama_cpp
info = llama_cpp.llama_print_system_info().decode()
if "AMX_INT8 = 1" in info:
    raise SystemExit("runtime was built with AMX kernels, which GCC 12 miscompiles; rebuild with MEDTUNE_LLAMA_REBUILD=1")
on = [f.split("=")[0].split(":")[-1].strip() for f in info.split("|") if f.strip().endswith("= 1")]
print(f"[setup-llama-cpp] runtime ok: llama-cpp-python {llama_cpp.__version__}; CPU features in use: {' '.join(on) or 'none'}; AMX: off")
EOF
say "converters: $TREE/convert_hf_to_gguf.py, $TREE/convert_lora_to_gguf.py"
