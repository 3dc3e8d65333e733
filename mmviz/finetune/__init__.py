"""Short fine-tuning runs of open_clip models: contrastive, m2-mix and C3 noise.

    losses.py       InfoNCE, m2-mix, uni-modal mixes, C3 noise; FinetuneLoss combines them
    distributed.py  torchrun set-up and the all-gather that passes gradients (DDP)
    train.py        FinetuneConfig and `run`: one resumable run in <home>/runs/<id>/
    runs.py         runs as background processes (the app's Fine-tune page): launch, cancel, list
"""
