"""Local training on one client: DP-SGD through Opacus, or plain SGD when DP is off.

A fresh :class:`opacus.PrivacyEngine` is built per round, but its accountant is *not* the
source of truth: the (sigma, q, steps) it recorded this round is returned as a
:class:`~fedpriv.privacy.accounting.DpEvent` and appended to the client's persistent history,
so epsilon is cumulative across rounds and restarts.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedpriv.errors import FedprivError
from fedpriv.privacy.accounting import DpEvent, compress_history

if TYPE_CHECKING:
    import torch

    from fedpriv.config import PrivacyConfig, TrainConfig
    from fedpriv.data import ArrayDataset

__all__ = [
    "LocalTrainResult",
    "resolve_grad_sample_mode",
    "sample_rate",
    "steps_per_round",
    "train_local",
]


@dataclass(frozen=True)
class LocalTrainResult:
    num_examples: int
    steps: int
    train_loss: float
    event: DpEvent | None
    """The DP event this round added (None when DP is off)."""


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Opacus' Poisson sample rate: 1 / number of batches (``1/ceil(n/B)``, not ``B/n``)."""
    return 1.0 / math.ceil(num_examples / batch_size)


def steps_per_round(num_examples: int, batch_size: int, local_epochs: int) -> int:
    return local_epochs * math.ceil(num_examples / batch_size)


def resolve_grad_sample_mode(mode: str, model: torch.nn.Module) -> str:
    """Pick the per-sample-gradient mode. ``auto``: the fastest mode that trains correctly.

    Measured by ``benchmarks/dp.py`` (CPU, one thread, batch 32; see docs/benchmarks.md): every
    mode matches a per-example reference to 1e-7, but ``ew`` and ``functorch`` crash on the
    empty batches Poisson sampling draws for small clients, so only ``hooks`` and ``ghost``
    qualify. ``hooks`` is fastest for small and convolutional models (``cnn``: 2.4x plain SGD
    vs ghost 3.1x); ghost clipping wins when most parameters sit in Linear/Embedding layers
    (``wide``, 417k parameters: 3.1x vs 23x with hooks, and a third of the training memory).
    """
    if mode != "auto":
        return mode
    import torch.nn as nn

    total = sum(p.numel() for p in model.parameters())
    linear = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Embedding))
        for p in m.parameters(recurse=False)
    )
    return "ghost" if total > 100_000 and linear / max(total, 1) > 0.8 else "hooks"


def _loader(
    data: ArrayDataset, batch_size: int, seed: int, shuffle: bool
) -> torch.utils.data.DataLoader[tuple[torch.Tensor, ...]]:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    ds = TensorDataset(torch.tensor(data.x), torch.tensor(data.y))
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)


def train_local(
    model: torch.nn.Module,
    data: ArrayDataset,
    *,
    train: TrainConfig,
    privacy: PrivacyConfig,
    noise_multiplier: float,
    seed: int,
) -> LocalTrainResult:
    """Train ``model`` in place for ``train.local_epochs`` epochs on ``data``."""
    import torch

    if len(data) == 0:
        raise FedprivError("cannot train on an empty local dataset")
    torch.manual_seed(seed)
    model.train()
    loader = _loader(data, train.batch_size, seed, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=train.learning_rate, momentum=train.momentum)
    criterion: torch.nn.Module = torch.nn.CrossEntropyLoss()
    event: DpEvent | None = None
    engine = None
    net: torch.nn.Module = model
    noise_gen = torch.Generator()
    if privacy.noise_seed >= 0:
        noise_gen.manual_seed(privacy.noise_seed * 1_000_003 + seed)
    else:
        import secrets

        noise_gen.manual_seed(secrets.randbits(63))
    if privacy.mode in ("record", "both"):
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant=privacy.accountant, secure_mode=False)
        mode = resolve_grad_sample_mode(privacy.grad_sample_mode, model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = engine.make_private(
                module=model,
                optimizer=optimizer,
                criterion=criterion,
                data_loader=loader,
                noise_multiplier=noise_multiplier,
                max_grad_norm=privacy.max_grad_norm,
                poisson_sampling=True,
                grad_sample_mode=mode,
                noise_generator=noise_gen,
            )
        if mode == "ghost":
            net, optimizer, criterion, loader = out
        else:
            net, optimizer, loader = out
    steps, loss_sum, seen = 0, 0.0, 0
    for _ in range(train.local_epochs):
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            logits = net(xb)
            loss = criterion(logits, yb)
            loss.backward()
            optimizer.step()
            steps += 1
            if len(yb):
                loss_sum += float(loss.detach()) * len(yb)
                seen += len(yb)
    if engine is not None:
        hist = compress_history(
            DpEvent(float(s), float(q), int(n)) for s, q, n in engine.accountant.history
        )
        if len(hist) != 1 or hist[0].steps != steps:
            raise FedprivError(
                f"unexpected Opacus accountant history {engine.accountant.history!r} for {steps} steps"
            )
        event = hist[0]
        close = getattr(net, "_close", None)
        if callable(close):
            close()  # remove Opacus hooks so the plain module can be reused
    model.eval()
    return LocalTrainResult(len(data), steps, loss_sum / max(seen, 1), event)
