"""The stage switch under two gloo processes: stage 2 starts from stage1_best.pt on EVERY rank, although only rank 0
reads the file (the handler loads it on rank 0 and broadcasts; a rank that kept its last stage-1 weights would
train another model from then on), and every rank's host-cached k-means flag follows the weights it received (a
best checkpoint written before the k-means start, loaded into ranks whose k-means state had started since). Rank 0
also decides whether the file exists: a rank that cannot see it (a node-local checkpoint folder) follows rank 0
instead of leaving the others waiting in the broadcast."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bundle.engines.stage_schedule import StageScheduleHandler
from bundle.losses.cluster_state import KMeansClusterState

WORLD = 2


class TwoStageModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 2)
        self.kmeans = KMeansClusterState(num_clusters=2, dim=3)
        self.register_buffer("stage", torch.tensor(1))

    def set_stage(self, stage: int) -> None:
        self.stage.fill_(stage)


def worker(rank: int, init_file: str, out_dir: str, blind_rank: int | None = None):
    torch.set_num_threads(1)
    # a short timeout: a rank left alone in a collective fails the test instead of hanging it
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        model = TwoStageModel()
        with torch.no_grad():
            model.layer.weight.fill_(-1.0)  # the last stage-1 weights, the same on both ranks (DDP keeps them so)
            model.layer.bias.fill_(-1.0)
            model.kmeans.initialized.fill_(True)  # the k-means state started after the best epoch
        assert model.kmeans.is_initialized  # and the flag is now cached on the host
        best = f"{out_dir}/stage1_best.pt"
        if rank == 0:
            best_state = {
                k: torch.full_like(v, 7.0) if v.is_floating_point() else v for k, v in model.state_dict().items()
            }
            best_state["kmeans.initialized"] = torch.tensor(False)
            torch.save({"model": best_state}, best)
        dist.barrier()
        if rank == blind_rank:  # this rank's view of the folder does not hold the file
            best = f"{out_dir}/not_visible_here/stage1_best.pt"
        handler = StageScheduleHandler(
            model, torch.optim.Adam(model.parameters()), 1, 1, out_dir, best_checkpoint=best, stage2_init="best"
        )
        handler.switch_to_stage2()
        torch.save(
            {**model.state_dict(), "kmeans_flag_on_host": model.kmeans.is_initialized}, f"{out_dir}/rank{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("blind_rank", [None, 1], ids=["every rank sees the file", "rank 1 does not"])
def test_both_ranks_start_stage2_from_the_best_stage1_checkpoint(tmp_path, blind_rank):
    mp.spawn(worker, args=(str(tmp_path / "rendezvous"), str(tmp_path), blind_rank), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.all(state["layer.weight"] == 7.0) and torch.all(state["layer.bias"] == 7.0), rank
        assert int(state["stage"]) == 2, rank
        # the buffer came from the checkpoint, and the host cache agrees with it (else this rank would skip the
        # k-means start that the other ranks go through, and their collectives would no longer match)
        assert not bool(state["kmeans.initialized"]) and state["kmeans_flag_on_host"] is False, rank


def test_when_rank_0_does_not_see_the_file_every_rank_keeps_its_last_weights(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "rendezvous"), str(tmp_path), 0), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.all(state["layer.weight"] == -1.0) and torch.all(state["layer.bias"] == -1.0), rank
        assert int(state["stage"]) == 2 and state["kmeans_flag_on_host"] is True, rank
