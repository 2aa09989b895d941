"""Sentence vectors from token vectors by sentence_index, batched (method.md 3).

s_{b,k} = mean of the token vectors of report b with sentence_index == k (1-based; -1 marks [CLS], [SEP] and
padding). Sentence numbers without any token (cut away by truncation) are skipped, as the published loop does,
so the sentences of each report are packed to the front: output [B, S_max, D] plus a validity mask [B, S_max].
"""

from __future__ import annotations

import torch


def gather_sentences(tokens: torch.Tensor, sentence_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [B, L, D], sentence_index [B, L] (long) -> (sentences [B, S_max, D], valid [B, S_max] bool)."""
    if tokens.shape[:2] != sentence_index.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} and sentence_index {tuple(sentence_index.shape)} disagree")
    batch = tokens.shape[0]
    largest = int(sentence_index.max()) if sentence_index.numel() else 0
    if largest < 1:
        raise ValueError("no report in the batch has a sentence (sentence_index has no value >= 1)")
    numbers = torch.arange(1, largest + 1, device=sentence_index.device)
    membership = (sentence_index.unsqueeze(1) == numbers.view(1, -1, 1)).to(tokens.dtype)  # [B, K, L]
    counts = membership.sum(dim=-1)  # [B, K]
    means = (membership @ tokens) / counts.clamp(min=1).unsqueeze(-1)  # [B, K, D]
    present = counts > 0
    per_report = present.sum(dim=1)
    if bool((per_report == 0).any()):
        empty = torch.nonzero(per_report == 0).flatten().tolist()
        raise ValueError(f"reports at batch positions {empty} have no sentence; drop them before the model")
    slots = int(per_report.max())
    position = present.long().cumsum(dim=1) - 1  # packed slot of each present sentence number
    rows = torch.arange(batch, device=tokens.device).unsqueeze(1).expand_as(present)
    sentences = tokens.new_zeros(batch, slots, tokens.shape[-1])
    sentences = sentences.index_put((rows[present], position[present]), means[present])
    valid = torch.arange(slots, device=tokens.device).unsqueeze(0) < per_report.unsqueeze(1)
    return sentences, valid
