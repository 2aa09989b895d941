"""Token features of a fully frozen text encoder, kept per distinct token row so each report runs through it once.

Why: on the demo the frozen MiniLM's forward is about half of a training step on 2 CPU cores, and with every layer
frozen its output for a report never changes (run in eval mode: no dropout). The cache is not part of the model's
state (it is rebuilt after a resume) and holds float32 features: rows x length x hidden x 4 bytes (2,656 demo
reports x 64 x 384: 261 MB).

Lookup is vectorised over the batch: a 64-bit hash of each row (ids, attention mask, token types) is found with
searchsorted in the sorted keys, and a hit is confirmed by comparing the stored row itself, so a hash collision is a
miss, never another report's features.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


class TextFeatureCache:
    """Features [L, H] per token row [K] (K = 3 L: ids, attention mask, token types), up to `max_rows` rows."""

    def __init__(self, max_rows: int | None = None, hash_seed: int = 0):
        self.max_rows = max_rows
        self.hash_seed = hash_seed
        self.size = 0
        self.rows: torch.Tensor | None = None  # [capacity, K] long
        self.features: torch.Tensor | None = None  # [capacity, L, H]
        self.sorted_keys: torch.Tensor | None = None  # [size] long
        self.sorted_slots: torch.Tensor | None = None  # [size] long, slot of each sorted key
        self._weights: torch.Tensor | None = None
        self._full_logged = False

    def _hash(self, rows: torch.Tensor) -> torch.Tensor:
        if self._weights is None or self._weights.shape[0] != rows.shape[1] or self._weights.device != rows.device:
            g = torch.Generator().manual_seed(self.hash_seed)
            weights = torch.randint(-(2**62), 2**62, (rows.shape[1],), generator=g, dtype=torch.long)
            self._weights = weights.to(rows.device)
        # int64 products and sums wrap around: a multilinear hash modulo 2^64
        return (rows.long() * self._weights).sum(dim=1)

    def lookup(self, rows: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(features [B, L, H] with zeros where missing, or None while empty; hit [B] bool)."""
        if self.size == 0:
            return None, torch.zeros(rows.shape[0], dtype=torch.bool, device=rows.device)
        if rows.shape[1] != self.rows.shape[1]:
            raise ValueError(f"token rows of width {rows.shape[1]}, the cache holds rows of {self.rows.shape[1]}")
        keys = self._hash(rows)
        position = torch.searchsorted(self.sorted_keys, keys).clamp(max=self.size - 1)
        slots = self.sorted_slots[position]
        hit = (self.sorted_keys[position] == keys) & (self.rows[slots] == rows).all(dim=1)
        features = self.features[slots] * hit[:, None, None].to(self.features.dtype)
        return features, hit

    def insert(self, rows: torch.Tensor, features: torch.Tensor) -> None:
        """Store rows [N, K] with their features [N, L, H] (beyond max_rows: not stored, logged once)."""
        room = rows.shape[0] if self.max_rows is None else max(0, min(rows.shape[0], self.max_rows - self.size))
        if room < rows.shape[0] and not self._full_logged:
            logger.info("text feature cache full at %d rows: further reports run through the encoder", self.size)
            self._full_logged = True
        if room == 0:
            return
        rows, features = rows[:room], features[:room].detach()
        self._reserve(self.size + room, rows, features)
        slots = torch.arange(self.size, self.size + room, device=rows.device)
        self.rows[slots] = rows.long()
        self.features[slots] = features
        keys = self._hash(rows)
        all_keys = keys if self.sorted_keys is None else torch.cat([self.sorted_keys, keys])
        all_slots = slots if self.sorted_slots is None else torch.cat([self.sorted_slots, slots])
        order = torch.argsort(all_keys, stable=True)
        self.sorted_keys, self.sorted_slots = all_keys[order], all_slots[order]
        self.size += room

    def _reserve(self, needed: int, rows: torch.Tensor, features: torch.Tensor) -> None:
        capacity = 0 if self.rows is None else self.rows.shape[0]
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity, 64)
        if self.max_rows is not None:
            new_capacity = min(new_capacity, self.max_rows)
        new_rows = rows.new_zeros((new_capacity, rows.shape[1]), dtype=torch.long)
        new_features = features.new_zeros((new_capacity, *features.shape[1:]))
        if capacity:
            new_rows[: self.size] = self.rows[: self.size]
            new_features[: self.size] = self.features[: self.size]
        self.rows, self.features = new_rows, new_features
