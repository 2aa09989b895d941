"""The `run` steps of configs/evaluate_retrieval.yaml, evaluate_zero_shot.yaml and evaluate_grounding.yaml: each
takes the bundle's pretraining network with a checkpoint loaded, evaluates one split, writes a JSON (and for
grounding a PNG grid of examples) under its output folder and returns the metrics.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from bundle.data.image_io import load_label_map
from bundle.downstream.embedding import cache_key, cached, embed_images, embed_texts, file_signature
from bundle.downstream.grounding import (
    attention_to_input,
    box_region,
    centre_prior,
    centre_token,
    grounding_scores,
    token_hits,
    token_index_map,
    token_pointing,
    uniform_scores,
)
from bundle.downstream.retrieval import embed_split, split_retrieval
from bundle.downstream.zero_shot import class_embeddings, load_prompts, zero_shot_metrics, zero_shot_scores
from bundle.networks.torchvision_resnet_weights import read_state_dict

logger = logging.getLogger(__name__)
# The sentence whose map is the "other sentence" control: a normal-heart statement names none of the mask findings.
CONTROL_SENTENCE = "the heart size is normal"


def load_pretrained(network: torch.nn.Module, checkpoint: str | os.PathLike) -> torch.nn.Module:
    """The pretraining network with every key of `checkpoint` (models/model.pt) loaded, in eval mode."""
    state = read_state_dict(checkpoint)
    missing, unexpected = network.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint} does not fit the configured network: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]} (another image encoder, embed_dim or text model than the checkpoint's?)"
        )
    return network.eval()


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def run_retrieval(network, loader: Iterable, checkpoint, manifest, split: str, out_dir, device="cpu") -> dict:
    """Whole-split image <-> report retrieval (R@1/5/10, median rank, chance); embeddings cached in out_dir."""
    out_dir = Path(out_dir)
    key = cache_key(task="retrieval", ckpt=file_signature(checkpoint), manifest=file_signature(manifest), split=split)
    embeddings = cached(
        out_dir / f"embeddings_{split}.pt", key, lambda: embed_split(network, loader, device, local=False)
    )
    result = split_retrieval(embeddings)
    result.update(split=split, pairs=len(embeddings["ids"]), dropped_empty_reports=embeddings["dropped"])
    _write_json(out_dir / f"retrieval_{split}.json", result)
    logger.info("retrieval on %s (%d pairs): %s", split, result["pairs"], _brief(result, ("i2t_R@1", "t2i_R@1")))
    return result


def run_zero_shot(
    network,
    loader: Iterable,
    checkpoint,
    manifest,
    split: str,
    prompts_file,
    class_names: Sequence[str],
    tokenizer,
    out_dir,
    ensemble: bool = True,
    device="cpu",
) -> dict:
    """Zero-shot classification of a classification manifest's split with the prompt file's classes."""
    out_dir = Path(out_dir)
    prompts = load_prompts(prompts_file, class_names)
    key = cache_key(task="images", ckpt=file_signature(checkpoint), manifest=file_signature(manifest), split=split)
    images = cached(out_dir / f"image_embeddings_{split}.pt", key, lambda: embed_images(network, loader, device))
    if "label" not in images:
        raise ValueError(f"{manifest} split {split}: the items have no 'label' to score zero-shot predictions")
    names = list(prompts)
    per_class = [embed_texts(network, prompts[c], tokenizer, device)["report"] for c in names]
    scores = zero_shot_scores(images["image"], class_embeddings(per_class, ensemble=ensemble))
    columns = [list(class_names).index(c) for c in names]
    result = zero_shot_metrics(scores, images["label"][:, columns], names)
    result.update(
        split=split,
        prompts_file=str(prompts_file),
        ensemble=bool(ensemble),
        prompts_per_class={c: len(p) for c, p in prompts.items()},
    )
    _write_json(out_dir / f"zero_shot_{split}{'' if ensemble else '_single_prompt'}.json", result)
    logger.info(
        "zero-shot on %s (%d images): %s", split, result["items"], _brief(result, ("macro_auroc", "accuracy_exclusive"))
    )
    return result


def _region(item: dict, phrase: dict, shape: Sequence[int]) -> np.ndarray:
    if phrase.get("box"):
        return box_region(phrase["box"], shape)
    mask = load_label_map(item["label"])
    if mask.shape != tuple(shape):
        raise ValueError(f"item {item.get('id')}: mask {item['label']} is {mask.shape}, the image {tuple(shape)}")
    return mask == int(phrase["class_id"])


def _to_original(maps: torch.Tensor, image, inverse) -> np.ndarray:
    """[N, h, w] maps at the network input -> [N, H, W] at the stored image's size (the preprocessing inverted)."""
    return np.stack([inverse(m[None], image) for m in maps])


def run_grounding(
    network,
    dataset: Sequence[dict],
    checkpoint,
    split: str,
    tokenizer,
    inverse,
    out_dir,
    device="cpu",
    threshold: float = 0.5,
    examples: int = 12,
    control_sentence: str = CONTROL_SENTENCE,
    batch_size: int = 32,
) -> dict:
    """Pointing game, thresholded IoU and mass in region of each phrase's A1 map against its region, with the
    uniform, centre-prior and other-sentence (`control_sentence` on the same image) baselines.

    `dataset` yields preprocessed items (image [1, h, w] MetaTensor with its applied operations, plus the raw
    manifest fields: phrases, label / boxes); `inverse(map [1, h, w], image)` maps back to the stored image."""
    network.eval()
    items = list(dataset)
    # every distinct sentence embedded once, every image once, in batches; then A1 for all (image, sentence) pairs
    texts = sorted({p["text"] for item in items for p in item["phrases"]} | {control_sentence})
    text_index = {t: i for i, t in enumerate(texts)}
    text = embed_texts(network, texts, tokenizer, device)  # a phrase is one sentence: its first is used
    sentences, valid = text["sentences"][:, :1], text["sentence_mask"][:, :1]
    tokens = (
        torch.cat(
            [
                network.embed_image(
                    torch.stack([it["image"].as_tensor() for it in items[i : i + batch_size]]).to(
                        device=device, dtype=torch.float32
                    )
                )["image_tokens"].cpu()
                for i in range(0, len(items), batch_size)
            ]
        )
        if items
        else None
    )
    rows, shown = [], []
    for n, item in enumerate(items):
        image = item["image"]
        chosen = [text_index[p["text"]] for p in item["phrases"]] + [text_index[control_sentence]]
        pair_tokens = tokens[n : n + 1].expand(len(chosen), -1, -1).to(device)
        a1 = network.sentence_attention(pair_tokens, sentences[chosen].to(device), valid[chosen].to(device))
        maps = _to_original(attention_to_input(a1[:, 0].cpu(), image.shape[1:]), image, inverse)
        shape = maps.shape[1:]
        centre = centre_prior(shape)
        num_tokens = a1.shape[-1]
        blocks = np.rint(inverse(token_index_map(num_tokens, image.shape[1:]), image, nearest=True))
        best = a1[:, 0].argmax(dim=-1).tolist()
        for j, phrase in enumerate(item["phrases"]):
            region = _region(item, phrase, shape)
            if not region.any():
                logger.warning("item %s: phrase %r has an empty region; skipped", item.get("id"), phrase["text"])
                continue
            row = {"id": item.get("id"), "class": phrase.get("class"), "text": phrase["text"]}
            for name, scores in (
                ("model", grounding_scores(maps[j], region, threshold)),
                ("control", grounding_scores(maps[-1], region, threshold)),
                ("centre", grounding_scores(centre, region, threshold)),
                ("uniform", uniform_scores(region)),
            ):
                row.update({f"{name}_{k}": v for k, v in scores.items()})
            hits = token_hits(blocks, num_tokens, region)
            row.update(
                model_token_pointing=token_pointing(blocks, best[j], region),
                control_token_pointing=token_pointing(blocks, best[-1], region),
                uniform_token_pointing=float(hits.mean()),
                centre_token_pointing=float(hits[centre_token(num_tokens)]),
                fixed_token_hits=hits.tolist(),
            )
            rows.append(row)
            if len(shown) < examples:
                shown.append({"image": _original_image(item, shape), "map": maps[j], "region": region, **row})
    result = summarise_grounding(rows)
    result.update(split=split, threshold=threshold, control_sentence=control_sentence)
    out_dir = Path(out_dir)
    _write_json(out_dir / f"grounding_{split}.json", dict(result, per_case=rows))
    if shown:
        from bundle.downstream.grounding_overlay import plot_grounding_examples

        plot_grounding_examples(shown, out_dir / f"grounding_{split}.png")
    logger.info(
        "grounding on %s (%d cases): %s",
        split,
        result["cases"],
        _brief(result["overall"], ("model_pointing", "control_pointing", "centre_pointing", "uniform_pointing")),
    )
    return result


def _original_image(item: dict, shape) -> np.ndarray:
    from bundle.data.image_io import load_radiograph

    path = item["image"].meta.get("filename_or_obj") if hasattr(item["image"], "meta") else None
    return load_radiograph(path) if path else np.zeros(shape, dtype=np.float32)


def summarise_grounding(rows: Sequence[dict]) -> dict:
    """Means of every score overall and per class, with the case counts."""
    keys = [k for k in (rows[0] if rows else {}) if k.split("_", 1)[0] in ("model", "control", "centre", "uniform")]

    def means(subset):
        out = {k: float(np.mean([r[k] for r in subset])) for k in keys}
        if subset and "fixed_token_hits" in subset[0]:
            # the best constant map on these very cases (an oracle position prior): a model below it does not
            # locate the finding better than always pointing at one grid cell
            per_token = np.mean([r["fixed_token_hits"] for r in subset], axis=0)
            out.update(best_fixed_token_pointing=float(per_token.max()), best_fixed_token=int(per_token.argmax()))
        return out

    classes = sorted({r["class"] for r in rows if r["class"] is not None})
    return {
        "cases": len(rows),
        "overall": means(rows) if rows else {},
        "per_class": {
            c: dict(means([r for r in rows if r["class"] == c]), cases=sum(r["class"] == c for r in rows))
            for c in classes
        },
    }


def _brief(result: dict, keys: Sequence[str]) -> str:
    return ", ".join(f"{k} {result[k]:.3f}" for k in keys if k in result)
