"""Resume: a run killed after some iterations and restarted with resume=True ends with exactly the parameters,
buffers (k-means centroids, stage) and optimiser state of an uninterrupted run (CPU, deterministic algorithms, no
DataLoader workers; dropout, random crops and CM-MIR masks are all active)."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from test_pretrain_fixtures import ROOT, tiny_dataset, tiny_overrides, tiny_text_model  # noqa: F401

torch.set_num_threads(1)
PRETRAIN = str(ROOT / "configs" / "pretrain.yaml")


class SimulatedKill(RuntimeError):
    pass


def run_pretraining(overrides: dict, kill_event=None) -> dict:
    wf = ConfigWorkflow(config_file=PRETRAIN, meta_file=str(ROOT / "metadata.json"), workflow_type="train", **overrides)
    wf.initialize()
    if kill_event is not None:

        def kill(engine):
            raise SimulatedKill(f"killed after iteration {engine.state.iteration}")

        # attached last: that event's checkpoint is already on disk, as it would be for a real kill
        wf.trainer.add_event_handler(kill_event, kill)
    try:
        wf.run()
    except RuntimeError as e:  # MONAI wraps errors raised inside config expressions
        if not isinstance(e.__cause__, SimulatedKill):
            raise
    network = wf.parser.get_parsed_content("network")
    optimizer = wf.parser.get_parsed_content("optimizer")
    result = {
        "model": {k: v.detach().clone() for k, v in network.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "iteration": wf.trainer.state.iteration,
    }
    wf.finalize()
    return result


def assert_same_optimizer_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index, state in a["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["state"][index][key]), (index, key)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_event,killed_at",
    [(Events.EPOCH_COMPLETED(once=1), 3), (Events.ITERATION_COMPLETED(once=5), 5)],
    ids=["after-stage-1-so-the-switch-happens-on-resume", "inside-the-first-stage-2-epoch"],
)
def test_killed_and_resumed_run_matches_uninterrupted_run(
    tmp_path,
    tiny_dataset,
    tiny_text_model,
    kill_event,
    killed_at,
):
    common = {"stage1_epochs": 1, "stage2_epochs": 2, "deterministic": True, "save_every_n_iterations": 1}
    full = run_pretraining({**tiny_overrides(tiny_dataset, tiny_text_model, tmp_path / "full"), **common})
    assert full["iteration"] == 9
    interrupted = {**tiny_overrides(tiny_dataset, tiny_text_model, tmp_path / "killed"), **common}
    killed = run_pretraining(interrupted, kill_event=kill_event)
    assert killed["iteration"] == killed_at
    assert (
        torch.load(tmp_path / "killed" / "models" / "last.pt", weights_only=True)["trainer"]["iteration"] == killed_at
    )
    resumed = run_pretraining({**interrupted, "resume": True})
    assert resumed["iteration"] == 9

    assert resumed["model"].keys() == full["model"].keys()
    differing = [k for k, v in full["model"].items() if not torch.equal(v, resumed["model"][k])]
    assert differing == [], f"resumed run differs from the uninterrupted one in {differing[:5]}"
    assert int(resumed["model"]["stage"]) == 2 and bool(resumed["model"]["report_loss.state.initialized"])
    assert_same_optimizer_state(full["optimizer"], resumed["optimizer"])
    # and the run really was interrupted: the killed run's weights are not the final ones
    assert any(not torch.equal(v, full["model"][k]) for k, v in killed["model"].items() if v.is_floating_point())
