"""Lenient readers: a dataset spec as stored on disk, before any parsing that could stop early.

The training loaders (:mod:`fedpriv.data.loaders`) stop at the first bad cell. A data check must
see *every* problem, so these readers keep cells as text (tables) or raw pixel values (images)
and leave judging them to :mod:`fedpriv.data.schema.check`. Only what makes a source unreadable
as a whole (missing file, bad IDX header, not UTF-8) raises :class:`Unreadable`.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedpriv.errors import DataError

__all__ = ["RawImages", "RawPart", "RawTable", "Unreadable", "read_raw"]


class Unreadable(Exception):
    """The source cannot be read at all (``readable`` check) or holds nothing (``not-empty``)."""

    def __init__(self, message: str, *, empty: bool = False) -> None:
        super().__init__(message)
        self.empty = empty


@dataclass(frozen=True, eq=False)
class RawTable:
    """A CSV-like table: numbers where cells parse, and where each odd cell is.

    Rows whose field count differs from the header are only located (``ragged``); the other
    checks run on the rest. ``rows`` gives each kept row's 1-based data row number and ``lines``
    its line in the file.
    """

    where: str
    header: tuple[str, ...]
    values: np.ndarray
    """float64 ``(n, len(header))``: NaN where a cell is missing or not a number (and in the
    label column, which is kept as text)."""
    missing: np.ndarray
    """bool ``(n, len(header))``: empty or NA-like cells."""
    bad: np.ndarray
    """bool ``(n, len(header))``: present but not a number."""
    bad_text: dict[int, list[tuple[int, str]]]
    """Per column, the first few (row index into ``values``, cell text) that are not numbers."""
    labels: np.ndarray | None
    """Text of the label column (stripped), or None when the header has none."""
    rows: np.ndarray
    lines: np.ndarray | None
    """File line of each kept row (None when the source is not a file, e.g. ``hf:``)."""
    ragged: tuple[tuple[int, int, int], ...]
    """(data row, file line, field count) of each row whose width differs from the header."""

    @property
    def num_rows(self) -> int:
        return len(self.rows) + len(self.ragged)


@dataclass(frozen=True, eq=False)
class RawImages:
    """Images as stored: ``x`` is ``(n, C, H, W)``, ``labels`` their text (``None``: no labels)."""

    where: str
    x: np.ndarray
    labels: np.ndarray
    label_where: str = ""
    label_count: int | None = None
    """Number of labels in a separate label file when it differs from the number of images."""
    odd_shape_rows: tuple[int, ...] = ()
    """1-based rows whose image has another shape than the rest (their pixels are NaN in x)."""

    @property
    def num_rows(self) -> int:
        return len(self.x)


RawPart = RawTable | RawImages

_MNIST_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_raw(spec: str, *, label_column: str = "label") -> list[RawPart]:
    """Read ``spec`` (``digits``, ``mnist:PATH``, ``csv:PATH``, ``hf:NAME``) without judging it.

    Returns
    -------
    list of RawTable or RawImages
        One part per file set: a CSV file, the MNIST train (and test) IDX pair, ...

    Raises
    ------
    Unreadable
        The source cannot be read, or is empty.
    DataError
        ``spec`` is not a dataset spec.
    """
    kind, sep, arg = spec.partition(":")
    if kind == "digits" and not sep:
        return [_digits()]
    if kind == "csv" and arg:
        return [read_csv_table(Path(arg).expanduser(), label_column=label_column)]
    if kind == "mnist" and arg:
        return _mnist(Path(arg).expanduser(), label_column)
    if kind == "hf" and arg:
        return [_hf(arg, label_column)]
    raise DataError(f"unknown dataset spec {spec!r} (use digits, mnist:PATH, csv:PATH or hf:NAME)")


# ----------------------------------------------------------------------------- csv


NA_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
"""Cell texts (case-insensitive) that mean "missing"."""
_SAMPLES = 5


def read_csv_table(path: Path, *, label_column: str = "label", header: bool = True) -> RawTable:
    """Read a CSV file (``.gz`` is decompressed) into a :class:`RawTable`.

    Blank lines between rows count as rows with every value missing (the loader would skip them
    silently; an export with half its rows empty is broken). Trailing blank lines are ignored.
    ``header=False`` names the columns ``p0, p1, ...`` and the last one ``label_column`` (the
    layout of a header-less MNIST CSV). Well-formed numeric files take numpy's C parser; others
    are read cell by cell so that every odd cell is found.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        if not path.is_file():
            raise Unreadable(f"{path}: file not found")
        if path.stat().st_size == 0:
            raise Unreadable(f"{path}: the file is empty", empty=True)
        with opener(path, "rt", newline="", encoding="utf-8") as f:
            text = f.read()
    except Unreadable:
        raise
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise Unreadable(f"{path}: cannot read as CSV: {e}") from None
    text = text.rstrip("\r\n \t")
    if not text:
        raise Unreadable(f"{path}: the file holds no rows", empty=True)
    first = next(csv.reader(io.StringIO(text.split("\n", 1)[0])), [])
    if header:
        head = tuple(c.strip() for c in first)
    else:
        head = (*(f"p{i}" for i in range(len(first) - 1)), label_column)
    li = head.index(label_column) if label_column in head else None
    fast = _fast_numeric(text, head, li, skip=1 if header else 0)
    if fast is not None:
        return RawTable(str(path), head, *fast)
    return _slow(str(path), text, head, li, skip=1 if header else 0)


def _fast_numeric(
    text: str, head: tuple[str, ...], li: int | None, *, skip: int
) -> tuple[Any, ...] | None:
    """numpy's C parser for a clean all-numeric body (labels may be text); None if it balks."""
    if skip and "\n" not in text:
        return None  # a header and no rows
    if "\n\n" in text.replace("\r\n", "\n") or '"' in text:
        return None  # blank lines or quoting: the careful path sees them
    width = len(head)
    cols = [j for j in range(width) if j != li]
    try:
        nums = np.loadtxt(
            io.StringIO(text),
            delimiter=",",
            dtype=np.float64,
            skiprows=skip,
            usecols=cols,
            ndmin=2,
        )
        labels = None
        if li is not None:
            labels = np.char.strip(
                np.loadtxt(
                    io.StringIO(text),
                    delimiter=",",
                    dtype=str,
                    skiprows=skip,
                    usecols=[li],
                    ndmin=1,
                )
            )
    except ValueError:
        return None
    if nums.shape[1] != len(cols) or (labels is not None and len(labels) != len(nums)):
        return None
    # loadtxt ignores extra fields beyond usecols: make sure every line has exactly width fields.
    if text.count(",") != (width - 1) * (len(nums) + skip):
        return None
    n = len(nums)
    values = np.full((n, width), np.nan)
    values[:, cols] = nums
    missing = np.zeros((n, width), dtype=bool)
    missing[:, cols] = np.isnan(nums)  # "nan" cells
    if labels is not None:
        missing[:, li] = np.isin(np.char.lower(labels), list(NA_TOKENS))
    rows = np.arange(1, n + 1, dtype=np.int64)
    return (values, missing, np.zeros((n, width), dtype=bool), {}, labels, rows, rows + skip, ())


def _slow(where: str, text: str, head: tuple[str, ...], li: int | None, *, skip: int) -> RawTable:
    width = len(head)
    reader = csv.reader(io.StringIO(text))
    kept_vals: list[np.ndarray] = []
    kept_missing: list[np.ndarray] = []
    kept_bad: list[np.ndarray] = []
    labels: list[str] = []
    rows: list[int] = []
    lines: list[int] = []
    ragged: list[tuple[int, int, int]] = []
    bad_text: dict[int, list[tuple[int, str]]] = {}
    try:
        for i, r in enumerate(reader):
            if i < skip:
                continue
            row_no = i - skip + 1
            if not any(c.strip() for c in r):
                r = [""] * width  # a blank line: a row with every value missing
            if len(r) != width:
                ragged.append((row_no, reader.line_num, len(r)))
                continue
            cells = [c.strip() for c in r]
            miss = np.fromiter((c.lower() in NA_TOKENS for c in cells), bool, width)
            vals = np.full(width, np.nan)
            bad = np.zeros(width, dtype=bool)
            for j, c in enumerate(cells):
                if j == li or miss[j]:
                    continue
                try:
                    vals[j] = float(c)
                except ValueError:
                    bad[j] = True
                    samples = bad_text.setdefault(j, [])
                    if len(samples) < _SAMPLES:
                        samples.append((len(rows), c))
            if li is not None:
                labels.append(cells[li])
            kept_vals.append(vals)
            kept_missing.append(miss)
            kept_bad.append(bad)
            rows.append(row_no)
            lines.append(reader.line_num)
    except csv.Error as e:
        raise Unreadable(f"{where}: cannot read as CSV: {e}") from None

    def stack(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.stack(parts) if parts else np.zeros((0, width), dtype=dtype)

    return RawTable(
        where,
        head,
        stack(kept_vals, np.float64),
        stack(kept_missing, bool),
        stack(kept_bad, bool),
        bad_text,
        np.asarray(labels, dtype=str) if li is not None else None,
        np.asarray(rows, dtype=np.int64),
        np.asarray(lines, dtype=np.int64),
        tuple(ragged),
    )


def _looks_numeric(cells: list[str]) -> bool:
    try:
        for c in cells:
            float(c)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------- images


def _digits() -> RawImages:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64).reshape(-1, 1, 8, 8)  # counts 0..16
    labels = np.asarray(bunch.target).astype(str)
    return RawImages("digits", x, labels)


def _find(folder: Path, stem: str) -> Path | None:
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def _read_idx_lenient(path: Path, magic: int) -> np.ndarray:
    from fedpriv.data.idx import read_idx

    try:
        if path.stat().st_size == 0:
            raise Unreadable(f"{path}: the file is empty", empty=True)
        return read_idx(path, magic=magic)
    except DataError as e:
        raise Unreadable(str(e)) from None
    except OSError as e:
        raise Unreadable(f"{path}: {e}") from None


def _mnist_pair(folder: Path, split: str) -> RawImages | None:
    from fedpriv.data.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC

    img_stem, lbl_stem = _MNIST_STEMS[split]
    img, lbl = _find(folder, img_stem), _find(folder, lbl_stem)
    if img is None and lbl is None:
        return None
    if img is None or lbl is None:
        missing = img_stem if img is None else lbl_stem
        raise Unreadable(f"{folder}: {split} split: {missing}[.gz] is missing")
    images = _read_idx_lenient(img, IDX_IMAGES_MAGIC)
    labels = _read_idx_lenient(lbl, IDX_LABELS_MAGIC)
    x = images[:, None, :, :] if images.ndim == 3 else images.reshape(len(images), 1, 1, -1)
    n = min(len(images), len(labels))
    lab = np.full(len(images), "", dtype=object)
    lab[:n] = labels[:n].astype(str)
    return RawImages(
        str(img),
        x,
        lab.astype(str),
        label_where=str(lbl),
        label_count=len(labels) if len(labels) != len(images) else None,
    )


def _mnist(folder: Path, label_column: str) -> list[RawPart]:
    """The training files (IDX pair, else one CSV) and the test IDX pair when there is one."""
    if not folder.is_dir():
        raise Unreadable(f"{folder}: MNIST folder not found")
    train: RawPart | None = _mnist_pair(folder, "train")
    if train is None:
        csvs = sorted(folder.glob("*.csv.gz")) + sorted(folder.glob("*.csv"))
        if not csvs:
            raise Unreadable(
                f"{folder}: no MNIST training data: expected train-images-idx3-ubyte[.gz] + "
                "train-labels-idx1-ubyte[.gz], or one *.csv file",
                empty=not any(folder.iterdir()),
            )
        if len(csvs) > 1:
            raise Unreadable(f"{folder}: several CSV files ({', '.join(p.name for p in csvs)})")
        path = csvs[0]
        opener = gzip.open if path.name.endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                first = f.readline().strip().split(",")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise Unreadable(f"{path}: cannot read: {e}") from None
        train = read_csv_table(path, label_column=label_column, header=not _looks_numeric(first))
    test = _mnist_pair(folder, "test")
    return [train] if test is None else [train, test]


# ----------------------------------------------------------------------------- hf


def _hf(name: str, label_column: str) -> RawPart:
    """The ``train`` split of a Hugging Face dataset (a local folder works offline)."""
    import datasets as hfd

    try:
        loaded = hfd.load_dataset(name)
        ds = loaded["train"]
    except Exception as e:  # network, unknown name, no train split: the source is unreadable
        raise Unreadable(f"hf:{name}: cannot load ({type(e).__name__}: {e})") from None
    where = f"hf:{name}"
    if len(ds) == 0:
        raise Unreadable(f"{where}: the dataset is empty", empty=True)
    features = ds.features
    image_cols = [c for c, f in features.items() if isinstance(f, hfd.Image)]
    if image_cols:
        col = image_cols[0]
        arrays = [np.asarray(item) for item in ds[col]]
        arrays = [a[None] if a.ndim == 2 else a.transpose(2, 0, 1) for a in arrays]
        shapes = [a.shape for a in arrays]
        common = max(set(shapes), key=shapes.count)
        odd = tuple(i + 1 for i, s in enumerate(shapes) if s != common)
        # Keep checking the rest: an odd-sized image becomes NaN and is reported by row.
        x = np.stack([a if a.shape == common else np.full(common, np.nan) for a in arrays])
        labels = (
            np.asarray(ds[label_column]).astype(str)
            if label_column in features
            else np.full(len(ds), "", dtype=str)
        )
        return RawImages(where, x.astype(np.float64), labels, odd_shape_rows=odd)
    head = tuple(features)
    buf = io.StringIO()
    w = csv.writer(buf)
    for rec in ds:
        w.writerow(["" if rec[c] is None else rec[c] for c in head])
    li = head.index(label_column) if label_column in head else None
    return dataclasses.replace(_slow(where, buf.getvalue(), head, li, skip=0), lines=None)
