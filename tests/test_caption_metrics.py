"""Caption metrics: the pure-Python PTB tokenizer against outputs of the Java one, and BLEU,
ROUGE-L and CIDEr-D against independent re-implementations of pycocoevalcap's formulas."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from mmviz.captioner.metrics import CaptionMetrics, caption_metrics, ptb_tokenize

# Expected outputs produced by the Stanford CoreNLP 3.4.1 jar that ships with pycocoevalcap
# (`PTBTokenizer -preserveLines -lowerCase`), then pycocoevalcap's PUNCTUATIONS removal.
PTB_CASES = [
    ("A man's T-shirt, isn't it?", "a man 's t-shirt is n't it"),
    # -lowerCase runs after -LRB- is made, so pycocoevalcap's "-LRB-" never matches: kept
    ("Two dogs (brown) play in the park.", "two dogs -lrb- brown -rrb- play in the park"),
    ('"Hello," she said -- it\'s 3.5 miles away.', "hello she said it 's 3.5 miles away"),
    ("I can't believe they're gonna win!", "i ca n't believe they 're gon na win"),
    ("The  cat   sat on the mat...", "the cat sat on the mat"),
    ("Mr. Smith won't go to the U.S. today; he'll stay.",
     "mr. smith wo n't go to the u.s. today he 'll stay"),
    ("A woman's umbrella: 1,000 dollars & 50% off $5.",
     "a woman 's umbrella 1,000 dollars & 50 % off $ 5"),
    ("The dogs' bowls, aren't they? I'm sure we've seen 'em.",
     "the dogs bowls are n't they i 'm sure we 've seen 'em"),
    ("It's the players' ball - a well-known fact.", "it 's the players ball a well-known fact"),
    ("Cannot do it, you'd say. Wanna go?", "can not do it you 'd say wan na go"),
    ("Don\u2019t stop \u2018quoted\u2019 \u201cdouble\u201d \u2014 fast\u2026",
     "do n't stop quoted double fast"),
    ("The 1990s and '90s, .5 and 3. and 2nd place, at 10:30 a.m.",
     "the 1990s and '90s .5 and 3 and 2nd place at 10:30 a.m."),
    ("red--blue and self- esteem, -5 degrees; I'd've known.",
     "red blue and self esteem -5 degrees i 'd 've known"),
    ("What?! Really!!", "what ?! really !!"),  # runs of ?/! are one token, not in PUNCTUATIONS
    ("...", ""),
    ("", ""),
]


@pytest.mark.parametrize("text, expected", PTB_CASES)
def test_ptb_tokenize_matches_java_tokenizer(text, expected):
    assert ptb_tokenize(text) == expected


# --- independent re-implementations -------------------------------------------------------

def _ngrams(tokens, k):
    return Counter(tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1))


def _bleu(cands, refs, n=4):
    """Corpus BLEU-1..n and sentence BLEU-n: clipped n-gram precision, brevity penalty against
    the closest reference length (ties: the shorter), no smoothing."""
    correct, guess, c_len, r_len, sentence = np.zeros(n), np.zeros(n), 0, 0, []
    for cand, rs in zip(cands, refs):
        hyp, rtoks = cand.split(), [r.split() for r in rs]
        closest = min((abs(len(r) - len(hyp)), len(r)) for r in rtoks)[1]
        c_len, r_len = c_len + len(hyp), r_len + closest
        corr = np.zeros(n)
        for k in range(1, n + 1):
            maxref = Counter()
            for r in rtoks:
                maxref |= _ngrams(r, k)  # element-wise max of counts
            corr[k - 1] = sum(min(c, maxref[g]) for g, c in _ngrams(hyp, k).items())
        g = np.array([max(0, len(hyp) - k + 1) for k in range(1, n + 1)])
        correct, guess = correct + corr, guess + g
        bp = 1.0 if len(hyp) >= closest else math.exp(1 - closest / len(hyp))
        sentence.append(bp * math.exp(np.mean(np.log(corr / g))) if corr.all() else 0.0)
    logp = np.log(correct / guess)
    bp = 1.0 if c_len >= r_len else math.exp(1 - r_len / c_len)
    return [bp * math.exp(logp[:k].mean()) for k in range(1, n + 1)], sentence


def _lcs(a, b):
    table = np.zeros((len(a) + 1, len(b) + 1), dtype=int)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1, j + 1] = table[i, j] + 1 if x == y else max(table[i, j + 1], table[i + 1, j])
    return table[-1, -1]


def _rouge_l(cand, refs, beta=1.2):
    hyp = cand.split()
    p = max(_lcs(hyp, r.split()) / len(hyp) for r in refs)
    r = max(_lcs(hyp, ref.split()) / len(ref.split()) for ref in refs)
    return 0.0 if p == 0 or r == 0 else (1 + beta ** 2) * p * r / (r + beta ** 2 * p)


def _cider_d(cands, refs, n=4, sigma=6.0):
    """CIDEr-D: tf-idf n-gram vectors (df over the images' reference sets, idf = log(N) -
    log(max(1, df))), clipped cosine min(h, r).r / (|h||r|), gaussian length penalty, x10,
    mean over references and over n."""
    vocab = sorted({g for s in cands + [r for rs in refs for r in rs]
                    for k in range(1, n + 1) for g in _ngrams(s.split(), k)})
    index = {g: i for i, g in enumerate(vocab)}
    lengths = np.array([len(g) for g in vocab])
    df = np.zeros(len(vocab))
    for rs in refs:
        df[[index[g] for g in {g for r in rs for k in range(1, n + 1) for g in _ngrams(r.split(), k)}]] += 1
    idf = np.log(len(cands)) - np.log(np.maximum(1.0, df))

    def vec(sentence):
        tf = np.zeros(len(vocab))
        for k in range(1, n + 1):
            for g, c in _ngrams(sentence.split(), k).items():
                tf[index[g]] = c
        return tf * idf

    scores = []
    for cand, rs in zip(cands, refs):
        h = vec(cand)
        per_ref = []
        for r in rs:
            v = vec(r)
            penalty = math.exp(-((len(cand.split()) - len(r.split())) ** 2) / (2 * sigma ** 2))
            sims = []
            for k in range(1, n + 1):
                hk, vk = h * (lengths == k), v * (lengths == k)
                norm = np.linalg.norm(hk) * np.linalg.norm(vk)
                sims.append(np.minimum(hk, vk) @ vk / norm * penalty if norm else 0.0)
            per_ref.append(np.mean(sims))
        scores.append(10.0 * np.mean(per_ref))
    return np.array(scores)


# Already tokenised (lowercase, no punctuation), so the scorers see exactly these strings.
CANDS = ["a man is riding a horse on the beach",
         "two dogs play with a red ball in the grass",
         "a plate of food with rice and broccoli",
         "a cat sits on a couch",
         "a red bus next to a red car on a red street"]
REFS = [["a man rides a horse on the beach", "a person riding a brown horse along the beach at sunset"],
        ["two dogs are playing with a ball", "two puppies play with a red ball on the grass",
         "dogs playing in a grassy yard"],
        ["a plate of rice chicken and broccoli", "a white plate with food on it"],
        ["a cat is sitting on the couch", "a black cat sits on a couch near a window", "a cat on a sofa"],
        # "red" thrice against once per reference: clipping (BLEU: max over references, not sum)
        ["a red bus parked on a street", "a red double decker bus next to a car"]]


def test_fixture_is_already_tokenised():
    assert [ptb_tokenize(c) for c in CANDS] == CANDS
    assert [[ptb_tokenize(r) for r in rs] for rs in REFS] == REFS


def test_bleu_matches_independent_computation():
    m = caption_metrics(CANDS, REFS)
    corpus, sentence = _bleu(CANDS, REFS)
    # pycocoevalcap smooths each precision as (correct + 1e-15) / (guess + 1e-9)
    assert [m.corpus[f"bleu{k}"] for k in range(1, 5)] == pytest.approx(corpus, rel=1e-6)
    assert m.per_caption["bleu4"] == pytest.approx(sentence, rel=1e-6, abs=1e-3)
    assert sentence[0] > 0.3 and sentence[2] == 0.0  # the fixture has both kinds of rows
    # corpus BLEU pools n-gram counts; it is not the mean of sentence BLEU
    assert m.corpus["bleu4"] != pytest.approx(np.mean(sentence), rel=1e-3)


def test_bleu_brevity_penalty_uses_closest_reference_length():
    cands = ["a dog runs fast on grass"]  # 6 tokens; closest reference has 8, the other 20
    refs = [["a dog runs fast on the green grass", " ".join(["a dog runs fast on grass"] * 3 + ["ok", "ok"])]]
    m = caption_metrics(cands, refs)
    assert [m.corpus[f"bleu{k}"] for k in range(1, 5)] == pytest.approx(_bleu(cands, refs)[0], rel=1e-6)
    assert m.corpus["bleu1"] == pytest.approx(math.exp(1 - 8 / 6), rel=1e-6)  # every unigram matches
    # a tie (references of 5 and 7 tokens for 6) goes to the shorter one: no penalty
    tie = caption_metrics(["a dog runs fast on grass"],
                          [["a dog runs on grass", "a dog runs very fast on the grass"]])
    assert tie.corpus["bleu1"] == pytest.approx(1.0, rel=1e-6)


def test_rouge_l_matches_independent_lcs():
    m = caption_metrics(CANDS, REFS)
    expected = np.array([_rouge_l(c, rs) for c, rs in zip(CANDS, REFS)])
    assert m.per_caption["rouge_l"] == pytest.approx(expected, rel=1e-12)
    assert m.corpus["rouge_l"] == pytest.approx(expected.mean(), rel=1e-12)
    assert (expected > 0).all() and (expected < 1).all()


def test_cider_d_matches_independent_numpy_implementation():
    m = caption_metrics(CANDS, REFS)
    expected = _cider_d(CANDS, REFS)
    assert m.per_caption["cider"] == pytest.approx(expected, rel=1e-9)
    assert m.corpus["cider"] == pytest.approx(expected.mean(), rel=1e-9)
    assert (expected > 0).all()


def test_cider_d_depends_on_the_whole_corpus():
    # idf comes from all images' references: a lone image gives log(1) - log(1) = 0 everywhere
    assert caption_metrics(CANDS[:1], REFS[:1]).corpus["cider"] == 0.0
    assert caption_metrics(CANDS[:2], REFS[:2]).per_caption["cider"][0] != pytest.approx(
        caption_metrics(CANDS, REFS).per_caption["cider"][0])


def test_identical_candidate_and_result_shape():
    cands = ["A dog runs on the green grass.", "A cat on a mat"]
    refs = [["a dog runs on the green grass", "a puppy in a field"], ["two birds in the sky"]]
    m = caption_metrics(cands, refs)
    assert isinstance(m, CaptionMetrics)
    assert set(m.corpus) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "rouge_l", "exact_match"}
    assert set(m.per_caption) == {"bleu4", "cider", "rouge_l", "exact_match"}
    assert all(isinstance(v, np.ndarray) and v.shape == (2,) for v in m.per_caption.values())
    assert m.per_caption["exact_match"].tolist() == [1.0, 0.0]
    assert m.corpus["exact_match"] == 0.5
    assert m.per_caption["bleu4"][0] == pytest.approx(1.0, abs=1e-6)
    assert m.per_caption["rouge_l"][0] == pytest.approx(1.0)
    assert m.per_caption["cider"][0] > m.per_caption["cider"][1]
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l"):
        assert 0.0 <= m.corpus[key] <= 1.0


def test_bad_input_raises_naming_the_row():
    with pytest.raises(ValueError):
        caption_metrics(["a dog"], [["a dog"], ["a cat"]])
    with pytest.raises(ValueError):
        caption_metrics([], [])
    with pytest.raises(ValueError, match="row 1"):
        caption_metrics(["a dog", "a cat"], [["a dog"], []])
    with pytest.raises(ValueError, match="row 0"):
        caption_metrics(["a dog"], ["a dog"])  # a bare string, not a list of references


def test_empty_candidates_do_not_crash_and_score_zero():
    cands = ["", "...", "a dog runs on the grass"]
    refs = [["a cat sits on a mat"], ["a bird in the sky"], ["a dog runs on the grass"]]
    m = caption_metrics(cands, refs)
    for key in ("bleu4", "cider", "rouge_l", "exact_match"):
        assert m.per_caption[key][:2].tolist() == [0.0, 0.0], key
    assert m.per_caption["bleu4"][2] == pytest.approx(1.0, abs=1e-6)


def test_references_without_tokens_do_not_crash():
    m = caption_metrics(["a dog", "a cat"], [["..."], ["!"]])
    assert m.per_caption["cider"].tolist() == [0.0, 0.0]
    assert m.corpus["bleu1"] == pytest.approx(0.0, abs=1e-6)
