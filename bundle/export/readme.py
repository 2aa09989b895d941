"""docs/README.md of an exported task bundle (model-zoo sections, short): what it does, its files, its commands."""

from __future__ import annotations

FORMATS = {
    "segmentation": "models/model.pt (state dict), models/model.ts (TorchScript, traced) and models/model.onnx: the "
    "whole U-Net, logits [B, C, H, W]",
    "classification": "models/model.pt (state dict with the task and class names), models/model.ts (TorchScript, "
    "traced) and models/model.onnx: encoder and head, logits [B, C]",
    "detection": "models/model.pt (the whole RetinaNet) for the detector; models/model.ts and models/model.onnx hold "
    "the network's head outputs only (`head_outputs`, [B, C + 4, N]): anchor decoding, score selection and NMS are "
    "Python over variable-size box lists, which neither format captures, so they stay with the bundle's `detector`",
}


def bundle_readme(settings, meta: dict, onnx: bool = True) -> str:
    s = settings
    out = meta["network_data_format"]["outputs"]["pred"]
    side = meta["network_data_format"]["inputs"]["image"]["spatial_shape"][0]
    formats = FORMATS[s.task] if onnx else FORMATS[s.task].replace(" and models/model.onnx", "")
    return f"""# {s.name}

{meta["task"]}. Exported from the CM-CGNS bundle by `scripts/export_bundle.py`; standalone: the code its configs
use is in `scripts/` (MONAI Label puts the bundle folder on `sys.path`).

## Model
- Encoder: {s.encoder_name} (pretrained by CM-CGNS, built for {s.encoder_image_size} px crops), task: {s.task}.
- Classes: {", ".join(s.labels)} (`channel_def` in configs/metadata.json).
- Input: one-channel radiograph (PNG / JPG / DICOM / NIfTI), preprocessed to {side}x{side} in [-1, 1].
- Output: {out["description"]}.
- Formats: {formats}.

## Commands (from this folder, PYTHONPATH=.)
    python -m monai.bundle run --config_file configs/inference.yaml --meta_file configs/metadata.json \\
        {"--input_dir DIR" if s.task == "detection" else "--image_path FILE_OR_DIR"}
    python -m monai.bundle run --config_file configs/train.yaml --meta_file configs/metadata.json \\
        --dataset_dir DIR  # DIR/manifests/{s.task}.json, the CM-CGNS manifest format
    torchrun --nproc_per_node=2 -m monai.bundle run \\
        --config_file "['configs/train.yaml','configs/multi_gpu_train.yaml']" --meta_file configs/metadata.json
    python -m monai.bundle verify_net_in_out --net_id {"head_outputs" if s.task == "detection" else "network_def"} \\
        --config_file configs/inference.yaml --meta_file configs/metadata.json

MONAI Label: copy this folder to `<app>/model/{s.name}` and start the server with `--conf models {s.name}`
(the CM-CGNS bundle's docs/monai_label.md).

## Limitations
Research code, not a medical device. See the CM-CGNS bundle's docs for data, training protocol and results.
"""
