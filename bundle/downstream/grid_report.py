"""What the transfer grids (classification, segmentation, detection) share in their reports: the mean ± spread cell,
the command line as run, the wall-time footer and the metric-versus-label-fraction curve."""

from __future__ import annotations

import math
import shlex
import statistics
from collections.abc import Sequence

import torch


def mean_spread(values: Sequence[float]) -> str:
    """'m ± sd (n=k)' over the finite values (sample sd), 'v (n=1)' for one, 'undefined' for none."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "undefined"
    if len(finite) == 1:
        return f"{finite[0]:.4f} (n=1)"
    return f"{statistics.mean(finite):.4f} ± {statistics.stdev(finite):.4f} (n={len(finite)})"


def command_args(argv: Sequence[str]) -> list[str]:
    """The command line as run, without --note (its text is already in the file)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            out.append(arg)
    return out


def command_footer(argv: Sequence[str], seconds: float) -> list[str]:
    return [
        "",
        f"Command: `python scripts/evaluate_transfer.py {shlex.join(command_args(argv))}`; "
        f"{seconds / 60:.1f} min on {torch.get_num_threads()} CPU thread(s)"
        f"{' + GPU' if torch.cuda.is_available() else ''}.",
        "",
    ]


def plot_fraction_curves(ax, rows: Sequence[dict], encoders: Sequence[str], fractions: Sequence[float], key: str):
    """One line per encoder: mean ± sd of rows[key] over seeds at each label fraction (log-scaled percent)."""
    for enc in encoders:
        means, stds = [], []
        for f in fractions:
            vals = [r[key] for r in rows if r["encoder"] == enc and r["fraction"] == f and not math.isnan(r[key])]
            means.append(statistics.mean(vals) if vals else float("nan"))
            stds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
        ax.errorbar([float(f) * 100 for f in fractions], means, yerr=stds, marker="o", capsize=3, label=enc)
    ax.set_xscale("log")
    ax.legend()


def add_grid_arguments(p, task: str, manifest_name: str) -> None:
    """The arguments every downstream grid (segmentation, detection) takes: data, encoders, mode, fractions, seeds."""
    p.add_argument("--task", default=task, choices=(task,))
    p.add_argument("--dataset_dir", required=True)
    p.add_argument("--dataset", default=None, help="name in the output files (default: the folder name)")
    p.add_argument("--manifest", default=None, help=f"default: DATASET_DIR/manifests/{manifest_name}")
    p.add_argument(
        "--encoder",
        action="append",
        required=True,
        help="label=source[:weights], source cmcgns|imagenet|random (repeat for several)",
    )
    p.add_argument("--encoder_name", default="resnet50")
    p.add_argument("--encoder_image_size", type=int, default=None, help="the pretraining crop size")
    p.add_argument("--mode", default="frozen", choices=("frozen", "fine_tune"))
    p.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])


def add_output_arguments(p, results_dir: str, work_dir: str) -> None:
    """Loader workers, CPU threads, extra configs, the note and where results and runs go."""
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--config", nargs="*", default=[], help="extra override config files")
    p.add_argument("--note", default="", help="a sentence added to the results file")
    p.add_argument("--results_dir", default=results_dir)
    p.add_argument("--work_dir", default=work_dir)


def train_validate_test(parser):
    """One grid cell of a downstream config: initialize (set_determinism(seed), early stopping -> trainer), train
    with validation selecting the best checkpoint, then the test split. Returns (trainer, validator, evaluator)."""
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()
    validator = parser.get_parsed_content("validate#evaluator")
    evaluator = parser.get_parsed_content("test#evaluator")
    evaluator.run()
    return trainer, validator, evaluator
