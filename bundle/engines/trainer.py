"""CM-CGNS pretraining trainer: a monai.engines.Trainer whose iteration runs the model's own loss.

The model returns a dict (loss terms and retrieval metrics, see CMCGNS.forward); the trainer adds what a training loop
needs around it: dropping rows whose report reduced to nothing, skipping (and counting) batches left empty, mixed
precision on CUDA (bf16 or fp16 with a GradScaler), gradient accumulation (with DDP's no_sync between steps), gradient
clipping, a stop on a non-finite loss that names the iteration, the loss terms and the batch ids, and
bit-exact resume inside an epoch (the batches already consumed are drawn again and discarded).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from monai.engines.workflow import Workflow
from monai.inferers import Inferer, SimpleInferer
from monai.utils import min_version, optional_import

from bundle.engines import distributed as dist_utils
from bundle.engines.batch import batch_ids, drop_empty_reports, to_model_inputs
from bundle.losses.diagnostics import DIAGNOSTIC_KEYS

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

logger = logging.getLogger(__name__)

# Scalars of the model output that are logged (every one that the model returns is kept).
MODEL_SCALAR_KEYS = (
    "loss",
    "loss_img",
    "loss_report",
    "loss_global",
    "loss_recon",
    "loss_recon_masked",
    "bml",
    "acc_i2t_top1",
    "acc_i2t_top5",
    "acc_t2i_top1",
    "acc_t2i_top5",
    "logit_scale",
    "kmeans_initialized",
    "centroid_usage",
)
OUTPUT_SCALAR_KEYS = MODEL_SCALAR_KEYS + DIAGNOSTIC_KEYS
AMP_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the iteration, the loss terms and the batch ids."""


def resolve_amp_dtype(amp_dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(amp_dtype, torch.dtype):
        return amp_dtype
    try:
        return AMP_DTYPES[str(amp_dtype).lower()]
    except KeyError:
        raise ValueError(f"amp_dtype must be one of {sorted(AMP_DTYPES)}, got {amp_dtype!r}") from None


def scalar_outputs(outputs: dict) -> dict[str, torch.Tensor]:
    """The 0-dim entries of a model output dict that are logged, detached."""
    return {
        k: outputs[k].detach().float().reshape(())
        for k in OUTPUT_SCALAR_KEYS
        if k in outputs and isinstance(outputs[k], torch.Tensor) and outputs[k].numel() == 1
    }


def average_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean of each scalar over all ranks with one collective, as Python floats."""
    if not values:
        return {}
    keys = sorted(values)
    stacked = dist_utils.all_reduce_mean(torch.stack([values[k] for k in keys]))
    return dict(zip(keys, stacked.cpu().tolist()))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when `flag` is true on at least one rank (so all ranks take the same branch)."""
    if not dist_utils.is_distributed():
        return flag
    value = torch.tensor([0.0 if flag else 1.0], device=device)
    return bool(dist_utils.all_reduce_min(value).item() == 0.0)


def format_terms(terms: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.6g}" for k, v in sorted(terms.items()))


class CMCGNSTrainer(Trainer):
    """Ignite trainer for CM-CGNS pretraining (model-zoo pattern: a Trainer subclass with its own `_iteration`).

    Args:
        device: device of this process.
        max_epochs: total epochs of both stages.
        train_data_loader: yields collated pretraining batches (image, report, id and TokenizeReportd outputs).
        network: CMCGNS (or a DDP wrapper of it); forward(image, input_ids, attention_mask, token_type_ids,
            sentence_index) returns a dict with "loss" and the loss terms.
        optimizer: torch optimizer.
        epoch_length: iterations per epoch (default: len(train_data_loader)).
        inferer: calls the network (default SimpleInferer).
        train_handlers: Ignite/MONAI handlers, attached in order.
        amp: mixed precision (CUDA only); amp_dtype "bfloat16" (no scaler) or "float16" (GradScaler).
        accumulation_steps: optimiser step every N iterations (and at each epoch end).
        max_grad_norm: clip the gradient norm to this value before each step (None or <= 0: no clipping).
        check_finite: stop with NonFiniteLossError when the loss is NaN or infinite.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        inferer: Inferer | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable | None = None,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        amp_dtype: str | torch.dtype = "bfloat16",
        accumulation_steps: int = 1,
        max_grad_norm: float | None = None,
        check_finite: bool = True,
        optim_set_to_none: bool = True,
        decollate: bool = False,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        to_kwargs: dict | None = None,
    ) -> None:
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        extra = {} if metric_cmp_fn is None else {"metric_cmp_fn": metric_cmp_fn}
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            **extra,
        )
        self.network = network
        self.optimizer = optimizer
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.amp_dtype = resolve_amp_dtype(amp_dtype)
        self.accumulation_steps = int(accumulation_steps)
        self.max_grad_norm = max_grad_norm if max_grad_norm and max_grad_norm > 0 else None
        self.check_finite = check_finite
        self.optim_set_to_none = optim_set_to_none
        self._batches_to_skip = 0
        self._pending_grads = False
        # counters travel with the trainer's state_dict, so a resumed run keeps counting
        self.state.dropped_rows = 0
        self.state.skipped_batches = 0
        self.state.stage = 1
        for key in ("dropped_rows", "skipped_batches"):
            if key not in self.state_dict_user_keys:
                self.state_dict_user_keys.append(key)
        # after the train handlers (CheckpointLoader restores the iteration on STARTED)
        self.add_event_handler(Events.STARTED, self._plan_resume_inside_epoch)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._log_skips)

    # ----- run / state ---------------------------------------------------------------------------------------------
    def run(self) -> None:  # type: ignore[override]
        use_cuda_amp = self.amp and self.state.device is not None and self.state.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_cuda_amp and self.amp_dtype == torch.float16 else None
        Workflow.run(self)  # Trainer.run would create a deprecated fp16 scaler unconditionally

    def state_dict(self) -> dict:
        state = super().state_dict()
        if getattr(self, "scaler", None) is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state_dict) -> None:
        state_dict = dict(state_dict)
        scaler_state = state_dict.pop("grad_scaler", None)
        super().load_state_dict(state_dict)
        if scaler_state is not None and getattr(self, "scaler", None) is not None:
            self.scaler.load_state_dict(scaler_state)

    def _plan_resume_inside_epoch(self, engine) -> None:
        epoch_length = self.state.epoch_length
        self._batches_to_skip = self.state.iteration % epoch_length if epoch_length else 0
        if self._batches_to_skip:
            logger.info(
                "resuming inside epoch %d: re-drawing and discarding its first %d batches",
                self.state.iteration // epoch_length + 1,
                self._batches_to_skip,
            )

    def _setup_dataloader_iter(self) -> None:
        super()._setup_dataloader_iter()
        # Ignite restarts the data iterator at the start of the epoch on resume; drawing the consumed batches again
        # keeps the sampler order and the augmentation random streams identical to an uninterrupted run.
        skip, self._batches_to_skip = self._batches_to_skip, 0
        for _ in range(skip):
            next(self._dataloader_iter)

    def _log_skips(self, engine) -> None:
        if self.state.dropped_rows or self.state.skipped_batches:
            logger.warning(
                "so far %d rows with an empty report were dropped and %d empty batches skipped",
                self.state.dropped_rows,
                self.state.skipped_batches,
            )

    # ----- one iteration -------------------------------------------------------------------------------------------
    def _window(self) -> tuple[bool, bool]:
        """(zero the gradients first, take an optimiser step after) for this iteration."""
        acc = self.accumulation_steps
        if acc == 1:
            return True, True
        epoch_length = self.state.epoch_length
        local = (self.state.iteration - 1) % epoch_length if epoch_length else self.state.iteration - 1
        last_of_epoch = epoch_length is not None and local + 1 == epoch_length
        return local % acc == 0, (local + 1) % acc == 0 or last_of_epoch

    def _autocast(self):
        if self.amp and self.state.device.type == "cuda":
            return torch.autocast("cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.max_grad_norm is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self._pending_grads = False

    def _iteration(self, engine, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("must provide batch data for the current iteration")
        zero_grad_first, step_after = self._window()
        if zero_grad_first:
            self.optimizer.zero_grad(set_to_none=self.optim_set_to_none)
            self._pending_grads = False
        batch, dropped = drop_empty_reports(batchdata)
        if dropped:
            self.state.dropped_rows += len(dropped)
            logger.warning(
                "iteration %d: dropped %d rows whose report has no sentence left: ids %s",
                self.state.iteration,
                len(dropped),
                dropped,
            )
        if any_rank(batch is None, self.state.device):
            # every rank skips together, or the collectives of the others would wait forever
            self.state.skipped_batches += 1
            logger.warning(
                "iteration %d: batch skipped, no report with a sentence (ids %s); %d skipped so far",
                self.state.iteration,
                batch_ids(batchdata),
                self.state.skipped_batches,
            )
            if step_after and self._pending_grads:
                self._optimizer_step()
            return {"skipped": True, "id": batch_ids(batchdata)}

        inputs = to_model_inputs(batch, self.state.device, self.non_blocking)
        self.network.train()
        sync = contextlib.nullcontext()
        if not step_after and isinstance(self.network, torch.nn.parallel.DistributedDataParallel):
            sync = self.network.no_sync()  # gradients are all-reduced once per optimiser step
        with sync:
            with self._autocast():
                outputs = self.inferer(inputs.pop("image"), self.network, **inputs)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss = outputs["loss"]
            scalars = scalar_outputs(outputs)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            scaled = loss / self.accumulation_steps if self.accumulation_steps > 1 else loss
            if self.scaler is not None:
                scaled = self.scaler.scale(scaled)
            scaled.backward()
            self._pending_grads = True
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        # The one host transfer of the step: the logged scalars (mean over ranks), read before the optimiser step so
        # that a non-finite loss stops the run without touching the weights; all ranks see the same mean and stop
        # together.
        logged = average_over_ranks(scalars)
        if self.check_finite:
            self._stop_if_not_finite(logged, batch)
        if step_after:
            self._optimizer_step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)

        logged["lr"] = float(self.optimizer.param_groups[0]["lr"])
        logged["batch_size"] = int(inputs["input_ids"].shape[0])
        logged["stage"] = int(getattr(self.state, "stage", 1))
        logged["id"] = batch_ids(batch)
        return logged

    def _stop_if_not_finite(self, logged: dict[str, float], batch: dict) -> None:
        if math.isfinite(logged.get("loss", 0.0)):
            return
        terms = {k: v for k, v in logged.items() if k in OUTPUT_SCALAR_KEYS}
        raise NonFiniteLossError(
            f"non-finite loss at iteration {self.state.iteration} (epoch {self.state.epoch}, rank "
            f"{dist_utils.get_rank()}, stage {getattr(self.state, 'stage', '?')}): loss terms "
            f"[{format_terms(terms)}] (mean over ranks); batch ids {batch_ids(batch)}"
        )
