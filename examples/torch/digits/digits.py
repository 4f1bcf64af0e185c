"""The digits data set and the model, shared by train.py (under Ringmaster) and plain.py (plain PyTorch).

The data is the file Ringmaster bundles (Sources/Workload/Resources/digits.csv.gz): 1,797 images of
hand-written digits, one a line, 64 pixel values 0 to 16 then the label, no header. The split is
the Swift workload's: rows whose index (from 0, blank lines not counted) is a multiple of 5 are the
test set (360 rows), the others, in file order, the training set (1,437 rows); pixels are divided
by 16. Sample ids are indices into the training set.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import List, Tuple

import torch
from torch import nn

FEATURES = 64
CLASSES = 10


def default_data_path() -> str:
    """``$RINGMASTER_SHARE_DIR/digits.csv.gz`` when the variable is set, else the repository's copy."""
    share = os.environ.get("RINGMASTER_SHARE_DIR")
    if share:
        return os.path.join(share, "digits.csv.gz")
    repository = Path(__file__).resolve().parents[3]
    return str(repository / "Sources" / "Workload" / "Resources" / "digits.csv.gz")


def load_digits(path: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training features and labels, then test features and labels (features float32 in 0...1)."""
    with open(path, "rb") as file:
        data = file.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    splits: Tuple[List[List[int]], List[List[int]]] = ([], [])
    lines = [line for line in data.decode("ascii").splitlines() if line.strip()]
    for index, line in enumerate(lines):
        values = [int(float(value)) for value in line.split(",")]
        if len(values) != FEATURES + 1:
            raise ValueError(f"{path}: line {index + 1} has {len(values)} values, not {FEATURES + 1}")
        splits[1 if index % 5 == 0 else 0].append(values)
    tensors: List[torch.Tensor] = []
    for rows in splits:
        table = torch.tensor(rows, dtype=torch.int64)
        tensors += [table[:, :FEATURES].to(torch.float32) / 16, table[:, FEATURES]]
    return tensors[0], tensors[1], tensors[2], tensors[3]


def pick_device(name: str) -> torch.device:
    """``auto``: the GPU when PyTorch sees one (under Ringmaster each worker sees its own as cuda:0), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model() -> nn.Module:
    """A perceptron with one hidden layer of 128 (the Swift workload's default shape)."""
    return nn.Sequential(nn.Linear(FEATURES, 128), nn.ReLU(), nn.Linear(128, CLASSES))
