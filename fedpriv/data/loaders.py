"""Dataset loaders: ``digits``, ``mnist:PATH``, ``csv:PATH`` and ``hf:NAME`` -> (train, test).

Every loader produces raw arrays; one shared pipeline then shuffles, splits off a held-out test
set (when the source has none), keeps a stratified ``max_samples`` subset, and standardizes
features with statistics of the training part only, so the test set never leaks into them.

Loaded datasets are cached per process: in a simulation every client calls
:func:`load_dataset` with the same arguments. The cached arrays are marked read-only; copy them
before changing them in place.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fedpriv.data.dataset import ArrayDataset
from fedpriv.data.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx
from fedpriv.errors import DataError

if TYPE_CHECKING:
    import datasets

__all__ = ["MNIST_MEAN", "MNIST_STD", "clear_cache", "from_hf_dataset", "load_dataset"]

MNIST_MEAN = 0.1307
"""Mean pixel value of the MNIST training set after scaling to [0, 1] (the usual constant)."""
MNIST_STD = 0.3081

_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_MNIST_PIXELS = 28 * 28
_EPS = 1e-8


@dataclass(frozen=True, eq=False)
class _Raw:
    """What a source provides before the shared split/normalize pipeline."""

    x_train: np.ndarray  # float32; images already scaled to [0, 1]
    y_train: np.ndarray  # int64 in [0, num_classes)
    x_test: np.ndarray | None  # None: the source has no test split, hold some out
    y_test: np.ndarray | None
    num_classes: int
    kind: Literal["image", "tabular"]
    fixed_norm: tuple[float, float] | None = None  # (mean, std) instead of train statistics


# ---------------------------------------------------------------------------- public API


def load_dataset(
    spec: str,
    *,
    label_column: str = "label",
    holdout_fraction: float = 0.2,
    seed: int = 0,
    max_samples: int = 0,
    validation_fraction: float = 0.0,
    labels: Sequence[str] | None = None,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Load a dataset and return ``(train, held-out test)``.

    Parameters
    ----------
    spec : str
        ``digits`` (scikit-learn, offline), ``mnist:PATH`` (folder with IDX and/or CSV files),
        ``csv:PATH`` (tabular CSV with a header) or ``hf:NAME`` (Hugging Face Hub, needs network).
    label_column : str
        Label column of ``csv:`` and ``hf:`` datasets (and of an ``mnist:`` CSV with a header).
    holdout_fraction : float
        Share of the data held out as the test set when the source has no test split.
        0 gives an empty test set.
    seed : int
        Seed of the shuffle, the holdout split and the ``max_samples`` subset.
    max_samples : int
        Keep a stratified subset of this many training samples (0 = all).
    validation_fraction : float
        Hyperparameter tuning: hold out this share of the training data (stratified) and
        return it in place of the test set, which is then never read. 0 = off.
    labels : sequence of str, optional
        The declared label set in class order (a data schema's ``label.values``): class ``i``
        is ``labels[i]`` and a label outside the set is an error. Without it the classes are
        the distinct labels found, and numbers mixed with words (``"cat"`` among digits) are
        refused as a probable typo.

    Returns
    -------
    tuple of ArrayDataset
        Train and test sets sharing ``num_classes``; features standardized with the training
        statistics (MNIST: the usual fixed constants). Cached per process; arrays are read-only.

    Raises
    ------
    DataError
        Unknown spec, missing or malformed file, or arguments that cannot be honoured.
    """
    if not 0.0 <= holdout_fraction < 1.0:
        raise DataError(f"data.holdout_fraction: must be in [0, 1), got {holdout_fraction}")
    if max_samples < 0:
        raise DataError(f"data.max_samples: must be >= 0, got {max_samples}")
    kind, sep, arg = spec.partition(":")
    if kind == "digits" and not sep:
        stamp: tuple[Any, ...] = ()
    elif kind in ("mnist", "csv") and arg:
        path = Path(arg).expanduser().resolve()
        stamp = _file_stamp(path, folder=kind == "mnist")
        spec = f"{kind}:{path}"
    elif kind == "hf" and arg:
        stamp = ()
    else:
        raise DataError(
            f"data.dataset: unknown dataset {spec!r} (use digits, mnist:PATH, csv:PATH or hf:NAME)"
        )
    if not 0.0 <= validation_fraction < 1.0:
        raise DataError(f"data.validation_fraction: must be in [0, 1), got {validation_fraction}")
    declared = tuple(str(v) for v in labels) if labels is not None else None
    if declared is not None and (len(declared) < 2 or len(set(declared)) != len(declared)):
        raise DataError(f"declared label set {list(declared)}: need at least 2 distinct labels")
    return _load_cached(
        spec,
        label_column,
        float(holdout_fraction),
        seed,
        max_samples,
        declared,
        stamp,
        float(validation_fraction),
    )


def clear_cache() -> None:
    """Forget every dataset and partition cached in this process."""
    from fedpriv.data.partitioning import clear_partition_cache  # local: avoid an import cycle

    _load_cached.cache_clear()
    clear_partition_cache()


def from_hf_dataset(
    ds: datasets.Dataset, *, label_column: str = "label", name: str = "hf"
) -> ArrayDataset:
    """Convert a Hugging Face ``datasets.Dataset`` into a standardized :class:`ArrayDataset`.

    An image column (a ``datasets.Image`` feature, or a column named ``image``/``img`` holding
    arrays) becomes float32 ``(n, C, H, W)`` scaled to [0, 1] then standardized per channel;
    otherwise every non-label column must be numeric and the result is ``(n, F)`` standardized
    per feature. Labels of a ``ClassLabel`` feature are kept; other labels are mapped to
    ``0..C-1`` in sorted order. Statistics come from ``ds`` itself.
    """
    x, labels, num_classes, kind = _hf_features(ds, label_column=label_column, name=name)
    if num_classes is None:
        y, num_classes = _encode_labels(labels, where=f"{name}, column {label_column!r}")
    else:
        y = labels
    mean, std = _train_stats(x, kind)
    return ArrayDataset(x=(x - mean) / std, y=y, num_classes=num_classes, name=name)


# ---------------------------------------------------------------------------- cache + pipeline


def _file_stamp(path: Path, *, folder: bool) -> tuple[Any, ...]:
    """Part of the cache key, so a file changed on disk is read again."""
    if folder:
        if not path.is_dir():
            raise DataError(f"data.dataset: mnist folder {path} does not exist or is not a folder")
        files = sorted(p for p in path.iterdir() if p.is_file())
        return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    if not path.is_file():
        raise DataError(f"data.dataset: CSV file {path} does not exist")
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _load_cached(
    spec: str,
    label_column: str,
    holdout_fraction: float,
    seed: int,
    max_samples: int,
    labels: tuple[str, ...] | None,
    stamp: tuple[Any, ...],  # only part of the key
    validation_fraction: float = 0.0,
) -> tuple[ArrayDataset, ArrayDataset]:
    kind, _, arg = spec.partition(":")
    if kind == "digits":
        raw, name = _raw_digits(labels), "digits"
    elif kind == "mnist":
        raw, name = _raw_mnist(Path(arg), label_column, labels), "mnist"
    elif kind == "csv":
        raw, name = _raw_csv(Path(arg), label_column, labels), Path(arg).name
    else:
        raw, name = _raw_hf(arg, label_column, labels), arg
    return _finish(
        raw,
        name,
        holdout_fraction=holdout_fraction,
        seed=seed,
        max_samples=max_samples,
        validation_fraction=validation_fraction,
    )


def _finish(
    raw: _Raw,
    name: str,
    *,
    holdout_fraction: float,
    seed: int,
    max_samples: int,
    validation_fraction: float = 0.0,
) -> tuple[ArrayDataset, ArrayDataset]:
    rng = np.random.default_rng(seed)
    # Shuffle first: some sources (the offline MNIST CSV) are sorted by class.
    order = rng.permutation(len(raw.y_train))
    x, y = raw.x_train[order], raw.y_train[order]
    if raw.x_test is not None and raw.y_test is not None:
        x_test, y_test = raw.x_test, raw.y_test
    elif holdout_fraction > 0:
        tr, te = _stratified_split(y, test_size=holdout_fraction, seed=seed, what="holdout split")
        x, y, x_test, y_test = x[tr], y[tr], x[te], y[te]
    else:
        x_test, y_test = x[:0], y[:0]
    if validation_fraction > 0:
        # Tuning: a validation split of the training data takes the test set's place.
        tr, va = _stratified_split(y, test_size=validation_fraction, seed=seed, what="validation")
        x, y, x_test, y_test = x[tr], y[tr], x[va], y[va]
        name = f"{name}[validation]"
    if 0 < max_samples < len(y):
        keep, _ = _stratified_split(y, train_size=max_samples, seed=seed, what="max_samples")
        x, y = x[keep], y[keep]
    if raw.fixed_norm is not None:
        mean: np.ndarray | float = raw.fixed_norm[0]
        std: np.ndarray | float = raw.fixed_norm[1]
    else:
        mean, std = _train_stats(x, raw.kind)
    train = ArrayDataset(x=(x - mean) / std, y=y, num_classes=raw.num_classes, name=f"{name}/train")
    test = ArrayDataset(
        x=(x_test - mean) / std, y=y_test, num_classes=raw.num_classes, name=f"{name}/test"
    )
    for d in (train, test):  # shared through the cache: make accidental in-place edits fail
        d.x.setflags(write=False)
        d.y.setflags(write=False)
    return train, test


def _train_stats(x: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (images) or per-feature (tables) mean and std, broadcastable against ``x``."""
    if len(x) == 0:
        raise DataError("cannot standardize an empty training set")
    axes = (0, *range(2, x.ndim)) if kind == "image" else (0,)
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = x.std(axis=axes, keepdims=True, dtype=np.float64)
    std = np.where(std < _EPS, 1.0, std)  # constant feature: centre it, do not divide by 0
    return mean.astype(np.float32), std.astype(np.float32)


def _stratified_split(
    y: np.ndarray,
    *,
    test_size: float | None = None,
    train_size: int | None = None,
    seed: int,
    what: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Index split stratified by label, falling back to a plain random split when sklearn
    cannot stratify (a class with a single sample, or fewer slots than classes)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    kwargs: dict[str, Any] = {"test_size": test_size, "train_size": train_size}
    try:
        a, b = train_test_split(idx, stratify=y, random_state=seed, **kwargs)
    except ValueError:
        try:
            a, b = train_test_split(idx, random_state=seed, shuffle=True, **kwargs)
        except ValueError as e:
            raise DataError(f"{what}: cannot split {len(y)} samples ({e})") from e
    return np.sort(a), np.sort(b)


def _encode_labels(
    values: np.ndarray, *, where: str, labels: tuple[str, ...] | None = None
) -> tuple[np.ndarray, int]:
    """Map label values to class ids 0..C-1.

    With a declared label set, class ``i`` is ``labels[i]`` and any other value is an error
    naming its rows. Without one, the distinct values in sorted order (numeric order when all
    are numbers); numbers mixed with words are refused as a probable typo.
    """
    if values.size == 0:
        raise DataError(f"{where}: no labels")
    text = values.astype(str)
    if labels is not None:
        lookup = {v: i for i, v in enumerate(labels)}
        unknown = ~np.isin(text, list(labels))
        if unknown.any():
            rows = np.flatnonzero(unknown)
            shown = ", ".join(f"row {r + 1} {str(text[r])!r}" for r in rows[:5])
            more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
            raise DataError(
                f"{where}: {len(rows)} label(s) outside the declared label set "
                f"({', '.join(labels)}): {shown}{more}"
            )
        return np.fromiter((lookup[v] for v in text.tolist()), np.int64, len(text)), len(labels)
    from fedpriv.data.schema.infer import sorted_labels

    words = np.asarray([not _is_number(v) for v in text.tolist()], dtype=bool)
    if words.any() and not words.all():
        rows = np.flatnonzero(words if words.sum() <= (~words).sum() else ~words)
        shown = ", ".join(f"row {r + 1} {str(text[r])!r}" for r in rows[:5])
        raise DataError(
            f"{where}: labels mix numbers and words ({shown}"
            + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
            + "): a typo? Fix the data, or declare the label set in a data schema "
            "(fedpriv data schema infer --labels ...; data.schema)"
        )
    uniq = sorted_labels(np.unique(text).tolist(), where=where)
    lookup = {v: i for i, v in enumerate(uniq)}
    y = np.fromiter((lookup[v] for v in text.tolist()), np.int64, len(text))
    return y, len(uniq)


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------- digits


def _raw_digits(labels: tuple[str, ...] | None = None) -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixels are counts 0..16 of an 8x8 grid; scale to [0, 1] like the other image sources.
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    if labels is None:
        return _Raw(x, y, None, None, num_classes=10, kind="image")
    y, k = _encode_labels(y, where="digits", labels=labels)
    return _Raw(x, y, None, None, num_classes=k, kind="image")


# ---------------------------------------------------------------------------- mnist


def _find_mnist_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_mnist_idx_pair(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    img_path = _find_mnist_file(folder, _MNIST_FILES[f"{split}_images"])
    lbl_path = _find_mnist_file(folder, _MNIST_FILES[f"{split}_labels"])
    if img_path is None and lbl_path is None:
        return None
    if img_path is None or lbl_path is None:
        have, missing = (
            (lbl_path, _MNIST_FILES[f"{split}_images"])
            if img_path is None
            else (img_path, _MNIST_FILES[f"{split}_labels"])
        )
        raise DataError(f"{have}: found, but its partner {folder / missing}[.gz] is missing")
    images = read_idx(img_path, magic=IDX_IMAGES_MAGIC)
    labels = read_idx(lbl_path, magic=IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(
            f"{lbl_path}: holds {len(labels)} labels but {img_path.name} holds "
            f"{len(images)} images; the counts must match"
        )
    _check_digit_labels(labels, where=str(lbl_path))
    return images, labels


def _check_digit_labels(labels: np.ndarray, *, where: str) -> None:
    if labels.size and labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise DataError(f"{where}: label #{bad} is {labels[bad]}, expected a digit 0..9")


def _read_mnist_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """784 pixel columns (0..255) and a label column, one image per row, optional header."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", newline="") as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    first = text.split("\n", 1)[0].strip().split(",")
    label_idx = len(first) - 1  # default layout: pixels, then the label
    skip = 0
    if not _all_numeric(first):
        skip = 1
        names = [c.strip() for c in first]
        if label_column in names:
            label_idx = names.index(label_column)
    try:
        table = np.loadtxt(
            io.StringIO(text), delimiter=",", dtype=np.float64, skiprows=skip, ndmin=2
        )
    except ValueError as e:
        raise DataError(f"{path}: expected {_MNIST_PIXELS + 1} numeric columns per row: {e}") from e
    if table.shape[1] != _MNIST_PIXELS + 1 or len(table) == 0:
        raise DataError(
            f"{path}: expected rows of {_MNIST_PIXELS} pixel values and 1 label "
            f"({_MNIST_PIXELS + 1} columns), got {table.shape[1]} columns x {len(table)} rows"
        )
    labels = table[:, label_idx]
    pixels = np.delete(table, label_idx, axis=1)
    bad_px = (pixels < 0) | (pixels > 255) | (pixels != np.round(pixels))
    if bad_px.any():
        row, col = np.argwhere(bad_px)[0]
        raise DataError(
            f"{path}: row {row + 1}, pixel column {col + 1}: expected an integer 0..255, "
            f"got {pixels[row, col]}"
        )
    bad_lbl = (labels < 0) | (labels > 9) | (labels != np.round(labels))
    if bad_lbl.any():
        row = int(np.argmax(bad_lbl))
        raise DataError(f"{path}: row {row + 1}, label: expected a digit 0..9, got {labels[row]}")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.uint8)


def _all_numeric(cells: list[str]) -> bool:
    try:
        for c in cells:
            float(c)
    except ValueError:
        return False
    return True


def _raw_mnist(folder: Path, label_column: str, labels: tuple[str, ...] | None = None) -> _Raw:
    train = _read_mnist_idx_pair(folder, "train")
    if train is None:
        csvs = sorted(folder.glob("*.csv.gz")) + sorted(folder.glob("*.csv"))
        if not csvs:
            raise DataError(
                f"{folder}: no MNIST training data: expected {_MNIST_FILES['train_images']}[.gz] "
                f"+ {_MNIST_FILES['train_labels']}[.gz], or one *.csv / *.csv.gz file"
            )
        if len(csvs) > 1:
            names = ", ".join(p.name for p in csvs)
            raise DataError(f"{folder}: several CSV files ({names}); keep exactly one")
        train = _read_mnist_csv(csvs[0], label_column)
    test = _read_mnist_idx_pair(folder, "test")
    if test is not None and test[0].shape[1:] != train[0].shape[1:]:
        raise DataError(
            f"{folder}: test images are {test[0].shape[1:]} but training images are "
            f"{train[0].shape[1:]}; they must have the same size"
        )

    def to_float(images: np.ndarray) -> np.ndarray:
        return (images.astype(np.float32) / 255.0)[:, None, :, :]

    y_train, y_test = train[1].astype(np.int64), None if test is None else test[1].astype(np.int64)
    num_classes = 10
    if labels is not None:
        y_train, num_classes = _encode_labels(
            y_train, where=f"{folder} (training labels)", labels=labels
        )
        if y_test is not None:
            y_test, _ = _encode_labels(y_test, where=f"{folder} (test labels)", labels=labels)
    return _Raw(
        x_train=to_float(train[0]),
        y_train=y_train,
        x_test=None if test is None else to_float(test[0]),
        y_test=y_test,
        num_classes=num_classes,
        kind="image",
        fixed_norm=(MNIST_MEAN, MNIST_STD),
    )


# ---------------------------------------------------------------------------- csv


def _raw_csv(path: Path, label_column: str, labels: tuple[str, ...] | None = None) -> _Raw:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", newline="") as f:
            rows = [r for r in csv.reader(f) if r]  # skip blank lines
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read CSV: {e}") from e
    if len(rows) < 2:
        raise DataError(f"{path}: expected a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise DataError(
            f"{path}: no label column {label_column!r} in the header "
            f"(columns: {', '.join(header)}); set data.label_column"
        )
    if len(header) < 2:
        raise DataError(f"{path}: needs at least one feature column besides {label_column!r}")
    body = rows[1:]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise DataError(
                f"{path}: row {i + 1} (line {i + 2}) has {len(r)} fields, "
                f"expected {len(header)} like the header"
            )
    li = header.index(label_column)
    cells = np.asarray(body, dtype=str)
    label_text = np.char.strip(cells[:, li])
    feats_s = np.delete(cells, li, axis=1)
    feat_names = [h for j, h in enumerate(header) if j != li]
    try:
        x = feats_s.astype(np.float64)  # fast path; locate the bad cell only on failure
    except ValueError:
        _raise_bad_cell(path, feats_s, feat_names)
        raise  # unreachable: _raise_bad_cell always raises
    if not np.isfinite(x).all():
        row, col = np.argwhere(~np.isfinite(x))[0]
        raise DataError(
            f"{path}: row {row + 1} (line {row + 2}), column {feat_names[col]!r}: "
            f"expected a finite number, got {feats_s[row, col]!r}"
        )
    if (label_text == "").any():
        row = int(np.argmax(label_text == ""))
        raise DataError(f"{path}: row {row + 1} (line {row + 2}), column {label_column!r}: empty")
    y, num_classes = _encode_labels(
        label_text, where=f"{path}, column {label_column!r}", labels=labels
    )
    if num_classes < 2:
        raise DataError(f"{path}: column {label_column!r} has a single class; need at least 2")
    return _Raw(x.astype(np.float32), y, None, None, num_classes=num_classes, kind="tabular")


def _raise_bad_cell(path: Path, cells: np.ndarray, names: list[str]) -> None:
    for i, row in enumerate(cells.tolist()):
        for j, cell in enumerate(row):
            try:
                float(cell)
            except ValueError:
                raise DataError(
                    f"{path}: row {i + 1} (line {i + 2}), column {names[j]!r}: "
                    f"expected a number, got {cell!r}"
                ) from None
    raise DataError(f"{path}: a feature cell is not a number")


# ---------------------------------------------------------------------------- hf


def _raw_hf(name: str, label_column: str, labels: tuple[str, ...] | None = None) -> _Raw:
    """Download ``name`` from the Hugging Face Hub (its ``train`` split, and ``test`` if any)."""
    import datasets as hfd

    try:
        loaded = hfd.load_dataset(name)
    except Exception as e:  # network, auth, unknown name: all surface as one clear error
        raise DataError(
            f"data.dataset hf:{name}: cannot load from the Hugging Face Hub "
            f"({type(e).__name__}: {e}); it needs network access (offline: use mnist:PATH "
            "or csv:PATH)"
        ) from e
    if not isinstance(loaded, hfd.DatasetDict) or "train" not in loaded:
        raise DataError(f"data.dataset hf:{name}: expected a dataset with a 'train' split")
    where = f"hf:{name}"
    x, lab, num_classes, kind = _hf_features(loaded["train"], label_column=label_column, name=where)
    x_test = y_test = None
    if "test" in loaded:
        x_test, lab_test, _, _ = _hf_features(
            loaded["test"], label_column=label_column, name=f"{where}/test"
        )
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{where}: test samples are {x_test.shape[1:]}, train {x.shape[1:]}")
        if num_classes is None or labels is not None:  # one label mapping for both splits
            both, num_classes = _encode_labels(
                np.concatenate([lab.astype(str), lab_test.astype(str)]), where=where, labels=labels
            )
            lab, y_test = both[: len(lab)], both[len(lab) :]
        else:
            y_test = lab_test
    elif num_classes is None or labels is not None:
        lab, num_classes = _encode_labels(lab, where=where, labels=labels)
    return _Raw(x, lab.astype(np.int64), x_test, y_test, num_classes=num_classes, kind=kind)


def _hf_features(
    ds: datasets.Dataset, *, label_column: str, name: str
) -> tuple[np.ndarray, np.ndarray, int | None, Literal["image", "tabular"]]:
    """Return ``(x, labels, num_classes or None, kind)``; labels are raw unless a ClassLabel."""
    import datasets as hfd

    features = ds.features
    if label_column not in features:
        raise DataError(
            f"{name}: no label column {label_column!r} (columns: {', '.join(features)}); "
            "set data.label_column"
        )
    if len(ds) == 0:
        raise DataError(f"{name}: dataset is empty")
    label_feat = features[label_column]
    num_classes: int | None = None
    if isinstance(label_feat, hfd.ClassLabel):
        labels = np.asarray(ds[label_column], dtype=np.int64)
        num_classes = int(label_feat.num_classes)
        if labels.min() < 0:
            raise DataError(f"{name}, column {label_column!r}: missing labels (-1)")
    else:
        labels = np.asarray(ds[label_column])

    image_cols = [c for c, f in features.items() if isinstance(f, hfd.Image)]
    if not image_cols:
        image_cols = [c for c in ("image", "img") if c in features and c != label_column]
    if image_cols:
        return _hf_images(ds, image_cols[0], name), labels, num_classes, "image"

    cols = [c for c in features if c != label_column]
    if not cols:
        raise DataError(f"{name}: no feature columns besides {label_column!r}")
    numeric = ("int", "uint", "float", "bool")
    for c in cols:
        f = features[c]
        if not (isinstance(f, hfd.Value) and f.dtype.startswith(numeric)):
            raise DataError(
                f"{name}, column {c!r}: expected a numeric feature, got {f}; "
                "drop the column or choose another label_column"
            )
    x = np.stack([np.asarray(ds[c], dtype=np.float64) for c in cols], axis=1)
    if not np.isfinite(x).all():
        row, col = np.argwhere(~np.isfinite(x))[0]
        raise DataError(f"{name}, column {cols[col]!r}, row {row}: not a finite number")
    return x.astype(np.float32), labels, num_classes, "tabular"


def _hf_images(ds: datasets.Dataset, column: str, name: str) -> np.ndarray:
    """Images (PIL or arrays) -> float32 (n, C, H, W) in [0, 1]."""
    out: list[np.ndarray] = []
    shape: tuple[int, ...] | None = None
    for i, item in enumerate(ds[column]):
        is_pil = hasattr(item, "mode") and hasattr(item, "convert")
        if is_pil and item.mode not in ("L", "RGB"):
            item = item.convert("RGB")  # palette, RGBA, 16-bit...: one common format
        arr = np.asarray(item)
        if arr.ndim == 2:
            arr = arr[None]
        elif arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3, 4):
            arr = arr.transpose(2, 0, 1)  # HWC -> CHW
        elif arr.ndim != 3:
            raise DataError(f"{name}, column {column!r}, row {i}: image has shape {arr.shape}")
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise DataError(
                f"{name}, column {column!r}, row {i}: image is {arr.shape}, row 0 is {shape}; "
                "all images must have the same size"
            )
        out.append(arr)
    x = np.stack(out)
    if np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.bool_):
        if x.max() > 255 or x.min() < 0:
            raise DataError(f"{name}, column {column!r}: integer pixels must be in 0..255")
        return x.astype(np.float32) / 255.0
    x = x.astype(np.float32)
    # Float images are either already in [0, 1] or still 0..255 grey levels.
    return x / 255.0 if float(x.max()) > 1.0 else x
