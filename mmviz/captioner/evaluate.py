"""Caption a set of images and score the captions: n-gram metrics against the references
(BLEU, CIDEr-D, ROUGE-L, exact matches) and embedding metrics under the CLIP model (CLIP-S,
RefCLIP-S, and MID with its per-caption PMI, from `mmviz.scoring`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import scoring
from .metrics import caption_metrics
from .train import CaptionData, Captioner

# The corpus metrics, in the order tables show them, with what each measures.
METRICS = {
    "bleu4": "BLEU-4: shared 1- to 4-grams with the references (geometric mean, brevity penalty)",
    "cider": "CIDEr-D: tf-idf weighted n-gram agreement with the references, x10 (consensus)",
    "rouge_l": "ROUGE-L: longest common subsequence with the best reference (F, beta 1.2)",
    "clip_s": "CLIP-S: 2.5 x max(cos(image, caption), 0) under the CLIP model (no references)",
    "refclip_s": "RefCLIP-S: harmonic mean of CLIP-S and the caption's best cosine with a reference",
    "mid": "MID: mutual information divergence of (image, caption) under the reference pairs' Gaussians",
    "exact_match": "share of captions equal to one of the image's references (after tokenising)",
}


@dataclass
class CaptionEvaluation:
    table: pd.DataFrame  # per image: id, caption, references, bleu4, cider, rouge_l, exact_match, clip_s, refclip_s, pmi
    corpus: dict[str, float]  # bleu1..4, cider, rouge_l, exact_match, clip_s, refclip_s, mid, images
    regularised: bool = False  # MID's Gaussians were shrunk (too few or too flat references)

    def worst(self, n: int = 20, by: str = "clip_s") -> pd.DataFrame:
        return self.table.sort_values([by, "cider"], kind="stable").head(n)

    def to_json(self) -> dict:
        """{"captions": [{"id", "caption", "references"}], "metrics": {...}}: what `mmviz caption --json` prints."""
        return {"captions": [{"id": str(r.id), "caption": r.caption, "references": list(r.references)}
                             for r in self.table.itertuples()],
                "metrics": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.corpus.items()}}


def score_captions(captions: list[str], data: CaptionData, encode_text, prefix: str = "") -> CaptionEvaluation:
    """Score one caption per image of `data` (which holds the images, their reference captions
    and the references' vectors). `encode_text(list[str]) -> (n, d)` is the CLIP text encoder
    (unit vectors); `prefix` goes before the generated captions, as it did before the references."""
    if data.images is None:
        raise ValueError("scoring captions needs the images' vectors")
    images = np.asarray(data.images, dtype=np.float64)
    if len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    refs = data.references()
    ngram = caption_metrics(captions, refs)
    cand = np.asarray(encode_text([prefix + c for c in captions]), dtype=np.float64)
    ref_vecs = np.asarray(data.texts, dtype=np.float64)
    owner = np.asarray(data.owner, dtype=np.int64)
    clip = scoring.clip_s(images, cand)
    refclip = scoring.refclip_s(images, cand, ref_vecs, owner)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scoring.RegularisedWarning)
        gauss = scoring.GaussianReference().fit(images[owner], ref_vecs)
        pmi, mid = gauss.pmi(images, cand), gauss.mid(images, cand)
    table = pd.DataFrame({"id": data.ids or [str(i) for i in range(len(images))], "caption": captions,
                          "references": refs, **{k: ngram.per_caption[k] for k in ("bleu4", "cider", "rouge_l")},
                          "exact_match": ngram.per_caption["exact_match"].astype(bool),
                          "clip_s": clip, "refclip_s": refclip, "pmi": pmi})
    corpus = {**{k: float(v) for k, v in ngram.corpus.items()}, "clip_s": float(clip.mean()),
              "refclip_s": float(refclip.mean()), "mid": float(mid), "images": int(len(images))}
    return CaptionEvaluation(table, corpus, bool(gauss.regularised_) or bool(caught))


def evaluate(captioner: Captioner, data: CaptionData, encode_text, prefix: str = "", beam: int = 1) -> CaptionEvaluation:
    """Caption every image of `data` with `captioner` and score the captions."""
    return score_captions(captioner.caption(data.images, beam=beam), data, encode_text, prefix)
