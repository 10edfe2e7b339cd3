#!/usr/bin/python3
"""Train a C2C fuser: only the projectors learn, on the receiver's next-token loss with the context fused.

    train.py --template FUSER_DIR --receiver RECEIVER.gguf --train TRAIN.safetensors --val VAL.safetensors
             --out OUT_DIR [--steps 300] [--batch 16] [--lr 1e-3] [--seed 1] ...

FUSER_DIR is a fuser directory of the pair (`kvbridge fuser synth --gates on ...`): its config.json
gives the shapes, the layer map, the alignment and the fingerprints, and is copied to OUT_DIR
unchanged but for `dtype` (f32). TRAIN / VAL are `kvbridge fuser dump` files: the receiver's tokens
of each example (context, then continuation) and the sharer's K/V at the aligned context tokens.

Per example, as kvbridge runs a fused request (agent/context_fuser.h): the receiver prefills the
context alone (its own K/V, frozen), every receiver layer t's K and V over the whole context are
fused with the sharer's layer layer_map[t], and the continuation is read over the fused cache. The
loss is the cross-entropy of continuation tokens 1.. (token 0 is predicted by the context's last
position, whose output the fusion does not change). C2C fuses instruction positions [0, N - 1) and
reads the last one unfused; here the context plays [0, N - 1) and the continuation's first token the
last instruction token.

Recipe (C2C §1d, scaled down): AdamW with weight decay, linear warmup then linear decay, gradient
clipping; Gumbel-sigmoid gates whose temperature falls geometrically from 1 to --final-temperature
over the first (1 - --hard-fraction) of the steps, then hard gates (gate_logit > 0, as kvbridge
applies them) for the rest. Writes OUT_DIR/{config.json, model.safetensors, train_config.json,
metrics.json}; a progress line per --log-every steps on stderr.
"""

import argparse
import json
import os
import shutil
import struct
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from c2c_torch import C2CProjector  # noqa: E402
from convert_c2c import branch_specs, write_safetensors  # noqa: E402
from llama_torch import LlamaReceiver  # noqa: E402

_NP = {"F32": np.float32, "I32": np.int32}


def read_safetensors(path):
    """{name: np.ndarray} and the metadata of a safetensors file (F32 / I32 tensors)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        out[name] = np.frombuffer(data[b:end], dtype=_NP[e["dtype"]]).reshape(e["shape"])
    return out, meta


class Dataset:
    """The examples of one `kvbridge fuser dump` file."""

    def __init__(self, path, layers):
        t, self.meta = read_safetensors(path)
        ids, off, ctx = t["receiver_ids"], t["example_offsets"], t["context_lengths"]
        self.examples = []
        c0 = 0
        for i in range(len(ctx)):
            r = ids[off[i]:off[i + 1]].astype(np.int64)
            n = int(ctx[i])
            kv = {l: (t[f"sharer.{l}.k"][c0:c0 + n], t[f"sharer.{l}.v"][c0:c0 + n]) for l in layers}
            self.examples.append((r[:n], r[n:], kv))
            c0 += n

    def __len__(self):
        return len(self.examples)


def collate(examples, layers):
    """Right-padded tensors of a batch: context / continuation ids, masks, sharer K/V per layer."""
    b = len(examples)
    nc = max(len(e[0]) for e in examples)
    nk = max(len(e[1]) for e in examples)
    ctx = torch.zeros(b, nc, dtype=torch.long)
    cont = torch.zeros(b, nk, dtype=torch.long)
    cmask = torch.zeros(b, nc, dtype=torch.bool)
    kmask = torch.zeros(b, nk, dtype=torch.bool)
    lens = torch.zeros(b, dtype=torch.long)
    sk = {l: torch.zeros(b, nc, examples[0][2][l][0].shape[1]) for l in layers}
    sv = {l: torch.zeros_like(sk[l]) for l in layers}
    for i, (c, k, kv) in enumerate(examples):
        ctx[i, :len(c)] = torch.from_numpy(c)
        cont[i, :len(k)] = torch.from_numpy(k)
        cmask[i, :len(c)] = True
        kmask[i, :len(k)] = True
        lens[i] = len(c)
        for l in layers:
            sk[l][i, :len(c)] = torch.from_numpy(kv[l][0].copy())
            sv[l][i, :len(c)] = torch.from_numpy(kv[l][1].copy())
    return dict(ctx=ctx, cont=cont, cmask=cmask, kmask=kmask, lens=lens, sk=sk, sv=sv)


def continuation_loss(receiver, projectors, layer_map, batch, temperature, fuse=True):
    """Mean cross-entropy (nats) of continuation tokens 1.. over the (fused) context, and their count.
    fuse: True, False (the receiver alone) or "zero" (fused with all-zero sharer K/V: what the
    projectors gain without the sharer's information)."""
    b, nc = batch["ctx"].shape
    with torch.no_grad():
        _, own = receiver(batch["ctx"], torch.arange(nc).expand(b, nc), mask=batch["cmask"])
    past = []
    for t, (k, v) in enumerate(own):
        if fuse:
            sk, sv = batch["sk"][layer_map[t]], batch["sv"][layer_map[t]]
            if fuse == "zero":
                sk, sv = torch.zeros_like(sk), torch.zeros_like(sv)
            k = projectors[t].fuse("key", sk, k, temperature)
            v = projectors[t].fuse("value", sv, v, temperature)
        past.append((k, v))
    nk = batch["cont"].shape[1]
    pos = batch["lens"][:, None] + torch.arange(nk)[None]
    logits, _ = receiver(batch["cont"], pos, past=past, past_mask=batch["cmask"], mask=batch["kmask"])
    target = batch["cont"][:, 1:]
    valid = batch["kmask"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1),
                                           reduction="none").view(target.shape)
    count = valid.sum()
    return (ce * valid).sum() / count.clamp(min=1), int(count)


def evaluate(receiver, projectors, layer_map, data, layers, batch_size, fuse=True):
    """Mean nats per continuation token over a dataset, hard gates."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            batch = collate(data.examples[i:i + batch_size], layers)
            loss, n = continuation_loss(receiver, projectors, layer_map, batch, None, fuse)
            total += float(loss) * n
            count += n
    return total / max(count, 1)


def lr_at(step, steps, warmup):
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


def temperature_at(step, steps, hard_fraction, final):
    soft = int(steps * (1 - hard_fraction))
    if step >= soft:
        return None  # hard gates
    return final ** (step / max(1, soft))


def new_projectors(cfg):
    """One untrained C2CProjector per receiver layer of a fuser config (config.json as a dict)."""
    s, r, p = cfg["sharer"], cfg["receiver"], cfg["projector"]
    return torch.nn.ModuleList([
        C2CProjector(s["head_dim"], r["head_dim"], s["n_head_kv"], r["n_head_kv"], p["hidden_dim"],
                     p["intermediate_dim"], p["num_layers"]) for _ in range(r["n_layer"])])


def load_fuser(fuser_dir):
    """(config dict, projectors) of a fuser directory in f32 (what write_fuser wrote)."""
    with open(os.path.join(fuser_dir, "config.json")) as f:
        cfg = json.load(f)
    weights, _ = read_safetensors(os.path.join(fuser_dir, cfg.get("weights", "model.safetensors")))
    projectors = new_projectors(cfg)
    for t, proj in enumerate(projectors):
        state = proj.state_dict()
        prefix = f"projector.{t}."
        proj.load_state_dict({n: torch.from_numpy(weights[prefix + n].copy()).view(state[n].shape) for n in state})
    return cfg, projectors


def write_fuser(out, template_cfg, projectors, extra):
    """config.json (the template's, dtype f32), model.safetensors in kvbridge's tensor order, extras."""
    os.makedirs(out, exist_ok=True)
    cfg = dict(template_cfg, dtype="f32", weights="model.safetensors")
    s, r, p = cfg["sharer"], cfg["receiver"], cfg["projector"]
    in_dim = s["n_head_kv"] * s["head_dim"] + r["n_head_kv"] * r["head_dim"]
    out_dim = r["n_head_kv"] * r["head_dim"]
    tensors = []
    for t, proj in enumerate(projectors):
        state = proj.state_dict()
        for br in ("key", "value"):
            for name, shape in branch_specs(br, in_dim, out_dim, r["n_head_kv"], p["hidden_dim"],
                                            p["intermediate_dim"], p["num_layers"]):
                tensors.append((f"projector.{t}.{name}", state[name].detach().float().contiguous().view(shape)))
    write_safetensors(os.path.join(out, "model.safetensors"), tensors, {"format": "kvbridge-fuser"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for name, value in extra.items():
        with open(os.path.join(out, name), "w") as f:
            json.dump(value, f, indent=2)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--template", required=True, help="fuser directory of the pair (kvbridge fuser synth)")
    ap.add_argument("--receiver", required=True, help="receiver GGUF (llama2.c: kvbridge convert it first)")
    ap.add_argument("--train", required=True, help="kvbridge fuser dump of the training split")
    ap.add_argument("--val", required=True, help="kvbridge fuser dump of the validation split")
    ap.add_argument("--out", required=True, help="output fuser directory")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps")
    ap.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    ap.add_argument("--final-temperature", type=float, default=0.01)
    ap.add_argument("--hard-fraction", type=float, default=0.1, help="last fraction of steps on hard gates")
    ap.add_argument("--eval-every", type=int, default=0, help="validation every N steps (0: start and end)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return ap.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    torch.manual_seed(a.seed)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    with open(os.path.join(a.template, "config.json")) as f:
        cfg = json.load(f)
    r = cfg["receiver"]
    layer_map = cfg["layer_map"]
    layers = sorted(set(layer_map))
    receiver = LlamaReceiver(a.receiver)
    rc = receiver.cfg
    if (rc.n_layer, rc.n_head_kv, rc.head_dim) != (r["n_layer"], r["n_head_kv"], r["head_dim"]):
        sys.exit(f"train: {a.receiver} is not the receiver of {a.template} ({r})")
    train, val = Dataset(a.train, layers), Dataset(a.val, layers)
    projectors = new_projectors(cfg)
    opt = torch.optim.AdamW(projectors.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    warmup = max(1, int(a.steps * a.warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda st: lr_at(st, a.steps, warmup))

    metrics = {"val_receiver_alone": evaluate(receiver, projectors, layer_map, val, layers, a.batch, fuse=False)}
    metrics["val_start"] = evaluate(receiver, projectors, layer_map, val, layers, a.batch)
    print(f"train: {len(train)} train / {len(val)} val examples; val nats/token: receiver alone "
          f"{metrics['val_receiver_alone']:.4f}, untrained fuser {metrics['val_start']:.4f}", file=sys.stderr)
    gen = torch.Generator().manual_seed(a.seed)
    order, cursor = torch.randperm(len(train), generator=gen).tolist(), 0
    curve, t0, tokens = [], time.time(), 0
    for step in range(a.steps):
        if cursor + a.batch > len(order):
            order, cursor = torch.randperm(len(train), generator=gen).tolist(), 0
        batch = collate([train.examples[i] for i in order[cursor:cursor + a.batch]], layers)
        cursor += a.batch
        temp = temperature_at(step, a.steps, a.hard_fraction, a.final_temperature)
        loss, n = continuation_loss(receiver, projectors, layer_map, batch, temp)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(projectors.parameters(), a.clip)
        opt.step()
        sched.step()
        tokens += n
        curve.append(float(loss))
        if (step + 1) % a.log_every == 0 or step + 1 == a.steps:
            el = time.time() - t0
            eta = el / (step + 1) * (a.steps - step - 1)
            gates = sum(int(getattr(pr, f"{b}_gate_logit") > 0) for pr in projectors for b in ("key", "value"))
            print(f"step {step + 1}/{a.steps} loss {np.mean(curve[-a.log_every:]):.4f} "
                  f"temp {'hard' if temp is None else f'{temp:.3g}'} gates on {gates}/{2 * len(projectors)} "
                  f"{tokens / el:.0f} tok/s ETA {eta:.0f}s", file=sys.stderr)
        if a.eval_every and (step + 1) % a.eval_every == 0 and step + 1 < a.steps:
            v = evaluate(receiver, projectors, layer_map, val, layers, a.batch)
            metrics.setdefault("val_curve", []).append([step + 1, v])
            print(f"step {step + 1}: val {v:.4f} nats/token", file=sys.stderr)
    metrics["val_end"] = evaluate(receiver, projectors, layer_map, val, layers, a.batch)
    metrics["val_end_sharer_zeroed"] = evaluate(receiver, projectors, layer_map, val, layers, a.batch, fuse="zero")
    metrics["train_curve"] = curve
    metrics["gates_on"] = {f"{t}.{b}": bool(getattr(pr, f"{b}_gate_logit") > 0)
                           for t, pr in enumerate(projectors) for b in ("key", "value")}
    metrics["seconds"] = time.time() - t0
    print(f"train: val nats/token {metrics['val_start']:.4f} -> {metrics['val_end']:.4f} "
          f"(receiver alone {metrics['val_receiver_alone']:.4f}; the trained fuser with the sharer's K/V zeroed "
          f"{metrics['val_end_sharer_zeroed']:.4f}) in {metrics['seconds']:.0f} s", file=sys.stderr)
    config = dict(vars(a), train_meta=train.meta.get("examples"), n_train=len(train), n_val=len(val))
    write_fuser(a.out, cfg, projectors, {"train_config.json": config, "metrics.json": metrics})
    shutil.copyfile(os.path.join(a.template, "config.json"), os.path.join(a.out, "template_config.json"))
    return metrics


if __name__ == "__main__":
    main()
