"""Throughput switches of the pretraining network (configs/pretrain.yaml: channels_last, compile_encoders).

Both default off: without a GPU lent to the project they were measured on CPU only (docs/results/
pretrain_step_benchmark_cpu.md), where neither is the bottleneck's cure. `nn.Module.compile` compiles in place,
so state-dict keys (checkpoints, exported encoders) stay the same as without it.
"""

from __future__ import annotations

import torch

from bundle.engines.options import as_bool


def prepare_network(network: torch.nn.Module, device, channels_last=False, compile_encoders=False) -> torch.nn.Module:
    """network on `device`; optionally its weights in channels_last memory format (the convolutions of the image
    encoder and the CM-MIR decoder) and its two encoders compiled with torch.compile (the losses after them have
    data-dependent shapes and stay eager)."""
    network = network.to(device)
    if as_bool(channels_last, "channels_last"):
        network = network.to(memory_format=torch.channels_last)
    if as_bool(compile_encoders, "compile_encoders"):
        network.image_encoder.compile()
        network.text_encoder.compile()
    return network
