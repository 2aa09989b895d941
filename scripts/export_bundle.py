"""Export a trained downstream checkpoint as a standalone MONAI bundle that MONAI Label can serve.

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python scripts/export_bundle.py --task segmentation \
        --checkpoint runs/segmentation/model.pt --out exported --dataset siim --labels pneumothorax \
        --encoder_name resnet50 --encoder_image_size 224

writes exported/cxr_siim_segmentation/ (configs, scripts/, models/model.pt|ts|onnx, docs, LICENSE), checks the
checkpoint against the task's network (every key and shape; classification also its stored task and classes),
TorchScript and ONNX against PyTorch, then verify_metadata, verify_net_in_out and check_properties for train and
infer (bundle/export/). docs/monai_label.md serves the result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.export.checks import verify_exported
from bundle.export.exporter import ExportSettings, export_bundle


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=["classification", "segmentation", "detection"])
    p.add_argument("--checkpoint", required=True, help="the training run's model.pt")
    p.add_argument("--out", required=True, help="parent folder; the bundle is OUT/cxr_<dataset>_<task>")
    p.add_argument("--dataset", default="demo", help="dataset name in the bundle's folder name")
    p.add_argument("--labels", nargs="+", required=True, help="class names in output-channel order")
    p.add_argument("--encoder_name", default="resnet50")
    p.add_argument("--encoder_image_size", type=int, default=224, help="the pretraining crop size")
    p.add_argument("--image_size", type=int, default=224, help="network input side (classification: resize side)")
    p.add_argument("--num_workers", type=int, default=2, help="data loader workers of the exported configs")
    p.add_argument("--decoder_channels", type=int, nargs=5, default=[256, 128, 64, 32, 16], help="segmentation")
    p.add_argument("--classification_task", default="multilabel", choices=["multilabel", "binary", "multiclass"])
    p.add_argument("--crop_size", type=int, default=224, help="classification: the centre crop (network input)")
    p.add_argument("--pooling", default="avg", choices=["avg", "global"], help="classification")
    p.add_argument("--fpn_channels", type=int, default=256, help="detection")
    p.add_argument("--anchor_base", type=float, default=2.0, help="detection")
    p.add_argument("--anchor_aspect_ratios", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="detection")
    p.add_argument("--source_class_ids", type=int, nargs="+", help="detection training: manifest box_label ids")
    p.add_argument("--no_onnx", action="store_true", help="skip models/model.onnx")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    settings = ExportSettings(
        task=a.task,
        labels=a.labels,
        dataset=a.dataset,
        encoder_name=a.encoder_name,
        encoder_image_size=a.encoder_image_size,
        image_size=a.image_size,
        num_workers=a.num_workers,
        decoder_channels=a.decoder_channels,
        classification_task=a.classification_task,
        crop_size=a.crop_size,
        pooling=a.pooling,
        fpn_channels=a.fpn_channels,
        anchor_base=a.anchor_base,
        anchor_aspect_ratios=a.anchor_aspect_ratios,
        source_class_ids=a.source_class_ids,
        onnx=not a.no_onnx,
    )
    result = export_bundle(settings, a.checkpoint, a.out)
    print(f"exported {result['path']} ({len(result['modules'])} modules in scripts/)")
    for fmt, diff in result["differences"].items():
        print(f"  {fmt}: largest difference to PyTorch {diff:.3g}")
    for check, outcome in verify_exported(result["path"], result["net_id"]).items():
        print(f"  {check}: {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
