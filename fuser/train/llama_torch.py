"""A llama-family receiver forward in torch, differentiable through the K/V cache it attends to.

The fuser trainer needs the receiver's next-token loss as a function of fused K/V, so this module
re-implements the forward kvbridge runs (engine/forward_reference.cpp, the scalar reference) for the
architecture the trainer's receivers use: llama (RMSNorm, grouped-query attention with RoPE on
adjacent pairs as GGUF stores Q/K, SwiGLU FFN, tied or separate output). It reads a GGUF file with
llama.cpp's own `gguf` package (llama2.c checkpoints: `kvbridge convert` them to GGUF first), F32,
F16 and the block types gguf-py dequantizes (Q4_1, Q8_0, ...), all widened to f32.

K/V layout, as kvbridge's cache and the fuser's wire: per layer, post-RoPE K and V of shape
[batch, tokens, n_head_kv * head_dim] (head-major: h * head_dim + d).

Checked against llama2.c's reference vectors and kvbridge's own logits by
tests/python/test_fuser_train.py before anything trains on it.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class LlamaConfig:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    n_ctx: int
    norm_eps: float
    rope_base: float
    rope_dim: int

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @property
    def kv_dim(self):
        return self.n_head_kv * self.head_dim


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise ValueError(f"GGUF key {key} is missing")
        return default
    v = f.parts[f.data[0]]
    return v.tolist()[0] if len(v) == 1 else v.tolist()


def _tensor(reader_tensor):
    import gguf  # imported here so that the module loads without gguf for torch-only users

    t = reader_tensor
    shape = [int(x) for x in reversed(t.shape.tolist())]  # outermost first, as torch
    if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        a = np.asarray(t.data, dtype=np.float32)
    else:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    return torch.from_numpy(np.array(a.reshape(shape), dtype=np.float32, copy=True))


class LlamaReceiver(torch.nn.Module):
    """Frozen weights (buffers, no parameters): gradients flow only into the K/V passed in."""

    def __init__(self, path):
        super().__init__()
        import gguf

        r = gguf.GGUFReader(path)
        arch = _field(r, "general.architecture")
        arch = bytes(arch).decode() if isinstance(arch, list) else arch
        if arch != "llama":
            raise ValueError(f"{path}: architecture {arch!r}; the trainer's receiver forward is llama only")
        p = "llama."
        n_embd = int(_field(r, p + "embedding_length"))
        n_head = int(_field(r, p + "attention.head_count"))
        tensors = {t.name: t for t in r.tensors}
        emb = _tensor(tensors["token_embd.weight"])
        self.cfg = LlamaConfig(
            n_layer=int(_field(r, p + "block_count")),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=int(_field(r, p + "attention.head_count_kv", n_head)),
            n_ff=int(_field(r, p + "feed_forward_length")),
            n_vocab=emb.shape[0],
            n_ctx=int(_field(r, p + "context_length")),
            norm_eps=float(_field(r, p + "attention.layer_norm_rms_epsilon")),
            rope_base=float(_field(r, p + "rope.freq_base", 10000.0)),
            rope_dim=int(_field(r, p + "rope.dimension_count", n_embd // n_head)),
        )
        self.register_buffer("tok_embd", emb)
        out = tensors.get("output.weight")
        self.register_buffer("output", _tensor(out) if out is not None else emb)
        self.register_buffer("output_norm", _tensor(tensors["output_norm.weight"]))
        names = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down"]
        for l in range(self.cfg.n_layer):
            for n in names:
                self.register_buffer(f"l{l}_{n}", _tensor(tensors[f"blk.{l}.{n}.weight"]))
        half = self.cfg.rope_dim // 2
        self.register_buffer("inv_freq", self.cfg.rope_base ** (-torch.arange(half, dtype=torch.float64) * 2 /
                                                                  self.cfg.rope_dim))

    def w(self, l, name):
        return getattr(self, f"l{l}_{name}")

    def _rms(self, x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.norm_eps) * weight

    def _rope(self, x, pos):
        """x [B, T, H, D], pos [B, T] → rotated on adjacent pairs (x[2i], x[2i + 1]) of the first rope_dim."""
        ang = pos.to(torch.float64)[..., None] * self.inv_freq  # [B, T, half]
        cos = torch.cos(ang).to(x.dtype)[:, :, None, :]
        sin = torch.sin(ang).to(x.dtype)[:, :, None, :]
        rd = self.cfg.rope_dim
        xr = x[..., :rd].reshape(*x.shape[:-1], rd // 2, 2)
        a, b = xr[..., 0], xr[..., 1]
        rot = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).reshape(*x.shape[:-1], rd)
        return torch.cat([rot, x[..., rd:]], dim=-1) if rd < x.shape[-1] else rot

    def forward(self, ids, pos, past=None, past_mask=None, mask=None):
        """ids, pos [B, T] (int64); past: per layer (K, V) [B, P, kv_dim] or None; past_mask [B, P]
        (True = a real cell); mask [B, T] (True = a real token; padding attends and is attended by
        nothing that matters). Returns logits [B, T, n_vocab] and the new tokens' per-layer (K, V)."""
        c = self.cfg
        bsz, t = ids.shape
        hd = c.head_dim
        x = self.tok_embd[ids]
        n_past = 0 if past is None else past[0][0].shape[1]
        # [B, T, P + T]: past cells that exist, then causal over the new tokens.
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        allow = causal[None].expand(bsz, t, t)
        if mask is not None:
            allow = allow & mask[:, None, :]
        if n_past:
            pm = past_mask if past_mask is not None else torch.ones(bsz, n_past, dtype=torch.bool)
            allow = torch.cat([pm[:, None, :].expand(bsz, t, n_past), allow], dim=-1)
        bias = torch.zeros(allow.shape, dtype=x.dtype).masked_fill(~allow, float("-inf"))[:, None]
        new_kv = []
        group = c.n_head // c.n_head_kv
        for l in range(c.n_layer):
            h = self._rms(x, self.w(l, "attn_norm"))
            q = self._rope((h @ self.w(l, "attn_q").T).view(bsz, t, c.n_head, hd), pos)
            k = self._rope((h @ self.w(l, "attn_k").T).view(bsz, t, c.n_head_kv, hd), pos)
            v = (h @ self.w(l, "attn_v").T).view(bsz, t, c.n_head_kv, hd)
            k_flat, v_flat = k.reshape(bsz, t, c.kv_dim), v.reshape(bsz, t, c.kv_dim)
            new_kv.append((k_flat, v_flat))
            if n_past:
                k_all = torch.cat([past[l][0], k_flat], dim=1).view(bsz, n_past + t, c.n_head_kv, hd)
                v_all = torch.cat([past[l][1], v_flat], dim=1).view(bsz, n_past + t, c.n_head_kv, hd)
            else:
                k_all, v_all = k, v
            kq = k_all.permute(0, 2, 3, 1).repeat_interleave(group, dim=1)  # [B, H, D, S]
            vq = v_all.permute(0, 2, 1, 3).repeat_interleave(group, dim=1)  # [B, H, S, D]
            scores = (q.permute(0, 2, 1, 3) @ kq) / math.sqrt(hd) + bias  # [B, H, T, S]
            att = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # fully masked padding rows → 0
            o = (att @ vq).permute(0, 2, 1, 3).reshape(bsz, t, c.n_embd)
            x = x + o @ self.w(l, "attn_output").T
            h = self._rms(x, self.w(l, "ffn_norm"))
            x = x + (F.silu(h @ self.w(l, "ffn_gate").T) * (h @ self.w(l, "ffn_up").T)) @ self.w(l, "ffn_down").T
        logits = self._rms(x, self.output_norm) @ self.output.T
        return logits, new_kv
