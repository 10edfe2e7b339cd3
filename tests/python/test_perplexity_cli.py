#!/usr/bin/env python3
"""`kvbridge perplexity` against llama.cpp's llama-perplexity, and its error paths.

The expected PPL was recorded with llama.cpp (not available in CI) on the same model and text:

    llama-perplexity -m stories260K/stories260K.gguf -f tests/data/ppl_text.txt -c 256 -b 256 -t 2
    llama-perplexity -m smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf -f tests/data/ppl_text.txt \
        -c 512 -b 512 -t 2
    llama.cpp 0c1e57098bba43ac29e6e3b677cdceebdd22334f (vendored in llama-cpp-python 0.3.36)

Checks: the final PPL within 1% of llama.cpp's; the running estimate "[1]..,[n].." ends at the
final value; --kl-divergence-base then --kl-divergence of the model against itself gives KLD 0 and
100% same top token; a base file from another tokenizer, a text shorter than one window and a
context beyond the model's exit 1 with a message.

Usage: test_perplexity_cli.py --kvbridge build/client/kvbridge --text tests/data/ppl_text.txt [--models DIR]
The models folder is $KVBRIDGE_MODELS when set, else --models. Exits 1 on any failure, 77 when the
model is missing.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

# llama-perplexity's "Final estimate: PPL = 3.3918 +/- 0.09446" for the command above (32 windows).
LLAMA_CPP_PPL = 3.3918
LLAMA_CPP_PPL_ERR = 0.09446
# ... and "PPL = 2.2797 +/- 0.07902" for SmolLM2 Q4_1 (9 windows of 512): a quantized real model,
# where the two engines' arithmetic legitimately differs (8-bit activations in llama.cpp's every
# matmul, in kvbridge's decode only), so 1% is the bar.
LLAMA_CPP_SMOLLM2_PPL = 2.2797

failures = []


def check(cond: bool, what: str) -> None:
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def last_line(s: str) -> str:
    lines = s.strip().splitlines()
    return lines[-1] if lines else ""


def final_estimate(out: str) -> tuple[float, float] | None:
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out)
    return (float(m.group(1)), float(m.group(2))) if m else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvbridge", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--models", default=os.path.join(os.path.dirname(__file__), "../../../shared/models"))
    args = ap.parse_args()
    models = os.environ.get("KVBRIDGE_MODELS") or args.models
    model = os.path.join(models, "stories260K/stories260K.gguf")
    if not os.path.exists(model):
        print(f"skip: {model} is missing")
        return 77
    kvb = args.kvbridge

    # 1. PPL against llama.cpp's recorded value.
    r = run([kvb, "perplexity", "-m", model, "-f", args.text, "-c", "256", "-b", "256", "-t", "2"])
    check(r.returncode == 0, f"perplexity exits 0 ({last_line(r.stderr)})")
    est = final_estimate(r.stdout)
    check(est is not None, "prints 'Final estimate: PPL = X +/- Y'")
    if est:
        ppl, err = est
        rel = abs(ppl / LLAMA_CPP_PPL - 1)
        check(rel < 0.01, f"PPL {ppl} within 1% of llama.cpp's {LLAMA_CPP_PPL} (off by {100 * rel:.3f}%)")
        check(abs(err / LLAMA_CPP_PPL_ERR - 1) < 0.02, f"error {err} within 2% of llama.cpp's {LLAMA_CPP_PPL_ERR}")
        running = re.findall(r"\[(\d+)\]([0-9.]+),", r.stdout)
        check(len(running) > 1 and running[0][0] == "1", f"running estimate [1]..[{len(running)}]")
        check(running and abs(float(running[-1][1]) - ppl) < 1e-3, "the last running estimate is the final PPL")
    check("windows" in r.stderr and "tokens/s" in r.stderr and "ETA" in r.stderr, "progress on stderr")

    smollm2 = os.path.join(models, "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    r = run([kvb, "perplexity", "-m", smollm2, "-f", args.text, "-c", "512", "-b", "512", "-t", "2"])
    est = final_estimate(r.stdout)
    check(r.returncode == 0 and est is not None, f"SmolLM2 Q4_1 perplexity exits 0 ({last_line(r.stderr)})")
    if est:
        rel = abs(est[0] / LLAMA_CPP_SMOLLM2_PPL - 1)
        check(rel < 0.01, f"SmolLM2 Q4_1 PPL {est[0]} within 1% of llama.cpp's {LLAMA_CPP_SMOLLM2_PPL} "
                          f"(off by {100 * rel:.3f}%)")

    with tempfile.TemporaryDirectory() as tmp:
        # 2. KL divergence: save, then the model against itself.
        base = os.path.join(tmp, "base.kld")
        r = run([kvb, "perplexity", "-m", model, "-f", args.text, "-c", "128", "--chunks", "8",
                 "--kl-divergence-base", base])
        check(r.returncode == 0 and os.path.getsize(base) > 0, f"saves base logits ({last_line(r.stderr)})")
        r = run([kvb, "perplexity", "-m", model, "-f", args.text, "--kl-divergence-base", base, "--kl-divergence"])
        check(r.returncode == 0, f"kl-divergence exits 0 ({last_line(r.stderr)})")
        kld = re.search(r"Mean\s+KLD:\s+(-?[0-9.]+)", r.stdout)
        top = re.search(r"Same top p:\s+([0-9.]+)", r.stdout)
        check(kld is not None and abs(float(kld.group(1))) < 1e-4, f"KLD against itself ~0 ({kld and kld.group(1)})")
        check(top is not None and float(top.group(1)) == 100.0, f"same top token 100% ({top and top.group(1)})")

        # 3. A base from another tokenizer (a synthetic vocabulary of the same size).
        other = os.path.join(tmp, "synth.gguf")
        r = run([kvb, "synth", "--shape", "stories260K", "--out", other])
        check(r.returncode == 0, f"synth model ({last_line(r.stderr)})")
        r = run([kvb, "perplexity", "-m", other, "--kl-divergence-base", base, "--kl-divergence"])
        check(r.returncode == 1 and "another tokenizer" in r.stderr, f"other tokenizer refused: {last_line(r.stderr)}")

        # 4. A text too short for one window; a context beyond the model's.
        short = os.path.join(tmp, "short.txt")
        with open(short, "w") as f:
            f.write("Once upon a time, there was a cat.\n")
        r = run([kvb, "perplexity", "-m", model, "-f", short, "-c", "128"])
        check(r.returncode == 1 and "needs at least 128" in r.stderr, f"short text refused: {last_line(r.stderr)}")
        r = run([kvb, "perplexity", "-m", model, "-f", args.text, "-c", "4096"])
        check(r.returncode == 1 and "larger than the context" in r.stderr, f"ctx refused: {last_line(r.stderr)}")
        r = run([kvb, "perplexity", "-m", model, "-f", args.text, "--kl-divergence-base", args.text, "--kl-divergence"])
        check(r.returncode == 1 and "not a base-logits file" in r.stderr, f"text as base refused: {last_line(r.stderr)}")

    print(f"perplexity cli: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
