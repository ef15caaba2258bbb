"""A small GPT-2-style causal decoder (Radford et al., "Language Models are Unsupervised Multitask
Learners", 2019): pre-LayerNorm blocks, learned positions, tanh-approximated GELU, a final
LayerNorm, and an LM head tied to the token embedding; BPE vocabulary of 50,257.

``gpt_small`` uses 4 layers, width 256, 4 heads (context 1024). The same code with GPT-2's
smallest configuration (12 / 768 / 12) has 124.4M parameters — the count of the released weights;
the paper's Table 2 prints 117M for it, a known slip.

The module's forward takes ``input_ids`` and a flat list of past keys/values and returns logits and
the present keys/values, so the ONNX export has a KV-cache interface:
inputs ``input_ids`` [batch, sequence], ``past_key_values.{i}.key|value`` [batch, heads, past_sequence,
head_dim]; outputs ``logits`` [batch, sequence, vocab], ``present.{i}.key|value`` [batch, heads,
past_sequence + sequence, head_dim]. A prompt is run with empty (length-0) pasts.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from tuili.zoo.registry import ModelSpec, register


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    vocab: int = 50257
    max_positions: int = 1024
    eps: float = 1e-5


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.hidden // cfg.heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, x, past_k, past_v):
        b, s, h = x.shape
        q, k, v = self.qkv(x).reshape(b, s, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        k = torch.cat((past_k, k), dim=2)
        v = torch.cat((past_v, v), dim=2)
        total = k.shape[2]
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        # query i sits at absolute position total - s + i and may see keys at positions <= that
        q_pos = torch.arange(s, device=x.device) + (total - s)
        k_pos = torch.arange(total, device=x.device)
        allowed = k_pos[None, :] <= q_pos[:, None]
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        out = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, s, h)
        return self.proj(out), k, v


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.mlp = nn.Sequential(nn.Linear(cfg.hidden, 4 * cfg.hidden), nn.GELU(approximate="tanh"), nn.Linear(4 * cfg.hidden, cfg.hidden))

    def forward(self, x, past_k, past_v):
        a, k, v = self.attn(self.ln_1(x), past_k, past_v)
        x = x + a
        return x + self.mlp(self.ln_2(x)), k, v


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab, cfg.hidden)
        self.wpe = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.register_buffer("lm_bias", torch.zeros(cfg.vocab), persistent=False)
        for name, p in self.named_parameters():  # GPT-2 init: N(0, 0.02); residual projections scaled by 1/sqrt(2L)
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * cfg.layers) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias") and "ln" not in name:
                nn.init.zeros_(p)

    def empty_past(self, batch: int = 1) -> list[torch.Tensor]:
        c = self.cfg
        z = torch.zeros(batch, c.heads, 0, c.hidden // c.heads)
        return [z] * (2 * c.layers)

    def forward(self, input_ids, *past):
        """``past`` is k0, v0, k1, v1, ... (pass ``*model.empty_past(b)`` for a prompt)."""
        if not past:
            past = tuple(self.empty_past(input_ids.shape[0]))
        s = input_ids.shape[1]
        start = past[0].shape[2]
        positions = torch.arange(s, device=input_ids.device) + start
        x = self.wte(input_ids) + self.wpe(positions)
        present = []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, past[2 * i], past[2 * i + 1])
            present += [k, v]
        # Tied LM head. A 2-D linear with a bias exports as Gemm(transB=1) reading the embedding
        # initializer itself; `x @ wte.weight.t()` would make the exporter fold a transposed copy of
        # it (51 MB here). The bias is a zero buffer (no parameter), so the head stays bias-free.
        b, s, d = x.shape
        logits = nn.functional.linear(self.ln_f(x).reshape(b * s, d), self.wte.weight, self.lm_bias).reshape(b, s, -1)
        return (logits, *present)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, new_tokens: int, use_cache: bool = True) -> torch.Tensor:
        """Greedy decoding; returns the ``new_tokens`` generated ids [batch, new_tokens]."""
        out = []
        ids = input_ids
        past = tuple(self.empty_past(input_ids.shape[0]))
        for _ in range(new_tokens):
            if use_cache:
                logits, *past = self(ids, *past)
            else:
                logits, *_ = self(torch.cat([input_ids] + out, dim=1) if out else input_ids)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            ids = nxt
        return torch.cat(out, dim=1)


def kv_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return past, present


GPT_SMALL = GPTConfig()
_past, _present = kv_names(GPT_SMALL.layers)
_hd = GPT_SMALL.hidden // GPT_SMALL.heads

register(ModelSpec(
    name="gpt_small", task="text-generation", paper="Radford et al. 2019, GPT-2 (Language Models are Unsupervised Multitask Learners)",
    inputs={"input_ids": ("batch", "sequence"), **{n: ("batch", GPT_SMALL.heads, "past_sequence", _hd) for n in _past}},
    outputs=("logits", *_present), default_seq_len=16, max_seq_len=GPT_SMALL.max_positions,
    paper_params=None, paper_macs=None,
    convention="GPT-2 architecture at 4 layers / 256 wide (no paper row); the 12/768 configuration is checked "
               "against GPT-2 small's 124.4M released parameters. MACs: a 16-token prompt with empty past, "
               "tied LM head included",
    builder=lambda **_: GPT(GPT_SMALL)))
