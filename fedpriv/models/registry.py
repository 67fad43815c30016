"""Model architectures, built by name for a given input shape and number of classes.

All models are plain layer stacks without BatchNorm, so Opacus can compute
per-sample gradients for them (``ModuleValidator.validate(model, strict=True)`` passes).

Convolutional models use tanh: bounded ("tempered sigmoid") activations keep activations and
per-sample gradient norms from growing during DP-SGD, which loses less signal to clipping and
noise and gives better accuracy at a fixed epsilon than ReLU (Papernot et al., AAAI 2021;
used by Tramer & Boneh, ICLR 2021, whose MNIST CNN is ``cnn-mnist``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from fedpriv.errors import ConfigError, DataError

__all__ = ["DEFAULT_MODEL", "FedprivNet", "available_models", "build_model"]

DEFAULT_MODEL = "cnn"

# Number of weights the big Linear layer of the ``wide`` model aims at.
_WIDE_TARGET = 400_000


class FedprivNet(nn.Module):
    """A stack of layers that remembers which architecture and input it was built for.

    The name and input shape feed :func:`fedpriv.models.model_fingerprint`, so both ends of a
    federation can check they run the same model before exchanging weights.
    """

    def __init__(
        self, arch: str, input_shape: tuple[int, ...], num_classes: int, *layers: nn.Module
    ) -> None:
        super().__init__()
        self.arch = arch
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _image_dims(name: str, input_shape: tuple[int, ...], min_hw: int) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise DataError(
            f"model {name!r} needs image input (C, H, W), got samples of shape {input_shape}; "
            "use train.model = 'mlp' or 'logreg' for tabular data"
        )
    c, h, w = input_shape
    if h < min_hw or w < min_hw:
        raise DataError(f"model {name!r} needs images of at least {min_hw}x{min_hw}, got {h}x{w}")
    return c, h, w


def _cnn(shape: tuple[int, ...], k: int) -> list[nn.Module]:
    # Two conv/pool stages; the classifier size follows from the input (8x8 -> 128 features,
    # 28x28 -> 1568), so one definition serves digits and MNIST.
    c, h, w = _image_dims("cnn", shape, 4)
    return [
        nn.Conv2d(c, 16, 3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (h // 4) * (w // 4), k),
    ]


def _cnn_mnist(shape: tuple[int, ...], k: int) -> list[nn.Module]:
    # Opacus MNIST example / Tramer & Boneh (2021), Table 9: 28 -> 14 -> 13 -> 5 -> 4.
    c, h, w = _image_dims("cnn-mnist", shape, 28)
    if (h, w) != (28, 28):
        raise DataError(f"model 'cnn-mnist' needs 28x28 images, got {h}x{w}; use 'cnn'")
    return [
        nn.Conv2d(c, 16, 8, stride=2, padding=3),
        nn.Tanh(),
        nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, stride=2),
        nn.Tanh(),
        nn.MaxPool2d(2, 1),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 32),
        nn.Tanh(),
        nn.Linear(32, k),
    ]


def _mlp(shape: tuple[int, ...], k: int) -> list[nn.Module]:
    return [nn.Flatten(), nn.Linear(math.prod(shape), 64), nn.ReLU(), nn.Linear(64, k)]


def _wide(shape: tuple[int, ...], k: int) -> list[nn.Module]:
    # A small feature extractor, then one Linear layer of ~400k weights that dominates the
    # parameter count: the per-sample-gradient and encryption cost scale with it (benchmarks).
    head: list[nn.Module]
    if len(shape) == 3:
        c, h, w = _image_dims("wide", shape, 2)
        head = [nn.Conv2d(c, 16, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten()]
        flat = 16 * (h // 2) * (w // 2)
    else:
        flat = math.prod(shape)
        head = [nn.Flatten()]
        if flat < 256:  # too few inputs for a wide layer: expand them first
            head += [nn.Linear(flat, 256), nn.Tanh()]
            flat = 256
    hidden = max(32, round(_WIDE_TARGET / flat))
    return [*head, nn.Linear(flat, hidden), nn.Tanh(), nn.Linear(hidden, k)]


def _logreg(shape: tuple[int, ...], k: int) -> list[nn.Module]:
    return [nn.Flatten(), nn.Linear(math.prod(shape), k)]


_BUILDERS: dict[str, Callable[[tuple[int, ...], int], list[nn.Module]]] = {
    "cnn": _cnn,
    "cnn-mnist": _cnn_mnist,
    "logreg": _logreg,
    "mlp": _mlp,
    "wide": _wide,
}


def available_models() -> list[str]:
    """Names accepted by :func:`build_model` (``train.model`` in the config)."""
    return sorted(_BUILDERS)


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, *, seed: int | None = None
) -> FedprivNet:
    """Build model ``name`` for samples of ``input_shape`` and ``num_classes`` outputs.

    Parameters
    ----------
    name : str
        One of :func:`available_models`.
    input_shape : tuple of int
        Shape of one sample: ``(C, H, W)`` for images, ``(F,)`` for tabular data.
    num_classes : int
        Number of output logits.
    seed : int, optional
        Seeds the initial weights (the global torch RNG is left untouched); random if None.

    Raises
    ------
    ConfigError
        Unknown model name.
    DataError
        The model cannot take this input shape (e.g. ``cnn`` on tabular data).
    """
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ConfigError(
            f"train.model: unknown model {name!r} (available: {', '.join(available_models())})"
        )
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise DataError(f"model {name!r}: invalid input shape {tuple(input_shape)}")
    if num_classes < 1:
        raise DataError(f"model {name!r}: num_classes must be >= 1, got {num_classes}")
    if seed is None:
        return FedprivNet(name, shape, num_classes, *builder(shape, num_classes))
    # fork_rng restores the global CPU RNG afterwards; devices=[] skips CUDA state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FedprivNet(name, shape, num_classes, *builder(shape, num_classes))
