#!/usr/bin/python3
"""convert_c2c end to end: torch C2C checkpoints -> convert_c2c.py -> kvbridge Fuser (C++) == torch forward.

For each case this script
  1. builds a C2CProjector per receiver layer with torch (a re-implementation of thu-nics/C2C's forward,
     notes §1a: Linear_in on [source ; target], residual FFN blocks with RMSNorm eps 1e-6 and exact GELU,
     projection and per-head weight heads, sigmoid weights, hard gates), with random weights and gates;
  2. saves them in the released folder layout (config.json recipe, final/projector_{i}.pt/.json,
     final/projector_config.json), in f32 or bf16;
  3. runs convert_c2c.py, checks the resulting config.json;
  4. runs the torch forward on random sharer/receiver K/V and writes inputs + expected outputs to a
     safetensors file;
  5. runs the C++ fuser_check, which fuses with kvb::fuser::Fuser on the CPU backend and requires
     max|got - expected| / max|expected| <= 1e-5 per case (and bit-identical receivers for gated-off branches).
It also checks that convert_c2c.py rejects broken checkpoints with a message naming the tensor.

Usage: /usr/bin/python3 test_convert_c2c.py --fuser-check <fuser_check binary> --convert <convert_c2c.py>
Exit status: 0 pass, 1 fail, 77 skip (no torch).
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

try:
    import torch
    from torch import nn
except ImportError:
    print("test_convert_c2c: torch is not installed for this interpreter (Debian: python3-torch); skipping")
    sys.exit(77)

TOL = 1e-5


# The torch C2CProjector (state-dict names and forward as thu-nics/C2C rosetta/model/projector.py) is
# the fuser trainer's (fuser/train/c2c_torch.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fuser", "train"))
from c2c_torch import C2CProjector  # noqa: E402

# ---------------------------------------------------------------------------------------------

def load_converter(path):
    spec = importlib.util.spec_from_file_location("convert_c2c", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def gate_logit(t, is_v):
    """Receiver layer t % 4: 0 both on, 1 K only, 2 V only, 3 both off."""
    on = {0: True, 1: not is_v, 2: is_v, 3: False}[t % 4]
    return 0.3 + 0.1 * t if on else -0.2 - 0.1 * t


def build_checkpoint(root, c, seed):
    """Writes a released-layout C2C folder; returns the projectors (f32 copies of the saved weights)."""
    torch.manual_seed(seed)
    final = os.path.join(root, "final")
    os.makedirs(final, exist_ok=True)
    init = dict(source_dim=c["ds"], target_dim=c["dt"], source_num_heads=c["hs"], target_num_heads=c["ht"],
                hidden_dim=c["h"], intermediate_dim=c["i"], num_layers=c["L"])
    projectors = []
    for t in range(c["T"]):
        p = C2CProjector(**init)
        with torch.no_grad():
            for name, prm in p.named_parameters():
                if name.endswith("norm.weight"):
                    prm.copy_(1.0 + 0.1 * torch.randn_like(prm))
            p.key_gate_logit.fill_(gate_logit(t, False))
            p.value_gate_logit.fill_(gate_logit(t, True))
        saved = p.to(c["ckpt_dtype"])
        torch.save(saved.state_dict(), os.path.join(final, f"projector_{t}.pt"))
        dtype_name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[c["ckpt_dtype"]]
        meta = {"class": "C2CProjector", "init_args": dict(init, dropout=0.1, initial_temperature=1.0,
                                                           final_temperature=0.001, anneal_steps=1929,
                                                           dtype={"__type__": "torch.dtype", "value": dtype_name})}
        with open(os.path.join(final, f"projector_{t}.json"), "w") as f:
            json.dump(meta, f)
        projectors.append(saved.float().eval())
    layer_map = c["layer_map"]
    with open(os.path.join(final, "projector_config.json"), "w") as f:
        json.dump({"0": {"1": {str(t): [[layer_map[t], t]] for t in range(c["T"])}}}, f)
    recipe = {"model": {"base_model": "test/receiver", "teacher_model": "test/sharer", "include_response": False,
                        "is_do_alignment": c.get("align", False), "alignment_strategy": "longest",
                        "projector": {"type": "C2CProjector",
                                      "params": {"hidden_dim": c["h"], "intermediate_dim": c["i"],
                                                 "num_layers": c["L"], "dropout": 0.1}},
                        "mapping": "last_aligned"},
              "training": {"seed": 42}}
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(recipe, f)
    return projectors


def write_cases(conv, path, c, projectors, seed):
    """Random sharer/receiver K/V per layer, the torch forward, all into one safetensors file."""
    torch.manual_seed(seed)
    n = c["n"]
    sharer = {s: (torch.randn(1, c["hs"], n, c["ds"]), torch.randn(1, c["hs"], n, c["ds"])) for s in set(c["layer_map"])}
    tensors, meta, k = [], {}, 0
    for t, proj in enumerate(projectors):
        src_k, src_v = sharer[c["layer_map"][t]]
        tgt_k, tgt_v = torch.randn(1, c["ht"], n, c["dt"]), torch.randn(1, c["ht"], n, c["dt"])
        for is_v, p, src, tgt in ((0, "key", src_k, tgt_k), (1, "value", src_v, tgt_v)):
            with torch.no_grad():
                out = proj.branch(p, src, tgt)
            flat = lambda x: x[0].transpose(0, 1).reshape(n, -1).contiguous().float()  # noqa: E731
            tensors += [(f"case.{k}.sharer", flat(src)), (f"case.{k}.receiver", flat(tgt)),
                        (f"case.{k}.expected", flat(out))]
            meta[f"case.{k}.layer"] = str(t)
            meta[f"case.{k}.is_v"] = str(is_v)
            k += 1
    meta["n_cases"] = str(k)
    conv.write_safetensors(path, tensors, meta)


CASES = [
    # GQA-like K/V shapes (sharer 2 x 16 into receiver 4 x 8), last_aligned 6 -> 4, hidden 64, L = 3
    dict(name="gqa-h64-L3", S=6, T=4, hs=2, ds=16, ht=4, dt=8, h=64, i=96, L=3, n=37,
         ckpt_dtype=torch.float32, dtype="f32"),
    # MHA, identical shapes, L = 4 (two projection blocks), 300 tokens (crosses a 256-token chunk)
    dict(name="mha-h64-L4", S=3, T=3, hs=4, ds=16, ht=4, dt=16, h=64, i=64, L=4, n=300,
         ckpt_dtype=torch.float32, dtype="f32"),
    # Qwen3-0.6B <- Qwen2.5-0.5B K/V shapes at the released hidden size (two receiver layers)
    dict(name="qwen-h1024-L3", S=3, T=2, hs=2, ds=64, ht=8, dt=128, h=1024, i=1024, L=3, n=24,
         ckpt_dtype=torch.float32, dtype="f32", no_reference=True),
    # bf16 checkpoint (as released) converted to f32
    dict(name="bf16-to-f32", S=8, T=4, hs=2, ds=32, ht=4, dt=16, h=64, i=128, L=3, n=40,
         ckpt_dtype=torch.bfloat16, dtype="f32", align=True),
    # bf16 checkpoint kept in bf16 (the C++ matmul reads bf16 weights)
    dict(name="bf16-keep", S=4, T=4, hs=2, ds=16, ht=2, dt=32, h=64, i=64, L=3, n=20,
         ckpt_dtype=torch.bfloat16, dtype="keep"),
    # a non-last_aligned map: "explicit", sharer layer count given on the command line
    dict(name="explicit-map", S=5, T=4, hs=2, ds=16, ht=4, dt=8, h=64, i=64, L=3, n=16,
         ckpt_dtype=torch.float32, dtype="f32", layer_map=[4, 0, 2, 2], sharer_layers=5),
]


def run_case(args, conv, tmp, c, seed):
    if "layer_map" not in c:
        c["layer_map"] = conv.last_aligned_map(c["S"], c["T"])
    pair = os.path.join(tmp, c["name"], "pair")
    out = os.path.join(tmp, c["name"], "fuser")
    projectors = build_checkpoint(pair, c, seed)
    cmd = [sys.executable, args.convert, pair, out, "--dtype", c["dtype"], "--receiver-fingerprint", "0x00000000000000AB"]
    if "sharer_layers" in c:
        cmd += ["--sharer-layers", str(c["sharer_layers"])]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"[{c['name']}] convert_c2c failed:\n{r.stdout}{r.stderr}")
        return False
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    want_kind = "explicit" if "sharer_layers" in c else "last_aligned"
    want_dtype = "bf16" if c["dtype"] == "keep" else c["dtype"]
    checks = [
        (cfg["sharer"]["n_layer"], c["S"]), (cfg["receiver"]["n_layer"], c["T"]),
        (cfg["sharer"]["n_head_kv"], c["hs"]), (cfg["receiver"]["head_dim"], c["dt"]),
        (cfg["layer_map"], c["layer_map"]), (cfg["mapping"], want_kind), (cfg["dtype"], want_dtype),
        (cfg["projector"]["num_layers"], c["L"]), (cfg["receiver"].get("fingerprint"), "0x00000000000000ab"),
        ("fingerprint" in cfg["sharer"], False), (cfg["receiver"]["name"], "test/receiver"),
        (cfg["alignment"]["enabled"], c.get("align", False)),
    ]
    for got, want in checks:
        if got != want:
            print(f"[{c['name']}] config.json: got {got!r}, expected {want!r}")
            return False
    cases = os.path.join(tmp, c["name"], "cases.safetensors")
    write_cases(conv, cases, c, projectors, seed=7)
    cmd = [args.fuser_check, out, cases, "--tol", str(TOL), "--threads", "2"]
    if not c.get("no_reference"):
        cmd.append("--reference")
    r = subprocess.run(cmd, capture_output=True, text=True)
    print(f"[{c['name']}] fuser_check exit {r.returncode}\n{r.stdout}{r.stderr}")
    return r.returncode == 0


def run_error_cases(args, conv, tmp):
    """Broken checkpoints: convert_c2c.py must fail with a message naming the problem."""
    c = dict(name="broken", S=2, T=2, hs=1, ds=8, ht=1, dt=8, h=16, i=16, L=3, n=4, ckpt_dtype=torch.float32,
             layer_map=[0, 1])
    ok = True
    for what, edit, needle in (
            ("missing tensor", lambda sd: sd.pop("value_proj_out.bias"), "missing tensor 'value_proj_out.bias'"),
            ("bad shape", lambda sd: sd.__setitem__("key_in.bias", torch.zeros(3)), "'key_in.bias' has shape [3]")):
        pair = os.path.join(tmp, "broken-" + what.replace(" ", "-"))
        build_checkpoint(pair, c, seed=1)
        path = os.path.join(pair, "final", "projector_1.pt")
        sd = torch.load(path)
        edit(sd)
        torch.save(sd, path)
        r = subprocess.run([sys.executable, args.convert, pair, os.path.join(pair, "out")], capture_output=True, text=True)
        good = r.returncode == 1 and needle in r.stderr
        print(f"[error: {what}] exit {r.returncode}: {r.stderr.strip()}{'' if good else '  <- FAIL'}")
        ok = ok and good
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fuser-check", required=True)
    ap.add_argument("--convert", required=True)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    torch.set_num_threads(2)
    conv = load_converter(args.convert)
    tmp = tempfile.mkdtemp(prefix="kvb_convert_c2c_")
    results = [run_case(args, conv, tmp, c, seed=100 + k) for k, c in enumerate(CASES)]
    results.append(run_error_cases(args, conv, tmp))
    if not args.keep:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept {tmp}")
    failed = [c["name"] for c, r in zip(CASES, results) if not r] + ([] if results[-1] else ["error cases"])
    print("test_convert_c2c:", "PASS" if not failed else f"FAIL {failed}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
