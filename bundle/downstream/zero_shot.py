"""Zero-shot classification with the pretrained joint space: class prompts -> report embeddings, scored against the
image embeddings by cosine similarity (CLIP / ConVIRT style; no training).

Prompts come from a YAML file per dataset (configs/prompts/*.yaml):

    classes:
      pleural_effusion: ["There is a pleural effusion.", "Blunting of the costophrenic angle."]
      ...

Each prompt is tokenised like a report (one sentence) and embedded with the model's text side (`report_global`).
With prompt ensembling a class is the L2-normalised mean of its prompts' embeddings (CLIP's ensembling); without it,
the class is its first prompt. The score of image i for class c is cos(image_i, class_c).

Metrics: per-class AUROC of the scores (each class against the rest: a one-vs-rest ranking, meaningful for
multi-label data) with their macro mean over the classes that have positives and negatives; top-1 accuracy over the
items with exactly one positive among the scored classes (argmax of the scores = that class; the CheXpert 5x200
protocol is this accuracy on 200 such images per class, `select_exclusive_items`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from bundle.downstream.metrics import auroc_per_class

logger = logging.getLogger(__name__)


class PromptFileError(ValueError):
    """A prompt file that cannot be used (missing, no classes, a class without prompts, an unknown class)."""


def load_prompts(path: str | Path, class_names: Sequence[str] | None = None) -> dict[str, list[str]]:
    """{class: [prompt, ...]} in the file's order. With `class_names` (the manifest's), every prompt class must be
    one of them; classes of the manifest without prompts are simply not scored."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file not found: {path}")
    content = yaml.safe_load(path.read_text()) or {}
    classes = content.get("classes") if isinstance(content, Mapping) else None
    if not isinstance(classes, Mapping) or not classes:
        raise PromptFileError(f"{path}: needs a non-empty 'classes' mapping of class name -> list of prompts")
    prompts = {}
    for name, texts in classes.items():
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise PromptFileError(f"{path}: class '{name}' needs a list of non-empty prompt strings, got {texts!r}")
        prompts[str(name)] = [t.strip() for t in texts]
    if class_names is not None:
        unknown = [c for c in prompts if c not in class_names]
        if unknown:
            raise PromptFileError(
                f"{path}: classes {unknown} are not in the manifest's class_names {list(class_names)}"
            )
    return prompts


def class_embeddings(prompt_embeddings: Sequence[torch.Tensor], ensemble: bool = True) -> torch.Tensor:
    """Per class [T_c, D] prompt embeddings -> [C, D] unit class vectors (mean of the prompts, or the first)."""
    rows = [e.mean(dim=0) if ensemble else e[0] for e in prompt_embeddings]
    return F.normalize(torch.stack(rows), dim=-1)


def zero_shot_scores(image_embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """image [N, D] x classes [C, D] -> cosine similarities [N, C] (inputs need not be normalised)."""
    return F.normalize(image_embeddings, dim=-1) @ F.normalize(classes, dim=-1).t()


def zero_shot_metrics(scores: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> dict:
    """scores [N, C] and multi-hot labels [N, C] over the same classes -> AUROC per class, macro AUROC, and the
    accuracy over the items with exactly one positive class (with how many there are)."""
    labels = labels.float()
    auroc = auroc_per_class(scores, labels, class_names)
    exclusive = labels.sum(dim=1) == 1
    n_exclusive = int(exclusive.sum())
    accuracy = float("nan")
    if n_exclusive:
        accuracy = float((scores[exclusive].argmax(1) == labels[exclusive].argmax(1)).float().mean())
    return {
        "macro_auroc": auroc.macro,
        "auroc": auroc.per_class,
        "auroc_undefined": auroc.undefined,
        "accuracy_exclusive": accuracy,
        "exclusive_items": n_exclusive,
        "chance_accuracy": 1.0 / len(class_names),
        "items": int(labels.shape[0]),
    }


def select_exclusive_items(
    items: Sequence[Mapping], class_names: Sequence[str], scored: Sequence[str], per_class: int = 200, seed: int = 0
) -> list[dict]:
    """The CheXpert 5x200 selection: items positive for exactly one of the `scored` classes, at most `per_class`
    per class, drawn reproducibly (fewer are kept, and logged, where a class has fewer). Labels are multi-hot over
    `class_names`."""
    index = [list(class_names).index(c) for c in scored]
    by_class: dict[str, list[dict]] = {c: [] for c in scored}
    for item in items:
        positives = [c for c, i in zip(scored, index) if float(item["label"][i]) > 0.5]
        if len(positives) == 1:
            by_class[positives[0]].append(dict(item))
    rng = random.Random(seed)
    out = []
    for name, pool in by_class.items():
        if len(pool) < per_class:
            logger.warning("zero-shot selection: class %s has %d exclusive items (< %d)", name, len(pool), per_class)
        pool = sorted(pool, key=lambda it: str(it["id"]))
        out.extend(rng.sample(pool, min(per_class, len(pool))))
    return out


def manifest_class_names(manifest: str | Path) -> list[str]:
    from bundle.data.manifest import read_manifest

    names = read_manifest(manifest).get("meta", {}).get("class_names")
    if not names:
        raise PromptFileError(f"{manifest}: meta has no 'class_names' (zero-shot needs the label order)")
    return list(names)


def zero_shot_datalist(
    manifest: str | Path,
    split: str,
    prompts_file: str | Path,
    protocol: str = "all",
    per_class: int = 200,
    seed: int = 0,
    dataset_dir: str | None = None,
) -> list[dict]:
    """The split's items ("all"), or the exclusive selection of the prompt classes ("exclusive", CheXpert 5x200)."""
    from bundle.data.manifest import load_manifest

    items = load_manifest(manifest, split, dataset_dir=dataset_dir)
    if protocol == "all":
        return items
    if protocol != "exclusive":
        raise ValueError(f"zero_shot_protocol must be 'all' or 'exclusive', got {protocol!r}")
    names = manifest_class_names(manifest)
    selected = select_exclusive_items(items, names, list(load_prompts(prompts_file, names)), per_class, seed)
    logger.info("zero-shot exclusive selection: %d of %d items of %s", len(selected), len(items), split)
    return selected
