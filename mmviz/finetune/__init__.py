"""Short fine-tuning runs of open_clip models: contrastive, m2-mix and C3 noise.

    losses.py       InfoNCE, m2-mix, uni-modal mixes, C3 noise; FinetuneLoss combines them
    distributed.py  torchrun set-up and the all-gather that passes gradients (DDP)
    config.py       FinetuneConfig and LossConfig, the train/validation split, run folders (no torch)
    train.py        `run`: one resumable run in <home>/runs/<id>/
    runs.py         runs as background processes (the app's Fine-tune page): launch, cancel, list
"""

# The choices a run is configured with, here (no torch) so that the CLI can offer them in its
# parser without loading torch: .losses and .train check against them.
LOSSES = ("clip", "m2mix")
UNIMODAL = ("none", "image", "text", "both")  # uni-modal mixes of m2-mix
TRAINABLE = ("proj", "last", "all")  # output projections, the last blocks too, or everything
