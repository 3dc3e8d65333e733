"""The captioner's vocabulary: the CLIP model's own tokenizer, cut down to the tokens that occur
in the training captions.

Why a cut-down vocabulary: CLIP's BPE has 49,408 tokens, and an output layer over all of them
would dwarf a decoder small enough to train in minutes on a CPU; a caption set uses a few hundred
(the shapes world about 40, COCO about 10,000). The captioner predicts indices into `tokens`
(CLIP token ids) plus four specials, and decodes them back to text with the CLIP tokenizer, so
what it writes is exactly what that tokenizer can spell.
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = 4


def _hf(tokenizer):
    """The Hugging Face tokenizer inside open_clip's HFTokenizer/SigLipTokenizer, else None."""
    inner = getattr(tokenizer, "tokenizer", None)
    return inner if inner is not None and hasattr(inner, "decode") else None


def tokenizer_kind(tokenizer) -> str:
    """"bpe" (open_clip's SimpleTokenizer: OpenAI CLIP, the builtin model and most open_clip
    models) or "hf" (a Hugging Face tokenizer wrapped by open_clip)."""
    if hasattr(tokenizer, "encoder") and hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode"):
        return "bpe"
    if _hf(tokenizer) is not None:
        return "hf"
    raise ValueError(f"the captioner cannot use a {type(tokenizer).__name__}: it needs open_clip's SimpleTokenizer "
                     "or a Hugging Face tokenizer that can decode")


def model_tokens(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text as the tokenizer's ids, without start, end or padding tokens."""
    if tokenizer_kind(tokenizer) == "bpe":
        return [tokenizer.encode(t) for t in texts]
    return list(_hf(tokenizer)(list(texts), add_special_tokens=False)["input_ids"])


# CLIP's BPE marks word ends only, so its decoder puts a space around every punctuation mark
# ("shapes : a" , "man 's"). These put the usual spacing back; the n-gram metrics tokenise
# punctuation away, so they score the same text either way.
_SPACING = ((re.compile(r" ([,.:;!?)\]])"), r"\1"), (re.compile(r"([(\[]) "), r"\1"),
            (re.compile(r" ' ?(s|t|re|ve|ll|d|m)\b"), r"'\1"), (re.compile(r"(\w) - (?=\w)"), r"\1-"),
            (re.compile(r"(\d) ?\. ?(?=\d)"), r"\1."))


def model_decode(tokenizer, ids: list[int]) -> str:
    if tokenizer_kind(tokenizer) == "bpe":
        text = " ".join(tokenizer.decode(list(ids)).split())
        for pattern, repl in _SPACING:
            text = pattern.sub(repl, text)
        return text
    return _hf(tokenizer).decode(list(ids), skip_special_tokens=True).strip()


class CaptionVocab:
    """Compact ids 0..3 are PAD, BOS, EOS, UNK; compact id SPECIALS + k is CLIP token `tokens[k]`."""

    def __init__(self, tokens: list[int]):
        self.tokens = [int(t) for t in tokens]
        self._index = {t: SPECIALS + k for k, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return SPECIALS + len(self.tokens)

    @classmethod
    def build(cls, tokenizer, captions: list[str], min_count: int = 1) -> "CaptionVocab":
        """Every token seen at least `min_count` times in `captions`, most frequent first."""
        counts = Counter(t for ids in model_tokens(tokenizer, captions) for t in ids)
        return cls([t for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count])

    def encode(self, tokenizer, captions: list[str], max_tokens: int) -> np.ndarray:
        """(n, max_tokens + 2) int64: BOS, the caption's compact ids (cut at max_tokens), EOS, PAD..."""
        out = np.full((len(captions), max_tokens + 2), PAD, dtype=np.int64)
        for i, ids in enumerate(model_tokens(tokenizer, captions)):
            row = [BOS] + [self._index.get(t, UNK) for t in ids[:max_tokens]] + [EOS]
            out[i, :len(row)] = row
        return out

    def decode(self, tokenizer, compact: list[int]) -> str:
        """Text of compact ids, read up to the first EOS; specials and UNK are dropped."""
        ids = []
        for c in compact:
            c = int(c)
            if c == EOS:
                break
            if c >= SPECIALS:
                ids.append(self.tokens[c - SPECIALS])
        return model_decode(tokenizer, ids)
