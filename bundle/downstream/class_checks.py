"""What a downstream classification run checks about its classes, so that a wrong manifest or checkpoint fails loudly
instead of giving silently wrong metrics:

- the manifest's meta names its classes (`meta.class_names`, in label order) for multilabel and multiclass tasks;
- every label of every split is valid for the task when the manifest is loaded (multilabel / binary: each entry 0 or
  1, e.g. no CheXpert -1 "uncertain" left in; multiclass: an integer class index), named by split and id;
- every checkpoint stores its task and class names (`DownstreamCheckpointMeta`, saved next to the model), and
  `ClassificationCheckpointLoader` refuses one whose task or class order differs from the manifest's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import torch

from bundle.data.manifest import ManifestError
from bundle.engines import distributed as dist_utils

logger = logging.getLogger(__name__)

META_KEY = "downstream_meta"
MAX_SHOWN = 5


class CheckpointMismatchError(ValueError):
    """A downstream checkpoint was trained for another task or another class order than the current manifest."""


def classification_class_names(task: str, manifest_meta: Mapping, manifest: str = "manifest") -> list[str]:
    """meta.class_names checked: a list of distinct non-empty strings; a binary task has one (default "positive")."""
    names = manifest_meta.get("class_names") if isinstance(manifest_meta, Mapping) else None
    if names is None:
        if task == "binary":
            return ["positive"]
        raise ManifestError(
            f"{manifest}: meta has no 'class_names'; a {task} manifest must list its classes in label "
            "order (meta.class_names), so that metrics and checkpoints can name them"
        )
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ManifestError(f"{manifest}: meta.class_names must be a non-empty list of names, got {names!r}")
    if len(set(names)) != len(names):
        raise ManifestError(f"{manifest}: meta.class_names has repeated names: {names}")
    if task == "binary" and len(names) != 1:
        raise ManifestError(
            f"{manifest}: a binary task has one class (one output); meta.class_names lists {len(names)}: {names}"
        )
    if task == "multiclass" and len(names) < 2:
        raise ManifestError(f"{manifest}: a multiclass task needs at least 2 classes, meta.class_names is {names}")
    return list(names)


def _label_problem(task: str, num_classes: int, value) -> str | None:
    if task == "multiclass":
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or int(value) != value
        ):
            return f"label {value!r} is not an integer class index"
        if not 0 <= int(value) < num_classes:
            return f"label {value!r} is outside the class indices 0..{num_classes - 1}"
        return None
    values = value if isinstance(value, (list, tuple)) else [value]
    if len(values) != num_classes:
        return f"label {value!r} has {len(values)} entries, the manifest has {num_classes} classes"
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or v not in (0, 1)]
    if bad:
        return (
            f"label {value!r} has entries other than 0 and 1 ({bad[:3]}); map uncertain (-1) or missing labels "
            "when the manifest is prepared (scripts/prepare_chexpert.py applies U-Ones / U-Zeros)"
        )
    return None


def check_classification_labels(
    items: Sequence[Mapping], task: str, num_classes: int, manifest: str = "manifest", split: str = "?"
) -> list:
    """`items` unchanged when every "label" suits the task; else ManifestError listing the first bad items."""
    problems = []
    for n, item in enumerate(items):
        if "label" not in item:
            problems.append(f"{item.get('id', f'#{n}')}: no 'label'")
            continue
        problem = _label_problem(task, num_classes, item["label"])
        if problem:
            problems.append(f"{item.get('id', f'#{n}')}: {problem}")
    if problems:
        raise ManifestError(
            f"{manifest}: {len(problems)} item(s) of '{split}' have invalid {task} labels: "
            + "; ".join(problems[:MAX_SHOWN])
            + (" ..." if len(problems) > MAX_SHOWN else "")
        )
    return list(items)


class DownstreamCheckpointMeta:
    """Saved next to the model in every downstream checkpoint: the task and the class names in output order."""

    def __init__(self, task: str, class_names: Sequence[str]) -> None:
        self.task = str(task)
        self.class_names = [str(n) for n in class_names]

    def state_dict(self) -> dict:
        return {"task": self.task, "class_names": list(self.class_names)}

    def load_state_dict(self, state: Mapping) -> None:  # the loader compares; nothing to restore
        pass

    def check(self, state: Mapping, path: str) -> None:
        if state.get("task") != self.task:
            raise CheckpointMismatchError(
                f"{path} was trained for task {state.get('task')!r}, this run is {self.task!r}"
            )
        saved = list(state.get("class_names", []))
        if saved != self.class_names:
            what = "the same classes in another order" if sorted(saved) == sorted(self.class_names) else "other classes"
            raise CheckpointMismatchError(
                f"{path} was trained with classes {saved}; the manifest has {what}: "
                f"{self.class_names}. Its outputs would be scored against the wrong "
                "labels: evaluate on a manifest with the checkpoint's class order"
            )


class ClassificationCheckpointLoader:
    """Ignite handler (on STARTED): load `model` from `load_path` after checking the stored DownstreamCheckpointMeta.

    A checkpoint without the meta (written before the bundle stored it) loads with a warning that its classes cannot
    be checked. The file is read only after every rank reached this point, so none reads a file being written.
    """

    def __init__(
        self, load_path: str, network: torch.nn.Module, meta: DownstreamCheckpointMeta, model_key: str = "model"
    ) -> None:
        self.load_path = load_path
        self.network = network
        self.meta = meta
        self.model_key = model_key

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine=None) -> None:
        from bundle.engines.checkpointing import load_checkpoint_file

        dist_utils.barrier()
        checkpoint = load_checkpoint_file(self.load_path, "classification checkpoint")
        if isinstance(checkpoint, Mapping) and self.model_key in checkpoint:
            state = checkpoint[self.model_key]
            if META_KEY in checkpoint:
                self.meta.check(checkpoint[META_KEY], self.load_path)
            else:
                logger.warning(
                    "%s stores no task / class names (written by an older version): its class order "
                    "cannot be checked against %s",
                    self.load_path,
                    self.meta.class_names,
                )
        else:
            state = checkpoint
            logger.warning(
                "%s is a plain state dict without task / class names: its class order cannot be checked", self.load_path
            )
        dist_utils.unwrap_model(self.network).load_state_dict(state)
        logger.info("loaded %s (task %s, classes %s)", self.load_path, self.meta.task, self.meta.class_names)
