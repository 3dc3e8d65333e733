"""Text-only captioning: C3's connect, collapse and corrupt on a downstream task.

A small decoder (`model`) is trained on the text embeddings of captions (`train`) and then
captions images from their image embeddings, through the variant's input (`variants`); the
captions are scored against references and under the CLIP model (`evaluate`, `metrics`).
`builtin` trains and ships the five variants for `builtin:shapes`; `runs` trains one on a
workspace dataset in the background.
"""
from .train import CaptionData, Captioner, CaptionerConfig, fit, split_images, train_on_captions
from .variants import LABELS, VARIANTS

__all__ = ["CaptionData", "Captioner", "CaptionerConfig", "LABELS", "VARIANTS", "fit", "split_images", "train_on_captions"]
