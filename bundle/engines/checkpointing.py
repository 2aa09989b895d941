"""Checkpoints of a pretraining run: the resumable `last.pt`, the best weights of each stage, the exported encoder.

Files in `ckpt_dir` (names are config values):
    last.pt              everything needed to resume: model (k-means state and stage included), optimiser, scheduler,
                         trainer counters, stage handler, best-checkpoint tracking, RNG states of every rank
    stage1_best.pt       model weights with the lowest stage-1 validation loss (MONAI CheckpointSaver)
    stage1_last.pt       model weights at the end of stage 1 (kept: stage 2 may start from best or last)
    stage2_best.pt       model weights with the lowest stage-2 validation loss
    model.pt             the exported whole pretraining model (plain state dict)
    image_encoder.pt     the exported MONAI image encoder (plain state dict, loads with weights_only=True)
Every file holds tensors and plain values only, and every write is atomic (a temporary file renamed over the target),
so a run killed at any moment leaves each file either complete or as it was before; temporary files of killed
writers (`<name>.tmp.<pid>`) are removed when a saver starts.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping

import torch
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import min_version, optional_import

from bundle.engines import distributed as dist_utils
from bundle.engines.preflight import ResumeCheckpointError

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
Checkpoint, _ = optional_import("ignite.handlers", "0.4.11", min_version, "Checkpoint")
BaseSaveHandler, _ = optional_import("ignite.handlers.checkpoint", "0.4.11", min_version, "BaseSaveHandler")

logger = logging.getLogger(__name__)


def atomic_torch_save(obj, path: str, save=None) -> None:
    """`save` (torch.save, or torch.jit.save for a scripted module) to a temporary file and rename it over `path`, so
    a run killed while saving keeps the old file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save = save or torch.save  # looked up at call time (tests replace torch.save to simulate a kill)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


TEMP_FILE = re.compile(r"^.+\.tmp\.(\d+)$")


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temp_files(directory: str) -> list[str]:
    """Delete the `<name>.tmp.<pid>` files of atomic_torch_save whose writer is no longer running; returns them."""
    removed = []
    if not directory or not os.path.isdir(directory):
        return removed
    for name in sorted(os.listdir(directory)):
        match = TEMP_FILE.match(name)
        path = os.path.join(directory, name)
        if match and os.path.isfile(path) and not _pid_running(int(match.group(1))):
            os.remove(path)
            removed.append(path)
    if removed:
        logger.warning("removed %d temporary file(s) left by a killed run: %s", len(removed), removed)
    return removed


def load_checkpoint_file(path: str, what: str = "checkpoint"):
    """torch.load(weights_only=True) with an error naming the file when it is missing, truncated or not a checkpoint."""
    if not os.path.isfile(path):
        raise ResumeCheckpointError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with non-tensor objects, ...: torch raises many types
        raise ResumeCheckpointError(
            f"{what} {path} cannot be read ({type(e).__name__}: {e}); it may be truncated "
            "by a killed run or not a checkpoint of this bundle"
        ) from e


class AtomicDiskSaver(BaseSaveHandler):
    """Ignite save handler: atomic torch.save on rank 0, optionally under one fixed file name.

    With a fixed name, ignite's "remove the previous best, then save" becomes a single atomic replace: there is no
    moment without the file, and removing a file that is already gone (a run killed in between by an older version)
    is not an error.
    """

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        self.dirname = dirname
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if dist_utils.is_main_process():
            atomic_torch_save(checkpoint, os.path.join(self.dirname, self.filename or filename))

    def remove(self, filename: str) -> None:
        if self.filename is not None or not dist_utils.is_main_process():
            return  # the fixed file is replaced atomically by the save that follows
        path = os.path.join(self.dirname, filename)
        if os.path.isfile(path):
            os.remove(path)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI CheckpointSaver whose files are written atomically (MONAI's own uses DiskSaver(atomic=False)), that
    never takes a non-finite key metric (NaN validation) as the best, and that clears stale temporary files on attach.
    Same arguments as monai.handlers.CheckpointSaver."""

    def __init__(self, save_dir: str, save_dict: dict, **kwargs) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)
        self.key_metric_name = kwargs.get("key_metric_name")
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(save_dir, getattr(checkpoint.save_handler, "filename", None))

    def attach(self, engine) -> None:
        if dist_utils.is_main_process():
            remove_stale_temp_files(self.save_dir)
        super().attach(engine)

    def metrics_completed(self, engine) -> None:
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        value = engine.state.metrics.get(name) if name else None
        try:
            finite = value is None or math.isfinite(float(value))
        except (TypeError, ValueError):
            finite = True  # not a scalar: MONAI's own handling (a warning, no save)
        if not finite:
            logger.warning(
                "epoch %s: key metric %s is %s; not a candidate for the best checkpoint in %s",
                engine.state.epoch,
                name,
                value,
                self.save_dir,
            )
            return
        super().metrics_completed(engine)


class RunSettings:
    """Settings that define what an epoch is; stored in last.pt, and a resume with other values is an error
    (iteration counts and the learning-rate schedule would silently mean something else)."""

    def __init__(self, **settings) -> None:
        self.settings = {
            k: (v if isinstance(v, (bool, int, float, str)) or v is None else str(v)) for k, v in settings.items()
        }

    def state_dict(self) -> dict:
        return dict(self.settings)

    def load_state_dict(self, state: Mapping) -> None:
        differ = {k: (state[k], v) for k, v in self.settings.items() if k in state and state[k] != v}
        if differ:
            shown = ", ".join(f"{k}: {old!r} in the checkpoint, {new!r} now" for k, (old, new) in differ.items())
            raise ResumeCheckpointError(
                f"cannot resume with other run settings ({shown}); resume with the "
                "checkpoint's values or start a new run in another ckpt_dir"
            )


def _state_dict_of(obj):
    if isinstance(obj, torch.nn.Module):
        return dist_utils.unwrap_model(obj).state_dict()
    return obj.state_dict()


def load_model_weights(path: str, key: str = "model") -> dict:
    """Model state dict from a checkpoint file: a plain state dict, or a dict holding it under `key`."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, Mapping) and key in checkpoint and isinstance(checkpoint[key], Mapping):
        return dict(checkpoint[key])
    return dict(checkpoint)


class ResumeCheckpointSaver:
    """Writes `save_dict` atomically to one file at every epoch end and, optionally, every N iterations.

    Attach it AFTER ValidationHandler and the stage-best savers so that the epoch-end file already holds the best-metric
    tracking of that epoch's validation. All ranks must run it (RNGState gathers states); only rank 0 writes.

    Args:
        save_dir: directory of the file.
        save_dict: name -> object with state_dict()/load_state_dict() (modules are unwrapped from DDP).
        filename: file name, `last.pt` by default.
        every_n_iterations: also save every N iterations inside an epoch (0: epoch ends only).
        engine_key: the engine this handler is attached to is saved under this name (a config cannot reference the
            trainer from inside the trainer's own handler list).
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        filename: str = "last.pt",
        every_n_iterations: int = 0,
        engine_key: str | None = "trainer",
    ) -> None:
        if not save_dict:
            raise ValueError("ResumeCheckpointSaver needs a non-empty save_dict")
        self.save_dir = save_dir
        self.save_dict = dict(save_dict)
        self.filename = filename
        self.every_n_iterations = int(every_n_iterations or 0)
        self.engine_key = engine_key

    @property
    def path(self) -> str:
        return os.path.join(self.save_dir, self.filename)

    def attach(self, engine) -> None:
        if self.engine_key:
            self.save_dict[self.engine_key] = engine
        if dist_utils.is_main_process():
            remove_stale_temp_files(self.save_dir)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        if self.every_n_iterations > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every_n_iterations), self._save_inside_epoch)

    def _save_inside_epoch(self, engine) -> None:
        # the last iteration of an epoch is saved at EPOCH_COMPLETED, after validation and the best savers
        epoch_length = engine.state.epoch_length
        if epoch_length and engine.state.iteration % epoch_length == 0:
            return
        self.save(engine)

    def save(self, engine) -> None:
        state = {name: _state_dict_of(obj) for name, obj in self.save_dict.items()}
        if dist_utils.is_main_process():
            atomic_torch_save(state, self.path)
            logger.info(
                "saved resumable checkpoint %s (epoch %d, iteration %d)",
                self.path,
                engine.state.epoch,
                engine.state.iteration,
            )


class ResumeCheckpointLoader(CheckpointLoader):
    """MONAI CheckpointLoader that also restores the engine it is attached to (saved under `engine_key`).

    Attach it first, so every other STARTED handler sees the restored state. Before anything is restored it checks
    that the file is readable and that its epoch length (iterations per epoch) is the current one: ignite would
    otherwise silently adopt the old epoch length. Entries named in `optional_keys` may be absent from older files.
    """

    def __init__(
        self,
        load_path: str,
        load_dict: dict,
        engine_key: str | None = "trainer",
        optional_keys: tuple[str, ...] = ("run_settings",),
        **kwargs,
    ) -> None:
        super().__init__(load_path=load_path, load_dict=dict(load_dict), **kwargs)
        self.engine_key = engine_key
        self.optional_keys = tuple(optional_keys)

    def attach(self, engine) -> None:
        if self.engine_key:
            self.load_dict[self.engine_key] = engine
        super().attach(engine)

    def __call__(self, engine) -> None:
        checkpoint = load_checkpoint_file(self.load_path, "resume checkpoint")
        if not isinstance(checkpoint, Mapping):
            raise ResumeCheckpointError(f"resume checkpoint {self.load_path} is not a dict of saved objects")
        load_dict = {k: v for k, v in self.load_dict.items() if k in checkpoint or k not in self.optional_keys}
        missing = sorted(set(load_dict) - set(checkpoint))
        if missing:
            raise ResumeCheckpointError(
                f"resume checkpoint {self.load_path} lacks {missing} (it holds "
                f"{sorted(checkpoint)}): not a last.pt of this workflow"
            )
        saved = checkpoint.get(self.engine_key, {}).get("epoch_length") if self.engine_key else None
        current = engine.state.epoch_length
        if saved and current and int(saved) != int(current):
            raise ResumeCheckpointError(
                f"resume checkpoint {self.load_path} was written with {saved} iterations per epoch, this run has "
                f"{current}: batch_size, the number of processes or the training split changed. Resume with the "
                "same settings, or start a new run in another ckpt_dir"
            )
        prior_max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=load_dict, checkpoint=checkpoint, strict=self.strict)
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise ResumeCheckpointError(
                f"resume checkpoint {self.load_path} is at epoch {engine.state.epoch}, "
                f"beyond this run's {prior_max_epochs} epochs"
            )
        engine.state.max_epochs = prior_max_epochs
        logger.info("restored all variables from %s", self.load_path)


def current_stage(stage_source) -> int:
    """The stage of a StageScheduleHandler or of a (possibly DDP-wrapped) model with a `stage` buffer."""
    if isinstance(stage_source, torch.nn.Module):
        stage_source = dist_utils.unwrap_model(stage_source)
    return int(stage_source.stage)


class StageBestCheckpointSaver(AtomicCheckpointSaver):
    """MONAI CheckpointSaver of the best model by validation loss, active only while `stage_source.stage == stage`.

    Attach one per stage to the evaluator; each keeps its own file and its own best value, so stage 2's best is
    chosen by stage-2 validation loss only. `stage_source` is the model (its `stage` buffer) or the stage handler.
    state_dict()/load_state_dict() carry the best-value tracking across resume.
    """

    def __init__(
        self,
        stage: int,
        stage_source,
        save_dir: str,
        save_dict: dict,
        key_metric_name: str = "val_loss",
        filename: str | None = None,
        lower_is_better: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(
            save_dir=save_dir,
            save_dict=save_dict,
            name=name,
            save_key_metric=True,
            key_metric_name=key_metric_name,
            key_metric_n_saved=1,
            key_metric_filename=filename or f"stage{stage}_best.pt",
            key_metric_negative_sign=lower_is_better,
        )
        self.stage = int(stage)
        self.stage_source = stage_source
        self.lower_is_better = lower_is_better
        self.filename = filename or f"stage{stage}_best.pt"

    @property
    def path(self) -> str:
        return os.path.join(self.save_dir, self.filename)

    def metrics_completed(self, engine) -> None:
        if current_stage(self.stage_source) == self.stage:
            super().metrics_completed(engine)

    def state_dict(self) -> dict:
        return self._key_metric_checkpoint.state_dict()

    def best_value(self) -> float | None:
        """Best validation loss seen in this stage (None before the first validation)."""
        saved = self._key_metric_checkpoint._saved
        if not saved:
            return None
        priority = saved[-1].priority
        return -priority if self.lower_is_better else priority


def script_encoder(encoder: torch.nn.Module, state: dict, path: str) -> torch.jit.ScriptModule:
    """A CPU copy of `encoder` with `state`, scripted, checked against the eager copy on a random image, saved."""
    import copy

    eager = copy.deepcopy(encoder).cpu().eval()
    eager.load_state_dict(state)
    scripted = torch.jit.script(eager)
    image = torch.rand(
        2, eager.in_channels, eager.image_size, eager.image_size, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        for ours, theirs in zip(eager(image * 2 - 1), scripted(image * 2 - 1)):
            if not torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4):
                raise RuntimeError(
                    f"TorchScript export differs from the eager encoder by {(ours - theirs).abs().max():.2e}"
                )
    atomic_torch_save(scripted, path, save=torch.jit.save)
    return scripted


class EncoderExportHandler:
    """At the end of training writes `model.pt` (whole pretraining model), `image_encoder.pt` (image encoder only) and
    `image_encoder.ts` (the image encoder scripted with TorchScript; `torchscript_filename=None` skips it).

    The weights come from `source_checkpoint` (the best checkpoint of the final stage) when it exists, else from the
    live model. The .pt files are plain state dicts loadable with `torch.load(..., weights_only=True)`; the .ts file
    loads with `torch.jit.load` without the bundle's code, and is checked to give the eager encoder's outputs.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        save_dir: str,
        source_checkpoint: str | None = None,
        model_filename: str = "model.pt",
        encoder_filename: str = "image_encoder.pt",
        encoder_attribute: str = "image_encoder",
        torchscript_filename: str | None = "image_encoder.ts",
    ) -> None:
        self.network = network
        self.save_dir = save_dir
        self.source_checkpoint = source_checkpoint
        self.model_filename = model_filename
        self.encoder_filename = encoder_filename
        self.encoder_attribute = encoder_attribute
        self.torchscript_filename = torchscript_filename

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine=None) -> dict[str, str]:
        if not dist_utils.is_main_process():
            return {}
        model = dist_utils.unwrap_model(self.network)
        if not hasattr(model, self.encoder_attribute):
            raise AttributeError(f"{type(model).__name__} has no attribute {self.encoder_attribute!r} to export")
        if self.source_checkpoint and os.path.isfile(self.source_checkpoint):
            state = load_model_weights(self.source_checkpoint)
            source = self.source_checkpoint
        else:
            if self.source_checkpoint:
                logger.warning("export: %s not found, exporting the current weights", self.source_checkpoint)
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            source = "the current weights"
        prefix = self.encoder_attribute + "."
        encoder_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        expected = set(getattr(model, self.encoder_attribute).state_dict())
        if set(encoder_state) != expected:
            raise RuntimeError(
                f"export: {source} does not hold the image encoder's keys "
                f"(missing {sorted(expected - set(encoder_state))[:5]}, "
                f"unexpected {sorted(set(encoder_state) - expected)[:5]})"
            )
        paths = {
            "model": os.path.join(self.save_dir, self.model_filename),
            "image_encoder": os.path.join(self.save_dir, self.encoder_filename),
        }
        atomic_torch_save(state, paths["model"])
        atomic_torch_save(encoder_state, paths["image_encoder"])
        encoder = getattr(model, self.encoder_attribute)
        if self.torchscript_filename and hasattr(encoder, "in_channels") and hasattr(encoder, "image_size"):
            path = os.path.join(self.save_dir, self.torchscript_filename)
            try:
                script_encoder(encoder, encoder_state, path)
                paths["torchscript"] = path
            except Exception as error:  # noqa: BLE001 - the state dicts above are the export; this is a convenience
                logger.error(
                    "export: TorchScript of the image encoder failed (%s); %s is unaffected",
                    error,
                    paths["image_encoder"],
                )
        logger.info(
            "exported the pretraining model to %s and the image encoder to %s (weights from %s)",
            paths["model"],
            paths["image_encoder"],
            source,
        )
        return paths
