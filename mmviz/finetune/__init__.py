"""Fine-tuning CLIP-style dual encoders: losses and data-parallel helpers."""
