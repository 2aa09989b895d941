"""Post-processing of the segmentation network's logits for training, evaluation and inference.

Training / evaluation: sigmoid, then threshold 0.5 (MONAI AsDiscrete keeps p >= 0.5; MGCA's get_dice keeps p > 0.5;
they differ only at a probability of exactly 0.5).
Inference: the per-channel probabilities become one label map [1, H, W] of class ids (0 background; one foreground
class -> 0 / 1; per-class channels -> the id of the most probable channel where that probability is >= 0.5), which
Invertd brings back to the image's original size by nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.transforms import Activationsd, AsDiscreted, Compose, MapTransform


def segmentation_postprocessing(threshold: float = 0.5) -> Compose:
    return Compose([Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=threshold)])


class ProbabilitiesToLabelMapd(MapTransform):
    """[C, H, W] sigmoid probabilities -> [1, H, W] label map: `class_ids[c]` where channel c wins (>= threshold)."""

    def __init__(self, class_ids: Sequence[int], keys="pred", threshold: float = 0.5) -> None:
        super().__init__(keys)
        self.class_ids = [int(i) for i in class_ids]
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            prob = d[key]
            if prob.shape[0] != len(self.class_ids):
                raise ValueError(f"{key} has {prob.shape[0]} channels, {len(self.class_ids)} class ids given")
            best, index = prob.max(dim=0, keepdim=True)
            ids = torch.as_tensor(self.class_ids, dtype=prob.dtype, device=prob.device)[index]
            label = torch.where(best >= self.threshold, ids, torch.zeros_like(ids))
            d[key] = label  # a MetaTensor stays one (its applied operations are what Invertd reverses)
        return d


def channel_class_ids(channels: Mapping[str, Sequence[int]], class_mode: str = "binary") -> list[int]:
    """The id written for each output channel: 1 for the one binary channel, the class id per class."""
    if class_mode == "binary":
        return [1] * len(channels)
    return [ids[0] for ids in channels.values()]
