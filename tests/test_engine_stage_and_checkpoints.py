"""Two-stage handler, checkpoint files and RNG state, with the stand-in model of test_engine_trainer."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from monai.handlers import ValidationHandler
from test_engine_trainer import StandInModel, make_batch

from bundle.engines.checkpointing import (
    EncoderExportHandler,
    ResumeCheckpointLoader,
    ResumeCheckpointSaver,
    StageBestCheckpointSaver,
    load_model_weights,
)
from bundle.engines.evaluator import BatchMean, CMCGNSEvaluator
from bundle.engines.rng_state import RNGState
from bundle.engines.stage_schedule import StageScheduleHandler, restart_optimizer
from bundle.engines.trainer import CMCGNSTrainer

torch.set_num_threads(1)


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    path = tmp_path / "rng.pt"
    torch.save({"rng": RNGState().state_dict()}, path)
    expected = (torch.rand(3), np.random.rand(3), np.random.standard_normal(), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    RNGState().load_state_dict(torch.load(path, weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), np.random.standard_normal(), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2] and expected[3] == again[3]


def test_restart_optimizer_clears_moments_in_place():
    param = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.Adam([param], lr=1e-3, weight_decay=0.0)
    param.grad = torch.ones(2)
    opt.step()
    assert len(opt.state) == 1
    restart_optimizer(opt, {"weight_decay": 0.5})
    assert len(opt.state) == 0 and opt.param_groups[0]["weight_decay"] == 0.5
    with pytest.raises(KeyError, match="no hyperparameters"):
        restart_optimizer(opt, {"momentum_typo": 1})


def _two_stage_run(tmp_path, stage2_init, epochs=(2, 1), val_losses=None):
    """Trainer + evaluator wired like configs/pretrain.yaml, with a scripted validation loss per epoch."""
    torch.manual_seed(0)
    model = StandInModel()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = [make_batch(["a", "b"], seed=1), make_batch(["c", "d"], seed=2)]
    best1 = StageBestCheckpointSaver(1, model, str(tmp_path), {"model": model})
    best2 = StageBestCheckpointSaver(2, model, str(tmp_path), {"model": model})
    snapshots = {}

    class ScriptedLoss:
        """Replaces the measured val_loss with a scripted one so the best epoch is known in advance."""

        def attach(self, evaluator):
            from ignite.engine import Events

            def rewrite(engine):
                engine.state.metrics["val_loss"] = val_losses[engine.state.epoch - 1]
                snapshots[engine.state.epoch] = {k: v.clone() for k, v in model.state_dict().items()}

            evaluator.add_event_handler(Events.EPOCH_COMPLETED, rewrite)

    evaluator = CMCGNSEvaluator(
        "cpu",
        batches[:1],
        model,
        key_val_metric={"val_loss": BatchMean("loss")},
        val_handlers=[ScriptedLoss(), best1, best2],
    )
    stage = StageScheduleHandler(
        model,
        opt,
        epochs[0],
        epochs[1],
        str(tmp_path),
        best_checkpoint=best1.path,
        stage2_init=stage2_init,
        stage2_optimizer_hyperparameters={"weight_decay": 0.25},
        evaluator=evaluator,
    )
    seen_stages = []

    class StageProbe:
        def attach(self, engine):
            from ignite.engine import Events

            def probe(e):
                seen_stages.append((e.state.epoch, int(model.stage), len(opt.state)))
                snapshots[f"start{e.state.epoch}"] = {k: v.clone() for k, v in model.state_dict().items()}

            engine.add_event_handler(Events.EPOCH_STARTED, probe)

    trainer = CMCGNSTrainer(
        "cpu", sum(epochs), batches, model, opt, train_handlers=[ValidationHandler(1, evaluator), stage, StageProbe()]
    )
    trainer.run()
    return model, opt, snapshots, seen_stages, best1, best2


@pytest.mark.parametrize("stage2_init", ["best", "last"])
def test_stage_switch_loads_best_or_last_stage1_weights_and_restarts_the_optimizer(tmp_path, stage2_init):
    # stage-1 validation losses: epoch 1 is the best; stage 2 has a single epoch
    model, opt, snaps, seen, best1, best2 = _two_stage_run(tmp_path, stage2_init, val_losses=[0.5, 0.9, 0.7])
    assert [s[:2] for s in seen] == [(1, 1), (2, 1), (3, 2)]
    assert seen[2][2] == 0  # Adam moments dropped at the switch, before the first stage-2 step
    assert opt.param_groups[0]["weight_decay"] == 0.25
    assert best1.best_value() == pytest.approx(0.5) and best2.best_value() == pytest.approx(0.7)
    # best-per-stage files: stage 1 holds epoch 1 weights, stage 2 the (only) stage-2 epoch
    assert all(torch.equal(snaps[1][k], v) for k, v in load_model_weights(best1.path).items())
    assert all(torch.equal(snaps[3][k], v) for k, v in load_model_weights(best2.path).items())
    # the stage-1 end weights are kept whatever stage 2 starts from
    end1 = load_model_weights(os.path.join(tmp_path, "stage1_last.pt"))
    assert all(torch.equal(snaps[2][k], v) for k, v in end1.items())
    # stage 2 starts from epoch 1's weights (best) or epoch 2's (last), only the stage buffer differs
    start = snaps["start3"]
    chosen = snaps[1] if stage2_init == "best" else snaps[2]
    assert all(torch.equal(start[k], v) for k, v in chosen.items() if k != "stage")
    assert int(start["stage"]) == 2


def test_resume_saver_and_loader_restore_trainer_counters_and_stage(tmp_path):
    torch.manual_seed(0)
    model = StandInModel()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = [make_batch(["a", "b"], seed=1), make_batch(["c", "d"], seed=2), make_batch(["e", "f"], seed=3)]
    objects = {"model": model, "optimizer": opt, "rng": RNGState()}
    saver = ResumeCheckpointSaver(str(tmp_path), objects, every_n_iterations=1)
    stage = StageScheduleHandler(model, opt, 1, 1, str(tmp_path), stage2_init="last")
    trainer = CMCGNSTrainer("cpu", 2, batches, model, opt, train_handlers=[stage, saver])
    trainer.run()
    saved = torch.load(saver.path, weights_only=True)
    assert saved["trainer"]["iteration"] == 6 and int(saved["model"]["stage"]) == 2
    # a fresh set of objects resumes in stage 2 at iteration 6
    model2 = StandInModel()
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    stage2 = StageScheduleHandler(model2, opt2, 1, 1, str(tmp_path), stage2_init="last")
    loader = ResumeCheckpointLoader(saver.path, {"model": model2, "optimizer": opt2, "rng": RNGState()})
    trainer2 = CMCGNSTrainer("cpu", 2, batches, model2, opt2, train_handlers=[loader, stage2])
    trainer2.run()  # already complete: loads and stops
    assert trainer2.state.iteration == 6 and stage2.stage == 2
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))


def test_export_writes_plain_state_dicts_of_model_and_image_encoder(tmp_path):
    model = StandInModel()
    EncoderExportHandler(model, str(tmp_path), source_checkpoint=str(tmp_path / "missing.pt"))()
    encoder = torch.load(tmp_path / "image_encoder.pt", weights_only=True)
    whole = torch.load(tmp_path / "model.pt", weights_only=True)
    fresh = StandInModel()
    fresh.image_encoder.load_state_dict(encoder)  # strict
    assert torch.equal(fresh.image_encoder.weight, model.image_encoder.weight)
    assert set(whole) == set(model.state_dict())


def test_export_writes_a_torchscript_image_encoder_equal_to_the_state_dict(tmp_path):
    from bundle.networks.image_encoders import build_image_encoder

    class Pretraining(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.image_encoder = build_image_encoder("resnet18", 1, 64)
            self.head = torch.nn.Linear(4, 4)

    torch.manual_seed(0)
    model = Pretraining()
    best = {k: v + 0.01 for k, v in model.state_dict().items()}  # the best checkpoint differs from the live weights
    torch.save(best, tmp_path / "best.pt")
    paths = EncoderExportHandler(model, str(tmp_path), source_checkpoint=str(tmp_path / "best.pt"))()
    scripted = torch.jit.load(paths["torchscript"])
    eager = build_image_encoder("resnet18", 1, 64).eval()
    eager.load_state_dict(torch.load(tmp_path / "image_encoder.pt", weights_only=True))
    image = torch.rand(3, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        for ours, theirs in zip(eager(image), scripted.eval()(image)):
            torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
    assert torch.equal(eager.backbone.conv1.weight, best["image_encoder.backbone.conv1.weight"])
    assert not list(tmp_path.glob("*.tmp.*"))
