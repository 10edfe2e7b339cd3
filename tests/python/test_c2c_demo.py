#!/usr/bin/env python3
"""The shipped stories260K -> aidreams260K fuser (fuser/trained/) on the README demo's context.

Through running services (bench/c2c_eval: a stories260K agent, an aidreams260K agent, kvbridge-fuser
processes), the receiver's bits per byte of the sharer's own continuation of the demo's context
must be lower with the trained fuser than with a random-weight fuser of the demo's old shapes and
than with the receiver alone.

    test_c2c_demo.py --c2c-eval BIN --kvbridge CLI --fuser DIR --examples JSONL --models DIR

Exit status: 0 pass, 1 fail, 77 skip (the test models are not there).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--c2c-eval", required=True)
    ap.add_argument("--kvbridge", required=True)
    ap.add_argument("--fuser", required=True)
    ap.add_argument("--examples", required=True)
    ap.add_argument("--models", required=True)
    a = ap.parse_args()
    models = os.environ.get("KVBRIDGE_MODELS", a.models)
    s = [os.path.join(models, "stories260K", f) for f in ("stories260K.bin", "tok512.bin")]
    r = [os.path.join(models, "aidreams260K", f) for f in ("aidreams260K.bin", "tok512.bin")]
    if not all(os.path.isfile(p) for p in s + r):
        print(f"test_c2c_demo: stories260K / aidreams260K not found under {models}; skipping")
        return 77
    pair = ["--sharer", s[0], "--tokenizer-sharer", s[1], "--receiver", r[0], "--tokenizer-receiver", r[1]]
    with tempfile.TemporaryDirectory() as tmp:
        random_dir, out = os.path.join(tmp, "random"), os.path.join(tmp, "eval.json")
        subprocess.run([a.kvbridge, "fuser", "synth", "--out", random_dir, *pair, "--hidden", "64",
                        "--intermediate", "64", "--gates", "alternate"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([a.c2c_eval, *pair, "--examples", a.examples, "--fuser", a.fuser,
                        "--baseline-fuser", random_dir, "--threads", "1", "--json", out], check=True)
        with open(out) as f:
            j = json.load(f)
    alone, trained, rand = j["a"]["bits_per_byte"], j["b"][0]["bits_per_byte"], j["b0"]["bits_per_byte"]
    print(f"bits/byte: receiver alone {alone:.4f}, random fuser {rand:.4f}, trained fuser {trained:.4f}")
    ok = True
    if not trained < rand:
        print("FAIL: the trained fuser does not beat the random-weight fuser")
        ok = False
    if not trained < alone:
        print("FAIL: the trained fuser does not beat the receiver alone")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
