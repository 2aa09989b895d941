"""Sentence vectors from token vectors by sentence_index, batched (method.md 3).

s_{b,k} = mean of the token vectors of report b with sentence_index == k (1-based; -1 marks [CLS], [SEP] and
padding). Sentence numbers without any token (cut away by truncation) are skipped, as the published loop does,
so the sentences of each report are packed to the front: output [B, S_max, D] plus a validity mask [B, S_max].

Only tokens inside a sentence reach any loss, so the model projects just those (`sentence_tokens`) and pools them
with `sentence_means`; `gather_sentences` is the same for a full [B, L, D] token tensor.
"""

from __future__ import annotations

import torch


def sentence_tokens(tokens: torch.Tensor, sentence_index: torch.Tensor) -> torch.Tensor:
    """The tokens that belong to a sentence, [M, D] in row-major (report, position) order."""
    if tokens.shape[:2] != sentence_index.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} and sentence_index {tuple(sentence_index.shape)} disagree")
    return tokens[sentence_index > 0]


def sentence_means(selected: torch.Tensor, sentence_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """selected [M, D] = sentence_tokens(...), sentence_index [B, L] -> (sentences [B, S_max, D], valid [B, S_max])."""
    batch = sentence_index.shape[0]
    largest = int(sentence_index.max()) if sentence_index.numel() else 0
    if largest < 1:
        raise ValueError("no report in the batch has a sentence (sentence_index has no value >= 1)")
    report, position = torch.nonzero(sentence_index > 0, as_tuple=True)
    slot = report * largest + sentence_index[report, position] - 1  # (report, sentence number) flattened
    width = selected.shape[-1]
    sums = selected.new_zeros(batch * largest, width).index_add(0, slot, selected)
    counts = torch.zeros(batch * largest, device=selected.device).index_add(
        0, slot, torch.ones_like(slot, dtype=torch.float)
    )
    means = (sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)).view(batch, largest, width)
    present = (counts > 0).view(batch, largest)
    per_report = present.sum(dim=1)
    if bool((per_report == 0).any()):
        empty = torch.nonzero(per_report == 0).flatten().tolist()
        raise ValueError(f"reports at batch positions {empty} have no sentence; drop them before the model")
    slots = int(per_report.max())
    packed = present.long().cumsum(dim=1) - 1  # packed slot of each present sentence number
    rows = torch.arange(batch, device=selected.device).unsqueeze(1).expand_as(present)
    sentences = selected.new_zeros(batch, slots, width)
    sentences = sentences.index_put((rows[present], packed[present]), means[present])
    valid = torch.arange(slots, device=selected.device).unsqueeze(0) < per_report.unsqueeze(1)
    return sentences, valid


def gather_sentences(tokens: torch.Tensor, sentence_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [B, L, D], sentence_index [B, L] (long) -> (sentences [B, S_max, D], valid [B, S_max] bool)."""
    return sentence_means(sentence_tokens(tokens, sentence_index), sentence_index)
