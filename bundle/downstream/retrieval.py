"""Image-report retrieval over a whole split (not in-batch): every image against every report of the split.

Hits are counted by index (the report of the same study), so two studies with word-identical reports count as a
miss for each other; docs/method_notes.md says how often that happens on the demo.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import torch

from bundle.engines.batch import batch_ids, drop_empty_reports, to_model_inputs

logger = logging.getLogger(__name__)


def retrieval_metrics(similarity: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """similarity [Q, C] with the correct candidate of query q at column q (Q <= C). Returns R@k (fraction of queries
    whose correct candidate is among the k most similar; ties counted against the query), the median rank (1-based)
    and the chance R@k = k / C."""
    q, c = similarity.shape
    if q > c:
        raise ValueError(f"{q} queries but only {c} candidates")
    correct = similarity[torch.arange(q), torch.arange(q)]
    rank = (similarity >= correct.unsqueeze(1)).sum(dim=1)  # 1 = best; a tie ranks below the query's item
    out = {f"R@{k}": float((rank <= k).float().mean()) for k in ks}
    out["median_rank"] = float(rank.float().median())
    out.update({f"chance_R@{k}": min(k, c) / c for k in ks})
    return out


@torch.no_grad()
def embed_split(
    model: torch.nn.Module, loader: Iterable, device: torch.device | str = "cpu", local: bool = True
) -> dict:
    """Global image and report embeddings of every pair of a pretraining loader (eval mode), plus (with `local`,
    one more full forward per batch) the model's in-batch local report retrieval top-1 and its chance per batch.
    Rows whose report is empty are dropped and counted."""
    model.eval()
    images, reports, ids, local_top1, chance, dropped = [], [], [], [], [], 0
    start = time.perf_counter()
    for batch in loader:
        kept, lost = drop_empty_reports(batch)
        dropped += len(lost)
        if kept is None:
            continue
        inputs = to_model_inputs(kept, device)
        emb = model.embed(**inputs)
        images.append(emb["image_global"].float().cpu())
        reports.append(emb["report_global"].float().cpu())
        if local:
            out = model(**inputs)
            local_top1.append(float(out["local_top1"]))
            chance.append(float(out["local_chance_top1"]))
        ids.extend(batch_ids(kept))
        logger.info("embedded %d pairs (%.1f pairs/s)", len(ids), len(ids) / (time.perf_counter() - start))
    return {
        "image": torch.cat(images),
        "report": torch.cat(reports),
        "ids": ids,
        "dropped": dropped,
        "local_top1": sum(local_top1) / len(local_top1) if local_top1 else float("nan"),
        "local_chance_top1": sum(chance) / len(chance) if chance else float("nan"),
    }


def split_retrieval(embeddings: dict, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Both directions over the whole split: i2t_R@k, t2i_R@k, medians and chance."""
    sim = embeddings["image"] @ embeddings["report"].t()
    i2t, t2i = retrieval_metrics(sim, ks), retrieval_metrics(sim.t(), ks)
    out = {f"i2t_{k}": v for k, v in i2t.items() if not k.startswith("chance")}
    out.update({f"t2i_{k}": v for k, v in t2i.items() if not k.startswith("chance")})
    out.update({k: v for k, v in i2t.items() if k.startswith("chance")})
    return out
