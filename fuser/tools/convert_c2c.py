#!/usr/bin/python3
"""Convert a released C2C fuser checkpoint (thu-nics/C2C, C2CProjector) into a kvbridge fuser directory.

Input (one HF folder of nics-efc/C2C_Fuser, e.g. qwen3_0.6b+qwen2.5_0.5b_Fuser):
    <pair>/config.json                      training recipe (model.base_model = receiver,
                                            model.teacher_model = sharer, model.projector, mapping, alignment)
    <pair>/final/projector_{i}.pt           torch state dict of projector i (usually bf16)
    <pair>/final/projector_{i}.json         {"class": "C2CProjector", "init_args": {...}}
    <pair>/final/projector_config.json      {"0": {"1": {"<target layer>": [[source layer, projector i]], ...}}}
Output (format in fuser/README.md):
    <out>/config.json                       kvbridge fuser config
    <out>/model.safetensors                 tensors "projector.{t}.<C2C state-dict name>" for receiver layer t

Usage: /usr/bin/python3 convert_c2c.py <pair> <out> [--dtype f32|bf16|keep] [--sharer-layers N]
           [--sharer-fingerprint 0x...] [--receiver-fingerprint 0x...]
Needs torch (Debian: python3-torch). The safetensors writer is the small one below (no safetensors package).
Exit status: 0 on success, 1 with a message on any inconsistency.
"""

import argparse
import json
import os
import re
import struct
import sys

import torch

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
ST_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
CFG_NAMES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
ELEM_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}


class ConvertError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# safetensors (u64 LE header length, JSON header padded with spaces to 8 bytes, raw LE data)

class SafetensorsWriter:
    """Declare every tensor first, then write their bytes in declaration order."""

    def __init__(self, path, specs, metadata=None):
        # specs: [(name, torch dtype, shape list)]
        header, offset = {}, 0
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        self.expected = []
        for name, dtype, shape in specs:
            numel = 1
            for d in shape:
                numel *= int(d)
            size = numel * ELEM_BYTES[dtype]
            header[name] = {"dtype": ST_NAMES[dtype], "shape": [int(d) for d in shape],
                            "data_offsets": [offset, offset + size]}
            self.expected.append((name, dtype, [int(d) for d in shape]))
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * ((8 - len(text) % 8) % 8)
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(text)))
        self.f.write(text)
        self.next = 0

    def write(self, tensor):
        name, dtype, shape = self.expected[self.next]
        if tensor.dtype != dtype or list(tensor.shape) != shape:
            raise ConvertError(f"{name}: writing {tensor.dtype} {list(tensor.shape)}, declared {dtype} {shape}")
        t = tensor.detach().contiguous().reshape(-1)
        if dtype == torch.bfloat16:
            t = t.view(torch.int16)  # numpy has no bfloat16: write the raw 16-bit patterns
        self.f.write(t.cpu().numpy().tobytes())  # native order: little-endian, checked in main()
        self.next += 1

    def close(self):
        if self.next != len(self.expected):
            raise ConvertError(f"wrote {self.next} of {len(self.expected)} tensors")
        self.f.close()


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, torch.Tensor), written in order."""
    w = SafetensorsWriter(path, [(n, t.dtype, list(t.shape)) for n, t in tensors], metadata)
    for _, t in tensors:
        w.write(t)
    w.close()


# ---------------------------------------------------------------------------------------------
# C2CProjector layout

def branch_specs(p, in_dim, out_dim, heads, h, i, num_layers):
    """(state-dict name, shape) of one branch, p in {"key", "value"}, in kvbridge's file order."""
    def block(prefix, inter):
        return [(f"{prefix}.norm.weight", [h]), (f"{prefix}.w1.weight", [inter, h]), (f"{prefix}.w2.weight", [h, inter])]
    specs = [(f"{p}_in.weight", [h, in_dim]), (f"{p}_in.bias", [h])]
    specs += block(f"{p}_mlp1.blocks.0", i)
    specs += block(f"{p}_scalar_mlp2.blocks.0", h)
    specs += [(f"{p}_scalar_head.weight", [heads, h]), (f"{p}_scalar_head.bias", [heads])]
    for b in range(num_layers - 2):
        specs += block(f"{p}_proj_mlp2.blocks.{b}", i)
    specs += [(f"{p}_proj_out.weight", [out_dim, h]), (f"{p}_proj_out.bias", [out_dim]), (f"{p}_gate_logit", [])]
    return specs


def last_aligned_map(s, t):
    return [min(max(x + s - t, 0), s - 1) for x in range(t)]


def parse_fingerprint(text, what):
    if text is None:
        return None
    if not re.fullmatch(r"0[xX][0-9a-fA-F]{16}", text) or int(text, 16) == 0:
        raise ConvertError(f"--{what}-fingerprint must be 0x and 16 hex digits (non-zero), got {text!r}")
    return "0x" + text[2:].lower()


def read_json(path, what):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConvertError(f"{what} not found: {path}")
    except json.JSONDecodeError as e:
        raise ConvertError(f"{what} {path} is not JSON: {e}")


def read_layer_mapping(ckpt):
    """projector_config.json -> {target layer: (source layer, projector index)} for target model 0."""
    cfg = read_json(os.path.join(ckpt, "projector_config.json"), "projector_config.json")
    if "0" not in cfg or not isinstance(cfg["0"], dict) or not cfg["0"]:
        raise ConvertError("projector_config.json has no mapping for target model 0")
    sources = sorted(cfg["0"].keys(), key=int)
    if len(sources) > 1:
        print(f"convert_c2c: warning: {len(sources)} sharer models in projector_config.json; "
              f"using source model {sources[0]}", file=sys.stderr)
    mapping = {}
    for t, entries in cfg["0"][sources[0]].items():
        if not entries or not isinstance(entries[0], list) or len(entries[0]) != 2:
            raise ConvertError(f"projector_config.json: target layer {t} has no [source layer, projector] pair")
        # C2C uses only the first pair ("Use first projector result").
        mapping[int(t)] = (int(entries[0][0]), int(entries[0][1]))
    n = len(mapping)
    if sorted(mapping) != list(range(n)):
        raise ConvertError(f"projector_config.json maps target layers {sorted(mapping)}; expected 0..{n - 1} (every receiver layer)")
    return mapping


def convert(args):
    pair = args.pair
    ckpt = os.path.join(pair, "final") if os.path.isdir(os.path.join(pair, "final")) else pair
    recipe_path = os.path.join(pair, "config.json")
    recipe = read_json(recipe_path, "recipe config.json").get("model", {}) if os.path.exists(recipe_path) else {}

    mapping = read_layer_mapping(ckpt)
    n_target = len(mapping)
    present = {int(m.group(1)) for f in os.listdir(ckpt) if (m := re.fullmatch(r"projector_(\d+)\.pt", f))}
    for t, (_, idx) in mapping.items():
        if idx not in present:
            raise ConvertError(f"receiver layer {t} uses projector_{idx}.pt, which is not in {ckpt}")

    # Shapes: every projector must agree (one shape per fuser).
    init = None
    for t in range(n_target):
        idx = mapping[t][1]
        meta = read_json(os.path.join(ckpt, f"projector_{idx}.json"), f"projector_{idx}.json")
        if meta.get("class") != "C2CProjector":
            raise ConvertError(f"projector_{idx}.json: class {meta.get('class')!r} is not C2CProjector")
        a = meta.get("init_args", {})
        keys = ["source_dim", "target_dim", "source_num_heads", "target_num_heads", "hidden_dim",
                "intermediate_dim", "num_layers"]
        missing = [k for k in keys if not isinstance(a.get(k), int)]
        if missing:
            raise ConvertError(f"projector_{idx}.json: init_args lacks {missing}")
        shape = {k: a[k] for k in keys}
        if init is None:
            init = shape
        elif shape != init:
            raise ConvertError(f"projector_{idx}.json: init_args {shape} differ from projector 0's {init}")
    if init["num_layers"] < 2:
        raise ConvertError(f"num_layers {init['num_layers']} < 2 is not a C2CProjector")
    params = recipe.get("projector", {}).get("params", {})
    for k in ("hidden_dim", "intermediate_dim", "num_layers"):
        if k in params and params[k] != init[k]:
            raise ConvertError(f"recipe projector.params.{k} = {params[k]} but init_args say {init[k]}")
    ptype = recipe.get("projector", {}).get("type", "C2CProjector")
    if ptype != "C2CProjector":
        raise ConvertError(f"recipe projector.type {ptype!r} is not C2CProjector")

    sources = [mapping[t][0] for t in range(n_target)]
    if min(sources) < 0:
        raise ConvertError("projector_config.json has a negative source layer")
    if args.sharer_layers is not None:
        n_sharer = args.sharer_layers
        if max(sources) >= n_sharer:
            raise ConvertError(f"--sharer-layers {n_sharer} but the mapping uses sharer layer {max(sources)}")
    else:
        # last_aligned maps the last receiver layer to the last sharer layer.
        n_sharer = sources[-1] + 1
        if sources != last_aligned_map(n_sharer, n_target):
            n_sharer = max(sources) + 1
            print(f"convert_c2c: warning: the layer map is not last_aligned; sharer.n_layer set to {n_sharer} "
                  "(a lower bound: pass --sharer-layers)", file=sys.stderr)
    map_kind = "last_aligned" if sources == last_aligned_map(n_sharer, n_target) else "explicit"

    hs, ds = init["source_num_heads"], init["source_dim"]
    ht, dt = init["target_num_heads"], init["target_dim"]
    h, i, nl = init["hidden_dim"], init["intermediate_dim"], init["num_layers"]
    in_dim, out_dim = hs * ds + ht * dt, ht * dt

    def load(t):
        path = os.path.join(ckpt, f"projector_{mapping[t][1]}.pt")
        sd = torch.load(path, map_location="cpu")
        if not isinstance(sd, dict):
            raise ConvertError(f"{path} is not a state dict")
        return path, sd

    # Output dtype: one for the whole file.
    first_path, first = load(0)
    if args.dtype == "keep":
        weight_kinds = {first[n].dtype for n, _ in branch_specs("key", in_dim, out_dim, ht, h, i, nl) if n in first}
        if len(weight_kinds) != 1 or next(iter(weight_kinds)) not in ST_NAMES:
            raise ConvertError(f"--dtype keep: {first_path} holds {sorted(map(str, weight_kinds))}; pick --dtype f32 or bf16")
        out_dtype = next(iter(weight_kinds))
    else:
        out_dtype = DTYPES[args.dtype]

    os.makedirs(args.out, exist_ok=True)
    specs = []
    for t in range(n_target):
        for p in ("key", "value"):
            for name, shape in branch_specs(p, in_dim, out_dim, ht, h, i, nl):
                specs.append((f"projector.{t}.{name}", out_dtype, shape))
    writer = SafetensorsWriter(os.path.join(args.out, "model.safetensors"), specs,
                               {"format": "kvbridge-fuser", "source": "thu-nics/C2C C2CProjector"})
    for t in range(n_target):
        path, sd = (first_path, first) if t == 0 else load(t)
        expected = set()
        for p in ("key", "value"):
            for name, shape in branch_specs(p, in_dim, out_dim, ht, h, i, nl):
                expected.add(name)
                if name not in sd:
                    raise ConvertError(f"{path}: missing tensor {name!r}")
                v = sd[name]
                if list(v.shape) != shape and not (shape == [] and v.numel() == 1):
                    raise ConvertError(f"{path}: tensor {name!r} has shape {list(v.shape)}, expected {shape}")
                writer.write(v.reshape(shape).to(out_dtype))
        extra = sorted(set(sd) - expected - {"gate_temperature"})
        if extra:
            print(f"convert_c2c: warning: {path}: ignoring {extra}", file=sys.stderr)
        del sd
    writer.close()

    def side(name, n_layer, heads, dim, fp):
        s = {"name": name or "", "n_layer": n_layer, "n_head_kv": heads, "head_dim": dim}
        if fp:
            s["fingerprint"] = fp
        return s

    strategy = recipe.get("alignment_strategy", "first") or "first"
    if strategy not in ("first", "longest"):
        raise ConvertError(f"recipe alignment_strategy {strategy!r} is not first or longest")
    config = {
        "format": "kvbridge-fuser",
        "version": 1,
        "sharer": side(recipe.get("teacher_model"), n_sharer, hs, ds,
                       parse_fingerprint(args.sharer_fingerprint, "sharer")),
        "receiver": side(recipe.get("base_model"), n_target, ht, dt,
                         parse_fingerprint(args.receiver_fingerprint, "receiver")),
        "projector": {"type": "C2CProjector", "hidden_dim": h, "intermediate_dim": i, "num_layers": nl},
        "mapping": map_kind,
        "layer_map": sources,
        "alignment": {"enabled": bool(recipe.get("is_do_alignment", False)), "strategy": strategy},
        "weights": "model.safetensors",
        "dtype": CFG_NAMES[out_dtype],
    }
    with open(os.path.join(args.out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print(f"convert_c2c: {n_target} receiver layers <- {n_sharer} sharer layers ({map_kind}), "
          f"{len(specs)} tensors, {CFG_NAMES[out_dtype]} -> {args.out}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pair", help="C2C checkpoint folder (with config.json and final/)")
    ap.add_argument("out", help="kvbridge fuser directory to write")
    ap.add_argument("--dtype", choices=["f32", "bf16", "keep"], default="f32",
                    help="weight type of the output (keep: the checkpoint's own, f32/bf16/f16)")
    ap.add_argument("--sharer-layers", type=int, help="sharer n_layer (inferred for last_aligned maps)")
    ap.add_argument("--sharer-fingerprint", help="bind the fuser to a sharer model fingerprint (0x + 16 hex)")
    ap.add_argument("--receiver-fingerprint", help="bind the fuser to a receiver model fingerprint (0x + 16 hex)")
    args = ap.parse_args(argv)
    if sys.byteorder != "little":
        print("convert_c2c: error: safetensors is little-endian; run this on a little-endian machine", file=sys.stderr)
        return 1
    try:
        convert(args)
    except ConvertError as e:
        print(f"convert_c2c: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
