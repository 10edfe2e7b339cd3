#!/usr/bin/env bash
# Issue #6: cache passing and fusion work unchanged between a Qwen3-shaped and a Qwen2.5-shaped
# synthetic model (byte-level BPE tokenizers, chat templates, HF and GGUF files).
#
#   tests/agent/families_e2e.sh BUILD_DIR
#
# 1. Same model: agent A (Qwen3-shaped GGUF) prefills a chat conversation; agent B (the same
#    model from its Hugging Face directory) continues from A's cache and must print the continuation
#    B prints when it reads the conversation itself.
# 2. Different models: agent S (Qwen2.5-shaped, HF directory) shares its cache of a context; agent R
#    (Qwen3-shaped, GGUF) fuses it through a synthetic fuser embedded in R, and through a
#    kvbridge-fuser process; both runs must fuse slices and print the same text.
set -euo pipefail

build=${1:?usage: families_e2e.sh BUILD_DIR}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cli=$build/client/kvbridge
agent_bin=$build/agent/kvbridge-agent
fuser_bin=$build/fuser/service/kvbridge-fuser

work=$(mktemp -d)
pids=()
source "$root/deploy/lib.sh"
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }

small="n_layer=2,n_embd=128,n_head=4,n_head_kv=2,head_dim=32,n_ff=256,n_vocab=2048,n_ctx=512"
"$cli" synth --shape "qwen3-0.6b:$small" --format gguf --dtype f32 --seed 3 --out "$work/qwen3.gguf" >/dev/null
"$cli" synth --shape "qwen3-0.6b:$small" --format hf --dtype f32 --seed 3 --out "$work/qwen3-hf" >/dev/null
"$cli" synth --shape "qwen2.5-0.5b:${small/n_layer=2/n_layer=3}" --format hf --dtype bf16 --seed 5 \
  --out "$work/qwen25-hf" >/dev/null

# ---- 1. same model, two loaders: the cache passes and the continuation equals the text path ----
start A "$agent_bin" --model "$work/qwen3.gguf" --name A
start B "$agent_bin" --model "$work/qwen3-hf" --name B
cat >"$work/chat.json" <<'JSON'
[{"role": "system", "content": "You analyze build logs."},
 {"role": "user", "content": "ERROR: linker failed: undefined reference to `zstd_compress' (3 times). Why?"}]
JSON
n=12
id=$("$cli" prefill --agent "$A" --messages "$work/chat.json" 2>/dev/null)
[[ -n $id ]] || fail "A did not prefill the conversation"
# B continues right after the assistant header from A's cache, then reads the conversation itself.
"$cli" pass --from "$A" --cache "$id" --to "$B" -n $n 2>"$work/pass.err" >"$work/pass.out" ||
  { cat "$work/pass.err" >&2; fail "pass from A to B"; }
ctx=$(field context_tokens "$work/pass.err")
[[ ${ctx:-0} -gt 20 ]] || fail "B took ${ctx:-no} context tokens from A's cache"
[[ $(field generated_tokens "$work/pass.err") == "$n" ]] || fail "B generated $(field generated_tokens "$work/pass.err") of $n tokens"
"$cli" generate --agent "$B" --messages "$work/chat.json" -n $n 2>/dev/null >"$work/text.out"
cmp -s "$work/pass.out" "$work/text.out" ||
  fail "continuations differ: cache '$(cat "$work/pass.out")' vs text '$(cat "$work/text.out")'"
echo "same model: B continued from A's cache of $ctx tokens exactly as from the text ($n tokens)"

# ---- 2. Qwen2.5-shaped sharer → Qwen3-shaped receiver through a fuser ----
"$cli" fuser synth --out "$work/fuser" --sharer "$work/qwen25-hf" --receiver "$work/qwen3.gguf" \
  --hidden 64 --intermediate 64 --gates alternate >/dev/null
start S "$agent_bin" --model "$work/qwen25-hf" --name S
start R "$agent_bin" --model "$work/qwen3.gguf" --name R --fuser "$work/fuser"
start F "$fuser_bin" --weights "$work/fuser"
printf '%s' "Build 4711 failed: the linker could not find zstd. Add libzstd-dev to the image and retry." \
  >"$work/context.txt"
"$cli" fuse --sharer "$S" --receiver "$R" --embedded --context-file "$work/context.txt" -p " Fix:" -n $n \
  2>"$work/fuse1.err" >"$work/fuse1.out" || { cat "$work/fuse1.err" >&2; fail "embedded fuse"; }
"$cli" fuse --sharer "$S" --receiver "$R" --fuser "$F" --context-file "$work/context.txt" -p " Fix:" -n $n \
  2>"$work/fuse2.err" >"$work/fuse2.out" || { cat "$work/fuse2.err" >&2; fail "fuse through kvbridge-fuser"; }
for f in fuse1 fuse2; do
  fused=$(field fused_tokens "$work/$f.err")
  slices=$(field slices_fused "$work/$f.err")
  [[ ${fused:-0} -gt 0 && ${slices:-0} -gt 0 ]] || fail "$f: fused_tokens=${fused:-?} slices_fused=${slices:-?}"
done
cmp -s "$work/fuse1.out" "$work/fuse2.out" || fail "embedded and remote fusion printed different text"
echo "different models: R fused S's cache ($(field fused_tokens "$work/fuse1.err") tokens," \
  "$(field slices_fused "$work/fuse1.err") slices), embedded and through kvbridge-fuser alike"
echo "families_e2e: OK"
