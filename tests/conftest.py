"""Shared tiny fixtures (offline, CPU). Append new fixtures below; keep this file small."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class TinyClassifier(nn.Module):
    """8 -> 16 -> 3 MLP with a LayerNorm; returns ``{"loss", "logits"}`` like a transformers model."""

    def __init__(self, in_features: int = 8, hidden: int = 16, num_classes: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x, labels=None):
        logits = self.fc2(torch.relu(self.norm(self.fc1(x))))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class TinyDataset(torch.utils.data.Dataset):
    """A learnable 3-class problem: the label is the argmax of a fixed linear map of x (plus a little noise)."""

    def __init__(self, n: int = 64, in_features: int = 8, num_classes: int = 3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, in_features, generator=g)
        w = torch.randn(in_features, num_classes, generator=torch.Generator().manual_seed(1234))
        self.labels = (self.x @ w + 0.1 * torch.randn(n, num_classes, generator=g)).argmax(-1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.labels[i]}


@pytest.fixture
def tiny_model():
    """A fresh, seeded `TinyClassifier`."""
    torch.manual_seed(0)
    return TinyClassifier()


@pytest.fixture
def tiny_data():
    """``(train, eval)`` `TinyDataset`s of 64 and 32 examples."""
    return TinyDataset(64, seed=0), TinyDataset(32, seed=1)
