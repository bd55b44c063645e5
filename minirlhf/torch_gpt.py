"""The same GPT-2 in PyTorch: the yardstick `minirlhf bench --compare torch` races against.

Imported only when PyTorch is installed (`pip install -e ".[bench]"`). It is what a
student would otherwise write: `nn.Linear`, `nn.LayerNorm`, GELU (tanh), PyTorch's
fused `scaled_dot_product_attention`, `F.cross_entropy`, `torch.optim.AdamW`, eager
mode. The weights are copied from one of our models, so the two compute the same
function, and `grads_as_ours` maps PyTorch's gradients back to our names and layouts
(nn.Linear stores its weight (out, in), ours is GPT-2's (in, out): one transpose).
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, C, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(C, eps=1e-5)
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C, eps=1e-5)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def forward(self, x, kv=None, pos0=0):
        B, T, C = x.shape
        H = self.n_head
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (a.view(B, T, H, C // H).transpose(1, 2) for a in (q, k, v))  # (B, H, T, D)
        if kv is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # generation: write the new keys/values, attend to everything so far
            K, V = kv
            K[:, :, pos0 : pos0 + T] = k
            V[:, :, pos0 : pos0 + T] = v
            a = F.scaled_dot_product_attention(q, K[:, :, : pos0 + T], V[:, :, : pos0 + T], is_causal=T > 1)
        x = x + self.c_proj(a.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    """GPT-2 with our model's config and a copy of its weights (LM head tied to wte)."""

    # our block-local name -> (module attribute, transpose?)
    _BLOCK_NAMES = {
        "ln_1.weight": ("ln_1.weight", False), "ln_1.bias": ("ln_1.bias", False),
        "attn.c_attn.weight": ("c_attn.weight", True), "attn.c_attn.bias": ("c_attn.bias", False),
        "attn.c_proj.weight": ("c_proj.weight", True), "attn.c_proj.bias": ("c_proj.bias", False),
        "ln_2.weight": ("ln_2.weight", False), "ln_2.bias": ("ln_2.bias", False),
        "mlp.c_fc.weight": ("c_fc.weight", True), "mlp.c_fc.bias": ("c_fc.bias", False),
        "mlp.c_proj.weight": ("mlp_proj.weight", True), "mlp.c_proj.bias": ("mlp_proj.bias", False),
    }  # fmt: skip

    def __init__(self, model):
        super().__init__()
        cfg = model.config
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg.n_embd, cfg.n_head) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        self.to(torch.float64 if model.dtype == np.float64 else torch.float32)
        with torch.no_grad():
            for ours, (theirs, transpose) in self.name_map().items():
                value = torch.from_numpy(np.array(model.params[ours]))
                self.get_parameter(theirs).copy_(value.T if transpose else value)

    def name_map(self):
        """Our parameter name -> (this module's parameter name, transposed?)."""
        names = {"wte.weight": ("wte.weight", False), "wpe.weight": ("wpe.weight", False)}
        for i in range(self.config.n_layer):
            names.update({f"h.{i}.{k}": (f"h.{i}.{v}", t) for k, (v, t) in self._BLOCK_NAMES.items()})
        names.update({"ln_f.weight": ("ln_f.weight", False), "ln_f.bias": ("ln_f.bias", False)})
        return names

    def forward(self, idx, kv=None, pos0=0):
        """idx (B, T) long -> logits (B, T, V)."""
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe.weight[pos0 : pos0 + T]
        for i, block in enumerate(self.h):
            x = block(x, None if kv is None else kv[i], pos0)
        return self.ln_f(x) @ self.wte.weight.T

    def loss(self, idx, targets):
        logits = self.forward(idx)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)

    def grads_as_ours(self):
        """The .grad of every parameter, under our names and in our layouts (NumPy)."""
        out = {}
        for ours, (theirs, transpose) in self.name_map().items():
            g = self.get_parameter(theirs).grad
            out[ours] = (g.T if transpose else g).detach().numpy().copy()
        return out

    def adamw(self, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
        """torch.optim.AdamW with our rule: only 2-D weights decay."""
        params = list(self.parameters())
        groups = [
            {"params": [p for p in params if p.ndim == 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim != 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens, generator):
        """Sample max_new_tokens after one-token prompts (B,) with a KV cache, like
        GPT.generate on equal-length prompts at temperature 1 (the benchmark's case)."""
        cfg = self.config
        B = prompt_ids.shape[0]
        H, D = cfg.n_head, cfg.n_embd // cfg.n_head
        dtype = self.wte.weight.dtype
        kv = [(torch.zeros(B, H, 1 + max_new_tokens, D, dtype=dtype), torch.zeros(B, H, 1 + max_new_tokens, D, dtype=dtype))
              for _ in range(cfg.n_layer)]  # fmt: skip
        tokens = prompt_ids.reshape(B, 1)
        out = []
        for pos in range(max_new_tokens):
            logits = self.forward(tokens, kv, pos)[:, -1]
            tokens = torch.multinomial(torch.softmax(logits.double(), dim=-1), 1, generator=generator)
            out.append(tokens)
        return torch.cat(out, dim=1)

