"""The model-zoo checks every exported bundle passes: verify_metadata (the repository's local schema: offline),
verify_net_in_out on the exported network id, and ConfigWorkflow.check_properties for train and infer (the ids
MONAI Label and MONAI's bundle tools rely on). Raises on the first failure; returns what passed."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from monai.bundle import ConfigWorkflow, verify_metadata, verify_net_in_out

from bundle.export.bundle_path import exported_bundle_on_path
from bundle.export.sample_data import sample_items

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "configs" / "schema" / "metadata_schema.json"


class BundleCheckError(AssertionError):
    """An exported bundle fails a model-zoo check."""


def workflow(bundle_dir: Path, workflow_type: str, **overrides) -> ConfigWorkflow:
    """An initialised ConfigWorkflow of the exported train or inference config (check_properties needs one)."""
    config = "train.yaml" if workflow_type == "train" else "inference.yaml"
    wf = ConfigWorkflow(
        config_file=str(bundle_dir / "configs" / config),
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        logging_file=str(bundle_dir / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(bundle_dir),
        **overrides,
    )
    wf.initialize()
    return wf


def datastore_overrides(bundle_dir: Path, folder: str | Path) -> dict:
    """train#dataset#data / validate#dataset#data as MONAI Label sets them, from synthetic items of the task."""
    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    task = bundle_dir.name.rsplit("_", 1)[-1]
    labels = [v for v in meta["network_data_format"]["outputs"]["pred"]["channel_def"].values() if v != "background"]
    items = sample_items(task, len(labels), folder)
    return {"train#dataset#data": items, "validate#dataset#data": items, "num_workers": 0}


def inference_overrides(bundle_dir: Path, folder: str | Path) -> dict:
    """The inference input (detection: a folder, the others: image_path) set to the synthetic images."""
    return {"input_dir": str(folder)} if bundle_dir.name.endswith("detection") else {"image_path": str(folder)}


def verify_exported(bundle_dir: str | Path, net_id: str) -> dict[str, str]:
    bundle_dir = Path(bundle_dir).resolve()
    meta, inference = bundle_dir / "configs" / "metadata.json", bundle_dir / "configs" / "inference.yaml"
    done = {}
    with exported_bundle_on_path(bundle_dir):
        verify_metadata(meta_file=str(meta), filepath=str(SCHEMA))
        done["verify_metadata"] = "passed"
        verify_net_in_out(
            net_id=net_id, meta_file=str(meta), config_file=str(inference), device="cpu", bundle_root=str(bundle_dir)
        )
        done["verify_net_in_out"] = f"passed ({net_id})"
        with tempfile.TemporaryDirectory() as tmp:
            checked = {"train": workflow(bundle_dir, "train", **datastore_overrides(bundle_dir, tmp))}
            checked["infer"] = workflow(bundle_dir, "infer", **inference_overrides(bundle_dir, tmp))
            reports = {kind: wf.check_properties() for kind, wf in checked.items()}
        for kind, missing in reports.items():
            if missing:
                raise BundleCheckError(f"{bundle_dir.name}: check_properties({kind}) reports {missing}")
            done[f"check_properties {kind}"] = "passed"
    return done
