"""Downstream transfer tasks built around a pretrained image encoder (classification: linear probe, fine-tuning)."""
