"""Test-only objects put into a real pretraining workflow by an override file (under torchrun they are imported in
each process from this folder, which the test puts on PYTHONPATH). Not a test file.

- `ScriptedBatchMean`: the key validation metric with a fixed offset per epoch, so which epoch is a stage's best is
  known before the run (the offsets dwarf the real loss differences), whatever the model learns.
- `WorkflowProbe`: records on every rank what the run does to the model: its weights at every epoch end (after that
  epoch's validation), its weights at the start of the first stage-2 epoch (after the stage switch, before any
  stage-2 step), which parameters and buffers each validation pass changed (and the k-means state before and after
  it), and the training flags of every module during each validation forward. Written to
  `out_dir/probe_rank<r>.pt` when the trainer completes.
"""

from __future__ import annotations

import os

import torch
from ignite.engine import Events

from bundle.engines import distributed as dist_utils
from bundle.engines.evaluator import BatchMean

KMEANS_KEYS = ("report_loss.state.centroids", "report_loss.state.initialized", "report_loss.state.step")


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class ScriptedBatchMean(BatchMean):
    """BatchMean of `key` plus `offsets[epoch - 1]` (the evaluator's epoch is the trainer's)."""

    def __init__(self, key: str, offsets) -> None:
        self.offsets = [float(o) for o in offsets]
        super().__init__(key)

    def completed(self, engine, name: str) -> None:
        super().completed(engine, name)
        engine.state.metrics[name] = float(engine.state.metrics[name]) + self.offsets[engine.state.epoch - 1]


class WorkflowProbe:
    def __init__(self, network: torch.nn.Module, out_dir: str, stage1_epochs: int) -> None:
        self.network = network
        self.out_dir = out_dir
        self.stage1_epochs = int(stage1_epochs)
        self.epoch_end: dict[int, dict] = {}
        self.stage2_start: dict | None = None
        self.validations: list[dict] = []
        self.validation_forwards: list[dict] = []
        self.training_forwards = 0
        self._validating = False

    @property
    def model(self) -> torch.nn.Module:
        return dist_utils.unwrap_model(self.network)

    def attach(self, trainer, evaluator) -> None:
        # attached after the workflow's own handlers: the stage switch has run at EPOCH_STARTED, validation and the
        # checkpoint savers at EPOCH_COMPLETED
        trainer.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        trainer.add_event_handler(Events.COMPLETED, self._save)
        evaluator.add_event_handler(Events.STARTED, self._validation_started)
        evaluator.add_event_handler(Events.COMPLETED, self._validation_completed)
        self.model.register_forward_pre_hook(self._forward)

    def _forward(self, module, args) -> None:
        if self._validating:
            flags = [m.training for m in module.modules()]
            self.validation_forwards.append({"modules": len(flags), "in_training_mode": sum(flags)})
        else:
            self.training_forwards += 1

    def _epoch_started(self, engine) -> None:
        if engine.state.epoch == self.stage1_epochs + 1:
            self.stage2_start = snapshot(self.model)

    def _epoch_completed(self, engine) -> None:
        self.epoch_end[engine.state.epoch] = snapshot(self.model)

    def _validation_started(self, evaluator) -> None:
        self._validating = True
        self._before = snapshot(self.model)

    def _validation_completed(self, evaluator) -> None:
        self._validating = False
        after = snapshot(self.model)
        self.validations.append(
            {
                "epoch": evaluator.state.epoch,
                "keys": sorted(after),
                # every parameter and buffer that is not bit-identical after the pass
                "changed": sorted(
                    k for k in after if k not in self._before or not torch.equal(after[k], self._before[k])
                ),
                "kmeans_before": {k: self._before[k] for k in KMEANS_KEYS},
                "kmeans_after": {k: after[k] for k in KMEANS_KEYS},
            }
        )

    def _save(self, engine) -> None:
        rank = dist_utils.get_rank()
        record = {
            "epoch_end": self.epoch_end,
            "stage2_start": self.stage2_start,
            "validations": self.validations,
            "validation_forwards": self.validation_forwards,
            "training_forwards": self.training_forwards,
        }
        torch.save(record, os.path.join(self.out_dir, f"probe_rank{rank}.pt"))
