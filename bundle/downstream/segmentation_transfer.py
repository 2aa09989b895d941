"""The segmentation grid of `scripts/evaluate_transfer.py --task segmentation`: encoders x label fractions x seeds.

Every cell is a full run of configs/segmentation.yaml (SupervisedTrainer with the MGCA loss, best checkpoint by the
validation MGCA Dice, the test split with that checkpoint): the decoder must be trained on augmented images, so no
feature caching. Writes <results_dir>/<dataset>_segmentation.md (test MGCA Dice, mean ± s.d. over seeds, plus the
per-image mean and pooled Dice and one row per run), <dataset>_segmentation.png (Dice against the label fraction) and
<dataset>_segmentation_overlay.png (image / ground truth / prediction for a few test images of one run).
"""

from __future__ import annotations

import argparse
import logging
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

logger = logging.getLogger("evaluate_transfer.segmentation")
ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [str(ROOT / "configs" / "common.yaml"), str(ROOT / "configs" / "segmentation.yaml")]
METRICS = (
    ("mgca_dice", "MGCA Dice (per image, batch means)"),
    ("mean_dice", "mean per-image Dice (MONAI DiceMetric)"),
    ("pooled_dice", "pooled Dice (all pixels)"),
)


def parse_fraction_epochs(spec: str | None) -> dict[float, int]:
    """ "0.01:40,0.1:12,1.0:4" -> {0.01: 40, 0.1: 12, 1.0: 4}."""
    out = {}
    for part in filter(None, (spec or "").split(",")):
        fraction, _, epochs = part.partition(":")
        out[float(fraction)] = int(epochs)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate_transfer.py --task segmentation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_grid_arguments(p, "segmentation", "segmentation.json")
    p.add_argument("--image_size", type=int, default=None)
    p.add_argument("--crop_size", type=int, default=None)
    p.add_argument("--class_mode", default="binary", choices=("binary", "per_class"))
    p.add_argument("--decoder_channels", type=int, nargs=5, default=None)
    p.add_argument("--lr", type=float, default=None, help="default: the config's (MGCA 2e-4)")
    p.add_argument("--max_epochs", type=int, default=None)
    p.add_argument("--fraction_epochs", default=None, help="per-fraction max epochs, e.g. 0.01:40,0.1:12,1.0:4")
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--val_interval", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--val_batch_size", type=int, default=None)
    p.add_argument("--overlay_count", type=int, default=4, help="test images in the overlay PNG (0: none)")
    add_output_arguments(p, str(ROOT / "docs" / "results"), str(ROOT / "runs" / "transfer_segmentation"))
    return p


def config_parser(args, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(CONFIGS + list(args.config))
    settings = {
        "bundle_root": str(ROOT),
        "dataset_dir": args.dataset_dir,
        "encoder_name": args.encoder_name,
        "mode": args.mode,
        "class_mode": args.class_mode,
        "num_workers": args.num_workers,
        "device": "cuda:0" if torch.cuda.is_available() else "cpu",
    }
    optional = {
        "manifest": args.manifest,
        "image_size": args.image_size,
        "crop_size": args.crop_size,
        "encoder_image_size": args.encoder_image_size,
        "learning_rate": args.lr,
        "max_epochs": args.max_epochs,
        "early_stop_patience": args.patience,
        "val_interval": args.val_interval,
        "batch_size": args.batch_size,
        "val_batch_size": args.val_batch_size,
        "decoder_channels": list(args.decoder_channels) if args.decoder_channels else None,
    }
    settings.update({k: v for k, v in optional.items() if v is not None})
    settings.update(overrides)
    for key, value in settings.items():
        parser[key] = value
    return parser


def run_cell(args, label: str, source: str, weights: str | None, fraction: float, seed: int) -> dict:
    out = Path(args.work_dir) / f"{label}_{fraction_key(fraction)}_seed{seed}"
    overrides = dict(
        encoder_source=source, encoder_weights=weights or "", data_fraction=fraction, seed=seed, output_dir=str(out)
    )
    epochs = parse_fraction_epochs(args.fraction_epochs).get(float(fraction))
    if epochs:
        overrides["max_epochs"] = epochs
    parser = config_parser(args, **overrides)
    start = time.perf_counter()
    trainer, validator, evaluator = train_validate_test(parser)
    metrics = evaluator.state.metrics
    return {
        "encoder": label,
        "fraction": fraction,
        "seed": seed,
        "output_dir": str(out),
        "n_train": len(parser.get_parsed_content("train#datalist")),
        **{f"test_{k}": float(metrics[f"test_{k}"]) for k, _ in METRICS},
        "best_val": float(validator.state.best_metric),
        "best_epoch": int(validator.state.best_metric_epoch),
        "epochs_run": int(trainer.state.epoch),
        "seconds": time.perf_counter() - start,
        "test_items": parser.get_parsed_content("test#datalist"),
        "mask_dir": str(parser.get_parsed_content("test_dir")) + "/masks",
    }


def write_report(args, rows: list[dict], seconds: float) -> tuple[Path, Path]:
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    md, png = results / f"{args.dataset}_segmentation.md", results / f"{args.dataset}_segmentation.png"
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    header = "| encoder | " + " | ".join(f"{float(f) * 100:g}% labels" for f in args.fractions) + " |"
    rule = "|" + "---|" * (len(args.fractions) + 1)
    lines = [
        f"# {args.dataset}: downstream segmentation ({'frozen encoder' if args.mode == 'frozen' else 'fine-tuning'})",
        "",
        f"U-Net decoder over the {args.encoder_name} encoder ({args.class_mode} masks), configs/segmentation.yaml "
        f"for every run; mean ± sample standard deviation over seeds {args.seeds}; label fractions from the "
        "manifest's nested subsets (the same subset for every seed: the spread is training randomness only). "
        "Test split, best checkpoint by validation MGCA Dice.",
        "",
    ]
    for key, title in METRICS:
        lines += [f"Test {title}:", "", header, rule]
        for enc in encoders:
            cells = [
                mean_spread([r[f"test_{key}"] for r in rows if r["encoder"] == enc and r["fraction"] == f])
                for f in args.fractions
            ]
            lines.append(f"| {enc} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "MGCA Dice: per image at threshold 0.5 (an empty ground truth scores 1 if the prediction is empty, else 0), "
        "averaged over each batch, then over batches (MGCA's definition; the paper tables). Mean per-image "
        "Dice: the same per-image values averaged over images. Pooled: 2 TP / (2 TP + FP + FN) over all "
        "test pixels.",
        "",
        "Runs:",
        "",
        "| encoder | fraction | seed | training images | MGCA Dice | mean Dice | pooled Dice | best val | "
        "best epoch | epochs | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['encoder']} | {r['fraction']} | {r['seed']} | {r['n_train']} | {r['test_mgca_dice']:.4f} | "
            f"{r['test_mean_dice']:.4f} | {r['test_pooled_dice']:.4f} | {r['best_val']:.4f} | "
            f"{r['best_epoch']} | {r['epochs_run']} | {r['seconds']:.0f} |"
        )
    if args.note:
        lines += ["", args.note]
    lines += command_footer(args.argv, seconds)
    md.write_text("\n".join(lines), encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, (key, title) in zip(axes, METRICS[::2]):
        plot_fraction_curves(ax, rows, encoders, args.fractions, f"test_{key}")
        ax.set_xlabel("training masks (%)")
        ax.set_ylabel(f"test {key.replace('_', ' ')}")
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{args.dataset} segmentation ({args.mode.replace('_', ' ')})")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return md, png


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args.argv = list(argv)
    args.dataset = args.dataset or Path(args.dataset_dir).resolve().name
    if args.threads:
        torch.set_num_threads(args.threads)
    encoders = [parse_encoder(s) for s in args.encoder]
    cells = len(encoders) * len(args.fractions) * len(args.seeds)
    rows, start = [], time.perf_counter()
    # encoders innermost, and the report rewritten after every cell: a grid stopped early still compares encoders
    for fraction in args.fractions:
        for seed in args.seeds:
            for label, source, weights in encoders:
                rows.append(run_cell(args, label, source, weights, fraction, seed))
                write_report(args, rows, time.perf_counter() - start)
                elapsed = time.perf_counter() - start
                logger.info(
                    "[%d/%d] %s fraction %s seed %d: test MGCA Dice %.4f, mean %.4f, pooled %.4f (%.0f s, ETA %.0f s)",
                    len(rows),
                    cells,
                    label,
                    fraction,
                    seed,
                    rows[-1]["test_mgca_dice"],
                    rows[-1]["test_mean_dice"],
                    rows[-1]["test_pooled_dice"],
                    elapsed,
                    elapsed / len(rows) * (cells - len(rows)),
                )
    md, png = write_report(args, rows, time.perf_counter() - start)
    if args.overlay_count > 0:
        from bundle.downstream.segmentation_overlay import write_overlay

        # the first encoder's run on the most labels, first seed
        best = next(
            r
            for r in rows
            if r["encoder"] == encoders[0][0] and r["fraction"] == max(args.fractions) and r["seed"] == args.seeds[0]
        )
        overlay = write_overlay(
            best["test_items"],
            best["mask_dir"],
            Path(args.results_dir) / f"{args.dataset}_segmentation_overlay.png",
            args.overlay_count,
            title=f"{best['encoder']}, {float(best['fraction']) * 100:g}% labels, seed {best['seed']}",
        )
        logger.info("wrote %s", overlay)
    logger.info("wrote %s and %s (%.1f min)", md, png, (time.perf_counter() - start) / 60)
    return 0
