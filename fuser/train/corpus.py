#!/usr/bin/python3
"""Build a fuser corpus from a model's own samples, through a kvbridge agent.

    corpus.py --kvbridge BUILD --model M [--tokenizer T] --kind stories|instruct --out DIR
              [--train 400 --val 50 --test 50] [--tokens 96] [--temp-min 0.8 --temp-max 1.0]

Starts one kvbridge-agent on the model (loopback, a free port) and samples one text per seed with
`kvbridge generate --agent`: seed s uses prompt s mod len(prompts) and temperature
temp_min + (temp_max - temp_min) * ((s * 7) mod 11) / 10. Seeds [0, train) go to train.jsonl, the
next --val to val.jsonl, the next --test to test.jsonl: the splits never share a sample. Each line
is {"seed", "prompt", "temperature", "context", "continuation"}: the sample cut at the sentence end
nearest its middle (the context ends with the punctuation, the continuation starts with the space
after it). Samples with no sentence end to cut at, or under 40 characters, are skipped (counted).
The same arguments give the same files byte for byte: sampling in kvbridge is seeded, the agent
runs one request at a time.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

STORY_PROMPTS = ["Once upon a time", "One day", "Lily", "Tom and his dog", "The little bird", "There was a girl",
                 "The sun was", "Ben wanted to", "Mom said", "In the park", "The cat", "Sara had a"]
INSTRUCT_PROMPTS = [
    "Write a short story for children about a lost toy.",
    "Write a short story about a dragon who learns to share.",
    "Explain in a few sentences why the sky is blue.",
    "Explain what a computer program is to a ten-year-old.",
    "Summarize this log: kernel: Out of memory: Killed process 4121 (java). The pod was restarted.",
    "Summarize this log: TLS handshake failed: certificate has expired (notAfter 2024-03-01).",
    "Summarize this log: 57 failed ssh logins for root from 203.0.113.7 within 60 seconds.",
    "Explain how plants make their food.",
    "Write a short story about a robot that wants to paint.",
    "Explain what a firewall does in simple words.",
]


def temperature(seed, lo, hi):
    return lo + (hi - lo) * ((seed * 7) % 11) / 10


def cut(text):
    """(context, continuation) at the sentence end nearest the middle, or None."""
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", text)]
    ends = [e for e in ends if 10 <= e <= len(text) - 10]
    if len(text) < 40 or not ends:
        return None
    e = min(ends, key=lambda x: abs(x - len(text) / 2))
    return text[:e], text[e:]


class Agent:
    def __init__(self, build, model, tokenizer):
        cmd = [os.path.join(build, "agent", "kvbridge-agent"), "--model", model, "--listen", "127.0.0.1:0",
               "--parallel", "1"]
        if tokenizer:
            cmd += ["--tokenizer", tokenizer]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"listening on (\S+)", line)
        if not m:
            self.proc.kill()
            sys.exit(f"corpus: the agent did not start ({line!r})")
        self.address = m.group(1)

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def sample(cli, agent, kind, prompt, seed, temp, tokens):
    cmd = [cli, "generate", "--agent", agent.address, "-n", str(tokens), "--temp", f"{temp:.3f}", "--seed", str(seed),
           "--top-p", "0.95"]
    if kind == "instruct":
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump([{"role": "user", "content": prompt}], f)
        cmd += ["--messages", f.name]
    else:
        cmd += ["-p", prompt]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    finally:
        if kind == "instruct":
            os.unlink(f.name)
    if r.returncode != 0:
        sys.exit(f"corpus: {' '.join(cmd)} failed: {r.stderr}")
    return r.stdout.rstrip("\n")  # a plain prompt is echoed: the sample starts with it


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kvbridge", required=True, help="build directory (agent/kvbridge-agent, client/kvbridge)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", default="")
    ap.add_argument("--kind", choices=["stories", "instruct"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--val", type=int, default=50)
    ap.add_argument("--test", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=96, help="tokens generated per sample")
    ap.add_argument("--temp-min", type=float, default=0.8)
    ap.add_argument("--temp-max", type=float, default=1.0)
    a = ap.parse_args(argv)
    prompts = STORY_PROMPTS if a.kind == "stories" else INSTRUCT_PROMPTS
    cli = os.path.join(a.kvbridge, "client", "kvbridge")
    os.makedirs(a.out, exist_ok=True)
    agent = Agent(a.kvbridge, a.model, a.tokenizer)
    t0, skipped, seed = time.time(), 0, 0
    try:
        for split, n in (("train", a.train), ("val", a.val), ("test", a.test)):
            with open(os.path.join(a.out, f"{split}.jsonl"), "w") as f:
                for _ in range(n):
                    prompt = prompts[seed % len(prompts)]
                    temp = temperature(seed, a.temp_min, a.temp_max)
                    parts = cut(sample(cli, agent, a.kind, prompt, seed, temp, a.tokens))
                    if parts is None:
                        skipped += 1
                    else:
                        f.write(json.dumps({"seed": seed, "prompt": prompt, "temperature": round(temp, 3),
                                            "context": parts[0], "continuation": parts[1]}) + "\n")
                    seed += 1
                    if seed % 25 == 0:
                        print(f"\rcorpus: {seed} samples, {time.time() - t0:.0f} s", end="", file=sys.stderr)
    finally:
        agent.close()
    print(f"\rcorpus: {seed} samples ({skipped} skipped) in {time.time() - t0:.0f} s -> {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
