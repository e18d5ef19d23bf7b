#!/bin/sh
# The checks that need a GPU (pytest marker "gpu"): every method on CUDA equals CPU, one short fit under
# bf16-mixed. Run from the repository root on a machine with CUDA; without one every check is skipped.
set -e
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: nothing to check'; print(torch.cuda.get_device_name(0))"
exec python -m pytest -m gpu -q -rs tests/test_gpu.py "$@"
