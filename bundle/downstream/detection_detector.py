"""MONAI's RetinaNetDetector, usable without torchvision, configured as this bundle trains and infers with it.

Training: ATSS matching (MONAI's ATSSMatcher), MONAI's HardNegativeSampler, MONAI's default BCE classification loss on
the sampled anchors and smooth-L1 box regression on encoded targets (MONAI's defaults). Inference: MONAI's
BoxSelector (score threshold, top-k per level, NMS, detections per image), optionally a whole-image sliding-window
inferer (what MONAI Label calls with use_inferer=True).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.utils.anchor_utils import AnchorGenerator
from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher
from torch import nn


class TorchvisionFreeRetinaNetDetector(RetinaNetDetector):
    """RetinaNetDetector whose anchor matching supports MONAI's ATSSMatcher without importing torchvision.

    Why: the parent's compute_anchor_matched_idxs first tests isinstance(matcher, torchvision Matcher); without
    torchvision that name is MONAI's optional-import placeholder and the test raises OptionalImportError, even
    with the ATSS matcher set. Only the ATSS branch is kept; the rest of training and inference is the parent's.
    """

    def compute_anchor_matched_idxs(
        self,
        anchors: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        num_anchor_locs_per_level: Sequence[int],
    ) -> list[torch.Tensor]:
        if not isinstance(self.proposal_matcher, ATSSMatcher):
            raise NotImplementedError("only MONAI's ATSSMatcher is supported without torchvision (set_atss_matcher)")
        matched_idxs = []
        for anchors_per_image, targets_per_image in zip(anchors, targets):  # per image: box counts differ
            gt_boxes = targets_per_image[self.target_box_key].to(anchors_per_image.device)
            if gt_boxes.numel() == 0:  # an image without boxes: every anchor is background
                matched_idxs.append(
                    torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64, device=anchors_per_image.device)
                )
                continue
            _, matched = self.proposal_matcher(
                gt_boxes, anchors_per_image, num_anchor_locs_per_level, self.num_anchors_per_loc
            )
            matched_idxs.append(matched)
        return matched_idxs


def build_detector(
    network: nn.Module,
    anchor_generator: AnchorGenerator,
    box_key: str = "box",
    label_key: str = "label",
    atss_candidates: int = 4,
    sampler_batch_size: int = 64,
    sampler_positive_fraction: float = 0.3,
    sampler_pool_size: float = 20.0,
    sampler_min_neg: int = 16,
    score_thresh: float = 0.02,
    topk_candidates_per_level: int = 1000,
    nms_thresh: float = 0.22,
    detections_per_img: int = 100,
    window_size: Sequence[int] | None = None,
    debug: bool = False,
) -> TorchvisionFreeRetinaNetDetector:
    """The detector with matcher, sampler, keys and box selection set (the lung_nodule_ct_detection recipe, 2D).

    Predictions carry `box_key`, `label_key` and `label_key + "_scores"` (MONAI Label's detection keys).
    window_size: set a sliding-window inferer of that ROI (the whole network input: one window, no overlap).
    """
    detector = TorchvisionFreeRetinaNetDetector(network=network, anchor_generator=anchor_generator, debug=debug)
    detector.set_target_keys(box_key=box_key, label_key=label_key)
    detector.set_atss_matcher(num_candidates=atss_candidates, center_in_gt=False)
    detector.set_hard_negative_sampler(
        batch_size_per_image=sampler_batch_size,
        positive_fraction=sampler_positive_fraction,
        pool_size=sampler_pool_size,
        min_neg=sampler_min_neg,
    )
    detector.set_box_selector_parameters(
        score_thresh=score_thresh,
        topk_candidates_per_level=topk_candidates_per_level,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
    )
    if window_size is not None:
        detector.set_sliding_window_inferer(roi_size=list(window_size), sw_batch_size=1, overlap=0.0, mode="constant")
    return detector


class DetectionLoss(nn.Module):
    """The detector's loss dict -> cls_weight * classification + box regression (what the trainer minimises)."""

    def __init__(self, cls_weight: float = 1.0, cls_key: str = "classification", box_key: str = "box_regression"):
        super().__init__()
        self.cls_weight, self.cls_key, self.box_key = cls_weight, cls_key, box_key

    def forward(self, losses: dict[str, torch.Tensor], targets=None) -> torch.Tensor:  # targets: already used
        return self.cls_weight * losses[self.cls_key] + losses[self.box_key]
