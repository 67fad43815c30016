"""The in-memory dataset type every loader returns: two numpy arrays plus metadata."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedpriv.errors import DataError

__all__ = ["ArrayDataset"]


# eq=False: equality/hash by identity. Field-wise equality on arrays is ambiguous, and identity
# hashing lets a (cached, shared) dataset be used as a cache key.
@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Features and labels of a classification dataset, held in memory.

    Attributes
    ----------
    x : np.ndarray
        float32 features, one sample per row: ``(n, C, H, W)`` for images, ``(n, F)`` for tables.
    y : np.ndarray
        int64 labels in ``[0, num_classes)``, shape ``(n,)``.
    num_classes : int
        Number of classes of the task (not just the ones present in this split).
    name : str
        Human-readable origin, e.g. ``"digits"`` or ``"digits/client3/train"``.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        x = np.asarray(self.x)
        y = np.asarray(self.y)
        where = f"dataset {self.name!r}"
        if x.ndim < 2:
            raise DataError(f"{where}: x must have shape (n, ...) with n samples, got {x.shape}")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise DataError(f"{where}: x must be numeric, got dtype {x.dtype}")
        if y.ndim != 1:
            raise DataError(f"{where}: y must have shape (n,), got {y.shape}")
        # Float labels are refused rather than truncated: 1.7 -> 1 would hide a bug upstream.
        if y.size and not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: y must hold integer class ids, got dtype {y.dtype}")
        if len(x) != len(y):
            raise DataError(f"{where}: x has {len(x)} samples but y has {len(y)} labels")
        if self.num_classes < 1:
            raise DataError(f"{where}: num_classes must be >= 1, got {self.num_classes}")
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            raise DataError(
                f"{where}: labels must be in [0, {self.num_classes}), "
                f"found range [{y.min()}, {y.max()}]"
            )
        # Frozen dataclass: coercion has to go through object.__setattr__.
        if x.dtype != np.float32:
            object.__setattr__(self, "x", x.astype(np.float32))
        else:
            object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y.astype(np.int64, copy=y.dtype != np.int64))

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(name={self.name!r}, n={len(self)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(1, 28, 28)`` or ``(F,)``."""
        return tuple(int(d) for d in self.x.shape[1:])

    def subset(self, indices: np.ndarray | list[int], *, name: str | None = None) -> ArrayDataset:
        """Return the samples at ``indices`` (copied) as a new dataset with the same classes."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise DataError(
                f"dataset {self.name!r}: subset indices out of range for {len(self)} samples"
            )
        return ArrayDataset(
            x=self.x[idx],
            y=self.y[idx],
            num_classes=self.num_classes,
            name=self.name if name is None else name,
        )

    def class_counts(self) -> np.ndarray:
        """Number of samples per class, shape ``(num_classes,)``."""
        return np.bincount(self.y, minlength=self.num_classes)
