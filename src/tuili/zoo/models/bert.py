"""BERT-style encoders (Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers", 2019):
post-LayerNorm Transformer layers, learned positions, exact (erf) GELU, WordPiece vocabulary of 30,522.

- ``bert_small``: BERT-Mini of Turc et al., "Well-Read Students Learn Better" (2019): L=4, H=256,
  A=4, FFN 1024; 11.3M params.
- ``tinybert_4``: Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding"
  (2020), Table 1: L=4, d=312, d_i=1200, h=12; 14.5M params, 1.2B FLOPs (FLOPs = 2 x MACs, at
  sequence length 128: their BERT-base is 22.5B FLOPs = 2 x 11.2G MACs).
- ``distilbert``: Sanh et al., "DistilBERT, a distilled version of BERT" (2019): BERT-base width
  (H=768, A=12, FFN 3072), 6 layers, no token-type embeddings and no pooler; 66M params.

Inputs: ``input_ids`` and ``attention_mask`` (int64, [batch, sequence]); token types are all 0.
Outputs: ``last_hidden_state`` [batch, sequence, H] and (BERT/TinyBERT) ``pooler_output`` [batch, H].
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from tuili.zoo.registry import ModelSpec, register


@dataclasses.dataclass(frozen=True)
class BertConfig:
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int = 30522
    max_positions: int = 512
    type_vocab: int = 2  # 0 -> no token-type embeddings (DistilBERT)
    pooler: bool = True
    eps: float = 1e-12


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.hidden // cfg.heads
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)
        self.output = nn.Linear(cfg.hidden, cfg.hidden)

    def _split(self, x):  # [B, S, H] -> [B, heads, S, head_dim]
        b, s, _ = x.shape
        return x.reshape(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x, mask_bias):
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask_bias
        ctx = torch.softmax(scores, dim=-1) @ v
        b, _, s, _ = ctx.shape
        return self.output(ctx.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = SelfAttention(cfg)
        self.norm1 = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.intermediate = nn.Linear(cfg.hidden, cfg.ffn)
        self.act = nn.GELU()
        self.out = nn.Linear(cfg.ffn, cfg.hidden)
        self.norm2 = nn.LayerNorm(cfg.hidden, eps=cfg.eps)

    def forward(self, x, mask_bias):
        x = self.norm1(x + self.attention(x, mask_bias))
        return self.norm2(x + self.out(self.act(self.intermediate(x))))


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.word_embeddings = nn.Embedding(cfg.vocab, cfg.hidden)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab, cfg.hidden) if cfg.type_vocab else None
        self.embed_norm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))
        self.pooler = nn.Linear(cfg.hidden, cfg.hidden) if cfg.pooler else None
        for m in self.modules():  # BERT's init: N(0, 0.02) weights, zero biases, unit LayerNorm
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)

    def forward(self, input_ids, attention_mask):
        seq = input_ids.shape[1]
        positions = torch.arange(seq, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings.weight[0]
        x = self.embed_norm(x)
        # [B, S] 1/0 mask -> additive bias broadcast over heads and query positions (BERT's -10000)
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask_bias)
        if self.pooler is None:
            return x
        return x, torch.tanh(self.pooler(x[:, 0]))


CONFIGS = {
    "bert_small": BertConfig(layers=4, hidden=256, heads=4, ffn=1024),
    "tinybert_4": BertConfig(layers=4, hidden=312, heads=12, ffn=1200),
    "distilbert": BertConfig(layers=6, hidden=768, heads=12, ffn=3072, type_vocab=0, pooler=False),
}

_TEXT = dict(task="text-encoding", inputs={"input_ids": ("batch", "sequence"), "attention_mask": ("batch", "sequence")},
             default_seq_len=128, max_seq_len=512)

register(ModelSpec(name="bert_small", paper="Turc et al. 2019, Well-Read Students Learn Better (arXiv:1908.08962), BERT-Mini",
                   outputs=("last_hidden_state", "pooler_output"), paper_params=11.3e6, paper_macs=None,
                   convention="BERT-Mini (L=4, H=256) params from the authors' release table; MACs at sequence 128 are counted",
                   builder=lambda **_: BertEncoder(CONFIGS["bert_small"]), **_TEXT))
register(ModelSpec(name="tinybert_4", paper="Jiao et al. 2020, TinyBERT (arXiv:1909.10351)",
                   outputs=("last_hidden_state", "pooler_output"), paper_params=14.5e6, paper_macs=0.6e9,
                   convention="Table 1: 14.5M params, 1.2B FLOPs at sequence 128 where FLOPs = 2 x MACs (printed to 2 digits)",
                   builder=lambda **_: BertEncoder(CONFIGS["tinybert_4"]), **_TEXT))
register(ModelSpec(name="distilbert", paper="Sanh et al. 2019, DistilBERT (arXiv:1910.01108)",
                   outputs=("last_hidden_state",), paper_params=66e6, paper_macs=None,
                   convention="Sec. 4 / Table 3: 66M params; no MACs in the paper (counted at sequence 128)",
                   builder=lambda **_: BertEncoder(CONFIGS["distilbert"]), **_TEXT))
