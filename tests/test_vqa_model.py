"""VQA answer heads: shapes, exact masking, gradients, overfitting tiny tasks, BAN's grounding."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmviz.vqa.model import (BAN, HEADS, BilinearAttention, BilinearPool, attention_supervision_loss, grid_centres,
                             make_head, soft_score, vqa_loss)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

B, R, L, DV, DQ, A, G = 3, 5, 4, 12, 10, 7, 2


def _inputs(seed=0):
    """Random features; example 0 has a padded last region and two padded words."""
    g = torch.Generator().manual_seed(seed)
    v, q = torch.randn(B, R, DV, generator=g), torch.randn(B, L, DQ, generator=g)
    v_mask, q_mask = torch.ones(B, R, dtype=torch.bool), torch.ones(B, L, dtype=torch.bool)
    v_mask[0, -1] = False
    q_mask[0, -2:] = False
    q_mask[2, -1] = False
    return v, q, v_mask, q_mask


def _head(name, **kw):
    torch.manual_seed(0)
    return make_head(name, DV, DQ, A, hidden=8, **kw)


@pytest.mark.parametrize("name", HEADS)
def test_output_shapes(name):
    logits, att = _head(name)(*_inputs())
    assert logits.shape == (B, A) and torch.isfinite(logits).all()
    assert att.shape == (B, G, R, L) if name == "ban" else att is None


def test_bilinear_parts_shapes():
    torch.manual_seed(0)
    v, q, v_mask, q_mask = _inputs()
    att, logits = BilinearAttention(DV, DQ, hidden=8, glimpses=3, k=3)(v, q, v_mask, q_mask)
    assert att.shape == logits.shape == (B, 3, R, L)
    assert BilinearPool(DV, DQ, hidden=8, k=3)(v, q, att[:, 0]).shape == (B, 8)


def test_bilinear_pool_matches_the_formula():
    """f_h = sum over the k entries of group h of sum_ij A_ij (U'x_i)_c (V'y_j)_c, written out."""
    torch.manual_seed(0)
    v, q, _, _ = _inputs()
    pool = BilinearPool(DV, DQ, hidden=4, k=3)
    att = torch.rand(B, R, L)
    u, w = pool.U(v), pool.V(q)
    full = (att[..., None] * u[:, :, None, :] * w[:, None, :, :]).sum((1, 2))  # (B, 12)
    expected = full.view(B, 4, 3).sum(-1)
    torch.testing.assert_close(pool(v, q, att), expected, rtol=1e-5, atol=1e-5)


def test_attention_masks_padding_and_normalises():
    v, q, v_mask, q_mask = _inputs()
    _, att = _head("ban").eval()(v, q, v_mask, q_mask)
    assert (att[0, :, -1, :] == 0).all()  # the padded region, in every glimpse
    assert (att[0, :, :, -2:] == 0).all()  # the padded words
    assert (att[2, :, :, -1] == 0).all()
    sums = att.sum((2, 3))
    torch.testing.assert_close(sums, torch.ones(B, G, dtype=sums.dtype), rtol=0, atol=1e-6)
    assert (att[1] > 0).all()  # nothing padded in example 1: every cell gets some weight


@pytest.mark.parametrize("name", HEADS)
def test_all_masked_input_is_finite(name):
    v, q, v_mask, q_mask = _inputs()
    v_mask[1] = False
    q_mask[2] = False
    head = _head(name)
    logits, att = head(v, q, v_mask, q_mask)
    assert torch.isfinite(logits).all()
    if att is not None:
        assert torch.isfinite(att).all() and (att[1] == 0).all() and (att[2] == 0).all()
    vqa_loss(logits, torch.rand(B, A)).backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", HEADS)
def test_padding_does_not_reach_the_logits(name):
    v, q, v_mask, q_mask = _inputs()
    head = _head(name).eval()
    with torch.no_grad():
        before, _ = head(v, q, v_mask, q_mask)
        v2, q2 = v.clone(), q.clone()
        v2[0, -1] = 10 * torch.randn(DV)  # the padded region
        q2[0, -2:] = 10 * torch.randn(2, DQ)  # the padded words
        after, _ = head(v2, q2, v_mask, q_mask)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    # and unmasking it does change them: the test would notice a head that ignored v
    with torch.no_grad():
        changed, _ = head(v2, q2, torch.ones_like(v_mask), q_mask)
    assert (changed[0] - before[0]).abs().max() > 1e-3


@pytest.mark.parametrize("name", HEADS)
def test_gradients_reach_every_parameter(name):
    head = _head(name)
    logits, _ = head(*_inputs())
    vqa_loss(logits, torch.rand(B, A)).backward()
    for pname, p in head.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_make_head_rejects_unknown_names():
    with pytest.raises(ValueError, match="ban, concat, hadamard"):
        make_head("mlb", DV, DQ, A)
    assert isinstance(make_head("ban", DV, DQ, A, hidden=8, glimpses=1), BAN)


def test_soft_score_and_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]])
    targets = torch.tensor([[1.0, 0.3, 0.0], [0.0, 1.0, 2 / 3]])
    assert soft_score(logits, targets).item() == pytest.approx(1.0 + 2 / 3)  # argmaxes: 0 and 2
    # BCE summed over answers, averaged over the batch
    manual = -(targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits)).sum(1).mean()
    assert vqa_loss(logits, targets).item() == pytest.approx(manual.item(), rel=1e-6)
    zero = vqa_loss(torch.full((2, 3), -50.0), torch.zeros(2, 3))
    assert zero.item() < 1e-12


# ---- tiny synthetic tasks -------------------------------------------------------------------

def _which_colour(n=32, R=5, L=4, C=4, seed=0):
    """Four real regions, each [position one-hot (4) ; colour one-hot (C)], plus one padded
    region of noise; a question of 2-4 words (the rest padded noise), one of them naming a
    position (words 0-3), the others fillers (4-7). Answer: the colour at the named position.
    Means over regions lose which colour sits where, so the answer needs region-word binding."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.randint(0, C, (n, 4), generator=g)
    v = torch.randn(n, R, 4 + C, generator=g) * 5
    v[:, :4] = torch.cat([torch.eye(4).expand(n, 4, 4), F.one_hot(colours, C).float()], -1)
    v_mask = torch.arange(R)[None] < 4
    pos = torch.randint(0, 4, (n,), generator=g)
    words = torch.randint(4, 8, (n, L), generator=g)
    lens = torch.randint(2, L + 1, (n,), generator=g)
    words[torch.arange(n), (torch.rand(n, generator=g) * lens).long()] = pos
    q_mask = torch.arange(L)[None] < lens[:, None]
    q = torch.where(q_mask[..., None], F.one_hot(words, 8).float(), torch.randn(n, L, 8, generator=g) * 5)
    return v, q, v_mask.expand(n, R), q_mask, colours[torch.arange(n), pos], C


def _grounding(n=64, R=6, L=4, C=4, seed=1):
    """Regions [position one-hot (R) ; colour one-hot]; each question holds word 1 or word 2 among
    fillers (3-5). Word 2 -> the answer is region 3's colour; word 1 -> region 0's."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.randint(0, C, (n, R), generator=g)
    v = torch.cat([torch.eye(R).expand(n, R, R), F.one_hot(colours, C).float()], -1)
    key = torch.where(torch.rand(n, generator=g) < 0.5, 1, 2)
    words = torch.randint(3, 6, (n, L), generator=g)
    words[torch.arange(n), torch.randint(0, L, (n,), generator=g)] = key
    y = torch.where(key == 2, colours[:, 3], colours[:, 0])
    ones = torch.ones(n, dtype=torch.bool)
    return v, F.one_hot(words, 6).float(), ones[:, None].expand(n, R), ones[:, None].expand(n, L), y, C, key


def _train(name, data, steps=200, lr=1e-2, **kw):
    """Full-batch Adamax with BAN's loss; returns (head in eval mode, losses, train accuracy, maps)."""
    v, q, v_mask, q_mask, y, C = data
    torch.manual_seed(0)
    head = make_head(name, v.shape[-1], q.shape[-1], C, hidden=32, **kw)
    opt = torch.optim.Adamax(head.parameters(), lr=lr)
    targets = F.one_hot(y, C).float()
    losses = []
    for _ in range(steps):
        loss = vqa_loss(head(v, q, v_mask, q_mask)[0], targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    head.eval()
    with torch.no_grad():
        logits, att = head(v, q, v_mask, q_mask)
    return head, losses, (logits.argmax(1) == y).float().mean().item(), att


# Measured at 200 steps, this seed / over 4 seeds of data and init: BAN acc 1.00 / 1.00, final
# loss 0.016 / 0.002-0.045 of the first; ConcatMLP 0.81 / 0.69-0.91, loss 0.51 / 0.50-0.57 of
# the first; Hadamard 0.75 / 0.66-0.81, 0.50 / 0.47-0.57. The pooled heads lose which colour sits
# where and only memorise what they can; the bounds for them are loose on purpose.
@pytest.mark.parametrize("name, min_acc, max_loss_ratio", [("ban", 1.0, 0.1), ("concat", 0.5, 0.8),
                                                           ("hadamard", 0.5, 0.8)])
def test_heads_fit_the_which_colour_task(name, min_acc, max_loss_ratio):
    _, losses, acc, _ = _train(name, _which_colour(), steps=200)
    assert acc >= min_acc
    assert losses[-1] < max_loss_ratio * losses[0]


def test_ban_attends_to_the_region_the_word_names():
    """With one glimpse, the map must serve both rules, so on word-2 questions it has to sit on
    region 3. With two, glimpses may split the rules (one on region 0, one on region 3: seen on
    some seeds), so there the claim is that some glimpse sits on region 3.
    Measured over 8 seeds (data and init): one glimpse, region 3 on top in 0.89-1.00 of word-2
    examples with 0.87-1.00 of the mass; two glimpses, the best glimpse puts > 0.5 of its mass on
    region 3 in 0.83-1.00 of them. This seed: 1.00 and 1.00."""
    *data, key = _grounding()
    _, _, acc, att = _train("ban", data, steps=150, dropout=0.0, glimpses=1)
    assert acc == 1.0
    region = att[key == 2, 0].sum(-1)  # (n2, R): attention mass per region, summed over words
    others = torch.cat([region[:, :3], region[:, 4:]], 1)
    assert (region[:, 3] > others.max(1).values).float().mean() >= 0.8
    assert region[:, 3].mean() > 0.6  # uniform would be 1/6

    _, _, acc, att = _train("ban", data, steps=150, dropout=0.0, glimpses=2)
    assert acc == 1.0
    best = att[key == 2].sum(-1)[:, :, 3].max(1).values  # region 3's mass in its best glimpse
    assert (best > 0.5).float().mean() >= 0.7


# ---------------------------------------------------------------------------- position options


def test_grid_centres_by_hand():
    # 2 x 2 patches, row-major: (col, row) centres at 1/4 and 3/4 of the side, mapped to [-1, 1]
    torch.testing.assert_close(grid_centres(4), torch.tensor([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]]))
    c = grid_centres(64)
    assert c.shape == (64, 2) and c.min() == -7 / 8 and c.max() == 7 / 8
    assert c[9].tolist() == [-5 / 8, -5 / 8]  # row 1, column 1
    with pytest.raises(ValueError, match="not a square grid"):
        grid_centres(5)


def _square_inputs(seed=0, r=4):
    g = torch.Generator().manual_seed(seed)
    v, q = torch.randn(B, r, DV, generator=g), torch.randn(B, L, DQ, generator=g)
    v_mask, q_mask = torch.ones(B, r, dtype=torch.bool), torch.ones(B, L, dtype=torch.bool)
    v_mask[0, -1] = False
    q_mask[1, -2:] = False
    return v, q, v_mask, q_mask


def test_grid_coords_are_regions_features_appended():
    """BAN(grid_coords=s) on v is the plain BAN on [v ; s * (x, y)] with the same weights, and
    padding stays isolated though the padded patch has coordinates."""
    v, q, v_mask, q_mask = _square_inputs()
    torch.manual_seed(0)
    with_xy = BAN(DV, DQ, A, hidden=8, grid_coords=3.0).eval()
    plain = BAN(DV + 2, DQ, A, hidden=8).eval()
    plain.load_state_dict(with_xy.state_dict())
    appended = torch.cat([v, 3.0 * grid_centres(4).expand(B, 4, 2)], -1)
    got, att = with_xy(v, q, v_mask, q_mask)
    want, att_plain = plain(appended, q, v_mask, q_mask)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(att, att_plain)
    assert (att[0, :, -1] == 0).all() and (att[1, :, :, -2:] == 0).all()
    torch.testing.assert_close(att.sum((2, 3)), torch.ones(B, G))
    with pytest.raises(ValueError, match="not a square grid"):
        with_xy(*_inputs())  # 5 regions


def test_attended_xy_feeds_each_glimpse_position_to_the_classifier():
    v, q, v_mask, q_mask = _square_inputs()
    torch.manual_seed(0)
    head = BAN(DV, DQ, A, hidden=8, attended_xy=True).eval()
    seen = {}
    head.classifier.register_forward_hook(lambda mod, inp, out: seen.setdefault("x", inp[0]))
    _, att = head(v, q, v_mask, q_mask)
    x = seen["x"]
    assert x.shape == (B, DQ + 2 * G)
    centres = grid_centres(4)
    for g in range(G):
        # the attention-weighted mean of the patch centres, written out
        expected = torch.stack([sum(att[b, g, r].sum() * centres[r] for r in range(4)) for b in range(B)])
        torch.testing.assert_close(x[:, DQ + 2 * g: DQ + 2 * g + 2], expected)
    # the padded patch of example 0 has no weight, so its coordinates do not move the position
    assert att[0, :, -1].sum() == 0


def test_attention_supervision_loss_by_hand():
    # one example, 2 glimpses, 4 regions, 2 words; glimpse 0's region marginal is (.5, .25, .25, 0)
    att = torch.zeros(1, 2, 4, 2)
    att[0, 0, 0] = torch.tensor([0.3, 0.2])
    att[0, 0, 1, 0], att[0, 0, 2, 1] = 0.25, 0.25
    att[0, 1, 3, 0] = 1.0
    target = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])  # glimpse 1 free
    # KL = .5 log(.5/.5) + .5 log(.5/.25) = .5 log 2
    half_log2 = torch.tensor(0.5 * math.log(2))
    torch.testing.assert_close(attention_supervision_loss(att, target), half_log2, atol=1e-6, rtol=0)
    # supervising glimpse 1 too, on the one region it holds: KL 0 there
    both = target.clone()
    both[0, 1, 3] = 1.0
    torch.testing.assert_close(attention_supervision_loss(att, both), half_log2, atol=1e-6, rtol=0)
    # fewer target rows than glimpses: glimpses past them are free; the mean runs over the batch
    two = torch.cat([att, att]), torch.cat([target[:, :1], torch.zeros(1, 1, 4)])
    torch.testing.assert_close(attention_supervision_loss(*two), torch.tensor(0.25 * math.log(2)), atol=1e-6, rtol=0)
    assert attention_supervision_loss(att, torch.zeros(1, 2, 4)) == 0


def test_supervision_puts_each_glimpse_on_its_target():
    """On random features, training only the attention term moves glimpse 0 to region 1 and
    glimpse 1 to region 2 of every example (the masked region stays at 0)."""
    v, q, v_mask, q_mask = _square_inputs(seed=1)
    torch.manual_seed(0)
    head = BAN(DV, DQ, A, hidden=16, dropout=0.0, grid_coords=1.0)
    target = torch.zeros(B, 2, 4)
    target[:, 0, 1] = 1.0
    target[:, 1, 2] = 1.0
    opt = torch.optim.Adamax(head.parameters(), lr=2e-2)
    first = None
    for _ in range(150):
        loss = attention_supervision_loss(head(v, q, v_mask, q_mask)[1], target)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, att = head.eval()(v, q, v_mask, q_mask)
    marginal = att.sum(-1)  # (B, G, R)
    assert loss.item() < 0.05 * first
    assert (marginal[:, 0, 1] > 0.9).all() and (marginal[:, 1, 2] > 0.9).all(), marginal
