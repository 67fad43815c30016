"""Local training on one client: DP-SGD through Opacus, or plain SGD when DP is off.

A fresh :class:`opacus.PrivacyEngine` is built per round, but its accountant is *not* the
source of truth: the (sigma, q, steps) it recorded this round is returned as a
:class:`~fedpriv.privacy.accounting.DpEvent` and appended to the client's persistent history,
so epsilon is cumulative across rounds and restarts.

Every random draw of the mechanism comes from the device's :class:`~fedpriv.privacy.rng.DpRandom`
(the OS CSPRNG), not from any seed in the run's config: the Poisson sampling masks
(:class:`CsprngPoissonSampler`) and Opacus' Gaussian noise, generated with its secure-mode
construction from a generator whose whole state is filled from the CSPRNG each round.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedpriv.errors import FedprivError
from fedpriv.privacy.accounting import DpEvent, compress_history
from fedpriv.privacy.rng import DpRandom

if TYPE_CHECKING:
    import torch

    from fedpriv.config import PrivacyConfig, TrainConfig
    from fedpriv.data import ArrayDataset

__all__ = [
    "CsprngPoissonSampler",
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
    batches: tuple[tuple[int, ...], ...] = ()
    """The Poisson batches drawn (only with ``keep_batches``; for tests of the sampling)."""


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Opacus' Poisson sample rate: 1 / number of batches (``1/ceil(n/B)``, not ``B/n``)."""
    return 1.0 / math.ceil(num_examples / batch_size)


def steps_per_round(num_examples: int, batch_size: int, local_epochs: int) -> int:
    return local_epochs * math.ceil(num_examples / batch_size)


def resolve_grad_sample_mode(mode: str, model: torch.nn.Module) -> str:
    """Pick the per-sample-gradient mode. ``auto``: the fastest mode that trains correctly.

    Measured by ``benchmarks/dp.py`` (CPU, one thread, batch 32; see docs/benchmarks.md): every
    mode matches a per-example reference to 1e-7, but ``ew`` and ``functorch`` crash on the
    empty batches Poisson sampling draws for small clients. ``fused``
    (:mod:`fedpriv.privacy.fused`: Opacus' per-sample gradients, one clip-sum-noise pass, no
    backward hooks) is the fastest for small and convolutional models whose layers all have an
    Opacus grad sampler; ghost clipping wins when most parameters sit in one large
    Linear/Embedding layer (``wide``, 417k parameters: per-sample gradients would not fit the
    cache). Anything else falls back to Opacus' ``hooks``.
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
    if total > 100_000 and linear / max(total, 1) > 0.8:
        return "ghost"
    from fedpriv.privacy.fused import fused_supported

    return "fused" if fused_supported(model) else "hooks"


class CsprngPoissonSampler:
    """Poisson sampling for DP-SGD with masks from the device's CSPRNG.

    Each of ``steps`` batches includes every record independently with probability
    ``sample_rate`` (Opacus' ``UniformWithReplacementSampler`` semantics, so its accountant's
    ``sample_rate = 1 / len(loader)`` is exact), but the mask comes from
    :meth:`DpRandom.bernoulli_mask` instead of torch's seeded generator, so nobody can recompute
    a client's batches from the run's config. ``observed`` (tests only) keeps the drawn batches.
    """

    def __init__(
        self, num_samples: int, sample_rate: float, steps: int, rng: DpRandom, *, keep: bool = False
    ) -> None:
        if num_samples <= 0 or not 0 < sample_rate <= 1 or steps <= 0:
            raise FedprivError(
                f"Poisson sampler: need records > 0, 0 < q <= 1, steps > 0 "
                f"(got {num_samples}, {sample_rate}, {steps})"
            )
        self.num_samples, self.sample_rate, self.steps, self.rng = (
            num_samples,
            sample_rate,
            steps,
            rng,
        )
        self.observed: list[list[int]] | None = [] if keep else None

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):  # type: ignore[no-untyped-def]
        for idx in self.index_arrays():
            yield idx.tolist()

    def index_arrays(self):  # type: ignore[no-untyped-def]
        """The same batches as int64 index arrays (no Python list per batch)."""
        import numpy as np

        for _ in range(self.steps):
            idx = np.flatnonzero(self.rng.bernoulli_mask(self.num_samples, self.sample_rate))
            if self.observed is not None:
                self.observed.append(idx.tolist())
            yield idx


def _tensors(data: ArrayDataset) -> torch.utils.data.TensorDataset:
    import torch
    from torch.utils.data import TensorDataset

    return TensorDataset(torch.tensor(data.x), torch.tensor(data.y))


def _poisson_loader(
    data: ArrayDataset, batch_size: int, rng: DpRandom, keep: bool
) -> tuple[torch.utils.data.DataLoader[tuple[torch.Tensor, ...]], CsprngPoissonSampler]:
    """A DataLoader drawing Poisson batches from the CSPRNG, empty batches allowed (as Opacus')."""
    from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
    from torch.utils.data import DataLoader
    from torch.utils.data.dataloader import default_collate

    ds = _tensors(data)
    steps = math.ceil(len(data) / batch_size)
    sampler = CsprngPoissonSampler(len(data), 1.0 / steps, steps, rng, keep=keep)
    collate = wrap_collate_with_empty(
        collate_fn=default_collate,
        batch_first=True,
        rand_on_empty=False,
        sample_empty_shapes=[(0, *shape_safe(x)) for x in ds[0]],
        dtypes=[dtype_safe(x) for x in ds[0]],
    )
    return DataLoader(ds, batch_sampler=sampler, collate_fn=collate), sampler


def _shuffled_epochs(
    data: ArrayDataset, batch_size: int, rng: DpRandom
) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Epochs of shuffled batches: what a shuffling DataLoader yields (one permutation per
    epoch from the generator), by tensor indexing instead of per-sample Python."""
    import torch

    x, y = torch.tensor(data.x), torch.tensor(data.y)
    gen = rng.torch_generator()
    while True:
        perm = torch.randperm(len(data), generator=gen)
        yield [(x[i], y[i]) for i in perm.split(batch_size)]


def _train_fused(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: ArrayDataset,
    train: TrainConfig,
    privacy: PrivacyConfig,
    noise_multiplier: float,
    rng: DpRandom,
    keep: bool,
) -> tuple[int, float, int, DpEvent, CsprngPoissonSampler]:
    """DP-SGD epochs with :class:`~fedpriv.privacy.fused.FusedDpSgd` on CSPRNG Poisson batches.

    Returns (steps, summed loss, examples seen, the round's DP event, the sampler).
    """
    import torch

    from fedpriv.privacy.fused import FusedDpSgd

    x, y = torch.tensor(data.x), torch.tensor(data.y)
    per_epoch = math.ceil(len(data) / train.batch_size)
    q = 1.0 / per_epoch  # = sample_rate(n, B), exactly as Opacus computes it from the loader
    sampler = CsprngPoissonSampler(len(data), q, per_epoch, rng, keep=keep)
    dp = FusedDpSgd(
        model,
        noise_multiplier=noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        expected_batch_size=int(len(data) * q),  # Opacus' expected batch size
        generator=rng.torch_generator(),
    )
    steps, loss_sum, seen = 0, 0.0, 0
    try:
        for _ in range(train.local_epochs):
            for idx in sampler.index_arrays():
                i = torch.from_numpy(idx)
                loss_sum += dp.compute_gradients(x[i], y[i])
                optimizer.step()
                steps += 1
                seen += len(idx)
    finally:
        dp.close()
    return steps, loss_sum, seen, DpEvent(float(noise_multiplier), q, steps), sampler


def train_local(
    model: torch.nn.Module,
    data: ArrayDataset,
    *,
    train: TrainConfig,
    privacy: PrivacyConfig,
    noise_multiplier: float,
    rng: DpRandom,
    keep_batches: bool = False,
) -> LocalTrainResult:
    """Train ``model`` in place for ``train.local_epochs`` epochs on ``data``.

    ``rng`` is the device's DP randomness (sampling masks and noise). ``keep_batches`` records
    the drawn batch indices in the result (tests of the sampling only).
    """
    import torch

    if len(data) == 0:
        raise FedprivError("cannot train on an empty local dataset")
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=train.learning_rate, momentum=train.momentum)
    criterion: torch.nn.Module = torch.nn.CrossEntropyLoss()
    event: DpEvent | None = None
    engine = None
    net: torch.nn.Module = model
    sampler: CsprngPoissonSampler | None = None
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
    dp_mode = (
        resolve_grad_sample_mode(privacy.grad_sample_mode, model)
        if privacy.mode in ("record", "both")
        else ""
    )
    if dp_mode == "fused":
        steps, loss_sum, seen, event, sampler = _train_fused(
            model, optimizer, data, train, privacy, noise_multiplier, rng, keep_batches
        )
        model.eval()
        batches = tuple(tuple(b) for b in sampler.observed) if sampler.observed else ()
        return LocalTrainResult(len(data), steps, loss_sum / max(seen, 1), event, batches)
    if dp_mode:
        from opacus import PrivacyEngine

        loader, sampler = _poisson_loader(data, train.batch_size, rng, keep_batches)
        # secure_mode=True would need torchcsprng (not installable for current torch); the
        # optimizer below gets the same construction with a CSPRNG-filled generator instead.
        engine = PrivacyEngine(accountant=privacy.accountant, secure_mode=False)
        mode = dp_mode
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = engine.make_private(
                module=model,
                optimizer=optimizer,
                criterion=criterion,
                data_loader=loader,
                noise_multiplier=noise_multiplier,
                max_grad_norm=privacy.max_grad_norm,
                poisson_sampling=False,  # the loader above already samples (from the CSPRNG)
                grad_sample_mode=mode,
            )
        if mode == "ghost":
            net, optimizer, criterion, loader = out
        else:
            net, optimizer, loader = out
        # Gaussian noise: Opacus' secure-mode construction (4 draws per coordinate, the first
        # sample discarded), against floating-point attacks, from a CSPRNG-filled generator.
        optimizer.generator = rng.torch_generator()
        optimizer.secure_mode = True
    epochs = _shuffled_epochs(data, train.batch_size, rng) if engine is None else None
    steps, loss_sum, seen = 0, 0.0, 0
    for _ in range(train.local_epochs):
        if epochs is not None:
            loader = next(epochs)
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
    batches = tuple(tuple(b) for b in sampler.observed) if sampler and sampler.observed else ()
    return LocalTrainResult(len(data), steps, loss_sum / max(seen, 1), event, batches)
