#!/usr/bin/env python3
"""Checks kvbridge's forward pass against Hugging Face transformers, model family by model family.

For each case it builds a small model with transformers' own classes (Qwen2ForCausalLM,
Qwen3ForCausalLM, LlamaForCausalLM with and without Llama 3 "llama3" RoPE scaling, tied and untied
embeddings) from a config and random weights — every parameter randomized, norms and biases
included, nothing downloaded — saves it with save_pretrained (safetensors, float32), runs
`kvbridge logits` on that directory (the optimized CPU runner and the scalar reference pass) and
compares the logits after every token with transformers' forward at 1e-4 (for Llama 3 scaling
also that removing it breaks the match). Then the other way round: the directories `kvbridge synth
--format hf` writes (every family, sharded) must load in transformers and give kvbridge's logits.

Not part of CI's default run: it needs torch >= 2 and transformers from PyPI (see README,
"Checking against Hugging Face transformers"). Exits 77 when they are missing.

Usage: check_hf_transformers.py --kvbridge build/client/kvbridge [--keep DIR]
Prints "hf transformers: N passed, M failed"; exits 1 on any failure.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    import transformers
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                              Qwen3ForCausalLM)
except ImportError as e:  # pragma: no cover
    print(f"hf transformers: SKIP, cannot import torch/transformers ({e}).\n"
          f"Install them with:  python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch transformers",
          file=sys.stderr)
    sys.exit(77)

TOL = 1e-4
COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096, rms_norm_eps=1e-6,
              hidden_act="silu")
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}


def cases():
    """(label, model class, config, number of tokens)."""
    yield ("qwen2 tied (qkv bias)", Qwen2ForCausalLM,
           Qwen2Config(**COMMON, rope_theta=1e6, tie_word_embeddings=True), 24)
    yield ("qwen2 untied", Qwen2ForCausalLM,
           Qwen2Config(**COMMON, rope_theta=1e6, tie_word_embeddings=False), 24)
    yield ("qwen3 tied (qk norm, head_dim 32 != 64/4)", Qwen3ForCausalLM,
           Qwen3Config(**COMMON, head_dim=32, rope_theta=1e6, tie_word_embeddings=True), 24)
    yield ("llama untied", LlamaForCausalLM,
           LlamaConfig(**COMMON, rope_theta=10000.0, tie_word_embeddings=False), 24)
    # 300 tokens: far enough for the llama3 frequency bands to change the rotation.
    yield ("llama3.2 tied (llama3 rope scaling)", LlamaForCausalLM,
           LlamaConfig(**dict(COMMON, max_position_embeddings=131072), rope_theta=500000.0,
                       rope_scaling=dict(LLAMA3_SCALING), tie_word_embeddings=True), 300)


def randomize(model, seed):
    """Every parameter random: matrices N(0, 0.05), norm weights 1 + N(0, 0.1), biases N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.05 * noise)


def without_rope_scaling(model_dir, out_dir):
    """A copy of the directory whose config.json has no rope scaling (either spelling)."""
    shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
    path = os.path.join(out_dir, "config.json")
    cfg = json.load(open(path))
    if isinstance(cfg.get("rope_parameters"), dict):  # transformers >= 5
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg["rope_parameters"]["rope_theta"]}
    cfg["rope_scaling"] = None
    json.dump(cfg, open(path, "w"))


def kvbridge_logits(kvbridge, model_dir, ids, reference):
    cmd = [kvbridge, "logits", "--model", model_dir, "--ids", ",".join(map(str, ids)), "--threads", "2"]
    if reference:
        cmd.append("--reference")
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({p.returncode}): {p.stderr.strip()}")
    return json.loads(p.stdout)


# kvbridge's own Hugging Face writer (`kvbridge synth --format hf`), read by transformers.
SYNTH_SPECS = [
    "qwen2.5-0.5b:n_layer=2,n_embd=64,n_head=4,n_head_kv=2,head_dim=16,n_ff=96,n_vocab=1024",
    "qwen3-0.6b:n_layer=2,n_embd=64,n_head=4,n_head_kv=2,head_dim=32,n_ff=96,n_vocab=1024",
    "llama3.2-1b:n_layer=2,n_embd=64,n_head=4,n_head_kv=2,head_dim=16,n_ff=96,n_vocab=1024",
    "llama3-8b:n_layer=2,n_embd=64,n_head=4,n_head_kv=1,head_dim=16,n_ff=96,n_vocab=1024",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvbridge", required=True, help="path to the built kvbridge binary")
    ap.add_argument("--keep", default=None, help="write the model directories here and keep them")
    args = ap.parse_args()
    if not os.access(args.kvbridge, os.X_OK):
        print(f"hf transformers: {args.kvbridge} is not an executable kvbridge binary", file=sys.stderr)
        return 1
    print(f"torch {torch.__version__}, transformers {transformers.__version__}", file=sys.stderr)
    torch.set_num_threads(2)
    passed = failed = 0
    root = args.keep or tempfile.mkdtemp(prefix="kvb_hf_check_")
    for k, (label, cls, config, n_tokens) in enumerate(cases()):
        model = cls(config).eval()
        randomize(model, seed=100 + k)
        d = os.path.join(root, f"case{k}")
        model.save_pretrained(d, safe_serialization=True)
        g = torch.Generator().manual_seed(k)
        ids = torch.randint(0, config.vocab_size, (n_tokens,), generator=g).tolist()
        with torch.no_grad():
            want = model(torch.tensor([ids])).logits[0].float().numpy()
        for reference in (False, True):
            what = f"{label}, {'reference pass' if reference else 'runner'}"
            try:
                got = kvbridge_logits(args.kvbridge, d, ids, reference)
            except RuntimeError as e:
                failed += 1
                print(f"FAIL [{what}] {e}", file=sys.stderr)
                continue
            logits = np.asarray(got["logits"], dtype=np.float32)
            if logits.shape != want.shape:
                failed += 1
                print(f"FAIL [{what}] logits shape {logits.shape}, transformers {want.shape}", file=sys.stderr)
                continue
            err = float(np.abs(logits - want).max())
            scale = float(np.abs(want).max())
            ok = err <= TOL
            passed += ok
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} [{what}] {n_tokens} tokens, max |diff| {err:.2e} "
                  f"(max |logit| {scale:.2f}); kvbridge: {got['model']}", file=sys.stderr if not ok else sys.stdout)
        if "llama3" in label and "scaling" in label:
            # Negative control: without the scaling kvbridge must be far off, or the check saw nothing.
            plain = d + "-unscaled"
            without_rope_scaling(d, plain)
            got = np.asarray(kvbridge_logits(args.kvbridge, plain, ids, False)["logits"], dtype=np.float32)
            err = float(np.abs(got - want).max())
            ok = err > 100 * TOL
            passed += ok
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} [{label}, scaling removed] max |diff| {err:.2e} must exceed "
                  f"{100 * TOL:.0e}", file=sys.stderr if not ok else sys.stdout)
    for k, spec in enumerate(SYNTH_SPECS):
        what = f"synth --format hf {spec.split(':')[0]}, transformers reads it"
        d = os.path.join(root, f"synth{k}")
        p = subprocess.run([args.kvbridge, "synth", "--shape", spec, "--format", "hf", "--out", d, "--seed", "5",
                            "--shard-size", "300000"], capture_output=True, text=True)
        if p.returncode != 0:
            failed += 1
            print(f"FAIL [{what}] kvbridge synth: {p.stderr.strip()}", file=sys.stderr)
            continue
        model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        ids = torch.randint(0, 1024, (200,), generator=torch.Generator().manual_seed(k)).tolist()
        with torch.no_grad():
            want = model(torch.tensor([ids])).logits[0].float().numpy()
        got = np.asarray(kvbridge_logits(args.kvbridge, d, ids, False)["logits"], dtype=np.float32)
        err = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        ok = err <= TOL
        passed += ok
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} [{what}] 200 tokens, max |diff| {err:.2e}",
              file=sys.stderr if not ok else sys.stdout)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    print(f"hf transformers: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
