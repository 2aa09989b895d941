#!/usr/bin/env python
"""Does the test suite catch deliberate bugs? Applies each mutation of MUTATIONS, one at a time, to a throwaway clone
of the repository's HEAD and runs the test files named for it; a mutation is caught when they fail.

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python scripts/mutation_check.py [--only ID ...] [--out docs/results]

Not part of `make test` (each mutation reruns test files: minutes). Each mutation replaces one exact snippet that
must occur exactly once in its file, so a refactor that moves the code makes the check fail loudly instead of
testing nothing. Writes <out>/mutation_check.md with one row per mutation (caught / SURVIVED, seconds, the first
failing test). The clone uses this checkout's .venv (symlinked), never the working tree: uncommitted edits are not
mutated.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    id: str
    why: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "export-live-weights",
        "the export handler writes the live weights instead of the final stage's best checkpoint",
        "bundle/engines/checkpointing.py",
        "        if self.source_checkpoint and os.path.isfile(self.source_checkpoint):\n            state = load_model",
        "        if False:\n            state = load_model",
        ("tests/test_engine_stage_and_checkpoints.py",),
    ),
    Mutation(
        "stage2-no-broadcast",
        "stage 2 starts from stage1_best.pt on rank 0 only (no broadcast of the loaded weights)",
        "bundle/engines/stage_schedule.py",
        "                dist_utils.broadcast_module_state(model)  # the file is read on rank 0 only",
        "                pass",
        ("tests/test_stage_switch_distributed.py",),
    ),
    Mutation(
        "evaluate-pretrain-no-loader",
        "configs/evaluate_pretrain.yaml evaluates the untrained network (its checkpoint loader removed)",
        "configs/evaluate_pretrain.yaml",
        "- _target_: CheckpointLoader\n  load_path: '@eval_checkpoint'\n  load_dict: {model: '@network'}\n"
        "  map_location: cpu\n",
        "",
        ("tests/test_pretrain_configs.py", "tests/test_pretrain_resume.py"),
    ),
    Mutation(
        "kmeans-gate-not-reduced",
        "the k-means start-gate value is not reduced across ranks",
        "bundle/losses/cluster_report_loss.py",
        "            all_reduce_sum_(total)\n",
        "            pass\n",
        ("tests/test_losses_distributed.py", "tests/test_losses_cluster.py"),
    ),
    Mutation(
        "fraction-nesting-floor",
        "label-fraction nesting without its floor (a larger fraction may drop items of a smaller one)",
        "bundle/data/label_fractions.py",
        "    counts = {s: max(floor[s], math.floor(fraction * n)) for s, n in stratum_sizes.items()}",
        "    counts = {s: math.floor(fraction * n) for s, n in stratum_sizes.items()}",
        ("tests/test_label_fractions.py",),
    ),
    Mutation(
        "probe-trains-on-all-labels",
        "the linear-probe grid trains every fraction on 100 % of the labels",
        "scripts/evaluate_transfer.py",
        '            train = subset(split_features["training"], fractions[fraction_key(fraction)])',
        '            train = split_features["training"]',
        ("tests/test_classification_transfer.py",),
    ),
    Mutation(
        "loss-weights-permuted",
        "the report and image loss weights swapped in the total",
        "bundle/networks/cmcgns.py",
        'total = w["img"] * loss_img + w["report"] * report["loss"]',
        'total = w["report"] * loss_img + w["img"] * report["loss"]',
        ("tests/test_model_cmcgns.py", "tests/test_losses_anti_collapse_switches.py"),
    ),
    Mutation(
        "nan-step-before-check",
        "the optimiser steps before the finite-loss check (a NaN batch changes the weights)",
        "bundle/engines/trainer.py",
        "        if self.check_finite:\n            self._stop_if_not_finite(logged, batch)\n"
        "        if step_after:\n            self._optimizer_step()\n",
        "        if step_after:\n            self._optimizer_step()\n"
        "        if self.check_finite:\n            self._stop_if_not_finite(logged, batch)\n",
        ("tests/test_engine_trainer.py",),
    ),
    Mutation(
        "sentence-slot-off-by-one",
        "sentence tokens pooled into the next packed slot",
        "bundle/networks/sentence_features.py",
        "    packed = present.long().cumsum(dim=1) - 1",
        "    packed = present.long().cumsum(dim=1) % present.shape[1]",
        ("tests/test_losses_batched_components.py",),
    ),
    Mutation(
        "kmeans-flag-not-reset-on-load",
        "the host-cached k-means flag survives loading an uninitialised state dict",
        "bundle/losses/cluster_state.py",
        "        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)\n"
        "        self._initialized_on_host = False",
        "        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)",
        ("tests/test_engine_performance.py",),
    ),
    # whole-workflow checks on two gloo ranks (tests/test_pretrain_workflow_two_ranks.py: 2 + 2 epochs, a scripted
    # validation loss whose best epochs are 1 and 3, validation probes)
    Mutation(
        "stage2-best-path-config",
        "pretrain.yaml's stage switch looks for stage2_best.pt (absent then: stage 2 starts from the last weights)",
        "configs/pretrain.yaml",
        "    best_checkpoint: $@validate#best_stage1.path\n",
        "    best_checkpoint: $@validate#best_stage2.path\n",
        ("tests/test_pretrain_workflow_two_ranks.py",),
    ),
    Mutation(
        "export-from-last-pt-config",
        "pretrain.yaml exports from last.pt (the live weights) instead of the final stage's best checkpoint",
        "configs/pretrain.yaml",
        "    source_checkpoint: \"$@ckpt_dir + ('/stage2_best.pt' if @stage2_epochs > 0 else '/stage1_best.pt')\"\n",
        "    source_checkpoint: $@ckpt_dir + '/last.pt'\n",
        ("tests/test_pretrain_workflow_two_ranks.py",),
    ),
    Mutation(
        "stage-best-saver-not-gated",
        "each stage's best-checkpoint saver also takes the other stage's validations",
        "bundle/engines/checkpointing.py",
        "        if current_stage(self.stage_source) == self.stage:\n            super().metrics_completed(engine)",
        "        if True:\n            super().metrics_completed(engine)",
        ("tests/test_pretrain_workflow_two_ranks.py",),
    ),
    Mutation(
        "validation-in-train-mode",
        "the evaluator runs the network in training mode",
        "bundle/engines/evaluator.py",
        '        mode: str = "eval",',
        '        mode: str = "train",',
        ("tests/test_pretrain_workflow_two_ranks.py",),
    ),
    Mutation(
        "validation-updates-centroids",
        "validation batches move the k-means centroids (the momentum update outside training)",
        "bundle/losses/cluster_report_loss.py",
        "            counts = state.update(z2) if self.training else state.member_counts(z2)",
        "            counts = state.update(z2)",
        ("tests/test_pretrain_workflow_two_ranks.py",),
    ),
    Mutation(
        "validation-advances-kmeans-step",
        "validation batches advance the k-means step counter (the start step comes early)",
        "bundle/losses/cluster_report_loss.py",
        "        if self.training:\n            state.step += 1\n",
        "        state.step += 1\n",
        ("tests/test_pretrain_workflow_two_ranks.py",),
    ),
    Mutation(
        "kmeans-start-step-ignored",
        "the k-means start gate ignores kmeans_start_step (only the cosine decides)",
        "bundle/losses/cluster_report_loss.py",
        "gate_open = int(state.step) >= self.start_step and self._gate_value(c) <= self.start_cosine",
        "gate_open = self._gate_value(c) <= self.start_cosine",
        ("tests/test_pretrain_workflow_two_ranks.py",),
    ),
    Mutation(
        "broadcast-keeps-host-caches",
        "ranks that receive the stage-1 best weights keep their host-cached k-means flag (the hang at stage 2)",
        "bundle/engines/distributed.py",
        "    if get_rank() != src:\n        module.load_state_dict(state)\n",
        "",
        ("tests/test_stage_switch_distributed.py",),
    ),
)


def apply(clone: Path, m: Mutation) -> None:
    path = clone / m.file
    text = path.read_text(encoding="utf-8")
    if text.count(m.find) != 1:
        raise SystemExit(f"{m.id}: the snippet occurs {text.count(m.find)} times in {m.file} (expected once)")
    path.write_text(text.replace(m.find, m.replace), encoding="utf-8")


def run_one(m: Mutation, python: str) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"mutation_{m.id}_") as tmp:
        clone = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "--quiet", "--depth", "1", f"file://{ROOT}", str(clone)], check=True)
        apply(clone, m)
        env = dict(os.environ, PYTHONPATH=str(clone), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
        start = time.perf_counter()
        cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests]
        result = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    # ERROR: a fixture failed (the two-rank workflow runs once, in a module fixture, for all its tests)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, flags=re.M)
    return {
        "id": m.id,
        "why": m.why,
        "caught": result.returncode != 0,
        "first_failure": failed[0] if failed else ("(collection error)" if result.returncode not in (0, 1) else ""),
        "seconds": seconds,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=None, help="mutation ids")
    p.add_argument("--out", default=str(ROOT / "docs" / "results"))
    args = p.parse_args(argv)
    if shutil.which("git") is None:
        raise SystemExit("git is needed to clone HEAD")
    chosen = [m for m in MUTATIONS if args.only is None or m.id in args.only]
    python = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").is_dir() else sys.executable
    rows = []
    for i, m in enumerate(chosen, 1):
        rows.append(run_one(m, python))
        r = rows[-1]
        print(f"[{i}/{len(chosen)}] {m.id}: {'caught' if r['caught'] else 'SURVIVED'} ({r['seconds']:.0f} s) "
              f"{r['first_failure']}", flush=True)  # fmt: skip
    lines = [
        "# Mutation check",
        "",
        "Written by `scripts/mutation_check.py`: each deliberate bug applied alone to a clone of HEAD, the named test "
        f"files run with `pytest -x`. {sum(r['caught'] for r in rows)} of {len(rows)} caught.",
        "",
        "| mutation | the bug | result | first failing test | seconds |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        result = "caught" if r["caught"] else "**SURVIVED**"
        lines.append(f"| {r['id']} | {r['why']} | {result} | {r['first_failure']} | {r['seconds']:.0f} |")
    lines += ["", f"Command: `python scripts/mutation_check.py {' '.join(argv or sys.argv[1:])}`", ""]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "mutation_check.md").write_text("\n".join(lines), encoding="utf-8")
    return 0 if all(r["caught"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
