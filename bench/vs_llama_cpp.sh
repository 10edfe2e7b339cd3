#!/usr/bin/env bash
# vs_llama_cpp.sh: kvbridge's CPU prefill and decode against llama.cpp's llama-bench on the same
# GGUF files, interleaved round by round in one run, so that both see the same machine load;
# prints every round and, per dtype, the median of the per-round ratios (kvbridge / llama.cpp).
#
#   bench/vs_llama_cpp.sh LLAMA_BENCH [ROUNDS] [DTYPES] [MODEL.gguf ...]
#
# DTYPES (default "f32 f16 q8_0") are stories110M-shaped `kvbridge synth` models: f32, f16, bf16,
# q8_0, q4_0, q4_1, q5_0, q5_1 written by kvbridge itself, and q4_k_m / q5_k_m / q6_k made from the
# f16 one by llama.cpp's llama-quantize (found beside LLAMA_BENCH, or $LLAMA_QUANTIZE). Any further
# arguments are GGUF files (e.g. a real model: SmolLM2-135M-Instruct.Q4_1.gguf) measured as they are.
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

lb=${1:?usage: vs_llama_cpp.sh LLAMA_BENCH [ROUNDS] [DTYPES] [MODEL.gguf ...]}
rounds=${2:-5}
dtypes=${3:-"f32 f16 q8_0"}
shift $(( $# < 3 ? $# : 3 ))
extra_models=("$@")
quantize=${LLAMA_QUANTIZE:-$(dirname "$lb")/llama-quantize}
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
files=()
for d in $dtypes; do
  f="$dir/s110m-$d.gguf"
  case $d in
    q4_k_m|q5_k_m|q6_k)
      [[ -f $dir/s110m-f16.gguf ]] ||
        "$build/client/kvbridge" synth --shape stories110M --dtype f16 --out "$dir/s110m-f16.gguf" >/dev/null 2>&1
      "$quantize" "$dir/s110m-f16.gguf" "$f" "${d^^}" 2 >/dev/null 2>&1 ||
        { echo "llama-quantize failed for $d (set LLAMA_QUANTIZE)" >&2; exit 1; } ;;
    *) "$build/client/kvbridge" synth --shape stories110M --dtype "$d" --out "$f" >/dev/null 2>&1 ;;
  esac
  files+=("$f")
done
files+=("${extra_models[@]}")
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for f in "${files[@]}"; do
  d=$(basename "$f" .gguf)
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
