"""The digits model in plain, single-process PyTorch, with one JSON line per step, as ddp_digits.py
prints them: the reference that bench/torch/gpu-check.sh times Ringmaster and DDP against.

Training is examples/torch/digits' (bench/torch/common.py): the same model, seed, Adam at lr 1e-2,
each step's global batch of 64 from common.Batches, on BENCH_DEVICE (default cpu).
    {"event": "step", "step": STEPS_DONE, "rank": 0, "world": 1, "t": UNIX_TIME}
"""

from __future__ import annotations

import argparse
import os

from common import Batches, emit, setup
from torch import nn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=600, help="global steps to train")
    args = parser.parse_args()
    model, optimizer, (train_x, train_y, test_x, test_y) = setup()
    batches = Batches(len(train_y))
    loss_fn = nn.CrossEntropyLoss()
    for done in range(args.steps):
        samples = batches.global_batch(done).to(train_x.device)
        optimizer.zero_grad()
        loss_fn(model(train_x[samples]), train_y[samples]).backward()
        optimizer.step()
        emit(event="step", step=done + 1, rank=0, world=1, pid=os.getpid())
    accuracy = (model(test_x).argmax(dim=1) == test_y).float().mean().item()
    emit(event="done", step=args.steps, rank=0, world=1, test_accuracy=accuracy)


if __name__ == "__main__":
    main()
