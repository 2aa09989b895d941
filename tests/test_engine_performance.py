"""Throughput switches of configs/pretrain.yaml: channels_last gives the same step, compile keeps the checkpoint
format; the stage and k-means flags the model caches on the host follow a loaded state dict."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.bundle import ConfigParser
from test_model_cmcgns import ROOT, batch, build, text_dir  # noqa: F401  (text_dir is a fixture)

from bundle.engines.options import BooleanOptionError
from bundle.engines.performance import prepare_network

torch.set_num_threads(1)


def one_step(model: torch.nn.Module, data: dict) -> tuple[dict, dict]:
    model.train()
    torch.manual_seed(1)  # the same dropout draws in both runs
    out = model(**data)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: float(v) for k, v in out.items() if v.numel() == 1}, grads


def test_channels_last_gives_the_same_losses_and_gradients(text_dir):  # noqa: F811
    data = batch()
    plain = prepare_network(build(text_dir), "cpu")
    fast = prepare_network(build(text_dir), "cpu", channels_last="true")
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    losses, grads = one_step(plain, data)
    losses_cl, grads_cl = one_step(fast, data)
    for key in ("loss", "loss_img", "loss_report", "loss_global"):
        assert losses_cl[key] == pytest.approx(losses[key], rel=1e-4, abs=1e-5), key
    assert grads.keys() == grads_cl.keys()
    for name in grads:
        torch.testing.assert_close(grads_cl[name], grads[name], atol=1e-4, rtol=1e-3)


def test_compiled_encoders_keep_the_state_dict_keys(text_dir):  # noqa: F811
    model = build(text_dir)
    keys = list(model.state_dict())
    compiled = prepare_network(model, "cpu", compile_encoders=True)  # lazy: nothing is compiled before a forward
    assert list(compiled.state_dict()) == keys
    assert compiled.image_encoder._compiled_call_impl is not None and compiled.text_encoder._compiled_call_impl
    with pytest.raises(BooleanOptionError, match="compile_encoders"):
        prepare_network(build(text_dir), "cpu", compile_encoders="sometimes")


def test_pretrain_config_builds_the_network_through_prepare_network():
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "pretrain.yaml"))
    assert parser["network"].startswith("$prepare_network(@network_def, @device")
    assert parser["channels_last"] is False and parser["compile_encoders"] is False


def test_host_cached_stage_and_kmeans_flags_follow_a_loaded_state_dict(text_dir):  # noqa: F811
    model = build(text_dir)
    one_step(model, batch())  # the gate is open at once: k-means initialises on this step
    assert model.report_loss.state.is_initialized
    model.set_stage(2)
    saved = copy.deepcopy(model.state_dict())
    fresh = build(text_dir)
    assert fresh.current_stage == 1 and not fresh.report_loss.state.is_initialized  # both cached on the host now
    fresh.load_state_dict(saved)
    assert fresh.current_stage == 2 and fresh.report_loss.state.is_initialized
    back = build(text_dir)
    back.set_stage(2)
    one_step(back, batch())
    assert back.current_stage == 2 and back.report_loss.state.is_initialized  # both now cached as such on the host
    back.load_state_dict(build(text_dir).state_dict())  # a stage-1, uninitialised checkpoint
    assert back.current_stage == 1 and not back.report_loss.state.is_initialized


def test_benchmark_host_sync_counter_names_the_calls_and_their_sites():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "benchmark_pretrain_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from bundle.networks.sentence_features import sentence_layout

    x = torch.randn(6)
    index = torch.tensor([[-1, 1, 1, 2, -1], [-1, 1, -1, -1, -1]])
    with bench.HostSyncCounter(torch.device("cpu")) as counter:
        _ = float(x.sum()), x[x > 0], x + 1  # two host reads and one harmless op
        sentence_layout(index)
    sites = counter.sites
    assert sum(sites.values()) == 3, sites
    assert any(k.startswith("tolist at bundle/networks/sentence_features.py:") for k in sites)
    assert any(k.startswith("__float__") for k in sites) and any(k.startswith("__getitem__[bool mask]") for k in sites)
