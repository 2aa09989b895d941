"""Per-step learning-rate schedule for the two pretraining stages (method.md 4.6).

Each stage has its own base learning rate, a linear warm-up from `warmup_start_lr` over `warmup_epochs` epochs and a
cosine decay to `end_lr` over the rest of that stage. The learning rate is a pure function of the global iteration, so
one scheduler object serves both stages, and resuming only needs `last_epoch` (the number of completed iterations).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def warmup_cosine_lr(
    step: int, total_steps: int, warmup_steps: int, base_lr: float, warmup_start_lr: float, end_lr: float = 0.0
) -> float:
    """Learning rate at `step` (0-based, steps already taken within the stage) of one warm-up + cosine stage."""
    warmup_steps = min(max(int(warmup_steps), 0), int(total_steps))
    if step < warmup_steps:
        return warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(progress, 1.0)  # past the end of the stage the rate stays at end_lr
    return end_lr + (base_lr - end_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class StagedWarmupCosineLR(LRScheduler):
    """Warm-up + cosine schedule restarted at every stage boundary, stepped once per training iteration.

    Args:
        optimizer: the optimizer whose param groups receive the learning rate.
        steps_per_epoch: training iterations per epoch (the trainer's epoch length).
        stage_epochs: epochs of each stage, e.g. (10, 20). A stage with 0 epochs is skipped.
        base_lrs: peak learning rate of each stage.
        warmup_epochs: warm-up length of each stage in epochs (fractions allowed), a number or one per stage.
        warmup_start_lr: learning rate at the first warm-up step, a number or one per stage.
        end_lr: learning rate reached at the end of each stage's cosine.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        steps_per_epoch: int,
        stage_epochs: Sequence[int],
        base_lrs: Sequence[float],
        warmup_epochs: float | Sequence[float] = 1.0,
        warmup_start_lr: float | Sequence[float] = 1e-7,
        end_lr: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        n = len(stage_epochs)
        if len(base_lrs) != n:
            raise ValueError(f"need one base lr per stage: {n} stages, {len(base_lrs)} base_lrs")
        warm = list(warmup_epochs) if isinstance(warmup_epochs, Sequence) else [warmup_epochs] * n
        start = list(warmup_start_lr) if isinstance(warmup_start_lr, Sequence) else [warmup_start_lr] * n
        # plain numbers only: the table is part of state_dict(), which checkpoints load with weights_only=True
        self.stages: list[dict] = []
        first = 0
        for epochs, lr, w, s in zip(stage_epochs, base_lrs, warm, start):
            total = int(epochs) * int(steps_per_epoch)
            self.stages.append(
                {
                    "first_step": first,
                    "total_steps": total,
                    "warmup_steps": int(round(w * steps_per_epoch)),
                    "base_lr": float(lr),
                    "warmup_start_lr": float(s),
                }
            )
            first += total
        self.end_lr = float(end_lr)
        super().__init__(optimizer, last_epoch)

    def stage_at(self, step: int) -> int:
        """1-based stage that iteration `step` (0-based global count of completed iterations) belongs to."""
        active = [i for i, st in enumerate(self.stages) if st["total_steps"] > 0]
        if not active:
            raise ValueError("every stage has 0 epochs")
        for i in active:
            st = self.stages[i]
            if step < st["first_step"] + st["total_steps"]:
                return i + 1
        return active[-1] + 1

    def lr_at(self, step: int) -> float:
        st = self.stages[self.stage_at(step) - 1]
        return warmup_cosine_lr(
            step - st["first_step"],
            st["total_steps"],
            st["warmup_steps"],
            st["base_lr"],
            st["warmup_start_lr"],
            self.end_lr,
        )

    def get_lr(self) -> list[float]:
        lr = self.lr_at(max(self.last_epoch, 0))
        return [lr for _ in self.optimizer.param_groups]
