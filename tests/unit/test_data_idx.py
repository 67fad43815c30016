"""IDX parser and the ``mnist:PATH`` loader on small files written in a temp dir."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from fedpriv.data import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    MNIST_MEAN,
    MNIST_STD,
    load_dataset,
    read_idx,
    write_idx,
)
from fedpriv.errors import DataError


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def _labels(n: int) -> np.ndarray:
    return (np.arange(n) % 10).astype(np.uint8)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    imgs, labs = _images(7), _labels(7)
    write_idx(tmp_path / f"i{suffix}", imgs)
    write_idx(tmp_path / f"l{suffix}", labs)
    np.testing.assert_array_equal(read_idx(tmp_path / f"i{suffix}", magic=IDX_IMAGES_MAGIC), imgs)
    np.testing.assert_array_equal(read_idx(tmp_path / f"l{suffix}", magic=IDX_LABELS_MAGIC), labs)


def test_header_layout_is_the_official_one(tmp_path: Path) -> None:
    write_idx(tmp_path / "l", _labels(3))
    assert (tmp_path / "l").read_bytes() == bytes.fromhex("00000801 00000003") + bytes([0, 1, 2])


def test_bad_magic(tmp_path: Path) -> None:
    write_idx(tmp_path / "l", _labels(5))
    with pytest.raises(DataError, match=r"magic number is 0x00000801, expected 0x00000803"):
        read_idx(tmp_path / "l", magic=IDX_IMAGES_MAGIC)


def test_non_byte_element_type(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(struct.pack(">II", 0x00000D01, 1) + b"\0\0\0\0")  # float32
    with pytest.raises(DataError, match="not an unsigned-byte IDX file"):
        read_idx(tmp_path / "f")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated(tmp_path: Path, suffix: str) -> None:
    raw = struct.pack(">IIII", IDX_IMAGES_MAGIC, 2, 28, 28) + _images(2).tobytes()
    path = tmp_path / f"t{suffix}"
    data = raw[:-10]
    path.write_bytes(gzip.compress(data) if suffix else data)
    with pytest.raises(DataError, match=r"exactly 1584 bytes.*only 1574 \(truncated"):
        read_idx(path, magic=IDX_IMAGES_MAGIC)


def test_trailing_data(tmp_path: Path) -> None:
    write_idx(tmp_path / "l", _labels(4))
    with (tmp_path / "l").open("ab") as f:
        f.write(b"x")
    with pytest.raises(DataError, match="trailing data"):
        read_idx(tmp_path / "l", magic=IDX_LABELS_MAGIC)


def test_huge_claimed_size_is_rejected_without_allocating(tmp_path: Path) -> None:
    (tmp_path / "h").write_bytes(struct.pack(">IIII", IDX_IMAGES_MAGIC, 2**32 - 1, 65535, 65535))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "h", magic=IDX_IMAGES_MAGIC)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\0\0", "too short"),
        (struct.pack(">I", IDX_IMAGES_MAGIC) + b"\0\0\0\1", "ends inside"),
        (struct.pack(">IIII", IDX_IMAGES_MAGIC, 0, 28, 28), "include a zero"),
    ],
)
def test_bad_headers(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "x").write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_idx(tmp_path / "x", magic=IDX_IMAGES_MAGIC)


def test_corrupt_gzip(tmp_path: Path) -> None:
    good = gzip.compress(struct.pack(">II", IDX_LABELS_MAGIC, 3) + b"\0\1\2")
    (tmp_path / "c.gz").write_bytes(good[:-12])  # cut inside the stream / trailer
    with pytest.raises(DataError, match=str(tmp_path / "c.gz")):
        read_idx(tmp_path / "c.gz", magic=IDX_LABELS_MAGIC)
    (tmp_path / "n.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "n.gz")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope")


def _write_mnist(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = True) -> None:
    folder.mkdir(exist_ok=True)
    s = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{s}", _images(n_train, 1))
    write_idx(folder / f"train-labels-idx1-ubyte{s}", _labels(n_train))
    write_idx(folder / f"t10k-images-idx3-ubyte{s}", _images(n_test, 2))
    write_idx(folder / f"t10k-labels-idx1-ubyte{s}", _labels(n_test))


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_folder(tmp_path: Path, gz: bool) -> None:
    _write_mnist(tmp_path / "m", gz=gz)
    train, test = load_dataset(f"mnist:{tmp_path / 'm'}", seed=3)
    assert (len(train), len(test)) == (60, 20)  # test from t10k, no holdout taken
    assert train.input_shape == (1, 28, 28) and train.num_classes == 10
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    expected = (_images(20, 2).astype(np.float32) / 255 - MNIST_MEAN) / MNIST_STD
    np.testing.assert_allclose(test.x[:, 0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.bincount(train.y), [6] * 10)


def test_mnist_max_samples_is_stratified(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "m", n_train=200)
    train, test = load_dataset(f"mnist:{tmp_path / 'm'}", max_samples=50)
    assert len(train) == 50 and len(test) == 20
    np.testing.assert_array_equal(train.class_counts(), [5] * 10)


def test_mnist_missing_partner_and_count_mismatch(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*missing"):
        load_dataset(f"mnist:{tmp_path / 'm'}")
    write_idx(tmp_path / "m" / "t10k-labels-idx1-ubyte.gz", _labels(19))
    with pytest.raises(DataError, match=r"19 labels but .* 20 images"):
        load_dataset(f"mnist:{tmp_path / 'm'}")


def test_mnist_bad_label(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "m")
    write_idx(tmp_path / "m" / "train-labels-idx1-ubyte.gz", np.full(60, 12, np.uint8))
    with pytest.raises(DataError, match=r"expected a digit 0\.\.9"):
        load_dataset(f"mnist:{tmp_path / 'm'}")


def _write_mnist_csv(path: Path, per_class: int = 6) -> None:
    rows = []
    for label in range(10):  # sorted by class, like the offline copy
        for i in range(per_class):
            px = _images(1, label * 100 + i).reshape(-1)
            rows.append(",".join(map(str, px.tolist())) + f",{label}")
    path.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))


def test_mnist_csv_layout_with_holdout(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    _write_mnist_csv(tmp_path / "m" / "small.csv.gz")
    train, test = load_dataset(f"mnist:{tmp_path / 'm'}", holdout_fraction=0.5, seed=0)
    assert len(train) == 30 and len(test) == 30
    np.testing.assert_array_equal(train.class_counts(), [3] * 10)  # stratified holdout
    assert not np.all(np.diff(train.y) >= 0)  # shuffled, no longer sorted by class
    # With a t10k pair present the CSV is still the train set and t10k the test set.
    write_idx(tmp_path / "m" / "t10k-images-idx3-ubyte.gz", _images(5))
    write_idx(tmp_path / "m" / "t10k-labels-idx1-ubyte.gz", _labels(5))
    train, test = load_dataset(f"mnist:{tmp_path / 'm'}", holdout_fraction=0.5)
    assert (len(train), len(test)) == (60, 5)


def test_mnist_csv_bad_values(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    row = ",".join(["0"] * 783 + ["300", "1"])
    (tmp_path / "m" / "a.csv").write_text(row + "\n")
    with pytest.raises(DataError, match=r"row 1, pixel column 784: expected an integer 0\.\.255"):
        load_dataset(f"mnist:{tmp_path / 'm'}")
    (tmp_path / "m" / "a.csv").write_text(",".join(["0"] * 10) + "\n")
    with pytest.raises(DataError, match="785 columns"):
        load_dataset(f"mnist:{tmp_path / 'm'}")
    (tmp_path / "m" / "b.csv").write_text("")
    with pytest.raises(DataError, match="several CSV files"):
        load_dataset(f"mnist:{tmp_path / 'm'}")


def test_mnist_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no MNIST training data"):
        load_dataset(f"mnist:{tmp_path}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"mnist:{tmp_path / 'absent'}")
