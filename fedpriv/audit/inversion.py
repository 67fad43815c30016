"""Gradient inversion: rebuild a training image from the update one client sent.

The attack is the one of Geiping et al. 2020 ("Inverting Gradients - How easy is it to break
privacy in federated learning?", NeurIPS): optimise a dummy image so that the gradient it
induces points the same way as the observed one, with the *scale-invariant* cosine loss

    1 - <grad(x'), g> / (|grad(x')| |g|)

plus an optional total-variation prior, signed Adam steps and a box constraint. Scale invariance
matters for an honest test: DP-SGD clipping rescales a single example's gradient, which stops
the L2 loss of Zhu et al. 2019 ("Deep Leakage from Gradients") for the wrong reason but leaves
the direction (and so this attack) intact. Only the noise defeats it.

The label is either known to the attacker or recovered as in iDLG (Zhao et al. 2020): for one
example under softmax cross-entropy the last bias gradient is ``p - onehot(y)``, negative only
at the true class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "InversionResult",
    "inversion_cnn",
    "invert_gradient",
    "psnr",
    "random_image_psnr",
    "recover_label",
    "split_flat",
    "update_to_gradient",
]


@dataclass(frozen=True)
class InversionResult:
    """Outcome of :func:`invert_gradient`.

    Attributes
    ----------
    reconstruction : torch.Tensor
        The best reconstruction, shape ``(1, *input_shape)``, detached.
    label : int
        The label the attack used (given or recovered).
    loss : float
        Final cosine loss of the best restart (0 = gradients perfectly aligned, 2 = opposite).
    psnr : float or None
        PSNR of ``reconstruction`` against the true image, when it was given.
    restart_losses : tuple of float
        Final loss of every restart, in order.
    """

    reconstruction: torch.Tensor
    label: int
    loss: float
    psnr: float | None
    restart_losses: tuple[float, ...]


def psnr(
    a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, data_range: float | None = None
) -> float:
    """Peak signal-to-noise ratio of ``a`` against the reference ``b``, in dB.

    Parameters
    ----------
    a, b : torch.Tensor or np.ndarray
        Images of the same number of elements.
    data_range : float, optional
        Peak-to-peak range of the signal. Default: that of ``b``. The datasets are standardised,
        so there is no fixed 0-255 or 0-1 range to use.

    Returns
    -------
    float
        ``10 log10(range^2 / MSE)``; ``inf`` when the images are equal.
    """
    x = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    y = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    if x.size != y.size:
        raise ValueError(f"psnr: images differ in size ({x.size} vs {y.size})")
    rng = float(y.max() - y.min()) if data_range is None else float(data_range)
    if rng <= 0:
        raise ValueError("psnr: data_range must be positive (is the reference image constant?)")
    mse = float(np.mean((x.reshape(-1) - y.reshape(-1)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(rng * rng / mse)


def random_image_psnr(
    truth: torch.Tensor, bounds: tuple[float, float], *, trials: int = 64, seed: int = 0
) -> float:
    """Mean PSNR of uniform random images in ``bounds`` against ``truth``: the no-leak baseline."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = bounds
    vals = [
        psnr(lo + (hi - lo) * torch.rand(truth.shape, generator=gen), truth) for _ in range(trials)
    ]
    return float(np.mean(vals))


def inversion_cnn(
    input_shape: tuple[int, int, int], num_classes: int, *, seed: int = 0
) -> nn.Sequential:
    """A small tanh CNN with strided convolutions, the attack's probe model.

    About 10k parameters on 8x8 digits (two 3x3 convolutions, 16 and 32 channels, the second
    with stride 2; then one Linear layer), and Opacus-compatible, so the real client training
    path can run on it. It has no max-pooling on purpose: with fedpriv's ``cnn`` (tanh +
    max-pool) a few hundred optimiser steps stall in local minima (about 10-30 dB on digits,
    measured), which is an optimisation obstacle, not a privacy guarantee (its last-layer
    gradient still hands over the pooled features exactly). An audit that wants to show what
    the *update mechanism* leaks needs a model on which the attack is known to succeed.
    """
    c, h, w = input_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(32 * ((h + 1) // 2) * ((w + 1) // 2), num_classes),
        )


def split_flat(model: nn.Module, flat: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
    """Split a flat vector (layout of :func:`fedpriv.models.get_flat_params`) into tensors
    shaped and ordered like ``model.parameters()``.

    The flat layout follows ``state_dict``; the split goes by name so that a model whose
    parameter and state orders differ is still handled.
    """
    vec = torch.as_tensor(np.asarray(flat), dtype=torch.float32).reshape(-1)
    state = model.state_dict()
    pieces: dict[str, torch.Tensor] = {}
    offset = 0
    for key, t in state.items():
        pieces[key] = vec[offset : offset + t.numel()].view(t.shape)
        offset += t.numel()
    if offset != vec.numel():
        raise ValueError(f"flat vector has {vec.numel()} values, model state has {offset}")
    return [pieces[name].clone() for name, _ in model.named_parameters()]


def update_to_gradient(
    update: Sequence[torch.Tensor], learning_rate: float = 1.0
) -> list[torch.Tensor]:
    """Turn a plain-SGD update ``new - old = -lr * g`` back into the gradient direction ``g``.

    Only the sign matters to the cosine loss (it is blind to scale), but getting it wrong makes
    the attack chase the opposite direction.
    """
    return [-u / learning_rate for u in update]


def _last_linear(model: nn.Module) -> nn.Linear | None:
    last: nn.Linear | None = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last


def recover_label(model: nn.Module, gradient: Sequence[torch.Tensor]) -> int:
    """Recover a single example's label from its gradient (iDLG, Zhao et al. 2020).

    With one example, the gradient of the logits is ``p - onehot(y)``: the output bias gradient
    is negative exactly at ``y``, and the output weight gradient row ``(p_i - y_i) h`` has the
    largest norm there (``1 - p_y`` is the sum of the other ``p_i``), whatever the sign of the
    features ``h``. Only exact for a single-example gradient; on a noised one it is a guess.
    """
    last = _last_linear(model)
    if last is None:
        raise ValueError("recover_label: the model has no Linear output layer")
    by_param = {id(p): g for p, g in zip(model.parameters(), gradient, strict=True)}
    if last.bias is not None:
        return int(torch.argmin(by_param[id(last.bias)]).item())
    return int(torch.argmax(by_param[id(last.weight)].norm(dim=1)).item())


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


def _cosine_loss(grads: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    dot = torch.stack([(g * t).sum() for g, t in zip(grads, target, strict=True)]).sum()
    gn = torch.stack([g.pow(2).sum() for g in grads]).sum()
    tn = torch.stack([t.pow(2).sum() for t in target]).sum()
    return 1.0 - dot / (gn.sqrt() * tn.sqrt() + 1e-12)


def invert_gradient(
    model: nn.Module,
    gradient: Sequence[torch.Tensor],
    *,
    input_shape: tuple[int, ...],
    label: int | None = None,
    truth: torch.Tensor | None = None,
    bounds: tuple[float, float] | None = None,
    steps: int = 300,
    lr: float = 0.1,
    tv_weight: float = 0.0,
    restarts: int = 1,
    signed: bool = False,
    seed: int = 0,
) -> InversionResult:
    """Reconstruct the single input behind ``gradient`` (Geiping et al. 2020, cosine loss).

    Parameters
    ----------
    model : nn.Module
        The model *at the weights the gradient was taken at* (the global model the server sent).
        Its weights are not changed.
    gradient : sequence of torch.Tensor
        Observed gradient, one tensor per ``model.parameters()`` entry. For an update
        ``new - old`` use :func:`update_to_gradient` (and :func:`split_flat` for a flat vector).
    input_shape : tuple of int
        Shape of one sample, e.g. ``(1, 8, 8)``.
    label : int, optional
        The example's label; recovered with :func:`recover_label` when None.
    truth : torch.Tensor, optional
        The real image, only to report the PSNR (never used by the attack).
    bounds : (float, float), optional
        Box the reconstruction is projected onto after each step (the data's known range).
    steps : int
        Adam steps per restart, with a cosine-annealed step size.
    lr : float
        Initial Adam step size.
    tv_weight : float
        Weight of the total-variation prior (0 = none).
    restarts : int
        Independent random starts; the one with the lowest cosine loss wins.
    signed : bool
        Step on the sign of the gradient, as Geiping et al. do for ImageNet-scale models. Off by
        default: on the small models here plain Adam converged in fewer steps.
    seed : int
        Seeds the starting images.

    Returns
    -------
    InversionResult
    """
    if restarts < 1 or steps < 1:
        raise ValueError("invert_gradient: steps and restarts must be >= 1")
    params = list(model.parameters())
    target = [g.detach().to(torch.float32) for g in gradient]
    if len(target) != len(params) or any(
        t.shape != p.shape for t, p in zip(target, params, strict=True)
    ):
        raise ValueError("invert_gradient: gradient does not match model.parameters() shapes")
    y = recover_label(model, target) if label is None else int(label)
    labels = torch.tensor([y])
    crit = nn.CrossEntropyLoss()
    was_training = model.training
    model.eval()  # no dropout/BN in fedpriv models, but never let the attack change state
    gen = torch.Generator().manual_seed(seed)
    best: tuple[float, torch.Tensor] | None = None
    losses: list[float] = []
    try:
        for _ in range(restarts):
            x = torch.randn((1, *input_shape), generator=gen)
            if bounds is not None:
                x.clamp_(*bounds)
            x.requires_grad_(True)
            opt = torch.optim.Adam([x], lr=lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            for _step in range(steps):
                opt.zero_grad(set_to_none=True)
                grads = torch.autograd.grad(crit(model(x), labels), params, create_graph=True)
                loss = _cosine_loss(grads, target)
                if tv_weight > 0:
                    loss = loss + tv_weight * _total_variation(x)
                (gx,) = torch.autograd.grad(loss, [x])
                x.grad = gx.sign() if signed else gx
                opt.step()
                sched.step()
                if bounds is not None:
                    with torch.no_grad():
                        x.clamp_(*bounds)
            # Score the final image (the loop's value is one step stale).
            grads = torch.autograd.grad(crit(model(x), labels), params)
            final = float(_cosine_loss(grads, target))
            losses.append(final)
            if best is None or final < best[0]:
                best = (final, x.detach().clone())
    finally:
        model.train(was_training)
    assert best is not None  # restarts >= 1
    rec = best[1]
    return InversionResult(
        reconstruction=rec,
        label=y,
        loss=best[0],
        psnr=None if truth is None else psnr(rec, truth),
        restart_losses=tuple(losses),
    )
