"""examples/torch/digits/train.py under Ringmaster, plus one JSON line per step with a wall-clock time.

The training is train.py's, line for line (the same model, seed, Adam at lr 1e-2; the agent hands out
each step's sample ids from the job's global batch of 64). The only addition: at the start of each
step's body it prints {"begun": STEP, "t": UNIX_TIME} and after the loop {"stopped": UNIX_TIME}, so
that bench/torch/compare.sh can time the steady state as it does for the peers. An agent starts a
step only after the step before it was applied (the optimizer step), so "begun" of step s + 1 is the
time step s completed on this worker. The lines go to the worker's log (the agent's workers/ folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "torch", "digits"))

import torch  # noqa: E402
from digits import build_model, default_data_path, load_digits, pick_device  # noqa: E402
from torch import nn  # noqa: E402

import ringmaster.torch  # noqa: E402


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=default_data_path(), help="digits.csv.gz (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the initial weights (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    train_x, train_y, test_x, test_y = (tensor.to(device) for tensor in load_digits(args.data))
    model = build_model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()

    def evaluate() -> Tuple[float, float]:
        logits = model(test_x)
        return (logits.argmax(dim=1) == test_y).float().mean().item(), loss_fn(logits, test_y).item()

    job = ringmaster.torch.init(model, optimizer, evaluate=evaluate, samples=len(train_y))
    for step in job.steps():
        print(json.dumps({"begun": step.step, "n": int(step.samples.numel()), "t": time.time()}))
        with step:
            loss = loss_fn(model(train_x[step.samples]), train_y[step.samples])
            loss.backward()
            step.finish(loss=loss.item())
    print(json.dumps({"stopped": time.time()}))


if __name__ == "__main__":
    main()
