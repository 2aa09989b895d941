"""Progress display and a machine-readable history of a pretraining run.

- `training_scalars` / `validation_scalars`: output transforms for MONAI's StatsHandler and TensorBoardStatsHandler
  (every loss term, retrieval accuracy, learning rate, logit scale, k-means initialised flag, centroid usage).
- `ProgressBarHandler`: Ignite's tqdm progress bar with the running loss, attachable from a MONAI handler list.
- `TrainingHistoryWriter`: appends one JSON line per logged training iteration and per validation to
  `history.jsonl`, which `plot_pretrain_curves` turns into the loss-curve PNG (no TensorBoard parsing needed).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

from monai.utils import min_version, optional_import

from bundle.engines import distributed as dist_utils
from bundle.engines.trainer import MODEL_SCALAR_KEYS
from bundle.losses.diagnostics import DIAGNOSTIC_KEYS

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

logger = logging.getLogger(__name__)

TRAINING_LOG_KEYS = MODEL_SCALAR_KEYS + ("lr", "stage") + DIAGNOSTIC_KEYS


def training_scalars(output) -> dict | None:
    """The scalars of a trainer iteration output to log; None for a skipped batch (the handlers then write nothing)."""
    if not isinstance(output, dict) or output.get("skipped"):
        return None
    return {k: output[k] for k in TRAINING_LOG_KEYS if k in output}


def loss_only(output) -> dict | None:
    if not isinstance(output, dict) or output.get("skipped"):
        return None
    return {"loss": output["loss"]}


class ProgressBarHandler:
    """Ignite ProgressBar showing the running loss; `attach(engine)` like any MONAI handler. Rank 0 only."""

    def __init__(self, persist: bool = True, desc: str = "pretrain") -> None:
        self.persist = persist
        self.desc = desc

    def attach(self, engine) -> None:
        if not dist_utils.is_main_process():
            return
        from ignite.handlers import ProgressBar

        ProgressBar(persist=self.persist, desc=self.desc).attach(engine, output_transform=loss_only)


def _finite_or_none(value):
    value = float(value)
    return value if math.isfinite(value) else None


class TrainingHistoryWriter:
    """JSON-lines history of training iterations (every `every` iterations) and validations. Rank 0 writes.

    Lines: {"kind": "train", "iteration", "epoch", "time", <scalars>} and
    {"kind": "val", "iteration", "epoch", "stage", "time", <metrics>}. A resumed run appends; readers keep the last
    record of each (kind, iteration).
    """

    def __init__(self, path: str, every: int = 1, evaluator=None) -> None:
        self.path = path
        self.every = max(1, int(every))
        self.evaluator = evaluator
        self._start = time.time()

    def attach(self, engine) -> None:
        if not dist_utils.is_main_process():
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self.write_training)
        if self.evaluator is not None:
            trainer = engine
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda ev: self.write_validation(trainer, ev))

    def started(self, engine) -> None:
        # a fresh run starts a fresh history; a resumed one (iteration restored by the loader) appends
        if engine.state.iteration == 0:
            open(self.path, "w", encoding="utf-8").close()

    def _append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def write_training(self, engine) -> None:
        scalars = training_scalars(engine.state.output)
        if scalars is None:
            return
        record = {
            "kind": "train",
            "iteration": engine.state.iteration,
            "epoch": engine.state.epoch,
            "time": round(time.time() - self._start, 3),
        }
        record.update({k: _finite_or_none(v) for k, v in scalars.items()})
        self._append(record)

    def write_validation(self, trainer, evaluator) -> None:
        record = {
            "kind": "val",
            "iteration": trainer.state.iteration,
            "epoch": trainer.state.epoch,
            "stage": int(getattr(trainer.state, "stage", 1)),
            "time": round(time.time() - self._start, 3),
        }
        record.update(
            {k: _finite_or_none(v) for k, v in evaluator.state.metrics.items() if isinstance(v, (int, float))}
        )
        self._append(record)


def read_history(path: str) -> tuple[list[dict], list[dict]]:
    """(training records, validation records) of a history file, the last record per iteration, sorted."""
    train, val = {}, {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            record = json.loads(line)
            (train if record.get("kind") == "train" else val)[record["iteration"]] = record
    return [train[k] for k in sorted(train)], [val[k] for k in sorted(val)]
