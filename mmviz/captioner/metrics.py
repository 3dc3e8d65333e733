"""Caption metrics as the COCO caption evaluation computes them: BLEU-1..4, CIDEr-D, ROUGE-L.

Why pycocoevalcap's own scorers: published numbers come from them, and their quirks (BLEU's
1e-15/1e-9 smoothing and "closest" reference length, CIDEr-D's corpus-wide idf and x10) decide
the values. Only its tokenizer is replaced: it shells out to Java, which the app must not need.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS: tokens dropped after PTB tokenisation.
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"])
# The Java tokenizer turns quotes into ``/''/`/', dashes into --, the ellipsis into ...: all dropped.
_DROPPED = PUNCTUATIONS | set('"\u2026\u2010\u2011\u2012\u2013\u2014\u2015')
# Brackets become -LRB- etc.; -lowerCase lowercases them AFTER that, so pycocoevalcap's
# upper-case "-LRB-" never matches and "-lrb-" survives in its tokenised captions. Kept here too.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na",
                "gimme": "gim me", "lemme": "lem me"}
# Clitics split off the word before them: "don't" -> "do n't", "dog's" -> "dog 's".
_CLITIC = re.compile(r"(?<=\w)(n't|'(?:s|re|ll|ve|m|d))(?!\w)")
_TOKEN = re.compile(
    # abbreviations keep their dot: "u.s.", "e.g.", "p.m.", "a.", "mr.", "st.", "no. 5"
    r"(?<![\w.])(?:[a-z](?:\.[a-z])*|mrs?|ms|dr|st|[js]r|vs|etc|mt|ave|inc|co|ft|no(?=\.\s*\d))\.(?!\w)"
    r"|'(?:s|re|ll|ve|m|d|em|n')(?!\w)"  # detached clitics, 'em, 'n'
    # words and numbers, joined by inner - . / ' @ (and , : between digits): "t-shirt", "3.5",
    # "1,000", "10:30", "o'clock"; with a sign or dot before digits: "-5", ".5", "'90s"
    r"|(?:(?<![\w-])-(?=\d)|(?<!\w)[.'](?=\d))?[#@]?\w+(?:(?:[-./'@]|(?<=\d)[,:](?=\d))\w+)*"
    r"|[?!]+"  # runs stay whole, as in Java: "?!" and "!!" are not in PUNCTUATIONS and survive
    r"|\S"  # any other symbol on its own: $ % & * + ...
)


def ptb_tokenize(text: str) -> str:
    """Lowercased PTB tokens of `text` without punctuation, space-joined: what pycocoevalcap's
    PTBTokenizer (Stanford CoreNLP 3.4.1, `-preserveLines -lowerCase`) then PUNCTUATIONS give.

    Why: BLEU/CIDEr/ROUGE compare tokens, so "Dog." must score like "dog". Checked against the Java
    tokenizer on typical captions. Known differences, all rare in captions: URLs, emoticons
    (":)" -> Java ":-rrb-", here "-rrb-"), "rock'n'roll"/"y'all"/"'tis" (Java splits them),
    a letter glued to a number ("3:00pm", Java "3:00 pm"), "what?how" and "c;d" (Java keeps
    "what?how" and gives "c ;d"), and Java's longer abbreviation list (here: a few common ones).
    """
    text = text.lower().replace("\u2018", "'").replace("\u2019", "'")
    text = _CLITIC.sub(r" \1", text.replace("\u201c", '"').replace("\u201d", '"'))
    out = []
    for tok in _TOKEN.findall(text):
        tok = _BRACKETS.get(tok, _SPLIT_WORDS.get(tok, tok))
        if tok not in _DROPPED:
            out.append(tok)
    return " ".join(out)


@dataclass
class CaptionMetrics:
    """Corpus scores (keys bleu1..bleu4, cider, rouge_l, exact_match) and per-caption arrays
    (bleu4, cider, rouge_l, exact_match), each of length n, in the order of the inputs."""
    corpus: dict[str, float]
    per_caption: dict[str, np.ndarray]


def caption_metrics(candidates: list[str], references: list[list[str]]) -> CaptionMetrics:
    """Scores candidate i against references[i] with pycocoevalcap's BLEU(4), CIDEr-D and ROUGE-L.

    Corpus BLEU is pycocoevalcap's corpus-level BLEU (n-gram counts pooled over all captions, not
    the mean of sentence BLEU); corpus CIDEr-D and ROUGE-L are the means of the per-caption scores.
    CIDEr-D's idf comes from the references of all n images, so scores depend on the whole set
    (n == 1 always gives 0). A candidate that tokenises to "" is passed on as pycocoevalcap would:
    nothing breaks and it scores 0 (BLEU, CIDEr-D; ROUGE-L too unless a reference is also empty,
    where pycocoevalcap's "".split(" ") == [""] counts one common token and gives 1).
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    if not candidates:
        raise ValueError("no captions to score")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"row {i}: references must be a non-empty list of strings")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: [ptb_tokenize(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [ptb_tokenize(c)] for i, c in enumerate(candidates)}
    n = len(candidates)

    bleu, bleu_rows = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_rows = Rouge().compute_score(gts, res)
    if any(r for refs in gts.values() for r in refs):
        cider, cider_rows = Cider().compute_score(gts, res)
    else:  # no reference has a token: pycocoevalcap fails on max() of an empty document frequency
        cider, cider_rows = 0.0, np.zeros(n)
    exact = np.array([float(res[i][0] in gts[i]) for i in range(n)])

    corpus = {f"bleu{k + 1}": float(b) for k, b in enumerate(bleu)}
    corpus.update(cider=float(cider), rouge_l=float(rouge), exact_match=float(exact.mean()))
    per_caption = {"bleu4": np.asarray(bleu_rows[3], dtype=float),
                   "cider": np.asarray(cider_rows, dtype=float),
                   "rouge_l": np.asarray(rouge_rows, dtype=float), "exact_match": exact}
    return CaptionMetrics(corpus=corpus, per_caption=per_caption)
