#!/usr/bin/env python3
"""Reads kvbridge's GGUF output back with llama.cpp's own reader (the PyPI `gguf` package).

Runs the built `kvbridge` binary to
  * `convert` stories260K (llama2.c .bin + tok512.bin) to f32, q8_0, q4_0, q4_1, q5_0 and q5_1 GGUFs
    (byte-equal to gguf.quants.quantize of the .bin floats), and compares them
    with an independent numpy parse of the .bin and tok512.bin (models README section 2) and with
    the official stories260K.gguf (section 1);
  * `synth` small presets and small variants of real shapes (stories260K, stories15M with 2 layers,
    stories110M with 1 layer and a 2048 vocab) in f32, f16, bf16 and q8_0, and checks names,
    shapes, types and metadata against the preset, the values' distribution, byte equality of each
    dtype with llama.cpp's reference conversion (gguf.quants.quantize) of the f32 file, and
    determinism per seed;
  * `synth` the qwen2, qwen3 and llama 3.2 families (GGUF and, same seed, `--format hf` sharded),
    and checks the arch keys, that every tensor name is one llama.cpp declares for the arch, the
    byte-level BPE vocab keys, and that the GGUF holds the Hugging Face tensors (mapped with gguf's
    own HF -> GGUF name map, Q/K rows permuted as convert_hf_to_gguf.py does for llama).

Usage: test_gguf_readback.py --kvbridge build/client/kvbridge [--models DIR]
The models folder is $KVBRIDGE_MODELS when set, else --models, else ../../../shared/models.
Prints "gguf readback: N passed, M failed"; exits 1 on any failure, 77 when the models are missing.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
    import gguf.quants
except ImportError as e:  # pragma: no cover
    print(f"gguf readback: cannot import the gguf reader ({e}).\n"
          f"Install llama.cpp's Python package with:  pip install gguf numpy", file=sys.stderr)
    sys.exit(1)

F32, F16, BF16, Q8_0 = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16,
                        GGMLQuantizationType.Q8_0)
Q4_0, Q4_1, Q5_0, Q5_1 = (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q5_0,
                          GGMLQuantizationType.Q5_1)
QTYPE = {"f32": F32, "f16": F16, "bf16": BF16, "q8_0": Q8_0, "q4_0": Q4_0, "q4_1": Q4_1, "q5_0": Q5_0, "q5_1": Q5_1}
FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32, "q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9}
BLOCK_TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
SPACE = "\u2581"


class Checker:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.context = ""

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL [{self.context}] {what}", file=sys.stderr)
        return ok

    def equal(self, got, want, what):
        if got == want:
            return self.check(True, what)
        if isinstance(got, list) and isinstance(want, list):
            i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            detail = (f"lengths {len(got)} vs {len(want)}, first difference at [{i}]: "
                      f"{got[i] if i < len(got) else '<end>'!r} vs {want[i] if i < len(want) else '<end>'!r}")
        else:
            detail = f"got {got!r:.200}, expected {want!r:.200}"
        return self.check(False, f"{what}: {detail}")


C = Checker()


def run(kvbridge, *args):
    p = subprocess.run([kvbridge, *args], capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stdout, p.stderr, file=sys.stderr)
    return p


# ---- reading with gguf.GGUFReader ----

def field(r, key):
    f = r.fields.get(key)
    return None if f is None else f.contents()


def field_type(r, key):
    f = r.fields.get(key)
    return None if f is None else f.types[0]


def tensors(r):
    return {t.name: t for t in r.tensors}


def raw(t):
    return np.ascontiguousarray(t.data).tobytes()


def as_f32(t):
    """A tensor's values as float32 [rows][cols] (numpy order), dequantized when needed."""
    a = np.asarray(t.data)
    if t.tensor_type == F32:
        return a.astype(np.float32)
    return gguf.quants.dequantize(a, t.tensor_type).astype(np.float32)


# ---- independent parses of the llama2.c files (models README section 2) ----

def parse_llama2c(path):
    buf = open(path, "rb").read()
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = np.frombuffer(buf, "<i4", 7).tolist()
    shared = vocab > 0
    vocab = abs(vocab)
    head_dim = dim // n_heads
    kv_dim = n_kv_heads * head_dim
    off = [28]

    def take(*shape):
        n = int(np.prod(shape))
        a = np.frombuffer(buf, "<f4", n, off[0]).reshape(shape)
        off[0] += 4 * n
        return a

    w = {"token_embd": take(vocab, dim)}
    w["attn_norm"] = take(n_layers, dim)
    w["attn_q"] = take(n_layers, dim, dim)
    w["attn_k"] = take(n_layers, kv_dim, dim)
    w["attn_v"] = take(n_layers, kv_dim, dim)
    w["attn_output"] = take(n_layers, dim, dim)
    w["ffn_norm"] = take(n_layers, dim)
    w["ffn_gate"] = take(n_layers, hidden, dim)  # w1
    w["ffn_down"] = take(n_layers, dim, hidden)  # w2
    w["ffn_up"] = take(n_layers, hidden, dim)    # w3
    w["output_norm"] = take(dim)
    take(seq_len, head_dim)  # freq_cis_real + freq_cis_imag
    if not shared:
        w["output"] = take(vocab, dim)
    assert off[0] == len(buf), f"{path}: {len(buf) - off[0]} trailing bytes"
    hp = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, vocab=vocab,
              seq_len=seq_len, head_dim=head_dim, shared=shared)
    return hp, w


def expected_tensors_llama2c(hp, w):
    """name -> float32 [rows][cols] array, as kvbridge should write them (tied: no output)."""
    out = {"token_embd.weight": w["token_embd"], "output_norm.weight": w["output_norm"]}
    if "output" in w:
        out["output.weight"] = w["output"]
    for i in range(hp["n_layers"]):
        for k in ("attn_q", "attn_k", "attn_v", "attn_output", "attn_norm", "ffn_gate", "ffn_down", "ffn_up",
                  "ffn_norm"):
            out[f"blk.{i}.{k}.weight"] = w[k][i]
    return out


def parse_tok512(path, n_vocab):
    buf = open(path, "rb").read()
    off = 4  # int32 max_token_length
    pieces, scores, types = [], [], []
    for i in range(n_vocab):
        score = float(np.frombuffer(buf, "<f4", 1, off)[0])
        n = int(np.frombuffer(buf, "<i4", 1, off + 4)[0])
        piece = buf[off + 8: off + 8 + n].decode("utf-8")
        off += 8 + n
        piece = {"\n<s>\n": "<s>", "\n</s>\n": "</s>"}.get(piece, piece).replace(" ", SPACE)
        pieces.append(piece)
        scores.append(score)
        if i == 0:
            types.append(2)
        elif i in (1, 2):
            types.append(3)
        elif re.fullmatch(r"<0x[0-9A-F]{2}>", piece):
            types.append(6)
        else:
            types.append(1)
    return pieces, scores, types


# ---- checks shared by convert and synth ----

def check_layout(r, n_tensors):
    C.equal(len(r.tensors), n_tensors, "tensor count")
    C.check(all(t.data_offset % 32 == 0 for t in r.tensors), "every tensor starts 32-byte aligned")
    C.equal(field(r, "GGUF.version"), 3, "GGUF version")


def check_hparams(r, *, name, file_type, n_ctx, n_embd, n_layer, n_ff, n_head, n_head_kv, head_dim, theta, eps):
    want = {
        "general.architecture": "llama", "general.name": name, "general.file_type": file_type,
        "llama.context_length": n_ctx, "llama.embedding_length": n_embd, "llama.block_count": n_layer,
        "llama.feed_forward_length": n_ff, "llama.attention.head_count": n_head,
        "llama.attention.head_count_kv": n_head_kv, "llama.rope.dimension_count": head_dim,
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False, "tokenizer.ggml.add_space_prefix": True,
    }
    for k, v in want.items():
        C.equal(field(r, k), v, k)
    # llama.cpp reads these keys with exact types.
    for k in ("general.file_type", "llama.context_length", "llama.embedding_length", "llama.block_count",
              "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
              "llama.rope.dimension_count", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        C.equal(field_type(r, k), GGUFValueType.UINT32, f"{k} type")
    C.equal(field_type(r, "llama.attention.layer_norm_rms_epsilon"), GGUFValueType.FLOAT32, "eps type")
    C.equal(float(np.float32(field(r, "llama.attention.layer_norm_rms_epsilon"))), float(np.float32(eps)), "eps")
    C.equal(float(field(r, "llama.rope.freq_base")), float(theta), "rope.freq_base")
    odd = head_dim * n_head != n_embd
    C.equal(field(r, "llama.attention.key_length"), head_dim if odd else None, "key_length")
    C.equal(field(r, "llama.attention.value_length"), head_dim if odd else None, "value_length")


def expected_qtype(name, cols, dtype):
    if name.endswith("_norm.weight"):
        return F32
    if dtype in BLOCK_TYPES and cols % 32 != 0:
        return F16  # llama.cpp's converter falls back to f16 for rows that are not whole blocks
    return QTYPE[dtype]


def reference_bytes(f32, qtype):
    """llama.cpp's reference conversion of a float32 [rows][cols] array."""
    f32 = np.ascontiguousarray(f32, dtype=np.float32)
    if qtype == F32:
        return f32.tobytes()
    return np.ascontiguousarray(gguf.quants.quantize(f32, qtype)).tobytes()


# ---- convert ----

def test_convert(kvbridge, models, tmp):
    bin_path = os.path.join(models, "stories260K", "stories260K.bin")
    tok_path = os.path.join(models, "stories260K", "tok512.bin")
    official = GGUFReader(os.path.join(models, "stories260K", "stories260K.gguf"))
    official_t = tensors(official)
    hp, w = parse_llama2c(bin_path)
    expect = expected_tensors_llama2c(hp, w)
    pieces, scores, types = parse_tok512(tok_path, hp["vocab"])

    for dtype in ("f32",) + BLOCK_TYPES:
        C.context = f"convert stories260K {dtype}"
        out = os.path.join(tmp, f"stories260K-{dtype}.gguf")
        p = run(kvbridge, "convert", "--model", bin_path, "--tokenizer", tok_path, "--out", out, "--dtype", dtype)
        if not C.equal(p.returncode, 0, "kvbridge convert exit code"):
            continue
        C.check("wrote" in p.stderr, "convert prints a summary line to stderr")
        r = GGUFReader(out)
        check_layout(r, 2 + 9 * hp["n_layers"])
        check_hparams(r, name="stories260K", file_type=FILE_TYPE[dtype], n_ctx=hp["seq_len"], n_embd=hp["dim"],
                      n_layer=hp["n_layers"], n_ff=hp["hidden"], n_head=hp["n_heads"], n_head_kv=hp["n_kv_heads"],
                      head_dim=hp["head_dim"], theta=10000.0, eps=1e-5)
        C.equal(field(r, "tokenizer.ggml.tokens"), pieces, "tokens == tok512.bin")
        C.check(np.array_equal(np.float32(field(r, "tokenizer.ggml.scores")), np.float32(scores)),
                "scores == tok512.bin")
        C.equal(field(r, "tokenizer.ggml.token_type"), types, "token types")
        for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            C.equal(field(r, k), field(official, k), f"{k} == official stories260K.gguf")

        ours = tensors(r)
        C.equal(sorted(ours), sorted(expect), "tensor names")
        for name, arr in expect.items():
            t = ours.get(name)
            if not C.check(t is not None, f"{name} present"):
                continue
            rows, cols = (1, arr.shape[0]) if arr.ndim == 1 else arr.shape
            C.equal([int(x) for x in t.shape], [cols] if arr.ndim == 1 else [cols, rows], f"{name} ne")
            qt = expected_qtype(name, cols, dtype)
            C.equal(t.tensor_type, qt, f"{name} type")
            # Bit-exact against llama.cpp's own conversion of the llama2.c floats.
            C.check(raw(t) == reference_bytes(arr, qt), f"{name} bytes == gguf.quants.quantize(.bin floats)")
            if qt == Q8_0:
                err = np.abs(as_f32(t).reshape(arr.shape) - arr).max()
                amax = np.abs(arr).max()
                C.check(err <= amax / 127 * 0.57, f"{name} q8_0 dequantizes within half a step ({err})")
        if dtype == "f32":
            for name, t in official_t.items():
                mine = ours.get("token_embd.weight" if name == "output.weight" else name)
                C.check(mine is not None and raw(mine) == raw(t), f"{name} bytes == official stories260K.gguf")


# ---- synth ----

PRESETS = {  # independent of the C++ table: the real models' published shapes
    "stories260K": dict(n_layer=5, n_embd=64, n_head=8, n_head_kv=4, head_dim=8, n_ff=172, n_vocab=512, n_ctx=512),
    "stories15M": dict(n_layer=6, n_embd=288, n_head=6, n_head_kv=6, head_dim=48, n_ff=768, n_vocab=32000,
                       n_ctx=256),
    "stories110M": dict(n_layer=12, n_embd=768, n_head=12, n_head_kv=12, head_dim=64, n_ff=2048, n_vocab=32000,
                        n_ctx=1024),
}


def shape_of(spec):
    name, _, over = spec.partition(":")
    hp = dict(PRESETS[name])
    for kv in filter(None, over.split(",")):
        k, v = kv.split("=")
        hp[{"n_layer": "n_layer", "n_vocab": "n_vocab", "n_ctx": "n_ctx"}[k]] = int(v)
    return hp


def synth_tensor_shapes(hp):
    """name -> (rows, cols); norms have rows 1 and are 1-D. Tied output: no output.weight."""
    d, q, kv, ff = hp["n_embd"], hp["n_head"] * hp["head_dim"], hp["n_head_kv"] * hp["head_dim"], hp["n_ff"]
    s = {"token_embd.weight": (hp["n_vocab"], d), "output_norm.weight": (1, d)}
    for i in range(hp["n_layer"]):
        s.update({f"blk.{i}.attn_q.weight": (q, d), f"blk.{i}.attn_k.weight": (kv, d),
                  f"blk.{i}.attn_v.weight": (kv, d), f"blk.{i}.attn_output.weight": (d, q),
                  f"blk.{i}.attn_norm.weight": (1, d), f"blk.{i}.ffn_gate.weight": (ff, d),
                  f"blk.{i}.ffn_down.weight": (d, ff), f"blk.{i}.ffn_up.weight": (ff, d),
                  f"blk.{i}.ffn_norm.weight": (1, d)})
    return s


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def check_synth_vocab(r, n_vocab):
    tokens = field(r, "tokenizer.ggml.tokens")
    scores = np.float32(field(r, "tokenizer.ggml.scores"))
    types = field(r, "tokenizer.ggml.token_type")
    C.equal(len(tokens), n_vocab, "vocab size")
    C.equal(tokens[:3], ["<unk>", "<s>", "</s>"], "special pieces")
    C.equal(tokens[3:259], [f"<0x{b:02X}>" for b in range(256)], "byte pieces")
    C.equal(len(set(tokens)), n_vocab, "pieces are distinct")
    C.equal(types[:259], [2, 3, 3] + [6] * 256, "special and byte token types")
    C.check(all(t == 1 for t in types[259:]), "other tokens are normal")
    C.check(bool(np.all(np.diff(scores[259:]) < 0)), "normal scores strictly decrease")
    C.equal(tokens[259], SPACE, "first normal piece is the space")


def test_synth(kvbridge, tmp):
    C.context = "synth --list"
    p = run(kvbridge, "synth", "--list")
    C.equal(p.returncode, 0, "exit code")
    for name in ("stories260K", "stories15M", "stories110M", "qwen3-0.6b", "llama3.2-1b", "llama3-8b"):
        C.check(name in p.stdout, f"--list shows {name}")
    C.context = "synth unknown shape"
    p = subprocess.run([kvbridge, "synth", "--shape", "no-such-model", "--out", os.path.join(tmp, "x.gguf")],
                       capture_output=True, text=True)
    C.check(p.returncode != 0 and "stories110M" in p.stderr, "unknown shape fails and lists the presets")

    for spec in ("stories260K", "stories15M:n_layer=2", "stories110M:n_layer=1,n_vocab=2048"):
        hp = shape_of(spec)
        shapes = synth_tensor_shapes(hp)
        f32_values = None
        for dtype in ("f32", "f16", "bf16", "q8_0"):
            C.context = f"synth {spec} {dtype}"
            out = os.path.join(tmp, f"synth-{dtype}.gguf")
            p = run(kvbridge, "synth", "--shape", spec, "--out", out, "--dtype", dtype, "--seed", "7")
            if not C.equal(p.returncode, 0, "kvbridge synth exit code"):
                continue
            r = GGUFReader(out)
            check_layout(r, len(shapes))
            check_hparams(r, name=f"synth-{spec}", file_type=FILE_TYPE[dtype], n_ctx=hp["n_ctx"],
                          n_embd=hp["n_embd"], n_layer=hp["n_layer"], n_ff=hp["n_ff"], n_head=hp["n_head"],
                          n_head_kv=hp["n_head_kv"], head_dim=hp["head_dim"], theta=10000.0, eps=1e-5)
            if dtype == "f32":
                check_synth_vocab(r, hp["n_vocab"])
            ts = tensors(r)
            C.equal(sorted(ts), sorted(shapes), "tensor names")
            values = {}
            for name, (rows, cols) in shapes.items():
                t = ts.get(name)
                if t is None:
                    continue
                is_norm = name.endswith("_norm.weight")
                C.equal([int(x) for x in t.shape], [cols] if is_norm else [cols, rows], f"{name} ne")
                qt = expected_qtype(name, cols, dtype)
                C.equal(t.tensor_type, qt, f"{name} type")
                v = as_f32(t).reshape(-1) if is_norm else as_f32(t).reshape(rows, cols)
                values[name] = v
                if is_norm:
                    C.check(bool(np.all(v == 1.0)), f"{name} is all ones")
                elif dtype == "f32":
                    C.check(float(np.abs(v).max()) <= 0.0346411, f"{name} within 0.02*sqrt(3)")
                    if v.size >= 100_000:
                        C.check(abs(float(v.std()) - 0.02) < 0.0005, f"{name} std {float(v.std()):.5f} ~ 0.02")
                        C.check(abs(float(v.mean())) < 0.0005, f"{name} mean ~ 0")
                if f32_values is not None and dtype != "f32":
                    # Same seed: this dtype's bytes are llama.cpp's conversion of the f32 file's values.
                    C.check(raw(t) == reference_bytes(f32_values[name], qt),
                            f"{name} bytes == gguf.quants.quantize(f32 synth)")
            if dtype == "f32":
                f32_values = values
            if dtype in ("f32", "q8_0"):
                again = os.path.join(tmp, f"synth-{dtype}-again.gguf")
                other = os.path.join(tmp, f"synth-{dtype}-seed8.gguf")
                run(kvbridge, "synth", "--shape", spec, "--out", again, "--dtype", dtype, "--seed", "7")
                run(kvbridge, "synth", "--shape", spec, "--out", other, "--dtype", dtype, "--seed", "8")
                C.check(os.path.exists(again) and sha(again) == sha(out), "same seed gives identical bytes")
                if os.path.exists(other):
                    ro = tensors(GGUFReader(other))
                    diff = [n for n in shapes if not n.endswith("_norm.weight") and raw(ro[n]) == raw(ts[n])]
                    C.equal(diff, [], "matrices that did not change with the seed")
                for pth in (again, other):
                    if os.path.exists(pth):
                        os.remove(pth)
            os.remove(out)


# ---- synth: the other families, GGUF against the Hugging Face files of the same seed ----

FAMILY_SPECS = [  # (spec, llama.cpp arch, pre-tokenizer, specials at the end of the vocab)
    ("qwen2.5-0.5b:n_layer=2,n_embd=64,n_head=4,n_head_kv=2,head_dim=16,n_ff=96,n_vocab=1024", "qwen2", "qwen2",
     ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
    ("qwen3-0.6b:n_layer=2,n_embd=64,n_head=4,n_head_kv=2,head_dim=32,n_ff=96,n_vocab=1024", "qwen3", "qwen2",
     ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
    ("llama3.2-1b:n_layer=2,n_embd=64,n_head=4,n_head_kv=2,head_dim=16,n_ff=96,n_vocab=1024", "llama", "llama-bpe",
     ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
]


def read_safetensors(path):
    """name -> float32 array, with numpy only (F32/F16/BF16)."""
    buf = open(path, "rb").read()
    n = int.from_bytes(buf[:8], "little")
    header = json.loads(buf[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        raw_bytes = buf[base + b: base + end]
        if e["dtype"] == "F32":
            a = np.frombuffer(raw_bytes, "<f4")
        elif e["dtype"] == "F16":
            a = np.frombuffer(raw_bytes, "<f2").astype(np.float32)
        else:  # BF16
            a = (np.frombuffer(raw_bytes, "<u2").astype(np.uint32) << 16).view(np.float32)
        out[name] = a.reshape(e["shape"])
    return out


def hf_weights(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    files = (sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index)
             else ["model.safetensors"])
    w = {}
    for f in files:
        w.update(read_safetensors(os.path.join(model_dir, f)))
    return w


def llama_cpp_permute(weights, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute: HF rotate-half rows -> GGUF adjacent pairs."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def test_synth_families(kvbridge, tmp):
    for spec, arch, pre, specials in FAMILY_SPECS:
        C.context = f"synth {spec}"
        hp = dict(kv.split("=") for kv in spec.split(":")[1].split(","))
        hp = {k: int(v) for k, v in hp.items()}
        gguf_path = os.path.join(tmp, "family.gguf")
        hf_dir = os.path.join(tmp, "family-hf")
        p = run(kvbridge, "synth", "--shape", spec, "--out", gguf_path, "--seed", "3")
        q = run(kvbridge, "synth", "--shape", spec, "--out", hf_dir, "--seed", "3", "--format", "hf",
                "--shard-size", "200000")
        if not (C.equal(p.returncode, 0, "synth gguf exit code") and C.equal(q.returncode, 0, "synth hf exit code")):
            continue
        r = GGUFReader(gguf_path)
        C.equal(field(r, "general.architecture"), arch, "general.architecture")
        for k, want in (("block_count", hp["n_layer"]), ("embedding_length", hp["n_embd"]),
                        ("feed_forward_length", hp["n_ff"]), ("attention.head_count", hp["n_head"]),
                        ("attention.head_count_kv", hp["n_head_kv"]), ("rope.dimension_count", hp["head_dim"])):
            C.equal(field(r, f"{arch}.{k}"), want, f"{arch}.{k}")
            C.equal(field_type(r, f"{arch}.{k}"), GGUFValueType.UINT32, f"{arch}.{k} type")
        odd = hp["head_dim"] * hp["n_head"] != hp["n_embd"]
        C.equal(field(r, f"{arch}.attention.key_length"), hp["head_dim"] if odd else None, "key_length")
        C.equal(field(r, "tokenizer.ggml.model"), "gpt2", "tokenizer model")
        C.equal(field(r, "tokenizer.ggml.pre"), pre, "tokenizer pre")
        tokens = field(r, "tokenizer.ggml.tokens")
        C.equal(len(tokens), hp["n_vocab"], "vocab size")
        C.equal(tokens[-len(specials):], specials, "special tokens at the end")
        C.equal(tokens[:3], ["!", '"', "#"], "byte-level symbols first")
        types = field(r, "tokenizer.ggml.token_type")
        C.check(all(t == 3 for t in types[-len(specials):]) and all(t == 1 for t in types[:-len(specials)]),
                "token types: normal, then control specials")
        merges = field(r, "tokenizer.ggml.merges")
        C.equal(len(merges), hp["n_vocab"] - 256 - len(specials), "one merge per merged piece")
        C.check(all("".join(m.split(" ")) == tokens[256 + i] for i, m in enumerate(merges)),
                "merge i builds piece 256 + i")
        C.check(bool(field(r, "tokenizer.chat_template")), "chat template present")

        # Tensor names: exactly llama.cpp's names for this arch (gguf's own HF -> GGUF name map).
        march = {"qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3, "llama": gguf.MODEL_ARCH.LLAMA}[arch]
        allowed = set()
        for t in gguf.MODEL_TENSORS[march]:
            base = gguf.TENSOR_NAMES[t]
            for i in range(hp["n_layer"]):
                allowed.update({base.format(bid=i) + ".weight", base.format(bid=i) + ".bias"})
        ts = tensors(r)
        C.equal(sorted(n for n in ts if n not in allowed), [], "tensors llama.cpp does not declare for the arch")
        if arch == "llama":
            rf = ts.get("rope_freqs.weight")
            if C.check(rf is not None, "rope_freqs.weight present (llama3 scaling)"):
                C.equal([int(x) for x in rf.shape], [hp["head_dim"] // 2], "rope_freqs shape")

        # The same model as the Hugging Face directory: names via llama.cpp's map, Q/K permuted for llama.
        hf = hf_weights(hf_dir)
        C.check(os.path.exists(os.path.join(hf_dir, "model.safetensors.index.json")), "--shard-size shards")
        cfg = json.load(open(os.path.join(hf_dir, "config.json")))
        C.equal(cfg["model_type"], arch, "config.json model_type")
        tmap = gguf.get_tensor_name_map(march, hp["n_layer"])
        mapped = {}
        for name, a in hf.items():
            gname = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
            if not C.check(gname is not None, f"llama.cpp maps {name}"):
                continue
            mapped[gname] = a
        C.equal(sorted(mapped), sorted(n for n in ts if n != "rope_freqs.weight"), "HF and GGUF hold the same tensors")
        for gname, a in mapped.items():
            t = ts.get(gname)
            if t is None:
                continue
            if arch == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight")):
                heads = hp["n_head"] if "attn_q" in gname else hp["n_head_kv"]
                a = llama_cpp_permute(a, heads)
            C.check(np.array_equal(as_f32(t).reshape(a.shape), a), f"{gname} == HF {gname} (after llama.cpp's permute)")
        shutil.rmtree(hf_dir, ignore_errors=True)
        os.remove(gguf_path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvbridge", required=True, help="path to the built kvbridge binary")
    ap.add_argument("--models", default=None, help="models folder (overridden by $KVBRIDGE_MODELS)")
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    models = (os.environ.get("KVBRIDGE_MODELS") or args.models
              or os.path.normpath(os.path.join(here, "..", "..", "..", "shared", "models")))
    if not os.path.exists(os.path.join(models, "stories260K", "stories260K.bin")):
        print(f"gguf readback: SKIP, no stories260K in {models} (set KVBRIDGE_MODELS)", file=sys.stderr)
        return 77
    if not os.access(args.kvbridge, os.X_OK):
        print(f"gguf readback: {args.kvbridge} is not an executable kvbridge binary", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="kvb_gguf_readback_") as tmp:
        test_convert(args.kvbridge, models, tmp)
        test_synth(args.kvbridge, tmp)
        test_synth_families(args.kvbridge, tmp)
    print(f"gguf readback: {C.passed} passed, {C.failed} failed")
    return 1 if C.failed else 0


if __name__ == "__main__":
    sys.exit(main())
