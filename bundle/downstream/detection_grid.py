"""The detection grid of scripts/evaluate_transfer.py --task detection: encoders x label fractions x seeds.

Every cell is a full run of configs/detection.yaml (SupervisedTrainer with the RetinaNet detector, validation by
mAP over IoU 0.40:0.05:0.75 selecting the best checkpoint, then the test split). Writes
<results_dir>/<dataset>_detection.md (test mAP 0.40:0.75, COCO mAP@0.5 and mAP@[0.5:0.95]: mean ± sd over seeds, and
a per-run table), <dataset>_detection.png (mAP vs label fraction) and <dataset>_detection_overlay.png (test images of
the first encoder's run on the largest fraction, first seed: predicted and true boxes).

Training length: --max_epochs epochs, raised for small fractions so that every run makes at least --min_steps
optimiser steps (1% of a dataset is a few batches); validation about --validations times per run.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from bundle.data.label_fractions import fraction_key
from bundle.downstream.encoder_loading import parse_encoder
from bundle.downstream.grid_report import (
    add_grid_arguments,
    add_output_arguments,
    command_footer,
    mean_spread,
    plot_fraction_curves,
    train_validate_test,
)

logger = logging.getLogger("evaluate_transfer.detection")
ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [str(ROOT / "configs" / "common.yaml"), str(ROOT / "configs" / "detection.yaml")]
METRICS = (
    ("mAP_40_75", "mAP IoU 0.40:0.05:0.75 (protocol)"),
    ("mAP_50", "COCO mAP@0.5"),
    ("mAP_50_95", "COCO mAP@[0.5:0.95]"),
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="evaluate_transfer.py --task detection",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_grid_arguments(p, "detection", "detection.json")
    p.add_argument("--image_size", type=int, default=224, help="detection input side (the protocol: 224)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--val_batch_size", type=int, default=32)
    p.add_argument("--max_epochs", type=int, default=50)
    p.add_argument("--min_steps", type=int, default=0, help="at least this many optimiser steps per run")
    p.add_argument("--validations", type=int, default=0, help="about this many validations per run (0: every epoch)")
    p.add_argument("--patience", type=int, default=10, help="validations without improvement before stopping")
    p.add_argument("--fpn_channels", type=int, default=256)
    p.add_argument("--anchor_base", type=float, default=2.0)
    p.add_argument("--no_augment", action="store_true", help="no random flip / zoom in training")
    add_output_arguments(p, str(ROOT / "docs" / "results"), str(ROOT / "runs" / "transfer_detection"))
    args = p.parse_args(argv)
    args.argv = argv
    args.dataset = args.dataset or Path(args.dataset_dir).resolve().name
    return args


def run_length(n_train: int, args) -> tuple[int, int]:
    """(epochs, validation interval) for a training set of n_train images (see the module doc)."""
    steps_per_epoch = max(1, math.ceil(n_train / args.batch_size))
    epochs = max(args.max_epochs, math.ceil(args.min_steps / steps_per_epoch))
    interval = max(1, epochs // args.validations) if args.validations else 1
    return epochs, interval


def cell_parser(args, source: str, weights: str | None, fraction: float, seed: int, out: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(CONFIGS + list(args.config))
    settings = {
        "bundle_root": str(ROOT),
        "dataset_dir": args.dataset_dir,
        "encoder_name": args.encoder_name,
        "encoder_source": source,
        "encoder_weights": weights or "",
        "mode": args.mode,
        "detection_image_size": args.image_size,
        "fpn_channels": args.fpn_channels,
        "anchor_base": args.anchor_base,
        "augment": not args.no_augment,
        "num_workers": args.num_workers,
        "device": "cuda:0" if torch.cuda.is_available() else "cpu",
        "learning_rate": args.lr,
        "batch_size": args.batch_size,
        "val_batch_size": args.val_batch_size,
        "data_fraction": fraction,
        "seed": seed,
        "output_dir": str(out),
        "early_stop_patience": args.patience,
    }
    if args.manifest:
        settings["manifest"] = args.manifest
    if args.encoder_image_size:
        settings["encoder_image_size"] = args.encoder_image_size
    for key, value in settings.items():
        parser[key] = value
    n_train = len(parser.get_parsed_content("train#datalist"))
    parser["max_epochs"], parser["val_interval"] = run_length(n_train, args)
    return parser


def run_cell(args, label: str, source: str, weights: str | None, fraction: float, seed: int) -> dict:
    """One full detection run (train, best checkpoint by validation mAP, test); its row of the report."""
    out = Path(args.work_dir) / f"{label}_{fraction_key(fraction)}_seed{seed}"
    start = time.perf_counter()
    parser = cell_parser(args, source, weights, fraction, seed, out)
    trainer, validator, evaluator = train_validate_test(parser)
    metrics = evaluator.state.metrics
    return {
        "encoder": label,
        "fraction": fraction,
        "seed": seed,
        "n_train": len(parser.get_parsed_content("train#datalist")),
        **{name: float(metrics[f"test_{name}"]) for name, _ in METRICS},
        "best_val": float(validator.state.best_metric),
        "best_epoch": int(validator.state.best_metric_epoch),
        "epochs_run": int(trainer.state.epoch),
        "max_epochs": int(parser["max_epochs"]),
        "seconds": time.perf_counter() - start,
        "out": str(out),
    }


def run_grid(args, encoders) -> list[dict]:
    rows, cells = [], len(encoders) * len(args.fractions) * len(args.seeds)
    start = time.perf_counter()
    for label, source, weights in encoders:
        for fraction in args.fractions:
            for seed in args.seeds:
                rows.append(run_cell(args, label, source, weights, fraction, seed))
                done, elapsed = len(rows), time.perf_counter() - start
                logger.info(
                    "[%d/%d] %s fraction %s seed %d: test mAP 0.40:0.75 %.4f (best val %.4f at epoch %d; "
                    "%.0f s, ETA %.0f s)",
                    done,
                    cells,
                    label,
                    fraction,
                    seed,
                    rows[-1]["mAP_40_75"],
                    rows[-1]["best_val"],
                    rows[-1]["best_epoch"],
                    elapsed,
                    elapsed / done * (cells - done),
                )
    return rows


def write_report(args, rows: list[dict], seconds: float) -> tuple[Path, Path]:
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    md, png = results / f"{args.dataset}_detection.md", results / f"{args.dataset}_detection.png"
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    header = "| encoder | " + " | ".join(f"{float(f) * 100:g}% labels" for f in args.fractions) + " |"
    lines = [
        f"# {args.dataset}: downstream detection (RetinaNet, encoder {args.mode.replace('_', ' ')})",
        "",
        f"Test metrics; mean ± sample standard deviation over seeds {args.seeds}. Encoder {args.encoder_name}, "
        f"input {args.image_size} px, FPN {args.fpn_channels} channels over layer2-4, MONAI RetinaNet "
        "(ATSS matching, hard-negative sampling); label fractions from the manifest's nested subsets (the same "
        "subset for every seed: the spread is training randomness only). Images without boxes are in every "
        "split and count (their detections are false positives).",
        "",
    ]
    for name, title in METRICS:
        lines += [f"{title}:", "", header, "|" + "---|" * (len(args.fractions) + 1)]
        for enc in encoders:
            cells = [
                mean_spread([r[name] for r in rows if r["encoder"] == enc and r["fraction"] == f])
                for f in args.fractions
            ]
            lines.append(f"| {enc} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "Runs:",
        "",
        "| encoder | fraction | seed | training images | test mAP 0.40:0.75 | mAP@0.5 | "
        "mAP@[0.5:0.95] | best val | best epoch | epochs run / max | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['encoder']} | {r['fraction']} | {r['seed']} | {r['n_train']} | {r['mAP_40_75']:.4f} | "
            f"{r['mAP_50']:.4f} | {r['mAP_50_95']:.4f} | {r['best_val']:.4f} | {r['best_epoch']} | "
            f"{r['epochs_run']} / {r['max_epochs']} | {r['seconds']:.0f} |"
        )
    if args.note:
        lines += ["", args.note]
    lines += command_footer(args.argv, seconds)
    md.write_text("\n".join(lines), encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    plot_fraction_curves(ax, rows, encoders, args.fractions, "mAP_40_75")
    ax.set_xlabel("training labels (%)")
    ax.set_ylabel("test mAP IoU 0.40:0.75")
    ax.set_title(f"{args.dataset} detection ({args.mode.replace('_', ' ')} encoder)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    overlay = Path(rows[0]["out"]) / "test" / "overlay.png"
    shown = [r for r in rows if r["encoder"] == encoders[0] and r["fraction"] == max(args.fractions)]
    if shown and (Path(shown[0]["out"]) / "test" / "overlay.png").is_file():
        overlay = Path(shown[0]["out"]) / "test" / "overlay.png"
    if overlay.is_file():
        shutil.copyfile(overlay, results / f"{args.dataset}_detection_overlay.png")
    return md, png


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    encoders = [parse_encoder(s) for s in args.encoder]
    start = time.perf_counter()
    rows = run_grid(args, encoders)
    md, png = write_report(args, rows, time.perf_counter() - start)
    logger.info("wrote %s and %s (%.1f min)", md, png, (time.perf_counter() - start) / 60)
    return 0


if __name__ == "__main__":
    sys.exit("run through scripts/evaluate_transfer.py --task detection")
