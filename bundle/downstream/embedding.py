"""Joint-space embeddings of a pretrained CMCGNS for the zero-shot, retrieval and grounding evaluations, computed
once per (checkpoint, manifest split) and cached on disk.

The cache key holds the checkpoint's size and modification time, the manifest's, the split and the preprocessing
settings; a different key recomputes and overwrites (atomically) instead of silently reusing stale vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from bundle.data.tokenization import TokenizeReportd
from bundle.engines.batch import batch_ids

logger = logging.getLogger(__name__)
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "sentence_index")


def _plain(x) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


@torch.no_grad()
def embed_images(model: torch.nn.Module, loader: Iterable, device="cpu", label_key: str | None = "label") -> dict:
    """image_global [N, D] (and labels [N, C] when the batches hold `label_key`) and ids for every image of a loader,
    the model in eval mode."""
    model.eval()
    vectors, labels, ids = [], [], []
    start = time.perf_counter()
    for batch in loader:
        emb = model.embed_image(_plain(batch["image"]).to(device=device, dtype=torch.float32))
        vectors.append(emb["image_global"].float().cpu())
        if label_key is not None and label_key in batch:
            label = batch[label_key]
            # default collation turns per-item label lists into C tensors of [B]
            label = torch.stack([_plain(c) for c in label], dim=1) if isinstance(label, list | tuple) else _plain(label)
            labels.append(label.float().cpu())
        ids.extend(batch_ids(batch))
        logger.info("embedded %d images (%.1f images/s)", len(ids), len(ids) / (time.perf_counter() - start))
    out = {"image": torch.cat(vectors), "ids": ids}
    if labels:
        out["label"] = torch.cat(labels)
    return out


def tokenize_texts(texts: Sequence[str], tokenizer: TokenizeReportd) -> dict[str, torch.Tensor]:
    """Each text tokenised as a report by the pretraining tokeniser -> [T, L] tensors. A text that reduces to no
    sentence is an error naming it (it would embed as nothing)."""
    rows = []
    for text in texts:
        row = tokenizer({"report": text})
        if row["num_sentences"] == 0:
            raise ValueError(f"text {text!r} reduces to no sentence after cleaning (too short?)")
        rows.append(row)
    return {k: torch.stack([r[k] for r in rows]) for k in TEXT_KEYS}


@torch.no_grad()
def embed_texts(
    model: torch.nn.Module, texts: Sequence[str], tokenizer: TokenizeReportd, device="cpu", batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """report_global [T, D] of each text, and its sentence vectors [T, S, D] with their mask [T, S]."""
    model.eval()
    tokens = tokenize_texts(texts, tokenizer)
    reports, sentences, masks = [], [], []
    for start in range(0, len(texts), batch_size):
        chunk = {k: v[start : start + batch_size].to(device) for k, v in tokens.items()}
        emb = model.embed_text(**chunk)
        reports.append(emb["report_global"].float().cpu())
        sentences.append(emb["sentences"].float().cpu())
        masks.append(emb["sentence_mask"].cpu())
    width = max(s.shape[1] for s in sentences)  # chunks can differ in their largest sentence count
    sentences = [torch.nn.functional.pad(s, (0, 0, 0, width - s.shape[1])) for s in sentences]
    masks = [torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks]
    return {"report": torch.cat(reports), "sentences": torch.cat(sentences), "sentence_mask": torch.cat(masks)}


def file_signature(path: str | os.PathLike) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached(cache_path: str | os.PathLike | None, key: str, compute: Callable[[], dict]) -> dict:
    """compute() once: reuse `cache_path` when it holds the same key, else compute and write it atomically."""
    if cache_path is None:
        return compute()
    cache_path = Path(cache_path)
    if cache_path.is_file():
        stored = torch.load(cache_path, map_location="cpu", weights_only=False)
        if stored.get("key") == key:
            logger.info("embeddings reused from %s", cache_path)
            return stored["value"]
        logger.info("embedding cache %s is for other inputs: recomputing", cache_path)
    value = compute()
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(cache_path.name + ".tmp")
    torch.save({"key": key, "value": value}, tmp)
    os.replace(tmp, cache_path)
    return value
