"""A trained VQA head with its CLIP model: ask a question about an image, get answers and maps.

    from mmviz.vqa import VQAHead
    head = VQAHead.builtin()                       # the shipped BAN head on builtin:shapes
    result = head.ask("scene.png", "what colour is the circle?")
    result.answers                                 # [("red", 0.97), ("blue", 0.02), ...]
    result.attention                               # (glimpses, regions, words), BAN only
    result.region_map()                            # (grid, grid) attention per image patch
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..models import BUILTIN_DIR, BUILTIN_SPEC

BUILTIN_VQA_DIR = BUILTIN_DIR / "vqa"


@dataclass
class VQAAnswer:
    """What a head says about one (image, question).

    answers: the top answers with their probabilities (sigmoids of the head's logits: each is
    its own estimate that the answer is right, so they need not sum to 1).
    attention: BAN's maps (glimpses, regions, words) over the real regions and words, each
    glimpse summing to 1; None for heads without attention.
    words: the question's tokens as the model reads them (start and end markers included).
    grid: regions are the image patches of a grid x grid square, row by row."""

    question: str
    answers: list[tuple[str, float]]
    attention: np.ndarray | None
    words: list[str]
    grid: int

    def region_map(self, glimpse: int | None = None, word: int | None = None) -> np.ndarray:
        """(grid, grid) attention mass per patch: summed over words (or one `word`), for one
        `glimpse` or averaged over all."""
        if self.attention is None:
            raise ValueError("this head has no attention maps (only BAN has)")
        a = self.attention if glimpse is None else self.attention[[glimpse]]
        per_region = (a.sum(-1) if word is None else a[:, :, word]).mean(0)
        return per_region.reshape(self.grid, self.grid)


class VQAHead:
    """A head from `mmviz.vqa.train.save` (or `mmviz vqa train`), with the CLIP model whose
    tokens it reads (config.json's clip_model)."""

    def __init__(self, folder: str | Path, spec: str | None = None):
        from ..models import load_model
        from .train import load

        self.folder = Path(folder)
        doc = json.loads((self.folder / "config.json").read_text("utf-8"))
        self.spec = spec or doc.get("clip_model", BUILTIN_SPEC)
        self.model, self.vocab, self.config = load(self.folder)
        self.loaded = load_model(self.spec)
        self.name = self.config.head

    @classmethod
    def builtin(cls) -> "VQAHead":
        if not (BUILTIN_VQA_DIR / "model.safetensors").is_file():
            raise FileNotFoundError(f"no builtin VQA head in {BUILTIN_VQA_DIR}; rebuild it with "
                                    "`mmviz builtin train-vqa`")
        return cls(BUILTIN_VQA_DIR)

    def metrics(self) -> dict | None:
        """metrics.json beside the head (per-type accuracies of the heads compared), if any."""
        path = self.folder / "metrics.json"
        return json.loads(path.read_text("utf-8")) if path.is_file() else None

    def features(self, image, question: str):
        """(v, v_mask, q, q_mask, words) for one image (PIL image, path or bytes) and question."""
        import torch

        from ..embed import image_tokens, text_tokens
        from ..queries import open_query_image

        if not question.strip():
            raise ValueError("the question is empty")
        pil = open_query_image(image)  # bounded like any imported image, EXIF rotation applied
        x = self.loaded.preprocess(pil.convert("RGB"))[None]
        with torch.inference_mode():
            v, v_mask = image_tokens(self.loaded, x)
        q, q_mask = text_tokens(self.loaded, [question], inputs=self.config.word_inputs)  # as trained
        n = int(q_mask[0].sum())  # real tokens: start marker through end marker
        ids = self.loaded.tokenizer([question])[0][:n].tolist()
        decode = getattr(self.loaded.tokenizer, "decode", None)
        words = [decode([i]).strip() if decode else str(i) for i in ids]
        return v, v_mask, q[:, :n], q_mask[:, :n], words

    def ask(self, image, question: str, top: int = 5) -> VQAAnswer:
        from .train import answer

        v, v_mask, q, q_mask, words = self.features(image, question)
        answers, att = answer(self.model, self.vocab, v, v_mask, q, q_mask, top=top)
        grid = int(round(np.sqrt(v.shape[1])))
        return VQAAnswer(question, answers[0], None if att is None else att[0], words, grid)
