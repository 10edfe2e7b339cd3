#!/usr/bin/env bash
# kvbridge demo: agents on loopback hand KV caches over instead of text.
#
#   deploy/demo.sh            (from the repository root, after building kvbridge, kvbridge-agent
#                              and kvbridge-fuser)
#
# 1. A real model. Agents A and B run SmolLM2-135M-Instruct (Q4_1 GGUF). A reads an incident log
#    (deploy/demo/incident.log, 145 lines, ~5,000 tokens) as the first turn of a chat and keeps the
#    cache. B answers a question about the incident from A's cache: B pulls the cache straight from
#    A over gRPC and prefills only the question. Then B answers the same conversation reading the
#    log as text itself. Both answers are printed, with B's time to first token each way.
# 2. Different models. Agent C runs aidreams260K (other weights, other tokenizer). A fuser service
#    (kvbridge-fuser) projects a stories260K agent's cache into C's cache space: C re-reads the
#    context as its own tokens, pulls only the sharer layers the fuser's gates need, fuses, and
#    continues. The fuser is the trained one kvbridge ships (fuser/trained/stories260K-aidreams260K,
#    fuser/train/README.md); C's bits per byte on what the sharer knows comes next are printed alone,
#    with a random-weight fuser and with the trained one.
#
# Environment: KVBRIDGE_MODELS (default ../shared/models beside the checkout) must hold
# smollm2-135m-instruct/, stories260K/ and aidreams260K/ (README: where to download them);
# KVBRIDGE_BUILD names the build directory (default: the first of build, build-* holding the
# binaries); DEMO_TOKENS caps each answer (default 48). Processes are stopped on exit, whatever
# happens.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
models=${KVBRIDGE_MODELS:-$root/../shared/models}
build=${KVBRIDGE_BUILD:-}
if [[ -z $build ]]; then
  for d in "$root/build" "$root"/build-*; do
    if [[ -x $d/agent/kvbridge-agent && -x $d/client/kvbridge && -x $d/fuser/service/kvbridge-fuser ]]; then build=$d; break; fi
  done
fi
agent_bin=$build/agent/kvbridge-agent
fuser_bin=$build/fuser/service/kvbridge-fuser
cli=$build/client/kvbridge
smollm=$models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
model=$models/stories260K/stories260K.bin
tokenizer=$models/stories260K/tok512.bin
[[ -x $agent_bin && -x $cli && -x $fuser_bin ]] ||
  { echo "demo: build kvbridge, kvbridge-agent and kvbridge-fuser first (or set KVBRIDGE_BUILD)" >&2; exit 1; }
for f in "$smollm" "$model" "$tokenizer"; do
  [[ -f $f ]] || { echo "demo: $f not found (set KVBRIDGE_MODELS; README: where to download it)" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
source "$root/deploy/lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- 1. the same model: B answers from A's cache of an incident log ----
log=$root/deploy/demo/incident.log
question="What was the root cause of the checkout errors, and what fixed them? Answer in two sentences."
n=${DEMO_TOKENS:-48}
# chat OUT ROLE FILE...: writes the messages [{"role": ..., "content": ...}] of (role, text file) pairs to OUT.
chat() {
  python3 -c 'import json, sys; a = sys.argv[2:]; json.dump([{"role": a[i], "content": open(a[i + 1]).read()} for i in range(0, len(a), 2)], open(sys.argv[1], "w"))' "$@"
}
{ printf 'Here is the log of an incident in our checkout service:\n\n'; cat "$log"; } >"$work/turn1.txt"
printf '%s' "$question" >"$work/turn2.txt"
chat "$work/log.json" user "$work/turn1.txt"                           # A's turn: the log
chat "$work/question.json" user "$work/turn2.txt"                      # B's turn after A's cache
chat "$work/both.json" user "$work/turn1.txt" user "$work/turn2.txt"   # B alone: both turns

start A "$agent_bin" --model "$smollm" --name A
# B runs without automatic prefix caching: the cells it pulls from A would otherwise be found again
# when it reads the same conversation as text, and the comparison below would not re-read anything.
start B "$agent_bin" --model "$smollm" --name B --prefix-cache-bytes 0
echo "agents: A at $A, B at $B (SmolLM2-135M-Instruct, Q4_1)"
echo

id=$("$cli" prefill --agent "$A" --messages "$work/log.json" --no-generation-prompt 2>"$work/prefill.err") ||
  { cat "$work/prefill.err" >&2; exit 1; }
echo "A read the incident log ($(wc -l <"$log") lines) as the first chat turn: $(cat "$work/prefill.err") -> cache $id"
echo
echo "Q: $question"
echo
echo "B answers from A's cache (B pulls it from A and prefills only the question):"
"$cli" generate --agent "$B" --context "$A/$id" --messages "$work/question.json" -n "$n" --stats \
  2>"$work/cache.err" | tee "$work/cache.out"
echo
echo "  [$(tail -n 1 "$work/cache.err")]"
echo
echo "B answers reading the log as text itself (the same conversation, every token prefilled by B):"
"$cli" generate --agent "$B" --messages "$work/both.json" -n "$n" --stats \
  2>"$work/text.err" | tee "$work/text.out"
echo
echo "  [$(tail -n 1 "$work/text.err")]"
echo

ttft_cache=$(field ttft_ms "$work/cache.err")
ttft_text=$(field ttft_ms "$work/text.err")
same=$(cmp -s "$work/cache.out" "$work/text.out" && echo "the same answer" || echo "different answers")
awk -v c="$ttft_cache" -v t="$ttft_text" -v s="$same" 'BEGIN {
  printf "B, time to first token: %.0f ms with A'"'"'s cache vs %.0f ms reading the text (%.1fx); %s\n",
         c, t, (c > 0 ? t / c : 0), s
}'
echo "(SmolLM2-135M is a small model: its answers show the data path, not a large model's judgement.)"
echo
echo "A answers reading the log as text too: A prefilled this log itself, so its prefix cache holds it"
echo "(automatic prefix caching) and A computes only what is new:"
"$cli" generate --agent "$A" --messages "$work/both.json" -n "$n" --stats 2>"$work/prefix.err" >"$work/prefix.out"
same_a=$(cmp -s "$work/prefix.out" "$work/text.out" && echo "the same answer as B's" || echo "an answer unlike B's")
echo "  time to first token $(field ttft_ms "$work/prefix.err") ms, $(field cached_tokens "$work/prefix.err") of" \
  "$(field prompt_tokens "$work/prefix.err") prompt tokens found in the cache; $same_a"

# ---- 2. different models, through a trained fuser ----
other=$models/aidreams260K/aidreams260K.bin
other_tok=$models/aidreams260K/tok512.bin
trained=$root/fuser/trained/stories260K-aidreams260K
[[ -f $other && -f $other_tok ]] || { echo "demo: $models/aidreams260K not found (set KVBRIDGE_MODELS)" >&2; exit 1; }
echo
# F0: a fuser of the same pair with random weights (the shapes this demo used before fusers were trained).
"$cli" fuser synth --out "$work/random" --sharer "$model" --tokenizer-sharer "$tokenizer" \
  --receiver "$other" --tokenizer-receiver "$other_tok" --hidden 64 --intermediate 64 --gates alternate >/dev/null
start S "$agent_bin" --model "$model" --tokenizer "$tokenizer" --name S
start F "$fuser_bin" --weights "$trained"
start F0 "$fuser_bin" --weights "$work/random"
start C "$agent_bin" --model "$other" --tokenizer "$other_tok" --name C --prefix-cache-bytes 0
echo "C at $C runs aidreams260K (another model, another tokenizer); fuser F at $F serves the shipped"
echo "trained stories260K -> aidreams260K fuser ($trained):"
"$cli" fuser info "$F" | sed 's/^/  /'
echo
# aidreams260K's context is 128 tokens: a short context.
context="Once upon a time, there was a little girl named Lily. She loved to play in the park with her ball."
prompt=" One day,"
# stories260K's own greedy continuation of context + prompt: what the sharer knows comes next.
next=" she saw a big, red ball. She wanted to play with it, but it was too high."
printf '%s' "$context" >"$work/context.txt"
echo "C continues from stories260K agent S's cache of a short context, fused by F:"
"$cli" fuse --sharer "$S" --receiver "$C" --fuser "$F" --context-file "$work/context.txt" --prompt "$prompt" \
  -n 24 2>"$work/fuse.err" | tee "$work/fuse.out"
sed 's/^/  [/; s/$/]/' "$work/fuse.err"
echo
id=$("$cli" prefill --agent "$S" --text "$context" 2>/dev/null)
# bpb AGENT ARGS...: the bits per byte C (or S) gives $next after $prompt (kvbridge generate --score).
bpb() { "$cli" generate "$@" --score "$next" 2>&1 >/dev/null | sed -n 's/.*, \([0-9.]*\) bits\/byte$/\1/p'; }
echo "How well each reads what S knows comes next (\"$next\"), in bits per byte (lower is better):"
echo "  C alone, reading the context as text:  $(bpb --agent "$C" -p "$context$prompt")"
echo "  C with S's cache, random-weight fuser: $(bpb --agent "$C" --context "$S/$id" --fuser "$F0" -p "$prompt")"
echo "  C with S's cache, trained fuser F:     $(bpb --agent "$C" --context "$S/$id" --fuser "$F" -p "$prompt")"
echo "  S itself (the sharer):                 $(bpb --agent "$S" -p "$context$prompt")"
echo "(aidreams260K alone has never seen a children's story; fused, it reads one far better. A 260K-parameter"
echo " receiver still writes poorly: docs/BENCHMARKS.md, \"Fuser training\", has the evaluation.)"
