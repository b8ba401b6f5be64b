#!/usr/bin/env bash
# What building llama-server adds to `scripts/setup-llama-cpp.sh` (issue 27): in one build tree, with the
# flags setup-llama-cpp.sh used for the cached tools (read from their build.json), time the three tools
# medtune needed before (llama-imatrix, llama-quantize, llama-perplexity: ggml and llama compiled once),
# then llama-server on top (only what it adds: the server and the libmtmd it links). Prints a table and
# appends a JSON line to benchmarks/results/llama_tools_build_time.jsonl.
#   bash benchmarks/llama_tools_build_time.sh        # ~25 min on 2 cores; run it on an idle machine
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
CACHE="${MEDTUNE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/medtune}"
SDIST="$CACHE/sdist/llama_cpp_python-$VERSION.tar.gz"
built=$(ls "$CACHE"/tools/llama.cpp-tools-$VERSION-*/build.json | head -1)
cmake_args=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['cmake_args'])" "$built")
tmp=$(mktemp -d /tmp/llama-tools-time.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$SDIST" -C "$tmp" "llama_cpp_python-$VERSION/vendor/llama.cpp" --exclude='*/.git' \
  --exclude="llama_cpp_python-$VERSION/vendor/llama.cpp/models" --exclude="llama_cpp_python-$VERSION/vendor/llama.cpp/docs"
src="$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp"
load_before=$(cut -d' ' -f1 /proc/loadavg)
# shellcheck disable=SC2086  # $cmake_args is a list of flags
cmake -S "$src" -B "$tmp/build" -G Ninja $cmake_args -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF > "$tmp/configure.log"
jobs=$(nproc)
start=$(date +%s)
cmake --build "$tmp/build" -j "$jobs" --target llama-imatrix llama-quantize llama-perplexity > "$tmp/tools.log"
tools_s=$(( $(date +%s) - start ))
start=$(date +%s)
cmake --build "$tmp/build" -j "$jobs" --target llama-server > "$tmp/server.log"
server_s=$(( $(date +%s) - start ))
steps=$(grep -c '^\[' "$tmp/server.log" || true)
load_after=$(cut -d' ' -f1 /proc/loadavg)
printf '%-40s %8s\n' "build (same tree, -j $jobs)" "seconds" "three tools (before issue 27)" "$tools_s" \
  "llama-server on top (added)" "$server_s ($steps ninja steps)"
line=$(printf '{"date": "%s", "cpu": "%s", "cores": %s, "jobs": %s, "cmake_args": "%s", "tools_seconds": %s, "server_added_seconds": %s, "server_ninja_steps": %s, "loadavg_before": %s, "loadavg_after": %s, "command": "bash benchmarks/llama_tools_build_time.sh"}' \
  "$(date -u +%FT%TZ)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" "$(nproc)" "$jobs" "$cmake_args" "$tools_s" "$server_s" "$steps" "$load_before" "$load_after")
echo "$line" >> benchmarks/results/llama_tools_build_time.jsonl
echo "$line"
