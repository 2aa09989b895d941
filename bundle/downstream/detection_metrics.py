"""Detection metrics with MONAI's COCO implementation (monai.apps.detection.metrics: matching_batch + COCOMetric).

- "mAP_40_75": mean AP over IoU 0.40:0.05:0.75 (8 thresholds), the published protocol's detection metric;
- "mAP_50": COCO AP at IoU 0.5; "mAP_50_95": COCO mAP over IoU 0.50:0.05:0.95.
AP is COCO's 101-point interpolated AP with up to 100 detections per image, averaged over the classes that have at
least one ground-truth box in the evaluated images (COCOMetric reports -1 for a class without ground truth; such a
class is left out, never averaged in). Images without boxes take part: their detections are false positives.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from ignite.metrics import Metric
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou

logger = logging.getLogger(__name__)

IOU_RANGES = {"mAP_40_75": (0.40, 0.75, 0.05), "mAP_50": (0.50, 0.50, 0.05), "mAP_50_95": (0.50, 0.95, 0.05)}


def detection_outputs(output: Mapping, box_key: str = "box", label_key: str = "label") -> list[dict]:
    """An evaluator's output {pred: [per image], label: [per image targets]} -> [{pred_box, pred_label, pred_score,
    box, label}] (network-input frame), what DetectionMAP reads."""
    score_key = label_key + "_scores"
    return [
        {
            "pred_box": p[box_key],
            "pred_label": p[label_key],
            "pred_score": p[score_key],
            "box": t[box_key],
            "label": t[label_key],
        }
        for p, t in zip(output["pred"], output["label"])
    ]


def _np(values, dtype, width: int | None = None) -> np.ndarray:
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    arr = arr.astype(dtype)
    return arr.reshape(-1, width) if width else arr.reshape(-1)


def mean_average_precision(
    preds: Sequence[Mapping],
    targets: Sequence[Mapping],
    class_names: Sequence[str],
    iou_range: tuple[float, float, float],
    max_detections: int = 100,
    box_key: str = "box",
    label_key: str = "label",
    score_key: str = "label_scores",
) -> tuple[float, dict[str, float]]:
    """(mAP over the classes with ground truth, per-class AP of those classes) for one IoU range.

    preds: per image {box [D, 4], label [D], label_scores [D]}; targets: per image {box [G, 4], label [G]}; boxes in
    the same frame and mode (corner boxes). NaN when no class has a ground-truth box.
    """
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions for {len(targets)} images")
    metric = COCOMetric(
        classes=list(class_names),
        iou_list=(iou_range[0],),
        iou_range=iou_range,
        max_detection=(max_detections,),
        per_class=True,
        verbose=False,
    )
    matches = matching_batch(
        iou_fn=box_iou,
        iou_thresholds=metric.iou_thresholds,
        pred_boxes=[_np(p[box_key], np.float64, 4) for p in preds],
        pred_classes=[_np(p[label_key], np.int64) for p in preds],
        pred_scores=[_np(p[score_key], np.float64) for p in preds],
        gt_boxes=[_np(t[box_key], np.float64, 4) for t in targets],
        gt_classes=[_np(t[label_key], np.int64) for t in targets],
        max_detections=max_detections,
    )
    results, _ = metric(matches)
    stem = f"mAP_IoU_{iou_range[0]:.2f}_{iou_range[1]:.2f}_{iou_range[2]:.2f}_MaxDet_{max_detections}"
    per_class = {name: results[f"{name}_{stem}"] for name in class_names if results[f"{name}_{stem}"] >= 0}
    overall = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return overall, per_class


class DetectionMAP(Metric):
    """Ignite metric over an evaluator's output (by default through `detection_outputs`: per-image dicts).

    Each item carries `pred_box`, `pred_label`, `pred_score` and the ground truth `box`, `label`, all in the
    network-input frame (IoU does not change under the resize-and-pad that maps it to the original image). Under
    torch.distributed every rank's images are gathered before computing, so all ranks see the same value.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        name: str = "mAP_40_75",
        max_detections: int = 100,
        output_transform=detection_outputs,
        device="cpu",
    ):
        if name not in IOU_RANGES:
            raise ValueError(f"unknown detection metric {name!r}; choose one of {sorted(IOU_RANGES)}")
        self.class_names, self.iou_range, self.max_detections = list(class_names), IOU_RANGES[name], max_detections
        self.per_class: dict[str, float] = {}
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._preds: list[dict] = []
        self._targets: list[dict] = []

    def update(self, output) -> None:
        items = output if isinstance(output, (list, tuple)) else [output]
        for item in items:  # per image: detections differ in number
            self._preds.append(
                {
                    "box": _np(item["pred_box"], np.float64, 4),
                    "label": _np(item["pred_label"], np.int64),
                    "label_scores": _np(item["pred_score"], np.float64),
                }
            )
            self._targets.append({"box": _np(item["box"], np.float64, 4), "label": _np(item["label"], np.int64)})

    def compute(self) -> float:
        preds, targets = self._preds, self._targets
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (preds, targets))
            preds = [p for g in gathered for p in g[0]]
            targets = [t for g in gathered for t in g[1]]
        value, self.per_class = mean_average_precision(
            preds, targets, self.class_names, self.iou_range, self.max_detections
        )
        return value


def detection_metrics(class_names: Sequence[str], prefix: str = "val") -> tuple[dict, dict]:
    """(key metric {prefix_mAP_40_75}, additional {prefix_mAP_50, prefix_mAP_50_95}) for a MONAI evaluator."""
    key = {f"{prefix}_mAP_40_75": DetectionMAP(class_names, "mAP_40_75")}
    extra = {f"{prefix}_{n}": DetectionMAP(class_names, n) for n in ("mAP_50", "mAP_50_95")}
    return key, extra
