"""The two-stage pretraining schedule of method.md 4.6 as an Ignite handler.

Stage 1 runs `stage1_epochs` epochs without the reconstruction loss, stage 2 `stage2_epochs` epochs with it. At the
start of the first stage-2 epoch (after the last stage-1 validation and checkpoints have run) the handler
1. saves the stage-1 end weights (`stage1_last.pt`),
2. loads the best stage-1 weights (`stage2_init: best`, fixed) or keeps the last ones (`last`, official),
3. switches the model to stage 2,
4. gives the optimiser a fresh start (state cleared, stage-2 hyperparameters); the learning rate follows the
   per-stage warm-up + cosine of StagedWarmupCosineLR,
5. resets the evaluator's best-metric tracking (stage 2's best is chosen by stage-2 validation loss only; its
   checkpoint is a separate StageBestCheckpointSaver).
The current stage is a buffer of the model, so a resumed run continues in the stage its checkpoint was in.
"""

from __future__ import annotations

import logging
import os

import torch
from monai.utils import min_version, optional_import

from bundle.engines import distributed as dist_utils
from bundle.engines.checkpointing import atomic_torch_save, load_model_weights

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

logger = logging.getLogger(__name__)

STAGE2_INIT_CHOICES = ("best", "last")


def restart_optimizer(optimizer: torch.optim.Optimizer, hyperparameters: dict | None = None) -> None:
    """Fresh optimiser state in place (moments and step counts dropped), with new hyperparameters if given.

    In place, so every object holding this optimiser (scheduler, checkpoint dicts) stays valid.
    """
    hyperparameters = dict(hyperparameters or {})
    optimizer.state.clear()
    for group in optimizer.param_groups:
        unknown = set(hyperparameters) - set(group)
        if unknown:
            raise KeyError(f"{type(optimizer).__name__} has no hyperparameters {sorted(unknown)}")
        group.update(hyperparameters)
    optimizer.defaults.update(hyperparameters)


class StageScheduleHandler:
    """Switches a CM-CGNS model from stage 1 to stage 2 at the configured epoch (see the module docstring).

    Args:
        network: the model (possibly DDP-wrapped); must have set_stage(1 | 2).
        optimizer: the optimiser, restarted in place at the switch.
        stage1_epochs, stage2_epochs: stage lengths; the trainer's max_epochs must be their sum.
        save_dir: where `stage1_last.pt` goes.
        best_checkpoint: the stage-1 best checkpoint file (written by the stage-1 StageBestCheckpointSaver).
        stage2_init: "best" (fixed, default) or "last" (official behaviour).
        stage2_optimizer_hyperparameters: optimiser hyperparameters for stage 2 (e.g. weight_decay); the learning
            rate comes from the scheduler.
        evaluator: its best_metric / best_metric_epoch are reset at the switch.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        stage1_epochs: int,
        stage2_epochs: int,
        save_dir: str,
        best_checkpoint: str | None = None,
        stage2_init: str = "best",
        stage2_optimizer_hyperparameters: dict | None = None,
        evaluator=None,
        stage1_last_filename: str = "stage1_last.pt",
    ) -> None:
        if stage2_init not in STAGE2_INIT_CHOICES:
            raise ValueError(f"stage2_init must be one of {STAGE2_INIT_CHOICES}, got {stage2_init!r}")
        if stage1_epochs < 0 or stage2_epochs < 0 or stage1_epochs + stage2_epochs == 0:
            raise ValueError(f"invalid stage lengths {stage1_epochs} + {stage2_epochs}")
        self.network = network
        self.optimizer = optimizer
        self.stage1_epochs = int(stage1_epochs)
        self.stage2_epochs = int(stage2_epochs)
        self.save_dir = save_dir
        self.best_checkpoint = best_checkpoint
        self.stage2_init = stage2_init
        self.stage2_hparams = dict(stage2_optimizer_hyperparameters or {})
        self.stage2_hparams.pop("lr", None)  # the scheduler owns the learning rate
        self.evaluator = evaluator
        self.stage1_last_path = os.path.join(save_dir, stage1_last_filename)
        self.stage = 1 if self.stage1_epochs > 0 else 2

    @property
    def model(self) -> torch.nn.Module:
        return dist_utils.unwrap_model(self.network)

    def attach(self, engine) -> None:
        total = self.stage1_epochs + self.stage2_epochs
        if engine.state.max_epochs != total:
            raise ValueError(
                f"trainer max_epochs ({engine.state.max_epochs}) must equal stage1_epochs + "
                f"stage2_epochs ({self.stage1_epochs} + {self.stage2_epochs})"
            )
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)

    def state_dict(self) -> dict:
        return {"stage": int(self.stage)}

    def load_state_dict(self, state: dict) -> None:
        self.stage = int(state["stage"])
        self.model.set_stage(self.stage)

    def started(self, engine) -> None:
        if engine.state.iteration > 0:
            # resumed: the model's stage buffer came back with the checkpoint and is the truth
            self.stage = int(self.model.stage)
        else:
            self.model.set_stage(self.stage)
        engine.state.stage = self.stage
        logger.info(
            "pretraining stage %d (stage 1: %d epochs, stage 2: %d epochs)",
            self.stage,
            self.stage1_epochs,
            self.stage2_epochs,
        )

    def epoch_started(self, engine) -> None:
        if self.stage == 1 and engine.state.epoch > self.stage1_epochs:
            self.switch_to_stage2(engine)
        engine.state.stage = self.stage

    def switch_to_stage2(self, engine=None) -> None:
        model = self.model
        if dist_utils.is_main_process():
            atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, self.stage1_last_path)
            logger.info("stage 1 finished: end weights saved to %s", self.stage1_last_path)
        source = "the last stage-1 weights"
        if self.stage2_init == "best":
            # rank 0 reads the file, so rank 0 decides: ranks that looked on their own could disagree (a node-local
            # ckpt_dir) and the ones that saw it would wait in the broadcast below for ever
            found = bool(self.best_checkpoint) and os.path.isfile(self.best_checkpoint)
            if dist_utils.broadcast_object(found if dist_utils.is_main_process() else None):
                if dist_utils.is_main_process():
                    model.load_state_dict(load_model_weights(self.best_checkpoint))
                dist_utils.broadcast_module_state(model)  # the file is read on rank 0 only
                source = f"the best stage-1 checkpoint {self.best_checkpoint}"
            else:
                logger.warning(
                    "stage2_init is 'best' but %s does not exist%s (no stage-1 validation ran?): "
                    "stage 2 starts from the last stage-1 weights",
                    self.best_checkpoint,
                    " on rank 0" if dist_utils.is_distributed() else "",
                )
        model.set_stage(2)
        restart_optimizer(self.optimizer, self.stage2_hparams)
        if self.evaluator is not None:
            self.evaluator.state.best_metric = -1
            self.evaluator.state.best_metric_epoch = -1
        self.stage = 2
        if engine is not None:
            engine.state.stage = 2
        logger.info("stage 2 starts from %s with a fresh optimiser", source)
