"""Queries from outside a dataset: free text or an image, embedded under a loaded model
(mmviz.models.LoadedModel) exactly as the dataset's captions and images are, for retrieval."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch


def text_query(loaded, text: str) -> np.ndarray:
    """(d,) unit vector of free text, as the dataset's captions are embedded."""
    from .embed import encode_texts

    if not text or not text.strip():
        raise ValueError("the text query is empty")
    return encode_texts(loaded, [text])[0]


def open_query_image(image):
    """A PIL image, path or bytes as an upright RGB PIL image, refused (ValueError) when larger
    than the import limits allow (read from the header, before the pixels are decoded)."""
    from PIL import Image, ImageOps

    from .data import ImportLimits, check_image

    limits = ImportLimits.from_env()
    if isinstance(image, Image.Image):
        w, h = image.size
        if w * h > limits.max_pixels:
            raise ValueError(f"query image {w}x{h} = {w * h:,} pixels > limit {limits.max_pixels:,}; "
                             "raise MMVIZ_MAX_PIXELS to allow")
        return ImageOps.exif_transpose(image).convert("RGB")
    source = image if isinstance(image, bytes) else Path(image)
    meta, reason, detail = check_image(source, limits)  # the bounds every imported image gets
    if meta is None:
        raise ValueError(f"query image refused ({reason}): {detail}")
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        return ImageOps.exif_transpose(im).convert("RGB")  # as the embedding engine reads files


def image_query(loaded, image) -> np.ndarray:
    """(d,) unit vector of an image (PIL image, path or bytes), as the dataset's images are
    embedded. Images over ImportLimits.max_pixels (MMVIZ_MAX_PIXELS) raise ValueError."""
    im = open_query_image(image)
    with torch.inference_mode():
        x = loaded.preprocess(im).unsqueeze(0).to(loaded.device, dtype=loaded.dtype)
        feats = loaded.model.encode_image(x)
        return torch.nn.functional.normalize(feats.float(), dim=-1)[0].cpu().numpy()
