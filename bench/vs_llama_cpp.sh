#!/usr/bin/env bash
# vs_llama_cpp.sh: kvbridge's CPU prefill and decode against llama.cpp's llama-bench on the same
# GGUF files, interleaved round by round in one run, so that both see the same machine load;
# prints every round and, per dtype, the median of the per-round ratios (kvbridge / llama.cpp).
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
# on the values). Both sides: 2 threads; prefill = a 512-token prompt in one batch (logits of the
# last token); decode = 64 tokens one at a time (kvbridge after an 8-token context, llama-bench's
# tg64 from an empty one: both read every weight once per token).
# Environment: KVBRIDGE_BUILD (default build), THREADS (2), PROMPT (512), GEN (64).
set -euo pipefail

lb=${1:?usage: vs_llama_cpp.sh LLAMA_BENCH [ROUNDS] [DTYPES]}
rounds=${2:-5}
dtypes=${3:-"f32 f16 q8_0"}
build=${KVBRIDGE_BUILD:-build}
threads=${THREADS:-2}
prompt=${PROMPT:-512}
gen=${GEN:-64}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

ours() {  # "prefill decode" tok/s of kvbridge's engine on $1
  "$build/bench/engine_bench" --model "$1" --threads "$threads" --prefill "$prompt" --decode "$gen" |
    awk -F'|' -v m="$1" 'index($2, m) { gsub(/ /, "", $4); gsub(/ /, "", $5); printf "%.0f %.1f\n", $4, $5 }'
}
theirs() {  # "prefill decode" tok/s of llama-bench on $1 (one repetition after its warm-up)
  "$lb" -m "$1" -p "$prompt" -n "$gen" -t "$threads" -r 1 -o json 2>/dev/null | python3 -c '
import json, sys
rows = json.load(sys.stdin)
pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0)
tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0)
print(f"{pp:.0f} {tg:.1f}")'
}

echo "kvbridge engine_bench vs llama.cpp llama-bench: stories110M, $threads threads, prefill $prompt tokens, decode $gen"
for d in $dtypes; do
  "$build/client/kvbridge" synth --shape stories110M --dtype "$d" --out "$dir/s110m-$d.gguf" >/dev/null 2>&1
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for d in $dtypes; do
  f="$dir/s110m-$d.gguf"
  pp_ratios=() tg_ratios=()
  for r in $(seq 1 "$rounds"); do
    if (( r % 2 )); then a=$(ours "$f"); b=$(theirs "$f"); else b=$(theirs "$f"); a=$(ours "$f"); fi
    read -r a_pp a_tg <<<"$a"
    read -r b_pp b_tg <<<"$b"
    pp_ratios+=("$(python3 -c "print(f'{$a_pp / $b_pp:.3f}')")")
    tg_ratios+=("$(python3 -c "print(f'{$a_tg / $b_tg:.3f}')")")
    echo "$d round $r: prefill kvbridge $a_pp / llama.cpp $b_pp tok/s = ${pp_ratios[-1]};" \
      "decode kvbridge $a_tg / llama.cpp $b_tg tok/s = ${tg_ratios[-1]}"
  done
  echo "$d: median ratio kvbridge / llama.cpp over $rounds rounds: prefill $(printf '%s\n' "${pp_ratios[@]}" | median)," \
    "decode $(printf '%s\n' "${tg_ratios[@]}" | median)"
done
