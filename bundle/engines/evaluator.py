"""Validation of CM-CGNS pretraining: validation loss and image-report retrieval accuracy.

The model computes its stage's loss and in-batch retrieval top-1/top-5 in both directions (image -> report and
report -> image among the B pairs of a batch, or of all ranks' batches under torch.distributed). The evaluator averages
them over the validation batches, each batch weighing the same, and reports the chance level of that protocol
(mean over batches of 1/B for top-1 and min(5, B)/B for top-5) next to them.
"""

from __future__ import annotations

import contextlib
import logging
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from monai.engines import Evaluator
from monai.inferers import Inferer, SimpleInferer
from monai.utils import min_version, optional_import

from bundle.engines import distributed as dist_utils
from bundle.engines.batch import batch_ids, drop_empty_reports, to_model_inputs
from bundle.engines.trainer import any_rank, average_over_ranks, resolve_amp_dtype, scalar_outputs
from bundle.losses.diagnostics import DIAGNOSTIC_KEYS

Metric, _ = optional_import("ignite.metrics", "0.4.11", min_version, "Metric")
reinit__is_reduced, _ = optional_import("ignite.metrics.metric", "0.4.11", min_version, "reinit__is_reduced")
sync_all_reduce, _ = optional_import("ignite.metrics.metric", "0.4.11", min_version, "sync_all_reduce")

logger = logging.getLogger(__name__)

# metric name -> key of the evaluator's iteration output
VALIDATION_METRICS = {
    "val_loss": "loss",
    "val_loss_img": "loss_img",
    "val_loss_report": "loss_report",
    "val_loss_global": "loss_global",
    "val_loss_recon": "loss_recon",
    "val_i2t_top1": "acc_i2t_top1",
    "val_i2t_top5": "acc_i2t_top5",
    "val_t2i_top1": "acc_t2i_top1",
    "val_t2i_top5": "acc_t2i_top5",
    "val_chance_top1": "chance_top1",
    "val_chance_top5": "chance_top5",
    "val_centroid_usage": "centroid_usage",
    **{f"val_{key}": key for key in DIAGNOSTIC_KEYS},
}

lower_is_better: Callable[[float, float], bool] = operator.lt


class BatchMean(Metric):
    """Mean over iterations of one scalar of the engine output; skipped batches do not count.

    The iteration outputs are already averaged over ranks, so every rank holds the same sums; the all-reduce of
    sum and count keeps this correct even when they are not.
    """

    def __init__(self, key: str, device: str | torch.device = "cpu") -> None:
        self.key = key
        super().__init__(output_transform=lambda output: output, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._num = torch.tensor(0, dtype=torch.int64, device=self._device)

    @reinit__is_reduced
    def update(self, output: dict) -> None:
        if output.get("skipped") or self.key not in output:
            return
        self._sum += float(output[self.key])
        self._num += 1

    def iteration_completed(self, engine) -> None:
        # the whole output dict goes to update(); Ignite's default expects (y_pred, y) pairs
        self.update(engine.state.output)

    @sync_all_reduce("_sum", "_num")
    def compute(self) -> float:
        if int(self._num) == 0:
            return float("nan")
        return float(self._sum / self._num)


def pretrain_validation_metrics(
    names: Sequence[str] | None = None, exclude: Sequence[str] = ()
) -> dict[str, BatchMean]:
    """Ignite metrics for the evaluator: name -> BatchMean (all of VALIDATION_METRICS by default, minus `exclude`)."""
    names = [n for n in (VALIDATION_METRICS if names is None else names) if n not in exclude]
    unknown = [n for n in names if n not in VALIDATION_METRICS]
    if unknown:
        raise KeyError(f"unknown validation metrics {unknown}; known: {sorted(VALIDATION_METRICS)}")
    return {n: BatchMean(VALIDATION_METRICS[n]) for n in names}


class CMCGNSEvaluator(Evaluator):
    """Ignite evaluator computing the model's loss and retrieval metrics on held-out pairs (no gradients).

    Args:
        device, val_data_loader, network, epoch_length, non_blocking, inferer: as for monai Evaluator.
        key_val_metric: {"val_loss": BatchMean("loss")} (lower is better, see metric_cmp_fn).
        additional_metrics: further BatchMean metrics.
        val_handlers: handlers attached in order (StatsHandler, TensorBoard, StageBestCheckpointSaver, ...).
        amp, amp_dtype: mixed precision on CUDA.
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Iterable,
        network: torch.nn.Module,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        inferer: Inferer | None = None,
        key_val_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = lower_is_better,
        val_handlers: Sequence | None = None,
        amp: bool = False,
        amp_dtype: str | torch.dtype = "bfloat16",
        mode: str = "eval",
        decollate: bool = False,
        to_kwargs: dict | None = None,
    ) -> None:
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            val_handlers=val_handlers,
            amp=amp,
            mode=mode,
            decollate=decollate,
            to_kwargs=to_kwargs,
        )
        self.network = network
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.amp_dtype = resolve_amp_dtype(amp_dtype)
        self.state.dropped_rows = 0

    def _autocast(self):
        if self.amp and self.state.device.type == "cuda":
            return torch.autocast("cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def _iteration(self, engine, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("must provide batch data for the current iteration")
        batch, dropped = drop_empty_reports(batchdata)
        self.state.dropped_rows += len(dropped)
        if any_rank(batch is None, self.state.device):
            logger.warning("validation batch skipped: no report with a sentence (ids %s)", batch_ids(batchdata))
            return {"skipped": True, "id": batch_ids(batchdata)}
        inputs = to_model_inputs(batch, self.state.device, self.non_blocking)
        with self.mode(self.network), torch.no_grad(), self._autocast():
            outputs = self.inferer(inputs.pop("image"), self.network, **inputs)
        logged = average_over_ranks(scalar_outputs(outputs))
        # in-batch retrieval: candidates are the pairs of this batch on all ranks
        candidates = int(inputs["input_ids"].shape[0]) * dist_utils.get_world_size()
        logged["chance_top1"] = 1.0 / candidates
        logged["chance_top5"] = min(5, candidates) / candidates
        logged["batch_size"] = int(inputs["input_ids"].shape[0])
        logged["id"] = batch_ids(batch)
        return logged
