"""configs/metadata.json of an exported task bundle: the repository's metadata (versions, authors, licence) with the
task's own name, description and network_data_format. MONAI Label reads the first input and output of
network_data_format and takes its labels from `outputs.pred.channel_def` minus "background"."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEPT = (
    "schema",
    "version",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "authors",
    "copyright",
    "data_license",
    "intended_use",
    "references",
)
TASK_TEXT = {
    "segmentation": "U-Net segmentation of frontal chest radiographs over a CM-CGNS-pretrained image encoder",
    "classification": "Classification of frontal chest radiographs by a head over a CM-CGNS-pretrained image encoder",
    "detection": "RetinaNet detection of findings on frontal chest radiographs over a CM-CGNS-pretrained encoder",
}


def _image_input(side: int) -> dict:
    return {
        "type": "image",
        "format": "magnitude",
        "modality": "CR/DX",
        "num_channels": 1,
        "spatial_shape": [side, side],
        "dtype": "float32",
        "value_range": [-1, 1],
        "is_patch_data": False,
        "channel_def": {"0": "image"},
        "description": "one-channel frontal radiograph, long side resized keeping the aspect ratio, zero-padded to "
        f"a {side}x{side} square, intensities in [-1, 1] (the bundle's preprocessing does all of it)",
    }


def _output(task: str, labels: Sequence[str], side: int, extra: dict) -> dict:
    names = list(labels)
    if task == "segmentation":
        return {
            "type": "image",
            "format": "segmentation",
            "num_channels": len(names),
            "spatial_shape": [side, side],
            "dtype": "float32",
            "value_range": [],
            "is_patch_data": False,
            "channel_def": {"0": "background", **{str(i + 1): n for i, n in enumerate(names)}},
            "description": "network: one logit channel per class (sigmoid); the postprocessing writes a label map of "
            "class ids (channel_def keys, 0 background) at the original image size",
        }
    if task == "classification":
        return {
            "type": "probabilities",
            "format": "classes",
            "num_channels": len(names),
            "spatial_shape": [1],
            "dtype": "float32",
            "value_range": [0, 1],
            "is_patch_data": False,
            "channel_def": {str(i): n for i, n in enumerate(names)},
            "description": f"network: one logit per class; the postprocessing gives {extra['activation']} "
            f"probabilities ({extra['classification_task']} task)",
        }
    return {
        "type": "object",
        "format": "bounding box",
        "num_channels": len(names) + 4,
        "spatial_shape": ["*"],
        "dtype": "float32",
        "value_range": [],
        "is_patch_data": False,
        "channel_def": {str(i): n for i, n in enumerate(names)},
        "description": "the network (net id `head_outputs`, also model.ts / model.onnx) returns [B, num_classes + 4, "
        "N]: per anchor (levels stride 8, 16, 32; row, column, anchor order) the class logits then the 4 box "
        "regression deltas; the detector (`detector`) decodes them against the anchors, keeps boxes by score and "
        "NMS and returns `box` [x1, y1, x2, y2] in pixels of the original image, `label` (channel_def keys) and "
        "`label_scores`",
    }


def task_metadata(task: str, dataset: str, labels: Sequence[str], side: int, extra: dict | None = None) -> dict:
    base = json.loads((ROOT / "metadata.json").read_text())
    meta = {k: base[k] for k in KEPT if k in base}
    extra = dict(extra or {})
    meta.update(
        changelog={meta["version"]: f"exported by scripts/export_bundle.py from CM-CGNS {meta['version']}"},
        required_packages_version={
            k: v for k, v in base.get("required_packages_version", {}).items() if k in ("pytorch-ignite", "pillow")
        },
        name=f"cxr_{dataset}_{task}",
        task=TASK_TEXT[task],
        description=f"{TASK_TEXT[task]} ({dataset} classes: {', '.join(labels)}). Exported from the CM-CGNS bundle "
        "with scripts/export_bundle.py; standalone (its code is in scripts/).",
        data_source=f"{dataset} (see the CM-CGNS bundle's docs/datasets.md)",
        data_type="png, jpg, dicom, nifti 2D radiographs",
        image_classes="one channel frontal chest radiograph",
        label_classes=", ".join(labels),
        pred_classes=", ".join(labels),
        eval_metrics=extra.pop("eval_metrics", {}),
        network_data_format={
            "inputs": {"image": _image_input(side)},
            "outputs": {"pred": _output(task, labels, side, extra)},
        },
    )
    return meta
