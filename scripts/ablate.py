#!/usr/bin/env python
"""Component ablation of CM-CGNS on the demo: one pretraining budget, the same seeds, one downstream protocol.

Variants (each adds one component to the one before; method.md 4):
  a random     no pretraining (the floor)
  b global     global image-report contrastive only (ConVIRT / CLIP style)
  c +img       + local image loss (SimSiam between image tokens and f_RI)
  d +report    + local report InfoNCE, clustering never started (the k-means start gate stays closed)
  e stage1     + cluster-guided hard negatives and the boundary-margin loss = CM-CGNS stage 1
  f full       + CM-MIR (stage 2) = full CM-CGNS, fixed mode
  g official   full CM-CGNS with configs/official.yaml (the published code's numerics)
  h dedup      f with report_duplicate_negatives drop: the same sentence in another report is no negative (opt-in)
  i softmax    f with cross_attention_normalisation softmax (A1 sums to 1 over the image's tokens) (opt-in)
b-e run stage 1 only for stage1_epochs + stage2_epochs epochs, so every variant sees the same number of steps.

Per variant and pretraining seed: demo pretraining through `python -m monai.bundle run` (pretrain.yaml +
demo_pretrain.yaml + the variant's overrides; a finished run is reused, so a stopped ablation continues), then
- linear probe on cached frozen features (scripts/evaluate_transfer.py's grid): test macro AUROC at 1 / 10 / 100 %
  of the labels, 3 head seeds, best head by validation AUROC;
- whole-split image-report retrieval on the test split (R@1/5/10 both directions, bundle/downstream/retrieval.py);
- local report retrieval top-1 (each sentence's z1 -> its own z2 among the N sentences of a batch of 32) on the
  test split, with its chance 1 / N.
Writes docs/results/demo_ablation.{md,json,png}. Settings were chosen on validation data (docs/method_notes.md);
this script reports the test split only and never feeds it back.

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python scripts/ablate.py --dataset_dir demo_data    # or: make ablation
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402

from bundle.downstream import ablation_localised  # noqa: E402
from bundle.downstream.retrieval import embed_split, split_retrieval  # noqa: E402
from bundle.networks.torchvision_resnet_weights import read_state_dict  # noqa: E402

logger = logging.getLogger("ablate")
PRETRAIN_CONFIGS = ["configs/pretrain.yaml", "configs/demo_pretrain.yaml"]
STAGE1_ONLY = ["--stage1_epochs", "{total}", "--stage2_epochs", "0"]
# every cell uses the demo's text feature cache (the frozen MiniLM once per report, in eval mode): a third of each
# pretraining's time, and every variant freezes the text model, so all cells see the same text features
EVERY_CELL = ["--network_def#cache_text_features", "true"]
# label -> (description, extra config files, overrides); "{total}" is stage1_epochs + stage2_epochs of the demo.
VARIANTS = {
    "a_random": ("random init (no pretraining)", [], None),
    "b_global": (
        "global contrastive only",
        [],
        STAGE1_ONLY + ["--network_def#weight_img", "0.0", "--network_def#weight_report", "0.0"],
    ),
    "c_img": ("+ local image loss", [], STAGE1_ONLY + ["--network_def#weight_report", "0.0"]),
    "d_report": (
        "+ local report InfoNCE (no clustering)",
        [],
        STAGE1_ONLY + ["--network_def#kmeans_start_cosine", "-2.0"],
    ),
    "e_stage1": ("+ cluster hard negatives + BML (stage 1)", [], STAGE1_ONLY),
    "f_full": ("+ CM-MIR = full CM-CGNS (fixed)", [], []),
    "g_official": ("full CM-CGNS, official settings", ["configs/official.yaml"], []),
    # not a component of the paper: the false-negative hypothesis of docs/method_notes.md ("Grounding")
    "h_dedup": (
        "full fixed, the same sentence of another report no negative",
        [],
        ["--network_def#report_duplicate_negatives", "drop"],
    ),
    # the polarity hypothesis of docs/method_notes.md ("Grounding"): sentence-to-region weights that compete
    "i_softmax": (
        "full fixed, softmax cross-modal attention",
        [],
        ["--network_def#cross_attention_normalisation", "softmax"],
    ),
}
# the paper's components and the published settings; h and i test explanations of docs/method_notes.md (opt-in)
DEFAULT_VARIANTS = ["a_random", "b_global", "c_img", "d_report", "e_stage1", "f_full", "g_official"]
# the localised columns a default run computes: detection is at its floor at this budget (method_notes.md)
DEFAULT_LOCALISED = ["segmentation", "grounding"]


# the linear probe's evaluation preprocessing, shared by the cells of one invocation: (image_size, crop_size) ->
# image path -> transformed item (about 140 MB for the demo's 3,790 probe images at 96 px)
PREPROCESSED: dict[tuple, dict] = {}


def load_evaluate_transfer():
    spec = importlib.util.spec_from_file_location("evaluate_transfer", ROOT / "scripts" / "evaluate_transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo_settings() -> dict:
    parser = ConfigParser()
    parser.read_config([str(ROOT / c) for c in PRETRAIN_CONFIGS])
    keys = ("stage1_epochs", "stage2_epochs", "image_size", "crop_size", "network_def#image_encoder")
    return {k: parser.get(k) for k in keys}


def variant_overrides(name: str, total_epochs: int) -> tuple[list[str], list[str]]:
    _, configs, overrides = VARIANTS[name]
    return configs, [o.replace("{total}", str(total_epochs)) for o in (overrides or [])]


def cell_protocol(seed: int, args) -> dict:
    """What a finished cell must share with this invocation to be reused: its training pairs."""
    return {"subset_seed": seed if args.subset_seed is None else args.subset_seed, "train_items": args.demo_train_items}


def reused_cell(path: Path, seed: int, args) -> dict:
    """A finished cell's result, refused when it was trained on other pairs (cells before 0.13 recorded neither key:
    the pretraining seed's subset of 800 pairs)."""
    row = json.loads(path.read_text(encoding="utf-8"))
    had = {"subset_seed": row.get("subset_seed", row["seed"]), "train_items": row.get("train_items", 800)}
    if had != cell_protocol(seed, args):
        raise SystemExit(
            f"{path} was trained with {had}, this ablation asks for {cell_protocol(seed, args)}: "
            "give another --work_dir (or remove the cell)"
        )
    return row


def pretrain(name: str, seed: int, args, total_epochs: int) -> Path:
    run_dir = Path(args.work_dir) / f"{name}_seed{seed}"
    model = run_dir / "models" / "model.pt"
    if model.is_file():
        logger.info("%s seed %d: reusing %s", name, seed, model)
        return run_dir
    configs, overrides = variant_overrides(name, total_epochs)
    files = "[" + ",".join(f"'{c}'" for c in PRETRAIN_CONFIGS + configs) + "]"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        files,
        "--meta_file",
        "metadata.json",
        "--logging_file",
        "configs/logging.conf",
        "--dataset_dir",
        os.path.abspath(args.dataset_dir),
        "--seed",
        str(seed),
        "--ckpt_dir",
        str(run_dir / "models"),
        "--output_dir",
        str(run_dir / "run"),
        "--demo_train_items",
        str(args.demo_train_items),
        *([] if args.subset_seed is None else ["--demo_subset_seed", str(args.subset_seed)]),
        *EVERY_CELL,
        *args.pretrain_override,
        *overrides,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run_dir.mkdir(parents=True, exist_ok=True)
    logger.info("%s seed %d: pretraining (%s)", name, seed, shlex.join(cmd[3:]))
    with open(run_dir / "pretrain.log", "w", encoding="utf-8") as log:
        result = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0 or not model.is_file():
        raise SystemExit(
            f"{name} seed {seed}: pretraining failed (exit {result.returncode}); see {run_dir}/pretrain.log"
        )
    return run_dir


def parsed_overrides(name: str, total_epochs: int) -> dict:
    """A variant's command-line overrides as parser ids and values (the evaluations build the same network)."""
    _, overrides = variant_overrides(name, total_epochs)
    return {
        key.lstrip("-"): json.loads(value) if value[0] in "-0123456789" else value
        for key, value in zip(overrides[::2], overrides[1::2])
    }


def pretrain_parser(name: str, seed: int, args, total_epochs: int, split: str) -> ConfigParser:
    configs, _ = variant_overrides(name, total_epochs)
    parser = ConfigParser()
    parser.read_config([str(ROOT / c) for c in PRETRAIN_CONFIGS + configs])
    parser["bundle_root"] = str(ROOT)
    parser["dataset_dir"] = os.path.abspath(args.dataset_dir)
    parser["seed"] = seed
    if getattr(args, "demo_train_items", None):
        parser["demo_train_items"] = args.demo_train_items
    parser["num_workers"] = 0
    parser["cache_rate"] = 0.0
    for key, value in parsed_overrides(name, total_epochs).items():
        parser[key] = value
    parser["validate#datalist"] = f"$load_manifest(@manifest, '{split}', dataset_dir=@dataset_dir)"
    return parser


def retrieval(name: str, seed: int, run_dir: Path | None, args, total_epochs: int) -> dict:
    parser = pretrain_parser(name, seed, args, total_epochs, "test")
    torch.manual_seed(seed)
    model = parser.get_parsed_content("network_def")
    if run_dir is not None:
        model.load_state_dict(read_state_dict(run_dir / "models" / "model.pt"))
    embeddings = embed_split(model, parser.get_parsed_content("validate#dataloader"))
    out = split_retrieval(embeddings)
    out.update(
        local_top1=embeddings["local_top1"],
        local_chance_top1=embeddings["local_chance_top1"],
        pairs=len(embeddings["ids"]),
    )
    return out


def linear_probe(label: str, source: str, weights: str | None, seed: int, args, settings: dict, transfer) -> dict:
    probe_args = SimpleNamespace(
        dataset_dir=args.dataset_dir,
        manifest=None,
        task="multilabel",
        encoder_name=settings["network_def#image_encoder"],
        image_size=settings["image_size"],
        crop_size=settings["crop_size"],
        mode="linear_probe",
        pooling="avg",
        fractions=args.fractions,
        seeds=args.head_seeds,
        lr=args.probe_lr,
        weight_decay=1e-6,
        batch_size=32,
        feature_batch_size=64,
        max_epochs=args.probe_epochs,
        patience=args.probe_patience,
        num_workers=0,
        config=[],
        encoder_seed=seed,
        # every cell probes the same images with the same evaluation transform: decoded and resized once
        preprocessed=PREPROCESSED.setdefault((settings["image_size"], settings["crop_size"]), {}),
    )
    rows = transfer.run_linear_probe_grid(probe_args, [(label, source, weights)], "auroc")
    out = {}
    for fraction in args.fractions:
        cells = [r for r in rows if r["fraction"] == fraction]
        out[f"auroc_{fraction:g}"] = statistics.mean(r["test"] for r in cells)
        out[f"val_auroc_{fraction:g}"] = statistics.mean(r["best_val"] for r in cells)
        out[f"auroc_{fraction:g}_heads"] = [r["test"] for r in cells]
    return out


def final_training_diagnostics(run_dir: Path) -> dict:
    from bundle.engines.progress import read_history

    train, _ = read_history(str(run_dir / "run" / "history.jsonl"))
    last = train[-20:]
    keys = ("loss_report", "loss_img", "centroid_usage", "diag_tok_std", "diag_tok_cos_within", "diag_a1_entropy")
    return {
        f"train_{k}": statistics.mean(r[k] for r in last if r.get(k) is not None)
        for k in keys
        if any(r.get(k) is not None for r in last)
    }


def mean_sd(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


COLUMNS = [
    ("auroc_0.01", "LP AUROC 1%", 3),
    ("auroc_0.1", "LP AUROC 10%", 3),
    ("auroc_1", "LP AUROC 100%", 3),
    ("i2t_R@1", "i2t R@1", 3),
    ("i2t_R@5", "i2t R@5", 3),
    ("i2t_R@10", "i2t R@10", 3),
    ("t2i_R@1", "t2i R@1", 3),
    ("t2i_R@5", "t2i R@5", 3),
    ("t2i_R@10", "t2i R@10", 3),
    ("local_top1", "local top-1", 3),
]


def cell_minutes(results: list[dict]) -> float:
    keys = ("seconds", "seg_seconds", "det_seconds", "grounding_seconds")
    return sum(r.get(k) or 0.0 for r in results for k in keys) / 60


def panel_fraction(key: str, args) -> float:
    return ablation_localised.detection_fraction(args) if key.startswith("det") else args.localised_fraction


def localised_table(results: list[dict], names: list[str], args) -> list[str]:
    """The segmentation / detection / grounding table (rows with at least one localised value)."""
    columns = [(k, title) for task in args.localised for k, (_, title) in ablation_localised.COLUMNS[task].items()]
    if not columns or not any(r.get(k) is not None for r in results for k, _ in columns):
        return []
    fractions = {
        "segmentation": f"{args.localised_fraction * 100:g} %",
        "detection": f"{ablation_localised.detection_fraction(args) * 100:g} %",
    }
    grids = [t for t in ("segmentation", "detection") if t in args.localised]
    text = ["", "Localised tasks."]
    if grids:
        text.append(
            f"{' and '.join(g.capitalize() if i == 0 else g for i, g in enumerate(grids))}: the demo grid's protocol "
            "and settings (bundle/downstream/ablation_localised.py; "
            + ", ".join(f"demo_{g}.md" for g in grids)
            + "), encoder frozen, "
            + " / ".join(f"{g} {fractions[g]}" for g in grids)
            + " of the training labels, one head per pretraining seed (head seed = pretraining seed), test split."
        )
    if "grounding" in args.localised:
        text.append(
            "Grounding: pointing game of the sentence maps on the test split's boxed sentences (a control sentence "
            "from another finding as the baseline) and zero-shot macro AUROC, from scripts/evaluate_joint_space.py."
        )
        baselines = {
            k: next((r[k] for r in results if r.get(k) is not None), None)
            for k in ("grounding_uniform_token_pointing", "grounding_best_fixed_token_pointing")
        }
        if all(v is not None for v in baselines.values()):
            text.append(
                "Token pointing baselines on the same cases: a uniformly random token "
                f"{baselines['grounding_uniform_token_pointing']:.3f}, the best fixed token (one grid cell for "
                f"every case, chosen on these cases) {baselines['grounding_best_fixed_token_pointing']:.3f}."
            )
    text.append("n: cells with these columns.")
    lines = [
        text[0],
        " ".join(text[1:]),
        "",
        "| variant | n | " + " | ".join(title for _, title in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for name in names:
        rows = [r for r in results if r["variant"] == name and any(r.get(k) is not None for k, _ in columns)]
        if rows:
            cells = [mean_sd([r.get(k) for r in rows], 4 if k.startswith("det") else 3) for k, _ in columns]
            lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")
    return lines


def write_report(results: list[dict], args, seconds: float) -> None:
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "demo_ablation.json").write_text(json.dumps(results, indent=1, sort_keys=True), encoding="utf-8")
    names = [v for v in VARIANTS if any(r["variant"] == v for r in results)]  # a, b, ... g, as the PNG
    lines = [
        "# Demo ablation: what each CM-CGNS component adds",
        "",
        f"Pretraining seeds {args.seeds} per variant where finished: n is the number of pretraining seeds in each "
        "row (mean ± sample standard deviation over them; a single value has no spread). Each linear-"
        f"probe value is first averaged over head seeds {args.head_seeds}. Demo data, demo settings "
        "(configs/demo_pretrain.yaml), the same number of steps for every pretrained variant. All numbers on "
        "the demo TEST split; settings were chosen on the validation split (docs/method_notes.md).",
        "",
        "- LP AUROC: linear probe on cached frozen features, test macro AUROC over the demo classes, at 1 / 10 / "
        "100 % of the training labels (best head by validation AUROC).",
        "- i2t / t2i R@k: image -> report and report -> image retrieval over the whole test split "
        f"({results[0].get('pairs', '?')} pairs; chance R@1 / R@5 / R@10 = "
        f"{results[0].get('chance_R@1', float('nan')):.4f} / {results[0].get('chance_R@5', float('nan')):.4f} / "
        f"{results[0].get('chance_R@10', float('nan')):.4f}).",
        "- local top-1: each sentence's z1 finds its own image-to-text feature z2 among the N sentences of a "
        f"batch of 32 (chance 1/N = {mean_sd([r['local_chance_top1'] for r in results], 4)}).",
        "",
        "| variant | n | " + " | ".join(c[1] for c in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for name in names:
        rows = [r for r in results if r["variant"] == name]
        cells = [mean_sd([r.get(key) for r in rows], d) for key, _, d in COLUMNS]
        lines.append(f"| {name} {VARIANTS[name][0]} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += localised_table(results, names, args)
    lines += [
        "",
        "Training diagnostics at the end of pretraining (mean of the last 20 steps; see "
        "docs/method_notes.md for their meaning):",
        "",
        "| variant | loss_report | loss_img | centroid usage | token std ratio | token cos within image | A1 entropy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        rows = [r for r in results if r["variant"] == name and "train_loss_report" in r]
        if rows:
            cells = [
                mean_sd([r.get(f"train_{k}") for r in rows])
                for k in (
                    "loss_report",
                    "loss_img",
                    "centroid_usage",
                    "diag_tok_std",
                    "diag_tok_cos_within",
                    "diag_a1_entropy",
                )
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Command: `python scripts/ablate.py {shlex.join(args.argv)}`; this invocation {seconds / 60:.1f} min, "
        f"the cells' own times summed {cell_minutes(results):.1f} min (a stopped ablation reuses finished cells) on "
        f"{os.cpu_count()} CPU cores{' + GPU' if torch.cuda.is_available() else ''} (pretraining runs one "
        "after the other).",
        "",
        "All zero-shot, retrieval and grounding figures of the same cells (and of the make-demo model): "
        "demo_zero_shot_grounding.md (scripts/evaluate_joint_space.py --ablation_dir runs/ablation).",
        "",
    ]
    (out_dir / "demo_ablation.md").write_text("\n".join(lines), encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("auroc_0.01", "LP AUROC 1%"),
        ("auroc_1", "LP AUROC 100%"),
        ("i2t_R@10", "i2t R@10 (test)"),
        ("local_top1", "local report top-1"),
    ]
    panels += [
        (key, f"{title} ({panel_fraction(key, args) * 100:g}%)" if key.startswith(("seg", "det")) else title)
        for key, title in (
            ("seg_pooled_dice", "seg pooled Dice"),
            ("det_mAP_40_75", "det mAP 0.40:0.75"),
            ("grounding_token_pointing", "token pointing game"),
        )
        if any(r.get(key) is not None for r in results)
    ]
    rows_of_panels = math.ceil(len(panels) / 4)
    fig, axes = plt.subplots(rows_of_panels, 4, figsize=(16, 3.8 * rows_of_panels), squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(panels) :]:
        ax.axis("off")
    for ax, (key, title) in zip(axes, panels):
        for i, name in enumerate(names):
            vals = [r[key] for r in results if r["variant"] == name and r.get(key) is not None]
            if not vals:
                continue
            ax.bar(i, statistics.mean(vals), yerr=statistics.stdev(vals) if len(vals) > 1 else 0, capsize=3)
            ax.scatter([i] * len(vals), vals, color="black", s=8, zorder=3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.split("_", 1)[0] for n in names])
        ax.set_title(title)
    fig.suptitle(
        "CM-CGNS demo ablation (test split): "
        + ", ".join(f"{n.split('_', 1)[0]} {VARIANTS[n][0]}" for n in names[:4])
        + ",\n"
        + ", ".join(f"{n.split('_', 1)[0]} {VARIANTS[n][0]}" for n in names[4:])
    )
    fig.tight_layout()
    fig.savefig(out_dir / "demo_ablation.png", dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", required=True)
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="pretraining seeds")
    p.add_argument("--head_seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0])
    p.add_argument("--probe_lr", type=float, default=0.01)
    p.add_argument("--probe_epochs", type=int, default=50)
    p.add_argument("--probe_patience", type=int, default=10)
    p.add_argument(
        "--demo_train_items",
        type=int,
        default=800,
        help="training pairs of every pretraining (25 steps of 32 per epoch, 100 steps for the demo's 2 + 2 epochs)",
    )
    p.add_argument(
        "--subset_seed",
        type=int,
        default=None,
        help="draw every cell's training / validation pairs with this seed (default: the pretraining seed, so the "
        "spread is data + initialisation); give a separate --work_dir",
    )
    p.add_argument(
        "--pretrain_overrides",
        default="",
        help='extra bundle overrides for every pretraining run, one quoted string: "--network_def#num_clusters 8"',
    )
    p.add_argument(
        "--priority",
        nargs="*",
        default=[],
        choices=list(VARIANTS),
        help="variants whose missing cells run before the others' (finished cells are always read first)",
    )
    p.add_argument("--stop_after_priority", action="store_true", help="run no missing cell of another variant")
    p.add_argument(
        "--localised",
        nargs="*",
        default=DEFAULT_LOCALISED,
        choices=ablation_localised.TASKS,
        help="localised columns, computed after every classification / retrieval cell (none: leave them out)",
    )
    p.add_argument("--localised_fraction", type=float, default=0.1, help="label fraction of segmentation / detection")
    p.add_argument(
        "--detection_fraction",
        type=float,
        default=None,
        help="label fraction of detection when it differs (default: --localised_fraction)",
    )
    p.add_argument(
        "--localised_variants", nargs="*", default=None, choices=list(VARIANTS), help="default: every variant"
    )
    p.add_argument("--joint_space_dir", default=None, help="evaluate_joint_space cache (default: WORK_DIR/joint_space)")
    p.add_argument("--work_dir", default=str(ROOT / "runs" / "ablation"))
    p.add_argument("--results_dir", default=str(ROOT / "docs" / "results"))
    args = p.parse_args(argv)
    args.argv = argv
    args.pretrain_override = shlex.split(args.pretrain_overrides)
    args.joint_space_dir = args.joint_space_dir or str(Path(args.work_dir) / "joint_space")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("evaluate_transfer", "bundle.downstream.cached_linear_probe", "bundle.downstream.retrieval"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = demo_settings()
    total = int(settings["stage1_epochs"]) + int(settings["stage2_epochs"])
    transfer = load_evaluate_transfer()
    results, start = [], time.perf_counter()
    # seed-major: every variant gets its first pretraining seed before any gets its second, so a stopped ablation
    # still compares all variants
    cells = [(v, s) for s in args.seeds for v in args.variants]

    def finished(cell):
        return (Path(args.work_dir) / f"{cell[0]}_seed{cell[1]}" / "result.json").is_file()

    cells.sort(key=lambda c: (not finished(c), c[0] not in args.priority))  # stable: seed-major within each group
    for done, (name, seed) in enumerate(cells, 1):
        cell_start = time.perf_counter()
        cached = Path(args.work_dir) / f"{name}_seed{seed}" / "result.json"
        if cached.is_file():  # a finished cell of a stopped ablation
            results.append(reused_cell(cached, seed, args))
            logger.info("[%d/%d] %s seed %d: reusing %s", done, len(cells), name, seed, cached)
            continue
        if args.stop_after_priority and name not in args.priority:
            logger.info("stopping before %s seed %d (--stop_after_priority)", name, seed)
            break
        run_dir = None if name == "a_random" else pretrain(name, seed, args, total)
        row = {"variant": name, "seed": seed, "pretrain_seconds": time.perf_counter() - cell_start}
        row.update(cell_protocol(seed, args))
        phase_start = time.perf_counter()
        if run_dir is None:
            row.update(linear_probe(name, "random", None, seed, args, settings, transfer))
        else:
            row.update(
                linear_probe(
                    name, "cmcgns", str(run_dir / "models" / "image_encoder.pt"), seed, args, settings, transfer
                )
            )
            row.update(final_training_diagnostics(run_dir))
        row["probe_seconds"] = time.perf_counter() - phase_start
        phase_start = time.perf_counter()
        row.update(retrieval(name, seed, run_dir, args, total))
        row["retrieval_seconds"] = time.perf_counter() - phase_start
        row["seconds"] = time.perf_counter() - cell_start  # pretraining + probe + retrieval
        results.append(row)
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(row, sort_keys=True), encoding="utf-8")
        elapsed = time.perf_counter() - start
        logger.info(
            "[%d/%d] %s seed %d done in %.0f s: LP AUROC 1%% %.3f, 100%% %.3f, i2t R@10 %.3f, local top-1 "
            "%.3f (pretraining %.0f s, probe %.0f s, retrieval %.0f s; ETA %.0f min)",
            done,
            len(cells),
            name,
            seed,
            row["seconds"],
            row["auroc_0.01"],
            row["auroc_1"],
            row["i2t_R@10"],
            row["local_top1"],
            row["pretrain_seconds"],
            row["probe_seconds"],
            row["retrieval_seconds"],
            elapsed / done * (len(cells) - done) / 60,
        )
        write_report(results, args, time.perf_counter() - start)  # a partial table survives an interruption
    # second pass, after every cell has its classification and retrieval figures: the localised columns
    local_settings = {"encoder": settings["network_def#image_encoder"], "crop_size": settings["crop_size"]}
    todo = [
        r
        for r in results
        if (args.localised_variants is None or r["variant"] in args.localised_variants)
        and ablation_localised.missing_tasks(r, args.localised, args)
    ]
    for done, row in enumerate(todo, 1):
        cell_start = time.perf_counter()
        run_dir = None if row["variant"] == "a_random" else Path(args.work_dir) / f"{row['variant']}_seed{row['seed']}"
        configs = VARIANTS[row["variant"]][1]
        overrides = parsed_overrides(row["variant"], total)
        row.update(ablation_localised.localised_columns(row, run_dir, configs, overrides, local_settings, args))
        cached = Path(args.work_dir) / f"{row['variant']}_seed{row['seed']}" / "result.json"
        cached.write_text(json.dumps(row, sort_keys=True), encoding="utf-8")
        elapsed = time.perf_counter() - cell_start
        logger.info(
            "[localised %d/%d] %s seed %d in %.0f s: seg pooled Dice %s, det mAP %s, pointing %s",
            done,
            len(todo),
            row["variant"],
            row["seed"],
            elapsed,
            row.get("seg_pooled_dice"),
            row.get("det_mAP_40_75"),
            row.get("grounding_pointing"),
        )
        write_report(results, args, time.perf_counter() - start)
    write_report(results, args, time.perf_counter() - start)
    logger.info("wrote %s/demo_ablation.{md,json,png} (%.1f min)", args.results_dir, (time.perf_counter() - start) / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
