"""The digits example with a failure injected, for the tests of a worker that fails.

On the node named by FAIL_NODE, at global step FAIL_STEP, the script fails as FAIL_MODE says:
  raise  raises an exception out of the training loop (a bug in the user's script)
  kill   kills itself with SIGKILL (as the OOM killer would)
  exit   leaves the loop and exits 0 before the job is over
  hang   stops answering (sleeps far past the step timeout)
Everywhere else it is examples/torch/digits/train.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples" / "torch" / "digits"))
from digits import build_model, load_digits  # noqa: E402

import ringmaster.torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    args = parser.parse_args()
    torch.manual_seed(7)
    train_x, train_y, test_x, test_y = load_digits(args.data)
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    failing = os.environ.get("RINGMASTER_NODE") == os.environ.get("FAIL_NODE")
    fail_step = int(os.environ.get("FAIL_STEP", "-1"))
    mode = os.environ.get("FAIL_MODE", "raise")

    def evaluate() -> tuple[float, float]:
        logits = model(test_x)
        return (logits.argmax(dim=1) == test_y).float().mean().item(), loss_fn(logits, test_y).item()

    job = ringmaster.torch.init(model, optimizer, evaluate=evaluate, samples=len(train_y))
    for step in job.steps():
        if failing and step.step == fail_step:
            print(f"failing_train: failing at step {step.step} ({mode})", file=sys.stderr, flush=True)
            if mode == "raise":
                raise RuntimeError(f"injected failure at step {step.step}")
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "exit":
                return
            if mode == "hang":
                time.sleep(3600)
        with step:
            loss = loss_fn(model(train_x[step.samples]), train_y[step.samples])
            loss.backward()
            step.finish(loss=loss.item())


if __name__ == "__main__":
    main()
