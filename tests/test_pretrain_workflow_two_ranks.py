"""The whole pretraining workflow on two gloo ranks (configs/pretrain.yaml + configs/multi_gpu_pretrain.yaml under
torchrun), 2 + 2 epochs, with a best epoch that is NOT the last one in either stage.

The key validation metric is scripted (tests/workflow_probes.py: the real validation loss plus a fixed offset per
epoch, offsets far larger than any real loss), so the best epochs are known before the run: epoch 1 in stage 1 and
epoch 3 in stage 2, and every stage-2 epoch is worse than epoch 1 (a best-checkpoint saver that ignored its stage
would keep epoch 1). A probe records on every rank the weights at every epoch end, the weights at the start of the
first stage-2 epoch, and what each validation pass saw and changed. Checked:
- stage 2 starts from stage1_best.pt (= the epoch-1 weights) on every rank, not from the last stage-1 weights;
- model.pt, image_encoder.pt and stage2_best.pt are the epoch-3 weights, not the live (epoch-4) ones;
- every validation pass runs every module in eval mode and leaves every parameter and buffer bit-identical, the
  k-means state (centroids, initialised flag, step counter) included, before and after the k-means start;
- the k-means start gate (cosine below 0.4 AND at least 4 training steps) opens at the step it should, so the
  step counter counts training steps only, and restarts with the epoch-1 state in stage 2.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from test_pretrain_fixtures import ROOT, tiny_dataset, tiny_overrides, tiny_text_model, write_override_file  # noqa: F401
from torchrun_bundle import torchrun_bundle
from workflow_probes import KMEANS_KEYS

from bundle.engines.checkpointing import load_model_weights
from bundle.engines.progress import read_history

# added to the validation loss of epochs 1..4: best stage-1 epoch 1, best stage-2 epoch 3, stage 2 worse than epoch 1
OFFSETS = [0.0, 10000.0, 5000.0, 15000.0]
KMEANS_START_STEP = 4  # 3 iterations per epoch: the gate opens on the 5th training step (epoch 2)
TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_dataset, tiny_text_model):  # noqa: F811
    tmp_path = tmp_path_factory.mktemp("two_rank_workflow")
    overrides = tiny_overrides(tiny_dataset, tiny_text_model, tmp_path)
    # 12 training items: 6 per rank, batch 2 per rank -> 3 iterations per epoch; 4 validation items -> one
    # validation batch per rank
    overrides.update(
        {
            "batch_size": 2,
            "val_batch_size": 2,
            "stage1_epochs": 2,
            "stage2_epochs": 2,
            "network_def#kmeans_start_step": KMEANS_START_STEP,
            "validate#key_metric": {
                "val_loss": {"_target_": "workflow_probes.ScriptedBatchMean", "key": "loss", "offsets": OFFSETS}
            },
            "workflow_probe": {
                "_target_": "workflow_probes.WorkflowProbe",
                "network": "@network",
                "out_dir": "@ckpt_dir",
                "stage1_epochs": "@stage1_epochs",
            },
            "run": ["$@workflow_probe.attach(@train#trainer, @validate#evaluator)", "$@train#trainer.run()"],
        }
    )
    override_file = write_override_file(tmp_path / "two_ranks.yaml", overrides)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([TESTS] + ([old] if old else []))  # workflow_probes in each process
    try:
        torchrun_bundle(
            [ROOT / "configs" / "pretrain.yaml", ROOT / "configs" / "multi_gpu_pretrain.yaml", override_file],
            timeout=600,  # generous: on a loaded 2-core machine the run alone took about 5 minutes
        )
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    models = tmp_path / "models"
    probes = [torch.load(models / f"probe_rank{r}.pt", weights_only=True) for r in range(2)]
    return tmp_path, probes


def differing(a: dict, b: dict, skip=()) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if k not in skip and not torch.equal(a[k], b[k])]


def float_params_differ(a: dict, b: dict) -> bool:
    return any(v.is_floating_point() and not torch.equal(v, b[k]) for k, v in a.items())


@pytest.mark.slow
def test_scripted_validation_loss_makes_the_best_epochs_not_the_last(run):
    tmp_path, _ = run
    _, val = read_history(str(tmp_path / "runs" / "history.jsonl"))
    assert [r["epoch"] for r in val] == [1, 2, 3, 4] and [r["stage"] for r in val] == [1, 1, 2, 2]
    real = [r["val_loss"] - offset for r, offset in zip(val, OFFSETS)]
    # the offsets decide: every real loss is finite and far smaller than the gaps between offsets
    assert all(math.isfinite(x) and 0 < x < 1000 for x in real), real


@pytest.mark.slow
def test_stage2_starts_from_stage1_best_on_every_rank(run):
    tmp_path, probes = run
    models = tmp_path / "models"
    end = probes[0]["epoch_end"]
    assert sorted(end) == [1, 2, 3, 4]
    # the scripted best of stage 1 is epoch 1, and it is not the last stage-1 weights
    assert differing(load_model_weights(str(models / "stage1_best.pt")), end[1]) == []
    assert differing(load_model_weights(str(models / "stage1_last.pt")), end[2]) == []
    assert float_params_differ(end[1], end[2])
    for rank, probe in enumerate(probes):
        start = probe["stage2_start"]
        assert int(start["stage"]) == 2, rank
        assert differing(start, end[1], skip=("stage",)) == [], f"rank {rank} did not start stage 2 from epoch 1"
        assert float_params_differ(start, probe["epoch_end"][2]), rank


@pytest.mark.slow
def test_export_is_the_final_stage_best_checkpoint_not_the_live_weights(run):
    tmp_path, probes = run
    models = tmp_path / "models"
    end = probes[0]["epoch_end"]
    # the live weights at the end of the run are epoch 4's; the scripted stage-2 best is epoch 3
    assert float_params_differ(end[3], end[4])
    assert differing(load_model_weights(str(models / "stage2_best.pt")), end[3]) == []
    assert differing(torch.load(models / "model.pt", weights_only=True), end[3]) == []
    encoder = torch.load(models / "image_encoder.pt", weights_only=True)
    expected = {k[len("image_encoder.") :]: v for k, v in end[3].items() if k.startswith("image_encoder.")}
    assert differing(encoder, expected) == []
    # both ranks trained the same model
    assert differing(probes[1]["epoch_end"][4], end[4]) == []


@pytest.mark.slow
def test_validation_runs_in_eval_mode_and_leaves_the_model_and_kmeans_state_untouched(run):
    _, probes = run
    for rank, probe in enumerate(probes):
        passes = probe["validations"]
        assert [p["epoch"] for p in passes] == [1, 2, 3, 4], rank
        for p in passes:
            assert "report_loss.state.centroids" in p["keys"]
            assert p["changed"] == [], f"rank {rank}, validation of epoch {p['epoch']} changed {p['changed'][:5]}"
            for key in KMEANS_KEYS:
                assert torch.equal(p["kmeans_before"][key], p["kmeans_after"][key]), (rank, p["epoch"], key)
        # one validation batch per rank and pass; during it no module of the model was in training mode
        forwards = probe["validation_forwards"]
        assert len(forwards) == 4 and all(f["modules"] > 10 and f["in_training_mode"] == 0 for f in forwards), rank
        assert probe["training_forwards"] == 12, rank
        # the k-means state each pass saw: the step counter counts the training steps (3 per epoch; stage 2 restarts
        # from the epoch-1 state), the gate opened on the 5th step, and stage 2 re-opened it on its 2nd step
        state = [p["kmeans_before"] for p in passes]
        assert [int(s["report_loss.state.step"]) for s in state] == [3, 6, 6, 9], rank
        assert [bool(s["report_loss.state.initialized"]) for s in state] == [False, True, True, True], rank
        # training moves the centroids between passes, so an unchanged state is not a frozen one
        assert not torch.equal(state[2]["report_loss.state.centroids"], state[3]["report_loss.state.centroids"])


@pytest.mark.slow
def test_kmeans_gate_opens_after_the_start_step_in_each_stage(run):
    tmp_path, _ = run
    train, _ = read_history(str(tmp_path / "runs" / "history.jsonl"))
    assert [r["iteration"] for r in train] == list(range(1, 13))
    # stage 1: steps 0-3 closed by the start step, open on step 4 (iteration 5); stage 2 restarts from the epoch-1
    # weights (k-means not initialised, step counter 3): closed on iteration 7, open on iteration 8
    assert [int(r["kmeans_initialized"]) for r in train] == [0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1]
