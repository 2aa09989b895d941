"""Tiny downstream checkpoints of each task (random ResNet-18 networks, saved as the training runs save them) and
the export settings that match them: tests/test_export_bundle.py and tests/test_monai_label_server.py."""

from __future__ import annotations

from pathlib import Path

import torch

ENCODER = {"encoder_name": "resnet18", "encoder_image_size": 64, "num_workers": 0}
LABELS = {"segmentation": ["finding"], "classification": ["effusion", "opacity"], "detection": ["opacity", "nodule"]}


def tiny_checkpoints(folder: Path) -> dict[str, Path]:
    """Random-weight ResNet-18 networks of each task, saved as the training runs save them."""
    from bundle.downstream.classifier import EncoderClassifier
    from bundle.downstream.detection_network import EncoderRetinaNet
    from bundle.downstream.encoder_loading import build_downstream_encoder
    from bundle.downstream.segmentation_network import EncoderUNet

    def encoder():
        return build_downstream_encoder("random", None, "resnet18", 1, 64)

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {task: folder / f"{task}.pt" for task in LABELS}
    seg = EncoderUNet(encoder(), num_classes=1, decoder_channels=[16, 16, 8, 8, 8]).eval()
    with torch.no_grad():  # centre the logits so that the random network's masks are neither empty nor full
        seg.decoder.head[0].bias -= seg(torch.rand(1, 1, 64, 64) * 2 - 1).median()
    torch.save({"model": seg.state_dict()}, paths["segmentation"])
    cls = EncoderClassifier(encoder(), num_classes=2)
    meta = {"task": "multilabel", "class_names": LABELS["classification"]}
    torch.save({"model": cls.state_dict(), "downstream_meta": meta}, paths["classification"])
    det = EncoderRetinaNet(encoder(), num_classes=2, fpn_channels=16)
    with torch.no_grad():  # scores near 0.5 instead of RetinaNet's 0.01 prior, so that boxes pass the threshold
        det.classification_head.cls_logits.bias.zero_()
    torch.save({"model": det.state_dict()}, paths["detection"])
    return paths


def settings(task: str):
    from bundle.export.exporter import ExportSettings

    extra = {"segmentation": {"decoder_channels": [16, 16, 8, 8, 8]}, "detection": {"fpn_channels": 16}}
    size = {"image_size": 72, "crop_size": 64} if task == "classification" else {"image_size": 64}
    return ExportSettings(task=task, labels=LABELS[task], onnx=False, **ENCODER, **size, **extra.get(task, {}))
