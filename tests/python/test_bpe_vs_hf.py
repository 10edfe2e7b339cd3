#!/usr/bin/env python3
"""Compares kvbridge's byte-level BPE with Hugging Face's `tokenizers` (PyPI) on the same files.

For each family a `tokenizers.Tokenizer` is built from the raw vocab + merges with that family's
pre-tokenizer (tokenizer.json's config: a Split regex then ByteLevel, or GPT-2's ByteLevel regex),
its added tokens registered at their ids, and no normalizer or post-processor:
  * qwen2:  models/tokenizers/qwen2/{vocab.json, merges.txt} + the Qwen3 tokenizer_config.json
            (copied into a temp dir under the standard names for `kvbridge tokenize --tokenizer`);
  * llama3: models/tokenizers/llama3/{encoder.json, vocab.bpe} with ignore_merges, plus Meta's
            Llama 3.1/3.2 special tokens 128000..128255 (kvbridge generates them with --pre llama-bpe);
  * gpt2:   models/tokenizer-tests/ggml-vocab-gpt-2.gguf, read with the PyPI `gguf` package
            (skipped when it is missing).
Strings: tests/python/bpe_strings.json (scripts, code, emoji, whitespace and digit runs, special
tokens, odd code points) plus seeded random mixtures of them. Both special-token modes are
compared: kvbridge --parse-special against HF's default (added tokens matched), and kvbridge
without it against HF with encode_special_tokens = True (special tokens read as text, non-special
added tokens such as <think> still matched in both).
Strings that are not valid Unicode cannot be passed to HF; the C++ tests cover invalid UTF-8.

Usage: test_bpe_vs_hf.py --kvbridge build/client/kvbridge [--models DIR]
The models folder is $KVBRIDGE_MODELS when set, else --models. Prints a summary per family and
"bpe vs hf: N strings compared, M mismatches"; exits 1 on any mismatch, 77 when `tokenizers` (or
the models) are missing.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

try:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
except ImportError as e:  # pragma: no cover
    print(f"bpe vs hf: SKIP: cannot import tokenizers ({e}); pip install tokenizers", file=sys.stderr)
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_RE = QWEN2_RE.replace(r"|\p{N}|", r"|\p{N}{1,3}|", 1)


def llama3_specials():
    names = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128002: "<|reserved_special_token_0|>",
             128003: "<|reserved_special_token_1|>", 128004: "<|finetune_right_pad_id|>",
             128005: "<|reserved_special_token_2|>", 128006: "<|start_header_id|>",
             128007: "<|end_header_id|>", 128008: "<|eom_id|>", 128009: "<|eot_id|>", 128010: "<|python_tag|>"}
    for i in range(128011, 128256):
        names[i] = f"<|reserved_special_token_{i - 128011 + 3}|>"
    return [(i, names[i], True) for i in range(128000, 128256)]


def split_byte_level(regex):
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def hf_tokenizer(bpe, pre_tokenizer, added):
    """added: (id, content, special) in id order; each must land on its id."""
    t = Tokenizer(bpe)
    t.pre_tokenizer = pre_tokenizer
    t.decoder = decoders.ByteLevel()
    for tid, content, special in sorted(added):
        tok = AddedToken(content, special=special, normalized=False)
        if special:
            t.add_special_tokens([tok])
        else:
            t.add_tokens([tok])
        got = t.token_to_id(content)
        if got != tid:
            raise RuntimeError(f"HF put added token {content!r} at {got}, expected {tid}")
    return t


def gguf_strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def families(models_dir, tmp):
    """Yields (name, hf Tokenizer, kvbridge --tokenizer args)."""
    q = os.path.join(models_dir, "tokenizers", "qwen2")
    qdir = os.path.join(tmp, "qwen3")
    os.makedirs(qdir)
    shutil.copy(os.path.join(q, "vocab.json"), qdir)
    shutil.copy(os.path.join(q, "merges.txt"), qdir)
    shutil.copy(os.path.join(q, "qwen3_tokenizer_config.json"), os.path.join(qdir, "tokenizer_config.json"))
    with open(os.path.join(q, "qwen3_tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    added = [(int(i), t["content"], bool(t["special"])) for i, t in cfg["added_tokens_decoder"].items()]
    bpe = models.BPE.from_file(os.path.join(q, "vocab.json"), os.path.join(q, "merges.txt"))
    yield "qwen2", hf_tokenizer(bpe, split_byte_level(QWEN2_RE), added), ["--tokenizer", qdir]

    l3 = os.path.join(models_dir, "tokenizers", "llama3")
    bpe = models.BPE.from_file(os.path.join(l3, "encoder.json"), os.path.join(l3, "vocab.bpe"), ignore_merges=True)
    yield ("llama3", hf_tokenizer(bpe, split_byte_level(LLAMA3_RE), llama3_specials()),
           ["--tokenizer", l3, "--pre", "llama-bpe"])

    path = os.path.join(models_dir, "tokenizer-tests", "ggml-vocab-gpt-2.gguf")
    try:
        from gguf import GGUFReader
    except ImportError:
        print("bpe vs hf: gpt2 skipped (no PyPI gguf to read its GGUF)", file=sys.stderr)
        return
    r = GGUFReader(path)
    tokens = gguf_strings(r, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in gguf_strings(r, "tokenizer.ggml.merges")]
    tf = r.fields["tokenizer.ggml.token_type"]
    types = [int(tf.parts[i][0]) for i in tf.data]
    added = [(i, tokens[i], True) for i, ty in enumerate(types) if ty == 3]  # control: <|endoftext|>
    bpe = models.BPE({p: i for i, p in enumerate(tokens)}, merges)
    yield ("gpt2", hf_tokenizer(bpe, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), added),
           ["--tokenizer", path])


def test_strings():
    with open(os.path.join(HERE, "bpe_strings.json"), encoding="utf-8") as f:
        fixed = json.load(f)
    rng = random.Random(6)
    parts = [s for s in fixed if len(s) < 40] + [" ", "\n", "'", "s", "ll", "1", "22", ".", "<|", "|>"]
    mixed = ["".join(rng.choice(parts) for _ in range(rng.randint(2, 12))) for _ in range(300)]
    return fixed + mixed


def kvbridge_ids(kvb, tok_args, texts, parse_special, tmp):
    path = os.path.join(tmp, "batch.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(texts, f, ensure_ascii=False)
    cmd = [kvb, "tokenize", *tok_args, "--no-bos", "--batch", path]
    if parse_special:
        cmd.append("--parse-special")
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvbridge", required=True)
    ap.add_argument("--models", default=os.path.join(HERE, "..", "..", "..", "shared", "models"))
    args = ap.parse_args()
    models_dir = os.environ.get("KVBRIDGE_MODELS") or args.models
    if not os.path.isdir(os.path.join(models_dir, "tokenizers")):
        print(f"bpe vs hf: SKIP: no tokenizer files under {models_dir}", file=sys.stderr)
        return 77
    texts = test_strings()
    compared = mismatches = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, hf, tok_args in families(models_dir, tmp):
            fam_bad = 0
            for parse_special in (True, False):
                hf.encode_special_tokens = not parse_special
                want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
                got = kvbridge_ids(args.kvbridge, tok_args, texts, parse_special, tmp)
                for text, w, g in zip(texts, want, got):
                    compared += 1
                    if w != g:
                        fam_bad += 1
                        if fam_bad <= 10:
                            print(f"MISMATCH [{name} parse_special={parse_special}] {text!r}\n"
                                  f"  hf       {w}\n  kvbridge {g}", file=sys.stderr)
            print(f"{name}: {len(texts)} strings x 2 modes, {fam_bad} mismatches")
            mismatches += fam_bad
    print(f"bpe vs hf: {compared} strings compared, {mismatches} mismatches")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
