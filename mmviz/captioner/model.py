"""The caption decoder: one embedding in, a caption out.

ClipCap's recipe (Mokady et al., 2021), made small and trained from scratch: an MLP maps the
conditioning embedding to `prefix` vectors, and a causal transformer reads them followed by the
caption's tokens and predicts each next token. The output layer shares its weights with the
token embedding (fewer parameters, as in GPT-2).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .vocab import BOS, EOS, PAD


@dataclass
class DecoderShape:
    embed_dim: int  # of the CLIP vectors it is conditioned on
    vocab_size: int
    width: int = 128
    layers: int = 2
    heads: int = 4
    prefix: int = 4
    max_tokens: int = 32  # caption tokens, without BOS and EOS
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class CaptionDecoder(nn.Module):
    def __init__(self, shape: DecoderShape):
        super().__init__()
        self.shape = s = shape
        self.prefix_mlp = nn.Sequential(nn.Linear(s.embed_dim, s.width * s.prefix // 2), nn.Tanh(),
                                        nn.Linear(s.width * s.prefix // 2, s.width * s.prefix))
        self.token = nn.Embedding(s.vocab_size, s.width)
        self.position = nn.Parameter(torch.zeros(s.prefix + s.max_tokens + 2, s.width))
        layer = nn.TransformerEncoderLayer(s.width, s.heads, 4 * s.width, s.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, s.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(s.width)
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position, std=0.01)

    def forward(self, cond: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """cond (B, embed_dim), tokens (B, T) starting with BOS -> logits (B, T, vocab) for the
        token after each position."""
        b, t = tokens.shape
        p = self.shape.prefix
        prefix = self.prefix_mlp(cond).view(b, p, self.shape.width)
        x = torch.cat([prefix, self.token(tokens)], dim=1) + self.position[:p + t]
        causal = nn.Transformer.generate_square_subsequent_mask(p + t, device=x.device, dtype=x.dtype)
        h = self.norm(self.blocks(x, mask=causal, is_causal=True))
        return h[:, p:] @ self.token.weight.T

    def loss(self, cond: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy of (B, L) sequences (BOS ... EOS PAD ...), PAD ignored."""
        logits = self(cond, sequences[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), sequences[:, 1:].reshape(-1),
                                           ignore_index=PAD)

    @torch.no_grad()
    def generate(self, cond: torch.Tensor, beam: int = 1) -> list[list[int]]:
        """Compact ids of each caption (without BOS and EOS): greedy for beam 1, else beam
        search keeping the `beam` sequences of highest total log-probability."""
        was = self.training
        self.eval()
        try:
            return self._greedy(cond) if beam <= 1 else self._beam(cond, beam)
        finally:
            self.train(was)

    def _step(self, cond: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        logits = self(cond, seqs)[:, -1]
        logits[:, PAD] = logits[:, BOS] = -torch.inf  # never written inside a caption
        return torch.log_softmax(logits, dim=-1)

    def _greedy(self, cond: torch.Tensor) -> list[list[int]]:
        seqs = torch.full((len(cond), 1), BOS, dtype=torch.long, device=cond.device)
        done = torch.zeros(len(cond), dtype=torch.bool, device=cond.device)
        for _ in range(self.shape.max_tokens + 1):
            nxt = self._step(cond, seqs).argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, EOS), nxt)
            seqs = torch.cat([seqs, nxt[:, None]], dim=1)
            done |= nxt == EOS
            if done.all():
                break
        return [_cut(row) for row in seqs[:, 1:].tolist()]

    def _beam(self, cond: torch.Tensor, k: int) -> list[list[int]]:
        n, v = len(cond), self.shape.vocab_size
        cond_k = cond.repeat_interleave(k, dim=0)
        seqs = torch.full((n * k, 1), BOS, dtype=torch.long, device=cond.device)
        score = torch.full((n, k), -torch.inf, device=cond.device)
        score[:, 0] = 0.0  # the k copies of BOS are one hypothesis until the first step
        done = torch.zeros(n * k, dtype=torch.bool, device=cond.device)
        for _ in range(self.shape.max_tokens + 1):
            logp = self._step(cond_k, seqs)
            # a finished hypothesis can only be extended by EOS, at no cost: it keeps its score
            logp[done] = -torch.inf
            logp[done, EOS] = 0.0
            total = (score.view(-1, 1) + logp).view(n, k * v)
            score, flat = total.topk(k, dim=1)
            parent = (flat // v) + torch.arange(n, device=cond.device)[:, None] * k
            token = (flat % v).view(-1)
            seqs = torch.cat([seqs[parent.view(-1)], token[:, None]], dim=1)
            done = done[parent.view(-1)] | (token == EOS)
            if done.all():
                break
        best = seqs.view(n, k, -1)[:, 0, 1:]  # topk sorts: hypothesis 0 scores highest
        return [_cut(row) for row in best.tolist()]


def _cut(row: list[int]) -> list[int]:
    return row[:row.index(EOS)] if EOS in row else row
