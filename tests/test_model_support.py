"""Shared builders for the model and loss tests (this file holds no tests).

- `tiny_text_model_dir(path)`: a random 2-layer BertModel (hidden 32) saved with a WordPiece tokenizer, the layout
  of Bio_ClinicalBERT / the MiniLM, so TextEncoder loads it exactly like a real model.
- `ragged_sentence_index(counts, length, generator)`: a sentence_index row layout like bundle/data/tokenization.py
  produces ([CLS] = -1, sentences 1..S with random token counts, [SEP] = -1, padding = -1).
- `tiny_model_kwargs(text_dir)`: CMCGNS kwargs for a ResNet18 at 64 px with embed_dim 32 and K = 4.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)]


def tiny_text_model_dir(path: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    config = BertConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(1234)
    BertModel(config).save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    return path


def ragged_sentence_index(counts: list[int], length: int, generator: torch.Generator, gap: bool = False):
    """[B, length] long. counts[b] sentences for report b, 1-4 tokens each; gap=True skips sentence number 2 in
    reports with >= 3 sentences (a sentence cut away entirely, which the gather must skip)."""
    rows = []
    for count in counts:
        row = [-1]
        for k in range(1, count + 1):
            if gap and count >= 3 and k == 2:
                continue
            row += [k] * int(torch.randint(1, 5, (1,), generator=generator))
        row.append(-1)
        if len(row) > length:
            raise ValueError("length too small for the requested sentences")
        rows.append(row + [-1] * (length - len(row)))
    return torch.tensor(rows, dtype=torch.long)


def tiny_model_kwargs(text_dir: Path, **overrides) -> dict:
    kwargs = dict(
        text_model_dir=str(text_dir),
        image_encoder="resnet18",
        image_size=64,
        image_in_channels=1,
        embed_dim=32,
        num_clusters=4,
        decoder_channels=(16, 8, 8, 8),
    )
    kwargs.update(overrides)
    return kwargs


def tiny_text_batch(counts: list[int], length: int, generator: torch.Generator):
    """input_ids, attention_mask, token_type_ids, sentence_index for the tiny vocabulary."""
    sentence_index = ragged_sentence_index(counts, length, generator)
    real = torch.zeros_like(sentence_index, dtype=torch.bool)
    for b in range(len(counts)):
        last = int((sentence_index[b] > 0).nonzero().max()) + 1  # the [SEP] position
        real[b, : last + 1] = True
    input_ids = torch.randint(5, len(TINY_VOCAB), sentence_index.shape, generator=generator)
    input_ids[:, 0] = 2
    input_ids[~real] = 0
    for b in range(len(counts)):
        input_ids[b, int(real[b].sum()) - 1] = 3
    return input_ids, real.long(), torch.zeros_like(input_ids), sentence_index
