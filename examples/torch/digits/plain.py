"""Trains a small perceptron on the digits data set in plain, single-process PyTorch."""

from __future__ import annotations

import argparse
from typing import List, Optional, Tuple

import torch
from digits import build_model, default_data_path, load_digits, pick_device
from torch import nn


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=default_data_path(), help="digits.csv.gz (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the initial weights (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto: cuda when there is one (default)")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training set (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per step (default: %(default)s)")
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

    for epoch in range(args.epochs):
        for samples in torch.randperm(len(train_y)).split(args.batch_size):
            optimizer.zero_grad()
            loss = loss_fn(model(train_x[samples]), train_y[samples])
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracy, test_loss = evaluate()
        print(f"epoch {epoch + 1}: test accuracy {accuracy:.2%}, test loss {test_loss:.4f}")


if __name__ == "__main__":
    main()
