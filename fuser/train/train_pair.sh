#!/usr/bin/env bash
# Trains a fuser for one sharer → receiver pair: corpus, template, dump, train (README.md here).
#
#   fuser/train/train_pair.sh --sharer MODEL [--tokenizer-sharer TOK] --receiver MODEL
#       [--tokenizer-receiver TOK] --kind stories|instruct --out FUSER_DIR [--work DIR]
#       [--build DIR] [--corpus-model MODEL [--corpus-tokenizer TOK]] [--train N --val N --test N]
#       [--hidden H --intermediate I] [--] [train.py options: --steps, --seed, --lr, ...]
#
# The corpus is sampled from the sharer unless --corpus-model names another model (the sharer is
# the one that holds the knowledge to hand over). Everything but the trained fuser lands in --work
# (default: FUSER_DIR.work) and is reused when present: re-running with another --seed retrains
# without resampling or re-dumping.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$here/../../build
sharer="" tok_s="" receiver="" tok_r="" kind="" out="" work="" cmodel="" ctok=""
n_train=2000 n_val=100 n_test=200 hidden=64 inter=128
while [[ $# -gt 0 ]]; do
  case $1 in
    --sharer) sharer=$2; shift 2 ;;
    --tokenizer-sharer) tok_s=$2; shift 2 ;;
    --receiver) receiver=$2; shift 2 ;;
    --tokenizer-receiver) tok_r=$2; shift 2 ;;
    --kind) kind=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --corpus-model) cmodel=$2; shift 2 ;;
    --corpus-tokenizer) ctok=$2; shift 2 ;;
    --train) n_train=$2; shift 2 ;;
    --val) n_val=$2; shift 2 ;;
    --test) n_test=$2; shift 2 ;;
    --hidden) hidden=$2; shift 2 ;;
    --intermediate) inter=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[[ -n $sharer && -n $receiver && -n $kind && -n $out ]] ||
  { echo "usage: $0 --sharer M --receiver M --kind stories|instruct --out DIR [...] (see the header)" >&2; exit 2; }
work=${work:-$out.work}
cli=$build/client/kvbridge
[[ -x $cli && -x $build/agent/kvbridge-agent ]] || { echo "train_pair: build kvbridge first ($build)" >&2; exit 1; }
mkdir -p "$work"
s_flags=(--sharer "$sharer") r_flags=(--receiver "$receiver")
[[ -n $tok_s ]] && s_flags+=(--tokenizer-sharer "$tok_s")
[[ -n $tok_r ]] && r_flags+=(--tokenizer-receiver "$tok_r")

if [[ ! -s $work/corpus/test.jsonl ]]; then
  echo "== corpus ($n_train / $n_val / $n_test samples of ${cmodel:-$sharer})" >&2
  c_flags=(--model "${cmodel:-$sharer}")
  if [[ -n $cmodel ]]; then [[ -n $ctok ]] && c_flags+=(--tokenizer "$ctok"); elif [[ -n $tok_s ]]; then c_flags+=(--tokenizer "$tok_s"); fi
  /usr/bin/python3 "$here/corpus.py" --kvbridge "$build" "${c_flags[@]}" --kind "$kind" --out "$work/corpus" \
    --train "$n_train" --val "$n_val" --test "$n_test"
fi
if [[ ! -s $work/template/config.json ]]; then
  echo "== template" >&2
  "$cli" fuser synth --out "$work/template" "${s_flags[@]}" "${r_flags[@]}" --gates on --hidden "$hidden" \
    --intermediate "$inter"
fi
for split in train val test; do
  if [[ ! -s $work/$split.safetensors ]]; then
    echo "== dump $split" >&2
    "$cli" fuser dump --fuser "$work/template" "${s_flags[@]}" "${r_flags[@]}" --examples "$work/corpus/$split.jsonl" \
      -o "$work/$split.safetensors"
  fi
done
receiver_gguf=$receiver
if [[ $receiver != *.gguf ]]; then
  receiver_gguf=$work/receiver.gguf
  [[ -s $receiver_gguf ]] || "$cli" convert -m "$receiver" ${tok_r:+--tokenizer "$tok_r"} -o "$receiver_gguf"
fi
echo "== train" >&2
/usr/bin/python3 "$here/train.py" --template "$work/template" --receiver "$receiver_gguf" \
  --train "$work/train.safetensors" --val "$work/val.safetensors" --out "$out" "$@"
