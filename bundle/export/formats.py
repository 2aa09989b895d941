"""models/model.ts and models/model.onnx of an exported bundle, each checked against the PyTorch network.

Both come from MONAI's own exporters (monai.bundle ckpt_export / onnx_export) by tracing `net_id` at the metadata's
input shape: the bundle's networks hold Python-side checks (input size, frozen encoder under no_grad) that
TorchScript scripting cannot compile, and tracing records exactly the tensor program a fixed-size input runs.
The check feeds the same random inputs to the eager network (weights from models/model.pt), the TorchScript module
and an onnxruntime session, and fails with the largest difference when it exceeds the tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser, ckpt_export, onnx_export

TS_TOLERANCE = 1e-4
ONNX_TOLERANCE = 1e-3


class ExportCheckError(RuntimeError):
    """An exported format does not reproduce the PyTorch network's outputs."""


def _largest_difference(a: torch.Tensor, b: torch.Tensor, name: str) -> float:
    if a.shape != b.shape:
        raise ExportCheckError(f"{name}: output shape {tuple(b.shape)}, PyTorch gives {tuple(a.shape)}")
    return float((a - b).abs().max())


def export_formats(
    bundle_dir: Path, net_id: str, ckpt_file: Path, input_shape: list[int], onnx: bool = True
) -> dict[str, float]:
    """Write models/model.ts (and model.onnx) from `net_id` with weights `ckpt_file`; returns the largest
    difference to PyTorch per format. Call inside exported_bundle_on_path(bundle_dir)."""
    configs = bundle_dir / "configs"
    common = dict(
        net_id=net_id,
        ckpt_file=str(ckpt_file),
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.yaml"),
        key_in_ckpt="model",
        use_trace=True,
        input_shape=list(input_shape),
        bundle_root=str(bundle_dir),
    )
    models = bundle_dir / "models"
    ckpt_export(filepath=str(models / "model.ts"), **common)
    if onnx:
        onnx_export(filepath=str(models / "model.onnx"), **common)
    return check_formats(bundle_dir, net_id, ckpt_file, input_shape, onnx)


def check_formats(
    bundle_dir: Path, net_id: str, ckpt_file: Path, input_shape: list[int], onnx: bool = True, seed: int = 0
) -> dict[str, float]:
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(bundle_dir)
    net = parser.get_parsed_content(net_id, instantiate=True)
    net.load_state_dict(torch.load(ckpt_file, map_location="cpu", weights_only=True)["model"])
    net.eval()
    inputs = torch.rand(input_shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.no_grad():
        expected = net(inputs)
        scripted = torch.jit.load(str(bundle_dir / "models" / "model.ts"), map_location="cpu")
        found = {"torchscript": _largest_difference(expected, scripted(inputs), "model.ts")}
    if onnx:
        import onnxruntime

        session = onnxruntime.InferenceSession(
            str(bundle_dir / "models" / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name
        out = session.run(None, {name: inputs.numpy().astype(np.float32)})[0]
        found["onnx"] = _largest_difference(expected, torch.from_numpy(out), "model.onnx")
    limits = {"torchscript": TS_TOLERANCE, "onnx": ONNX_TOLERANCE}
    scale = max(float(expected.abs().max()), 1.0)
    for fmt, diff in found.items():
        if diff > limits[fmt] * scale:
            raise ExportCheckError(
                f"{fmt}: largest difference to PyTorch {diff:.3g} exceeds {limits[fmt]:g} x {scale:.3g} "
                f"(network {net_id}, input {list(input_shape)})"
            )
    return found
