"""Two gloo processes against one process with the concatenated batch (method.md 4.1 and 4.4).

Must match: the global loss (mean over ranks = the single-process loss; gradients reach the other rank's rows), and
the synchronised centroids (update and initialisation). With sync_centroids=False (published) they drift apart.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from bundle.losses.cluster_report_loss import ClusterGuidedReportLoss
from bundle.losses.cluster_state import KMeansClusterState
from bundle.losses.global_contrastive import GlobalContrastiveLoss

WORLD = 2
D = 8


def make_data():
    g = torch.Generator().manual_seed(11)
    return {
        "image": F.normalize(torch.randn(8, D, generator=g), dim=-1),
        "text": F.normalize(torch.randn(8, D, generator=g), dim=-1),
        "z2": F.normalize(torch.randn(14, D, generator=g), dim=-1),
        "centroids": F.normalize(torch.randn(4, D, generator=g), dim=-1),
        "bank": [F.normalize(torch.randn(12, D, generator=g), dim=-1) for _ in range(2)],
    }


# Rows of each rank: equal halves for the global loss, unequal splits elsewhere (batches may differ in size).
EQUAL = [slice(0, 4), slice(4, 8)]
UNEQUAL_GLOBAL = [slice(0, 3), slice(3, 8)]
Z2_SPLIT = [slice(0, 5), slice(5, 14)]
BANK_SPLIT = [slice(0, 7), slice(7, 12)]


def global_loss_and_grads(image, text):
    image, text = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
    out = GlobalContrastiveLoss(0.1)(image, text)
    out["loss"].backward()
    return out["loss"].detach(), image.grad, text.grad


def cluster_results(data, pick_z2, pick_bank, synchronize):
    results = {}
    for mode in ("mean", "sum"):
        state = KMeansClusterState(num_clusters=4, dim=D, lr=0.1, update_mode=mode, synchronize=synchronize)
        state.centroids.copy_(data["centroids"])
        state.update(pick_z2(data["z2"]))
        results[f"update_{mode}"] = state.centroids.clone()
    greedy = KMeansClusterState(num_clusters=4, dim=D, init_method="greedy", seed=5, synchronize=synchronize)
    greedy.observe_and_maybe_initialise(pick_z2(data["z2"]), gate_open=True)
    results["init_greedy"] = greedy.centroids.clone()
    faiss_state = KMeansClusterState(num_clusters=4, dim=D, init_method="faiss", seed=5, synchronize=synchronize)
    faiss_state.observe_and_maybe_initialise(pick_bank(data["bank"][0]), gate_open=False)
    faiss_state.observe_and_maybe_initialise(pick_bank(data["bank"][1]), gate_open=True)
    results["init_faiss"] = faiss_state.centroids.clone()
    return results


def gate_values(c: torch.Tensor) -> dict:
    """The k-means start gate's value (mean cosine) of one rank's similarity matrix, synchronised or not."""
    return {
        sync: ClusterGuidedReportLoss(embed_dim=D, num_clusters=4, temperature=0.1, sync_centroids=sync)._gate_value(c)
        for sync in (True, False)
    }


# a 3 x 3 and a 5 x 5 block of cosine / temperature values: the ranks see different batches
GATE_C = [torch.full((3, 3), 2.0), torch.full((5, 5), 6.0)]


def worker(rank: int, init_file: str, out_dir: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        data = make_data()
        out = {}
        out["equal"] = global_loss_and_grads(data["image"][EQUAL[rank]], data["text"][EQUAL[rank]])
        out["unequal"] = global_loss_and_grads(data["image"][UNEQUAL_GLOBAL[rank]], data["text"][UNEQUAL_GLOBAL[rank]])
        out["sync"] = cluster_results(data, lambda z: z[Z2_SPLIT[rank]], lambda z: z[BANK_SPLIT[rank]], True)
        out["per_rank"] = cluster_results(data, lambda z: z[Z2_SPLIT[rank]], lambda z: z[BANK_SPLIT[rank]], False)
        out["gate"] = gate_values(GATE_C[rank])
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process_with_the_concatenated_batch(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    data = make_data()

    loss, image_grad, text_grad = global_loss_and_grads(data["image"], data["text"])
    # Equal halves: the mean of the rank losses is the single-process loss (what DDP optimises).
    torch.testing.assert_close((ranks[0]["equal"][0] + ranks[1]["equal"][0]) / 2, loss, atol=1e-6, rtol=0)
    # Each rank's rows get the gradient of the SUM of the rank losses (= WORLD x the single-process gradient);
    # DDP's averaging over ranks then gives the single-process gradient for the parameters.
    for r in range(WORLD):
        torch.testing.assert_close(ranks[r]["equal"][1], WORLD * image_grad[EQUAL[r]], atol=1e-6, rtol=0)
        torch.testing.assert_close(ranks[r]["equal"][2], WORLD * text_grad[EQUAL[r]], atol=1e-6, rtol=0)
    # Unequal sizes (3 + 5): the row-weighted mean of the rank losses is the single-process loss.
    weighted = (3 * ranks[0]["unequal"][0] + 5 * ranks[1]["unequal"][0]) / 8
    torch.testing.assert_close(weighted, loss, atol=1e-6, rtol=0)

    single = cluster_results(data, lambda z: z, lambda z: z, True)
    for key, value in single.items():
        for r in range(WORLD):
            torch.testing.assert_close(ranks[r]["sync"][key], value, atol=1e-6, rtol=0, msg=f"{key} rank {r}")
    # The start gate decides on the mean over every rank's entries, so all ranks open it at the same step:
    # (9 x 0.2 + 25 x 0.6) / 34 in cosine units (C x temperature 0.1); without synchronisation each its own mean.
    expected_gate = (9 * 0.2 + 25 * 0.6) / 34
    for r in range(WORLD):
        assert ranks[r]["gate"][True] == pytest.approx(expected_gate, rel=1e-6)
    assert (ranks[0]["gate"][False], ranks[1]["gate"][False]) == (pytest.approx(0.2), pytest.approx(0.6))
    # Published behaviour (no synchronisation): each rank's centroids follow its own half of the batch.
    assert not torch.allclose(ranks[0]["per_rank"]["update_mean"], ranks[1]["per_rank"]["update_mean"])
