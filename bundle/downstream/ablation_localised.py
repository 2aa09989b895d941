"""The localised columns of scripts/ablate.py: segmentation, detection and grounding of one pretrained cell.

Each column runs the same protocol as the demo's own grid for that task, with the demo grid's settings (the commands
in docs/results/demo_segmentation.md and demo_detection.md), at one label fraction and with the pretraining seed as
the head seed, so the spread over pretraining seeds also carries head randomness (the grids show how large that is
alone). Grounding and zero-shot come from scripts/evaluate_joint_space.py's evaluation of the same checkpoint (its
cached summary when there is one).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

from bundle.downstream import detection_grid, segmentation_transfer

logger = logging.getLogger("ablate.localised")
ROOT = Path(__file__).resolve().parents[2]
TASKS = ("segmentation", "detection", "grounding")

# the demo grids' settings (encoder, sizes, budgets), as in their results files; fractions, seeds, encoders and
# directories are added per cell
SEGMENTATION_DEMO_ARGS = (
    "--image_size 96 --crop_size 96 --decoder_channels 64 32 16 16 8 --fraction_epochs 0.01:20,0.1:6,1.0:2 "
    "--batch_size 8 --val_batch_size 8 --lr 1e-3"
).split()
# the ablation's one change against the segmentation grid: validation every second epoch (3 of the 6 at 10 %), a
# third of the column's time; the best head is still chosen on validation
SEGMENTATION_VAL_INTERVAL = 2
SEGMENTATION_ABLATION_ARGS = ["--val_interval", str(SEGMENTATION_VAL_INTERVAL)]
DETECTION_DEMO_ARGS = (
    "--image_size 128 --fpn_channels 64 --anchor_base 1.0 --max_epochs 2 --min_steps 100 --validations 2 "
    "--patience 3 --batch_size 16"
).split()

# result key -> (source key in the task's row, table header)
COLUMNS = {
    "segmentation": {
        "seg_mgca_dice": ("test_mgca_dice", "seg MGCA Dice"),
        "seg_pooled_dice": ("test_pooled_dice", "seg pooled Dice"),
    },
    "detection": {
        "det_mAP_40_75": ("mAP_40_75", "det mAP 0.40:0.75"),
        "det_mAP_50": ("mAP_50", "det mAP@0.5"),
    },
    "grounding": {
        "grounding_pointing": ("model_pointing", "pointing"),
        "grounding_control_pointing": ("control_pointing", "pointing, control sentence"),
        "grounding_token_pointing": ("model_token_pointing", "token pointing"),
        "zs_macro_auroc": ("zs_macro_auroc", "zero-shot AUROC"),
    },
}


def detection_fraction(args) -> float:
    """Detection's label fraction: its own option when given (on the demo, 10 % detection cells are noise: the
    grid's spread equals its mean there), else the shared one."""
    return getattr(args, "detection_fraction", None) or args.localised_fraction


# the protocol a cached column records beside its figures, and what a cell that did not record a key had: cells
# cached before the fractions were stored were all computed at 10 %; a segmentation column without its validation
# interval is of unknown protocol (0.12 validated every epoch, the first 0.13 cells every second one without saying
# so), so it is recomputed rather than mixed into one table
VAL_INTERVAL_KEY = "seg_val_interval"
LEGACY_PROTOCOL = {"seg_fraction": 0.1, "det_fraction": 0.1}


def wanted_protocol(args=None) -> dict[str, dict]:
    """task -> {recorded key: the value this invocation asks for}; the label fractions only when args are given."""
    wanted = {"segmentation": {VAL_INTERVAL_KEY: SEGMENTATION_VAL_INTERVAL}, "detection": {}}
    if args is not None:
        wanted["segmentation"]["seg_fraction"] = args.localised_fraction
        wanted["detection"]["det_fraction"] = detection_fraction(args)
    return wanted


def missing_tasks(row: dict, tasks, args=None) -> list[str]:
    """Tasks whose columns are absent or were computed under another protocol than this invocation's (the
    segmentation validation interval; given args, the label fractions)."""
    wanted = wanted_protocol(args)
    return [
        t
        for t in tasks
        if any(key not in row for key in COLUMNS[t])
        or any(row.get(key, LEGACY_PROTOCOL.get(key)) != value for key, value in wanted.get(t, {}).items())
    ]


def _common(args, settings: dict, spec: str, fraction: float, seed: int, work_dir: Path) -> list[str]:
    return [
        "--encoder",
        spec,
        "--dataset_dir",
        str(args.dataset_dir),
        "--dataset",
        "demo",
        "--encoder_name",
        settings["encoder"],
        "--encoder_image_size",
        str(settings["crop_size"]),
        "--fractions",
        str(fraction),
        "--seeds",
        str(seed),
        "--work_dir",
        str(work_dir),
        "--results_dir",
        str(work_dir / "results"),
    ]


def encoder_spec(label: str, source: str, weights: str | None) -> str:
    return f"{label}={source}" + (f":{weights}" if weights else "")


def segmentation_column(source, weights, label, seed, fraction, settings, args) -> dict:
    work_dir = Path(args.work_dir) / label / "segmentation"
    argv = (
        SEGMENTATION_DEMO_ARGS
        + SEGMENTATION_ABLATION_ARGS
        + _common(args, settings, encoder_spec(label, source, weights), fraction, seed, work_dir)
    )
    grid_args = segmentation_transfer.build_parser().parse_args(argv)
    row = segmentation_transfer.run_cell(grid_args, label, source, weights, fraction, seed)
    return {key: row[src] for key, (src, _) in COLUMNS["segmentation"].items()} | {
        "seg_seconds": row["seconds"],
        "seg_fraction": fraction,
        VAL_INTERVAL_KEY: SEGMENTATION_VAL_INTERVAL,
    }


def detection_column(source, weights, label, seed, fraction, settings, args) -> dict:
    work_dir = Path(args.work_dir) / label / "detection"
    argv = DETECTION_DEMO_ARGS + _common(args, settings, encoder_spec(label, source, weights), fraction, seed, work_dir)
    row = detection_grid.run_cell(detection_grid.parse_args(argv), label, source, weights, fraction, seed)
    return {key: row[src] for key, (src, _) in COLUMNS["detection"].items()} | {
        "det_seconds": row["seconds"],
        "det_fraction": fraction,
    }


def grounding_column(checkpoint: Path | None, configs: list[str], overrides: dict, label: str, seed: int, args) -> dict:
    spec = importlib.util.spec_from_file_location("evaluate_joint_space", ROOT / "scripts" / "evaluate_joint_space.py")
    joint = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(joint)
    js_args = argparse.Namespace(dataset_dir=args.dataset_dir, work_dir=args.joint_space_dir, recompute=False)
    # the ablation computes the whole-split retrieval itself (with the local top-1): zero-shot and grounding only
    workflows = tuple(w for w in joint.WORKFLOWS if w != "evaluate_retrieval.yaml")
    summary = joint.evaluate(label, checkpoint, configs, seed, js_args, overrides, workflows)
    return {key: summary[src] for key, (src, _) in COLUMNS["grounding"].items()} | {
        "grounding_seconds": summary.get("seconds"),
        # the same for every cell (the cases' regions on the token grid): baselines of the token pointing column
        "grounding_uniform_token_pointing": summary.get("uniform_token_pointing"),
        "grounding_best_fixed_token_pointing": summary.get("best_fixed_token_pointing"),
    }


def localised_columns(
    row: dict, run_dir: Path | None, configs: list[str], overrides: dict, settings: dict, args
) -> dict:
    """The missing localised columns of one ablation cell (row: its result.json; run_dir None for random init;
    configs and overrides: the variant's extra config files and parser overrides, so that grounding evaluates the
    network the cell trained, e.g. softmax attention)."""
    name, seed = row["variant"], row["seed"]
    label = f"{name}_seed{seed}"
    source, weights = ("random", None) if run_dir is None else ("cmcgns", str(run_dir / "models" / "image_encoder.pt"))
    out = {}
    for task in missing_tasks(row, args.localised, args):
        logger.info("%s: %s column", label, task)
        if task == "segmentation":
            out.update(segmentation_column(source, weights, label, seed, args.localised_fraction, settings, args))
        elif task == "detection":
            out.update(detection_column(source, weights, label, seed, detection_fraction(args), settings, args))
        else:
            checkpoint = None if run_dir is None else run_dir / "models" / "model.pt"
            out.update(grounding_column(checkpoint, configs, overrides, label, seed, args))
    return out
