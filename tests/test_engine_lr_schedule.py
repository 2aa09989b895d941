"""The per-stage warm-up + cosine schedule against MONAI's WarmupCosineSchedule as an independent reference."""

from __future__ import annotations

import pytest
import torch
from monai.optimizers import WarmupCosineSchedule

from bundle.engines.lr_schedule import StagedWarmupCosineLR


def _monai_reference(base_lr, start_lr, warmup_steps, total_steps):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base_lr)
    sched = WarmupCosineSchedule(
        opt, warmup_steps=warmup_steps, t_total=total_steps, warmup_multiplier=start_lr / base_lr
    )
    lrs = []
    for _ in range(total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def _staged(steps_per_epoch, stage_epochs, base_lrs, warmup_epochs, start_lr):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=base_lrs[0])
    sched = StagedWarmupCosineLR(opt, steps_per_epoch, stage_epochs, base_lrs, warmup_epochs, start_lr)
    lrs = []
    for _ in range(sum(stage_epochs) * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs, sched


def test_each_stage_restarts_warmup_and_cosine_like_monai():
    steps, epochs, base = 7, (3, 4), (1e-3, 5e-4)
    lrs, sched = _staged(steps, epochs, base, warmup_epochs=1, start_lr=1e-7)
    ref1 = _monai_reference(base[0], 1e-7, steps, epochs[0] * steps)
    ref2 = _monai_reference(base[1], 1e-7, steps, epochs[1] * steps)
    assert lrs == pytest.approx(ref1 + ref2, rel=1e-9, abs=1e-15)
    # the very first step of each stage is the warm-up start, the last ones approach 0
    assert lrs[0] == pytest.approx(1e-7) and lrs[epochs[0] * steps] == pytest.approx(1e-7)
    assert sched.stage_at(epochs[0] * steps - 1) == 1 and sched.stage_at(epochs[0] * steps) == 2


def test_state_dict_resumes_the_same_sequence():
    steps, epochs = 5, (2, 2)
    full, _ = _staged(steps, epochs, (1e-3, 1e-3), 1, 1e-6)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=1e-3)
    sched = StagedWarmupCosineLR(opt, steps, epochs, (1e-3, 1e-3), 1, 1e-6)
    for _ in range(8):
        opt.step()
        sched.step()
    saved = sched.state_dict()
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched2 = StagedWarmupCosineLR(opt2, steps, epochs, (1e-3, 1e-3), 1, 1e-6)
    sched2.load_state_dict(saved)
    rest = []
    for _ in range(8, 20):
        # LRScheduler.load_state_dict does not touch the optimiser; the next step sets the rate
        rest.append(sched2.lr_at(sched2.last_epoch))
        opt2.step()
        sched2.step()
    assert rest == pytest.approx(full[8:], rel=1e-12)


def test_zero_length_first_stage_starts_in_stage_two():
    lrs, sched = _staged(4, (0, 2), (1e-3, 2e-3), 1, 1e-7)
    assert sched.stage_at(0) == 2
    assert max(lrs) == pytest.approx(2e-3)  # the peak of the only stage that runs


def test_rejects_mismatched_stage_lists():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(ValueError, match="one base lr per stage"):
        StagedWarmupCosineLR(opt, 3, (1, 1), (1e-3,))
