#!/usr/bin/env python
"""Zero-shot classification, whole-split retrieval and sentence grounding of several pretrained models on the demo:
the make-demo model and every cell of the component ablation (scripts/ablate.py), next to random initialisation.

Each model runs the bundle's three workflows in this process (configs/evaluate_zero_shot.yaml,
evaluate_retrieval.yaml, evaluate_grounding.yaml on top of pretrain.yaml + demo_pretrain.yaml [+ the variant's
configs]) on the test split; per-model outputs go to WORK_DIR/<label>/ (JSON, embeddings, grounding PNG) and the
table to docs/results/demo_zero_shot_grounding.{md,json} with the make-demo model's grounding examples as
docs/results/demo_grounding_examples.png. Prompts were written before any number was seen (configs/prompts/).

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python scripts/evaluate_joint_space.py --dataset_dir demo_data \
        --model demo=models/model.pt --ablation_dir runs/ablation
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch
from monai.bundle import ConfigWorkflow

logger = logging.getLogger("evaluate_joint_space")
BASE = ["configs/pretrain.yaml", "configs/demo_pretrain.yaml"]
WORKFLOWS = ("evaluate_zero_shot.yaml", "evaluate_retrieval.yaml", "evaluate_grounding.yaml")
COLUMNS = [  # (key in the merged result, header)
    ("zs_macro_auroc", "zero-shot AUROC"),
    ("zs_accuracy", "zero-shot acc. (1-pos.)"),
    ("i2t_R@1", "i2t R@1"),
    ("i2t_R@10", "i2t R@10"),
    ("t2i_R@10", "t2i R@10"),
    ("model_pointing", "pointing"),
    ("control_pointing", "pointing, control sentence"),
    ("model_token_pointing", "token pointing"),
    ("control_token_pointing", "token pointing, control"),
    ("model_iou", "IoU"),
    ("model_mass", "mass in region"),
]


def ablation_module():
    spec = importlib.util.spec_from_file_location("ablate", ROOT / "scripts" / "ablate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ablation_variants() -> dict:
    return ablation_module().VARIANTS


def workflow(configs: list[str], overrides: dict) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=[str(ROOT / c) for c in configs], meta_file=str(ROOT / "metadata.json"), workflow_type="infer"
    )
    for key, value in overrides.items():
        wf.parser[key] = value
    return wf


def checkpoint_identity(
    checkpoint: Path | None, seed: int, overrides: dict, workflows: tuple[str, ...] = WORKFLOWS
) -> dict:
    """What a cached summary must match to be reused: the checkpoint file (path, size, mtime) or the random-init
    seed, the network overrides and the workflows run; a retrained cell under the same label is evaluated again."""
    if checkpoint is None:
        weights = {"random_init_seed": seed}
    else:
        stat = Path(checkpoint).stat()
        weights = {"path": str(Path(checkpoint).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"weights": weights, "overrides": {k: overrides[k] for k in sorted(overrides)}, "workflows": list(workflows)}


def evaluate(
    label: str,
    checkpoint: Path | None,
    extra_configs: list[str],
    seed: int,
    args,
    network_overrides=None,
    workflows: tuple[str, ...] = WORKFLOWS,
) -> dict:
    """network_overrides: parser ids and values of the variant (e.g. network_def#cross_attention_normalisation);
    workflows: a subset of WORKFLOWS (scripts/ablate.py computes the retrieval itself)."""
    network_overrides = dict(network_overrides or {})
    split = getattr(args, "split", "test")
    out_dir = Path(args.work_dir) / (label if split == "test" else f"{label}_{split}")
    done = out_dir / "summary.json"
    identity = checkpoint_identity(checkpoint, seed, network_overrides, workflows)
    if done.is_file() and not args.recompute:
        cached = json.loads(done.read_text())
        if cached.get("identity") == identity:
            logger.info("%s: reusing %s", label, done)
            return cached
        logger.info("%s: %s was computed for another checkpoint or settings; evaluating again", label, done)
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = network_overrides | {
        "dataset_dir": str(Path(args.dataset_dir).resolve()),
        "bundle_root": str(ROOT),
        "num_workers": 0,
        "seed": seed,
        "eval_dir": str(out_dir),
        "evaluate_split": split,
    }
    if checkpoint is None:  # random initialisation: the seeded network as its own checkpoint
        checkpoint = out_dir / "random_init.pt"
        torch.manual_seed(seed)
        net = workflow(BASE + extra_configs, overrides).parser.get_parsed_content("network_def")
        torch.save(net.state_dict(), checkpoint)
    overrides["eval_checkpoint"] = str(checkpoint)
    merged = {"label": label, "checkpoint": str(checkpoint), "seed": seed, "identity": identity}
    start = time.perf_counter()
    for name in workflows:
        wf = workflow(BASE + extra_configs + [f"configs/{name}"], overrides)
        wf.initialize()
        result = wf.run()[0]
        if name == "evaluate_zero_shot.yaml":
            merged.update(
                zs_macro_auroc=result["macro_auroc"],
                zs_accuracy=result["accuracy_exclusive"],
                zs_chance_accuracy=result["chance_accuracy"],
                zs_auroc=result["auroc"],
            )
        elif name == "evaluate_retrieval.yaml":
            merged.update({k: v for k, v in result.items() if "R@" in k or "median" in k}, pairs=result["pairs"])
        else:
            merged.update(result["overall"], grounding_cases=result["cases"], grounding_per_class=result["per_class"])
    merged["seconds"] = time.perf_counter() - start
    done.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    logger.info("%s: done in %.0f s", label, merged["seconds"])
    return merged


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def report_stem(split: str) -> str:
    """The results file: the test split's is the published one; validation's (for choosing settings) beside it."""
    return "demo_zero_shot_grounding" + ("" if split == "test" else f"_{split}")


def write_report(groups: dict[str, list[dict]], descriptions: dict[str, str], args, seconds: float) -> None:
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    split = getattr(args, "split", "test")
    stem = report_stem(split)
    first = next(r for rows in groups.values() for r in rows)
    lines = [
        "# Demo: zero-shot classification, whole-split retrieval and sentence grounding",
        "",
        f"{split.capitalize()} split of the demo ({first['pairs']} image-report pairs; {first['grounding_cases']} "
        "grounding cases: a report sentence naming",
        "a drawn mask finding, region = that finding's label-map pixels). Mean ± sd over pretraining seeds where a",
        "variant has several (n in the table). Zero-shot: cosine of each image to the class prompts of",
        "configs/prompts/demo.yaml (3 prompts per class, ensembled), macro AUROC over the 15 classes and top-1",
        f"accuracy over the images with exactly one positive class (chance {first['zs_chance_accuracy']:.3f}).",
        f"Retrieval chance: R@1 {first['chance_R@1']:.4f}, R@10 {first['chance_R@10']:.4f}.",
        "Grounding: A1 map of the sentence, back at the stored image's size; pointing game, IoU of the map",
        "thresholded at half its range, share of the map's mass in the region; 'control sentence' is the map of",
        "'the heart size is normal' on the same image (a map that ignores the sentence scores the same).",
        f"Baselines on the same cases: uniform map pointing {first['uniform_pointing']:.3f} (= mean region area",
        f"fraction), IoU {first['uniform_iou']:.3f}; centre prior pointing {first['centre_pointing']:.3f},",
        f"IoU {first['centre_iou']:.3f}, mass {first['centre_mass']:.3f}. Token pointing: the same game at the",
        "resolution of the token grid (hit when the block of the most attended token overlaps the region; the demo's",
        f"ResNet-18 at 96 px has a 3 x 3 grid); a uniformly random token hits {first['uniform_token_pointing']:.3f},",
        f"the centre token {first.get('centre_token_pointing', float('nan')):.3f} and the best fixed token (one grid "
        f"cell for every case, chosen on these cases) {first.get('best_fixed_token_pointing', float('nan')):.3f}.",
        "",
        "| model | n | " + " | ".join(h for _, h in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for name, rows in groups.items():
        cells = [mean_sd([r[k] for r in rows]) for k, _ in COLUMNS]
        lines.append(f"| {descriptions.get(name, name)} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Regenerate (a first run embeds the test split for each model: about 1-1.5 min per model on 2 CPU cores; "
        f"this invocation {seconds / 60:.0f} min, reusing cached embeddings and per-model results in --work_dir):",
        "",
        "    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python scripts/evaluate_joint_space.py --dataset_dir demo_data \\",
        "        --model demo=models/model.pt --ablation_dir runs/ablation",
        "",
        "Examples (make-demo model): docs/results/demo_grounding_examples.png, written by this command on your machine "
        "and not committed (it quotes Indiana University report sentences, CC BY-NC-ND). Reading: "
        "docs/method_notes.md.",
    ]
    (results / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (results / f"{stem}.json").write_text(json.dumps(groups, indent=2, sort_keys=True) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", required=True, help="the demo data, with manifests/grounding.json")
    p.add_argument("--model", action="append", default=[], help="LABEL=CHECKPOINT (demo configs), repeatable")
    p.add_argument("--ablation_dir", default=None, help="scripts/ablate.py's work dir: every <variant>_seed<s> cell")
    p.add_argument("--variants", nargs="*", default=None, help="only these ablation variants (default: all)")
    p.add_argument(
        "--random_seeds", nargs="*", type=int, default=[0, 1], help="random-init networks (the ablation has 0, 1)"
    )
    p.add_argument("--work_dir", default=str(ROOT / "runs" / "joint_space"))
    p.add_argument("--results_dir", default=str(ROOT / "docs" / "results"))
    p.add_argument("--recompute", action="store_true")
    p.add_argument(
        "--split",
        default="test",
        choices=("test", "validation"),
        help="validation: for choosing settings (its results go to WORK_DIR/<label>_validation/)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not (Path(args.dataset_dir) / "manifests" / "grounding.json").is_file():
        raise SystemExit(
            f"{args.dataset_dir}/manifests/grounding.json is missing: regenerate the demo data "
            "(scripts/make_demo_data.py, 1.1+ writes it)"
        )
    start = time.perf_counter()
    variants = ablation_variants()
    groups: dict[str, list[dict]] = {}
    descriptions = {"a_random": "random init"}
    for seed in args.random_seeds:
        groups.setdefault("a_random", []).append(evaluate(f"a_random_seed{seed}", None, [], seed, args))
    for spec in args.model:
        label, _, checkpoint = spec.partition("=")
        groups[label] = [evaluate(label, Path(checkpoint), [], 0, args)]
        descriptions[label] = f"{label} ({checkpoint})"
    if args.ablation_dir:
        ablate = ablation_module()
        total = sum(int(ablate.demo_settings()[k]) for k in ("stage1_epochs", "stage2_epochs"))
        for name, (description, configs, _) in variants.items():
            if args.variants is not None and name not in args.variants:
                continue
            network_overrides = ablate.parsed_overrides(name, total)
            for cell in sorted(Path(args.ablation_dir).glob(f"{name}_seed*/models/model.pt")):
                seed = int(cell.parent.parent.name.rsplit("seed", 1)[1])
                groups.setdefault(name, []).append(
                    evaluate(cell.parent.parent.name, cell, configs, seed, args, network_overrides)
                )
                descriptions[name] = f"{name}: {description}"
    write_report(groups, descriptions, args, time.perf_counter() - start)
    demo_png = Path(args.work_dir) / "demo" / "grounding_test.png"
    if demo_png.is_file() and args.split == "test":
        shutil.copy(demo_png, Path(args.results_dir) / "demo_grounding_examples.png")
    print((Path(args.results_dir) / f"{report_stem(args.split)}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
