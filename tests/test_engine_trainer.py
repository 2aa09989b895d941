"""CMCGNSTrainer / CMCGNSEvaluator mechanics with a tiny stand-in that follows the CMCGNS forward contract.

The stand-in exists only in this test file: its loss is a per-sample mean, so gradient accumulation, clipping and row
dropping have closed-form expectations. The real model is exercised by tests/test_pretrain_*.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from torch import nn

from bundle.engines.batch import drop_empty_reports, to_model_inputs
from bundle.engines.evaluator import CMCGNSEvaluator, pretrain_validation_metrics
from bundle.engines.trainer import CMCGNSTrainer, NonFiniteLossError

torch.set_num_threads(1)
L = 6  # tokens per report


class StandInModel(nn.Module):
    """The CMCGNS contract: forward(image, input_ids, attention_mask, token_type_ids, sentence_index) -> dict."""

    def __init__(self):
        super().__init__()
        self.image_encoder = nn.Linear(4, 3)
        self.text = nn.Embedding(20, 3)
        self.decoder = nn.Linear(3, 3)
        self.register_buffer("stage", torch.tensor(1))
        self.batch_sizes = []

    def set_stage(self, stage):
        self.stage.fill_(int(stage))

    def forward(self, image, input_ids, attention_mask, token_type_ids=None, sentence_index=None):
        self.batch_sizes.append(int(image.shape[0]))
        img = self.image_encoder(F.adaptive_avg_pool2d(image, 2).flatten(1))
        mask = attention_mask.unsqueeze(-1).float()
        txt = (self.text(input_ids) * mask).sum(1) / mask.sum(1)
        per_sample = ((img - txt) ** 2).sum(1)
        loss_global = per_sample.mean()
        recon = self.decoder(img).pow(2).mean() if int(self.stage) == 2 else img.new_zeros(())
        zero = img.new_zeros(())
        return {
            "loss": loss_global + recon,
            "loss_img": zero,
            "loss_report": zero,
            "loss_global": loss_global,
            "loss_recon": recon,
            "acc_i2t_top1": zero + 0.5,
            "logit_scale": zero + 10.0,
        }


def make_batch(ids, num_sentences=None, image_fill=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = len(ids)
    image = torch.rand(b, 1, 8, 8, generator=g) * 2 - 1
    if image_fill is not None:
        for row, value in image_fill.items():
            image[row] = value
    num_sentences = torch.tensor(num_sentences if num_sentences is not None else [1] * b)
    sentence_index = torch.full((b, L), -1)
    sentence_index[:, 1:3] = 1
    return {
        "image": image,
        "input_ids": torch.randint(1, 20, (b, L), generator=g),
        "attention_mask": torch.ones(b, L, dtype=torch.long),
        "token_type_ids": torch.zeros(b, L, dtype=torch.long),
        "sentence_index": sentence_index,
        "num_sentences": num_sentences,
        "id": list(ids),
        "report": [f"report {i}" for i in ids],
    }


def make_trainer(model, batches, lr=0.1, optimizer_cls=torch.optim.SGD, **kwargs):
    optimizer = optimizer_cls(model.parameters(), lr=lr)
    return CMCGNSTrainer(
        device="cpu",
        max_epochs=kwargs.pop("max_epochs", 1),
        train_data_loader=batches,
        network=model,
        optimizer=optimizer,
        **kwargs,
    )


def test_drop_empty_reports_keeps_rows_aligned():
    batch = make_batch(["a", "b", "c"], num_sentences=[2, 0, 1])
    kept, dropped = drop_empty_reports(batch)
    assert dropped == ["b"]
    assert kept["id"] == ["a", "c"] and kept["report"] == ["report a", "report c"]
    assert torch.equal(kept["image"], batch["image"][[0, 2]])
    assert torch.equal(kept["input_ids"], batch["input_ids"][[0, 2]])
    none, all_ids = drop_empty_reports(make_batch(["x", "y"], num_sentences=[0, 0]))
    assert none is None and all_ids == ["x", "y"]
    inputs = to_model_inputs(kept, "cpu")
    assert set(inputs) == {"image", "input_ids", "attention_mask", "token_type_ids", "sentence_index"}
    assert inputs["image"].dtype == torch.float32 and inputs["input_ids"].dtype == torch.long


def test_empty_rows_are_dropped_and_an_empty_batch_is_skipped_and_counted():
    model = StandInModel()
    before = copy.deepcopy(model.state_dict())
    batches = [make_batch(["e1", "e2"], num_sentences=[0, 0]), make_batch(["a", "b", "c"], [3, 0, 1], seed=1)]
    trainer = make_trainer(model, batches[:1])
    trainer.run()
    assert trainer.state.skipped_batches == 1 and trainer.state.dropped_rows == 2
    assert model.batch_sizes == []  # the model never saw the empty batch
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no optimiser step
    trainer = make_trainer(model, batches[1:])
    trainer.run()
    assert model.batch_sizes == [2] and trainer.state.dropped_rows == 1 and trainer.state.skipped_batches == 0
    assert trainer.state.output["id"] == ["a", "c"]


def test_non_finite_loss_stops_with_iteration_terms_and_batch_ids():
    model = StandInModel()
    batches = [make_batch(["ok1", "ok2"]), make_batch(["p7", "p8"], image_fill={1: float("nan")}, seed=3)]
    trainer = make_trainer(model, batches)
    after_step = {}
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda _: after_step.update(copy.deepcopy(model.state_dict()))
    )
    with pytest.raises(NonFiniteLossError) as info:
        trainer.run()
    message = str(info.value)
    assert "iteration 2" in message and "['p7', 'p8']" in message
    assert "loss_global=nan" in message and "loss_recon=0" in message
    # the check runs before the optimiser step: the weights are those after iteration 1, not NaN-stepped ones
    assert after_step and all(torch.equal(after_step[k], v) for k, v in model.state_dict().items())


def test_gradient_accumulation_equals_one_step_on_the_union_batch():
    # loss is a per-sample mean, so two accumulated half batches of 2 give the gradient of one batch of 4
    full = make_batch(["a", "b", "c", "d"], seed=5)
    halves = [
        {k: (v[:2] if k != "num_sentences" else v[:2]) for k, v in full.items()},
        {k: v[2:] for k, v in full.items()},
    ]
    torch.manual_seed(0)
    model_acc = StandInModel()
    model_one = copy.deepcopy(model_acc)
    make_trainer(model_acc, halves, accumulation_steps=2).run()
    make_trainer(model_one, [full]).run()
    for (name, p_acc), p_one in zip(model_acc.named_parameters(), model_one.parameters()):
        assert torch.allclose(p_acc, p_one, atol=1e-6), name


def test_gradient_clipping_bounds_the_update():
    torch.manual_seed(0)
    model = StandInModel()
    before = [p.detach().clone() for p in model.parameters()]
    make_trainer(model, [make_batch(["a", "b"], seed=2)], lr=1.0, max_grad_norm=0.01).run()
    # plain SGD with lr 1: the update is minus the clipped gradient, whose global norm is 0.01
    delta = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert delta.item() == pytest.approx(0.01, rel=1e-3)


def test_iteration_output_has_loss_terms_learning_rate_and_stage():
    model = StandInModel()
    trainer = make_trainer(model, [make_batch(["a", "b"])], lr=0.05)
    trainer.run()
    out = trainer.state.output
    assert out["lr"] == pytest.approx(0.05) and out["stage"] == 1 and out["batch_size"] == 2
    assert {"loss", "loss_global", "loss_recon", "logit_scale", "acc_i2t_top1"} <= set(out)
    assert isinstance(out["loss"], float)


def test_evaluator_averages_over_batches_and_reports_chance():
    model = StandInModel()
    batches = [make_batch(["a", "b"]), make_batch(["c", "d", "e", "f"], seed=1), make_batch(["z"], [0])]
    metrics = pretrain_validation_metrics()
    key = {"val_loss": metrics.pop("val_loss")}
    evaluator = CMCGNSEvaluator(
        device="cpu", val_data_loader=batches, network=model, key_val_metric=key, additional_metrics=metrics
    )
    evaluator.run()
    # independent reference: the same forward per batch, without the engine
    model.eval()
    with torch.no_grad():
        losses = [model(**to_model_inputs(b, "cpu"))["loss"].item() for b in batches[:2]]
    assert evaluator.state.metrics["val_loss"] == pytest.approx(sum(losses) / 2, rel=1e-6)
    assert evaluator.state.metrics["val_chance_top1"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert evaluator.state.metrics["val_chance_top5"] == pytest.approx(1.0)
    assert evaluator.state.metrics["val_i2t_top1"] == pytest.approx(0.5)
    assert evaluator.state.dropped_rows == 1
    # lower validation loss is better
    assert evaluator.metric_cmp_fn(0.1, 0.2) and not evaluator.metric_cmp_fn(0.3, 0.2)


def test_amp_dtype_names_and_no_scaler_without_cuda():
    from bundle.engines.trainer import resolve_amp_dtype

    assert resolve_amp_dtype("bf16") == torch.bfloat16 and resolve_amp_dtype("float16") == torch.float16
    with pytest.raises(ValueError, match="amp_dtype"):
        resolve_amp_dtype("int8")
    trainer = make_trainer(StandInModel(), [make_batch(["a", "b"])], amp=True, amp_dtype="float16")
    trainer.run()  # on a CPU device autocast and the GradScaler stay off
    assert trainer.scaler is None and np_isfinite(trainer.state.output["loss"])


def np_isfinite(value) -> bool:
    return value == value and abs(value) != float("inf")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision runs on CUDA only")
@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_mixed_precision_on_cuda_trains(amp_dtype):
    model = StandInModel().cuda()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    trainer = CMCGNSTrainer(
        device="cuda",
        max_epochs=1,
        train_data_loader=[make_batch(["a", "b"]), make_batch(["c", "d"], seed=1)],
        network=model,
        optimizer=optimizer,
        amp=True,
        amp_dtype=amp_dtype,
        max_grad_norm=1.0,
    )
    trainer.run()
    assert (trainer.scaler is not None) == (amp_dtype == "float16")
    assert np_isfinite(trainer.state.output["loss"])
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_logging_handlers_accept_a_skipped_batch(tmp_path):
    from monai.handlers import StatsHandler, TensorBoardStatsHandler

    from bundle.engines.progress import ProgressBarHandler, TrainingHistoryWriter, read_history, training_scalars

    batches = [make_batch(["a", "b"]), make_batch(["e1", "e2"], num_sentences=[0, 0]), make_batch(["c", "d"], seed=1)]
    handlers = [
        StatsHandler(iteration_log=1, output_transform=training_scalars),
        TensorBoardStatsHandler(log_dir=str(tmp_path / "tb"), output_transform=training_scalars),
        ProgressBarHandler(),
        TrainingHistoryWriter(str(tmp_path / "history.jsonl")),
    ]
    trainer = make_trainer(StandInModel(), batches, train_handlers=handlers)
    trainer.run()
    train, _ = read_history(str(tmp_path / "history.jsonl"))
    assert [r["iteration"] for r in train] == [1, 3] and trainer.state.skipped_batches == 1
