"""Detection mAP (MONAI's COCO matching): hand-computed cases, images without boxes, pycocotools agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bundle.downstream.detection_metrics import DetectionMAP, detection_outputs, mean_average_precision

GT = {"box": [[0.0, 0.0, 10.0, 10.0]], "label": [0]}


def _pred(boxes, scores, labels=None):
    return {"box": boxes, "label": labels if labels is not None else [0] * len(boxes), "label_scores": scores}


def _map(preds, targets, name_range, classes=("a",)):
    return mean_average_precision(preds, targets, list(classes), name_range)[0]


def test_perfect_detection_is_one_at_every_threshold():
    preds = [_pred([[0.0, 0.0, 10.0, 10.0]], [0.9])]
    for iou_range in ((0.4, 0.75, 0.05), (0.5, 0.5, 0.05), (0.5, 0.95, 0.05)):
        assert _map(preds, [GT], iou_range) == pytest.approx(1.0)


def test_iou_062_counts_below_its_iou_only():
    # IoU of [0, 0, 10, 6.2] with [0, 0, 10, 10] is 0.62: a hit at 0.40 0.45 0.50 0.55 0.60 (5 of the 8 protocol
    # thresholds 0.40:0.05:0.75) and 0.50 0.55 0.60 of the 10 COCO thresholds 0.50:0.05:0.95.
    preds = [_pred([[0.0, 0.0, 10.0, 6.2]], [0.9])]
    assert _map(preds, [GT], (0.4, 0.75, 0.05)) == pytest.approx(5 / 8)
    assert _map(preds, [GT], (0.5, 0.95, 0.05)) == pytest.approx(3 / 10)
    assert _map(preds, [GT], (0.5, 0.5, 0.05)) == pytest.approx(1.0)


def test_an_image_without_boxes_counts_its_false_positives():
    # One true box found with score 0.9 plus a false positive at 0.8 on the same image: AP 1 (the hit ranks first).
    one_image = [_pred([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]], [0.9, 0.8])]
    assert _map(one_image, [GT], (0.5, 0.5, 0.05)) == pytest.approx(1.0)
    # A second image WITHOUT boxes whose detection scores 0.95 ranks above the hit: ranked FP, TP, FP -> precision
    # 0.5 at recall 1, and COCO's interpolated precision is 0.5 at all 101 recall points: AP 0.5.
    negative = _pred([[0.0, 0.0, 5.0, 5.0]], [0.95])
    no_box = {"box": np.zeros((0, 4)), "label": np.zeros((0,), int)}
    assert _map(one_image + [negative], [GT, no_box], (0.5, 0.5, 0.05)) == pytest.approx(0.5)


def test_missed_box_and_class_without_ground_truth():
    # class a: one hit and one missed box (recall 0.5): AP = 51/101 (precision 1 at recall 0.00..0.50, 0 beyond).
    # class b has no ground truth: it is left out of the mean, not averaged in as COCOMetric's -1.
    targets = [{"box": [[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]], "label": [0, 0]}]
    preds = [_pred([[0.0, 0.0, 10.0, 10.0], [80.0, 80.0, 90.0, 90.0]], [0.9, 0.3], labels=[0, 1])]
    value, per_class = mean_average_precision(preds, targets, ["a", "b"], (0.5, 0.5, 0.05))
    assert set(per_class) == {"a"}
    assert value == pytest.approx(51 / 101)


def test_no_ground_truth_at_all_is_nan():
    no_box = {"box": np.zeros((0, 4)), "label": np.zeros((0,), int)}
    assert math.isnan(_map([_pred([[0.0, 0.0, 5.0, 5.0]], [0.5])], [no_box], (0.5, 0.5, 0.05)))


def test_ignite_metric_reads_engine_output():
    metric = DetectionMAP(["a"], "mAP_40_75")
    metric.reset()
    output = {
        "pred": [
            {
                "box": torch.tensor([[0.0, 0.0, 10.0, 6.2]]),
                "label": torch.tensor([0]),
                "label_scores": torch.tensor([0.9]),
            }
        ],
        "label": [{"box": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "label": torch.tensor([0])}],
    }
    metric.update(detection_outputs(output))
    assert metric.compute() == pytest.approx(5 / 8)


def test_agrees_with_pycocotools():
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    preds, targets, images, annotations, detections = [], [], [], [], []
    for image_id in range(12):
        gt = []
        for _ in range(int(rng.integers(0, 3))):  # some images without boxes
            x, y, w, h = rng.uniform(0, 60), rng.uniform(0, 60), rng.uniform(8, 30), rng.uniform(8, 30)
            gt.append([x, y, x + w, y + h])
        pred, scores = [], []
        for box in gt:  # jittered true boxes plus random false positives
            if rng.uniform() < 0.8:
                pred.append([v + rng.normal(0, 2.5) for v in box])
                scores.append(float(rng.uniform(0.3, 1.0)))
        for _ in range(int(rng.integers(0, 3))):
            x, y = rng.uniform(0, 70), rng.uniform(0, 70)
            pred.append([x, y, x + rng.uniform(8, 25), y + rng.uniform(8, 25)])
            scores.append(float(rng.uniform(0.0, 0.9)))
        targets.append({"box": np.array(gt).reshape(-1, 4), "label": np.zeros(len(gt), int)})
        preds.append(
            {"box": np.array(pred).reshape(-1, 4), "label": np.zeros(len(pred), int), "label_scores": np.array(scores)}
        )
        images.append({"id": image_id, "width": 100, "height": 100})
        for b in gt:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "area": (b[2] - b[0]) * (b[3] - b[1]),
                }
            )
        for b, s in zip(pred, scores):
            detections.append(
                {"image_id": image_id, "category_id": 1, "score": s, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
            )
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}
    coco.createIndex()
    evaluation = COCOeval(coco, coco.loadRes(detections), "bbox")
    evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0, 1e10]], ["all"]
    evaluation.params.maxDets = [100]
    evaluation.evaluate()
    evaluation.accumulate()
    precision = evaluation.eval["precision"][:, :, 0, 0, 0]  # [10 IoU thresholds, 101 recall points]
    assert _map(preds, targets, (0.5, 0.95, 0.05)) == pytest.approx(float(precision.mean()), abs=1e-6)
    assert _map(preds, targets, (0.5, 0.5, 0.05)) == pytest.approx(float(precision[0].mean()), abs=1e-6)
