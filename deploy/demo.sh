#!/usr/bin/env bash
# kvbridge demo: agents on loopback hand KV caches over instead of text.
#
#   deploy/demo.sh            (from the repository root, after building kvbridge, kvbridge-agent
#                              and kvbridge-fuser)
#
# 1. Same model. Agent A reads a story (prefill → a cache). Agent B continues the story from A's
#    cache: B pulls the cache straight from A over gRPC and skips the prefill. Then B reads the
#    same story as text itself, for comparison. Both continuations are greedy and print the same
#    text (the prompt is chosen to tokenize the same either way); the time to first token shows
#    what the cache saved.
# 2. Different models. Agent C runs aidreams260K (other weights, other tokenizer). A fuser service
#    (kvbridge-fuser) projects A's cache into C's cache space: C re-reads the context as its
#    own tokens, pulls only the sharer layers the fuser's gates need, fuses, and continues. The
#    fuser here has random weights of the right shapes (`kvbridge fuser synth`): it shows the data
#    path and what travels, not the quality a trained C2C fuser gives.
#
# Environment: KVBRIDGE_MODELS (default ../shared/models beside the checkout) must hold
# stories260K/ and aidreams260K/; KVBRIDGE_BUILD names the build directory (default: the first of
# build, build-* holding the binaries). Processes are stopped on exit, whatever happens.
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
model=$models/stories260K/stories260K.bin
tokenizer=$models/stories260K/tok512.bin
[[ -x $agent_bin && -x $cli && -x $fuser_bin ]] ||
  { echo "demo: build kvbridge, kvbridge-agent and kvbridge-fuser first (or set KVBRIDGE_BUILD)" >&2; exit 1; }
[[ -f $model && -f $tokenizer ]] || { echo "demo: $models/stories260K not found (set KVBRIDGE_MODELS)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
source "$root/deploy/lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_agent NAME: a stories260K agent.
start_agent() { start "$1" "$agent_bin" --model "$model" --tokenizer "$tokenizer" --name "$1"; }

story="Once upon a time, there was a little girl named Lily. She lived in a small house near the woods \
with her mom, her dad and her little dog Max. Every morning, Lily and Max went out to play in the garden. \
They liked to run after the butterflies and to look for shiny stones under the big old tree. One day, \
Lily found a tiny box under the tree. It was red and it had a golden key on top. Lily was very curious. \
She wanted to know what was inside the box, but she was also a little scared. She ran to her mom and \
showed her the box. Her mom smiled and said, \"Let us open it together.\" They turned the key slowly. \
Inside the box, there was a small note and a little toy bird. The note said, \"For the kind girl who \
plays with the birds.\" Lily was so happy. She gave her mom a big hug and ran back to the garden to show \
the toy bird to Max."
prompt="The next day,"  # no leading space: "story prompt" as one text tokenizes as story, then prompt
n=15

start_agent A
start_agent B
echo "agents: A at $A, B at $B (stories260K)"
echo

id=$("$cli" prefill --agent "$A" --text "$story" 2>"$work/prefill.err")
echo "A read the story: $(cat "$work/prefill.err") -> cache $id"
echo

echo "B continues from A's cache (B pulls it from A, no prefill of the story):"
"$cli" pass --from "$A" --cache "$id" --to "$B" --prompt "$prompt" -n "$n" 2>"$work/pass.err" | tee "$work/pass.out"
echo "  [$(cat "$work/pass.err")]"
echo

echo "B reads the story as text itself:"
"$cli" generate --agent "$B" -p "$story $prompt" -n "$n" --stats 2>"$work/text.err" |
  sed -e "s/^.*\($prompt\)/\1/" | tee "$work/text.out"  # the echo of the story itself is cut
echo "  [$(cat "$work/text.err")]"
echo

ttft_cache=$(field ttft_ms "$work/pass.err")
ttft_text=$(field ttft_ms "$work/text.err")
tokens=$(field context_tokens "$work/pass.err")
bytes=$(field pulled_bytes "$work/pass.err")
same=$(cmp -s "$work/pass.out" "$work/text.out" && echo "same continuation" || echo "different continuations")
awk -v c="$ttft_cache" -v t="$ttft_text" -v k="$tokens" -v b="$bytes" -v s="$same" 'BEGIN {
  printf "B, time to first token: %.2f ms with A'"'"'s cache (%d tokens, %.0f KiB pulled) vs %.2f ms with the text: %.2f ms saved (%.1fx); %s\n",
         c, k, b / 1024, t, t - c, (c > 0 ? t / c : 0), s
}'
echo "(stories260K has 260K parameters, so even its prefill takes milliseconds; the saving grows with the"
echo " model and the context: bench/pass_bench measures a 110M model at 128 to 2048 tokens.)"

# ---- 2. different models, through a fuser ----
other=$models/aidreams260K/aidreams260K.bin
other_tok=$models/aidreams260K/tok512.bin
[[ -f $other && -f $other_tok ]] || { echo "demo: $models/aidreams260K not found (set KVBRIDGE_MODELS)" >&2; exit 1; }
echo
"$cli" fuser synth --out "$work/fuser" --sharer "$model" --tokenizer-sharer "$tokenizer" \
  --receiver "$other" --tokenizer-receiver "$other_tok" --hidden 64 --intermediate 64 --gates alternate >/dev/null
start F "$fuser_bin" --weights "$work/fuser"
start C "$agent_bin" --model "$other" --tokenizer "$other_tok" --name C
echo "C at $C runs aidreams260K (another model, another tokenizer); fuser F at $F:"
"$cli" fuser info "$F" | sed 's/^/  /'
echo
# aidreams260K's context is 128 tokens: a short context.
printf '%s' "Once upon a time, there was a little girl named Lily. She loved to play in the park with her ball." \
  >"$work/context.txt"
echo "C continues from A's cache of a short context, fused by F:"
"$cli" fuse --sharer "$A" --receiver "$C" --fuser "$F" --context-file "$work/context.txt" --prompt " One day," \
  -n "$n" 2>"$work/fuse.err" | tee "$work/fuse.out"
sed 's/^/  [/; s/$/]/' "$work/fuse.err"
echo "(A random-weight fuser of the right shapes: the text is not meaningful; the figures show what moved."
echo " Gated-off layers never left A: bench/fuse_bench and docs/BENCHMARKS.md have the numbers.)"
