#!/usr/bin/env bash
# vs_llama_cpp.sh: kvbridge's CPU prefill against llama.cpp's llama-bench on the same GGUF files,
# interleaved round by round in one run, so that both see the same machine load; prints every
# round and, per dtype, the median of the per-round ratios (kvbridge / llama.cpp).
#
#   bench/vs_llama_cpp.sh LLAMA_BENCH [ROUNDS] [DTYPES]
#
# LLAMA_BENCH is a llama-bench binary. llama.cpp is not a kvbridge dependency; one way to get it on
# a Debian 12 machine with only Debian packages and PyPI (what docs/BENCHMARKS.md used):
#   pip download llama-cpp-python --no-deps --no-binary :all: -d /tmp/llsrc
#   tar xzf /tmp/llsrc/llama_cpp_python-*.tar.gz -C /tmp && cd /tmp/llama_cpp_python-*/vendor/llama.cpp
#   cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
#   cmake --build build --target llama-bench        # → build/bin/llama-bench
# The models are `kvbridge synth --shape stories110M` GGUFs (random weights; speed does not depend
# on the values). Both sides: 2 threads, a 512-token prompt in one batch, logits of the last token.
# Environment: KVBRIDGE_BUILD (default build), THREADS (2), PROMPT (512).
set -euo pipefail

lb=${1:?usage: vs_llama_cpp.sh LLAMA_BENCH [ROUNDS] [DTYPES]}
rounds=${2:-5}
dtypes=${3:-"f32 f16 q8_0"}
build=${KVBRIDGE_BUILD:-build}
threads=${THREADS:-2}
prompt=${PROMPT:-512}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

ours() {  # prefill tok/s of kvbridge's engine on $1
  "$build/bench/engine_bench" --model "$1" --threads "$threads" --prefill "$prompt" --decode 1 |
    awk -F'|' -v m="$1" 'index($2, m) { gsub(/ /, "", $4); print $4 }'
}
theirs() {  # llama-bench's pp tok/s on $1 (one repetition after its warm-up)
  "$lb" -m "$1" -p "$prompt" -n 0 -t "$threads" -r 1 -o json 2>/dev/null |
    python3 -c 'import json, sys; print(round(json.load(sys.stdin)[0]["avg_ts"]))'
}

echo "kvbridge engine_bench vs llama.cpp llama-bench: stories110M, prefill $prompt tokens, $threads threads"
for d in $dtypes; do
  "$build/client/kvbridge" synth --shape stories110M --dtype "$d" --out "$dir/s110m-$d.gguf" >/dev/null
done
for d in $dtypes; do
  f="$dir/s110m-$d.gguf"
  ratios=()
  for r in $(seq 1 "$rounds"); do
    if (( r % 2 )); then a=$(ours "$f"); b=$(theirs "$f"); else b=$(theirs "$f"); a=$(ours "$f"); fi
    ratio=$(python3 -c "print(f'{$a / $b:.3f}')")
    ratios+=("$ratio")
    echo "$d round $r: kvbridge $a tok/s, llama.cpp $b tok/s, ratio $ratio"
  done
  median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
  echo "$d: median ratio kvbridge / llama.cpp = $median over $rounds rounds"
done
