"""C2C's projector in torch (state-dict names and forward as thu-nics/C2C's C2CProjector), trainable.

One projector per receiver layer, two independent branches (key, value). Per token:
    x = W_in [sharer ; receiver] + b_in;  x = block(x, mlp1)
    P = W_out block...(x, proj_mlp2) + b_out;  w = sigmoid(W_head block(x, scalar_mlp2) + b_head)
    fused = receiver + gate * w[head] * P
block(x) = x + W2 GELU(W1 (RMSNorm(x) * norm)), RMSNorm eps 1e-6, exact erf GELU, no biases.

The gate: at inference (and in kvbridge's C++ fuser) hard, 1 if gate_logit > 0 else 0. In training,
a Gumbel-sigmoid relaxation sigmoid((gate_logit + log u - log(1 - u)) / temperature), u ~ U(0, 1),
whose temperature the trainer anneals toward 0, after which it switches to the hard gate.

K/V layout: [batch, tokens, n_head_kv * head_dim], head-major (h * head_dim + d), kvbridge's cache
layout; fuser/README.md is the format the trained weights are written in.
"""

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class StandardFFNLayer(nn.Module):
    """x + W2 · GELU(W1 · RMSNorm(x)), bias-free."""

    def __init__(self, hidden, inter):
        super().__init__()
        self.norm = RMSNorm(hidden)
        self.w1 = nn.Linear(hidden, inter, bias=False)
        self.w2 = nn.Linear(inter, hidden, bias=False)
        self.act = nn.GELU()  # exact erf GELU

    def forward(self, x):
        return x + self.w2(self.act(self.w1(self.norm(x))))


class FFNStack(nn.Module):
    def __init__(self, n, hidden, inter):
        super().__init__()
        self.blocks = nn.ModuleList([StandardFFNLayer(hidden, inter) for _ in range(n)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


class C2CProjector(nn.Module):
    """source_dim / target_dim are per-head sizes (C2C's init_args)."""

    def __init__(self, source_dim, target_dim, source_num_heads, target_num_heads, hidden_dim, intermediate_dim,
                 num_layers):
        super().__init__()
        in_dim = source_dim * source_num_heads + target_dim * target_num_heads
        out_dim = target_dim * target_num_heads
        self.target_num_heads, self.target_dim = target_num_heads, target_dim
        for p in ("key", "value"):
            setattr(self, f"{p}_in", nn.Linear(in_dim, hidden_dim))
            setattr(self, f"{p}_mlp1", FFNStack(1, hidden_dim, intermediate_dim))
            setattr(self, f"{p}_scalar_mlp2", FFNStack(1, hidden_dim, hidden_dim))
            setattr(self, f"{p}_scalar_head", nn.Linear(hidden_dim, target_num_heads))
            setattr(self, f"{p}_proj_mlp2", FFNStack(num_layers - 2, hidden_dim, intermediate_dim))
            setattr(self, f"{p}_proj_out", nn.Linear(hidden_dim, out_dim))
            setattr(self, f"{p}_gate_logit", nn.Parameter(torch.tensor(0.0)))

    def gate(self, p, temperature=None):
        """The branch's gate: hard (temperature None) or a Gumbel-sigmoid sample at `temperature`."""
        logit = getattr(self, f"{p}_gate_logit")
        if temperature is None:
            return (logit > 0).to(logit.dtype)
        u = torch.rand((), dtype=logit.dtype).clamp(1e-6, 1 - 1e-6)
        return torch.sigmoid((logit + torch.log(u) - torch.log1p(-u)) / temperature)

    def fuse(self, p, source, target, temperature=None):
        """source [..., Hs * Ds], target [..., Ht * Dt] (flattened heads) -> fused target."""
        x = getattr(self, f"{p}_in")(torch.cat([source, target], dim=-1))
        x = getattr(self, f"{p}_mlp1")(x)
        proj = getattr(self, f"{p}_proj_out")(getattr(self, f"{p}_proj_mlp2")(x))
        weight = torch.sigmoid(getattr(self, f"{p}_scalar_head")(getattr(self, f"{p}_scalar_mlp2")(x)))
        shape = target.shape[:-1] + (self.target_num_heads, self.target_dim)
        delta = (weight.unsqueeze(-1) * proj.view(shape)).view(target.shape)  # per-head weight over Dt
        return target + self.gate(p, temperature) * delta

    def branch(self, p, source, target):
        """C2C's calling convention: source (B, Hs, N, Ds), target (B, Ht, N, Dt) -> fused (B, Ht, N, Dt),
        hard gate."""
        b, ht, n, dt = target.shape
        xs = source.transpose(1, 2).reshape(b, n, -1)
        xt = target.transpose(1, 2).reshape(b, n, -1)
        return self.fuse(p, xs, xt).view(b, n, ht, dt).transpose(1, 2)
