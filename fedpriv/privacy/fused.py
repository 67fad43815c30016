"""DP-SGD with Opacus' per-sample gradients and one fused clip, sum and noise pass.

Opacus' ``GradSampleModule`` + ``DPOptimizer`` spend most of a small model's DP-SGD step in
per-parameter Python: full backward hooks on every layer, per-parameter norms, clipping and
noise, and the weight gradients autograd computes anyway. :class:`FusedDpSgd` keeps Opacus
computing each layer's per-sample gradients (its registered grad samplers, the same functions
the ``hooks`` mode calls) but:

* captures each trainable layer's input and output with a plain forward hook and gets the
  gradients of the summed loss with respect to the layer *outputs* in one ``autograd.grad``
  (no backward hooks; autograd skips the unused weight gradients);
* lays all per-sample gradients side by side in one ``(B, P)`` matrix, clips every row to
  ``max_grad_norm`` and sums the rows in one matrix-vector product;
* adds Opacus' secure-mode Gaussian noise (``_generate_noise``: four draws per coordinate,
  the first sample discarded, against floating-point attacks) to the flat sum in one call, from
  the generator the caller gives (filled from the device's CSPRNG), and divides by the
  expected batch size, into gradient buffers the wrapped optimizer reads.

The result is the same update as Opacus' ``hooks`` mode (``benchmarks/dp.py`` checks both
against a per-example loop; ``tests/unit/test_fused_dpsgd.py`` against Opacus). An empty
Poisson batch is a pure-noise step, as in Opacus.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fedpriv.errors import FedprivError

if TYPE_CHECKING:
    import torch

__all__ = ["FusedDpSgd", "fused_supported"]


def _samplers() -> dict[type, Callable[..., Any]]:
    from opacus.grad_sample import GradSampleModule

    return dict(GradSampleModule.GRAD_SAMPLERS)


def _layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Modules that own trainable parameters directly, in module order."""
    return [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]


def fused_supported(model: torch.nn.Module) -> bool:
    """Whether :class:`FusedDpSgd` can train ``model``.

    Every trainable layer needs a per-sample gradient function registered with Opacus, and
    Opacus' validator must accept the model (no BatchNorm or other layer that mixes samples).
    """
    from opacus.validators import ModuleValidator

    samplers = _samplers()
    layers = _layers(model)
    if not layers or any(type(m) not in samplers for m in layers):
        return False
    return not ModuleValidator.validate(model, strict=False)


class FusedDpSgd:
    """Per-sample clipped, noised gradients for ``model``, written where ``optimizer`` reads them.

    Parameters
    ----------
    model
        A model :func:`fused_supported` accepts, in train mode.
    optimizer
        A plain torch optimizer over ``model``'s parameters; call its ``step()`` after
        :meth:`compute_gradients`. Do not call its ``zero_grad``: the gradients are views of
        one flat buffer this object overwrites every step.
    noise_multiplier, max_grad_norm
        Noise std is ``noise_multiplier * max_grad_norm`` on the summed clipped gradients.
    expected_batch_size
        The sum is divided by it (q * n for Poisson sampling), as Opacus does.
    generator
        Source of the Gaussian noise (the device's CSPRNG-filled generator).
    secure_mode
        Opacus' secure-mode noise construction (the default; off only for benchmarks).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        generator: torch.Generator | None,
        secure_mode: bool = True,
    ) -> None:
        import torch

        if not fused_supported(model):
            raise FedprivError(
                f"fused DP-SGD cannot train {type(model).__name__}: a trainable layer has no "
                "Opacus grad sampler, or the model mixes samples (use grad_sample_mode = 'hooks')"
            )
        if expected_batch_size <= 0 or max_grad_norm <= 0 or noise_multiplier < 0:
            raise FedprivError("fused DP-SGD: need batch > 0, clip norm > 0, noise >= 0")
        samplers = _samplers()
        self.model = model
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.expected_batch_size = int(expected_batch_size)
        self.generator = generator
        self.secure_mode = secure_mode
        self._layers = [(m, samplers[type(m)]) for m in _layers(model)]
        self._owned = [
            [p for p in m.parameters(recurse=False) if p.requires_grad] for m, _ in self._layers
        ]
        self._params = [p for owned in self._owned for p in owned]
        trainable = [p for p in model.parameters() if p.requires_grad]
        if {id(p) for p in trainable} != {id(p) for p in self._params} or len(trainable) != len(
            self._params
        ):
            raise FedprivError("fused DP-SGD: a parameter is shared between layers")
        sizes = [p.numel() for p in self._params]
        self.num_params = sum(sizes)
        self._flat = torch.zeros(self.num_params, dtype=self._params[0].dtype)
        off = 0
        for p, n in zip(self._params, sizes, strict=True):
            p.grad = self._flat[off : off + n].view_as(p)
            off += n
        self._captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for m, _ in self._layers:
            # An instance-level forward that records input and output. A forward hook would do
            # the same but sends every call down torch's slow hook path (a fifth of the step).
            m.forward = self._capturing(m)

    def _capturing(self, module: torch.nn.Module) -> Callable[..., torch.Tensor]:
        forward = type(module).forward
        key, captured = id(module), self._captured

        def capture(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            out: torch.Tensor = forward(module, x, *args, **kwargs)
            if key in captured:
                raise FedprivError(
                    f"fused DP-SGD: layer {type(module).__name__} ran twice in one forward pass"
                )
            captured[key] = (x.detach(), out)
            return out

        return capture

    def compute_gradients(
        self,
        xb: torch.Tensor,
        yb: torch.Tensor,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> float:
        """One step's noisy clipped mean gradient into the parameters' ``.grad``.

        ``loss_fn(logits, targets)`` must *sum* the per-example losses (default: summed
        cross-entropy). Returns the batch's summed loss (0 for an empty batch).
        """
        import torch
        import torch.nn.functional as F

        n = int(yb.shape[0])
        flat = self._flat
        loss_sum = 0.0
        if n == 0:
            flat.zero_()
        else:
            self._captured.clear()
            try:
                logits = self.model(xb)
                loss = (
                    F.cross_entropy(logits, yb, reduction="sum")
                    if loss_fn is None
                    else loss_fn(logits, yb)
                )
                acts = [self._captured[id(m)] for m, _ in self._layers]
            finally:
                self._captured.clear()
            backprops = torch.autograd.grad(loss, [out for _, out in acts])
            cols: list[torch.Tensor] = []
            for (layer, sampler), owned, (act, _), back in zip(
                self._layers, self._owned, acts, backprops, strict=True
            ):
                grads = sampler(layer, [act], back)
                cols.extend(grads[p].reshape(n, -1) for p in owned)
            per_sample = torch.cat(cols, dim=1)
            norms = torch.linalg.vector_norm(per_sample, dim=1)
            # Clip factor min(1, C / (norm + 1e-6)) as Opacus computes it, then the mean's 1/B.
            factor = (self.max_grad_norm / (norms + 1e-6)).clamp_(max=1.0)
            torch.mv(per_sample.t(), factor.div_(self.expected_batch_size), out=flat)
            loss_sum = float(loss.detach())
        std = self.noise_multiplier * self.max_grad_norm
        if std > 0:
            self._add_noise(flat, std, 1.0 / self.expected_batch_size)
        return loss_sum

    def _add_noise(self, flat: torch.Tensor, std: float, scale: float) -> None:
        """``flat += scale * noise(std)`` with the halving of the secure construction folded in."""
        import torch

        p, gen = self.num_params, self.generator
        if not self.secure_mode:
            flat.add_(torch.normal(0.0, std, size=(p,), generator=gen), alpha=scale)
            return
        torch.normal(0.0, std, size=(1, 1), generator=gen)  # discarded, as in Opacus
        draws = torch.normal(0.0, std, size=(4, p), generator=gen)
        flat.add_(draws.sum(0), alpha=0.5 * scale)

    def noise(self, std: float) -> torch.Tensor:
        """Gaussian noise of ``std`` per coordinate, Opacus' secure-mode construction
        (``opacus.optimizers.optimizer._generate_noise``: a first sample thrown away, then the
        sum of four draws halved, after Holohan and Braghin 2021) in three calls over the whole
        flat gradient instead of eleven per parameter."""
        import torch

        p, gen = self.num_params, self.generator
        if not self.secure_mode:
            return torch.normal(0.0, std, size=(p,), generator=gen)
        torch.normal(0.0, std, size=(1, 1), generator=gen)  # discarded, as in Opacus
        return torch.normal(0.0, std, size=(4, p), generator=gen).sum(0).mul_(0.5)

    def close(self) -> None:
        """Restore the layers' forward and drop the gradient buffers (the model is plain again)."""
        for m, _ in self._layers:
            m.__dict__.pop("forward", None)
        for p in self._params:
            p.grad = None
