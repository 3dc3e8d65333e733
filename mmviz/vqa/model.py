"""Answer heads for VQA on frozen CLIP tokens: bilinear attention networks and two baselines.

BAN is Kim, Jun and Zhang, "Bilinear Attention Networks" (NeurIPS 2018), written from the paper
and its reference code (jnhwkim/ban-vqa). Every head takes the same inputs:

    v      (B, R, dv)  region features (in mmviz: CLIP patch tokens, `embed.image_tokens`)
    q      (B, L, dq)  word features (in mmviz: CLIP text tokens, `embed.text_tokens`)
    v_mask (B, R) bool True for a real region, False for padding
    q_mask (B, L) bool True for a real word, False for padding

and `forward(v, q, v_mask, q_mask)` returns (answer logits (B, num_answers), attention), the
attention being BAN's maps (B, G, R, L) and None for the heads that have none. Padding is isolated
exactly: it gets zero attention and never reaches the logits, so padded inputs can hold anything.

Two choices where BAN leaves room, both following its code:
- k-pooling. U and V map to hidden*k. The attention logits use p of size hidden*k (no pooling,
  as BAN's BCNet does for its attention); the joint feature f is sum-pooled over consecutive
  groups of k (BAN's AvgPool1d(k) * k), giving hidden numbers.
- Classifier input. Each glimpse's joint feature is added back to every word,
  q <- q + P_g b_g, and the classifier reads the sum of the real (unpadded) words' features,
  as BAN's `classifier(q_emb.sum(1))`; BAN sums padding too, we mask it out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from . import HEADS  # named in the package, so that naming them needs no torch


def _wn_linear(in_dim: int, out_dim: int) -> nn.Module:
    """Linear layer with weight normalisation W = g V / ||V|| over the whole matrix (dim=None, as
    BAN): a scalar gain g decoupled from the direction V, which steadies Adamax on these heads."""
    return weight_norm(nn.Linear(in_dim, out_dim), dim=None)


class FCNet(nn.Module):
    """y = dropout(relu(W x + b)), W weight-normalised: the building block of BAN."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.linear = _wn_linear(in_dim, out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(F.relu(self.linear(x)))


def _pair_mask(v_mask: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
    """(B, R) and (B, L) -> (B, 1, R, L): True where both region and word are real."""
    return (v_mask[:, :, None] & q_mask[:, None, :])[:, None]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of the rows where mask is True; zeros when none is (no division by 0)."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def _classifier(in_dim: int, hidden: int, num_answers: int, dropout: float) -> nn.Module:
    """BAN's SimpleClassifier: FCNet to 2*hidden, then a weight-normalised linear to the answers."""
    return nn.Sequential(FCNet(in_dim, 2 * hidden, dropout), _wn_linear(2 * hidden, num_answers))


class BilinearAttention(nn.Module):
    """Bilinear attention maps, one per glimpse g, over all (region i, word j) pairs:

        logit_g(i, j) = p_g^T ((U^T x_i) * (V^T y_j)) + b_g,   U^T x = FCNet(dv -> hidden*k)(x)
        A_g = softmax over all unmasked (i, j) of logit_g(i, j)

    a rank-(hidden*k) bilinear form x_i^T W_g y_j with W_g = U diag(p_g) V^T factorised so that
    it never needs a dv x dq matrix per glimpse. p_g has size hidden*k (BAN pools over k only in
    the joint feature, not here). Padded regions or words get -inf and so exactly zero weight; a
    glimpse whose cells are all padding gets an all-zero map instead of softmax's NaN.

    forward(v, q, v_mask, q_mask) -> (attention (B, G, R, L), logits (B, G, R, L)); the logits are
    before masking.
    """

    def __init__(self, dv: int, dq: int, hidden: int, glimpses: int, k: int = 3, dropout: float = 0.0):
        super().__init__()
        self.U = FCNet(dv, hidden * k, dropout)
        self.V = FCNet(dq, hidden * k, dropout)
        # BAN initialises p with N(0, 1) and b with 0.
        self.p = nn.Parameter(torch.randn(glimpses, hidden * k))
        self.b = nn.Parameter(torch.zeros(glimpses))

    def forward(self, v, q, v_mask, q_mask):
        u, w = self.U(v), self.V(q)  # (B, R, hk), (B, L, hk)
        # sum_c p_gc u_ic w_jc in one contraction: (B, G, R, L), no (B, R, L, hk) tensor.
        logits = torch.einsum("gc,bic,bjc->bgij", self.p, u, w) + self.b[None, :, None, None]
        mask = _pair_mask(v_mask, q_mask).expand_as(logits)
        flat = logits.flatten(2)  # softmax over all R*L cells of a glimpse together
        flat_mask = mask.flatten(2)
        # -inf on padding; where a glimpse has no real cell, 0 everywhere (so softmax is finite),
        # then the map is zeroed on padding, which makes such a glimpse all zero.
        fill = torch.where(flat_mask.any(-1, keepdim=True), float("-inf"), 0.0)
        att = torch.where(flat_mask, flat, fill.to(flat.dtype)).softmax(-1).masked_fill(~flat_mask, 0.0)
        return att.view_as(logits), logits


class BilinearPool(nn.Module):
    """The joint feature of one glimpse under attention map A (B, R, L):

        f_c = sum_ij A_ij (U'^T x_i)_c (V'^T y_j)_c,   c < hidden*k
        out_h = sum_{c in group h} f_c                 (sum-pooling over k: BAN's AvgPool1d(k) * k)

    computed as sum_i (U'^T x_i) * (A (V'^T Y))_i: O(B R L hk) time and (B, R, hk) memory, never
    the (B, R, L, hk) outer product. forward(v, q, attention) -> (B, hidden).
    """

    def __init__(self, dv: int, dq: int, hidden: int, k: int = 3, dropout: float = 0.0):
        super().__init__()
        self.hidden, self.k = hidden, k
        self.U = FCNet(dv, hidden * k, dropout)
        self.V = FCNet(dq, hidden * k, dropout)

    def forward(self, v, q, attention):
        u, w = self.U(v), self.V(q)  # (B, R, hk), (B, L, hk)
        f = (u * torch.bmm(attention, w)).sum(1)  # (B, hk)
        return f.view(f.shape[0], self.hidden, self.k).sum(-1)


class BAN(nn.Module):
    """Bilinear attention network with residual glimpses.

        A = BilinearAttention(v, q)                          (B, G, R, L), from the input words
        for g < G:  b_g = BilinearPool_g(v, q, A_g)          (B, hidden)
                    q   = q + P_g b_g  (added to every word) (B, L, dq)
        logits = classifier(sum over real words of q)

    P_g is a weight-normalised linear hidden -> dq without activation (BAN's q_prj). The maps are
    computed once, before the residual updates, as in BAN. forward(v, q, v_mask, q_mask) ->
    (logits (B, num_answers), attention (B, G, R, L)); A_g is what the app shows.

    Two options for questions about where things are, both off by default (the plain BAN):
    - grid_coords > 0: each region gets its patch centre (x, y) in [-1, 1], times grid_coords,
      appended to its features (regions must be a square grid of patches, row-major). BAN's
      detector regions come with their boxes; patch tokens only carry position implicitly, and
      a probe on them reads an object's side poorly. The scale puts the two numbers on the
      tokens' own scale (their norm is about 8-11 on the builtin model), or the weight-normalised
      layers would hardly see them.
    - attended_xy: the classifier also reads each glimpse's attended position, the (x, y) of the
      patch centres averaged under the glimpse's region marginal: "is A left of B" is then a
      comparison of two numbers once glimpse 0 is on A and glimpse 1 on B.
    """

    def __init__(self, dv: int, dq: int, num_answers: int, hidden: int = 256, glimpses: int = 2,
                 k: int = 3, dropout: float = 0.2, grid_coords: float = 0.0, attended_xy: bool = False):
        super().__init__()
        self.grid_coords, self.attended_xy = float(grid_coords), bool(attended_xy)
        dv_in = dv + (2 if self.grid_coords > 0 else 0)
        self.attention = BilinearAttention(dv_in, dq, hidden, glimpses, k, dropout)
        self.pools = nn.ModuleList(BilinearPool(dv_in, dq, hidden, k, dropout) for _ in range(glimpses))
        self.q_proj = nn.ModuleList(_wn_linear(hidden, dq) for _ in range(glimpses))
        self.classifier = _classifier(dq + (2 * glimpses if self.attended_xy else 0), hidden, num_answers, dropout)

    def forward(self, v, q, v_mask, q_mask):
        if self.grid_coords > 0 or self.attended_xy:
            xy = grid_centres(v.shape[1]).to(v)
        if self.grid_coords > 0:
            v = torch.cat([v, (xy * self.grid_coords).expand(v.shape[0], -1, -1)], dim=-1)
        att, _ = self.attention(v, q, v_mask, q_mask)
        for g, (pool, proj) in enumerate(zip(self.pools, self.q_proj)):
            b = pool(v, q, att[:, g])
            q = q + proj(b)[:, None, :]
        pooled = (q * q_mask.to(q.dtype)[..., None]).sum(1)  # padded words carry b too: drop them
        if self.attended_xy:
            pooled = torch.cat([pooled, torch.einsum("bgrl,rc->bgc", att, xy).flatten(1)], dim=-1)
        return self.classifier(pooled), att


def grid_centres(n_regions: int) -> torch.Tensor:
    """(R, 2) patch centres (x, y) in [-1, 1] of a square grid of R patch tokens, row-major
    (token r is row r // side, column r % side, as open_clip's ViT flattens its patches)."""
    side = int(round(n_regions ** 0.5))
    if side * side != n_regions:
        raise ValueError(f"{n_regions} regions are not a square grid of patches, so they have no grid position")
    r = torch.arange(n_regions, dtype=torch.float32)
    return torch.stack([(r % side + 0.5) / side, (r // side + 0.5) / side], dim=1) * 2 - 1


def attention_supervision_loss(attention: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """sum_g KL(t_g || a_g), mean over the batch: a_g is glimpse g's map summed over words (its
    distribution over regions), t_g a target distribution over regions, usually uniform over
    the patches of the object the g-th glimpse should find. A target row that is all zero
    contributes nothing (that glimpse of that question is free).

    attention (B, G, R, L); targets (B, G', R) with G' <= G (glimpses past G' are free). Why it
    exists: trained on answers alone, BAN's glimpses never settle on one object each (both
    spread over both objects of a relation, which then stays at chance); with this term glimpse
    0 learns to find the subject and glimpse 1 the object. The same idea as supervising VQA
    attention with human attention maps (Qiao et al., AAAI 2018), here with object boxes."""
    g = targets.shape[1]
    marginal = attention[:, :g].sum(-1)  # (B, G', R)
    t = targets.to(marginal.dtype)
    # t log t is 0 where t is 0; the 1e-8 keeps log finite where the map is exactly 0 (padding).
    kl = (t * (torch.log(t.clamp(min=1e-12)) - torch.log(marginal + 1e-8))).sum(-1)
    return kl.sum(1).mean()


class ConcatMLP(nn.Module):
    """No interaction before the MLP: logits = MLP([mean_i x_i ; mean_j y_j]), means over real
    regions and words. forward(...) -> (logits, None)."""

    def __init__(self, dv: int, dq: int, num_answers: int, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.classifier = _classifier(dv + dq, hidden, num_answers, dropout)

    def forward(self, v, q, v_mask, q_mask):
        joint = torch.cat([_masked_mean(v, v_mask), _masked_mean(q, q_mask)], dim=-1)
        return self.classifier(joint), None


class Hadamard(nn.Module):
    """Low-rank bilinear pooling of the pooled inputs (MLB without attention):
    logits = classifier((U^T v_bar) * (V^T q_bar)), v_bar, q_bar masked means. forward(...) ->
    (logits, None)."""

    def __init__(self, dv: int, dq: int, num_answers: int, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.U = FCNet(dv, hidden, dropout)
        self.V = FCNet(dq, hidden, dropout)
        self.classifier = _classifier(hidden, hidden, num_answers, dropout)

    def forward(self, v, q, v_mask, q_mask):
        joint = self.U(_masked_mean(v, v_mask)) * self.V(_masked_mean(q, q_mask))
        return self.classifier(joint), None


_CLASSES = {"ban": BAN, "concat": ConcatMLP, "hadamard": Hadamard}


def make_head(name: str, dv: int, dq: int, num_answers: int, **kw) -> nn.Module:
    """The head called `name` (one of HEADS); kw go to its constructor (hidden, dropout, ...)."""
    if name not in _CLASSES:
        raise ValueError(f"unknown VQA head {name!r}; choose one of {', '.join(HEADS)}")
    return _CLASSES[name](dv, dq, num_answers, **kw)


def soft_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """VQA soft accuracy summed over the batch: sum_b targets[b, argmax_a logits[b, a]], where
    targets (B, A) hold min(#humans who gave answer a / 3, 1). Divide by B for the mean."""
    return targets.gather(1, logits.argmax(1, keepdim=True)).sum()


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BAN's loss: binary cross-entropy with logits against the soft scores, mean over all
    B * A entries, times A (= the sum over answers, mean over the batch), so the gradient per
    example does not shrink as the answer vocabulary grows."""
    return F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]
