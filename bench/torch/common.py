"""What bench/torch/ddp_digits.py and bench/torch/torchft_digits.py share: the data, the model, the
optimizer and each step's global batch, so that both train exactly as examples/torch/digits does.

The model is examples/torch/digits/digits.py's build_model (64 -> 128 -> 10), seed 7, Adam at
learning rate 1e-2. A step's global batch is 64 sample ids: step s takes positions 64 s to 64 s + 63
of an endless stream of training-set permutations (one permutation per pass, from the seed and the
pass number), so every step has 64 samples and the batch depends on the step number only; a rank
takes its part of the 64 with torch.tensor_split (22, 21, 21 at world size 3; 32, 32 at 2).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Dict, List, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "examples", "torch", "digits"))

from digits import build_model, default_data_path, load_digits, pick_device  # noqa: E402,F401

GLOBAL_BATCH = 64
SEED = 7
LR = 1e-2


class Batches:
    """Global batches of GLOBAL_BATCH sample ids by step number (see the module's docstring)."""

    def __init__(self, samples: int, seed: int = SEED) -> None:
        self.samples = samples
        self.seed = seed
        self._passes: Dict[int, torch.Tensor] = {}

    def _permutation(self, number: int) -> torch.Tensor:
        if number not in self._passes:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + number)
            self._passes = {key: value for key, value in self._passes.items() if key >= number - 1}
            self._passes[number] = torch.randperm(self.samples, generator=generator)
        return self._passes[number]

    def global_batch(self, step: int) -> torch.Tensor:
        start = step * GLOBAL_BATCH
        parts: List[torch.Tensor] = []
        while start < (step + 1) * GLOBAL_BATCH:
            number, offset = divmod(start, self.samples)
            take = min(self.samples - offset, (step + 1) * GLOBAL_BATCH - start)
            parts.append(self._permutation(number)[offset : offset + take])
            start += take
        return torch.cat(parts)

    def shard(self, step: int, rank: int, world: int) -> torch.Tensor:
        return torch.tensor_split(self.global_batch(step), world)[rank]


def setup() -> Tuple[torch.nn.Module, torch.optim.Optimizer, Tuple[torch.Tensor, ...]]:
    """The data (train x, train y, test x, test y), the model and Adam, seeded as the examples are,
    on BENCH_DEVICE (default cpu; bench/torch/gpu-check.sh sets cuda)."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(SEED)
    device = pick_device(os.environ.get("BENCH_DEVICE", "cpu"))
    data = tuple(tensor.to(device) for tensor in load_digits(default_data_path()))
    model = build_model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    return model, optimizer, data


def emit(**fields: object) -> None:
    """One JSON line on stdout, with the wall-clock time, flushed at once. On CUDA it first waits for
    the GPU's queued work, so that a step's time is its end, not when its kernels were queued."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    fields.setdefault("t", time.time())
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()
