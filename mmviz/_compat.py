"""Import helpers for third-party packages that need a nudge on some installs."""
from __future__ import annotations

import glob
import importlib.util
import os

_done = False


def ensure_torchvision_ops() -> None:
    """Make `import torchvision` (and so `import open_clip`) work with CPU-only torch.

    Why: constraints.txt pairs CPU torch with a torchvision wheel built for CUDA torch; its
    `_C.so` cannot load, and torchvision's import then fails registering fake kernels for
    `torchvision::nms`/`qnms` ("operator ... does not exist"). We try the real extension first
    and otherwise declare just those op schemas, so the import succeeds; mmviz never calls them.
    """
    global _done
    if _done:
        return
    _done = True
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    for path in glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so")):
        try:
            torch.ops.load_library(path)
            return
        except OSError:
            pass
    schema = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
    for op in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{op}", schema)
        except RuntimeError:  # already defined (real extension, or a second call)
            pass


def import_open_clip():
    """Return the `open_clip` module, applying `ensure_torchvision_ops` first."""
    ensure_torchvision_ops()
    import open_clip

    return open_clip
