"""Export a trained downstream checkpoint as a standalone MONAI bundle folder `cxr_<dataset>_<task>` (the name tells
MONAI Label the task type): configs (inference, train, multi_gpu_train, metadata, logging), the code in scripts/,
models/model.pt, model.ts and model.onnx (checked against PyTorch), docs/README.md and LICENSE."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from bundle.export import checkpoint_check, code_copy, formats, task_configs
from bundle.export.bundle_path import exported_bundle_on_path
from bundle.export.metadata import task_metadata
from bundle.export.readme import bundle_readme

ROOT = Path(__file__).resolve().parents[2]
HEADER = (
    "# Exported by scripts/export_bundle.py from the CM-CGNS bundle ({source}), derived from its\n"
    "# {derived}. Code targets live in this bundle's scripts/ package (MONAI Label puts\n"
    "# the bundle folder on sys.path). From the bundle folder:\n"
    "#   python -m monai.bundle run --config_file configs/{name} --meta_file configs/metadata.json\n"
)


@dataclasses.dataclass
class ExportSettings:
    task: str
    labels: list[str]
    dataset: str = "demo"
    encoder_name: str = "resnet50"
    encoder_image_size: int = 224
    image_size: int = 224  # segmentation / detection input side; classification: the resize before the crop
    num_workers: int = 2
    decoder_channels: list[int] = dataclasses.field(default_factory=lambda: [256, 128, 64, 32, 16])
    classification_task: str = "multilabel"
    crop_size: int = 224
    pooling: str = "avg"
    fpn_channels: int = 256
    anchor_base: float = 2.0
    anchor_aspect_ratios: list[float] = dataclasses.field(default_factory=lambda: [0.5, 1.0, 2.0])
    source_class_ids: list[int] | None = None
    onnx: bool = True

    @property
    def name(self) -> str:
        return f"cxr_{self.dataset}_{self.task}"


def _task_values(s: ExportSettings) -> tuple[dict, dict, str, int, dict]:
    """(inference ids, train ids, net id to export / verify, input side, metadata extras) of the task."""
    n = len(s.labels)
    encoder = {"encoder_name": s.encoder_name, "encoder_image_size": s.encoder_image_size, "num_workers": s.num_workers}
    if s.task == "segmentation":
        net = {**encoder, "image_size": s.image_size, "decoder_channels": list(s.decoder_channels)}
        infer = {**net, "class_ids": list(range(1, n + 1)), "checkpoint": "$@ckpt_dir + '/model.pt'"}
        infer["output_dir"] = "$@bundle_root + '/eval'"
        train = {
            **net,
            "crop_size": s.image_size,
            "class_mode": "binary" if n == 1 else "per_class",
            "channels": {name: [i + 1] for i, name in enumerate(s.labels)},
            "mask_values": list(range(1, n + 1)),
        }
        return infer, train, "network_def", s.image_size, {}
    if s.task == "classification":
        net = {
            **encoder,
            "task": s.classification_task,
            "class_names": list(s.labels),
            "image_size": s.image_size,
            "crop_size": s.crop_size,
            "pooling": s.pooling,
        }
        infer = {**net, "checkpoint": "$@ckpt_dir + '/model.pt'", "output_dir": "$@bundle_root + '/eval'"}
        activation = "softmax" if s.classification_task == "multiclass" else "sigmoid"
        extra = {"activation": activation, "classification_task": s.classification_task}
        return infer, net, "network_def", s.crop_size, extra
    net = {
        **encoder,
        "class_names": list(s.labels),
        "detection_image_size": s.image_size,
        "fpn_channels": s.fpn_channels,
        "anchor_base": s.anchor_base,
        "anchor_aspect_ratios": list(s.anchor_aspect_ratios),
    }
    infer = {
        **net,
        "ckpt_file": "$@ckpt_dir + '/model.pt'",
        "output_dir": "$@bundle_root + '/eval'",
        "input_dir": "$@bundle_root + '/images'",
        "head_outputs": {"_target_": "bundle.downstream.detection_network.DetectionHeadOutputs", "network": "@network"},
    }
    train = {**net, "source_class_ids": list(s.source_class_ids or range(n))}
    return infer, train, "head_outputs", s.image_size, {}


def _write_yaml(config: dict, path: Path, derived: str, source: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    ConfigParser.export_config_file(config, str(path), fmt="yaml", sort_keys=False, width=120, default_flow_style=None)
    text = HEADER.format(source=source, derived=derived, name=path.name) + path.read_text()
    path.write_text(text)
    return text


def _prepare_out(out: Path) -> None:
    if out.exists():
        if any(out.iterdir()) and not (out / "configs" / "metadata.json").is_file():
            raise FileExistsError(f"{out} exists and is not an exported bundle: choose another --out")
        shutil.rmtree(out)
    (out / "models").mkdir(parents=True)


def _network_checkpoint(s: ExportSettings, out: Path, checkpoint: Path, net_id: str) -> Path:
    """Check `checkpoint` against the exported network; write models/model.pt; return the file for `net_id`."""
    state, meta = checkpoint_check.read_checkpoint(str(checkpoint))
    parser = ConfigParser()
    parser.read_config(str(out / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(out)
    network = parser.get_parsed_content("network_def", instantiate=True)
    if s.task == "classification":
        checkpoint_check.check_task(meta.get("task"), s.classification_task, str(checkpoint))
        checkpoint_check.check_classes(meta.get("class_names"), s.labels, str(checkpoint))
    checkpoint_check.check_state_dict(network, state, str(checkpoint), s.task, s.labels)
    saved = {"model": state}
    if meta:
        saved["downstream_meta"] = meta
    torch.save(saved, out / "models" / "model.pt")
    if net_id == "network_def":
        return out / "models" / "model.pt"
    # the exported wrapper holds the network as `network.`: a prefixed copy of the weights for the exporters
    prefixed = Path(tempfile.mkdtemp()) / "model.pt"
    torch.save({"model": {f"network.{k}": v for k, v in state.items()}}, prefixed)
    return prefixed


def export_bundle(settings: ExportSettings, checkpoint: str | Path, out_dir: str | Path) -> dict:
    """Write the bundle under out_dir/<settings.name>; returns {"path", "modules", "differences"}."""
    s, checkpoint = settings, Path(checkpoint)
    if s.task not in task_configs.TASKS:
        raise ValueError(f"unknown task {s.task!r}; choose one of {task_configs.TASKS}")
    if not s.labels:
        raise ValueError("name the classes (--labels): MONAI Label shows them and the configs need their number")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    out = Path(out_dir) / s.name
    _prepare_out(out)
    infer_values, train_values, net_id, side, extra = _task_values(s)
    infer_file = f"inference_{s.task}.yaml"
    texts = [
        _write_yaml(
            task_configs.inference_config(s.task, infer_values),
            out / "configs" / "inference.yaml",
            f"configs/common.yaml + configs/{infer_file}",
            checkpoint.name,
        ),
        _write_yaml(
            task_configs.train_config(s.task, train_values),
            out / "configs" / "train.yaml",
            f"configs/common.yaml + configs/{s.task}.yaml",
            checkpoint.name,
        ),
        _write_yaml(
            task_configs.multi_gpu_config(s.task),
            out / "configs" / "multi_gpu_train.yaml",
            f"configs/multi_gpu_{s.task}.yaml",
            checkpoint.name,
        ),
    ]
    modules = code_copy.copy_code(texts, out)
    meta = task_metadata(s.task, s.dataset, s.labels, side, extra)
    ConfigParser.export_config_file(meta, str(out / "configs" / "metadata.json"), indent=4)
    shutil.copy(ROOT / "configs" / "logging.conf", out / "configs" / "logging.conf")
    shutil.copy(ROOT / "LICENSE", out / "LICENSE")
    (out / "docs").mkdir()
    (out / "docs" / "README.md").write_text(bundle_readme(s, meta, onnx=s.onnx))
    with exported_bundle_on_path(out):
        net_checkpoint = _network_checkpoint(s, out, checkpoint, net_id)
        differences = formats.export_formats(out, net_id, net_checkpoint, [1, 1, side, side], onnx=s.onnx)
    if net_checkpoint.parent != out / "models":
        shutil.rmtree(net_checkpoint.parent)
    return {"path": out, "modules": modules, "differences": differences, "net_id": net_id}
