"""Trains a small perceptron on the digits data set under Ringmaster (`ringmaster job submit`)."""

from __future__ import annotations

import argparse
from typing import List, Optional, Tuple

import torch
from digits import build_model, default_data_path, load_digits, pick_device
from torch import nn

import ringmaster.torch


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=default_data_path(), help="digits.csv.gz (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the initial weights (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto: cuda when there is one (default)")
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
        with step:
            loss = loss_fn(model(train_x[step.samples]), train_y[step.samples])
            loss.backward()
            step.finish(loss=loss.item())


if __name__ == "__main__":
    main()
