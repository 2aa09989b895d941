#!/usr/bin/env bash
# The GPU checks of the bundle in one short run (issue 15), for a lent CUDA machine whose python3 holds a CUDA
# PyTorch but not MONAI or Ignite. Prepared without a GPU and not yet run on one: see docs/throughput.md.
#
# Here, once (wheels travel in .whl, ignored by git):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       -d .whl monai==1.6.1 pytorch-ignite==0.5.3
# There:
#   bash scripts/device_checks.sh            # writes under $OUT (or docs/results when OUT is unset)
set -u
OUT=${OUT:-docs/results}
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
# the CUDA-only tests (AMP in the trainer, CUDA paths of the losses)
timeout 180 python3 -m pytest -q -x tests/test_engine_trainer.py tests/test_losses_distributed.py 2>&1 | tail -5 | tee -a "$OUT/device.txt"
# the whole step at paper scale: B = 64, ResNet-50 + BERT-base size, bf16; then channels_last
timeout 240 python3 scripts/benchmark_pretrain_step.py --batch 64 --steps 5 --warmup 2 --out "$OUT" 2>&1 | tail -30
timeout 120 python3 scripts/benchmark_pretrain_step.py --batch 64 --steps 5 --warmup 2 --channels_last \
    --out "$OUT/channels_last" 2>&1 | grep -E "^stage"
