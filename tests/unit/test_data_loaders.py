"""Loaders (digits, real MNIST copy, csv, hf conversion) and the ArrayDataset type."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedpriv.data import ArrayDataset, clear_cache, from_hf_dataset, load_dataset
from fedpriv.errors import DataError
from tests.shared_data import shared_data

# ---------------------------------------------------------------- ArrayDataset


def test_array_dataset_basics() -> None:
    ds = ArrayDataset(np.zeros((4, 3)), np.array([0, 1, 2, 1]), 3, "t")
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    assert len(ds) == 4 and ds.input_shape == (3,)
    sub = ds.subset([3, 1])
    np.testing.assert_array_equal(sub.y, [1, 1])
    assert sub.num_classes == 3 and len(ds.subset([])) == 0
    np.testing.assert_array_equal(ds.class_counts(), [1, 2, 1])


@pytest.mark.parametrize(
    ("x", "y", "k", "message"),
    [
        (np.zeros((3, 2)), np.zeros(2, np.int64), 2, "3 samples but y has 2"),
        (np.zeros((2, 2)), np.array([0, 5]), 2, r"labels must be in \[0, 2\)"),
        (np.zeros((2, 2)), np.array([0.0, 1.0]), 2, "integer class ids"),
        (np.zeros(2), np.array([0, 1]), 2, "shape"),
        (np.zeros((2, 2)), np.array([0, 1]), 0, "num_classes"),
    ],
)
def test_array_dataset_validation(x: np.ndarray, y: np.ndarray, k: int, message: str) -> None:
    with pytest.raises(DataError, match=message):
        ArrayDataset(x, y, k, "bad")


def test_subset_out_of_range() -> None:
    ds = ArrayDataset(np.zeros((2, 1)), np.array([0, 1]), 2, "t")
    with pytest.raises(DataError, match="out of range"):
        ds.subset([2])


def test_data_package_does_not_import_torch() -> None:
    code = "import sys, fedpriv.data; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------- digits


def test_digits() -> None:
    train, test = load_dataset("digits", holdout_fraction=0.2, seed=0)
    assert (len(train), len(test)) == (1437, 360)
    assert train.input_shape == (1, 8, 8) and train.num_classes == 10
    assert train.x.dtype == np.float32 and test.y.dtype == np.int64
    assert abs(float(train.x.mean())) < 1e-4 and abs(float(train.x.std()) - 1) < 1e-3
    assert abs(float(test.x.mean())) < 0.1  # train statistics applied to the test set
    # Stratified: class shares in the test set match the whole set to within one sample.
    full = np.bincount(np.concatenate([train.y, test.y]))
    assert np.all(np.abs(test.class_counts() - full * 0.2) <= 1)


def test_digits_cache_determinism_and_read_only() -> None:
    a = load_dataset("digits", seed=1)
    assert load_dataset("digits", seed=1) is a  # per-process cache
    assert not a[0].x.flags.writeable
    clear_cache()
    b = load_dataset("digits", seed=1)
    assert b is not a
    np.testing.assert_array_equal(a[0].x, b[0].x)
    c = load_dataset("digits", seed=2)
    assert not np.array_equal(a[0].y, c[0].y)


def test_digits_max_samples_and_no_holdout() -> None:
    train, test = load_dataset("digits", max_samples=100, seed=0)
    assert len(train) == 100 and len(test) == 360
    assert train.class_counts().min() >= 9 and train.class_counts().max() <= 11
    train, test = load_dataset("digits", holdout_fraction=0.0)
    assert (len(train), len(test)) == (1797, 0) and test.input_shape == (1, 8, 8)


@pytest.mark.parametrize("spec", ["nope", "digits:x", "csv:", "mnist", "hf:"])
def test_unknown_spec(spec: str) -> None:
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset(spec)


def test_bad_arguments() -> None:
    with pytest.raises(DataError, match="holdout_fraction"):
        load_dataset("digits", holdout_fraction=1.0)
    with pytest.raises(DataError, match="max_samples"):
        load_dataset("digits", max_samples=-1)


# ---------------------------------------------------------------- real MNIST copy


def test_real_mnist_copy() -> None:
    train, test = load_dataset(f"mnist:{shared_data('mnist')}", max_samples=1000, seed=0)
    assert (len(train), len(test)) == (1000, 10000)
    assert train.input_shape == test.input_shape == (1, 28, 28)
    np.testing.assert_array_equal(train.class_counts(), [100] * 10)
    assert abs(float(train.x.mean())) < 0.1 and abs(float(train.x.std()) - 1) < 0.1


# ---------------------------------------------------------------- csv


def _write_csv(path: Path, rows: list[str]) -> str:
    path.write_text("\n".join(rows) + "\n")
    return f"csv:{path}"


def test_csv_loader(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = ["cat", "dog", "bird"]
    rows = ["a,kind,b"]
    for i in range(60):
        rows.append(f"{rng.normal(5, 2):.4f},{names[i % 3]},{rng.integers(0, 100)}")
    train, test = load_dataset(_write_csv(tmp_path / "t.csv", rows), label_column="kind")
    assert (len(train), len(test)) == (48, 12)
    assert train.input_shape == (2,) and train.num_classes == 3
    np.testing.assert_array_equal(test.class_counts(), [4, 4, 4])  # stratified holdout
    np.testing.assert_allclose(train.x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(train.x.std(axis=0), 1, atol=1e-4)


def test_csv_numeric_labels_sort_numerically(tmp_path: Path) -> None:
    rows = ["x,label"] + [f"{i},{lab}" for i, lab in enumerate([10, 2, 10, 2, 33, 33] * 3)]
    train, _ = load_dataset(_write_csv(tmp_path / "n.csv", rows), holdout_fraction=0.0)
    assert train.num_classes == 3
    order = np.argsort(train.x[:, 0])  # x is the row number: recover file order
    np.testing.assert_array_equal(train.y[order][:6], [1, 0, 1, 0, 2, 2])  # 2 < 10 < 33


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ("1.0,abc,0", r"row 3 \(line 4\), column 'f2': expected a number, got 'abc'"),
        ("1.0,,0", r"row 3 \(line 4\), column 'f2': expected a number, got ''"),
        ("1.0,nan,0", r"row 3 \(line 4\), column 'f2': expected a finite number"),
        ("1.0,0", r"row 3 \(line 4\) has 2 fields, expected 3"),
        ("1.0,2.0,", r"row 3 \(line 4\), column 'label': empty"),
    ],
)
def test_csv_bad_cells(tmp_path: Path, bad_row: str, message: str) -> None:
    rows = ["f1,f2,label", "1,2,0", "3,4,1", bad_row, "5,6,1"]
    with pytest.raises(DataError, match=message):
        load_dataset(_write_csv(tmp_path / "bad.csv", rows))


def test_csv_structural_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no label column 'label'.*columns: a, b"):
        load_dataset(_write_csv(tmp_path / "a.csv", ["a,b", "1,2"]))
    with pytest.raises(DataError, match="single class"):
        load_dataset(_write_csv(tmp_path / "b.csv", ["a,label", "1,0", "2,0"]))
    with pytest.raises(DataError, match="header row and at least one data row"):
        load_dataset(_write_csv(tmp_path / "c.csv", ["a,label"]))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"csv:{tmp_path / 'missing.csv'}")


# ---------------------------------------------------------------- hf conversion


def test_from_hf_dataset_pil_images() -> None:
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8)) for _ in range(8)]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)}
    )
    ds = datasets.Dataset.from_dict({"image": imgs, "label": [0, 1, 2, 1] * 2}, features=features)
    out = from_hf_dataset(ds, name="toy")
    assert out.x.shape == (8, 1, 6, 5) and out.x.dtype == np.float32
    assert out.num_classes == 4  # from the ClassLabel, though class 3 is absent
    assert abs(float(out.x.mean())) < 1e-5 and abs(float(out.x.std()) - 1) < 1e-3
    raw = np.stack([np.asarray(i) for i in imgs]).astype(np.float32) / 255
    np.testing.assert_allclose(out.x[:, 0], (raw - raw.mean()) / raw.std(), atol=1e-4)


def test_from_hf_dataset_rgb_arrays_hwc() -> None:
    datasets = pytest.importorskip("datasets")
    arr = np.random.default_rng(1).integers(0, 256, (4, 5, 5, 3)).astype(np.uint8)
    ds = datasets.Dataset.from_dict({"img": list(arr), "label": ["b", "a", "b", "a"]})
    out = from_hf_dataset(ds)
    assert out.x.shape == (4, 3, 5, 5) and out.num_classes == 2
    np.testing.assert_array_equal(out.y, [1, 0, 1, 0])


def test_from_hf_dataset_tabular_and_errors() -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"a": [1.0, 2.0, 3.0], "b": [1, 0, 1], "y": [5, 7, 5]})
    out = from_hf_dataset(ds, label_column="y")
    assert out.input_shape == (2,) and out.num_classes == 2
    np.testing.assert_array_equal(out.y, [0, 1, 0])
    with pytest.raises(DataError, match="no label column 'label'"):
        from_hf_dataset(ds)
    bad = datasets.Dataset.from_dict({"a": [1.0, 2.0], "s": ["x", "y"], "label": [0, 1]})
    with pytest.raises(DataError, match="column 's': expected a numeric feature"):
        from_hf_dataset(bad)


def test_hf_loader_with_patched_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)

    def split(n: int, labels: list[str]) -> object:
        return datasets.Dataset.from_dict(
            {"f1": rng.normal(3, 2, n).tolist(), "f2": rng.normal(size=n).tolist(), "y": labels}
        )

    hub = datasets.DatasetDict(
        {"train": split(40, ["b", "c"] * 20), "test": split(6, ["a", "b", "c"] * 2)}
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda name: hub)
    train, test = load_dataset("hf:someone/toy", label_column="y", max_samples=30)
    assert (len(train), len(test)) == (30, 6) and train.num_classes == 3  # labels of both splits
    np.testing.assert_array_equal(np.unique(train.y), [1, 2])  # 'a' only occurs in test
    np.testing.assert_allclose(train.x.mean(axis=0), 0, atol=1e-5)
    clear_cache()  # the cached entry came from the patched hub

    def offline(name: str) -> object:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"hf:other: cannot load.*needs network access"):
        load_dataset("hf:other")
