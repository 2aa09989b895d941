"""Two CPU processes (gloo) with torchrun and configs/multi_gpu_pretrain.yaml: both ranks end with identical parameters
and k-means centroids, and only rank 0 writes logs, history and checkpoints."""

from __future__ import annotations

import os

import pytest
import torch
from test_pretrain_fixtures import ROOT, tiny_dataset, tiny_overrides, tiny_text_model, write_override_file  # noqa: F401
from torchrun_bundle import torchrun_bundle

from bundle.engines.progress import read_history

# each rank saves its own final state so the test can compare them (test-only finalize step)
SAVE_EACH_RANK = (
    "$torch.save({k: v.detach().cpu() for k, v in engine_dist.unwrap_model(@network).state_dict().items()}"
    ", @ckpt_dir + '/rank' + str(engine_dist.get_rank()) + '.pt')"
)


@pytest.mark.slow
def test_two_gloo_processes_stay_synchronised(tmp_path, tiny_dataset, tiny_text_model):  # noqa: F811
    overrides = tiny_overrides(tiny_dataset, tiny_text_model, tmp_path)
    # 12 training items: 6 per rank, batch 2 per rank -> 3 iterations per epoch, a global batch of 4
    # DDP would copy rank 0's buffers at every forward and hide unsynchronised centroids; the tiny ViT has no
    # BatchNorm, so without that copy equal centroids can only come from the model's own synchronisation
    overrides.update(
        {
            "batch_size": 2,
            "val_batch_size": 2,
            "network#broadcast_buffers": False,
            "finalize": [SAVE_EACH_RANK, "$engine_dist.destroy_distributed()"],
        }
    )
    override_file = write_override_file(tmp_path / "tiny.yaml", overrides)
    torchrun_bundle(
        [ROOT / "configs" / "pretrain.yaml", ROOT / "configs" / "multi_gpu_pretrain.yaml", override_file], timeout=240
    )

    models = tmp_path / "models"
    rank0 = torch.load(models / "rank0.pt", weights_only=True)
    rank1 = torch.load(models / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    differing = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    assert differing == [], f"ranks disagree on {differing[:5]}"
    assert bool(rank0["report_loss.state.initialized"]) and int(rank0["stage"]) == 2
    assert rank0["report_loss.state.centroids"].abs().sum() > 0

    # rank 0 alone wrote the run's files: one history line per iteration, TensorBoard files of one process
    # (the trainer's and the evaluator's writer; the file name ends with host.pid.n)
    train_records, val_records = read_history(str(tmp_path / "runs" / "history.jsonl"))
    lines = (tmp_path / "runs" / "history.jsonl").read_text().splitlines()
    assert [r["iteration"] for r in train_records] == [1, 2, 3, 4, 5, 6] and len(lines) == 6 + 2
    event_files = [f for f in os.listdir(tmp_path / "runs") if f.startswith("events.out.tfevents")]
    assert event_files and len({f.split(".")[-2] for f in event_files}) == 1, event_files
    assert val_records[-1]["val_chance_top1"] == pytest.approx(1 / 4)  # candidates are gathered from both ranks
    last = torch.load(models / "last.pt", weights_only=True)
    assert len(last["rng"]["per_rank"]) == 2 and last["trainer"]["iteration"] == 6
    assert (models / "image_encoder.pt").is_file()
