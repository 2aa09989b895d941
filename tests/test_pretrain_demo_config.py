"""configs/demo_pretrain.yaml (what `make demo` runs) parsed and run, tiny: the demo's own encoder, text model and
k-means gate; the exported files are the final stage's best checkpoint, not the last weights."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigWorkflow
from test_pretrain_fixtures import ROOT, tiny_dataset  # noqa: F401

from bundle.engines.progress import read_history

torch.set_num_threads(1)


@pytest.mark.slow
def test_demo_config_runs_and_exports_the_best_stage2_checkpoint(tmp_path, tiny_dataset):  # noqa: F811
    overrides = {
        "dataset_dir": str(tiny_dataset),
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "runs"),
        "demo_train_items": 12,
        "demo_val_items": 4,
        "batch_size": 4,
        "val_batch_size": 4,
        "num_workers": 0,
        "image_size": 48,
        "crop_size": 32,
        "stage1_epochs": 1,
        "stage2_epochs": 2,
    }
    wf = ConfigWorkflow(
        config_file=[str(ROOT / "configs" / "pretrain.yaml"), str(ROOT / "configs" / "demo_pretrain.yaml")],
        meta_file=str(ROOT / "metadata.json"),
        workflow_type="train",
        **overrides,
    )
    wf.initialize()
    network = wf.parser.get_parsed_content("network")
    assert type(network.image_encoder).__name__ == "ResNetImageEncoder" and network.text_encoder.hidden_size == 384
    # the demo's gate: clustering may start after one epoch of steps (12 items // batch 4)
    assert wf.parser.get_parsed_content("network_def#kmeans_start_step") == 3
    wf.run()
    live = {k: v.detach().clone() for k, v in network.state_dict().items()}
    wf.finalize()
    models = tmp_path / "models"
    best = torch.load(models / "stage2_best.pt", weights_only=True)
    best = best.get("model", best)
    exported = torch.load(models / "model.pt", weights_only=True)
    encoder = torch.load(models / "image_encoder.pt", weights_only=True)
    assert exported.keys() == best.keys()
    assert all(torch.equal(exported[k], best[k]) for k in best)
    assert all(torch.equal(encoder[k], best[f"image_encoder.{k}"]) for k in encoder)
    scripted = torch.jit.load(str(models / "image_encoder.ts"))
    image = torch.rand(2, 1, 32, 32) * 2 - 1
    eager = network.image_encoder.eval()
    eager.load_state_dict(encoder)
    with torch.no_grad():
        torch.testing.assert_close(scripted(image)[1], eager(image)[1], atol=1e-5, rtol=1e-4)
    # the export is the best stage-2 epoch by validation loss: equal to the live (last) weights exactly when the last
    # epoch was the best one
    _, val = read_history(str(tmp_path / "runs" / "history.jsonl"))
    stage2 = [r for r in val if r.get("stage") == 2]
    assert len(stage2) == 2
    last_is_best = stage2[-1]["val_loss"] <= min(r["val_loss"] for r in stage2)
    same_as_live = all(torch.equal(live[k], best[k]) for k in best if k in live)
    assert same_as_live == last_is_best


def test_demo_subsets_follow_the_subset_seed_which_defaults_to_the_run_seed(tiny_dataset):  # noqa: F811
    from monai.bundle import ConfigParser

    def subsets(**overrides):
        parser = ConfigParser()
        parser.read_config([str(ROOT / "configs" / "pretrain.yaml"), str(ROOT / "configs" / "demo_pretrain.yaml")])
        parser.update({"dataset_dir": str(tiny_dataset), "demo_train_items": 6, "demo_val_items": 2, **overrides})
        return tuple(
            tuple(it["id"] for it in parser.get_parsed_content(k)) for k in ("train#datalist", "validate#datalist")
        )

    draws = {seed: subsets(seed=seed) for seed in range(6)}
    assert len(set(draws.values())) > 1  # the tiny split (12 pairs) gives different subsets for different seeds
    other = next(s for s in draws if draws[s] != draws[0])
    assert subsets(seed=0, demo_subset_seed=other) == draws[other]  # the data of `other`, the initialisation of 0
    assert all(len(train) == 6 and len(val) == 2 for train, val in draws.values())
