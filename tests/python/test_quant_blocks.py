#!/usr/bin/env python3
"""kvbridge's dequantization of GGUF block types against llama.cpp's own Python (gguf.quants), bit for bit.

For each of Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K this writes (with
gguf.GGUFWriter) a one-layer llama GGUF whose every matrix is random blocks of that type: random
quant bytes, and f16 scale fields drawn from ordinary values and edge values (0, -0, the smallest and
largest subnormals, the smallest normal, +-65504), plus all-zero blocks. `kvbridge convert --dtype f32`
then loads it (the engine's GGUF reader and dequantization) and writes every matrix as f32, and each
must equal gguf.quants.dequantize of the blocks bit for bit. Also: a tensor truncated by one byte and
an unknown type id are refused with a message that names the tensor.

Usage: test_quant_blocks.py --kvbridge build/client/kvbridge
Exits 1 on any failure, 77 (skip) when numpy or gguf are missing.
"""
import argparse
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as Q
    import gguf.quants
except ImportError as e:  # pragma: no cover
    print(f"quant blocks: skipped, cannot import gguf/numpy ({e}); pip install gguf numpy", file=sys.stderr)
    sys.exit(77)

N_EMBD, N_FF, N_HEAD, N_VOCAB = 256, 512, 4, 64
TYPES = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
# Byte offsets of each block's f16 scale fields (ggml-common.h layouts).
SCALE_OFFSETS = {Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0], Q.Q2_K: [80, 82],
                 Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}
EDGE_F16 = [0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00, 0xBC00]
MATRICES = {  # name: (rows, cols)
    "token_embd.weight": (N_VOCAB, N_EMBD), "output.weight": (N_VOCAB, N_EMBD),
    "blk.0.attn_q.weight": (N_EMBD, N_EMBD), "blk.0.attn_k.weight": (N_EMBD, N_EMBD),
    "blk.0.attn_v.weight": (N_EMBD, N_EMBD), "blk.0.attn_output.weight": (N_EMBD, N_EMBD),
    "blk.0.ffn_gate.weight": (N_FF, N_EMBD), "blk.0.ffn_up.weight": (N_FF, N_EMBD),
    "blk.0.ffn_down.weight": (N_EMBD, N_FF),
}
failures = 0


def check(ok, what):
    global failures
    if not ok:
        failures += 1
        print(f"FAIL: {what}", file=sys.stderr)
    return ok


def random_blocks(qtype, rows, cols, rng):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    b = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in SCALE_OFFSETS[qtype]:
        ordinary = np.float16(rng.uniform(-0.1, 0.1, size=n_blocks)).view(np.uint16)
        edge = np.array(EDGE_F16, dtype=np.uint16)[rng.integers(0, len(EDGE_F16), size=n_blocks)]
        h = np.where(rng.random(n_blocks) < 0.25, edge, ordinary).astype("<u2")
        b[:, off:off + 2] = h.view(np.uint8).reshape(n_blocks, 2)
    b[rng.random(n_blocks) < 0.03] = 0  # all-zero blocks
    return b.reshape(rows, cols // block * size)


def write_model(path, qtype, rng, truncate=None):
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(128)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(1)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    blocks = {}
    for name, (rows, cols) in MATRICES.items():
        blocks[name] = random_blocks(qtype, rows, cols, rng)
        data = blocks[name]
        if truncate == name:
            data = data.reshape(-1)[:-1]  # one byte short: a raw shape the reader must refuse
            w.add_tensor(name, data, raw_shape=(data.size,), raw_dtype=Q.I8)
        else:
            w.add_tensor(name, data, raw_dtype=qtype)
    for name in ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"):
        w.add_tensor(name, np.ones(N_EMBD, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return blocks


def test_type(kvbridge, tmp, qtype, rng):
    src, out = os.path.join(tmp, f"{qtype.name}.gguf"), os.path.join(tmp, f"{qtype.name}-f32.gguf")
    blocks = write_model(src, qtype, rng)
    p = subprocess.run([kvbridge, "convert", "--model", src, "--dtype", "f32", "--out", out],
                       capture_output=True, text=True)
    if not check(p.returncode == 0, f"{qtype.name}: kvbridge convert: {p.stderr.strip()}"):
        return
    got = {t.name: t for t in gguf.GGUFReader(out).tensors}
    for name, b in blocks.items():
        want = gguf.quants.dequantize(b, qtype).astype(np.float32)
        t = got.get(name)
        if not check(t is not None and t.tensor_type == Q.F32, f"{qtype.name} {name}: written as f32"):
            continue
        mine = np.asarray(t.data, dtype=np.float32).reshape(want.shape)
        same = np.array_equal(mine.view(np.uint32), want.view(np.uint32))
        bad = int(np.count_nonzero(mine.view(np.uint32) != want.view(np.uint32)))
        check(same, f"{qtype.name} {name}: {bad} of {want.size} values differ from gguf.quants.dequantize")


def test_bad_files(kvbridge, tmp, rng):
    src = os.path.join(tmp, "truncated.gguf")
    write_model(src, Q.Q4_K, rng, truncate="blk.0.ffn_up.weight")
    p = subprocess.run([kvbridge, "info", "--model", src], capture_output=True, text=True)
    check(p.returncode != 0 and "ffn_up" in p.stderr, f"a truncated tensor is refused by name: {p.stderr.strip()}")
    # An unknown ggml type id (IQ2_XXS = 16 is a real type kvbridge does not run).
    src = os.path.join(tmp, "iq.gguf")
    write_model(src, Q.Q4_0, rng)
    data = bytearray(open(src, "rb").read())
    needle = b"blk.0.attn_v.weight"
    at = data.find(needle) + len(needle)
    n_dims = int.from_bytes(data[at:at + 4], "little")
    type_at = at + 4 + 8 * n_dims
    data[type_at:type_at + 4] = (16).to_bytes(4, "little")
    open(src, "wb").write(bytes(data))
    p = subprocess.run([kvbridge, "info", "--model", src], capture_output=True, text=True)
    check(p.returncode != 0 and "attn_v" in p.stderr and "iq2_xxs" in p.stderr,
          f"an unsupported type is refused by name: {p.stderr.strip()}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvbridge", required=True)
    args = ap.parse_args()
    rng = np.random.default_rng(2026)
    with tempfile.TemporaryDirectory() as tmp:
        for qtype in TYPES:
            test_type(args.kvbridge, tmp, qtype, rng)
        test_bad_files(args.kvbridge, tmp, rng)
    print(f"quant blocks: {len(TYPES)} types, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
