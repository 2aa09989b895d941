"""Glue between MONAI's stock engines and the RetinaNet detector (no engine subclass is needed).

- Batches are lists of per-image dicts (DataLoader collate_fn=monai.data.utils.no_collation: box counts differ).
- `DetectionBatch` is the engines' prepare_batch: images stacked to [B, 1, H, W]; targets a list of {box, label}.
  For training it also passes the targets as the network's extra argument, so SupervisedTrainer's
  `inferer(inputs, network, targets)` calls detector(images, targets) -> loss dict, and the loss function
  (bundle.downstream.detection_detector.DetectionLoss) sums it. For evaluation SupervisedEvaluator calls
  detector(images) -> a list of per-image predictions. Engines run with decollate=False.
- Metrics pair predictions with ground truth per image (detection_metrics.detection_outputs).
- `DetectionSaver` writes the predicted boxes and scores of every evaluated image (original image pixels, manifest
  convention) to predictions.json, and an overlay PNG of predicted and true boxes for the first images.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from bundle.downstream.detection_data import BoxesToOriginald

logger = logging.getLogger(__name__)


class DetectionBatch:
    """prepare_batch for MONAI engines: list of item dicts -> (images, targets[, (targets,), {}])."""

    def __init__(self, train: bool, box_key: str = "box", label_key: str = "label", image_key: str = "image"):
        self.train, self.box_key, self.label_key, self.image_key = train, box_key, label_key, image_key

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        items = batchdata if isinstance(batchdata, (list, tuple)) else [batchdata]
        images = torch.stack([torch.as_tensor(item[self.image_key]) for item in items])
        images = images.to(device, non_blocking=non_blocking)
        if not self.train and any(self.box_key not in item for item in items):
            return images, None  # inference: no ground truth
        targets = [
            {
                self.box_key: torch.as_tensor(item[self.box_key]).float().to(device),
                self.label_key: torch.as_tensor(item[self.label_key]).long().to(device),
            }
            for item in items
        ]
        if self.train:
            return images, targets, (targets,), {}
        return images, targets


class DetectionSaver:
    """Ignite handler: predictions of each evaluated image -> <output_dir>/predictions.json, plus an overlay PNG.

    predictions.json: a list of {"id", "image", "pred_box": [[x1, y1, x2, y2]] (pixels of the original image,
    x = column), "pred_label": [class name], "pred_score": [float], "box", "box_label"} (ground truth, same
    convention; class names). Under torch.distributed each rank writes predictions_rank<r>.json.
    """

    def __init__(
        self,
        output_dir: str,
        class_names: Sequence[str],
        overlay_images: int = 8,
        overlay_score_thresh: float = 0.3,
        box_key: str = "box",
        label_key: str = "label",
    ):
        self.output_dir, self.class_names = Path(output_dir), list(class_names)
        self.overlay_images, self.overlay_score_thresh = overlay_images, overlay_score_thresh
        self.box_key, self.label_key = box_key, label_key
        self.restore = BoxesToOriginald("pred_box")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.records: list[dict] = []

    def _collect(self, engine: Engine) -> None:
        score_key = self.label_key + "_scores"
        for item, pred in zip(engine.state.batch, engine.state.output["pred"]):
            restored = self.restore({"image": item["image"], "pred_box": pred[self.box_key]})["pred_box_xyxy"]
            self.records.append(
                {
                    "id": item.get("id"),
                    "image": item["image"].meta.get("filename_or_obj"),
                    "pred_box": [[round(float(v), 2) for v in b] for b in restored.tolist()],
                    "pred_label": [self.class_names[int(c)] for c in pred[self.label_key].tolist()],
                    "pred_score": [round(float(s), 4) for s in pred[score_key].tolist()],
                    "box": torch.as_tensor(item.get("box_xyxy", [])).reshape(-1, 4).tolist(),
                    "box_label": [
                        self.class_names[int(c)] for c in torch.as_tensor(item.get(self.label_key, [])).tolist()
                    ],
                }
            )

    def _write(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else None
        name = "predictions.json" if rank is None else f"predictions_rank{rank}.json"
        text = "[\n" + ",\n".join(json.dumps(r) for r in self.records) + "\n]\n"  # one image per line
        (self.output_dir / name).write_text(text, encoding="utf-8")
        if not rank and self.overlay_images > 0:
            from bundle.downstream.detection_overlay import save_overlay

            save_overlay(
                self.records[: self.overlay_images],
                self.output_dir / "overlay.png",
                score_thresh=self.overlay_score_thresh,
            )
        logger.info("wrote %d image predictions to %s", len(self.records), os.fspath(self.output_dir / name))
