"""Evaluate a model on a labelled dataset (loss and accuracy); no randomness, no DP."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from fedpriv.data import ArrayDataset

__all__ = ["evaluate"]


def _batches(data: ArrayDataset, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    import torch

    # torch.tensor copies one batch: the cached arrays are read-only, which as_tensor would
    # share (and warn about)
    for i in range(0, len(data), batch_size):
        yield torch.tensor(data.x[i : i + batch_size]), torch.tensor(data.y[i : i + batch_size])


def evaluate(
    model: torch.nn.Module, data: ArrayDataset, batch_size: int = 512
) -> tuple[float, float]:
    """Return (mean cross-entropy loss, accuracy) of ``model`` on ``data``."""
    import torch

    if len(data) == 0:
        return (math.nan, math.nan)
    model.eval()
    loss_sum, correct = 0.0, 0
    crit = torch.nn.CrossEntropyLoss(reduction="sum")
    with torch.no_grad():
        for xb, yb in _batches(data, batch_size):
            logits = model(xb)
            loss_sum += float(crit(logits, yb))
            correct += int((logits.argmax(1) == yb).sum())
    return (loss_sum / len(data), correct / len(data))
