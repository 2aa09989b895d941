"""configs/inference.yaml: embed radiographs with the pretrained image encoder (models/image_encoder.pt).

Inputs are a folder of images (PNG/JPG/DICOM/NIfTI, searched recursively, sorted by path) or a split of a manifest.
Output: OUTPUT_DIR/embeddings.pt with `ids`, `image_global` [N, F] and `image_tokens` [N, P, F] (the encoder's own
features, before the pretraining projections: what downstream heads see), and OUTPUT_DIR/embeddings.csv mapping each
row to its id and file.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from bundle.data.manifest import load_manifest
from bundle.engines.checkpointing import atomic_torch_save
from bundle.networks.torchvision_resnet_weights import read_state_dict

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".nii", ".nii.gz")


def image_items(input_dir: str | None = None, manifest: str | None = None, split: str = "test", dataset_dir=None):
    """[{"image": path, "id": ...}] from a folder (id: the path below it) or from a manifest split (its ids)."""
    if bool(input_dir) == bool(manifest):
        raise ValueError("give exactly one of input_dir (a folder of images) and manifest (with its split)")
    if manifest:
        return [{"image": r["image"], "id": r["id"]} for r in load_manifest(manifest, split, dataset_dir=dataset_dir)]
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input_dir {root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no image ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return [{"image": str(p), "id": str(p.relative_to(root))} for p in files]


class GlobalEmbedding(nn.Module):
    """The encoder's global vector alone ([B, F]): a single-tensor network for `monai.bundle verify_net_in_out`."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image)[1]


def load_image_encoder(encoder: nn.Module, checkpoint: str | os.PathLike) -> nn.Module:
    """image_encoder.pt into `encoder`, every key checked (a pretraining model.pt is accepted too: its
    image_encoder.* keys are used)."""
    state = read_state_dict(checkpoint)
    if any(k.startswith("image_encoder.") for k in state):
        state = {k[len("image_encoder.") :]: v for k, v in state.items() if k.startswith("image_encoder.")}
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{checkpoint} does not fit the configured image encoder: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]} (another encoder name or size?)"
        )
    return encoder.eval()


@torch.no_grad()
def write_embeddings(encoder: nn.Module, loader: Iterable, output_dir: str | os.PathLike, device="cpu") -> dict:
    encoder.eval()
    ids, files, globals_, tokens = [], [], [], []
    start, last = time.perf_counter(), 0.0
    for batch in loader:
        image = batch["image"]
        image = (image.as_tensor() if hasattr(image, "as_tensor") else image).to(device=device, dtype=torch.float32)
        local, global_ = encoder(image)
        globals_.append(global_.float().cpu())
        tokens.append(local.float().cpu())
        ids += list(batch["id"])
        files += [str(f) for f in batch["image"].meta.get("filename_or_obj", [""] * len(image))]
        if time.perf_counter() - last > 10:
            rate = len(ids) / (time.perf_counter() - start)
            logger.info("embedded %d images (%.1f images/s)", len(ids), rate)
            last = time.perf_counter()
    out = {"ids": ids, "image_global": torch.cat(globals_), "image_tokens": torch.cat(tokens)}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(out, str(output_dir / "embeddings.pt"))
    with open(output_dir / "embeddings.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "id", "file"])
        writer.writerows((i, id_, f) for i, (id_, f) in enumerate(zip(ids, files)))
    logger.info(
        "wrote %s: %d images, global %s, tokens %s", output_dir / "embeddings.pt", len(ids),
        tuple(out["image_global"].shape), tuple(out["image_tokens"].shape),
    )  # fmt: skip
    return {"images": len(ids), "output_dir": str(output_dir)}
