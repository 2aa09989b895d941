#!/usr/bin/env python
"""Downstream transfer grid for one dataset: encoders x label fractions x seeds (method.md 5, MGCA protocol).
Classification below; --task segmentation runs bundle/downstream/segmentation_transfer.py (docs/segmentation.md).

Writes <results_dir>/<dataset>_classification.md (test key metric, mean and spread over seeds; a per-run table) and
<results_dir>/<dataset>_classification.png. Everything is built from configs/classification.yaml (same network,
preprocessing, label handling, fractions and metrics).

--mode linear_probe (default): the encoder is frozen, so its pooled features are computed once per encoder and split
  and the linear head is trained on the cached features (bundle/downstream/cached_linear_probe.py; evaluation
  transform, no random-crop augmentation). The output says so.
--mode fine_tune: every cell is a full run of the bundle config (SupervisedTrainer/SupervisedEvaluator).

Example (the demo, after `make demo`):
  PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python scripts/evaluate_transfer.py --dataset_dir demo_data --dataset demo \
      --encoder cmcgns=cmcgns:models/image_encoder.pt --encoder random=random --encoder_name resnet18 \
      --image_size 144 --crop_size 128 --seeds 0 1 2
  An ImageNet baseline: --encoder imagenet=imagenet:/path/resnet50-torchvision.pth (a local file; never downloaded).

--task detection: the RetinaNet grid of configs/detection.yaml (bundle/downstream/detection_grid.py; its options:
  --task detection --help; docs/detection.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402

from bundle.data.label_fractions import fraction_key  # noqa: E402
from bundle.downstream.cached_linear_probe import (
    CachedFeatures,
    evaluate_head,
    extract_features,
    train_linear_head,
)
from bundle.downstream.encoder_loading import parse_encoder
from bundle.downstream.grid_report import (  # noqa: E402
    command_footer,
    mean_spread,
    plot_fraction_curves,
    train_validate_test,
)
from bundle.downstream.metrics import MacroAUROC  # noqa: E402

logger = logging.getLogger("evaluate_transfer")
CONFIGS = [str(ROOT / "configs" / "common.yaml"), str(ROOT / "configs" / "classification.yaml")]


def config_parser(args, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(CONFIGS + list(args.config))
    settings = {
        "bundle_root": str(ROOT),
        "dataset_dir": args.dataset_dir,
        "task": args.task,
        "encoder_name": args.encoder_name,
        "mode": args.mode,
        "pooling": args.pooling,
        "num_workers": args.num_workers,
        "device": "cpu" if not torch.cuda.is_available() else "cuda:0",
        "learning_rate": args.lr,
        "max_epochs": args.max_epochs,
        "early_stop_patience": args.patience,
        "batch_size": args.batch_size,
    }
    if args.manifest:
        settings["manifest"] = args.manifest
    if args.image_size:
        settings["image_size"] = args.image_size
    if args.crop_size:
        settings["crop_size"] = args.crop_size
    settings.update(overrides)
    for key, value in settings.items():
        parser[key] = value
    return parser


def subset(data: CachedFeatures, wanted: list[str]) -> CachedFeatures:
    position = {i: n for n, i in enumerate(data.ids)}
    missing = [i for i in wanted if i not in position]
    if missing:
        raise ValueError(f"{len(missing)} fraction ids are not training items, e.g. {missing[:5]}")
    index = torch.tensor([position[i] for i in wanted])
    return CachedFeatures(list(wanted), data.features[index], data.labels[index])


def run_linear_probe_grid(args, encoders, key: str) -> list[dict]:
    rows = []
    cells = len(encoders) * len(args.fractions) * len(args.seeds)
    start, done = time.perf_counter(), 0
    for label, source, weights in encoders:
        parser = config_parser(args, encoder_source=source, encoder_weights=weights or "", data_fraction=1.0)
        # a random encoder is the same in every run (scripts/ablate.py draws one per pretraining seed)
        encoder_seed = getattr(args, "encoder_seed", None)
        torch.manual_seed(parser.get_parsed_content("seed") if encoder_seed is None else encoder_seed)
        model = parser.get_parsed_content("network_def")
        transform = parser.get_parsed_content("validate#preprocessing")
        task, num_classes = parser.get_parsed_content("task"), parser.get_parsed_content("num_classes")
        class_names = parser.get_parsed_content("class_names")
        fractions = parser.get_parsed_content("manifest_meta")["fractions"]
        device = parser.get_parsed_content("device")
        split_features = {}
        for split, id_ in (
            ("training", "train#datalist"),
            ("validation", "validate#datalist"),
            ("test", "test#datalist"),
        ):
            items = parser.get_parsed_content(id_)
            split_features[split] = extract_features(
                model,
                items,
                transform,
                args.feature_batch_size,
                args.num_workers,
                device,
                desc=f"{label} {split}",
                preprocessed=getattr(args, "preprocessed", None),  # scripts/ablate.py: one cache for all its cells
            )
        for fraction in args.fractions:
            train = subset(split_features["training"], fractions[fraction_key(fraction)])
            for seed in args.seeds:
                head, info = train_linear_head(
                    train,
                    split_features["validation"],
                    task,
                    num_classes,
                    class_names,
                    seed,
                    args.lr,
                    args.weight_decay,
                    args.batch_size,
                    args.max_epochs,
                    args.patience,
                )
                test = evaluate_head(head, split_features["test"], task, num_classes, class_names)
                rows.append(
                    {
                        "encoder": label,
                        "fraction": fraction,
                        "seed": seed,
                        "n_train": len(train.ids),
                        "test": test[key],
                        "test_auroc": test["auroc"],
                        "undefined": sorted(test["undefined"]),
                        **info,
                    }
                )
                done += 1
                elapsed = time.perf_counter() - start
                logger.info(
                    "[%d/%d] %s fraction %s seed %d: test %s %.4f (best val %.4f at epoch %d; %.0f s, ETA %.0f s)",
                    done,
                    cells,
                    label,
                    fraction,
                    seed,
                    key,
                    test[key],
                    info["best_val"],
                    info["best_epoch"],
                    elapsed,
                    elapsed / done * (cells - done),
                )
    return rows


def run_fine_tune_grid(args, encoders, key: str) -> list[dict]:
    rows = []
    cells = len(encoders) * len(args.fractions) * len(args.seeds)
    start, done = time.perf_counter(), 0
    for label, source, weights in encoders:
        for fraction in args.fractions:
            for seed in args.seeds:
                out = Path(args.work_dir) / f"{label}_{fraction_key(fraction)}_seed{seed}"
                parser = config_parser(
                    args,
                    encoder_source=source,
                    encoder_weights=weights or "",
                    data_fraction=fraction,
                    seed=seed,
                    output_dir=str(out),
                )
                trainer, validator, evaluator = train_validate_test(parser)
                metrics = evaluator.state.metrics
                auroc = next(
                    m
                    for group in parser.get_parsed_content("test#metrics")
                    for m in group.values()
                    if isinstance(m, MacroAUROC)
                )
                rows.append(
                    {
                        "encoder": label,
                        "fraction": fraction,
                        "seed": seed,
                        "n_train": len(parser.get_parsed_content("train#datalist")),
                        "test": metrics[f"test_{key}"],
                        "test_auroc": metrics["test_auroc"],
                        "undefined": sorted(auroc.last_result.undefined),
                        "best_val": validator.state.best_metric,
                        "best_epoch": validator.state.best_metric_epoch,
                        "epochs_run": trainer.state.epoch,
                    }
                )
                done += 1
                elapsed = time.perf_counter() - start
                logger.info(
                    "[%d/%d] %s fraction %s seed %d: test %s %.4f (%.0f s, ETA %.0f s)",
                    done,
                    cells,
                    label,
                    fraction,
                    seed,
                    key,
                    rows[-1]["test"],
                    elapsed,
                    elapsed / done * (cells - done),
                )
    return rows


def write_report(args, rows: list[dict], key: str, seconds: float) -> tuple[Path, Path]:
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    md, png = results / f"{args.dataset}_classification.md", results / f"{args.dataset}_classification.png"
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    metric_name = "accuracy" if key == "accuracy" else "macro AUROC" if args.task == "multilabel" else "AUROC"
    lines = [
        f"# {args.dataset}: downstream classification ({args.mode.replace('_', ' ')})",
        "",
        f"Test {metric_name} ({args.task}); mean ± sample standard deviation over seeds {args.seeds}. "
        f"Encoder {args.encoder_name}, pooling {args.pooling}; label fractions from the manifest's nested subsets "
        f"(the same subset for every seed: the spread is training randomness only).",
        "",
    ]
    if args.mode == "linear_probe":
        lines += [
            "Linear probe on CACHED features: the frozen encoder's pooled features were computed once per "
            "split with the evaluation transform (centre crop, no random-crop augmentation) and the linear head "
            "was trained on them (bundle/downstream/cached_linear_probe.py).",
            "",
        ]
    header = "| encoder | " + " | ".join(f"{float(f) * 100:g}% labels" for f in args.fractions) + " |"
    lines += [header, "|" + "---|" * (len(args.fractions) + 1)]
    for enc in encoders:
        cells = [
            mean_spread([r["test"] for r in rows if r["encoder"] == enc and r["fraction"] == f]) for f in args.fractions
        ]
        lines.append(f"| {enc} | " + " | ".join(cells) + " |")
    if key == "accuracy":
        lines += ["", "Macro AUROC (one-vs-rest):", "", header, "|" + "---|" * (len(args.fractions) + 1)]
        for enc in encoders:
            cells = [
                mean_spread([r["test_auroc"] for r in rows if r["encoder"] == enc and r["fraction"] == f])
                for f in args.fractions
            ]
            lines.append(f"| {enc} | " + " | ".join(cells) + " |")
    undefined = sorted({c for r in rows for c in r["undefined"]})
    if undefined:
        lines += [
            "",
            f"Classes without both positives and negatives in the test split (no AUROC, left out of the "
            f"macro): {', '.join(undefined)}.",
        ]
    lines += [
        "",
        "Runs:",
        "",
        "| encoder | fraction | seed | training images | test | best val | best epoch | epochs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['encoder']} | {r['fraction']} | {r['seed']} | {r['n_train']} | {r['test']:.4f} | "
            f"{r['best_val']:.4f} | {r['best_epoch']} | {r['epochs_run']} |"
        )
    if args.note:
        lines += ["", args.note]
    lines += command_footer(args.argv, seconds)
    md.write_text("\n".join(lines), encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    plot_fraction_curves(ax, rows, encoders, args.fractions, "test")
    ax.set_xlabel("training labels (%)")
    ax.set_ylabel(f"test {metric_name}")
    ax.set_title(f"{args.dataset} ({args.mode.replace('_', ' ')})")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return md, png


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    task = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--task"), None)
    task = next((a.split("=", 1)[1] for a in argv if a.startswith("--task=")), task)
    if task == "segmentation":
        from bundle.downstream.segmentation_transfer import main as segmentation_main  # its own options

        return segmentation_main(argv)
    if task == "detection":
        from bundle.downstream.detection_grid import main as detection_main  # its own options: --task detection -h

        return detection_main(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", required=True)
    p.add_argument("--dataset", default=None, help="name in the output files (default: the folder name)")
    p.add_argument("--manifest", default=None, help="default: DATASET_DIR/manifests/classification.json")
    p.add_argument(
        "--task",
        default="multilabel",
        choices=("multilabel", "binary", "multiclass", "segmentation", "detection"),
        help="segmentation: bundle/downstream/segmentation_transfer.py; detection: "
        "bundle/downstream/detection_grid.py (see --task segmentation|detection --help)",
    )
    p.add_argument(
        "--encoder",
        action="append",
        required=True,
        help="label=source[:weights], source cmcgns|imagenet|random (repeat for several)",
    )
    p.add_argument("--encoder_name", default="resnet50")
    p.add_argument("--image_size", type=int, default=None)
    p.add_argument("--crop_size", type=int, default=None)
    p.add_argument("--mode", default="linear_probe", choices=("linear_probe", "fine_tune"))
    p.add_argument("--pooling", default="avg", choices=("avg", "global"))
    p.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight_decay", type=float, default=1e-6)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--feature_batch_size", type=int, default=64)
    p.add_argument("--max_epochs", type=int, default=50)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--config", nargs="*", default=[], help="extra override config files")
    p.add_argument("--note", default="", help="a sentence added to the results file (e.g. where the encoder came from)")
    p.add_argument("--results_dir", default=str(ROOT / "docs" / "results"))
    p.add_argument("--work_dir", default=str(ROOT / "runs" / "transfer"), help="fine_tune run folders")
    args = p.parse_args(argv)
    args.argv = argv
    args.dataset = args.dataset or Path(args.dataset_dir).resolve().name
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    encoders = [parse_encoder(s) for s in args.encoder]
    key = "accuracy" if args.task == "multiclass" else "auroc"
    start = time.perf_counter()
    grid = run_linear_probe_grid if args.mode == "linear_probe" else run_fine_tune_grid
    rows = grid(args, encoders, key)
    md, png = write_report(args, rows, key, time.perf_counter() - start)
    logger.info("wrote %s and %s (%.1f min)", md, png, (time.perf_counter() - start) / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
