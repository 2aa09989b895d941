"""Sentence vectors from token vectors by sentence_index, batched (method.md 3).

s_{b,k} = mean of the token vectors of report b with sentence_index == k (1-based; -1 marks [CLS], [SEP] and
padding). Sentence numbers without any token (cut away by truncation) are skipped, as the published loop does,
so the sentences of each report are packed to the front: output [B, S_max, D] plus a validity mask [B, S_max].

Only tokens inside a sentence reach any loss, so the model projects just those (`sentence_tokens`) and pools them
with `sentence_means`; `gather_sentences` is the same for a full [B, L, D] token tensor.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class SentenceLayout(NamedTuple):
    """Where each sentence token goes, from sentence_index alone, with one host read for the data-dependent sizes
    (a GPU step waits for the device once here, not once per boolean selection)."""

    token_positions: torch.Tensor  # [M] flat (report, position) indices of the tokens inside a sentence
    token_slot: torch.Tensor  # [M] flat (report, packed sentence) slot of each of those tokens
    valid: torch.Tensor  # [B, S_max] bool
    slots: int  # S_max
    sentences: int  # N = valid.sum()


def sentence_layout(sentence_index: torch.Tensor) -> SentenceLayout:
    batch, length = sentence_index.shape
    inside = sentence_index > 0
    number = sentence_index.clamp(min=0)  # sentence numbers are at most L, so [B, L + 1] holds every one
    tokens_per_number = torch.zeros(batch, length + 1, device=sentence_index.device).scatter_add_(
        1, number, inside.float()
    )
    present = tokens_per_number[:, 1:] > 0  # [B, L]: sentence number k + 1 has a token
    per_report = present.sum(dim=1)
    m, slots, n, fewest = torch.stack([inside.sum(), per_report.max(), per_report.sum(), per_report.min()]).tolist()
    if slots < 1:
        raise ValueError("no report in the batch has a sentence (sentence_index has no value >= 1)")
    if fewest == 0:
        empty = torch.nonzero(per_report == 0).flatten().tolist()
        raise ValueError(f"reports at batch positions {empty} have no sentence; drop them before the model")
    positions = torch.nonzero_static(inside.flatten(), size=m).squeeze(1)
    packed = present.long().cumsum(dim=1) - 1  # packed slot of each sentence number (skipping absent numbers)
    report = torch.div(positions, length, rounding_mode="floor")
    token_number = number.flatten()[positions]  # 1-based
    token_slot = report * slots + packed[report, token_number - 1]
    valid = torch.arange(slots, device=sentence_index.device).unsqueeze(0) < per_report.unsqueeze(1)
    return SentenceLayout(positions, token_slot, valid, int(slots), int(n))


def sentence_tokens(tokens: torch.Tensor, layout: SentenceLayout) -> torch.Tensor:
    """The tokens that belong to a sentence, [M, D] in row-major (report, position) order."""
    return tokens.flatten(0, 1).index_select(0, layout.token_positions)


def sentence_means(selected: torch.Tensor, layout: SentenceLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """selected [M, D] = sentence_tokens(...) -> (sentences [B, S_max, D], valid [B, S_max]); absent slots are 0."""
    batch, slots = layout.valid.shape
    width = selected.shape[-1]
    sums = selected.new_zeros(batch * slots, width).index_add(0, layout.token_slot, selected)
    counts = torch.zeros(batch * slots, device=selected.device).index_add(
        0, layout.token_slot, torch.ones_like(layout.token_slot, dtype=torch.float)
    )
    means = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)
    return means.view(batch, slots, width), layout.valid


def valid_rows(x: torch.Tensor, layout: SentenceLayout) -> torch.Tensor:
    """x[valid] for x [B, S_max, ...] without a boolean selection (the count is known from the layout)."""
    index = torch.nonzero_static(layout.valid.flatten(), size=layout.sentences).squeeze(1)
    return x.flatten(0, 1).index_select(0, index)


def gather_sentences(tokens: torch.Tensor, sentence_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [B, L, D], sentence_index [B, L] (long) -> (sentences [B, S_max, D], valid [B, S_max] bool)."""
    if tokens.shape[:2] != sentence_index.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} and sentence_index {tuple(sentence_index.shape)} disagree")
    layout = sentence_layout(sentence_index)
    return sentence_means(sentence_tokens(tokens, layout), layout)


# odd 64-bit constants (splitmix64's): the products wrap around, which is what a hash wants
_MIX = (-7046029254386353131, -4658895280553007687, -7723592293110705685)


def sentence_keys(input_ids: torch.Tensor, layout: SentenceLayout) -> torch.Tensor:
    """A 64-bit key per valid sentence [N], equal for sentences made of the same token ids in the same order (the
    same sentence in two reports), different otherwise up to a hash collision (about N^2 / 2^64)."""
    ids = input_ids.flatten().index_select(0, layout.token_positions).long()
    order = torch.arange(ids.numel(), device=ids.device)
    slots = layout.valid.numel()
    # a sentence's tokens are contiguous: its first token's index gives each token's position inside it
    first = torch.full((slots,), ids.numel(), dtype=torch.long, device=ids.device)
    first = first.scatter_reduce(0, layout.token_slot, order, reduce="amin")
    position = order - first.index_select(0, layout.token_slot)
    mixed = ids * _MIX[0] + (position + 1) * _MIX[1]
    mixed = (mixed ^ (mixed >> 31)) * _MIX[2]
    keys = torch.zeros(slots, dtype=torch.long, device=ids.device).index_add(0, layout.token_slot, mixed)
    return valid_rows(keys.view(layout.valid.shape), layout)
